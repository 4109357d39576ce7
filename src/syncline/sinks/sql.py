"""What the SQL sinks share: folding a batch per key, target checks, type mapping.

Folding turns a batch into set operations: per table, at most one outcome per
key (a complete image to upsert, a partial image to update, or a delete), so a
sink can apply each table with a few statements instead of one per change.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from syncline.config import ConflictConfig, TableOptions
from syncline.errors import DataError, SchemaError, TransientError
from syncline.events import Change, Op, Row, encode_key
from syncline.schema import TableSchema
from syncline.sinks.base import ApplyResult

# ---- folding ---------------------------------------------------------------------------

UPSERT, PARTIAL, DELETE = "u", "p", "d"


@dataclass(slots=True)
class TableOps:
    """The folded outcome of a run of changes to one table (keys are distinct).

    Each ``*_ts`` list holds the source commit time (µs) of the change behind the
    image at the same index: last-writer-wins by commit time compares them.
    """

    table_id: str
    upserts: list[Row] = field(default_factory=list)  # complete images
    partials: list[tuple[Row, list[str]]] = field(default_factory=list)  # image, unsent columns
    deletes: list[Row] = field(default_factory=list)  # key images (plus the before image's columns)
    upsert_ts: list[int] = field(default_factory=list)
    partial_ts: list[int] = field(default_factory=list)
    delete_ts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Truncate:
    table_id: str


Step = TableOps | Truncate
# kind, image (or key for deletes), unsent columns, source commit time in µs
_State = tuple[str, Row, list[str] | None, int]


def _hashable_key(key: Row) -> Any:
    vals = tuple(key.values())
    try:
        hash(vals)
    except TypeError:
        return encode_key(key)
    return vals


def _merge(after: Row, unchanged: list[str], prev: _State | None, ts: int) -> _State:
    """An update without some columns takes them from an earlier image of the key."""
    if prev is None or prev[0] == DELETE:
        return (PARTIAL, after, unchanged, ts)
    prev_row, prev_unsent = prev[1], prev[2]
    row = dict(after)
    missing: list[str] = []
    for col in unchanged:
        if col in prev_row and not (prev_unsent and col in prev_unsent):
            row[col] = prev_row[col]
        else:
            missing.append(col)
    return (PARTIAL, row, missing, ts) if missing else (UPSERT, row, None, ts)


def fold(changes: Sequence[Change]) -> tuple[list[Step], ApplyResult]:
    """Reduce ``changes`` to ordered steps; a truncate splits its table's run."""
    steps: list[Step] = []
    pending: dict[str, dict[Any, _State]] = {}
    skipped = 0

    def flush(table_id: str) -> None:
        states = pending.pop(table_id, None)
        if states:
            steps.append(_to_ops(table_id, states))

    for change in changes:
        ev = change.event
        table_id = ev.table_id
        op = ev.op
        if op == Op.TRUNCATE:
            flush(table_id)
            steps.append(Truncate(table_id))
            continue
        states = pending.get(table_id)
        if states is None:
            states = pending[table_id] = {}
        key = _hashable_key(change.key) if change.key else None
        src = ev.source
        ts = src.ts_us if src.ts_us is not None else src.ts_ms * 1000
        if op == Op.DELETE:
            before = ev.before
            image = change.key or before
            if not image:
                raise DataError(f"delete on {table_id} carries no key; cannot apply it")
            if key is None:
                key = _hashable_key(image)
            elif before and len(before) > len(image):
                image = {**before, **image}  # lww on a column reads the deleted row's version
            new: _State = (DELETE, image, None, ts)
        elif op in (Op.CREATE, Op.READ, Op.UPDATE):
            after = ev.after
            if after is None:
                raise DataError(
                    f"{op!r} change on {table_id} carries no row image; cannot apply it"
                )
            if key is None:
                raise DataError(f"{op!r} change on {table_id} carries no key; cannot apply it")
            if ev.unchanged:
                new = _merge(after, ev.unchanged, states.get(key), ts)
            else:
                new = (UPSERT, after, None, ts)
        else:
            raise DataError(f"unknown op {op!r} in a change to {table_id}")
        if key in states:
            skipped += 1
        states[key] = new
    for table_id in list(pending):
        flush(table_id)
    return steps, ApplyResult(applied=len(changes) - skipped, skipped=skipped)


