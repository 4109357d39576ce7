"""NATS JetStream as the durable log (``transport: {kind: nats}``).

One stream per pipeline, ``syncline_<pipeline>``, holding every record on
``syncline.<pipeline>.<partition>.<schema>.<table>``; offsets are the stream's
sequence numbers (they grow within a partition, with gaps). The producer and
its crash recovery live in nats_producer.py, the consumer in nats_consumer.py,
the event loop, names and error translation in nats_io.py. See
docs/transports.md for the guarantees and why they hold.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from syncline.config import NatsTransportConfig, redact_url
from syncline.errors import ConfigError, TransportError
from syncline.transports.base import Transport
from syncline.transports.nats_io import (
    REQUEST_TIMEOUT_S,
    Loop,
    Names,
    connect,
    kv_key,
    log,
)

FORMAT = "1"
_DESCRIPTION = re.compile(r"^syncline pipeline (\S+): (\d+) partitions, format (\d+)$")
DUPLICATE_WINDOW_S = 30.0  # Msg-Id de-duplication is a second line of defence; keep it short


class NatsTransport(Transport):
    """Connects lazily (a server that is down is a retryable error, not a crash at start)."""

    def __init__(self, config: NatsTransportConfig, pipeline: str) -> None:
        self.config = config
        self.pipeline = pipeline
        self.partitions = config.partitions
        self.names = Names(config, pipeline)
        self.where = ", ".join(redact_url(s) for s in config.servers)
        self._lock = threading.Lock()
        self._loop: Loop | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._children: list[Any] = []
        self._closed = False

    # ---- connection ------------------------------------------------------------------

    @property
    def loop(self) -> Loop:
        assert self._loop is not None
        return self._loop

    @property
    def nc(self) -> Client:
        assert self._nc is not None
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None
        return self._js

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None
        return self._kv

    def ensure(self) -> None:
        """Connect, and create (or check) the stream and the metadata bucket, once."""
        with self._lock:
            if self._closed:
                raise TransportError(f"NATS transport of pipeline {self.pipeline} is closed")
            if self._loop is None:
                self._loop = Loop(f"syncline-nats-{self.pipeline}")
            if self._nc is None:
                budget = self.config.connect_timeout * max(2, len(self.config.servers)) + 5.0
                self._nc = self._loop.run(
                    connect(self.config, self.pipeline, lambda: self._closed),
                    budget,
                    f"connecting to {self.where}",
                )
                self._js = self._nc.jetstream(timeout=REQUEST_TIMEOUT_S)
            if self._kv is None:
                self._kv = self._loop.run(
                    self._ensure_stream(), REQUEST_TIMEOUT_S * 3, "creating the stream"
                )

    def run(self, coro: Any, doing: str, timeout: float = REQUEST_TIMEOUT_S + 2.0) -> Any:
        """Run a coroutine on the loop (after ``ensure``)."""
        return self.loop.run(coro, timeout, doing)

    def _description(self) -> str:
        # the layout lives in the description: servers before 2.10 drop stream metadata
        return f"syncline pipeline {self.pipeline}: {self.partitions} partitions, format {FORMAT}"

    def _stream_config(self) -> StreamConfig:
        max_age = self.config.retention_hours * 3600.0
        return StreamConfig(
            name=self.names.stream,
            description=self._description(),
            subjects=[f"{self.names.prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=self.config.replicas,
            max_age=max_age,
            discard=DiscardPolicy.OLD,
            duplicate_window=min(DUPLICATE_WINDOW_S, max_age),
            metadata={
                "syncline_pipeline": self.pipeline,
                "syncline_partitions": str(self.partitions),
                "syncline_format": FORMAT,
            },
        )

    async def _ensure_stream(self) -> KeyValue:
        js = self.js
        want = self._stream_config()
        name = self.names.stream
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(want)
            except nats.js.errors.BadRequestError as exc:
                raise ConfigError(
                    f"cannot create NATS stream {name} for pipeline {self.pipeline}: "
                    f"{exc.description} (another stream may already take subjects "
                    f"{self.names.prefix}.>)"
                ) from None
            log.info("created NATS stream %s (%d partitions)", name, self.partitions)
        else:
            have = info.config
            found = _DESCRIPTION.match(have.description or "")
            if have.subjects != want.subjects or not found or found[1] != self.pipeline:
                raise ConfigError(
                    f"NATS stream {name} exists but is not pipeline {self.pipeline}'s log "
                    f"(subjects {have.subjects}); set transport.stream to another name"
                )
            stored = found[2]
            if stored != str(self.partitions):
                raise ConfigError(
                    f"NATS stream {name} has {stored} partitions but transport.partitions is "
                    f"{self.partitions}; changing it would break per-key order, so set it back "
                    f"to {stored} or use another transport.stream"
                )
            if have.max_age != want.max_age or have.num_replicas != want.num_replicas:
                have.max_age = want.max_age
                have.duplicate_window = want.duplicate_window
                have.num_replicas = want.num_replicas
                await js.update_stream(have)
                log.info("NATS stream %s: retention/replicas updated from the config", name)
        bucket = self.names.bucket
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    replicas=self.config.replicas,
                    storage=StorageType.FILE,
                    description=f"syncline pipeline {self.pipeline}: metadata",
                )
            )

    # ---- Transport -------------------------------------------------------------------

    def check(self) -> list[str]:
        self.ensure()

        async def info() -> tuple[int, int]:
            si = await self.js.stream_info(self.names.stream)
            return si.state.messages, si.config.num_replicas or 1

        messages, replicas = self.run(info(), "reading the stream")
        return [
            f"NATS stream {self.names.stream} at {self.where}: {self.partitions} partitions, "
            f"{replicas} replica(s), {messages} messages, retention "
            f"{self.config.retention_hours:g} h"
        ]

    def producer(self) -> Any:
        from syncline.transports.nats_producer import NatsProducer

        self.ensure()
        prod = NatsProducer(self)
        self._children.append(prod)
        return prod

    def consumer(self, group: str, partitions: Sequence[int] | None = None) -> Any:
        from syncline.transports.nats_consumer import NatsConsumer

        parts = list(range(self.partitions)) if partitions is None else list(partitions)
        bad = [p for p in parts if not 0 <= p < self.partitions]
        if bad or not parts:
            raise ConfigError(
                f"consumer {group!r}: partitions {parts} are not a non-empty subset of "
                f"0..{self.partitions - 1} of NATS stream {self.names.stream}"
            )
        self.ensure()
        cons = NatsConsumer(self, group, parts)
        self._children.append(cons)
        return cons

    async def last_seqs(self) -> dict[int, int]:
        """Stream sequence of the newest record of each partition (0: none)."""
        out: dict[int, int] = {}
        for p in range(self.partitions):
            try:
                msg = await self.js.get_last_msg(self.names.stream, self.names.partition_filter(p))
                out[p] = int(msg.seq or 0)
            except nats.js.errors.NotFoundError:
                out[p] = 0
        return out

    def end_offsets(self) -> dict[int, int]:
        self.ensure()
        last = self.run(self.last_seqs(), "reading end offsets")
        return {p: (s + 1 if s else 0) for p, s in last.items()}

    def put_meta(self, name: str, value: str) -> None:
        self.ensure()
        self.run(self.kv.put(kv_key(name), value.encode()), f"storing {name}")

    def get_meta(self, name: str) -> str | None:
        self.ensure()

        async def get() -> bytes | None:
            try:
                entry = await self.kv.get(kv_key(name))
            except nats.js.errors.KeyNotFoundError:
                return None
            return entry.value

        raw = self.run(get(), f"reading {name}")
        return None if raw is None else bytes(raw).decode()

    def close(self) -> None:
        for child in self._children:
            child.close()
        self._children.clear()
        with self._lock:
            self._closed = True
            if self._nc is not None and self._loop is not None:
                try:
                    self._loop.run(self._nc.close(), 5.0, "closing the connection")
                except Exception as exc:
                    log.debug("closing NATS connection: %s", exc)
            if self._loop is not None:
                self._loop.close()
            self._nc = self._js = self._kv = None
