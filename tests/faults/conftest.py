"""A PostgreSQL server of our own that tests may stop, kill and restart.

The shared ``pg_server`` may be a server named by SYNCLINE_TEST_PG_DSN, which a test
must not stop; fault tests that take a server down use this one instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from servers import PgServer, start_postgres


@pytest.fixture(scope="session")
def own_pg_server() -> Iterator[PgServer]:
    server = start_postgres(durable=True, env_var=None)
    yield server
    server.stop()


@pytest.fixture
def own_pg_db(own_pg_server: PgServer) -> Iterator[Callable[[], str]]:
    """Factory of fresh databases on ``own_pg_server`` (which the test may stop)."""
    made: list[str] = []

    def make() -> str:
        dsn = own_pg_server.create_database("f")
        made.append(dsn)
        return dsn

    yield make
    for dsn in made:
        own_pg_server.drop_database(dsn)
