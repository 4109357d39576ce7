"""Bad input, table-driven: each case, the command, the one line a user sees, nothing lost.

Config and SQLite cases (fast, no server); the PostgreSQL ones are in
tests/pg/test_bad_input_pg.py. docs/reliability.md ("Bad input") lists every case
with the message shown here and the test that covers it: keep them in step.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from e2e_helpers import caught_up as idle
from e2e_helpers import sqlite_exec as sql
from e2e_helpers import start_pipeline as start
from e2e_helpers import syncline, wait_until
from syncline.cli import app
from syncline.config import load_config
from syncline.errors import StorageError
from syncline.events import ChangeEvent, SourceInfo, encode_key, encode_value
from syncline.pipeline import Pipeline
from syncline.transports.base import Record
from syncline.transports.embedded import EmbeddedTransport

runner = CliRunner()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def assert_one_line(result: Any, code: int, message: str) -> None:
    """Exit code, exactly one line on stderr, the message, and no traceback."""
    out = result.stdout + result.stderr
    assert result.exit_code == code, out
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    assert result.stderr.splitlines() == [f"syncline: error: {message}"]


# ---- configuration: syncline check / run refuse the file before anything runs ----------

GOOD = """\
pipelines:
  - name: shop
    source: {kind: sqlite, path: src.db, tables: [orders]}
    transport: {path: log}
    sink: {kind: sqlite, path: dst.db}
