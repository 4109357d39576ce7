"""PostgreSQL sink: COPY each batch into a staging table, then merge it with set statements.

Per table and batch there are two round trips whatever the batch size: one COPY
of every folded row (upserts, partial updates and deletes, tagged by ``_sl_op``)
into a per-connection temporary table, and one multi-statement merge
(``DELETE … USING``, ``INSERT … ON CONFLICT … DO UPDATE``, ``UPDATE … FROM`` for
rows whose unchanged TOAST columns must keep the target's value). The log
positions are upserted in the same transaction, which makes the effect exactly
once.
"""

from __future__ import annotations

import binascii
import contextlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from syncline.config import PostgresSinkConfig
from syncline.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    DataError,
    SchemaError,
    SynclineError,
    TransientError,
)
from syncline.events import Change, Row
from syncline.schema import TableSchema
from syncline.sinks.base import ApplyResult, Sink
from syncline.sinks.sql import (
    TableOps,
    TargetTable,
    Truncate,
    b64decode,
    check_target,
    create_table_sql,
    fence_check,
    first_line,
    fold,
    missing_table,
    options_for,
    qi,
    ql,
    row_columns,
    source_without_key,
    to_json,
)
from syncline.sources.postgres.origins import SessionOrigin, newest_ts_us, split_by_origin

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


