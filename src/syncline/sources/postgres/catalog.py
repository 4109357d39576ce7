"""Catalog reads and DDL for capture: tables and keys, types, publication, slot.

Everything here runs on a normal (non-replication) autocommit connection and
raises ``SchemaError`` with the table and database named when the user has to
fix something.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from syncline.errors import PermanentError, SchemaError
from syncline.schema import Column, TableSchema
from syncline.sources.postgres.values import TypeInfo

_TABLE = """
SELECT c.oid, c.relkind, c.relreplident, c.reltuples
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""
_NOT_TABLES = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
    "t": "a TOAST table",
}
# Generated columns are not replicated by pgoutput, so the snapshot leaves them out too.
_COLUMNS = """
SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attnum
"""
_INDEX_COLUMNS = """
SELECT i.indisprimary, i.indisreplident, a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND (i.indisprimary OR i.indisreplident)
ORDER BY k.ord
"""


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_name: str  # format_type(): "numeric(10,2)", "text[]"
    nullable: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One captured table as the catalog describes it."""

    schema: str
    name: str
    oid: int
    columns: tuple[ColumnInfo, ...]
    key: tuple[str, ...]
    estimate: int | None  # pg_class.reltuples, None when never analysed
    whole_row: bool = False  # no primary key: REPLICA IDENTITY FULL makes every column the key

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.name}"

    def describe(self) -> TableSchema:
        return TableSchema(
            schema=self.schema,
            name=self.name,
            columns=tuple(Column(c.name, c.type_name, c.nullable) for c in self.columns),
            key=self.key,
            dialect="postgres",
        )


def load_table(cur: Any, table_id: str, db: str, pipeline: str) -> TableInfo:
    """Read a table's columns and key; refuse tables we cannot capture correctly."""
    schema, name = table_id.split(".", 1)
    cur.execute(_TABLE, (schema, name))
    row = cur.fetchone()
    if row is None:
        raise SchemaError(
            f"table {table_id} does not exist in database {db} (source of pipeline {pipeline})"
        )
    oid, relkind, replident, reltuples = row
    if relkind not in ("r", "p"):
        what = _NOT_TABLES.get(relkind, f"not a table (relkind {relkind})")
        raise SchemaError(
            f"{table_id} in database {db} is {what}; logical replication captures tables only "
            f"(source of pipeline {pipeline})"
        )
    cur.execute(_COLUMNS, (oid,))
    columns = tuple(ColumnInfo(r[0], int(r[1]), r[2], bool(r[3])) for r in cur.fetchall())
    cur.execute(_INDEX_COLUMNS, (oid,))
    pk: list[str] = []
    ident: list[str] = []
    for primary, replica, col in cur.fetchall():
        if primary:
            pk.append(col)
        if replica:
            ident.append(col)
    # The key must be what a delete carries: the replica identity index when one is
    # chosen, else the primary key, else (REPLICA IDENTITY FULL) the whole row.
    if replident == "i" and ident:
        key = tuple(ident)
    elif replident in ("d", "f") and pk:
        key = tuple(pk)
    elif replident == "f":
        key = tuple(c.name for c in columns)
    elif replident == "n":
        raise SchemaError(
            f"table {table_id} has REPLICA IDENTITY NOTHING, so deletes carry no key: "
            f"ALTER TABLE {table_id} REPLICA IDENTITY DEFAULT (database {db}, source of pipeline {pipeline})"
        )
    else:
        raise SchemaError(
            f"table {table_id} has no primary key: add one or set REPLICA IDENTITY FULL "
            f"(database {db}, source of pipeline {pipeline})"
        )
    return TableInfo(
        schema=schema,
        name=name,
        oid=int(oid),
        columns=columns,
        key=key,
        estimate=int(reltuples) if reltuples is not None and reltuples >= 0 else None,
        whole_row=replident == "f" and not pk,
    )


def fetch_type(cur: Any, oid: int) -> TypeInfo | None:
    cur.execute(
        "SELECT typcategory, typelem, typdelim, typbasetype FROM pg_type WHERE oid = %s", (oid,)
    )
    row = cur.fetchone()
    if row is None:
        return None
    return TypeInfo(str(row[0]), int(row[1]), str(row[2]), int(row[3]))


def _table_ident(table_id: str) -> sql.Composable:
    schema, name = table_id.split(".", 1)
    return sql.Identifier(schema, name)


def ensure_publication(cur: Any, publication: str, tables: list[str], server_version: int) -> None:
    """Create the publication for ``tables``, or add the ones an existing one lacks."""
    cur.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,))
    row = cur.fetchone()
    idents = sql.SQL(", ").join(_table_ident(t) for t in tables)
    if row is None:
        stmt = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(publication), idents
        )
        if server_version >= 130000:  # partitioned tables replicate under their own name
            stmt = stmt + sql.SQL(" WITH (publish_via_partition_root = true)")
        cur.execute(stmt)
        return
    if row[0]:
        return  # FOR ALL TABLES already covers ours
    cur.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    )
    have = {f"{s}.{t}" for s, t in cur.fetchall()}
    missing = [t for t in tables if t not in have]
    if missing:
        cur.execute(
            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(_table_ident(t) for t in missing)
            )
        )


@dataclass(frozen=True, slots=True)
class SlotInfo:
    plugin: str
    database: str
    active_pid: int | None
    confirmed_flush: str | None


def find_slot(cur: Any, slot: str) -> SlotInfo | None:
    cur.execute(
        "SELECT plugin, database, active_pid, confirmed_flush_lsn::text FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    )
    row = cur.fetchone()
    return None if row is None else SlotInfo(row[0] or "", row[1] or "", row[2], row[3])


def check_slot(info: SlotInfo, slot: str, db: str, pipeline: str) -> None:
    """A slot of the same name that is not ours would silently feed us the wrong changes."""
    if info.database != db or info.plugin != "pgoutput":
        raise PermanentError(
            f"replication slot {slot} already exists for database {info.database or '?'} with plugin "
            f"{info.plugin or '?'}; choose another slot name for pipeline {pipeline}"
        )


def drop_slot(cur: Any, slot: str) -> None:
    cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
