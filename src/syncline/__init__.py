"""syncline: keep microservices' databases in sync in real time, exactly once."""

from syncline.errors import (
    ConfigError,
    PermanentError,
    SynclineError,
    TransientError,
)
from syncline.events import ChangeEvent, Op, SourceInfo

__all__ = [
    "ChangeEvent",
    "ConfigError",
    "Op",
    "PermanentError",
    "SourceInfo",
    "SynclineError",
    "TransientError",
]
__version__ = "0.1.0"
