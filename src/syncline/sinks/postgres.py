"""PostgreSQL sink: COPY each batch into a staging table, then merge it with set statements.

Per table and batch there are two round trips whatever the batch size: one COPY
of every folded row (upserts, partial updates and deletes, tagged by ``_sl_op``)
into a per-connection temporary table, and one multi-statement merge
(``DELETE … USING``, ``INSERT … ON CONFLICT … DO UPDATE``, ``UPDATE … FROM`` for
rows whose unchanged TOAST columns must keep the target's value). The log
positions are upserted in the same transaction, which makes the effect exactly
once. A table with a conflict rule runs the rule's variants of these statements
(see "conflict rules" below and docs/conflicts.md).
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg2
import psycopg2.extensions

from syncline.config import ConflictConfig, PostgresSinkConfig
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
    AuthError,
    ConfigError,
    ConnectError,
    DataError,
    SchemaError,
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
    first_line,
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
from syncline.sources.postgres.errors import unreachable
from syncline.sources.postgres.origins import SessionOrigin, newest_ts_us, split_by_origin
from syncline.sources.postgres.pgoutput import DELETE_MESSAGE

log = logging.getLogger("syncline.sink.postgres")

OFFSETS = "syncline.syncline_offsets"
_COPY_CHUNK = 1 << 20

# ---- COPY text encoding ----------------------------------------------------------------

Adapter = Callable[[Any], str]
NULL = "\\N"
_INF = float("inf")


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _float(v: float) -> str:
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return repr(v)


def _bytea(v: Any) -> str:
    """bytea input text: base64 (as events carry it) or raw bytes → ``\\x`` hex."""
    if isinstance(v, str):
        return "\\x" + b64decode(v).hex()
    if isinstance(v, bytes | bytearray | memoryview):
        return "\\x" + bytes(v).hex()
    raise TypeError(f"expected base64 text for a bytea column, got {type(v).__name__}")


def _scalar(v: Any) -> str:
    """Unescaped input text of a non-null JSON-natural value."""
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if t is bool:
        return "t" if v else "f"
    if t is float:
        return _float(v)
    if t is dict or t is list:
        return to_json(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return _bytea(v)
    return str(v)


def _a_text(v: Any) -> str:
    if v is None:
        return NULL
    t = type(v)
    if t is int:
        return str(v)
    if t is str:
        return _esc(v)
    return _esc(_scalar(v))


def _a_int(v: Any) -> str:
    if v is None:
        return NULL
    t = type(v)
    if t is int:
        return str(v)
    if t is bool:
        return "1" if v else "0"
    return _esc(_scalar(v))


def _a_bool(v: Any) -> str:
    if v is None:
        return NULL
    if type(v) is str:
        return _esc(v)
    return "t" if v else "f"


def _a_json(v: Any) -> str:
    if v is None:
        return NULL
    return _esc(v if type(v) is str else to_json(v))


def _a_bytea(v: Any) -> str:
    return NULL if v is None else "\\" + _bytea(v)


def _e_bool(v: Any) -> str:
    return v if type(v) is str else ("t" if v else "f")


def _e_json(v: Any) -> str:
    return v if type(v) is str else to_json(v)


def array_literal(v: list[Any], elem: Callable[[Any], str] = _scalar) -> str:
    """PostgreSQL array input text for a (nested) list; every element is quoted."""
    parts = []
    for x in v:
        if x is None:
            parts.append("NULL")
        elif type(x) is list:
            parts.append(array_literal(x, elem))
        else:
            parts.append('"' + elem(x).replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


def _array_adapter(elem: Callable[[Any], str]) -> Adapter:
    def adapt(v: Any) -> str:
        if v is None:
            return NULL
        if type(v) is list:
            return _esc(array_literal(v, elem))
        return _esc(_scalar(v))  # already an array literal

    return adapt


_SCALAR_ADAPTERS: dict[str, Adapter] = {
    "bool": _a_bool,
    "bytea": _a_bytea,
    "json": _a_json,
    "jsonb": _a_json,
    "int2": _a_int,
    "int4": _a_int,
    "int8": _a_int,
}
_ELEMENT_TEXT: dict[str, Callable[[Any], str]] = {
    "bool": _e_bool,
    "bytea": _bytea,
    "json": _e_json,
    "jsonb": _e_json,
}


def adapter_for(base_type: str, element_type: str | None) -> Adapter:
    """The COPY text encoder for a target column of this (domain-resolved) type."""
    if element_type:
        return _array_adapter(_ELEMENT_TEXT.get(element_type, _scalar))
    return _SCALAR_ADAPTERS.get(base_type, _a_text)


# ---- catalog ---------------------------------------------------------------------------

_COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), b.typname, e.typname
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_KEY_SQL = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""


@dataclass(frozen=True, slots=True)
class _Catalog:
    table: TargetTable
    kinds: dict[str, tuple[str, str | None]]  # column → (base type name, array element type)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A conflict strategy's statements for one table; each runs on its own to count losers.

    ``delete_sql`` returns (rows deleted, rows the deletes found); the others report
    how many rows they wrote in their row count.
    """

    mode: str  # lww_col | lww_ts | target_wins | force
    lock_sql: str | None
    delete_sql: str
    tomb_sql: str | None  # after the deletes: tombstones, or forgetting deleted rows
    upsert_sql: str
    partial_sql: str
    lost_sql: str  # a few losing rows with the target's row beside them, for the log
    adopt_sql: str  # ``conflicts resolve --use current``: the target's row becomes syncline's


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything needed to apply one table, prepared once."""

    target: str
    columns: tuple[str, ...]
    pairs: tuple[tuple[str, Adapter], ...]
    key_pairs: tuple[tuple[int, str, Adapter], ...]
    stage: str
    stage_ddl: str
    copy_sql: str
    delete_sql: str
    upsert_sql: str
    partial_sql: str
    truncate_sql: str
    lazy: bool  # built from the rows seen (no source schema): may widen later
    target_sql: str = ""
    rule: _Rule | None = None  # None: source_wins, the plain statements above
    delete_pairs: tuple[tuple[int, str, Adapter], ...] = ()  # what a delete's row carries


def _build_plan(
    n: int,
    target_sql: str,
    cat: _Catalog,
    columns: Sequence[str],
    condition: str | None,
    lazy: bool,
    mode: str | None = None,
    version_column: str | None = None,
) -> _Plan:
    key = cat.table.key
    stage = f'pg_temp."_sl_stage_{n}"'
    col_list = ", ".join(qi(c) for c in columns)
    types = cat.table.columns
    stage_cols = ", ".join(f"{qi(c)} {types[c]}" for c in columns)
    join = " AND ".join(f"t.{qi(k)} = s.{qi(k)}" for k in key)
    non_key = [c for c in columns if c not in key]
    if non_key:
        sets = ", ".join(f"{qi(c)} = EXCLUDED.{qi(c)}" for c in non_key)
        where = f" WHERE {condition.format(new='EXCLUDED')}" if condition else ""
        on_conflict = f"DO UPDATE SET {sets}{where}"
        partial_sets = ", ".join(
            f"{qi(c)} = CASE WHEN {ql(c)} = ANY(s._sl_unchanged) THEN t.{qi(c)} ELSE s.{qi(c)} END"
            for c in non_key
        )
        cond = f" AND ({condition.format(new='s')})" if condition else ""
        partial_sql = (
            f"UPDATE {target_sql} AS t SET {partial_sets} FROM {stage} AS s "
            f"WHERE s._sl_op = 'p' AND {join}{cond}"
        )
    else:
        on_conflict, partial_sql = "DO NOTHING", ""
    key_pairs = tuple((columns.index(k), k, adapter_for(*cat.kinds[k])) for k in key)
    rule = None
    delete_pairs = key_pairs
    if mode is not None:
        rule = _rule(mode, stage, target_sql, cat, columns, version_column)
        if version_column is not None and version_column not in key:
            i = columns.index(version_column)
            delete_pairs = (
                *key_pairs,
                (i, version_column, adapter_for(*cat.kinds[version_column])),
            )
    return _Plan(
        target=cat.table.name,
        columns=tuple(columns),
        pairs=tuple((c, adapter_for(*cat.kinds[c])) for c in columns),
        key_pairs=key_pairs,
        stage=stage,
        stage_ddl=(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({stage_cols}, _sl_op text, "
            f"_sl_unchanged text[]{', _sl_ts bigint' if rule else ''}) ON COMMIT DELETE ROWS"
        ),
        copy_sql=f"COPY {stage} FROM STDIN",
        delete_sql=f"DELETE FROM {target_sql} AS t USING {stage} AS s WHERE s._sl_op = 'd' AND {join}",
        upsert_sql=(
            f"INSERT INTO {target_sql} AS t ({col_list}) SELECT {col_list} FROM {stage} "
            f"WHERE _sl_op = 'u' ON CONFLICT ({', '.join(qi(k) for k in key)}) {on_conflict}"
        ),
        partial_sql=partial_sql,
        truncate_sql=f"TRUNCATE {target_sql}"
        + (f"; DELETE FROM {SHADOW} WHERE tbl = {ql(cat.table.name)}" if rule else ""),
        lazy=lazy,
        target_sql=target_sql,
        rule=rule,
        delete_pairs=delete_pairs,
    )


# ---- conflict rules ----------------------------------------------------------------------
#
# Shadow rows (syncline.row_versions) remember, per target row syncline wrote: the version
# it wrote (lww by commit time), md5 of the whole row as syncline left it (target_wins,
# manual: a different hash means someone else changed the row), and tombstones of deleted
# rows (lww). Everything is decided inside the set statements below; conditions on the
# target's row sit where PostgreSQL re-checks them against the latest row version
# (ON CONFLICT … WHERE, DELETE/UPDATE … WHERE), so a local writer racing the batch is
# judged on what it committed.

SHADOW = "syncline.row_versions"
CONFLICTS = "syncline.conflicts"
CONFLICT_TABLES_DDL = f"""
CREATE SCHEMA IF NOT EXISTS syncline;
CREATE TABLE IF NOT EXISTS {SHADOW} (
    tbl text NOT NULL, key jsonb NOT NULL, version bigint, hash text,
    deleted_at timestamptz, PRIMARY KEY (tbl, key)) WITH (fillfactor = 80);