def _build_plan(
    n: int,
    target_sql: str,
    cat: _Catalog,
    columns: Sequence[str],
    condition: str | None,
    lazy: bool,
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
    return _Plan(
        target=cat.table.name,
        columns=tuple(columns),
        pairs=tuple((c, adapter_for(*cat.kinds[c])) for c in columns),
        key_pairs=tuple((columns.index(k), k, adapter_for(*cat.kinds[k])) for k in key),
        stage=stage,
        stage_ddl=(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({stage_cols}, _sl_op text, "
            "_sl_unchanged text[]) ON COMMIT DELETE ROWS"
        ),
        copy_sql=f"COPY {stage} FROM STDIN",
        delete_sql=f"DELETE FROM {target_sql} AS t USING {stage} AS s WHERE s._sl_op = 'd' AND {join}",
        upsert_sql=(
            f"INSERT INTO {target_sql} AS t ({col_list}) SELECT {col_list} FROM {stage} "
            f"WHERE _sl_op = 'u' ON CONFLICT ({', '.join(qi(k) for k in key)}) {on_conflict}"
        ),
        partial_sql=partial_sql,
        truncate_sql=f"TRUNCATE {target_sql}",
        lazy=lazy,
    )


def _unsent(columns: Sequence[str], row: Row, unchanged: list[str]) -> list[str]:
    """Columns a partial image does not carry: named unchanged, or simply absent."""
    return [c for c in columns if c in unchanged or c not in row]


def encode_rows(plan: _Plan, ops: TableOps) -> str:
    """COPY text of the folded rows of one table (deletes carry only their key)."""
    pairs = plan.pairs
    lines: list[str] = []
    append = lines.append
    if ops.deletes:
        width = len(pairs)
        for key in ops.deletes:
            fields = [NULL] * width
            for i, c, a in plan.key_pairs:
                fields[i] = a(key.get(c))
            append("\t".join(fields) + "\td\t\\N")
    for row in ops.upserts:
        g = row.get
        append("\t".join([a(g(c)) for c, a in pairs]) + "\tu\t\\N")
    for row, unchanged in ops.partials:
        g = row.get
        unsent = _esc(array_literal(_unsent(plan.columns, row, unchanged)))
        append("\t".join([a(g(c)) for c, a in pairs]) + "\tp\t" + unsent)
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
        try:
            params = psycopg2.extensions.parse_dsn(config.dsn)
        except psycopg2.Error as exc:
            raise ConfigError(
                f"sink dsn of pipeline {pipeline} is not a valid PostgreSQL DSN: {first_line(exc)}"
            ) from None
        self._password = params.get("password") or ""
        host = params.get("host") or params.get("hostaddr") or "localhost"
        self._addr = f"{host}:{params.get('port') or 5432}"
        self._user = params.get("user") or "(default user)"
        self._db = params.get("dbname") or self._user
        self._conn: psycopg2.extensions.connection | None = None
        self._plans: dict[str, _Plan] = {}
        self._staged: set[str] = set()
        self._plan_seq = 0
        self._origins = SessionOrigin(self.where, self._user)  # used if config.origin is set

    @property
    def where(self) -> str:
        return f"database {self._db} at {self._addr} (sink of pipeline {self._pipeline})"

    def conflict_condition(self, table_id: str) -> str | None:
        """SQL that must hold for an incoming row to overwrite the target's (None: always).

        It may refer to the current row as ``t`` and to the incoming one as ``{new}``
        (e.g. ``{new}.updated_at >= t.updated_at``). Conflict resolution plugs in here.
        """
        return None

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
                f"cannot connect to PostgreSQL at {self._addr} (sink of pipeline {self._pipeline}): "
                f"{msg}; check that the server is running and the sink dsn's host and port"
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
        return DataError(f"{what} in {self.where} failed: {msg}")

    def _fail(self, exc: psycopg2.Error, what: str) -> SynclineError:
        """Translate ``exc`` and end the transaction; a broken connection is dropped."""
        err = self._translate(exc, what)
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
                # partition -1 is the pipeline's fence row: every apply locks it first
                cur.execute(
                    f"INSERT INTO {OFFSETS} (pipeline, partition, next_offset) VALUES (%s, -1, 0) "
                    "ON CONFLICT DO NOTHING",
                    (pipeline,),
                )
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

    def close(self) -> None:
        self._drop_connection()

    def positions(self) -> dict[int, int]:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = %s AND partition >= 0",
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
            cur.execute(create_table_sql(f"{qi(schema)}.{qi(table)}", source, "postgres"))
            cat = self._lookup(cur, schema, table)
            assert cat is not None
        check_target(source, cat.table, self.where)
        return cat

    def prepare(self, schemas: Mapping[str, TableSchema]) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                for table_id, source in schemas.items():
                    cat = self._check_one(cur, table_id, source, self._cfg.create_tables)
                    self._plans[table_id] = self._new_plan(
                        table_id, cat, [c.name for c in source.columns], lazy=False
                    )
            conn.commit()
        except psycopg2.Error as exc:
            raise self._fail(exc, "preparing target tables") from exc
        except BaseException:
            self._abort()
            raise

    def _new_plan(self, table_id: str, cat: _Catalog, columns: Sequence[str], lazy: bool) -> _Plan:
        self._plan_seq += 1
        schema, table = self.target_of(table_id)
        return _build_plan(
            self._plan_seq,
            f"{qi(schema)}.{qi(table)}",
            cat,
            columns,
            self.conflict_condition(table_id),
            lazy,
        )

    def _plan(self, cur: psycopg2.extensions.cursor, table_id: str, ops: TableOps | None) -> _Plan:
        """The prepared plan, or one built from the target and the columns the rows carry."""
        plan = self._plans.get(table_id)
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
            raise missing_table(f"{schema}.{table}", self.where)
        if not cat.table.key:
            raise SchemaError(f"target table {cat.table.name} in {self.where} has no primary key")
        unknown = sorted(wanted - set(cat.table.columns))
        if unknown:
            raise SchemaError(
                f"target table {cat.table.name} in {self.where} lacks column(s) {', '.join(unknown)}"
            )
        wanted.update(cat.table.key)
        columns = [c for c in cat.table.columns if c in wanted]
        plan = self._new_plan(table_id, cat, columns, lazy=True)
        self._plans[table_id] = plan
        return plan

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
                        check_target(source, cat.table, self.where)
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
                cur.execute(self._fence_sql, (self._pipeline,))
                fence_check(self._pipeline, self._expected, cur.fetchall())
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
                        self._apply_ops(cur, plan, step, used)
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
        return result

    _fence_sql = (
        f"SELECT partition, next_offset FROM {OFFSETS} WHERE pipeline = %s "
        "ORDER BY partition FOR UPDATE"
    )

    def _apply_ops(
        self, cur: psycopg2.extensions.cursor, plan: _Plan, ops: TableOps, used: set[str]
    ) -> None:
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
        sql = []
        if ops.deletes:
            sql.append(plan.delete_sql)
        if ops.upserts:
            sql.append(plan.upsert_sql)
        if ops.partials and plan.partial_sql:
            sql.append(plan.partial_sql)
        cur.execute(";\n".join(sql))

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