"""


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


CONFIG_CASES = [
    (
        "yaml-bad-indentation",
        edit("    sink:", "   sink:"),
        "invalid YAML at line 5, column 4: expected <block end>, but found '<block mapping start>';"
        " check the indentation (keys of one mapping must line up) and a missing space after ':'",
    ),
    (
        "yaml-tab",
        edit("    transport:", "\ttransport:"),
        "invalid YAML at line 4, column 1: found character '\\t' that cannot start any token;"
        " a tab character: YAML indents with spaces only",
    ),
    (
        "yaml-unclosed-quote",
        edit("name: shop", 'name: "shop'),
        "invalid YAML at line 6, column 1: found unexpected end of stream;"
        " the quoted string that starts at line 2, column 11 is never closed",
    ),
    (
        "yaml-unclosed-bracket",
        edit("tables: [orders]}", "tables: [orders}"),
        "invalid YAML at line 3, column 57: expected ',' or ']', but got '}';"
        " the [ list that starts at line 3, column 50 is never closed",
    ),
    (
        "yaml-no-space-after-colon",
        edit("transport: {path: log}", "transport:\n      path:log"),
        "pipelines[0].transport: expected a mapping (key: value lines or {key: value}),"
        " got 'path:log' (YAML needs a space after ':')",
    ),
    (
        "yaml-duplicate-key",
        GOOD + "    sink: {kind: sqlite, path: other.db}\n",
        "invalid YAML at line 6, column 5: key 'sink' appears twice in the same mapping; keep one",
    ),
    ("not-a-mapping", "- shop\n", "expected a mapping with a 'pipelines' list at the top"),
    ("empty-file", "", "expected a mapping with a 'pipelines' list at the top"),
    (
        "unknown-key-top-level",
        GOOD + "pipeline_defaults: {}\n",
        "pipeline_defaults: unknown key (did you mean pipelines?)",
    ),
    (
        "unknown-key-pipeline",
        GOOD + "    apply-in: thread\n",
        "pipelines[0].apply-in: unknown key (did you mean apply_in?)",
    ),
    (
        "unknown-key-source",
        edit("tables: [orders]}", "tables: [orders], snapshots: never}"),
        "pipelines[0].source.snapshots: unknown key (did you mean snapshot?)",
    ),
    (
        "unknown-key-sink",
        edit("path: dst.db}", "path: dst.db, create_table: true}"),
        "pipelines[0].sink.create_table: unknown key (did you mean create_tables?)",
    ),
    (
        "unknown-key-sink-table",
        edit("path: dst.db}", "path: dst.db, tables: {orders: {targte: x}}}"),
        "pipelines[0].sink.tables.orders.targte: unknown key (did you mean target?)",
    ),
    (
        "unknown-key-transport",
        edit("{path: log}", "{path: log, partition: 8}"),
        "pipelines[0].transport.partition: unknown key (did you mean partitions?)",
    ),
    (
        "unknown-key-dlq",
        GOOD + "    dlq: {enable: false}\n",
        "pipelines[0].dlq.enable: unknown key (did you mean enabled?)",
    ),
    (
        "unknown-key-retry",
        GOOD + "    retry: {max_retries: 3}\n",
        "pipelines[0].retry.max_retries: unknown key (did you mean max_attempts?)",
    ),
    (
        "unknown-key-batch",
        GOOD + "    batch: {size: 10}\n",
        "pipelines[0].batch.size: unknown key (check the spelling)",
    ),
    (
        "unknown-key-transform",
        GOOD + "    transforms: [{type: drop_fields, fields: [a], tabels: [orders]}]\n",
        "pipelines[0].transforms[0] (drop_fields): tabels: unknown key (did you mean tables?)",
    ),
    (
        "unknown-transform-type",
        GOOD + "    transforms: [{type: rename}]\n",
        "pipelines[0].transforms[0]: unknown type 'rename'; expected one of route, rename_fields,"
        " drop_fields, add_fields, compute, cast, filter, mask, encrypt, python",
    ),
    (
        "unknown-source-kind",
        edit("kind: sqlite, path: src.db", "kind: mysql, path: src.db"),
        "pipelines[0].source: unknown kind 'mysql'; expected one of 'postgres', 'sqlite'",
    ),
    (
        "string-for-int",
        GOOD + "    batch: {max_events: lots}\n",
        "pipelines[0].batch.max_events: Input should be a valid integer, unable to parse string"
        " as an integer (got 'lots')",
    ),
    (
        "negative-partitions",
        edit("{path: log}", "{path: log, partitions: -4}"),
        "pipelines[0].transport.partitions: Input should be greater than or equal to 1 (got -4)",
    ),
    (
        "zero-retry-delay",
        GOOD + "    retry: {initial_delay_ms: 0}\n",
        "pipelines[0].retry.initial_delay_ms: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "string-for-bool",
        edit("{path: log}", "{path: log, fsync: sometimes}"),
        "pipelines[0].transport.fsync: Input should be a valid boolean, unable to interpret input"
        " (got 'sometimes')",
    ),
    (
        "number-for-path",
        edit("path: dst.db", "path: 42"),
        "pipelines[0].sink.path: Input should be a valid string (got 42)",
    ),
    (
        "list-for-mapping",
        GOOD + "    retry: [100, 30000]\n",
        "pipelines[0].retry: expected a mapping (key: value lines or {key: value}),"
        " got [100, 30000]",
    ),
    (
        "mapping-for-list",
        edit("tables: [orders]", "tables: {orders: yes}"),
        "pipelines[0].source.tables: expected a list ([a, b] or - item lines),"
        " got {'orders': True}",
    ),
    (
        "missing-sink",
        GOOD.replace("    sink: {kind: sqlite, path: dst.db}\n", ""),
        "pipelines[0].sink: Field required",
    ),
    (
        "missing-source-tables",
        edit(", tables: [orders]", ""),
        "pipelines[0].source.tables: Field required",
    ),
    (
        "missing-kind",
        edit("{kind: sqlite, path: dst.db}", "{path: dst.db}"),
        "pipelines[0].sink: kind: field required (which backend: e.g. kind: postgres)",
    ),
    (
        "missing-name",
        edit("  - name: shop\n    source", "  - source"),
        "pipelines[0].name: Field required",
    ),
    (
        "bad-pipeline-name",
        edit("name: shop", "name: Shop Orders"),
        "pipelines[0].name: use lowercase letters, digits, - and _, starting with a letter"
        " (at most 63) (got 'Shop Orders')",
    ),
    (
        "bad-table-name",
        edit("tables: [orders]", "tables: [a.b.c]"),
        "pipelines[0].source.tables: 'a.b.c' is not a SQLite table name",
    ),
    (
        "duplicate-pipeline-name",
        GOOD + GOOD.replace("pipelines:\n", ""),
        "pipeline name 'shop' is used twice",
    ),
    (
        "retry-delays-reversed",
        GOOD + "    retry: {initial_delay_ms: 5000, max_delay_ms: 100}\n",
        "pipelines[0].retry: max_delay_ms must not be below initial_delay_ms",
    ),
    (
        "conflict-custom-without-resolver",
        edit("path: dst.db}", "path: dst.db, tables: {orders: {conflict: {strategy: custom}}}}"),
        "pipelines[0].sink.tables.orders.conflict: strategy custom needs resolver: module:function",
    ),
    (
        "transform-bad-expression",
        GOOD + "    transforms: [{type: filter, where: 'qty >'}]\n",
        "pipelines[0].transforms[0] (filter): where: invalid expression: invalid syntax"
        " (at column 0)",
    ),
    (
        "transform-hook-not-importable",
        GOOD + "    transforms: [{type: python, function: 'no_such_module:fn'}]\n",
        "pipelines[0].transforms[0] (python): function: cannot import module no_such_module:"
        " No module named 'no_such_module'",
    ),
    (
        "transform-salt-env-unset",
        GOOD + "    transforms: [{type: mask, fields: [qty], method: hash,"
        " salt_env: SYNCLINE_TEST_UNSET_SALT}]\n",
        "pipelines[0].transforms[0] (mask): salt_env: environment variable"
        " SYNCLINE_TEST_UNSET_SALT is not set (it holds the hash salt)",
    ),
    (
        "unset-env",
        edit("path: dst.db", "path: ${SYNCLINE_TEST_UNSET_DIR}/dst.db"),
        "environment variable SYNCLINE_TEST_UNSET_DIR is not set (referenced as"
        " ${SYNCLINE_TEST_UNSET_DIR}; set it or write ${SYNCLINE_TEST_UNSET_DIR:-default})",
    ),
]


@pytest.fixture(autouse=True)
def _no_test_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SYNCLINE_TEST_UNSET_DIR", "SYNCLINE_TEST_UNSET_SALT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
@pytest.mark.parametrize("verb", ["check", "run"])
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, verb: str, text: str, message: str
) -> None:
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(text)
    result = cli(verb, str(cfg))
    assert_one_line(result, 2, f"{cfg}: {message}")
    assert result.stdout == ""
    assert not (tmp_path / "log").exists()  # nothing was started or created


def test_config_file_problems(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(GOOD.replace("shop", "caf\xe9").encode("latin-1"))
    cases = {
        tmp_path / "absent.yaml": "config file not found",
        tmp_path: "is a directory; give the path of the YAML config file",
        latin1: "not UTF-8 text (line 2); save the config file as UTF-8",
    }
    for path, message in cases.items():
        for verb in ("check", "run"):
            assert_one_line(cli(verb, str(path)), 2, f"{path}: {message}")


def test_unknown_pipeline_picked_with_p(tmp_path: Path) -> None:
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(GOOD)
    assert_one_line(cli("run", str(cfg), "-p", "nope"), 2, "no pipeline named 'nope' (have: shop)")


def test_a_real_process_prints_one_line(tmp_path: Path) -> None:
    """The same through `python -m syncline`: logging set up, nothing else on stderr."""
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(edit("tables: [orders]}", "tables: [orders], snapshots: never}"))
    for verb in ("check", "run"):
        result = syncline(verb, str(cfg))
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"syncline: error: {cfg}: pipelines[0].source.snapshots: unknown key"
            " (did you mean snapshot?)"
        ]


# ---- files, tables and keys: syncline check / run stop before anything runs ------------

ORDERS = "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER)"


def rows(path: Path, query: str = "SELECT * FROM orders ORDER BY id") -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute(query))
    finally:
        db.close()


def shop_config(
    tmp: Path, *, source: str = "", sink: str = "", extra: str = "", dlq: str = "max_attempts: 1"
) -> str:
    return f"""\
