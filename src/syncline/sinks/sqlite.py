"""SQLite sink: each batch is one ``BEGIN IMMEDIATE`` transaction of ``executemany`` calls.

SQLite runs in-process, so a statement costs no round trip; what matters is one
prepared statement per kind of operation and one fsync per batch (WAL mode,
``synchronous=FULL``). Log positions are upserted in the same transaction. A table
with a conflict rule is staged and merged with set statements instead (see
"conflict rules" below and docs/conflicts.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from syncline.config import ConflictConfig, SqliteSinkConfig
from syncline.conflicts import (
    Conflict,
    ConflictNotFound,
    KeyState,
    Parked,
    Resolver,
    check_use,
    key_text,
    load_resolver,
    log_conflict,
    log_lost,
    parked_changes,
    prefilter,
)
from syncline.errors import (
    DataError,
    SchemaError,
    StorageError,
    SynclineError,
    TransientError,
)
from syncline.events import Change, Row, encode_value
from syncline.schema import TableSchema
from syncline.sinks import leases
from syncline.sinks.base import ApplyResult, Sink
from syncline.sinks.sql import (
    Step,
    TableOps,
    TargetTable,
    Truncate,
    b64decode,
    check_target,
    conflict_for,
    create_table_sql,
    fence_check,
    fold,
    ignores_missing,
    missing_table,
    options_for,
    qi,
    ql,
    row_columns,
    source_without_key,
    to_json,
    unknown_table,
)
from syncline.sources.sqlite import SUPPRESS

OFFSETS = "_syncline_offsets"
# A row here switches off this database's syncline capture triggers (sources/sqlite.py),
# so a SQLite source on the target does not send syncline's own writes back.
_SUPPRESS_ON = f"INSERT INTO {SUPPRESS} (origin) VALUES (?)"
_SUPPRESS_OFF = f"DELETE FROM {SUPPRESS} WHERE origin = ?"
_APPLYING_ON = "INSERT INTO _syncline_applying (pipeline) VALUES (?)"
_APPLYING_OFF = "DELETE FROM _syncline_applying"
Adapter = Callable[[Any], Any]
_INFINITIES = {"Infinity": float("inf"), "-Infinity": float("-inf")}


def _plain(v: Any) -> Any:
    """Containers become JSON text; everything else binds as it is (bool as 0/1)."""
    t = type(v)
    return to_json(v) if t is dict or t is list else v


def _real(v: Any) -> Any:
    if type(v) is str:
        return _INFINITIES.get(v, v)  # "NaN" stays text: SQLite would store a NaN as NULL
    return _plain(v)


def _blob(v: Any) -> Any:
    if type(v) is str:
        return b64decode(v)  # events carry bytea as base64
    return _plain(v)


def adapter_for(declared: str) -> Adapter:
    """Value conversion for a target column by its declared type (SQLite affinity)."""
    u = declared.upper()
    if "INT" in u or any(s in u for s in ("CHAR", "CLOB", "TEXT")):
        return _plain
    if "BLOB" in u:
        return _blob
    if any(s in u for s in ("REAL", "FLOA", "DOUB")):
        return _real
    return _plain


@dataclass(slots=True)
class _Plan:
    target: str
    columns: tuple[str, ...]
    pairs: tuple[tuple[str, Adapter], ...]
    key_pairs: tuple[tuple[str, Adapter], ...]
    upsert_sql: str
    delete_sql: str
    truncate_sql: str
    lazy: bool
    partial_sql: dict[tuple[str, ...], tuple[str, tuple[tuple[str, Adapter], ...]]] = field(
        default_factory=dict
    )
    target_columns: list[str] = field(default_factory=list)  # every column, in table order
    rule: _Rule | None = None  # None: source_wins, the plain statements above
    keys: _Keys | None = None  # for tables with a conflict block
    delete_pairs: tuple[tuple[int, str, Adapter], ...] = ()  # what a staged delete carries
    stage_ready: sqlite3.Connection | None = None  # the connection that has the temp tables
    keys_ready: sqlite3.Connection | None = None

    def partial(self, unsent: set[str]) -> tuple[str, tuple[tuple[str, Adapter], ...]]:
        """``UPDATE`` of just the sent columns (cached per set of unsent columns)."""
        sent = tuple(c for c in self.columns if c not in unsent)
        hit = self.partial_sql.get(sent)
        if hit is None:
            keys = {k for k, _ in self.key_pairs}
            sets = [(c, a) for c, a in self.pairs if c in sent and c not in keys]
            where = " AND ".join(f"{qi(k)} = ?" for k, _ in self.key_pairs)
            if sets:
                assign = ", ".join(f"{qi(c)} = ?" for c, _ in sets)
                sql = f"UPDATE {qi(self.target)} SET {assign} WHERE {where}"
            else:
                sql = ""
            hit = self.partial_sql[sent] = (sql, (*sets, *self.key_pairs))
        return hit


def _build_plan(
    target: TargetTable,
    columns: Sequence[str],
    lazy: bool,
    n: int = 0,
    mode: str | None = None,
    version_column: str | None = None,
    keyed: bool = False,
) -> _Plan:
    name = qi(target.name)
    key = target.key
    pairs = tuple((c, adapter_for(target.columns[c])) for c in columns)
    non_key = [c for c in columns if c not in key]
    conflict = ", ".join(qi(k) for k in key)
    if non_key:
        do = "DO UPDATE SET " + ", ".join(f"{qi(c)} = excluded.{qi(c)}" for c in non_key)
    else:
        do = "DO NOTHING"
    return _Plan(
        target=target.name,
        columns=tuple(columns),
        pairs=pairs,
        key_pairs=tuple((k, adapter_for(target.columns[k])) for k in key),
        upsert_sql=(
            f"INSERT INTO {name} ({', '.join(qi(c) for c in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT ({conflict}) {do}"
        ),
        delete_sql=f"DELETE FROM {name} WHERE " + " AND ".join(f"{qi(k)} = ?" for k in key),
        truncate_sql=f"DELETE FROM {name}",
        lazy=lazy,
        target_columns=list(target.columns),
        rule=_rule_for(mode, n, target, columns, version_column) if mode else None,
        keys=_keys_for(n, target) if keyed or mode else None,
        delete_pairs=tuple(
            (columns.index(c), c, adapter_for(target.columns[c]))
            for c in dict.fromkeys([*key, *([version_column] if version_column else [])])
        ),
    )


# ---- conflict rules ----------------------------------------------------------------------
#
# A table with a rule stages its folded rows in a temp table, marks the losers with one
# set UPDATE (``_sl_ok = 0``), applies the rest with set statements and keeps the shadow
# rows (_syncline_row_versions: lww versions and tombstones, the hash of each row as
# syncline left it) in step. BEGIN IMMEDIATE makes the sink the only writer for the
# transaction, so deciding before writing cannot race a local writer.

SHADOW = "_syncline_row_versions"
CONFLICTS = "_syncline_conflicts"
CONFLICT_TABLES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {SHADOW} (tbl TEXT NOT NULL, key TEXT NOT NULL, version INTEGER, "
    "hash TEXT, deleted INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL, "
    "PRIMARY KEY (tbl, key))",
    f"CREATE INDEX IF NOT EXISTS {SHADOW}_tombstones ON {SHADOW} (updated_at) WHERE deleted = 1",
    f"CREATE TABLE IF NOT EXISTS {CONFLICTS} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "pipeline TEXT NOT NULL, tbl TEXT NOT NULL, source_table TEXT NOT NULL, key TEXT NOT NULL, "
    "incoming TEXT NOT NULL, current TEXT, detected_at TEXT NOT NULL, "
    "status TEXT NOT NULL DEFAULT 'open', resolution TEXT, resolved_at TEXT)",
    f"CREATE INDEX IF NOT EXISTS {CONFLICTS}_open ON {CONFLICTS} (tbl, key) WHERE status = 'open'",
)
APPLYING = "_syncline_applying"  # holds a row inside the sink's apply transactions
LOCAL_TOMBSTONES_DDL = (
    f"CREATE TABLE IF NOT EXISTS {APPLYING} (pipeline TEXT)",
    f"CREATE INDEX IF NOT EXISTS {SHADOW}_local ON {SHADOW} (deleted) WHERE deleted = 2",
)
# A local tombstone (deleted = 2) holds the deleted row's raw lww value in ``hash`` until the
# sink's next apply turns it into a version with _to_us, the same rule a replicated delete
# gets (a local writer's connection has no _sl_ver function).
_SETTLE_LOCAL = (
    f"UPDATE {SHADOW} SET version = max(coalesce(version, _sl_tomb(hash)), "
    "coalesce(_sl_tomb(hash), version)), hash = NULL, deleted = 1 WHERE deleted = 2"
)
_CLOCK_US = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
_NOW = "strftime('%Y-%m-%d %H:%M:%S', 'now')"
_MIN = "-9223372036854775808"
_SEP = "\x1f"  # separates the unsent column names staged for a partial row


def tombstone_ddl(target: TargetTable, mode: str, version_column: str | None) -> str:
    """An AFTER DELETE trigger on an lww table: tombstones for deletes made locally.

    The sink's own deletes leave their own tombstones and run while _syncline_applying
    holds a row, so the trigger skips them.
    """
    if mode == "lww_col":
        assert version_column is not None
        c = f"OLD.{qi(version_column)}"
        raw = f"CASE typeof({c}) WHEN 'real' THEN CAST({c} AS INTEGER) ELSE {c} END"
        if "INT" not in target.columns[version_column].upper():  # timed: NULL → the clock
            raw = f"coalesce({raw}, {_CLOCK_US})"
    else:
        raw = _CLOCK_US
    key = ", ".join(f"{ql(k)}, OLD.{qi(k)}" for k in target.key)
    return (
        f"CREATE TRIGGER {qi('syncline_tombstone_' + target.name)} AFTER DELETE ON "
        f"{qi(target.name)} WHEN NOT EXISTS (SELECT 1 FROM {APPLYING}) BEGIN "
        f"INSERT INTO {SHADOW} (tbl, key, version, hash, deleted, updated_at) "
        f"SELECT {ql(target.name)}, json_object({key}), NULL, x.v, 2, "
        "(julianday('now') - 2440587.5) * 86400.0 "
        f"FROM (SELECT {raw} AS v) AS x WHERE x.v IS NOT NULL "
        "ON CONFLICT (tbl, key) DO UPDATE SET hash = excluded.hash, deleted = 2, "
        "updated_at = excluded.updated_at; END"
    )


def _lenient_us(value: Any) -> int | None:
    """_to_us, or None for a value that is no version (a local tombstone then blocks nothing)."""
    try:
        return _to_us(value)
    except ValueError:
        return None


def _row_hash(*values: Any) -> str:
    """md5 of a row's values (their Python repr: exact for ints, floats, text and blobs)."""
    return hashlib.md5(repr(values).encode(), usedforsecurity=False).hexdigest()