CREATE INDEX IF NOT EXISTS row_versions_tombstones ON {SHADOW} (deleted_at)
    WHERE deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {CONFLICTS} (
    id bigserial PRIMARY KEY, pipeline text NOT NULL, tbl text NOT NULL,
    source_table text NOT NULL, key jsonb NOT NULL, incoming jsonb NOT NULL, current jsonb,
    detected_at timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution text, resolved_at timestamptz);
CREATE INDEX IF NOT EXISTS conflicts_open ON {CONFLICTS} (tbl, key) WHERE status = 'open';
"""
_MIN = "(-9223372036854775808)::bigint"
_INT_TYPES = ("int2", "int4", "int8")
_TIME_TYPES = ("timestamp", "timestamptz", "date")


def lock_id(target: str) -> int:
    """The advisory lock that serialises syncline writers of one target table's shadow rows."""
    return int.from_bytes(
        hashlib.blake2b(f"syncline:{target}".encode(), digest_size=8).digest(), "big", signed=True
    )


def _version(cat: _Catalog, column: str) -> Callable[[str], str]:
    """SQL for an lww column's value as a bigint (µs since the epoch for timestamps)."""
    base, elem = cat.kinds[column]
    if elem is None and base in _INT_TYPES:
        return lambda x: f"{x}.{qi(column)}::bigint"
    if elem is None and base in _TIME_TYPES:
        return lambda x: f"(extract(epoch FROM {x}.{qi(column)}) * 1000000)::bigint"
    raise SchemaError(
        f"conflict column {column} of target table {cat.table.name} is "
        f"{cat.table.columns[column]}; lww needs a timestamp, date or integer column"
    )


_CLOCK_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"


@dataclass(frozen=True, slots=True)
class _Tombstone:
    """The local-delete trigger of one lww table: its function and the trigger itself."""

    func: str  # qualified, quoted name
    body: str  # the function's source (prosrc), compared to skip needless DDL
    trigger: str  # the trigger's name (unquoted)
    create_trigger: str


def tombstone_ddl(cat: _Catalog, mode: str, version_column: str | None) -> _Tombstone:
    """An AFTER DELETE trigger on an lww table: tombstones for deletes made locally.

    Deletes syncline applies leave their own tombstones and run with the session GUC
    ``syncline.applying`` on, so the trigger skips them. The version is the one a
    replicated delete of the same row gets (its column's value, else the clock for a
    time column, none for an integer one), so both nodes decide the same way.
    """
    schema, _, table = cat.table.name.rpartition(".")
    tgt = f"{qi(schema)}.{qi(table)}"
    func = f"syncline.{qi(f'tombstone_{schema}_{table}')}"
    key = ", ".join(f"{ql(k)}, OLD.{qi(k)}" for k in cat.table.key)
    if mode == "lww_col":
        assert version_column is not None
        v = _version(cat, version_column)("OLD")
        timed = cat.kinds[version_column][0] in _TIME_TYPES
        version = f"coalesce({v}, {_CLOCK_US})" if timed else v
    else:
        version = _CLOCK_US
    body = (
        " BEGIN IF current_setting('syncline.applying', true) = 'on' THEN RETURN NULL; END IF; "
        f"INSERT INTO {SHADOW} AS r (tbl, key, version, deleted_at) SELECT {ql(cat.table.name)}, "
        f"jsonb_build_object({key}), x.v, now() FROM (SELECT {version} AS v) AS x "
        "WHERE x.v IS NOT NULL ON CONFLICT (tbl, key) DO UPDATE SET "
        "version = GREATEST(r.version, EXCLUDED.version), hash = NULL, deleted_at = now(); "
        "RETURN NULL; END "
    )
    name = f"syncline_tombstone_{table}"
    return _Tombstone(
        func,
        body,
        name,
        f"CREATE TRIGGER {qi(name)} AFTER DELETE ON {tgt} FOR EACH ROW EXECUTE FUNCTION {func}()",
    )