pipelines:
  - name: shop
    source: {{kind: sqlite, path: {tmp}/src.db, tables: [orders]{source}}}
    transport: {{path: {tmp}/log, partitions: 2, fsync: false}}
    sink: {{kind: sqlite, path: {tmp}/dst.db{sink}}}
    apply_in: thread
    batch: {{max_events: 200, max_wait_ms: 5}}
    retry: {{initial_delay_ms: 10, max_delay_ms: 50}}
    dlq: {{{dlq}}}
{extra}"""


Setup = Callable[[Path], Any]


def nothing(tmp: Path) -> None:
    pass


def garbage(name: str) -> Setup:
    return lambda tmp: (tmp / name).write_bytes(b"this is not a database " * 100)


def target(*stmts: str) -> Setup:
    return lambda tmp: sql(tmp / "dst.db", *stmts)


def source(*stmts: str) -> Setup:
    return lambda tmp: sql(tmp / "src.db", *stmts)


def make_dir(name: str) -> Setup:
    return lambda tmp: (tmp / name).mkdir()


def make_file(name: str) -> Setup:
    return lambda tmp: (tmp / name).write_text("a file")


def replace_source(tmp: Path, by: Setup) -> None:
    (tmp / "src.db").unlink()
    by(tmp)


def existing_log(partitions: int) -> Setup:
    def setup(tmp: Path) -> None:
        cfg = load_config_text(tmp, shop_config(tmp)).transport
        EmbeddedTransport(cfg.model_copy(update={"partitions": partitions}), "shop").close()

    return setup


def load_config_text(tmp: Path, text: str) -> Any:
    path = tmp / "made.yaml"
    path.write_text(text)
    return load_config(path).pipelines[0]


SRC = "SQLite database {tmp}/src.db"
DST = "SQLite database {tmp}/dst.db (sink of pipeline shop)"

# id, setup, config overrides, exit code, message ({tmp} is the test's directory)
STARTUP_CASES: list[tuple[str, Setup, dict[str, str], int, str]] = [
    (
        "source-file-missing",
        lambda tmp: (tmp / "src.db").unlink(),
        {},
        1,
        SRC + " does not exist (source of pipeline shop)",
    ),
    (
        "source-is-a-directory",
        lambda tmp: replace_source(tmp, make_dir("src.db")),
        {},
        1,
        SRC + " is a directory, not a database file (source of pipeline shop)",
    ),
    (
        "source-not-a-database",
        lambda tmp: replace_source(tmp, garbage("src.db")),
        {},
        1,
        "SQLite {tmp}/src.db (source of pipeline shop): cannot open: file is not a database",
    ),
    (
        "source-table-missing",
        nothing,
        {"source": ", tables: [orders, refunds]"},
        1,
        "table refunds does not exist in {tmp}/src.db (source of pipeline shop)",
    ),
    (
        "source-table-without-primary-key",
        source("CREATE TABLE audit (at TEXT, what TEXT)"),
        {"source": ", tables: [audit]"},
        1,
        "table audit in {tmp}/src.db has no primary key: add one (syncline applies changes"
        " by key) (source of pipeline shop)",
    ),
    (
        "source-is-a-view",
        source("CREATE VIEW big_orders AS SELECT * FROM orders WHERE qty > 10"),
        {"source": ", tables: [big_orders]"},
        1,
        "big_orders in {tmp}/src.db is a view; capture needs a table (source of pipeline shop)",
    ),
    (
        "sink-is-a-directory",
        make_dir("dst.db"),
        {},
        1,
        "cannot open " + DST + ": it is a directory; set the sink path to a database file",
    ),
    (
        "sink-not-a-database",
        garbage("dst.db"),
        {},
        1,
        "cannot open " + DST + ": file is not a database; check the path and its permissions",
    ),
    (
        "sink-directory-missing",
        nothing,
        {"sink_path": "{tmp}/no/such/dir/dst.db"},
        1,
        "cannot create SQLite database {tmp}/no/such/dir/dst.db (sink of pipeline shop):"
        " directory {tmp}/no/such/dir does not exist; create it or fix the path",
    ),
    (
        "sink-file-missing-without-create-tables",
        nothing,
        {"sink": ", create_tables: false"},
        1,
        DST + " does not exist; create it or set create_tables: true",
    ),
    (
        "target-table-missing-without-create-tables",
        target("CREATE TABLE other (id INTEGER PRIMARY KEY)"),
        {"sink": ", create_tables: false"},
        1,
        "target table orders does not exist in " + DST + "; create it or set create_tables: true",
    ),
    (
        "target-table-lacks-a-column",
        target("CREATE TABLE orders (id INTEGER PRIMARY KEY)"),
        {},
        1,
        "target table orders in " + DST + " lacks column(s) qty that source table main.orders"
        " sends; add them or drop them from the source",
    ),
    (
        "target-table-without-primary-key",
        target("CREATE TABLE orders (id INTEGER, qty INTEGER)"),
        {},
        1,
        "target table orders in " + DST + " has no primary key; add PRIMARY KEY (id)",
    ),
    (
        "target-primary-key-differs",
        target("CREATE TABLE orders (id INTEGER, qty INTEGER PRIMARY KEY)"),
        {},
        1,
        "target table orders in " + DST + " has primary key (qty) but source table main.orders"
        " has (id); make them match",
    ),
    (
        "route-to-a-missing-table",
        target(ORDERS),
        {
            "sink": ", create_tables: false",
            "extra": "    transforms: [{type: route, from: main.orders, to: main.orders_v2}]\n",
        },
        1,
        "target table orders_v2 does not exist in "
        + DST
        + "; create it or set create_tables: true",
    ),
    (
        "conflict-resolver-not-importable",
        nothing,
        {"sink": ", tables: {orders: {conflict: {strategy: custom, resolver: 'no_such_mod:fn'}}}"},
        2,
        "conflict resolver no_such_mod:fn (sink of pipeline shop) cannot be imported:"
        " ModuleNotFoundError: No module named 'no_such_mod'; check the module name and that"
        " it is on PYTHONPATH",
    ),
    (
        "log-path-is-a-file",
        make_file("log"),
        {},
        1,
        "cannot create the embedded log directory {tmp}/log (it is a file); set transport.path"
        " to a writable directory",
    ),
    (
        "log-file-not-a-database",
        lambda tmp: (make_dir("log")(tmp), garbage("log/shop.log.db")(tmp)),
        {},
        1,
        "embedded log at {tmp}/log/shop.log.db is not a usable log file (file is not a"
        " database); restore it or move it away (syncline will not overwrite it)",
    ),
    (
        "log-file-another-sqlite-database",
        lambda tmp: (make_dir("log")(tmp), sql(tmp / "log/shop.log.db", ORDERS)),
        {},
        1,
        "{tmp}/log/shop.log.db is a SQLite database but not a syncline log; move it away or"
        " set transport.path to another directory",
    ),
    (
        "log-partitions-changed",
        existing_log(4),
        {},
        2,
        "embedded log {tmp}/log/shop.log.db has 4 partitions but transport.partitions is 2;"
        " changing it would break per-key order, so set it back to 4 or use a new"
        " transport.path",
    ),
    (
        "dlq-path-is-a-file",
        make_file("dlq"),
        {"dlq": "path: '{tmp}/dlq'"},
        1,
        "dead-letter queue directory {tmp}/dlq is a file, not a directory; set dlq.path"
        " (or transport.path) to a writable directory",
    ),
]


def startup_config(tmp: Path, overrides: dict[str, str]) -> str:
    text = shop_config(
        tmp,
        source=overrides.get("source", ""),
        sink=overrides.get("sink", ""),
        extra=overrides.get("extra", ""),
        dlq=overrides.get("dlq", "max_attempts: 1"),
    ).replace("{tmp}", str(tmp))
    text = text.replace("tables: [orders], tables:", "tables:")  # a source override
    if "sink_path" in overrides:
        text = text.replace(f"{tmp}/dst.db", overrides["sink_path"].replace("{tmp}", str(tmp)))
    return text


@pytest.mark.parametrize(
    ("setup", "overrides", "code", "message"),
    [c[1:] for c in STARTUP_CASES],
    ids=[c[0] for c in STARTUP_CASES],
)
def test_bad_files_tables_and_keys_stop_check_and_run_with_one_line(
    tmp_path: Path, setup: Setup, overrides: dict[str, str], code: int, message: str
) -> None:
    sql(tmp_path / "src.db", ORDERS, "INSERT INTO orders VALUES (1, 1)")
    setup(tmp_path)
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(startup_config(tmp_path, overrides))
    expected = message.replace("{tmp}", str(tmp_path))
    named = expected if "pipeline shop" in expected else f"pipeline shop: {expected}"
    check = cli("check", str(cfg))
    assert_one_line(check, code, named)
    assert check.stdout.startswith(f"{cfg}: config ok (1 pipeline(s))")
    assert_one_line(cli("run", str(cfg)), code, named)
    if "src.db" not in message:  # nothing was started: no capture triggers installed
        triggers = "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        assert rows(tmp_path / "src.db", triggers) == [(0,)]


def test_read_only_log_directory(tmp_path: Path) -> None:
    sql(tmp_path / "src.db", ORDERS)
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    as_root = os.geteuid() == 0
    if as_root:  # root writes through permissions: make the file system itself read-only
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(log_dir)], check=True
        )
    else:
        log_dir.chmod(0o500)
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(shop_config(tmp_path))
    try:
        result = cli("check", str(cfg))
        assert result.exit_code == 1
        assert "not writable" in result.stderr or "cannot be written" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    finally:
        if as_root:
            subprocess.run(["umount", str(log_dir)], check=True)
        else:
            log_dir.chmod(0o700)


def test_a_real_process_stops_with_one_line_on_a_missing_target_table(tmp_path: Path) -> None:
    sql(tmp_path / "src.db", ORDERS)
    sql(tmp_path / "dst.db", "CREATE TABLE other (id INTEGER PRIMARY KEY)")
    cfg = tmp_path / "syncline.yaml"
    cfg.write_text(shop_config(tmp_path, sink=", create_tables: false"))
    for verb in ("check", "run"):
        result = syncline(verb, str(cfg))
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [
            f"syncline: error: target table orders does not exist in SQLite database"
            f" {tmp_path}/dst.db (sink of pipeline shop); create it or set create_tables: true"
        ]


# ---- bad data at run time: set aside in the dead-letter queue, the rest flows ---------


def dlq_lines(config: Path) -> list[str]:
    listing = cli("dlq", "list", str(config))
    assert listing.exit_code == 0, listing.output
    return listing.stdout.splitlines()[1:]


def dead_ids(config: Path) -> list[str]:
    """Ids of the dead entries (not the held ones behind them: those are the fixes)."""
    return [line.split()[0] for line in dlq_lines(config) if " dead " in line]


def dlq_errors(config: Path) -> list[str]:
    """(status, error) of every open entry, errors in full (dlq list shortens them)."""
    from syncline.dlq import DeadLetterStore

    cfg = load_config(config).pipelines[0]
    store = DeadLetterStore(cfg.dlq_dir, cfg.name, create=False)
    try:
        return [f"{e.status}: {e.error}" for e in store.entries()]
    finally:
        store.close()


def test_invalid_utf8_in_a_source_row_is_dead_lettered_and_the_rest_flows(
    tmp_path: Path, pipes: list[Pipeline]
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sql(
        src,
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)",
        "INSERT INTO orders VALUES (1, 'one'), (2, CAST(x'6361ff' AS TEXT)), (3, 'three')",
    )
    config = tmp_path / "syncline.yaml"
    config.write_text(shop_config(tmp_path))
    pipe = start(pipes, config)
    sql(src, "INSERT INTO orders VALUES (4, CAST(x'c328' AS TEXT)), (5, 'five')")
    assert wait_until(lambda: idle(pipe) and pipe.stats.dead_lettered == 2, 30)
    assert rows(dst) == [(1, "one"), (3, "three"), (5, "five")]  # the good rows arrived
    lines = dlq_lines(config)
    assert len(lines) == 2 and all("DataError: SQLite" in line for line in lines)
    bad = "holds bytes that are not valid UTF-8; fix the row in the source database, then"
    assert dlq_errors(config) == [
        f'dead: SQLite {src} (source of pipeline shop): row {{"id":{i}}} of table orders:'
        f" column note {bad} syncline dlq purge this entry (the fix, held behind it, then"
        " applies)"
        for i in (2, 4)
    ]
    # the fix: correct the rows at the source (held behind the bad events), then purge
    sql(src, "UPDATE orders SET note = 'two' WHERE id = 2", "DELETE FROM orders WHERE id = 4")
    assert wait_until(lambda: idle(pipe) and pipe.stats.held == 2, 30)
    assert rows(dst) == [(1, "one"), (3, "three"), (5, "five")]  # still in order: held
    purged = cli("dlq", "purge", str(config), *dead_ids(config), "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 2 entries" in purged.stdout
    assert wait_until(lambda: rows(dst) == rows(src), 30)
    assert rows(dst) == [(1, "one"), (2, "two"), (3, "three"), (5, "five")]


def test_values_the_target_refuses_are_dead_lettered_with_the_column_named(
    tmp_path: Path, pipes: list[Pipeline]
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sql(src, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty, note TEXT)")
    sql(dst, "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER, note TEXT NOT NULL) STRICT")
    config = tmp_path / "syncline.yaml"
    config.write_text(shop_config(tmp_path))
    pipe = start(pipes, config)
    sql(src, "INSERT INTO orders VALUES (1, 1, 'a'), (2, 'two', 'b'), (3, 3, NULL), (4, 4, 'd')")
    assert wait_until(lambda: idle(pipe) and pipe.stats.dead_lettered == 2, 30)
    assert rows(dst) == [(1, 1, "a"), (4, 4, "d")]
    where = f"applying changes to orders in SQLite database {dst} (sink of pipeline shop)"
    assert sorted(dlq_errors(config)) == [
        f"dead: {where}: NOT NULL constraint failed: orders.note",
        f"dead: {where}: cannot store TEXT value in INTEGER column orders.qty",
    ]
    sql(src, "UPDATE orders SET qty = 2 WHERE id = 2", "UPDATE orders SET note = 'c' WHERE id = 3")
    assert wait_until(lambda: idle(pipe) and pipe.stats.held == 2, 30)
    assert cli("dlq", "purge", str(config), *dead_ids(config), "--yes").exit_code == 0
    assert wait_until(lambda: rows(dst) == rows(src), 30)


def publish(config: Path, table: str, key: dict[str, Any], after: dict[str, Any]) -> None:
    """A record in the log as capture would have written it (e.g. before a config change)."""
    cfg = load_config(config).pipelines[0]
    transport = EmbeddedTransport(cfg.transport, cfg.name)  # type: ignore[arg-type]
    producer = transport.producer()
    event = ChangeEvent(
        op="c",
        after=after,
        source=SourceInfo(
            connector="sqlite", name="shop", db="src.db", schema="main", table=table, ts_ms=1
        ),
        ts_ms=1,
    )
    record = Record(f"main.{table}", encode_key(key), encode_value(event))
    producer.publish([record], producer.checkpoint())
    producer.close()
    transport.close()


def test_events_for_tables_the_sink_does_not_know(tmp_path: Path, pipes: list[Pipeline]) -> None:
    """Records for tables no longer captured: applied if the target has the table, else set aside."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sql(src, ORDERS, "INSERT INTO orders VALUES (1, 1)")
    sql(dst, ORDERS, "CREATE TABLE refunds (id INTEGER PRIMARY KEY, amount INTEGER)")
    config = tmp_path / "syncline.yaml"
    config.write_text(shop_config(tmp_path))
    pipe = start(pipes, config)
    assert wait_until(lambda: idle(pipe) and rows(dst) == [(1, 1)], 30)
    pipe.stop()
    # logged while the config still captured refunds and coupons; the log still holds them
    publish(config, "refunds", {"id": 7}, {"id": 7, "amount": 70})
    publish(config, "coupons", {"id": 8}, {"id": 8, "code": "X"})
    sql(src, "INSERT INTO orders VALUES (2, 2)")
    pipe = start(pipes, config)
    assert wait_until(lambda: idle(pipe) and rows(dst) == [(1, 1), (2, 2)], 30)
    assert wait_until(lambda: pipe.stats.dead_lettered == 1, 30)
    assert rows(dst, "SELECT * FROM refunds") == [(7, 70)]  # the target has it: applied
    assert dlq_errors(config) == [
        f"dead: target table coupons does not exist in SQLite database {dst} (sink of pipeline"
        " shop) and main.coupons is not among the tables this pipeline captures (the config"
        " changed after it was logged?); create the table, then syncline dlq replay"
    ]
    sql(dst, "CREATE TABLE coupons (id INTEGER PRIMARY KEY, code TEXT)")
    replayed = cli("dlq", "replay", str(config), "--all")
    assert replayed.exit_code == 0, replayed.output
    assert rows(dst, "SELECT * FROM coupons") == [(8, "X")]