def _to_us(value: Any) -> int | None:
    """An lww column's value as an integer: itself, or µs since the epoch for a timestamp."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            delta = when - _EPOCH
            return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise ValueError(f"{value!r:.40} is neither an integer nor an ISO timestamp")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A conflict strategy's statements for one table (see the notes above)."""

    mode: str  # lww_col | lww_ts | target_wins | force
    stage: str
    stage_ddl: str
    stage_sql: str  # INSERT of one staged row
    decide_sql: str  # marks losers; its row count is the number of conflicts
    before_delete: tuple[str, ...]  # shadow statements that need the rows about to go
    delete_sql: str
    upsert_sql: str
    partial_sql: str
    after: tuple[str, ...]  # shadow statements after the writes
    lost_sql: str  # a few losers with the target's row beside them, for the log
    forget_sql: str  # after a truncate


@dataclass(frozen=True, slots=True)
class _Keys:
    """The target's rows of a batch's keys: custom, manual and ``conflicts resolve``."""

    table: str  # a temp table the keys are inserted into (with the key columns' affinity)
    ddl: str
    insert_sql: str
    fetch_sql: str  # (exists, clean, live, open conflict, *the target's columns) per key
    adopt_sql: tuple[str, str]  # ``--use current``: the row becomes syncline's (or is forgotten)
    forget_sql: str  # drop the shadow rows of the keys


