"""NATS JetStream as the log: the transport contract plus what only it promises."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from contract.transport_contract import TransportContract
from servers import NatsServer
from syncline.config import NatsTransportConfig
from syncline.transports.base import Transport
from syncline.transports.nats import NatsTransport


def pipeline_name(tmp_path: Path) -> str:
    return "t" + hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest()


def make(server: NatsServer, tmp_path: Path, partitions: int = 4, **kw: object) -> NatsTransport:
    cfg = NatsTransportConfig.model_validate(
        {"kind": "nats", "servers": server.urls, "partitions": partitions, **kw}
    )
    return NatsTransport(cfg, pipeline_name(tmp_path))


def age_out(t: NatsTransport) -> None:
    """JetStream deletes by age: lower the stream's max_age until it is empty, then restore it."""

    async def run() -> None:
        js, name = t.js, t.names.stream
        cfg = (await js.stream_info(name)).config
        keep = cfg.max_age, cfg.duplicate_window
        cfg.max_age, cfg.duplicate_window = 1.0, 0.5
        await js.update_stream(cfg)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (await js.stream_info(name)).state.messages == 0:
                break
        cfg.max_age, cfg.duplicate_window = keep
        await js.update_stream(cfg)

    t.ensure()
    t.run(run(), "ageing the stream", 30.0)


class TestNatsContract(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NatsServer) -> None:
        self.server = nats_server

    def make_transport(self, tmp_path: Path, partitions: int) -> Transport:
        return make(self.server, tmp_path, partitions)

    def age_out(self, transport: Transport) -> None:
        assert isinstance(transport, NatsTransport)
        age_out(transport)
