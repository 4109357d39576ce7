"""syncline vs PostgreSQL's own logical replication, same machine, same run.

Two throwaway PostgreSQL servers (source and target, fsync on) are started; each
workload runs once through native logical replication (CREATE SUBSCRIPTION) and
once through syncline (`syncline run`, embedded log), on fresh databases.

  (a) bulk: N rows of ~200 bytes inserted in one transaction; end-to-end rows/s
      from the start of the INSERT until the target holds every row.
  (b) oltp: single-row upsert transactions at a fixed rate (pgbench -R); a trigger
      on the target stamps each applied row, so commit→applied latency is
      measured per change on the servers' own clock.

With ``--transport nats`` syncline's log is NATS JetStream: a throwaway
``nats-server -js`` on this machine (or ``BENCH_NATS_URL``), one stream per run.

Usage: python bench/run.py [--rows 200000] [--rate 2000] [--seconds 20] [--only bulk|oltp]
                           [--transport embedded|nats] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from servers import NatsServer, PgServer, _pg_bindir, start_nats, start_postgres  # noqa: E402

BULK_DDL = """CREATE TABLE public.bulk (
  id bigint PRIMARY KEY, customer text NOT NULL, status text NOT NULL,
  amount numeric(12,2) NOT NULL, note text, created_at timestamptz NOT NULL)"""
BULK_INSERT = """INSERT INTO public.bulk
  SELECT g, 'customer-' || mod(g, 9973), (ARRAY['new','paid','shipped'])[1 + mod(g, 3)],
         mod(g, 100000) / 100.0, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text),
         now()
  FROM generate_series(1, %s) g"""
OLTP_DDL = """CREATE TABLE public.oltp (
  id int PRIMARY KEY, payload text NOT NULL, n bigint NOT NULL, written_at timestamptz NOT NULL)"""
OLTP_TARGET_EXTRA = """
CREATE TABLE public.oltp_applied (id int, written_at timestamptz, applied_at timestamptz);
CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.oltp_applied VALUES (NEW.id, NEW.written_at, clock_timestamp()); RETURN NEW; END $$;
CREATE TRIGGER oltp_stamp AFTER INSERT OR UPDATE ON public.oltp FOR EACH ROW EXECUTE FUNCTION public.stamp();
ALTER TABLE public.oltp ENABLE ALWAYS TRIGGER oltp_stamp;
"""
PGBENCH_SCRIPT = """\\set id random(1, 100000)
INSERT INTO public.oltp (id, payload, n, written_at) VALUES (:id, repeat('p', 160), 1, clock_timestamp())
  ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, n = oltp.n + 1, written_at = EXCLUDED.written_at;
"""


def q(dsn: str, sql: str, args: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def wait_for(pred, timeout: float, interval: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError("target did not catch up in time")


@dataclass
class Result:
    bulk_rows_s: float | None = None
    bulk_insert_s: float | None = None
    bulk_total_s: float | None = None
    oltp: dict[str, float] = field(default_factory=dict)


class Native:
    """CREATE PUBLICATION on the source, CREATE SUBSCRIPTION on the target."""

    label = "native logical replication"

    def __init__(self, src: str, dst: str, table: str, tmp: Path) -> None:
        self.src, self.dst, self.table = src, dst, table
        name = "bench_" + table
        q(src, f"CREATE PUBLICATION {name} FOR TABLE public.{table}")
        q(
            dst,
            f"CREATE SUBSCRIPTION {name} CONNECTION '{libpq_conninfo(src)}' PUBLICATION {name} "
            "WITH (copy_data = false)",
        )
        wait_for(
            lambda: (
                q(
                    src,
                    "SELECT bool_or(active) FROM pg_replication_slots WHERE slot_name = %s",
                    (name,),
                )
                == [(True,)]
            ),
            30,
        )
        self.name = name

    def stop(self) -> None:
        q(self.dst, f"DROP SUBSCRIPTION {self.name}")


class Syncline:
    """`syncline run` as a separate process with the embedded log on local disk."""

    label = "syncline (embedded log)"

    extra = ""  # set by --transforms-lww
    nats: NatsServer | None = None  # set by --transport nats
    runs = 0

    def transport(self, tmp: Path) -> str:
        if self.nats is None:
            return f'{{kind: embedded, path: "{tmp / "log"}"}}'
        return f"{{kind: nats, servers: [{self.nats.url}], stream: bench_{os.getpid()}_{Syncline.runs}}}"

    def __init__(self, src: str, dst: str, table: str, tmp: Path) -> None:
        self.src = src
        Syncline.runs += 1
        cfg = tmp / f"{table}.yaml"
        cfg.write_text(
            f"""
