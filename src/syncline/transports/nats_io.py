"""Plumbing shared by the NATS transport's parts: event loop, connection, names, errors.

nats-py is asyncio; the pipeline is threaded. Each ``NatsTransport`` runs one
event loop in a daemon thread, and the threaded side hands it whole coroutines
(one per publish batch, poll top-up or admin call) with
``run_coroutine_threadsafe``, so the hot path costs one hop per batch, not per
message. Driver errors are translated here, once, into syncline's tree.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from syncline.config import NatsTransportConfig, redact_url
from syncline.errors import AuthError, ConfigError, SynclineError, TransportError

log = logging.getLogger("syncline.transports.nats")

T = TypeVar("T")

REQUEST_TIMEOUT_S = 10.0  # JetStream API calls and publish acknowledgements

# Header names. Nats-* are JetStream's own; Syncline-* are ours.
H_MSG_ID = "Nats-Msg-Id"
H_EXPECT_SEQ = "Nats-Expected-Last-Sequence"
H_EXPECT_ID = "Nats-Expected-Last-Msg-Id"
H_KEY = "Syncline-Key"
H_KEY_B64 = "Syncline-Key-B64"
H_TABLE = "Syncline-Table"
H_PREV = "Syncline-Prev"  # stream sequence of the previous record of the same partition
H_CHECKPOINT = "Syncline-Checkpoint"
H_COVERS = "Syncline-Covers"  # on a control message: last record sequence its checkpoint covers

_TOKEN = re.compile(r"^[A-Za-z0-9_$-]+$")
_KV_KEY = re.compile(r"^[A-Za-z0-9_=-]+$")


class Names:
    """Stream, subjects and consumer names of one pipeline."""

    def __init__(self, cfg: NatsTransportConfig, pipeline: str) -> None:
        self.pipeline = pipeline
        self.stream = cfg.stream or f"syncline_{pipeline}"
        self.prefix = f"syncline.{pipeline}"
        self.ctl = f"{self.prefix}.ctl"
        self.bucket = f"{self.stream}_meta"

    def subject(self, partition: int, table: str) -> tuple[str, str | None]:
        """Subject of a record, and the table header when the name does not fit a subject."""
        if all(_TOKEN.match(t) for t in table.split(".")):
            return f"{self.prefix}.{partition}.{table}", None
        safe = ".".join(re.sub(r"[^A-Za-z0-9_$-]", "_", t) or "_" for t in table.split("."))
        return f"{self.prefix}.{partition}.{safe}", header_value(table)

    def partition_filter(self, partition: int) -> str:
        return f"{self.prefix}.{partition}.>"

    def table_of(self, subject: str, headers: dict[str, str] | None) -> str:
        if headers is not None and H_TABLE in headers:
            return from_header_value(headers[H_TABLE])
        return subject.split(".", 3)[3]

    def durable(self, group: str, partition: int) -> str:
        name = f"{group}_p{partition}"
        if _TOKEN.match(name) and len(name) <= 200:
            return name
        digest = hashlib.blake2b(group.encode(), digest_size=6).hexdigest()
        return f"{re.sub(r'[^A-Za-z0-9_-]', '_', group)[:60]}_{digest}_p{partition}"


def kv_key(name: str) -> str:
    if _KV_KEY.match(name):
        return f"meta.{name}"
    return "meta_b64." + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def encode_key(key: bytes) -> tuple[str, str]:
    """A record key as a header: as-is when it is printable ASCII, else base64."""
    if key.isascii():
        text = key.decode()
        if text.isprintable() and text.strip() == text:
            return H_KEY, text
    return H_KEY_B64, base64.b64encode(key).decode()


def header_value(text: str) -> str:
    """``text`` as a header value: as-is when printable ASCII, else ``b64:`` + base64."""
    if text.isascii() and text.isprintable() and text.strip() == text:
        return text
    return "b64:" + base64.b64encode(text.encode()).decode()


def from_header_value(text: str) -> str:
    return base64.b64decode(text[4:]).decode() if text.startswith("b64:") else text


async def write(nc: Client, data: bytes) -> None:
    """Hand ready protocol bytes (``HPUB`` lines) to the client's outgoing buffer."""
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    await nc._send_command(data)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def flat(headers: dict[str, Any] | None) -> dict[str, str]:
    """Headers as ``name → value``: nats-py gives lists when fast_mail_parser is installed."""
    if not headers:
        return {}
    if any(isinstance(v, list) for v in headers.values()):
        return {k: (v[0] if isinstance(v, list) and v else str(v)) for k, v in headers.items()}
    return headers