def test_with_the_dead_letter_queue_off_bad_data_stops_the_pipeline_and_stays_in_the_log(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sql(src, "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
    sql(src, "INSERT INTO orders VALUES (1, 'one'), (2, CAST(x'ff' AS TEXT)), (3, 'three')")
    config = tmp_path / "syncline.yaml"
    config.write_text(shop_config(tmp_path, dlq="enabled: false"))
    result = syncline("run", str(config), timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f'syncline: error: SQLite {src} (source of pipeline shop): row {{"id":2}} of table'
        " orders: column note holds bytes that are not valid UTF-8; fix the row in the source"
        " database, then syncline dlq purge this entry (the fix, held behind it, then applies)"
    )
    assert [r for r in rows(dst) if r[0] == 2] == []  # stopped at it, nothing guessed
    # nothing lost: turn the queue on and everything but the bad row arrives, in order
    config.write_text(shop_config(tmp_path))
    sql(src, "UPDATE orders SET note = 'two' WHERE id = 2")
    pipes: list[Pipeline] = []
    try:
        pipe = start(pipes, config)
        assert wait_until(lambda: idle(pipe) and pipe.stats.held == 1, 30)
        assert rows(dst) == [(1, "one"), (3, "three")]
        assert cli("dlq", "purge", str(config), *dead_ids(config), "--yes").exit_code == 0
        assert wait_until(lambda: rows(dst) == rows(src), 30)
    finally:
        for p in pipes:
            p.stop(drain=False)


def test_big_values_go_through_intact(tmp_path: Path, pipes: list[Pipeline]) -> None:
    """A 24 MB blob and a 24 MB text in one row (limits: docs/reliability.md)."""
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    sql(src, "CREATE TABLE orders (id INTEGER PRIMARY KEY, doc BLOB, body TEXT)")
    config = tmp_path / "syncline.yaml"
    config.write_text(shop_config(tmp_path))
    pipe = start(pipes, config)
    blob = random.randbytes(24 << 20)
    body = "é" * (12 << 20)
    db = sqlite3.connect(src, isolation_level=None)
    db.execute("INSERT INTO orders VALUES (1, ?, ?)", (blob, body))
    db.execute("INSERT INTO orders VALUES (2, x'00', 'small')")
    db.close()
    query = "SELECT id, length(doc), length(body), doc = ?, body = ? FROM orders ORDER BY id"
    db = sqlite3.connect(dst)
    try:
        assert wait_until(lambda: idle(pipe) and pipe.stats.applied == 2, 60)
        assert list(db.execute(query, (blob, body))) == [
            (1, 24 << 20, 12 << 20, 1, 1),
            (2, 1, 5, 0, 0),
        ]
    finally:
        db.close()


# ---- the embedded log with big records ---------------------------------------------------


def test_the_log_stores_big_batches_in_pieces_and_polls_them_a_few_at_a_time(
    tmp_path: Path,
) -> None:
    """60 MB in one publish: stored as rows of at most 16 MB, polled about 32 MB at a time."""
    cfg = load_config_text(tmp_path, shop_config(tmp_path)).transport
    transport = EmbeddedTransport(cfg.model_copy(update={"partitions": 1}), "shop")
    try:
        producer = transport.producer()
        values = [bytes([i]) * (6 << 20) for i in range(10)]  # 2 per stored row
        producer.publish(
            [Record("main.orders", encode_key({"id": i}), v) for i, v in enumerate(values)],
            {"seq": 1},
        )
        producer.close()
        db = sqlite3.connect(transport.db)
        assert db.execute("SELECT count(*), max(length(payload)) FROM batches").fetchone()[0] == 5
        db.close()
        consumer = transport.consumer("g")
        polls = []
        while got := consumer.poll(1000, 0):
            polls.append(len(got))
            assert [d.value for d in got] == values[got[0].offset : got[-1].offset + 1]
        assert sum(polls) == 10 and max(polls) <= 5  # not the whole 60 MB at once
    finally:
        transport.close()


def test_a_record_over_sqlites_value_limit_is_one_clear_line(tmp_path: Path) -> None:
    cfg = load_config_text(tmp_path, shop_config(tmp_path)).transport
    transport = EmbeddedTransport(cfg, "shop")
    try:
        producer = transport.producer()
        producer._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 8 << 20)  # 1 GB by default
        small = Record("main.orders", encode_key({"id": 1}), b"x" * (10 << 20))
        with pytest.raises(StorageError) as err:  # one value over the limit
            producer.publish([small], {"seq": 1})
        assert str(err.value) == (
            f"embedded log at {transport.db}: a record is larger than SQLite stores in one value"
            " while appending records (string or blob too big); see docs/reliability.md, bad"
            " input: oversized rows"
        )
        big = Record("main.orders", encode_key({"id": 2}), b"x" * (20 << 20))
        with pytest.raises(StorageError) as err:
            producer.publish([big], {"seq": 1})
        assert str(err.value) == (
            f'embedded log at {transport.db}: a change of main.orders (key {{"id":2}}) is 21 MB'
            " encoded, more than SQLite stores in one value (8 MB); it stays in the source; see"
            " docs/reliability.md, bad input: oversized rows"
        )
        assert transport.end_offsets() == {0: 0, 1: 0}  # nothing half-written
        producer.close()
    finally:
        transport.close()