def _to_ops(table_id: str, states: dict[Any, _State]) -> TableOps:
    ops = TableOps(table_id)
    for kind, image, unsent, ts in states.values():
        if kind == UPSERT:
            ops.upserts.append(image)
            ops.upsert_ts.append(ts)
        elif kind == DELETE:
            ops.deletes.append(image)
            ops.delete_ts.append(ts)
        else:
            ops.partials.append((image, unsent or []))
            ops.partial_ts.append(ts)
    return ops


def row_columns(ops: TableOps) -> set[str]:
    """Every column some image of ``ops`` carries (for plans built without a source schema)."""
    cols: set[str] = set()
    for row in ops.upserts:
        cols.update(row)
    for row, _ in ops.partials:
        cols.update(row)
    return cols


# ---- targets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetTable:
    """A target table as its catalog describes it."""

    name: str  # as shown to users: "public.orders" or "orders"
    columns: dict[str, str]  # name → declared type, in table order
    key: tuple[str, ...]


def options_for(tables: Mapping[str, TableOptions], table_id: str) -> TableOptions | None:
    """Per-table options by source ``schema.table``, or by bare name for SQLite sources."""
    opts = tables.get(table_id)
    if opts is None and table_id.startswith("main."):
        table = table_id[5:]
        opts = tables.get(table) or tables.get(f"public.{table}")
    return opts


def conflict_for(tables: Mapping[str, TableOptions], table_id: str) -> ConflictConfig | None:
    """The table's conflict rule; ``None`` means source_wins (apply everything)."""
    opts = options_for(tables, table_id)
    rule = opts.conflict if opts is not None else None
    return None if rule is None or rule.strategy == "source_wins" else rule


def ignores_missing(tables: Mapping[str, TableOptions], table_id: str) -> bool:
    """``missing_columns: ignore``: source columns the target lacks are dropped."""
    opts = options_for(tables, table_id)
    return opts is not None and opts.missing_columns == "ignore"


def check_target(
    source: TableSchema, target: TargetTable, where: str, missing_ok: bool = False
) -> None:
    """Raise ``SchemaError`` unless ``target`` can take every column and the key of ``source``.

    With ``missing_ok`` (``missing_columns: ignore``) only the key columns must exist.
    """
    missing = [c.name for c in source.columns if c.name not in target.columns]
    if missing_ok:
        missing = [c for c in missing if c in source.key]
    if missing:
        cols = ", ".join(missing)
        raise SchemaError(
            f"target table {target.name} in {where} lacks column(s) {cols} that source table "
            f"{source.table_id} sends; add them or drop them from the source"
        )
    if not target.key:
        raise SchemaError(
            f"target table {target.name} in {where} has no primary key; add PRIMARY KEY "
            f"({', '.join(source.key)})"
        )
    if set(target.key) != set(source.key):
        raise SchemaError(
            f"target table {target.name} in {where} has primary key ({', '.join(target.key)}) "
            f"but source table {source.table_id} has ({', '.join(source.key)}); make them match"
        )


def missing_table(name: str, where: str) -> SchemaError:
    return SchemaError(
        f"target table {name} does not exist in {where}; create it or set create_tables: true"
    )


def unknown_table(name: str, where: str, table_id: str) -> SchemaError:
    """An event of a table the pipeline does not capture (any more) and the target lacks."""
    return SchemaError(
        f"target table {name} does not exist in {where} and {table_id} is not among the "
        "tables this pipeline captures (the config changed after it was logged?); "
        "create the table, then syncline dlq replay"
    )


def qi(name: str) -> str:
    """Quote an identifier (standard SQL; valid for PostgreSQL and SQLite)."""
    return '"' + name.replace('"', '""') + '"'


def ql(text: str) -> str:
    """Quote a string literal (standard-conforming strings)."""
    return "'" + text.replace("'", "''") + "'"


# ---- type mapping for created tables ---------------------------------------------------

