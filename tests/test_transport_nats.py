"""NATS JetStream as the log: the transport contract plus what only it promises."""

from __future__ import annotations

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


class TestNatsContract(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NatsServer) -> None:
        self.server = nats_server

    def make_transport(self, tmp_path: Path, partitions: int) -> Transport:
        return make(self.server, tmp_path, partitions)