def _keys_for(n: int, target: TargetTable) -> _Keys:
    key = target.key
    name = qi(target.name)
    tb = ql(target.name)
    keys = f'temp."_sl_keys_{n}"'
    on = " AND ".join(f"t.{qi(k)} = k.{qi(k)}" for k in key)
    kj = "json_object(" + ", ".join(f"{ql(k)}, k.{qi(k)}" for k in key) + ")"
    tj = kj.replace("k.", "t.")
    hf = f"_sl_hash({', '.join(f't.{qi(c)}' for c in target.columns)})"
    return _Keys(
        table=keys,
        ddl=(
            f"CREATE TEMP TABLE IF NOT EXISTS {keys.split('.', 1)[1]} (_sl_n INTEGER, "
            + ", ".join(f"{qi(k)} {target.columns[k]}" for k in key)
            + ", _sl_ck TEXT)"
        ),
        insert_sql=(
            f"INSERT INTO {keys} (_sl_n, {', '.join(qi(k) for k in key)}, _sl_ck) "
            f"VALUES ({', '.join('?' * (len(key) + 2))})"
        ),
        fetch_sql=(
            f"SELECT t.{qi(key[0])} IS NOT NULL, {hf} IS r.hash AND r.deleted = 0, "
            "r.key IS NOT NULL AND r.deleted = 0, "
            f"EXISTS (SELECT 1 FROM {CONFLICTS} c WHERE c.tbl = {tb} AND c.key = k._sl_ck "
            f"AND c.status = 'open'), {', '.join(f't.{qi(c)}' for c in target.columns)} "
            f"FROM {keys} AS k LEFT JOIN {name} AS t ON {on} "
            f"LEFT JOIN {SHADOW} AS r ON r.tbl = {tb} AND r.key = {kj} ORDER BY k._sl_n"
        ),
        adopt_sql=(
            f"INSERT INTO {SHADOW} (tbl, key, version, hash, deleted, updated_at) "
            f"SELECT {tb}, {tj}, NULL, {hf}, 0, :now FROM {keys} AS k JOIN {name} AS t ON {on} "
            "WHERE true ON CONFLICT (tbl, key) DO UPDATE SET hash = excluded.hash, deleted = 0, "
            "updated_at = excluded.updated_at",
            f"DELETE FROM {SHADOW} WHERE tbl = {tb} AND key IN (SELECT {kj} FROM {keys} AS k "
            f"WHERE NOT EXISTS (SELECT 1 FROM {name} AS t WHERE {on}))",
        ),
        forget_sql=f"DELETE FROM {SHADOW} WHERE tbl = {tb} AND key IN (SELECT {kj} FROM {keys} AS k)",
    )


