"""What metrics, the monitoring stream and JSON logs cost on the data path.

Part 1 (micro): the per-batch work the capture and apply loops gained, per event,
next to the work those loops already did for the same batch.

Part 2 (end to end): bench/run.py's bulk workload (N rows of ~200 B in one
PostgreSQL transaction, end-to-end rows/s through ``syncline run``), run in rounds
so the variants interleave on the same servers:

* ``base``: another checkout of syncline (``--base DIR``, e.g. from ``git archive``),
  if given: the code before this work;
* ``off``: this checkout, monitoring off, no scraper (the default);
* ``metrics``: ``--metrics`` on and scraped every 0.5 s during the run;
* ``monitoring``: monitoring on (SQLite store, sample 1.0) and ``--log-format json``.

Usage: python bench/observability.py [--rows 200000] [--rounds 3] [--base DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from run import BULK_DDL, BULK_INSERT, q, wait_for  # noqa: E402
from servers import PgServer, start_postgres  # noqa: E402
from syncline.config import parse_config  # noqa: E402
from syncline.events import Change, ChangeEvent, SourceInfo, encode_key, encode_value  # noqa: E402
from syncline.metrics import PipelineStats, count_table_ops  # noqa: E402
from syncline.monitoring.monitor import Monitor  # noqa: E402
from syncline.transports.base import Delivered, Record  # noqa: E402


def micro() -> None:
    n = 5000
    changes = [
        Change(
            {"id": i},
            ChangeEvent(
                after={"id": i, "customer": f"customer-{i}", "note": "x" * 150},
                source=SourceInfo(
                    connector="postgresql",
                    name="p",
                    ts_ms=1,
                    ts_us=1000,
                    db="d",
                    schema="public",
                    table=f"t{i % 3}",
                    lsn=1 << 32,
                    seq=i,
                ),
                op="c" if i % 2 else "u",
                ts_ms=1,
            ),
        )
        for i in range(n)
    ]

    def build() -> list[Record]:  # what the capture loop already does per batch
        return [
            Record(
                ch.event.source.schema + "." + ch.event.source.table,
                encode_key(ch.key),
                encode_value(ch.event),
            )
            for ch in changes
        ]

    records = build()
    stats = PipelineStats("p")

    def count_capture() -> None:
        by = count_table_ops([r.table for r in records], [c.event.op for c in changes])
        stats.captured_by.update(by)
        stats.published_by.update(by)

    class Item:
        __slots__ = ("change", "record")

        def __init__(self, record: Delivered, change: Change) -> None:
            self.record, self.change = record, change

    items = [
        Item(Delivered(0, i, r.table, r.key, r.value), c)
        for i, (r, c) in enumerate(zip(records, changes, strict=True))
    ]

    def count_apply() -> None:
        stats.applied_by.update(
            count_table_ops([it.record.table for it in items], [it.change.event.op for it in items])
        )

    latencies = [float(i % 200) for i in range(n)]

    def histogram() -> None:
        stats.latency_hist.observe_many(latencies)

    cfg = parse_config(
        {
            "pipelines": [
                {"name": "p", "source": {"kind": "sqlite", "path": "x", "tables": ["t"]},
                 "sink": {"kind": "sqlite", "path": "y"}}
            ],
            "monitoring": {"enabled": True, "queue_size": 10_000_000},
        }
    )  # fmt: skip
    monitor = Monitor(cfg.monitoring)
    pm = monitor.for_pipeline(cfg.pipelines[0], stats)

    def published() -> None:
        pm.published(changes, records, 1, 2)

    def applied() -> None:
        pm.applied(items)  # type: ignore[arg-type]

    def decode() -> None:  # what the apply loop already does per batch (before the sink)
        from syncline.events import decode_key, decode_value

        [Change(decode_key(r.key), decode_value(r.value)) for r in records]

    rows = [
        ("capture: build records (existing)", build),
        ("capture: (table, op) counts (new, always on)", count_capture),
        ("capture: monitoring records (new, when enabled)", published),
        ("apply: decode batch (existing)", decode),
        ("apply: (table, op) counts (new, always on)", count_apply),
        ("apply: latency histogram (new, always on)", histogram),
        ("apply: monitoring records (new, when enabled)", applied),
    ]
    print(f"per-event cost, batches of {n:,} (best of 5):")
    for label, fn in rows:
        best = min(timeit.repeat(fn, number=20, repeat=5)) / 20 / n * 1e9
        print(f"  {label:<50} {best:8.0f} ns/event")
        monitor._take()  # keep the queue from growing


class Run:
    """One ``syncline run`` of the bulk workload (fresh databases, fresh log)."""

    def __init__(self, variant: str, a: PgServer, b: PgServer, rows: int, base: Path | None):
        self.variant, self.rows = variant, rows
        self.src, self.dst = a.create_database("bulk"), b.create_database("bulk")
        self.a, self.b = a, b
        q(self.src, BULK_DDL)
        q(self.dst, BULK_DDL)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"syncline-obs-{variant}-"))
        extra = ""
        args: list[str] = []
        if variant == "monitoring":
            extra = f"monitoring: {{enabled: true, store: {{path: {self.tmp / 'mon.db'}}}}}\n"
            args = ["--log-format", "json"]
        if variant == "metrics":
            args = ["--metrics", "127.0.0.1:9479"]
        cfg = self.tmp / "bulk.yaml"
        cfg.write_text(
            f"""