pipelines:
  - name: bench-{table}
    source: {{kind: postgres, dsn: "{src}", tables: [public.{table}], snapshot: never}}
    transport: {self.transport(tmp)}
    sink: {{kind: postgres, dsn: "{dst}"{self.extra_sink(table)}}}
{self.extra}"""
        )
        self.log = open(tmp / f"{table}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncline", "run", str(cfg), "--log-level", "warning"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        slot = f"syncline_bench_{table}"
        wait_for(
            lambda: (
                q(
                    src,
                    "SELECT bool_or(active) FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                == [(True,)]
            ),
            60,
            0.1,
        )
        time.sleep(0.5)  # let the apply side open the sink too

    def extra_sink(self, table: str) -> str:
        if not self.extra:
            return ""
        column = {"bulk": "created_at", "oltp": "written_at"}[table]
        return f", tables: {{public.{table}: {{conflict: {{strategy: lww, column: {column}}}}}}}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def libpq_conninfo(dsn: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(dsn)
    return f"host={u.hostname} port={u.port} dbname={u.path.lstrip('/')} user={u.username} password={u.password}"


def bulk(engine_cls, a: PgServer, b: PgServer, rows: int, tmp: Path) -> Result:  # type: ignore[no-untyped-def]
    src, dst = a.create_database("bulk"), b.create_database("bulk")
    q(src, BULK_DDL)
    q(dst, BULK_DDL)
    engine = engine_cls(src, dst, "bulk", tmp)
    try:
        t0 = time.monotonic()
        q(src, BULK_INSERT, (rows,))
        t_ins = time.monotonic()
        t_end = wait_for(lambda: q(dst, "SELECT count(*) FROM public.bulk") == [(rows,)], 600, 0.05)
    finally:
        engine.stop()
    a.drop_database(src)
    b.drop_database(dst)
    return Result(
        bulk_rows_s=rows / (t_end - t0), bulk_insert_s=t_ins - t0, bulk_total_s=t_end - t0
    )


def oltp(engine_cls, a: PgServer, b: PgServer, rate: int, seconds: int, tmp: Path) -> Result:  # type: ignore[no-untyped-def]
    src, dst = a.create_database("oltp"), b.create_database("oltp")
    q(src, OLTP_DDL)
    q(dst, OLTP_DDL + ";" + OLTP_TARGET_EXTRA)
    engine = engine_cls(src, dst, "oltp", tmp)
    script = tmp / "oltp.sql"
    script.write_text(PGBENCH_SCRIPT)
    try:
        from urllib.parse import urlsplit

        u = urlsplit(src)
        env = {**os.environ, "PGPASSWORD": u.password or ""}
        run = subprocess.run(
            [
                f"{_pg_bindir()}/pgbench",
                "-n",
                "-h",
                u.hostname or "",
                "-p",
                str(u.port),
                "-U",
                u.username or "",
                "-c",
                "4",
                "-j",
                "2",
                "-R",
                str(rate),
                "-T",
                str(seconds),
                "-f",
                str(script),
                u.path.lstrip("/"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        t_stop = time.monotonic()
        tps = next((ln for ln in run.stdout.splitlines() if ln.startswith("tps")), "")
        last = q(src, "SELECT max(written_at) FROM public.oltp")[0][0]
        t_caught = wait_for(
            lambda: (
                q(dst, "SELECT count(*) FROM public.oltp_applied WHERE written_at >= %s", (last,))
                != [(0,)]
            ),
            120,
            0.01,
        )
        stats = q(
            dst,
            """SELECT count(*),
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY ms),
                 percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)
               FROM (SELECT extract(epoch FROM applied_at - written_at) * 1000 AS ms FROM public.oltp_applied) s""",
        )[0]
        commits = q(src, "SELECT sum(n) FROM public.oltp")[0][0]
    finally:
        engine.stop()
    a.drop_database(src)
    b.drop_database(dst)
    count, p50, p95, p99, mx = stats
    return Result(
        oltp={
            "commits": float(commits or 0),
            "applied_rows": float(count or 0),
            "p50": float(p50 or 0),
            "p95": float(p95 or 0),
            "p99": float(p99 or 0),
            "max": float(mx or 0),
            "behind_s": t_caught - t_stop,
            "pgbench_tps": float(tps.split("=")[1].split()[0]) if "=" in tps else 0.0,
        }
    )


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    pg = subprocess.run(
        [f"{_pg_bindir()}/postgres", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {pg}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--only", choices=["bulk", "oltp"])
    ap.add_argument("--write", action="store_true", help="append the results to docs/benchmarks.md")
    ap.add_argument(
        "--transforms-lww",
        action="store_true",
        help="syncline runs a 3-step transform chain and LWW conflict resolution on the sink",
    )
    ap.add_argument("--transport", choices=["embedded", "nats"], default="embedded")
    args = ap.parse_args()
    if args.transport == "nats":
        Syncline.label = "syncline (NATS JetStream)"
        Syncline.nats = start_nats(env_var="BENCH_NATS_URL")
    if args.transforms_lww:
        Syncline.label = "syncline (transforms + LWW)"
        Syncline.extra = (
            "    transforms:\n"
            "      - {type: filter, where: \"op != 't'\"}\n"
            "      - {type: mask, tables: [public.bulk], fields: [note], method: hash}\n"
            "      - {type: mask, tables: [public.oltp], fields: [payload], method: partial, keep_last: 4}\n"
        )

    a, b = (
        start_postgres(durable=True, env_var="BENCH_SRC_DSN"),
        start_postgres(durable=True, env_var="BENCH_DST_DSN"),
    )
    out: dict[str, Result] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="syncline-bench-") as tmpdir:
            tmp = Path(tmpdir)
            for engine in (Native, Syncline):
                r = Result()
                if args.only in (None, "bulk"):
                    r.bulk_rows_s, r.bulk_insert_s, r.bulk_total_s = (
                        lambda x: (x.bulk_rows_s, x.bulk_insert_s, x.bulk_total_s)
                    )(bulk(engine, a, b, args.rows, tmp))
                    print(
                        f"{engine.label}: bulk {r.bulk_rows_s:,.0f} rows/s ({r.bulk_total_s:.2f} s)",
                        flush=True,
                    )
                if args.only in (None, "oltp"):
                    r.oltp = oltp(engine, a, b, args.rate, args.seconds, tmp).oltp
                    o = r.oltp
                    print(
                        f"{engine.label}: oltp p50 {o['p50']:.1f} ms p95 {o['p95']:.1f} ms p99 {o['p99']:.1f} ms, "
                        f"{o['behind_s']:.2f} s behind at stop",
                        flush=True,
                    )
                out[engine.label] = r
    finally:
        a.stop()
        b.stop()
        if Syncline.nats is not None:
            Syncline.nats.stop()
    report = render(out, args)
    print(report)
    if args.write:
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + report + "\n")


def render(out: dict[str, Result], args: argparse.Namespace) -> str:
    n, s = out[Native.label], out[Syncline.label]
    variant = " — syncline with a transform chain (filter, mask) and LWW" if Syncline.extra else ""
    if Syncline.nats is not None:
        variant += " — syncline's log is NATS JetStream (one local nats-server)"
    lines = [
        f"### {dt.date.today().isoformat()}{variant} — {machine()}",
        "",
        "| workload | native logical replication | syncline | syncline / native |",
        "| --- | --- | --- | --- |",
    ]
    if n.bulk_rows_s and s.bulk_rows_s:
        lines.append(
            f"| (a) bulk: {args.rows:,} rows (~200 B) in one transaction, end to end | "
            f"{n.bulk_rows_s:,.0f} rows/s ({n.bulk_total_s:.2f} s; INSERT {n.bulk_insert_s:.2f} s) | "
            f"{s.bulk_rows_s:,.0f} rows/s ({s.bulk_total_s:.2f} s; INSERT {s.bulk_insert_s:.2f} s) | "
            f"{s.bulk_rows_s / n.bulk_rows_s:.2f}× |"
        )
    if n.oltp and s.oltp:
        for key, label in (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("max", "max")):
            lines.append(
                f"| (b) oltp {args.rate}/s × {args.seconds} s, commit→applied {label} | {n.oltp[key]:.1f} ms | "
                f"{s.oltp[key]:.1f} ms | {s.oltp[key] / max(n.oltp[key], 1e-9):.2f}× |"
            )
        lines.append(
            f"| (b) oltp: behind when the load stops | {n.oltp['behind_s']:.2f} s | {s.oltp['behind_s']:.2f} s | |"
        )
        lines.append(
            f"| (b) oltp: pgbench tps achieved / rows applied | {n.oltp['pgbench_tps']:,.0f} / "
            f"{n.oltp['applied_rows']:,.0f} | {s.oltp['pgbench_tps']:,.0f} / {s.oltp['applied_rows']:,.0f} | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
