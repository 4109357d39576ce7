"""Shared fixtures: real servers, never mocks (see tests/servers.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from servers import (
    KAFKA_HOW,
    KafkaBroker,
    NatsServer,
    PgServer,
    start_kafka,
    start_nats,
    start_postgres,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def new_pg_db(pg_server: PgServer) -> Iterator[Callable[[], str]]:
    """Factory: each call creates a fresh database and returns its DSN."""
    made: list[str] = []

    def make() -> str:
        dsn = pg_server.create_database()
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        pg_server.drop_database(dsn)


@pytest.fixture
def pg_source_dsn(new_pg_db: Callable[[], str]) -> str:
    return new_pg_db()


@pytest.fixture
def pg_target_dsn(new_pg_db: Callable[[], str]) -> str:
    return new_pg_db()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A Kafka broker (SYNCLINE_KAFKA_BOOTSTRAP or a local one); skipped when there is none."""
    broker = start_kafka()
    if broker is None:
        pytest.skip(KAFKA_HOW)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = start_nats()
    yield server
    server.stop()


@pytest.fixture
def pipes() -> Iterator[list[Any]]:
    """Pipelines a test starts in this process; stopped (without draining) afterwards."""
    started: list[Any] = []
    yield started
    for p in started:
        p.stop(drain=False, timeout=10)