def _rule_for(
    mode: str, n: int, target: TargetTable, columns: Sequence[str], version_column: str | None
) -> _Rule:
    key = target.key
    name = qi(target.name)
    tb = ql(target.name)
    k0 = qi(key[0])
    stage = f'temp."_sl_stage_{n}"'

    def kj(x: str) -> str:
        return "json_object(" + ", ".join(f"{ql(k)}, {x}.{qi(k)}" for k in key) + ")"

    def on(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{qi(k)} = {b}.{qi(k)}" for k in key)

    def hs(x: str) -> str:  # the synced columns: the tie-break
        return f"_sl_hash({', '.join(f'{x}.{qi(c)}' for c in columns)})"

    def hf(x: str) -> str:  # the whole row: local changes
        return f"_sl_hash({', '.join(f'{x}.{qi(c)}' for c in target.columns)})"

    def unsent(c: str) -> str:
        return f"instr(s._sl_unsent, {ql(_SEP + c + _SEP)}) > 0"

    non_key = [c for c in columns if c not in key]
    cols = ", ".join(qi(c) for c in columns)
    decl = ", ".join(f"{qi(c)} {target.columns[c]}" for c in columns)
    has_t = f"t.{k0} IS NOT NULL"
    remember = (  # shadow rows of what was just written: the hash of the row as it is now
        f"INSERT INTO {SHADOW} (tbl, key, version, hash, deleted, updated_at) "
        f"SELECT {tb}, {kj('t')}, {{version}}, {hf('t')}, 0, :now FROM {stage} AS s "
        f"JOIN {name} AS t ON {on('t', 's')} WHERE s._sl_op IN ('u', 'p') AND s._sl_ok "
        "ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version, hash = excluded.hash, "
        "deleted = 0, updated_at = excluded.updated_at"
    )
    forget_deleted = (
        f"DELETE FROM {SHADOW} WHERE tbl = {tb} AND key IN "
        f"(SELECT {kj('s')} FROM {stage} AS s WHERE s._sl_op = 'd' AND s._sl_ok)"
    )
    before: tuple[str, ...] = ()
    after: tuple[str, ...]
    if mode == "lww_col":
        assert version_column is not None

        def vz(x: str) -> str:
            return f"coalesce(_sl_ver({x}.{qi(version_column)}), {_MIN})"

        def wins(n_: str) -> str:
            return f"({vz(n_)} > {vz('t')} OR ({vz(n_)} = {vz('t')} AND {hs(n_)} >= {hs('t')}))"

        v_s = f"_sl_ver(s.{qi(version_column)})"
        timed = "INT" not in target.columns[version_column].upper()
        # a delete without the column: commit time (timestamps) or the deleted row's version
        vd = f"coalesce({v_s}, s._sl_ts)" if timed else f"coalesce({v_s}, {vz('t')})"
        lose = {
            "u": f"({has_t} AND NOT {wins('s')}) OR (t.{k0} IS NULL AND r.deleted = 1 "
            f"AND r.version >= {vz('s')})",
            "p": f"{has_t} AND NOT ({unsent(version_column)} OR {wins('s')})",
            "d": f"{has_t} AND {vd} < {vz('t')}",
        }
        tomb_v = vd if timed else f"coalesce({v_s}, _sl_ver(t.{qi(version_column)}))"
        before = (
            f"INSERT INTO {SHADOW} (tbl, key, version, hash, deleted, updated_at) "
            f"SELECT {tb}, {kj('s')}, {tomb_v}, NULL, 1, :now FROM {stage} AS s "
            f"LEFT JOIN {name} AS t ON {on('t', 's')} WHERE s._sl_op = 'd' AND {tomb_v} IS NOT NULL "
            "ON CONFLICT (tbl, key) DO UPDATE SET version = max(coalesce(version, excluded.version), "
            "excluded.version), hash = NULL, deleted = 1, updated_at = excluded.updated_at",
        )
        after = ()
    elif mode == "lww_ts":
        known = "r.version IS NOT NULL"
        lose = {
            "u": f"{known} AND NOT (s._sl_ts > r.version OR (s._sl_ts = r.version AND r.deleted = 0 "
            f"AND (t.{k0} IS NULL OR {hs('s')} >= {hs('t')})))",
            "p": f"{known} AND s._sl_ts <= r.version",
            "d": f"{has_t} AND {known} AND s._sl_ts < r.version",
        }
        after = (
            remember.format(version="s._sl_ts"),
            f"INSERT INTO {SHADOW} (tbl, key, version, hash, deleted, updated_at) "
            f"SELECT {tb}, {kj('s')}, s._sl_ts, NULL, 1, :now FROM {stage} AS s WHERE s._sl_op = 'd' "
            "ON CONFLICT (tbl, key) DO UPDATE SET version = excluded.version, hash = NULL, deleted = 1, "
            "updated_at = excluded.updated_at WHERE version IS NULL OR excluded.version >= version",
        )
    elif mode in ("target_wins", "force"):
        changed = f"(r.key IS NULL OR r.deleted = 1 OR {hf('t')} IS NOT r.hash)"
        lose = {
            "u": f"({has_t} AND {changed}) OR (t.{k0} IS NULL AND r.key IS NOT NULL AND r.deleted = 0)",
            "d": f"{has_t} AND {changed}",
        }
        lose["p"] = lose["u"]
        after = (remember.format(version="NULL"), forget_deleted)
    else:  # pragma: no cover
        raise ValueError(mode)
    decide = (
        ""
        if mode == "force"
        else (
            f"UPDATE {stage} SET _sl_ok = 0 WHERE rowid IN (SELECT s.rowid FROM {stage} AS s "
            f"LEFT JOIN {name} AS t ON {on('t', 's')} LEFT JOIN {SHADOW} AS r ON r.tbl = {tb} "
            f"AND r.key = {kj('s')} WHERE CASE s._sl_op WHEN 'u' THEN {lose['u']} "
            f"WHEN 'p' THEN {lose['p']} ELSE {lose['d']} END)"
        )
    )
    key_cols = ", ".join(qi(k) for k in key)
    psets = ", ".join(
        f"{qi(c)} = CASE WHEN {unsent(c)} THEN {name}.{qi(c)} ELSE s.{qi(c)} END" for c in non_key
    )
    tcols = ", ".join(f"t.{qi(c)}" for c in target.columns)
    return _Rule(
        mode=mode,
        stage=stage,
        stage_ddl=(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage.split('.', 1)[1]} ({decl}, _sl_op TEXT, "
            "_sl_unsent TEXT, _sl_ts INTEGER, _sl_ok INTEGER NOT NULL DEFAULT 1)"
        ),
        stage_sql=(
            f"INSERT INTO {stage} ({cols}, _sl_op, _sl_unsent, _sl_ts) "
            f"VALUES ({', '.join('?' * (len(columns) + 3))})"
        ),
        decide_sql=decide,
        before_delete=before,
        delete_sql=(
            f"DELETE FROM {name} WHERE ({key_cols}) IN (SELECT {key_cols} FROM {stage} "
            "WHERE _sl_op = 'd' AND _sl_ok)"
        ),
        upsert_sql=(
            f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {stage} WHERE _sl_op = 'u' AND _sl_ok "
            f"ON CONFLICT ({key_cols}) "
            + (
                "DO UPDATE SET " + ", ".join(f"{qi(c)} = excluded.{qi(c)}" for c in non_key)
                if non_key
                else "DO NOTHING"
            )
        ),
        partial_sql=(
            f"UPDATE {name} SET {psets} FROM {stage} AS s WHERE s._sl_op = 'p' AND s._sl_ok "
            f"AND {on('s', name)}"
            if non_key
            else ""
        ),
        after=after,
        lost_sql=(
            f"SELECT s._sl_op, {', '.join(f's.{qi(c)}' for c in columns)}, t.{k0} IS NOT NULL, "
            f"{tcols} FROM {stage} AS s LEFT JOIN {name} AS t ON {on('t', 's')} "
            "WHERE NOT s._sl_ok LIMIT 5"
        ),
        forget_sql=f"DELETE FROM {SHADOW} WHERE tbl = {tb}",
    )


def _translate(exc: sqlite3.Error, what: str) -> SynclineError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return TransientError(f"{what}: {msg}; retrying")
    if any(s in low for s in ("no such table", "no such column", "has no column", "on conflict")):
        return SchemaError(f"{what}: {msg}")
    if any(s in low for s in ("disk", "readonly", "malformed", "not a database", "unable to open")):
        return StorageError(f"{what}: {msg}; check the file, its permissions and free space")
    return DataError(f"{what}: {msg}")


class SqliteSink(Sink):
    """Applies folded batches to a SQLite database file, exactly once."""

    def __init__(self, config: SqliteSinkConfig, pipeline: str, busy_timeout: float = 30.0) -> None:
        self._cfg = config
        self._pipeline = pipeline
        self._expected: dict[int, int] | None = None  # positions this sink last saw
        self._worker: str | None = None  # set by rebalance: writes need this worker's leases
        self._owned: set[int] = set()
        self._busy_timeout = busy_timeout  # how long to wait for another writer's lock
        self._conn: sqlite3.Connection | None = None
        self._plans: dict[str, _Plan] = {}
        self._prepared: set[str] | None = None  # source tables of prepare(): the captured ones
        self.conflicts_detected = 0  # changes that met a conflict since the sink started
        self._force_plans: dict[str, _Plan] = {}  # ``conflicts resolve``: no rule, shadow kept
        self._rules: dict[str, ConflictConfig | None] = {}  # by source table
        rules = [o.conflict for o in config.tables.values() if o.conflict is not None]
        self._prefilter = any(r.strategy in ("custom", "manual") for r in rules)
        self._needs_shadow = any(r.strategy not in ("custom", "source_wins") for r in rules)
        self._resolvers: dict[str, Resolver] = {
            r.resolver: load_resolver(r.resolver, f"sink of pipeline {pipeline}")
            for r in rules
            if r.resolver
        }
        self._plan_seq = 0
        self._next_purge = 0.0
        self._udf_error: str | None = None  # why _sl_ver failed, for a readable DataError
        self._suppressing: sqlite3.Connection | None = None  # connection that saw SUPPRESS
        self._lww = any(r.strategy == "lww" for r in rules)
        self._tombs: set[str] = set()  # target tables whose tombstone trigger is in place

    @property
    def where(self) -> str:
        return f"SQLite database {self._cfg.path} (sink of pipeline {self._pipeline})"

    TOMBSTONE_RETENTION = 7 * 86400.0  # seconds an lww tombstone is kept
    PURGE_INTERVAL = 3600.0  # seconds between opportunistic purges

    def rule_of(self, table_id: str) -> ConflictConfig | None:
        """The conflict rule of source ``table_id`` (None: source_wins)."""
        if table_id not in self._rules:
            self._rules[table_id] = conflict_for(self._cfg.tables, table_id)
        return self._rules[table_id]

    def _register(self, conn: sqlite3.Connection) -> None:
        """SQL functions the conflict rules use: a row hash and lww column versions."""

        def version(value: Any) -> int | None:
            try:
                return _to_us(value)
            except ValueError as exc:
                self._udf_error = f"lww column value {exc}"
                raise

        conn.create_function("_sl_hash", -1, _row_hash, deterministic=True)
        conn.create_function("_sl_ver", 1, version, deterministic=True)
        conn.create_function("_sl_tomb", 1, _lenient_us, deterministic=True)

    def _connect(self) -> sqlite3.Connection:
        path = self._cfg.path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StorageError(
                f"cannot open {self.where}: directory {parent} does not exist; create it or fix the path"
            )
        if os.path.isdir(path):
            raise StorageError(
                f"cannot open {self.where}: it is a directory; set the sink path to a database file"
            )
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StorageError(
                f"cannot open {self.where}: {exc}; check the path and its permissions"
            ) from exc
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
            self._register(self._conn)
        return self._conn

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                conn.close()
                self._conn = None

    def open(self, pipeline: str) -> None:
        self._pipeline = pipeline
        conn = self._connection()
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {OFFSETS} (pipeline TEXT NOT NULL, "
                "partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, "
                "updated_at TEXT NOT NULL, PRIMARY KEY (pipeline, partition))"
            )
            leases.sqlite_ensure(conn, OFFSETS)
        except sqlite3.Error as exc:
            raise _translate(exc, f"creating {OFFSETS} in {self.where}") from exc

    def rebalance(
        self, worker: str, partitions: int, lease_s: float, *, leaving: bool = False
    ) -> set[int]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            owned = leases.sqlite_rebalance(
                conn, OFFSETS, self._pipeline, worker, partitions, lease_s, leaving
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _translate(exc, f"settling partition leases in {self.where}") from exc
        self._worker, self._owned = worker, owned
        return set(owned)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def positions(self) -> dict[int, int]:
        try:
            rows = (
                self._connection()
                .execute(
                    f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = ?",
                    (self._pipeline,),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {OFFSETS} in {self.where}") from exc
        self._expected = {int(p): int(o) for p, o in rows}
        return dict(self._expected)

    # ---- targets ---------------------------------------------------------------------

    def target_of(self, table_id: str) -> str:
        """The table that changes of source ``table_id`` go to (SQLite has no schemas)."""
        opts = options_for(self._cfg.tables, table_id)
        name = opts.target if opts is not None and opts.target else table_id
        return name.rpartition(".")[2]

    def _lookup(self, conn: sqlite3.Connection, table: str) -> TargetTable | None:
        rows = conn.execute(f"PRAGMA main.table_info({qi(table)})").fetchall()
        if not rows:
            return None
        key = tuple(r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5]))
        return TargetTable(table, {r[1]: r[2] or "" for r in rows}, key)

    def prepare(self, schemas: Mapping[str, TableSchema]) -> None:
        conn = self._connection()
        try:
            if self._needs_shadow or self._prefilter:
                for ddl in CONFLICT_TABLES_DDL:
                    conn.execute(ddl)
            if self._lww:
                for ddl in LOCAL_TOMBSTONES_DDL:
                    conn.execute(ddl)
            self._prepared = set(schemas)
            for table_id, source in schemas.items():
                if not source.key:
                    raise source_without_key(source, self.where)
                table = self.target_of(table_id)
                target = self._lookup(conn, table)
                if target is None:
                    if not self._cfg.create_tables:
                        raise missing_table(table, self.where)
                    conn.execute(create_table_sql(qi(table), source, "sqlite"))
                    target = self._lookup(conn, table)
                    assert target is not None
                check_target(
                    source, target, self.where, ignores_missing(self._cfg.tables, table_id)
                )
                cols = [c.name for c in source.columns if c.name in target.columns]
                self._plans[table_id] = self._new_plan(table_id, target, cols, lazy=False)
                self._tombstones(conn, table_id, target)
        except sqlite3.Error as exc:
            raise _translate(exc, f"preparing target tables in {self.where}") from exc

    def _new_plan(
        self,
        table_id: str,
        target: TargetTable,
        columns: list[str],
        lazy: bool,
        force: bool = False,
    ) -> _Plan:
        rule = self.rule_of(table_id)
        mode = "force" if force else _mode(rule)
        column = rule.column if rule is not None and mode == "lww_col" else None
        if column is not None and column not in columns:
            if column not in target.columns or not lazy:
                raise SchemaError(
                    f"conflict column {column} of table {table_id} is not among the columns "
                    f"syncline writes to {target.name} in {self.where}; "
                    "lww needs a column both tables have"
                )
            columns = [*columns, column]
        self._plan_seq += 1
        return _build_plan(
            target, columns, lazy, self._plan_seq, mode, column, keyed=rule is not None
        )

    def _plan(self, table_id: str, ops: TableOps | None, force: bool = False) -> _Plan:
        """The prepared plan, or one built from the target and the columns the rows carry.

        ``force`` plans (``conflicts resolve``) apply without the table's rule.
        """
        plans = self._force_plans if force else self._plans
        plan = plans.get(table_id)
        if plan is not None and (not plan.lazy or ops is None):
            return plan
        wanted = set(plan.columns) if plan is not None else set()
        if ops is not None:
            wanted |= row_columns(ops)
        if plan is not None and len(wanted) == len(plan.columns):
            return plan
        target = self._lookup(self._connection(), self.target_of(table_id))
        if target is None:
            if self._prepared is not None and table_id not in self._prepared:
                raise unknown_table(self.target_of(table_id), self.where, table_id)
            raise missing_table(self.target_of(table_id), self.where)
        if not target.key:
            raise SchemaError(f"target table {target.name} in {self.where} has no primary key")
        unknown = sorted(wanted - set(target.columns))
        if unknown and not ignores_missing(self._cfg.tables, table_id):
            raise SchemaError(
                f"target table {target.name} in {self.where} lacks column(s) {', '.join(unknown)}"
            )
        wanted.update(target.key)
        columns = [c for c in target.columns if c in wanted]
        plan = self._new_plan(table_id, target, columns, lazy=True, force=force)
        plans[table_id] = plan
        if not force:
            self._tombstones(self._connection(), table_id, target)
        return plan

    def _tombstones(self, conn: sqlite3.Connection, table_id: str, target: TargetTable) -> None:
        """Install (or bring up to date) the local-delete tombstone trigger of an lww table."""
        rule = self.rule_of(table_id)
        mode = _mode(rule)
        if rule is None or mode not in ("lww_col", "lww_ts") or target.name in self._tombs:
            return
        ddl = tombstone_ddl(target, mode, rule.column)
        name = "syncline_tombstone_" + target.name
        found = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?", (name,)
        ).fetchone()
        if found is None or found[0] != ddl:
            conn.execute("SAVEPOINT sl_tombstone")  # no moment without the trigger
            conn.execute(f"DROP TRIGGER IF EXISTS {qi(name)}")
            conn.execute(ddl)
            conn.execute("RELEASE sl_tombstone")
        self._tombs.add(target.name)

    def check(self, schemas: Mapping[str, TableSchema] | None = None) -> list[str]:
        """Check the database file and target tables without creating anything."""
        notes: list[str] = []
        exists = os.path.exists(self._cfg.path)
        if not exists and not self._cfg.create_tables:
            raise StorageError(f"{self.where} does not exist; create it or set create_tables: true")
        if not exists:
            parent = os.path.dirname(os.path.abspath(self._cfg.path))
            if not os.path.isdir(parent):
                raise StorageError(
                    f"cannot create {self.where}: directory {parent} does not exist; "
                    "create it or fix the path"
                )
            if not os.access(parent, os.W_OK):
                raise StorageError(
                    f"cannot create {self.where}: directory {parent} is not writable"
                )
        conn = self._connect() if exists else None
        try:
            notes.append(f"sink: {self.where} " + ("opened" if exists else "will be created"))
            for table_id in sorted(set(schemas or {}) | set(self._cfg.tables)):
                table = self.target_of(table_id)
                target = self._lookup(conn, table) if conn is not None else None
                if target is None:
                    if not self._cfg.create_tables:
                        raise missing_table(table, self.where)
                    notes.append(f"sink: table {table} will be created")
                    continue
                source = (schemas or {}).get(table_id)
                if source is not None:
                    missing_ok = ignores_missing(self._cfg.tables, table_id)
                    check_target(source, target, self.where, missing_ok)
                elif not target.key:
                    raise SchemaError(f"target table {table} in {self.where} has no primary key")
                notes.append(f"sink: {table_id} → {table} ok")
        except sqlite3.Error as exc:
            raise _translate(exc, f"checking {self.where}") from exc
        finally:
            if conn is not None:
                conn.close()
        return notes

    # ---- apply -----------------------------------------------------------------------

    def apply(self, changes: Sequence[Change], positions: Mapping[int, int]) -> ApplyResult:
        steps, result = fold(changes)
        conn = self._connection()
        what = f"applying changes in {self.where}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            suppress = self._suppress(conn)
            if suppress:
                conn.execute(_SUPPRESS_ON, (suppress,))
            if self._worker is None:
                fence_check(
                    self._pipeline,
                    self._expected,
                    conn.execute(
                        f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = ?",
                        (self._pipeline,),
                    ).fetchall(),
                )
            else:
                needed = {leases.guarded_partition(k) for k in positions}
                leases.check_fence(
                    self._pipeline,
                    self._worker,
                    self._expected,
                    leases.sqlite_fence_rows(conn, OFFSETS, self._pipeline, self._owned),
                    {p for p in needed if p is not None} | self._owned,
                )
            if self._prefilter:
                what = f"fetching the target rows of conflict-checked tables in {self.where}"
                steps, result = self._prefiltered(conn, changes)
            if self._needs_shadow:
                self._maybe_purge(conn)
            if self._lww:
                conn.execute(_APPLYING_ON, (self._pipeline,))
                conn.execute(_SETTLE_LOCAL)
            for step in steps:
                plan = self._plan(step.table_id, step if isinstance(step, TableOps) else None)
                what = f"applying changes to {plan.target} in {self.where}"
                if isinstance(step, Truncate):
                    conn.execute(plan.truncate_sql)
                    if plan.rule is not None:
                        conn.execute(plan.rule.forget_sql)
                else:
                    lost = self._apply_ops(conn, plan, step)
                    if lost:
                        result.applied -= lost
                        result.conflicts += lost
            if positions:
                what = f"storing positions in {self.where}"
                conn.executemany(
                    f"INSERT INTO {OFFSETS} (pipeline, partition, next_offset, updated_at) "
                    "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
                    "ON CONFLICT (pipeline, partition) DO UPDATE SET "
                    "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
                    [(self._pipeline, int(p), int(o)) for p, o in positions.items()],
                )
            if suppress:
                conn.execute(_SUPPRESS_OFF, (suppress,))
            if self._lww:
                conn.execute(_APPLYING_OFF)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            udf_error, self._udf_error = self._udf_error, None
            if udf_error:
                raise DataError(f"{what}: {udf_error}") from exc
            raise _translate(exc, what) from exc
        except TransientError:
            self._rollback()
            raise
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            self._rollback()
            raise DataError(f"{what}: {self._bad_value(steps, exc)}") from exc
        except BaseException:
            self._rollback()
            raise
        if self._expected is not None:
            self._expected.update(positions)
        self.conflicts_detected += result.conflicts
        return result

    def _suppress(self, conn: sqlite3.Connection) -> str | None:
        """The suppress row to hold during this transaction, if capture is to be hidden.

        Looked up inside the write transaction until found, then cached for the
        connection: a source that installs its triggers later is still honoured.
        """
        if not self._cfg.suppress_capture:
            return None
        if self._suppressing is not conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (SUPPRESS,)
            ).fetchone()
            if found is None:
                return None
            self._suppressing = conn
        return f"sink:{self._pipeline}"

    def _bad_value(self, steps: Sequence[TableOps | Truncate], exc: Exception) -> str:
        """Name the column whose value could not be converted (error path only)."""
        for step in steps:
            plan = self._plans.get(step.table_id)
            if plan is None or not isinstance(step, TableOps):
                continue
            for row in [*step.upserts, *(r for r, _ in step.partials)]:
                for col, adapt in plan.pairs:
                    try:
                        adapt(row.get(col))
                    except (TypeError, ValueError) as err:
                        return f"cannot write {col}={row.get(col)!r:.40} to {plan.target}: {err}"
        return f"a value does not fit its column: {exc}"

    def _apply_ops(self, conn: sqlite3.Connection, plan: _Plan, ops: TableOps) -> int:
        """Apply one table's folded rows; how many lost to the target's rows."""
        if plan.rule is not None:
            return self._apply_rule(conn, plan, plan.rule, ops)
        if ops.deletes:
            kp = plan.key_pairs
            conn.executemany(plan.delete_sql, [[a(k.get(c)) for c, a in kp] for k in ops.deletes])
        if ops.upserts:
            pairs = plan.pairs
            conn.executemany(plan.upsert_sql, [_values(r, pairs) for r in ops.upserts])
        if ops.partials:
            groups: dict[str, tuple[tuple[tuple[str, Adapter], ...], list[list[Any]]]] = {}
            for row, unchanged in ops.partials:
                unsent = {c for c in plan.columns if c in unchanged or c not in row}
                sql, pairs_ = plan.partial(unsent)
                if sql:
                    groups.setdefault(sql, (pairs_, []))[1].append(_values(row, pairs_))
            for sql, (_, rows) in groups.items():
                conn.executemany(sql, rows)
        return 0

    # ---- conflict rules --------------------------------------------------------------

    def _apply_rule(self, conn: sqlite3.Connection, plan: _Plan, rule: _Rule, ops: TableOps) -> int:
        """Stage, mark the losers, write the rest; how many changes lost to the target."""
        if plan.stage_ready is not conn:
            conn.execute(rule.stage_ddl)
            plan.stage_ready = conn
        conn.execute(f"DELETE FROM {rule.stage}")
        conn.executemany(rule.stage_sql, _staged(plan, ops))
        lost = conn.execute(rule.decide_sql).rowcount if rule.decide_sql else 0
        now = {"now": time.time()}
        if ops.deletes:
            for sql in rule.before_delete:
                conn.execute(sql, now)
            conn.execute(rule.delete_sql)
        if ops.upserts:
            conn.execute(rule.upsert_sql)
        if ops.partials and rule.partial_sql:
            conn.execute(rule.partial_sql)
        for sql in rule.after:
            conn.execute(sql, now)
        if lost > 0:
            self._log_lost(conn, plan, rule, lost)
        return lost

    _LOST_REASON = {
        "lww_col": "it is older than the target's row (lww)",
        "lww_ts": "it is older than syncline's last write of the row (lww)",
        "target_wins": "the target's row was changed locally (target_wins)",
    }

    def _log_lost(self, conn: sqlite3.Connection, plan: _Plan, rule: _Rule, lost: int) -> None:
        n = len(plan.columns)
        names = plan.target_columns
        key = [k for k, _ in plan.key_pairs]
        reason = self._LOST_REASON.get(rule.mode, rule.mode)
        for row in conn.execute(rule.lost_sql).fetchall():
            incoming = dict(zip(plan.columns, row[1 : n + 1], strict=True))
            current = dict(zip(names, row[n + 2 :], strict=True)) if row[n + 1] else None
            what = "delete" if row[0] == "d" else "update"
            log_conflict(
                plan.target,
                {k: incoming.get(k) for k in key},
                f"kept the target's row ({what} lost: {reason})",
                incoming,
                current,
            )
        log_lost(plan.target, lost, reason)

    def _prefiltered(
        self, conn: sqlite3.Connection, changes: Sequence[Change]
    ) -> tuple[list[Step], ApplyResult]:
        """Custom and manual tables: decide change by change from the target's rows, then fold."""
        rules: dict[str, ConflictConfig] = {}
        for table_id in {c.event.table_id for c in changes}:
            rule = self.rule_of(table_id)
            if rule is not None and rule.strategy in ("custom", "manual"):
                rules[table_id] = rule
        if not rules:
            return fold(changes)
        out = prefilter(changes, rules, self._resolvers, lambda t, k: self._fetch(conn, t, k))
        if out.parked:
            self._park(conn, out.parked)
        for table_id, keys in out.forget.items():
            plan = self._plan(table_id, None)
            assert plan.keys is not None
            self._keys(conn, plan, keys)
            conn.execute(plan.keys.forget_sql)
        steps, result = fold(out.changes)
        result.conflicts += out.conflicts
        return steps, result

    def _keys(self, conn: sqlite3.Connection, plan: _Plan, keys: list[Row]) -> _Keys:
        """Fill the plan's temp key table with ``keys`` (numbered in order)."""
        kt = plan.keys
        assert kt is not None
        if plan.keys_ready is not conn:
            conn.execute(kt.ddl)
            plan.keys_ready = conn
        conn.execute(f"DELETE FROM {kt.table}")
        conn.executemany(
            kt.insert_sql,
            [
                [i, *(a(k.get(c)) for c, a in plan.key_pairs), key_text(k)]
                for i, k in enumerate(keys)
            ],
        )
        return kt

    def _fetch(self, conn: sqlite3.Connection, table_id: str, keys: list[Row]) -> list[KeyState]:
        """The target's rows of ``keys``, with what the shadow rows say about them."""
        plan = self._plan(table_id, None)
        kt = self._keys(conn, plan, keys)
        names = plan.target_columns
        out = []
        for row in conn.execute(kt.fetch_sql):
            current = dict(zip(names, row[4:], strict=True)) if row[0] else None
            out.append(KeyState(current, bool(row[1]), bool(row[2]), bool(row[3])))
        return out

    def _park(self, conn: sqlite3.Connection, parked: list[Parked]) -> None:
        conn.executemany(
            f"INSERT INTO {CONFLICTS} (pipeline, tbl, source_table, key, incoming, current, "
            f"detected_at) VALUES (?, ?, ?, ?, ?, ?, {_NOW})",
            [
                (
                    self._pipeline,
                    self._plan(p.table_id, None).target,
                    p.table_id,
                    key_text(p.key),
                    encode_value(p.event).decode(),
                    None if p.current is None else to_json(p.current),
                )
                for p in parked
            ],
        )

    def _maybe_purge(self, conn: sqlite3.Connection) -> None:
        """Drop tombstones older than the retention, at most once per interval."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.PURGE_INTERVAL
        conn.execute(
            f"DELETE FROM {SHADOW} WHERE deleted = 1 AND updated_at < ?",
            (time.time() - self.TOMBSTONE_RETENTION,),
        )

    # ---- parked conflicts: what ``syncline conflicts`` calls ---------------------------

    def _read_conflicts(self, where: str, args: Sequence[Any]) -> list[Conflict]:
        if not os.path.exists(self._cfg.path):
            raise StorageError(f"{self.where} does not exist; check the sink path")
        try:
            conn = self._connection()
            found = conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (CONFLICTS,)
            ).fetchone()
            if found is None:
                return []
            rows = conn.execute(
                "SELECT id, pipeline, tbl, source_table, key, incoming, current, detected_at, "
                f"status, resolution, resolved_at FROM {CONFLICTS} WHERE {where} ORDER BY id",
                args,
            ).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, f"reading {CONFLICTS} in {self.where}") from exc
        return [
            Conflict(
                id=r[0],
                pipeline=r[1],
                table=r[2],
                source_table=r[3],
                key=msgspec.json.decode(r[4]),
                incoming=msgspec.json.decode(r[5]),
                current=None if r[6] is None else msgspec.json.decode(r[6]),
                detected_at=r[7],
                status=r[8],
                resolution=r[9],
                resolved_at=r[10],
            )
            for r in rows
        ]

    def list_conflicts(
        self, pipeline: str | None = None, include_resolved: bool = False
    ) -> list[Conflict]:
        return self._read_conflicts(
            "(? IS NULL OR pipeline = ?) AND (? OR status = 'open')",
            (pipeline, pipeline, include_resolved),
        )

    def get_conflict(self, conflict_id: int) -> Conflict | None:
        found = self._read_conflicts("id = ?", (conflict_id,))
        return found[0] if found else None

    def resolve_conflict(self, conflict_id: int, use: str) -> list[int]:
        """Apply the parked change (and the key's later ones) or keep the target's row."""
        check_use(use)
        found = self.get_conflict(conflict_id)
        if found is None:
            raise ConflictNotFound(
                f"no conflict {conflict_id} in {self.where}; see syncline conflicts list"
            )
        conn = self._connection()
        what = f"resolving conflict {conflict_id} in {self.where}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT status, resolution FROM {CONFLICTS} WHERE id = ?", (conflict_id,)
            ).fetchone()
            if row is None or row[0] != "open":
                raise ConflictNotFound(
                    f"conflict {conflict_id} is already resolved ({row and row[1]}); nothing to do"
                )
            plan = self._plan(found.source_table, None, force=True)
            ids = [conflict_id]
            if use == "current":
                self._keys(conn, plan, [found.key])
                assert plan.keys is not None
                adopt, forget = plan.keys.adopt_sql
                conn.execute(adopt, {"now": time.time()})
                conn.execute(forget)
            else:
                rows = conn.execute(
                    f"SELECT id, key, incoming FROM {CONFLICTS} WHERE tbl = ? AND key = ? "
                    "AND status = 'open' AND id >= ? ORDER BY id",
                    (found.table, key_text(found.key), conflict_id),
                ).fetchall()
                parked = parked_changes([(i, msgspec.json.decode(k), inc) for i, k, inc in rows])
                ids = [i for i, _ in parked]
                steps, _ = fold([c for _, c in parked])
                for step in steps:
                    if isinstance(step, TableOps):
                        self._apply_ops(conn, self._plan(step.table_id, step, force=True), step)
            conn.executemany(
                f"UPDATE {CONFLICTS} SET status = 'resolved', resolution = ?, resolved_at = {_NOW} "
                "WHERE id = ?",
                [(use if i == conflict_id else f"incoming (after #{conflict_id})", i) for i in ids],
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise _translate(exc, what) from exc
        except BaseException:
            self._rollback()
            raise
        return ids


def _values(row: Row, pairs: tuple[tuple[str, Adapter], ...]) -> list[Any]:
    g = row.get
    return [a(g(c)) for c, a in pairs]


def _staged(plan: _Plan, ops: TableOps) -> list[list[Any]]:
    """Stage rows for a table with a rule: columns, then op, unsent columns, commit time."""
    rows: list[list[Any]] = []
    width = len(plan.pairs)
    for key, ts in zip(ops.deletes, ops.delete_ts, strict=True):
        values: list[Any] = [None] * width
        for i, c, a in plan.delete_pairs:
            values[i] = a(key.get(c))
        rows.append([*values, "d", None, ts])
    pairs = plan.pairs
    for row, ts in zip(ops.upserts, ops.upsert_ts, strict=True):
        rows.append([*_values(row, pairs), "u", None, ts])
    for (row, unchanged), ts in zip(ops.partials, ops.partial_ts, strict=True):
        unsent = [c for c in plan.columns if c in unchanged or c not in row]
        rows.append([*_values(row, pairs), "p", _SEP + _SEP.join(unsent) + _SEP, ts])
    return rows


def _mode(rule: ConflictConfig | None) -> str | None:
    """The statements a table's rule runs (manual: target_wins for what it does not park)."""
    if rule is None or rule.strategy == "custom":
        return None
    if rule.strategy == "lww":
        return "lww_col" if rule.column else "lww_ts"
    return "target_wins"