_PG_TO_SQLITE = {
    "smallint": "INTEGER",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "int": "INTEGER",
    "int2": "INTEGER",
    "int4": "INTEGER",
    "int8": "INTEGER",
    "smallserial": "INTEGER",
    "serial": "INTEGER",
    "bigserial": "INTEGER",
    "boolean": "INTEGER",
    "bool": "INTEGER",
    "real": "REAL",
    "float4": "REAL",
    "double precision": "REAL",
    "float8": "REAL",
    "bytea": "BLOB",
    # numeric stays TEXT: SQLite's NUMERIC affinity would round it to a double.
}


def map_type(type_name: str, src_dialect: str, dst_dialect: str) -> str:
    """Translate a column type between dialects for a table syncline creates."""
    if src_dialect == dst_dialect:
        return type_name
    t = type_name.strip().lower()
    if src_dialect == "postgres" and dst_dialect == "sqlite":
        if t.endswith("]"):
            return "TEXT"  # arrays are stored as JSON text
        return _PG_TO_SQLITE.get(re.sub(r"\s*\(.*\)$", "", t), "TEXT")
    if src_dialect == "sqlite" and dst_dialect == "postgres":
        u = t.upper()
        # SQLite's affinity rules (in their order), then a few common names.
        if "INT" in u:
            return "bigint"
        if any(s in u for s in ("CHAR", "CLOB", "TEXT")):
            return "text"
        if "BLOB" in u:
            return "bytea"
        if any(s in u for s in ("REAL", "FLOA", "DOUB")):
            return "double precision"
        if "BOOL" in u:
            return "boolean"
        if any(s in u for s in ("NUMERIC", "DECIMAL", "NUMBER")):
            return "numeric"
        return "text"  # untyped, dates and anything else: SQLite does not enforce them
    raise SchemaError(f"cannot map column type {type_name!r} from {src_dialect} to {dst_dialect}")


def create_table_sql(
    name_sql: str, source: TableSchema, dst_dialect: str, columns: Iterable[str] | None = None
) -> str:
    """``CREATE TABLE`` for ``source`` in ``dst_dialect``, keyed like the source."""
    keep = set(columns) if columns is not None else None
    defs = []
    for c in source.columns:
        if keep is not None and c.name not in keep:
            continue
        not_null = " NOT NULL" if (not c.nullable or c.name in source.key) else ""
        defs.append(f"{qi(c.name)} {map_type(c.type, source.dialect, dst_dialect)}{not_null}")
    defs.append(f"PRIMARY KEY ({', '.join(qi(k) for k in source.key)})")
    return f"CREATE TABLE {name_sql} ({', '.join(defs)})"


def source_without_key(source: TableSchema, where: str) -> SchemaError:
    return SchemaError(
        f"source table {source.table_id} has no primary key, so {where} cannot apply it by key"
    )


_json = msgspec.json.Encoder()


def b64decode(text: str) -> bytes:
    """Strict base64 (line breaks allowed): garbage must fail, not become empty bytes."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return binascii.a2b_base64("".join(text.split()), strict_mode=True)


def to_json(value: Any) -> str:
    return _json.encode(value).decode()


def first_line(exc: BaseException) -> str:
    """The first meaningful line of a driver error (without a PostgreSQL ``ERROR:`` tag)."""
    for line in str(exc).strip().splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(ERROR|FATAL):\s+", "", line)
    return type(exc).__name__


def fence_check(
    pipeline: str, expected: Mapping[int, int] | None, rows: Sequence[tuple[Any, Any]]
) -> None:
    """Refuse to apply if the stored positions are not the ones this sink last saw.

    Two processes applying one pipeline (a zombie left by a crashed parent, a second
    ``syncline run`` by mistake) would otherwise apply the same batch twice. The
    check runs inside the apply transaction, after locking the positions, so the
    loser rolls back, re-reads the positions and resumes from there.
    """
    stored = {int(p): int(o) for p, o in rows if int(p) != -1}  # -1: the fence row
    if expected is not None and stored != dict(expected):
        raise TransientError(
            f"the positions of pipeline {pipeline} in the target moved under this process "
            "(another syncline process is applying the same pipeline); re-reading them"
        )
