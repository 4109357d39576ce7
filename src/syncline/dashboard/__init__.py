"""The web dashboard: static files (HTML, ES modules, CSS) the management API serves.

No build step and nothing fetched from elsewhere: the page is plain modules that
call the JSON API with the token the user types in (see docs/dashboard.md).
"""

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent
