"""``syncline demo``: two SQLite service databases kept in sync, no servers needed.

The orders service writes orders and customers; syncline captures them with
triggers, logs them in the embedded log and applies them to the inventory
service's database (orders land in ``orders_replica`` to show table mapping).
At the end both sides are compared row by row.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.live import Live
from rich.table import Table

from syncline.config import (
    EmbeddedTransportConfig,
    PipelineConfig,
    RetryConfig,
    SqliteSinkConfig,
    SqliteSourceConfig,
    TableOptions,
)
from syncline.pipeline import Pipeline

STATUSES = ("new", "paid", "packed", "shipped", "delivered", "cancelled")


def _create_orders_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE IF NOT EXISTS customers(
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, tier TEXT);
        CREATE TABLE IF NOT EXISTS orders(
            id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, status TEXT NOT NULL,
            total_cents INTEGER NOT NULL, note TEXT, updated_at TEXT NOT NULL);
        """
    )
    db.close()


class Generator(threading.Thread):
    """Writes a random mix of inserts, updates and deletes at about ``rate`` changes/s."""

    def __init__(self, path: Path, rate: int, seconds: float) -> None:
        super().__init__(name="demo-generator", daemon=True)
        self.path, self.rate, self.seconds = path, rate, seconds
        self.changes = 0
        self.rng = random.Random(42)

    def run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        rng, next_id, customers = self.rng, 1, 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < self.seconds:
            if self.changes > elapsed * self.rate:
                time.sleep(0.002)
                continue
            db.execute("BEGIN IMMEDIATE")
            for _ in range(rng.randint(1, 20)):
                roll = rng.random()
                now = time.strftime("%Y-%m-%dT%H:%M:%S")
                if customers < 50 or roll < 0.05:
                    customers += 1
                    cur = db.execute(
                        "INSERT INTO customers VALUES (?,?,?,?)",
                        (
                            customers,
                            f"Customer {customers}",
                            f"c{customers}@example.com",
                            rng.choice("ABC"),
                        ),
                    )
                elif roll < 0.6 or next_id < 10:
                    cur = db.execute(
                        "INSERT INTO orders VALUES (?,?,?,?,?,?)",
                        (
                            next_id,
                            rng.randint(1, customers),
                            "new",
                            rng.randint(100, 99_999),
                            "démo ✓",
                            now,
                        ),
                    )
                    next_id += 1
                elif roll < 0.92:
                    cur = db.execute(
                        "UPDATE orders SET status=?, total_cents=total_cents+1, updated_at=? WHERE id=?",
                        (rng.choice(STATUSES), now, rng.randint(1, next_id - 1)),
                    )
                else:
                    cur = db.execute(
                        "DELETE FROM orders WHERE id=?", (rng.randint(1, next_id - 1),)
                    )
                self.changes += cur.rowcount  # an update of a deleted order changes nothing
            db.execute("COMMIT")
        db.close()


def _rows(path: Path, table: str, cols: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(f"SELECT {cols} FROM {table} ORDER BY id"))
    finally:
        db.close()


def _progress(pipe: Pipeline, gen: Generator, started: float) -> Table:
    s = pipe.stats
    p50, p99 = s.latency_percentiles(50, 99)
    elapsed = max(time.monotonic() - started, 1e-6)
    t = Table(title=f"syncline demo — pipeline {pipe.name} [{s.state}]", expand=False)
    for col in ("generated", "captured", "applied", "rows/s applied", "lag p50", "lag p99"):
        t.add_column(col, justify="right")
    t.add_row(
        f"{gen.changes:,}",
        f"{s.captured:,}",
        f"{s.applied + s.skipped:,}",
        f"{(s.applied + s.skipped) / elapsed:,.0f}",
        f"{p50:.1f} ms",
        f"{p99:.1f} ms",
    )
    return t


def run_demo(
    seconds: float = 10.0,
    rate: int = 2000,
    workdir: Path | None = None,
    # at a few thousand changes/s one process is plenty, and the apply child's ~1 s
    # start-up would otherwise show up as lag on the first changes
    apply_in: Literal["process", "thread"] = "thread",
) -> bool:
    console = Console()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="syncline-demo-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    orders_db, inventory_db = workdir / "orders.db", workdir / "inventory.db"
    for f in (orders_db, inventory_db):
        for suffix in ("", "-wal", "-shm"):
            Path(str(f) + suffix).unlink(missing_ok=True)
    _create_orders_db(orders_db)

    cfg = PipelineConfig(
        name="orders-to-inventory",
        source=SqliteSourceConfig(
            kind="sqlite", path=str(orders_db), tables=["orders", "customers"]
        ),
        transport=EmbeddedTransportConfig(path=str(workdir / "log")),
        sink=SqliteSinkConfig(
            kind="sqlite",
            path=str(inventory_db),
            tables={"main.orders": TableOptions(target="orders_replica")},
            create_tables=True,
        ),
        apply_in=apply_in,
        # a short demo: retry a busy database within a second, not after up to 30 s
        retry=RetryConfig(max_delay_ms=1000),
    )
    # a fresh log each run: the demo databases are new too
    for old in (workdir / "log").glob("orders-to-inventory.*"):
        old.unlink()
    console.print(f"[bold]syncline demo[/]: {orders_db.name} → {inventory_db.name} in {workdir}")
    pipe = Pipeline(cfg)
    gen = Generator(orders_db, rate, seconds)
    started = time.monotonic()
    pipe.start()
    gen.start()
    with Live(_progress(pipe, gen, started), console=console, refresh_per_second=4) as live:
        while gen.is_alive() and pipe.alive:
            time.sleep(0.25)
            live.update(_progress(pipe, gen, started))
        deadline = time.monotonic() + 30
        while (
            pipe.alive
            and time.monotonic() < deadline
            and (pipe.stats.captured < gen.changes or not pipe.caught_up())
        ):
            time.sleep(0.05)
            live.update(_progress(pipe, gen, started))
        elapsed = time.monotonic() - started
        pipe.stop(drain=True)
        live.update(_progress(pipe, gen, started))

    cols_o = "id, customer_id, status, total_cents, note, updated_at"
    cols_c = "id, name, email, tier"
    same_orders = _rows(orders_db, "orders", cols_o) == _rows(
        inventory_db, "orders_replica", cols_o
    )
    same_customers = _rows(orders_db, "customers", cols_c) == _rows(
        inventory_db, "customers", cols_c
    )
    s = pipe.stats
    p50, p99 = s.latency_percentiles(50, 99)
    summary = Table(title="summary", show_header=False)
    summary.add_row("changes generated", f"{gen.changes:,}")
    summary.add_row("events captured / applied", f"{s.captured:,} / {s.applied + s.skipped:,}")
    summary.add_row(
        "throughput", f"{(s.applied + s.skipped) / elapsed:,.0f} events/s over {elapsed:.1f} s"
    )
    summary.add_row("commit→apply lag", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    summary.add_row("orders == orders_replica", "[green]yes[/]" if same_orders else "[red]NO[/]")
    summary.add_row("customers == customers", "[green]yes[/]" if same_customers else "[red]NO[/]")
    console.print()
    console.print(summary)
    ok = same_orders and same_customers and s.state != "failed" and s.captured == gen.changes
    if s.error:
        console.print(f"[red]pipeline {s.state}:[/] {s.error}")
    if s.captured != gen.changes:
        console.print(f"[red]captured {s.captured:,} of {gen.changes:,} changes in time[/]")
    console.print(
        "[green bold]source and target are identical[/]"
        if ok
        else "[red bold]verification failed[/]"
    )
    if tmp is not None:
        tmp.cleanup()
    return ok
