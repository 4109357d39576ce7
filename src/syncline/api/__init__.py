"""The management REST API served by ``syncline run`` (see docs/api.md).

``settings`` imports no web framework, so the CLI can read the ``api`` config
without the ``api`` extra installed; the rest needs FastAPI and uvicorn.
"""