def _rule(
    mode: str,
    stage: str,
    tgt: str,
    cat: _Catalog,
    columns: Sequence[str],
    version_column: str | None,
) -> _Rule:
    key = cat.table.key
    tb = ql(cat.table.name)
    k0 = qi(key[0])
    # what a delete's staged row carries: its key and, for lww on a column, the version
    delete_cols = [
        *key,
        *([version_column] if version_column and version_column not in key else []),
    ]

    def kj(x: str) -> str:  # the key as jsonb: how shadow rows are found
        return "jsonb_build_object(" + ", ".join(f"{ql(k)}, {x}.{qi(k)}" for k in key) + ")"

    def on(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{qi(k)} = {b}.{qi(k)}" for k in key)

    def hs(x: str) -> str:  # the synced columns' text: the tie-break
        return f'md5(ROW({", ".join(f"{x}.{qi(c)}" for c in columns)})::text) COLLATE "C"'

    def rs(x: str) -> str:  # the hash syncline stored for a live row
        return f"(SELECT r.hash FROM {SHADOW} r WHERE r.tbl = {tb} AND r.key = {kj(x)} AND r.deleted_at IS NULL)"

    non_key = [c for c in columns if c not in key]
    cols = ", ".join(qi(c) for c in columns)
    s_cols = ", ".join(f"s.{qi(c)}" for c in columns)
    conflict_on = ", ".join(qi(k) for k in key)
    sets = ", ".join(f"{qi(c)} = EXCLUDED.{qi(c)}" for c in non_key)
    psets = ", ".join(
        f"{qi(c)} = CASE WHEN {ql(c)} = ANY(s._sl_unchanged) THEN t.{qi(c)} ELSE s.{qi(c)} END"
        for c in non_key
    )
    found = f"(SELECT count(*) FROM {stage} s JOIN {tgt} t ON {on('t', 's')} WHERE s._sl_op = 'd')"
    lock = f"SELECT pg_advisory_xact_lock({lock_id(cat.table.name)})"
    remember = (  # shadow rows for what a CTE ``w`` wrote: key, hash
        f"INSERT INTO {SHADOW} AS r (tbl, key, hash) SELECT {tb}, key, hash FROM w "
        "ON CONFLICT (tbl, key) DO UPDATE SET hash = EXCLUDED.hash, deleted_at = NULL"
    )
    written = f"RETURNING {kj('t')} AS key, md5(t::text) AS hash"

    def upsert(where: str, do_where: str, returning: str = "") -> str:
        do = f"DO UPDATE SET {sets}{do_where}" if non_key else "DO NOTHING"
        return (
            f"INSERT INTO {tgt} AS t ({cols}) SELECT {s_cols} FROM {stage} AS s {where} "
            f"ON CONFLICT ({conflict_on}) {do} {returning}"
        )

    def partial(where: str, returning: str = "") -> str:
        if not non_key:
            return ""
        return (
            f"UPDATE {tgt} AS t SET {psets} FROM {stage} AS s "
            f"WHERE s._sl_op = 'p' AND {on('t', 's')} AND ({where}) {returning}"
        )

    def deleted(
        cond: str, using: str = "", extra: str = "", returning: str = "", gone: str = ""
    ) -> str:
        # ``gone``: lww deletes that win but find no row here (their insert and delete were
        # folded, or the row never came) still go on as a logical message, else the next
        # node of a ring never hears of them. Every part of the statement sees the rows as
        # they were before it, so a delete that does find its row sends no message.
        emit = (
            f", m AS (SELECT {_emit_delete(cat, delete_cols)} AS lsn FROM {stage} AS s{using} "
            f"WHERE s._sl_op = 'd' AND NOT EXISTS (SELECT 1 FROM {tgt} AS c WHERE {on('c', 's')}) "
            f"AND ({gone}))"
            if gone
            else ""
        )
        sent = ", (SELECT count(lsn) FROM m)" if gone else ", 0"
        return (
            f"WITH d AS (DELETE FROM {tgt} AS t USING {stage} AS s{using} WHERE s._sl_op = 'd' "
            f"AND {on('t', 's')} AND ({cond}) RETURNING {kj('t')} AS key{returning}){extra}{emit} "
            f"SELECT (SELECT count(*) FROM d), {found}{sent}"
        )

    forget = (  # target_wins: shadow rows of keys deleted now or already gone
        f", forget AS (DELETE FROM {SHADOW} AS r USING {stage} AS s WHERE s._sl_op = 'd' "
        f"AND r.tbl = {tb} AND r.key = {kj('s')} AND (r.key IN (SELECT key FROM d) OR NOT EXISTS "
        f"(SELECT 1 FROM {tgt} AS c WHERE {on('c', 's')})))"
    )
    tomb = None
    if mode == "lww_col":
        assert version_column is not None
        v = _version(cat, version_column)

        def vz(x: str) -> str:
            return f"coalesce({v(x)}, {_MIN})"

        # A delete's version: the deleted row's column in the event's before image; without
        # it, the commit time for a time column, or the version of the row it deletes for an
        # integer one (commit times are not in its units).
        timed = cat.kinds[version_column][0] in _TIME_TYPES
        vd = f"coalesce({v('s')}, s._sl_ts)" if timed else f"coalesce({v('s')}, d.version)"

        def wins(n: str) -> str:  # the incoming row ``n`` beats the target's row ``t``
            return f"{vz(n)} > {vz('t')} OR ({vz(n)} = {vz('t')} AND {hs(n)} >= {hs('t')})"

        lock_sql = None
        delete_sql = deleted(  # deletes win ties; every delete leaves a tombstone
            f"{vd.replace('d.version', vz('t'))} >= {vz('t')}",
            extra=f", tomb AS (INSERT INTO {SHADOW} AS r (tbl, key, version, deleted_at) "
            f"SELECT {tb}, {kj('s')}, {vd}, now() FROM {stage} AS s LEFT JOIN d ON d.key = {kj('s')} "
            f"WHERE s._sl_op = 'd' AND {vd} IS NOT NULL ON CONFLICT (tbl, key) DO UPDATE SET "
            "version = GREATEST(r.version, EXCLUDED.version), hash = NULL, deleted_at = now())",
            returning=f", {v('t')} AS version",
            gone="true",
        )
        upsert_sql = upsert(
            f"WHERE s._sl_op = 'u' AND NOT EXISTS (SELECT 1 FROM {SHADOW} r WHERE r.tbl = {tb} "
            f"AND r.key = {kj('s')} AND r.deleted_at IS NOT NULL AND r.version >= {vz('s')})",
            f" WHERE {wins('EXCLUDED')}",
        )
        partial_sql = partial(f"{ql(version_column)} = ANY(s._sl_unchanged) OR {wins('s')}")
    elif mode == "lww_ts":
        shadow_join = f" LEFT JOIN {SHADOW} AS r ON r.tbl = {tb} AND r.key = {kj('s')}"
        lock_sql = lock
        newer = "r.version IS NULL OR s._sl_ts >= r.version"
        delete_sql = deleted(newer, shadow_join, gone=newer)
        tomb = (
            f"INSERT INTO {SHADOW} AS r (tbl, key, version, deleted_at) SELECT {tb}, {kj('s')}, s._sl_ts, now() "
            f"FROM {stage} AS s WHERE s._sl_op = 'd' ON CONFLICT (tbl, key) DO UPDATE SET "
            "version = EXCLUDED.version, hash = NULL, deleted_at = now() "
            "WHERE r.version IS NULL OR EXCLUDED.version >= r.version"
        )
        keys_out = ", ".join(f"t.{qi(k)}" for k in key)
        upsert_sql = (
            "WITH w AS ("
            + upsert(
                f"{shadow_join} LEFT JOIN {tgt} AS c ON {on('c', 's')} WHERE s._sl_op = 'u' AND "
                "(r.version IS NULL OR s._sl_ts > r.version OR (s._sl_ts = r.version AND r.deleted_at IS NULL "
                f"AND (c.{k0} IS NULL OR {hs('s')} >= {hs('c')})))",
                "",
                f"RETURNING {keys_out}, md5(t::text) AS _sl_hash",
            )
            + f") INSERT INTO {SHADOW} AS r (tbl, key, version, hash) "
            f"SELECT {tb}, {kj('w')}, s._sl_ts, w._sl_hash FROM w JOIN {stage} AS s "
            f"ON s._sl_op = 'u' AND {on('w', 's')} ON CONFLICT (tbl, key) DO UPDATE SET "
            "version = EXCLUDED.version, hash = EXCLUDED.hash, deleted_at = NULL"
        )
        p = partial(
            "r.version IS NULL OR s._sl_ts > r.version",
            f"RETURNING {kj('t')} AS key, md5(t::text) AS hash, s._sl_ts AS version",
        ).replace(f"FROM {stage} AS s ", f"FROM {stage} AS s{shadow_join} ", 1)
        partial_sql = (
            f"WITH w AS ({p}) INSERT INTO {SHADOW} AS r (tbl, key, version, hash) "
            f"SELECT {tb}, key, version, hash FROM w ON CONFLICT (tbl, key) DO UPDATE SET "
            "version = EXCLUDED.version, hash = EXCLUDED.hash, deleted_at = NULL"
            if p
            else ""
        )
    elif mode in ("target_wins", "force"):
        force = mode == "force"
        lock_sql = lock
        delete_sql = deleted("true" if force else f"md5(t::text) = {rs('s')}", extra=forget)
        gone = (  # syncline wrote the key but the row is gone: deleted locally, keep it so
            ""
            if force
            # the target first: the shadow is looked at only for rows that are not there
            else f" AND (EXISTS (SELECT 1 FROM {tgt} AS c WHERE {on('c', 's')}) OR NOT EXISTS "
            f"(SELECT 1 FROM {SHADOW} r WHERE r.tbl = {tb} AND r.key = {kj('s')} "
            "AND r.deleted_at IS NULL))"
        )
        upsert_sql = (
            "WITH w AS ("
            + upsert(
                f"WHERE s._sl_op = 'u'{gone}",
                "" if force else f" WHERE md5(t::text) = {rs('EXCLUDED')}",
                written,
            )
            + f") {remember}"
        )
        p = partial("true" if force else f"md5(t::text) = {rs('s')}", written)
        partial_sql = f"WITH w AS ({p}) {remember}" if p else ""
    else:  # pragma: no cover - modes come from _mode()
        raise ValueError(mode)
    lost_sql = (
        f"SELECT s._sl_op, to_jsonb(s) - '_sl_op' - '_sl_unchanged' - '_sl_ts', to_jsonb(t) "
        f"FROM {stage} AS s LEFT JOIN {tgt} AS t ON {on('t', 's')} "
        f"WHERE (s._sl_op = 'd' AND t.{k0} IS NOT NULL) OR "
        f"(s._sl_op = 'u' AND (t.{k0} IS NULL OR {hs('s')} <> {hs('t')})) LIMIT 5"
    )
    adopt_sql = (
        f"WITH k AS (SELECT * FROM json_populate_record(NULL::{tgt}, %s::json)), "
        f"a AS (INSERT INTO {SHADOW} AS r (tbl, key, hash) SELECT {tb}, {kj('t')}, "
        f"md5(t::text) FROM {tgt} AS t JOIN k ON {on('t', 'k')} ON CONFLICT (tbl, key) "
        "DO UPDATE SET hash = EXCLUDED.hash, deleted_at = NULL RETURNING 1) "
        f"DELETE FROM {SHADOW} AS r USING k WHERE r.tbl = {tb} AND r.key = {kj('k')} "
        "AND NOT EXISTS (SELECT 1 FROM a)"
    )
    return _Rule(mode, lock_sql, delete_sql, tomb, upsert_sql, partial_sql, lost_sql, adopt_sql)


def _emit_delete(cat: _Catalog, cols: Sequence[str]) -> str:
    """SQL emitting one transactional logical message for the staged delete ``s``.

    It names the table and carries the delete's image as (column, type OID, text)
    triples, so the source decodes the values exactly as it decodes a row.
    """
    schema, _, table = cat.table.name.partition(".")
    image = ", ".join(
        f"json_build_array({ql(c)}, pg_typeof(s.{qi(c)})::oid::bigint, s.{qi(c)}::text)"
        for c in cols
    )
    body = f"json_build_object('s', {ql(schema)}, 't', {ql(table)}, 'b', json_build_array({image}))"
    return f"pg_logical_emit_message(true, {ql(DELETE_MESSAGE)}, {body}::text)"


def _unsent(columns: Sequence[str], row: Row, unchanged: list[str]) -> list[str]:
    """Columns a partial image does not carry: named unchanged, or simply absent."""
    return [c for c in columns if c in unchanged or c not in row]


def encode_rows(plan: _Plan, ops: TableOps) -> str:
    """COPY text of the folded rows of one table (deletes carry only their key).

    Plans with a conflict rule stage one more field, the change's commit time, and
    a delete also carries the lww column of the deleted row when the event had it.
    """
    pairs = plan.pairs
    lines: list[str] = []
    append = lines.append
    ts = plan.rule is not None
    if ops.deletes:
        width = len(pairs)
        fill = plan.delete_pairs
        for j, key in enumerate(ops.deletes):
            fields = [NULL] * width
            for i, c, a in fill:
                fields[i] = a(key.get(c))
            append("\t".join(fields) + (f"\td\t\\N\t{ops.delete_ts[j]}" if ts else "\td\t\\N"))
    if ts:
        for row, t in zip(ops.upserts, ops.upsert_ts, strict=True):
            g = row.get
            append("\t".join([a(g(c)) for c, a in pairs]) + f"\tu\t\\N\t{t}")
    else:
        for row in ops.upserts:
            g = row.get
            append("\t".join([a(g(c)) for c, a in pairs]) + "\tu\t\\N")
    for j, (row, unchanged) in enumerate(ops.partials):
        g = row.get
        unsent = _esc(array_literal(_unsent(plan.columns, row, unchanged)))
        tail = f"\t{ops.partial_ts[j]}" if ts else ""
        append("\t".join([a(g(c)) for c, a in pairs]) + "\tp\t" + unsent + tail)
    lines.append("")
    return "\n".join(lines)


def _bad_value(plan: _Plan, ops: TableOps, exc: Exception) -> DataError:
    """Find the column whose value cannot be encoded, for a message the user can act on."""
    for row in [*ops.upserts, *(r for r, _ in ops.partials), *ops.deletes]:
        for c, a in plan.pairs:
            try:
                a(row.get(c))
            except (TypeError, ValueError, binascii.Error) as err:
                return DataError(f"cannot write {c}={row.get(c)!r:.60} to {plan.target}: {err}")
    return DataError(f"cannot encode a row for {plan.target}: {exc}")


# ---- errors ----------------------------------------------------------------------------

_COPY_COLUMN = re.compile(r"^COPY .+?, line \d+, column (.+?)(?:: |$)", re.M)
_CONN_PREFIX = re.compile(r"^connection to server (at|on) .*? failed:\s*((FATAL|ERROR):\s*)?")
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58", "25", "XX")


def _is_auth_failure(msg: str) -> bool:
    m = msg.lower()
    return any(
        s in m
        for s in (
            "password authentication failed",
            "authentication failed",
            "no password supplied",
            "pg_hba.conf",
            "permission denied for database",
        )
    ) or ("role" in m and "does not exist" in m)


# ---- the sink --------------------------------------------------------------------------


class PostgresSink(Sink):
    """Applies folded batches to a PostgreSQL database, exactly once."""

    def __init__(self, config: PostgresSinkConfig, pipeline: str) -> None:
        self._cfg = config
        self._pipeline = pipeline
        self._expected: dict[int, int] | None = None  # positions this sink last saw
        self._worker: str | None = None  # set by rebalance: writes need this worker's leases
        self._owned: set[int] = set()
        try:
            params = psycopg2.extensions.parse_dsn(config.dsn)
        except psycopg2.Error as exc:
            raise ConfigError(
                f"sink dsn of pipeline {pipeline} is not a valid PostgreSQL DSN: {first_line(exc)}"
            ) from None
        self._password = params.get("password") or ""
        if not str(params.get("port") or "5432").isdigit():
            raise ConfigError(
                f"sink dsn of pipeline {pipeline} has a bad port {params.get('port')!r} "
                "(expected postgresql://user:password@host:port/dbname)"
            )
        host = params.get("host") or params.get("hostaddr") or "localhost"
        self._addr = f"{host}:{params.get('port') or 5432}"
        self._user = params.get("user") or "(default user)"
        self._db = params.get("dbname") or self._user
        self._conn: psycopg2.extensions.connection | None = None
        self.conflicts_detected = 0  # changes that met a conflict since the sink started
        self._force_plans: dict[str, _Plan] = {}  # ``conflicts resolve``: no rule, shadow kept
        self._rules: dict[str, ConflictConfig | None] = {}  # by source table
        rules = [o.conflict for o in config.tables.values() if o.conflict is not None]
        self._prefilter = any(r.strategy in ("custom", "manual") for r in rules)
        self._needs_shadow = any(r.strategy not in ("custom", "source_wins") for r in rules)
        where = f"sink of pipeline {pipeline}"
        self._resolvers: dict[str, Resolver] = {
            r.resolver: load_resolver(r.resolver, where) for r in rules if r.resolver
        }
        self._next_purge = 0.0
        self._plans: dict[str, _Plan] = {}
        self._schemas: dict[str, TableSchema] | None = None  # prepare()'s: the captured tables
        self._stale = False  # plans to rebuild before the next apply (after a refused batch)
        self._replaying = False  # the last apply was a dead-letter replay
        self._staged: set[str] = set()
        self._plan_seq = 0
        self._origins = SessionOrigin(self.where, self._user)  # used if config.origin is set
        self._lww = any(r.strategy == "lww" for r in rules)
        self._tombs: set[str] = set()  # target tables whose tombstone trigger is installed
        # marks the apply transaction, so the tombstone triggers skip it
        self._applying_sql = "SET LOCAL syncline.applying = 'on'; " if self._lww else ""

    @property
    def where(self) -> str:
        return f"database {self._db} at {self._addr} (sink of pipeline {self._pipeline})"

    def conflict_condition(self, table_id: str) -> str | None:
        """SQL that must hold for an incoming row to overwrite the target's (None: always).

        It may refer to the current row as ``t`` and to the incoming one as ``{new}``
        (e.g. ``{new}.updated_at >= t.updated_at``). It applies to tables without a
        ``conflict`` rule; the rules of docs/conflicts.md build their own statements.
        """
        return None

    TOMBSTONE_RETENTION = 7 * 86400.0  # seconds an lww tombstone is kept
    PURGE_INTERVAL = 3600.0  # seconds between opportunistic purges

    def rule_of(self, table_id: str) -> ConflictConfig | None:
        """The conflict rule of source ``table_id`` (None: source_wins)."""
        if table_id not in self._rules:
            self._rules[table_id] = conflict_for(self._cfg.tables, table_id)
        return self._rules[table_id]

    # ---- connection ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _connect(self) -> psycopg2.extensions.connection:
        try:
            conn = psycopg2.connect(
                self._cfg.dsn,
                connect_timeout=10,
                application_name=f"syncline-sink-{self._pipeline}"[:63],
            )
            conn.set_client_encoding("UTF8")
        except psycopg2.OperationalError as exc:
            msg = _CONN_PREFIX.sub("", self._scrub(first_line(exc)))
            if _is_auth_failure(msg):
                raise AuthError(
                    f"PostgreSQL at {self._addr} refused user {self._user} (sink of pipeline "
                    f"{self._pipeline}): {msg}; check the user and password in the sink dsn"
                ) from None
            if "does not exist" in msg and "database" in msg:
                raise ConfigError(
                    f"database {self._db} does not exist at {self._addr} (sink of pipeline "
                    f"{self._pipeline}); create it or fix the sink dsn"
                ) from None
            raise ConnectError(
                f"cannot connect to PostgreSQL at {self._addr}: {unreachable(msg) or msg} (sink of "
                f"pipeline {self._pipeline}); check the host and port in the sink dsn and that "
                "the server is running"
            ) from None
        except psycopg2.Error as exc:
            raise ConfigError(
                f"sink dsn of pipeline {self._pipeline} is not usable: {self._scrub(first_line(exc))}"
            ) from None
        return conn

    def _connection(self) -> psycopg2.extensions.connection:
        """The apply connection, reconnecting after a lost one."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._staged.clear()
        return self._conn

    def _abort(self) -> None:
        """End a failed transaction; drop the connection if it is unusable."""
        self._staged.clear()  # temp tables created in the failed transaction are gone
        conn = self._conn
        if conn is None:
            return
        if not conn.closed:
            try:
                conn.rollback()
                return
            except psycopg2.Error:
                pass
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None

    def _translate(self, exc: psycopg2.Error, what: str) -> SynclineError:
        """Our error for a driver error met while doing ``what`` (which names the table)."""
        code = getattr(exc, "pgcode", None) or ""
        msg = self._scrub(first_line(exc))
        if isinstance(exc, psycopg2.InterfaceError) or not code or code[:2] in _TRANSIENT_CLASSES:
            return TransientError(f"{what} in {self.where} was interrupted: {msg}; retrying")
        if code == "42501":
            return AuthError(f"{what} in {self.where} is not allowed: {msg}; grant the privilege")
        if code[:2] in ("42", "0A"):
            return SchemaError(f"{what} in {self.where} failed: {msg}")
        return DataError(f"{what} in {self.where} failed: {msg}{self._culprit(exc, msg)}")

    def _culprit(self, exc: psycopg2.Error, msg: str) -> str:
        """Which column (and for key constraints which key) a data error is about."""
        diag = getattr(exc, "diag", None)
        if diag is None:
            return ""
        column = diag.column_name
        if not column and diag.context:  # COPY names the column it was reading
            m = _COPY_COLUMN.search(diag.context)
            column = m.group(1) if m else None
        if column and f'"{column}"' not in msg:
            return f" (column {column})"
        detail = diag.message_detail or ""
        if exc.pgcode in ("23503", "23505") and detail:
            return f" ({self._scrub(detail.rstrip('.'))})"
        return ""

    def _fail(self, exc: psycopg2.Error, what: str) -> SynclineError:
        """Translate ``exc`` and end the transaction; a broken connection is dropped."""
        err = self._translate(exc, what)
        if isinstance(err, DataError | SchemaError):
            self._stale = True  # the target may be altered to fix it: read its catalog again
        code = getattr(exc, "pgcode", None) or ""
        if isinstance(exc, psycopg2.InterfaceError) or not code or code[:2] in ("08", "57"):
            self._drop_connection()  # reconnect lazily on the next call
        else:
            self._abort()
        return err

    # ---- lifecycle -------------------------------------------------------------------

    def open(self, pipeline: str) -> None:
        self._pipeline = pipeline
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (OFFSETS,))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    cur.execute(
                        "CREATE SCHEMA IF NOT EXISTS syncline; "
                        f"CREATE TABLE IF NOT EXISTS {OFFSETS} (pipeline text NOT NULL, "
                        "partition int NOT NULL, next_offset bigint NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT now(), "
                        "PRIMARY KEY (pipeline, partition))"
                    )
                # partition -1 is the pipeline's fence row: an apply without leases locks it
                cur.execute(
                    f"INSERT INTO {OFFSETS} (pipeline, partition, next_offset) VALUES (%s, -1, 0) "
                    "ON CONFLICT DO NOTHING",
                    (pipeline,),
                )
                cur.execute(
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                    "'syncline' AND table_name = 'syncline_offsets' AND column_name = 'owner'"
                )
                row = cur.fetchone()
                if not row or not row[0] or not self._workers_table(cur):
                    leases.pg_ensure(cur, OFFSETS)
            conn.commit()
        except psycopg2.errors.UniqueViolation:
            self._abort()  # another pipeline created it at the same moment
        except psycopg2.Error as exc:
            raise self._fail(exc, f"creating {OFFSETS}") from exc
        if self._cfg.origin:
            try:
                self._origins.ensure(conn, [self._cfg.origin])
            except psycopg2.Error as exc:
                raise self._fail(exc, f"creating replication origin {self._cfg.origin}") from exc

    @staticmethod
    def _workers_table(cur: psycopg2.extensions.cursor) -> bool:
        cur.execute("SELECT to_regclass(%s)", (leases.PG_WORKERS,))
        row = cur.fetchone()
        return row is not None and row[0] is not None

    def close(self) -> None:
        self._drop_connection()

    def rebalance(
        self, worker: str, partitions: int, lease_s: float, *, leaving: bool = False
    ) -> set[int]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                owned = leases.pg_rebalance(
                    cur, OFFSETS, self._pipeline, worker, partitions, lease_s, leaving
                )
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, f"settling partition leases in {OFFSETS}") from exc
        self._worker, self._owned = worker, owned
        return set(owned)

    def positions(self) -> dict[int, int]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = %s AND partition <> -1",
                    (self._pipeline,),
                )
                out = {int(p): int(o) for p, o in cur.fetchall()}
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, f"reading {OFFSETS}") from exc
        self._expected = dict(out)
        return out

    # ---- targets ---------------------------------------------------------------------

    def target_of(self, table_id: str) -> tuple[str, str]:
        """(schema, table) that changes of source ``table_id`` go to."""
        opts = options_for(self._cfg.tables, table_id)
        name = opts.target if opts is not None and opts.target else table_id
        if name.startswith("main.") and name == table_id:
            name = "public." + name[5:]  # SQLite sources: their single schema maps to public
        schema, _, table = name.rpartition(".")
        return schema or "public", table

    def _lookup(self, cur: psycopg2.extensions.cursor, schema: str, table: str) -> _Catalog | None:
        cur.execute("SELECT to_regclass(%s)::oid", (f"{qi(schema)}.{qi(table)}",))
        row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        oid = row[0]
        cur.execute(_COLUMNS_SQL, (oid,))
        cols = cur.fetchall()
        cur.execute(_KEY_SQL, (oid,))
        key = tuple(r[0] for r in cur.fetchall())
        return _Catalog(
            table=TargetTable(f"{schema}.{table}", {c[0]: c[1] for c in cols}, key),
            kinds={c[0]: (c[2], c[3]) for c in cols},
        )

    def _check_one(
        self, cur: psycopg2.extensions.cursor, table_id: str, source: TableSchema, create: bool
    ) -> _Catalog:
        if not source.key:
            raise source_without_key(source, self.where)
        schema, table = self.target_of(table_id)
        cat = self._lookup(cur, schema, table)
        if cat is None:
            if not create:
                raise missing_table(f"{schema}.{table}", self.where)
            cur.execute("SELECT to_regnamespace(%s)", (qi(schema),))
            found = cur.fetchone()
            if found is None or found[0] is None:  # CREATE SCHEMA needs a privilege; skip if we can
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {qi(schema)}")
            shape = self._portable(cur, source, f"{schema}.{table}")
            cur.execute(create_table_sql(f"{qi(schema)}.{qi(table)}", shape, "postgres"))
            cat = self._lookup(cur, schema, table)
            assert cat is not None
        check_target(source, cat.table, self.where, ignores_missing(self._cfg.tables, table_id))
        return cat

    def _portable(
        self, cur: psycopg2.extensions.cursor, source: TableSchema, target: str
    ) -> TableSchema:
        """The source's shape with types the target database lacks turned into text.

        A user-defined enum, composite, domain or range exists in the source
        database only; its values travel as PostgreSQL's text form, so a text
        column keeps them exactly (create the type in the target to keep it typed).
        """
        if source.dialect != "postgres" or not source.columns:
            return source
        cur.execute(
            "SELECT t, to_regtype(t) IS NOT NULL FROM unnest(%s::text[]) AS t",
            ([c.type for c in source.columns],),
        )
        known = dict(cur.fetchall())
        columns = []
        for c in source.columns:
            if not known.get(c.type, True):
                text = "text[]" if c.type.endswith("]") else "text"
                log.warning(
                    "creating %s in %s: column %s has type %s, which the target database "
                    "does not have; it is created as %s",
                    target, self.where, c.name, c.type, text,
                )  # fmt: skip
                c = dataclasses.replace(c, type=text)
            columns.append(c)
        return dataclasses.replace(source, columns=tuple(columns))

    def prepare(self, schemas: Mapping[str, TableSchema]) -> None:
        conn = self._connection()
        if self._needs_shadow or self._prefilter:
            self._ensure_conflict_tables(conn)
        self._schemas = dict(schemas)
        try:
            with conn.cursor() as cur:
                for table_id, source in schemas.items():
                    cat = self._check_one(cur, table_id, source, self._cfg.create_tables)
                    cols = [c.name for c in source.columns if c.name in cat.table.columns]
                    self._plans[table_id] = self._new_plan(table_id, cat, cols, lazy=False)
                    self._tombstones(cur, table_id, cat)
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, "preparing target tables") from exc
        except BaseException:
            self._abort()
            raise

    def _replan(self, cur: psycopg2.extensions.cursor) -> None:
        """Plans from the target's catalog as it is now (after a refused batch).

        A user fixing a dead-lettered event alters the target (wider column, dropped
        constraint) and replays it; the cached plans and their staging tables still
        carry the old column types, so they are built again, with new staging tables.
        """
        self._stale = False
        self._force_plans.clear()
        plans: dict[str, _Plan] = {}
        for table_id, source in (self._schemas or {}).items():
            schema, table = self.target_of(table_id)
            cat = self._lookup(cur, schema, table)
            if cat is None:
                continue  # _plan() says the table is missing, for the events that need it
            cols = [c.name for c in source.columns if c.name in cat.table.columns]
            plans[table_id] = self._new_plan(table_id, cat, cols, lazy=False)
        self._plans = plans  # lazily built plans are rebuilt when their tables come again

    def _ensure_conflict_tables(self, conn: psycopg2.extensions.connection) -> None:
        """Create the shadow-row and parked-conflict tables (in their own transaction)."""
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s), to_regclass(%s)", (SHADOW, CONFLICTS))
                row = cur.fetchone()
                if row is None or row[0] is None or row[1] is None:
                    cur.execute(CONFLICT_TABLES_DDL)
            conn.commit()
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateObject):
            self._abort()  # another sink created them at the same moment
        except psycopg2.Error as exc:
            raise self._fail(exc, f"creating {SHADOW} and {CONFLICTS}") from exc

    def _new_plan(
        self, table_id: str, cat: _Catalog, columns: Sequence[str], lazy: bool, force: bool = False
    ) -> _Plan:
        self._plan_seq += 1
        schema, table = self.target_of(table_id)
        rule = self.rule_of(table_id)
        mode = "force" if force else _mode(rule)
        column = rule.column if rule is not None and mode == "lww_col" else None
        if column is not None and column not in columns:
            if column not in cat.table.columns or not lazy:
                raise SchemaError(
                    f"conflict column {column} of table {table_id} is not among the columns "
                    f"syncline writes to {cat.table.name} in {self.where}; "
                    "lww needs a column both tables have"
                )
            columns = [*columns, column]
        return _build_plan(
            self._plan_seq,
            f"{qi(schema)}.{qi(table)}",
            cat,
            columns,
            self.conflict_condition(table_id),
            lazy,
            mode,
            column,
        )

    def _plan(
        self,
        cur: psycopg2.extensions.cursor,
        table_id: str,
        ops: TableOps | None,
        force: bool = False,
    ) -> _Plan:
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
        schema, table = self.target_of(table_id)
        cat = self._lookup(cur, schema, table)
        if cat is None:
            if self._schemas is not None and table_id not in self._schemas:
                raise unknown_table(f"{schema}.{table}", self.where, table_id)
            raise missing_table(f"{schema}.{table}", self.where)
        if not cat.table.key:
            raise SchemaError(f"target table {cat.table.name} in {self.where} has no primary key")
        unknown = sorted(wanted - set(cat.table.columns))
        if unknown and not ignores_missing(self._cfg.tables, table_id):
            raise SchemaError(
                f"target table {cat.table.name} in {self.where} lacks column(s) {', '.join(unknown)}"
            )
        wanted.update(cat.table.key)
        columns = [c for c in cat.table.columns if c in wanted]
        plan = self._new_plan(table_id, cat, columns, lazy=True, force=force)
        plans[table_id] = plan
        if not force:
            self._tombstones(cur, table_id, cat)
        return plan

    def _tombstones(self, cur: psycopg2.extensions.cursor, table_id: str, cat: _Catalog) -> None:
        """Install the local-delete tombstone trigger of an lww table (once per sink)."""
        rule = self.rule_of(table_id)
        mode = _mode(rule)
        if rule is None or mode not in ("lww_col", "lww_ts") or cat.table.name in self._tombs:
            return
        t = tombstone_ddl(cat, mode, rule.column)
        cur.execute("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure(%s)", (f"{t.func}()",))
        found = cur.fetchone()
        if found is None or found[0] != t.body:  # replaced only when it changed: no lock
            cur.execute(
                f"CREATE OR REPLACE FUNCTION {t.func}() RETURNS trigger LANGUAGE plpgsql "
                f"AS {ql(t.body)}"
            )
        schema, _, table = cat.table.name.rpartition(".")
        cur.execute(
            "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
            (f"{qi(schema)}.{qi(table)}", t.trigger),
        )
        if cur.fetchone() is None:
            cur.execute(t.create_trigger)
        self._tombs.add(cat.table.name)

    def check(self, schemas: Mapping[str, TableSchema] | None = None) -> list[str]:
        """Connect and check target tables (of ``schemas``, else the configured ones)."""
        conn = self._connect()
        notes: list[str] = []
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                row = cur.fetchone()
                version = str(row[0]).split()[0] if row else "?"
                notes.append(f"sink: {self.where}: connected (PostgreSQL {version})")
                if self._cfg.origin:
                    notes.append(self._origins.check(cur, self._cfg.origin))
                for table_id in sorted(set(schemas or {}) | set(self._cfg.tables)):
                    schema, table = self.target_of(table_id)
                    source = (schemas or {}).get(table_id)
                    cat = self._lookup(cur, schema, table)
                    if cat is None:
                        if not self._cfg.create_tables:
                            raise missing_table(f"{schema}.{table}", self.where)
                        notes.append(f"sink: {schema}.{table} will be created")
                        continue
                    if source is not None:
                        missing_ok = ignores_missing(self._cfg.tables, table_id)
                        check_target(source, cat.table, self.where, missing_ok)
                    elif not cat.table.key:
                        raise SchemaError(
                            f"target table {cat.table.name} in {self.where} has no primary key"
                        )
                    notes.append(f"sink: {table_id} → {schema}.{table} ok")
            conn.rollback()
        except psycopg2.Error as exc:
            raise self._translate(exc, "checking target tables") from exc
        finally:
            conn.close()
        return notes

    # ---- apply -----------------------------------------------------------------------

    def apply(self, changes: Sequence[Change], positions: Mapping[int, int]) -> ApplyResult:
        origin = self._cfg.origin
        if not origin:
            return self._apply_txn(changes, positions)
        # One transaction per origin (a forwarded change keeps its own); see origins.py.
        groups = split_by_origin(changes, origin) or [(origin, [])]
        try:
            self._origins.ensure(self._connection(), {o for o, _ in groups})
        except psycopg2.Error as exc:
            raise self._fail(exc, "creating replication origins") from exc
        total = ApplyResult()
        for i, (tag, group) in enumerate(groups):
            last = i == len(groups) - 1
            r = self._apply_txn(group, positions if last else {}, (tag, newest_ts_us(group)))
            total.applied += r.applied
            total.skipped += r.skipped
            total.conflicts += r.conflicts
        return total

    def _apply_txn(
        self,
        changes: Sequence[Change],
        positions: Mapping[int, int],
        tag: tuple[str, int] | None = None,
    ) -> ApplyResult:
        steps, result = fold(changes)
        conn = self._connection()
        what = "applying changes"
        used: set[str] = set()  # stages filled in this transaction
        try:
            with conn.cursor() as cur:
                what = f"locking the positions of pipeline {self._pipeline} in {OFFSETS}"
                if self._worker is None:
                    cur.execute(self._applying_sql + self._fence_sql, (self._pipeline,) * 2)
                    fence_check(self._pipeline, self._expected, cur.fetchall())
                else:
                    cur.execute(
                        self._applying_sql + leases.pg_fence_sql(OFFSETS),
                        (self._pipeline, sorted(self._owned)),
                    )
                    needed = {leases.guarded_partition(k) for k in positions}
                    leases.check_fence(
                        self._pipeline,
                        self._worker,
                        self._expected,
                        cur.fetchall(),
                        {p for p in needed if p is not None} | self._owned,
                    )
                replay = any(leases.mark_partition(k) is not None for k in positions)
                if self._stale or (replay and not self._replaying):
                    # a refused batch, or the first replay since: the user may have just
                    # altered the target to fix what was dead-lettered
                    what = "reading the target tables again"
                    self._replan(cur)
                self._replaying = replay
                if self._prefilter:
                    what = "fetching the target rows of conflict-checked tables"
                    steps, result = self._prefiltered(cur, changes)
                if self._needs_shadow:
                    self._maybe_purge(cur)
                if tag is not None:
                    what = f"tagging the transaction with replication origin {tag[0]}"
                    self._origins.tag(conn, cur, *tag)
                for step in steps:
                    if isinstance(step, Truncate):
                        plan = self._plan(cur, step.table_id, None)
                        what = f"truncating {plan.target}"
                        cur.execute(plan.truncate_sql)
                    else:
                        plan = self._plan(cur, step.table_id, step)
                        what = f"applying changes to {plan.target}"
                        lost = self._apply_ops(cur, plan, step, used)
                        if lost:
                            result.applied -= lost
                            result.conflicts += lost
                if positions:
                    what = f"storing positions in {OFFSETS}"
                    cur.execute(self._positions_sql(positions))
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, what) from exc
        except BaseException:
            self._abort()
            raise
        if self._expected is not None:
            self._expected.update(positions)
        self.conflicts_detected += result.conflicts
        return result

    # Lock the fence row, then read the positions in a second statement: in READ
    # COMMITTED a statement that waited for a lock keeps its snapshot and would miss
    # position rows the other applier inserted (tests/faults/test_apply_race.py).
    _fence_sql = (
        f"SELECT 1 FROM {OFFSETS} WHERE pipeline = %s AND partition = -1 FOR UPDATE; "
        f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = %s ORDER BY partition"
    )

    def _apply_ops(
        self, cur: psycopg2.extensions.cursor, plan: _Plan, ops: TableOps, used: set[str]
    ) -> int:
        """Stage and merge one table's folded rows; how many lost to the target's rows."""
        if plan.stage not in self._staged:
            cur.execute(plan.stage_ddl)
            self._staged.add(plan.stage)
        elif plan.stage in used:  # a truncate split this table's run: empty the stage again
            cur.execute(f"TRUNCATE {plan.stage}")
        used.add(plan.stage)
        try:
            data = encode_rows(plan, ops)
        except (TypeError, ValueError, binascii.Error) as exc:
            raise _bad_value(plan, ops, exc) from exc
        cur.copy_expert(plan.copy_sql, io.StringIO(data), size=_COPY_CHUNK)
        if plan.rule is not None:
            return self._apply_rule(cur, plan, plan.rule, ops)
        sql = []
        if ops.deletes:
            sql.append(plan.delete_sql)
        if ops.upserts:
            sql.append(plan.upsert_sql)
        if ops.partials and plan.partial_sql:
            sql.append(plan.partial_sql)
        cur.execute(";\n".join(sql))
        return 0

    # ---- conflict rules --------------------------------------------------------------

    def _apply_rule(
        self, cur: psycopg2.extensions.cursor, plan: _Plan, rule: _Rule, ops: TableOps
    ) -> int:
        """Run a rule's statements one by one, counting the rows that lost to the target."""
        lost = lost_upserts = 0
        if rule.lock_sql:
            cur.execute(rule.lock_sql)
        if ops.deletes:
            cur.execute(rule.delete_sql)
            row = cur.fetchone()
            lost += int(row[1]) - int(row[0]) if row else 0
            if rule.tomb_sql:
                cur.execute(rule.tomb_sql)
        if ops.upserts:
            cur.execute(rule.upsert_sql)
            lost_upserts = len(ops.upserts) - max(cur.rowcount, 0)
            lost += lost_upserts
        if ops.partials and rule.partial_sql:
            cur.execute(rule.partial_sql)
            lost += len(ops.partials) - max(cur.rowcount, 0)
        if lost > 0 and rule.mode != "force":
            self._log_lost(cur, plan, rule, lost)
        rule_cfg = self.rule_of(ops.table_id)
        if lost_upserts and rule_cfg is not None and rule_cfg.strategy == "manual":
            # the rows were locked when the batch was checked, so a new row written
            # locally since then raced us: roll back and check again
            raise TransientError(
                f"a row of {plan.target} in {self.where} was written locally while a batch "
                "was being checked for conflicts; retrying"
            )
        return lost

    _LOST_REASON = {
        "lww_col": "it is older than the target's row (lww)",
        "lww_ts": "it is older than syncline's last write of the row (lww)",
        "target_wins": "the target's row was changed locally (target_wins)",
    }

    def _log_lost(
        self, cur: psycopg2.extensions.cursor, plan: _Plan, rule: _Rule, lost: int
    ) -> None:
        cur.execute(rule.lost_sql)
        key = [k for _, k, _ in plan.key_pairs]
        reason = self._LOST_REASON.get(rule.mode, rule.mode)
        for op, incoming, current in cur.fetchall():
            log_conflict(
                plan.target,
                {k: incoming.get(k) for k in key},
                f"kept the target's row ({'delete' if op == 'd' else 'update'} lost: {reason})",
                incoming,
                current,
            )
        log_lost(plan.target, lost, reason)

    def _prefiltered(
        self, cur: psycopg2.extensions.cursor, changes: Sequence[Change]
    ) -> tuple[list[Step], ApplyResult]:
        """Custom and manual tables: decide change by change from the target's rows, then fold."""
        rules: dict[str, ConflictConfig] = {}
        for table_id in {c.event.table_id for c in changes}:
            rule = self.rule_of(table_id)
            if rule is not None and rule.strategy in ("custom", "manual"):
                rules[table_id] = rule
        if not rules:
            return fold(changes)
        out = prefilter(
            changes,
            rules,
            self._resolvers,
            lambda t, keys: self._fetch(cur, t, keys, rules[t].strategy == "manual"),
        )
        if out.parked:
            self._park(cur, out.parked)
        for table_id, keys in out.forget.items():
            self._forget(cur, table_id, keys)
        steps, result = fold(out.changes)
        result.conflicts += out.conflicts
        return steps, result

    def _fetch(
        self, cur: psycopg2.extensions.cursor, table_id: str, keys: list[Row], manual: bool
    ) -> list[KeyState]:
        """The target's rows of ``keys``, locked until commit (one round trip per table)."""
        plan = self._plan(cur, table_id, None)
        tgt = plan.target_sql
        key = [k for _, k, _ in plan.key_pairs]
        on = " AND ".join(f"t.{qi(k)} = k.{qi(k)}" for k in key)
        sql = [
            f"SELECT 1 FROM {tgt} AS t JOIN json_populate_recordset(NULL::{tgt}, %(keys)s::json) "
            f"AS k ON {on} FOR UPDATE OF t"
        ]
        cols, joins = "to_jsonb(t)::text", ""
        if manual:
            tb = ql(plan.target)
            kj = "jsonb_build_object(" + ", ".join(f"{ql(k)}, k.{qi(k)}" for k in key) + ")"
            sql.insert(0, f"SELECT pg_advisory_xact_lock({lock_id(plan.target)})")
            cols += (
                ", md5(t::text) = r.hash AND r.deleted_at IS NULL, "
                "r.key IS NOT NULL AND r.deleted_at IS NULL, "
                f"EXISTS (SELECT 1 FROM {CONFLICTS} c WHERE c.tbl = {tb} AND c.key = a.e::jsonb "
                "AND c.status = 'open')"
            )
            joins = f" LEFT JOIN {SHADOW} AS r ON r.tbl = {tb} AND r.key = {kj}"
        sql.append(
            f"SELECT {cols} FROM json_array_elements(%(keys)s::json) WITH ORDINALITY AS a(e, n) "
            f"CROSS JOIN LATERAL json_populate_record(NULL::{tgt}, a.e) AS k "
            f"LEFT JOIN {tgt} AS t ON {on}{joins} ORDER BY a.n"
        )
        cur.execute(";\n".join(sql), {"keys": "[" + ",".join(key_text(k) for k in keys) + "]"})
        out = []
        for row in cur.fetchall():
            current = None if row[0] is None else msgspec.json.decode(row[0])
            if manual:
                out.append(KeyState(current, bool(row[1]), bool(row[2]), bool(row[3])))
            else:
                out.append(KeyState(current))
        return out

    def _forget(self, cur: psycopg2.extensions.cursor, table_id: str, keys: list[Row]) -> None:
        """Drop the shadow rows of ``keys`` (rows deleted on both sides)."""
        plan = self._plan(cur, table_id, None)
        kj = (
            "jsonb_build_object("
            + ", ".join(f"{ql(k)}, k.{qi(k)}" for _, k, _ in plan.key_pairs)
            + ")"
        )
        cur.execute(
            f"DELETE FROM {SHADOW} AS r USING json_populate_recordset(NULL::{plan.target_sql}, "
            f"%s::json) AS k WHERE r.tbl = %s AND r.key = {kj}",
            ("[" + ",".join(key_text(k) for k in keys) + "]", plan.target),
        )

    def _park(self, cur: psycopg2.extensions.cursor, parked: list[Parked]) -> None:
        """Store parked changes with the target's row beside them (one statement)."""
        values = []
        for p in parked:
            target = self._plan(cur, p.table_id, None).target
            current = None if p.current is None else to_json(p.current)
            args = (
                self._pipeline,
                target,
                p.table_id,
                key_text(p.key),
                encode_value(p.event).decode(),
                current,
            )
            values.append(
                cur.mogrify("(%s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb)", args).decode()
            )
        cur.execute(
            f"INSERT INTO {CONFLICTS} (pipeline, tbl, source_table, key, incoming, current) "
            f"VALUES {', '.join(values)}"
        )

    def _maybe_purge(self, cur: psycopg2.extensions.cursor) -> None:
        """Drop tombstones older than the retention, at most once per interval."""
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + self.PURGE_INTERVAL
        cur.execute(
            f"DELETE FROM {SHADOW} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {SHADOW} "
            "WHERE deleted_at < now() - make_interval(secs => %s) LIMIT 10000))",
            (self.TOMBSTONE_RETENTION,),
        )

    # ---- parked conflicts: what ``syncline conflicts`` calls ---------------------------

    _CONFLICT_COLS = (
        "id, pipeline, tbl, source_table, key::text, incoming::text, current::text, "
        "detected_at, status, resolution, resolved_at"
    )

    def _read_conflicts(self, where: str, args: tuple[Any, ...]) -> list[Conflict]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (CONFLICTS,))
                row = cur.fetchone()
                rows = []
                if row is not None and row[0] is not None:
                    cur.execute(
                        f"SELECT {self._CONFLICT_COLS} FROM {CONFLICTS} WHERE {where} ORDER BY id",
                        args,
                    )
                    rows = cur.fetchall()
            conn.rollback()
        except psycopg2.Error as exc:
            raise self._fail(exc, f"reading {CONFLICTS}") from exc
        return [_conflict(r) for r in rows]

    def list_conflicts(
        self, pipeline: str | None = None, include_resolved: bool = False
    ) -> list[Conflict]:
        return self._read_conflicts(
            "(%s::text IS NULL OR pipeline = %s) AND (%s OR status = 'open')",
            (pipeline, pipeline, include_resolved),
        )

    def get_conflict(self, conflict_id: int) -> Conflict | None:
        found = self._read_conflicts("id = %s", (conflict_id,))
        return found[0] if found else None

    def resolve_conflict(self, conflict_id: int, use: str) -> list[int]:
        """Apply the parked change (and the key's later ones) or keep the target's row."""
        check_use(use)
        conn = self._connection()
        what = f"resolving conflict {conflict_id} in {CONFLICTS}"
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (CONFLICTS,))
                found = cur.fetchone()
                row = None
                if found is not None and found[0] is not None:
                    cur.execute(
                        f"SELECT source_table, key::text, status, resolution, tbl FROM {CONFLICTS} "
                        "WHERE id = %s FOR UPDATE",
                        (conflict_id,),
                    )
                    row = cur.fetchone()
                if row is None:
                    raise ConflictNotFound(
                        f"no conflict {conflict_id} in {self.where}; see syncline conflicts list"
                    )
                source_table, key, status, resolution, tbl = row
                if status != "open":
                    raise ConflictNotFound(
                        f"conflict {conflict_id} is already resolved ({resolution}); nothing to do"
                    )
                plan = self._plan(cur, source_table, None, force=True)
                assert plan.rule is not None and plan.rule.lock_sql
                cur.execute(plan.rule.lock_sql)
                ids = [conflict_id]
                if use == "current":
                    cur.execute(plan.rule.adopt_sql, (key,))
                else:
                    cur.execute(
                        f"SELECT id, key::text, incoming::text FROM {CONFLICTS} WHERE tbl = %s "
                        "AND key = %s::jsonb AND status = 'open' AND id >= %s ORDER BY id FOR UPDATE",
                        (tbl, key, conflict_id),
                    )
                    parked = parked_changes(
                        [(int(i), msgspec.json.decode(k), inc) for i, k, inc in cur.fetchall()]
                    )
                    ids = [i for i, _ in parked]
                    steps, _ = fold([c for _, c in parked])
                    used: set[str] = set()
                    for step in steps:
                        if isinstance(step, TableOps):
                            step_plan = self._plan(cur, step.table_id, step, force=True)
                            what = f"applying conflict {conflict_id} to {step_plan.target}"
                            self._apply_ops(cur, step_plan, step, used)
                cur.execute(
                    f"UPDATE {CONFLICTS} SET status = 'resolved', resolved_at = now(), resolution = "
                    "CASE WHEN id = %s THEN %s ELSE %s END WHERE id = ANY(%s)",
                    (conflict_id, use, f"incoming (after #{conflict_id})", ids),
                )
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, what) from exc
        except BaseException:
            self._abort()
            raise
        return ids

    def _positions_sql(self, positions: Mapping[int, int]) -> str:
        pipeline = ql(self._pipeline)
        values = ", ".join(
            f"({pipeline}, {int(p)}, {int(o)}, now())" for p, o in sorted(positions.items())
        )
        return (
            f"INSERT INTO {OFFSETS} (pipeline, partition, next_offset, updated_at) VALUES {values} "
            "ON CONFLICT (pipeline, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, "
            "updated_at = EXCLUDED.updated_at"
        )


def _mode(rule: ConflictConfig | None) -> str | None:
    """The statements a table's rule runs (manual: target_wins for what it does not park)."""
    if rule is None or rule.strategy == "custom":
        return None
    if rule.strategy == "lww":
        return "lww_col" if rule.column else "lww_ts"
    return "target_wins"


def _conflict(row: Sequence[Any]) -> Conflict:
    def stamp(v: Any) -> str | None:
        return None if v is None else v.isoformat(sep=" ", timespec="seconds")

    return Conflict(
        id=int(row[0]),
        pipeline=row[1],
        table=row[2],
        source_table=row[3],
        key=msgspec.json.decode(row[4]),
        incoming=msgspec.json.decode(row[5]),
        current=None if row[6] is None else msgspec.json.decode(row[6]),
        detected_at=stamp(row[7]) or "",
        status=row[8],
        resolution=row[9],
        resolved_at=stamp(row[10]),
    )