def decode_key(headers: dict[str, str]) -> bytes:
    v = headers.get(H_KEY)
    if v is not None:
        return v.encode()
    return base64.b64decode(headers.get(H_KEY_B64, ""))


def digest(table: str, key: bytes, value: bytes) -> str:
    """What identifies a record's content across a re-read of the source.

    The event's top-level ``ts_ms``/``ts_us`` (when syncline read the change) differ
    on every read, so the value is cut before them: a re-streamed change hashes the
    same, while a snapshot row (its ``source.ts_ms`` is the read time too) does not.
    """
    cut = value.rfind(b',"ts_ms":')
    h = hashlib.blake2b(digest_size=8)
    h.update(table.encode())
    h.update(b"\0")
    h.update(key)
    h.update(b"\0")
    h.update(value if cut < 0 else value[:cut])
    return h.hexdigest()


class Loop:
    """One asyncio loop in a daemon thread; the threaded side submits coroutines."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, doing: str) -> T:
        """Run ``coro`` on the loop; a timeout or driver error becomes a ``SynclineError``."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Loop.run called from the loop thread")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except FutureTimeout as exc:  # also asyncio's timeouts from inside (the same class)
            if fut.done():
                raise translate(exc, doing) from exc
            fut.cancel()
            raise TransportError(
                f"NATS did not answer within {timeout:.0f} s while {doing}"
            ) from None
        except SynclineError:
            raise
        except Exception as exc:
            raise translate(exc, doing) from exc

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


def api_description(exc: BaseException) -> str:
    desc = getattr(exc, "description", None)
    code = getattr(exc, "err_code", None)
    if desc:
        return f"{desc} (error {code})" if code else str(desc)
    return str(exc) or type(exc).__name__


def translate(exc: BaseException, doing: str) -> SynclineError:
    """Driver error → syncline error: transient unless the server refused us."""
    text = str(exc)
    if "Authorization Violation" in text or "Authentication" in text:
        return AuthError(f"NATS refused the credentials while {doing} (authorization violation)")
    if isinstance(exc, nats.js.errors.APIError):
        return TransportError(f"NATS JetStream error while {doing}: {api_description(exc)}")
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return TransportError(f"NATS did not answer in time while {doing}")
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.NoServersError):
        return TransportError(f"NATS connection lost while {doing}")
    if isinstance(exc, nats.errors.Error | OSError):
        return TransportError(f"NATS error while {doing}: {text or type(exc).__name__}")
    return TransportError(f"NATS error while {doing}: {type(exc).__name__}: {text}")


async def connect(
    cfg: NatsTransportConfig, pipeline: str, closing: Callable[[], bool] = lambda: False
) -> Client:
    """Connect (reconnecting forever afterwards); fail fast, in one line, if nobody answers."""
    last: list[BaseException] = []
    where = ", ".join(redact_url(s) for s in cfg.servers)

    async def on_error(exc: Exception) -> None:
        last.append(exc)
        del last[:-1]
        log.debug("NATS %s: %s", where, type(exc).__name__)

    async def on_disconnect() -> None:
        if not closing():
            log.warning("NATS connection to %s lost; reconnecting", where)

    async def on_reconnect() -> None:
        log.info("NATS reconnected (pipeline %s)", pipeline)

    opts: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": f"syncline-{pipeline}",
        "connect_timeout": cfg.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.credentials:
        if not os.path.isfile(cfg.credentials):
            raise ConfigError(f"transport.credentials: file {cfg.credentials} not found")
        opts["user_credentials"] = cfg.credentials
    if cfg.token is not None:
        opts["token"] = cfg.token.get_secret_value()
    if cfg.user is not None and cfg.password is not None:
        opts["user"] = cfg.user
        opts["password"] = cfg.password.get_secret_value()
    budget = cfg.connect_timeout * max(2, len(cfg.servers)) + 1.0
    try:
        return await asyncio.wait_for(nats.connect(**opts), budget)
    except (TimeoutError, nats.errors.NoServersError, OSError) as exc:
        cause = last[-1] if last else exc
        if "Authorization Violation" in str(cause):
            raise AuthError(
                f"NATS at {where} refused the credentials (authorization violation); "
                "check transport.user/password, token or credentials"
            ) from None
        why = type(cause).__name__ if not str(cause) else str(cause).split("\n")[0]
        raise TransportError(f"cannot connect to NATS at {where} ({why})") from None
    except nats.errors.Error as exc:
        if "Authorization Violation" in str(exc):
            raise AuthError(
                f"NATS at {where} refused the credentials (authorization violation); "
                "check transport.user/password, token or credentials"
            ) from None
        raise TransportError(f"cannot connect to NATS at {where} ({exc})") from None
