"""The API's HTTP server: uvicorn in a background thread of ``syncline run``.

The socket is bound in the caller's thread, so "address in use" is a one-line
error at start rather than a log line from a dying thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from syncline.api.settings import ENV_TOKENS, ApiSettings
from syncline.errors import ConfigError

if TYPE_CHECKING:
    from syncline.runtime import Runtime

log = logging.getLogger("syncline.api")


class ApiServer:
    def __init__(self, runtime: Runtime, settings: ApiSettings) -> None:
        try:
            import uvicorn

            from syncline.api.app import create_app
        except ImportError as exc:
            raise ConfigError(
                f"the management API needs the 'api' extra: pip install 'syncline[api]' ({exc})"
            ) from None
        self.settings = settings
        for name in ("uvicorn", "uvicorn.error"):  # its start/stop chatter: ours says enough
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.app = create_app(runtime, settings)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_config=None,  # keep syncline's logging as it is
                access_log=False,  # the audit log records what matters
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
        )
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self, timeout: float = 10.0) -> None:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        try:
            self._sock = socket.create_server((s.host, s.port), family=family)
        except OSError as exc:
            raise ConfigError(
                f"the API cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); "
                "pick another address with api.listen or --api"
            ) from None
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="syncline-api"
        )
        self._thread.daemon = True
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        log.info("management API on %s (OpenAPI docs at %s/docs)", self.url, self.url)
        if s.open_access:
            log.warning(
                "the API has no tokens: any local process may manage the pipelines; it "
                "listens on loopback only (set api.tokens or %s to require tokens)",
                ENV_TOKENS,
            )

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self.app.state.ctx.audit.close()
