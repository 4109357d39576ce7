"""One exception tree for the whole engine.

The branch an error belongs to decides what the runtime does with it:
``TransientError`` is retried with backoff (the world may heal: a server restarts,
a lock is released), ``PermanentError`` is not (retrying the same input gives the
same answer), and ``ConfigError`` stops before anything runs. Driver errors are
translated once, at the backend boundary, with ``raise Ours(...) from exc``.
"""

from __future__ import annotations


class SynclineError(Exception):
    """Root of every error syncline raises on purpose.

    ``str(err)`` is a single line a user can act on; the CLI prints it without
    a traceback.
    """


class ConfigError(SynclineError):
    """The configuration (file, field, DSN shape) is wrong; fix it and rerun."""


class TransientError(SynclineError):
    """A failure that may succeed when retried (connection lost, timeout, deadlock)."""


class PermanentError(SynclineError):
    """A failure that retrying cannot fix (bad credentials, missing table, bad data)."""


class ConnectError(TransientError):
    """A server could not be reached right now."""


class AuthError(PermanentError):
    """The server refused the credentials."""


class SchemaError(PermanentError):
    """A table or column is missing or does not fit (no primary key, type mismatch)."""


class DataError(PermanentError):
    """One event cannot be applied as it is (constraint violation, undecodable value)."""


class TransportError(TransientError):
    """The durable log could not take or hand out records right now."""


class DiskError(TransportError):
    """The log's disk refuses writes now (full, read-only, permissions).

    Retried, not fatal: freeing space or remounting the disk fixes it without a
    restart, and until then nothing is confirmed to the source, so nothing is lost.
    """


class StorageError(PermanentError):
    """The embedded log's file is unusable as it is (corrupt, foreign, wrong layout)."""


def naming(pipeline: str, message: str) -> str:
    """``message`` prefixed with its pipeline, unless it names it already."""
    return message if f"pipeline {pipeline}" in message else f"pipeline {pipeline}: {message}"


def for_pipeline(exc: SynclineError, pipeline: str) -> SynclineError:
    """The same kind of error, its message naming the pipeline it happened in."""
    message = naming(pipeline, str(exc))
    if message == str(exc):
        return exc
    err = type(exc)(message)
    err.__cause__ = exc.__cause__
    return err
