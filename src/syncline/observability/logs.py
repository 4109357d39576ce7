"""Logging setup: human text (default) or one JSON object per line (structlog).

The engine logs through the standard ``logging`` module everywhere; JSON output
routes those records through structlog's ``ProcessorFormatter``, so no call site
changes. Fields that tie a line to one change travel as ``extra=`` on the call
(``table``, ``key``, ``position``, ``cid`` — the correlation id also stored by the
monitoring store — ``batch``, ``partition``, ``offset``); ``pipeline`` comes from a
context variable bound by each pipeline thread, so every line of a pipeline's
threads carries it.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import IO, Any

from syncline.errors import ConfigError

FORMATS = ("text", "json")
CHANGE_FIELDS = ("table", "key", "position", "cid", "batch", "partition", "offset")
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "syncline_log_context", default=None
)


def bind_log_context(**fields: Any) -> None:
    """Add ``fields`` to every record logged from this thread (or task) from now on."""
    _context.set({**(_context.get() or {}), **fields})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        if ctx:
            for k, v in ctx.items():
                if not hasattr(record, k):
                    setattr(record, k, v)
        return True


class TextFormatter(logging.Formatter):
    """Today's text lines, plus ``key=value`` for the change fields a record carries."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            f"{k}={getattr(record, k)}"
            for k in CHANGE_FIELDS
            if getattr(record, k, None) is not None
        ]
        if not extra:
            return line
        head, nl, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(extra)}]{nl}{rest}"


def json_formatter() -> logging.Formatter:
    """structlog's ProcessorFormatter rendering stdlib records as JSON lines."""
    try:
        import structlog
    except ImportError as exc:
        raise ConfigError(
            "--log-format json needs structlog: pip install 'syncline[logs]'"
        ) from exc
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    )


def setup_logging(
    level: str | int = "info", fmt: str = "text", stream: IO[str] | None = None
) -> None:
    """Configure the root logger once per process (the apply child calls it too)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--log-format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    formatter = json_formatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
