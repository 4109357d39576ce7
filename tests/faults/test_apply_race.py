"""Two appliers of one pipeline racing on its very first positions (found by the kill -9 loop).

After a kill -9, an apply worker of the dead process can still be running for a
moment (see the report on apply_process.py) while the new one starts. The sink's
fence (``SELECT … FOR UPDATE`` of the pipeline's position rows) serialises them,
but in READ COMMITTED the waiting statement keeps the snapshot it started with:
it sees rows updated meanwhile, not rows *inserted* meanwhile. A partition's
first position is an insert, so the second applier finds the positions it
expected and applies the same batch again.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from contract.sink_contract import ITEMS, ITEMS_DDL, ins
from e2e_helpers import pg_exec, pg_rows
from syncline.config import PostgresSinkConfig
from syncline.errors import TransientError
from syncline.sinks.postgres import PostgresSink


def test_fence_sees_first_positions_stored_by_a_concurrent_applier(pg_target_dsn: str) -> None:
    pg_exec(
        pg_target_dsn,
        ITEMS_DDL,
        "CREATE TABLE audit (n int); CREATE TABLE slept (n int);"
        " CREATE FUNCTION au() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN"
        "  INSERT INTO audit VALUES (1);"
        "  IF NOT EXISTS (SELECT 1 FROM slept) THEN"
        "    INSERT INTO slept VALUES (1); PERFORM pg_sleep(1);"  # hold the first batch open
        "  END IF;"
        "  RETURN NEW; END$$;"
        " CREATE TRIGGER au AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION au();",
    )
    cfg = PostgresSinkConfig(kind="postgres", dsn=pg_target_dsn)
    old, new = PostgresSink(cfg, "p"), PostgresSink(cfg, "p")
    for sink in (old, new):
        sink.open("p")
        sink.prepare({"public.items": ITEMS})
        assert sink.positions() == {}
    errors: list[BaseException] = []

    def apply_old() -> None:
        try:
            old.apply([ins(1), ins(2)], {0: 2})
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=apply_old)
    t.start()
    time.sleep(0.3)  # the old applier holds the fence, inside its first batch
    try:
        with pytest.raises(TransientError, match="another syncline process is applying"):
            new.apply([ins(1), ins(2)], {0: 2})
    finally:
        t.join()
        old.close()
        new.close()
    assert errors == []
    assert pg_rows(pg_target_dsn, "SELECT count(*) FROM audit") == [(2,)]  # each row once


def test_postgres_read_committed_lock_wait_keeps_the_statement_snapshot(
    pg_target_dsn: str,
) -> None:
    """The PostgreSQL behaviour behind the race, on its own."""
    pg_exec(
        pg_target_dsn, "CREATE TABLE o (p int PRIMARY KEY, n int)", "INSERT INTO o VALUES (-1, 0)"
    )
    a, b = psycopg2.connect(pg_target_dsn), psycopg2.connect(pg_target_dsn)
    try:
        with a.cursor() as ca:
            ca.execute("SELECT p FROM o ORDER BY p FOR UPDATE")
            ca.execute("INSERT INTO o VALUES (0, 200)")
        seen: list[list[tuple[int, int]]] = []

        def lock_b() -> None:
            with b.cursor() as cb:
                cb.execute("SELECT p, n FROM o ORDER BY p FOR UPDATE")
                seen.append(cb.fetchall())
                cb.execute("SELECT p, n FROM o ORDER BY p")  # a new statement: a new snapshot
                seen.append(cb.fetchall())

        t = threading.Thread(target=lock_b)
        t.start()
        time.sleep(0.3)
        a.commit()
        t.join()
        assert seen == [[(-1, 0)], [(-1, 0), (0, 200)]]
    finally:
        a.close()
        b.close()