pipelines:
  - name: bench-bulk
    source: {{kind: postgres, dsn: "{self.src}", tables: [public.bulk], snapshot: never}}
    transport: {{kind: embedded, path: "{self.tmp / "log"}"}}
    sink: {{kind: postgres, dsn: "{self.dst}"}}
{extra}"""
        )
        env = dict(os.environ)
        cwd = REPO
        if variant == "base":
            assert base is not None
            env["PYTHONPATH"] = str(base / "src")
            cwd = base
        self.log = open(self.tmp / "run.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncline", "run", str(cfg), "--log-level", "warning", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
        wait_for(
            lambda: (
                q(
                    self.src,
                    "SELECT bool_or(active) FROM pg_replication_slots WHERE slot_name = %s",
                    ("syncline_bench_bulk",),
                )
                == [(True,)]
            ),
            60,
            0.1,
        )
        time.sleep(0.5)

    def measure(self) -> float:
        stop = threading.Event()
        scraper = threading.Thread(target=self._scrape, args=(stop,), daemon=True)
        if self.variant == "metrics":
            scraper.start()
        try:
            t0 = time.monotonic()
            q(self.src, BULK_INSERT, (self.rows,))
            t_end = wait_for(
                lambda: q(self.dst, "SELECT count(*) FROM public.bulk") == [(self.rows,)], 600, 0.05
            )
        finally:
            stop.set()
            self.proc.terminate()
            self.proc.wait(30)
            self.log.close()
            self.a.drop_database(self.src)
            self.b.drop_database(self.dst)
        return self.rows / (t_end - t0)

    @staticmethod
    def _scrape(stop: threading.Event) -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(OSError):
                urllib.request.urlopen("http://127.0.0.1:9479/metrics", timeout=5).read()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, help="a checkout of syncline before this work")
    ap.add_argument("--micro-only", action="store_true")
    args = ap.parse_args()
    micro()
    if args.micro_only:
        return
    variants = (["base"] if args.base else []) + ["off", "metrics", "monitoring"]
    a, b = start_postgres(durable=True), start_postgres(durable=True)
    results: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for rnd in range(args.rounds):
            for v in variants:
                rate = Run(v, a, b, args.rows, args.base).measure()
                results[v].append(rate)
                print(f"round {rnd + 1} {v:<10} {rate:,.0f} rows/s", flush=True)
    finally:
        a.stop()
        b.stop()
    ref = statistics.median(results["base" if args.base else "off"])
    print(f"\nbulk {args.rows:,} rows, end to end, median of {args.rounds}:")
    for v, rates in results.items():
        med = statistics.median(rates)
        print(
            f"  {v:<10} {med:10,.0f} rows/s  ({med / ref:.2f}x)  runs: {Counter(round(r, -2) for r in rates)}"
        )


if __name__ == "__main__":
    main()
