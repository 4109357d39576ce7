"""The audit log: one JSON line per management action, allowed or refused.

Append-only, flushed and fsync'd per line (actions are rare; losing the record of
one would defeat the purpose). It names the token, never its value, and
redacts secrets from targets, details and error messages.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from syncline.errors import ConfigError
from syncline.redact import redact_config, redact_text

log = logging.getLogger("syncline.audit")


class AuditLog:
    def __init__(self, path: Path, secrets: Callable[[], Iterable[str]] = tuple) -> None:
        self.path = path
        self._secrets = secrets
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the API audit log {path} ({exc.strerror}); set api.audit_log"
            ) from None
        self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def record(
        self,
        *,
        token: str | None,
        role: str | None,
        action: str,
        target: str | None,
        outcome: str,
        status: int,
        remote: str | None,
        error: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        secrets = tuple(self._secrets())
        entry: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "token": token,
            "role": role,
            "action": action,
            "target": redact_text(target, secrets) if target else target,
            "outcome": outcome,
            "status": status,
            "remote": remote,
        }
        if error:
            entry["error"] = redact_text(error, secrets)
        if detail:
            entry["detail"] = redact_config(detail, secrets)
        line = json.dumps(entry, default=str)
        with self._lock:
            if self._fh.closed:
                return
            self._fh.write(line + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        log.info(
            "%s by %s (%s) on %s: %s %d",
            action,
            token or "-",
            role or "-",
            entry["target"] or "-",
            outcome,
            status,
        )

    def close(self) -> None:
        with self._lock:
            self._fh.close()
