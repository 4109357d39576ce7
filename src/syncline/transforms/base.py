"""What every transform provides, and the helpers they share.

A transform is configured by a pydantic spec (``extra="forbid"``, tagged by
``type``) that checks everything it can at config load and then ``build``s the
runtime object. The runtime object works on one change at a time
(``apply``) and says how it reshapes a table (``schema``), so sinks can check or
create the target before the first row arrives. Which tables a transform
touches is resolved once per table id by the chain, never per event.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec
from pydantic import BaseModel, ConfigDict, field_validator

from syncline.errors import DataError, SchemaError
from syncline.events import Change, Row
from syncline.schema import Column, TableSchema

Result = Change | list[Change] | None


class Transform:
    """One step of a chain. ``apply`` returns the change, a replacement, None (drop) or a list."""

    kind: ClassVar[str] = "transform"
    dynamic: ClassVar[bool] = False  # may change table ids in ways ``route`` cannot predict

    def __init__(self, index: int, tables: list[str] | None) -> None:
        self.index = index
        self.label = f"transforms[{index}] ({self.kind})"
        self._match = table_matcher(tables)

    def matches(self, table_id: str) -> bool:
        """Whether this transform touches ``table_id`` (asked once per table, then cached)."""
        return self._match(table_id)

    def route(self, table_id: str) -> str:
        """The table id a matching change has after this transform."""
        return table_id

    def apply(self, change: Change) -> Result:
        raise NotImplementedError

    def schema(self, table: TableSchema) -> TableSchema | None:
        """The table's shape after this transform (None: no rows reach the target)."""
        return table

    def data_error(self, change: Change, what: str) -> DataError:
        key = msgspec.json.encode(change.key).decode()
        if len(key) > 80:
            key = key[:77] + "..."
        return DataError(f"{self.label} on {change.event.table_id} key {key}: {what}")

    def schema_error(self, table: TableSchema, what: str) -> SchemaError:
        return SchemaError(f"{self.label} on table {table.table_id}: {what}")

    def require(self, table: TableSchema, names: Iterable[str], field: str) -> None:
        """Refuse names the table lacks: a typo should stop the pipeline, not pass silently."""
        have = {c.name for c in table.columns}
        missing = [n for n in names if n not in have]
        if missing:
            raise self.schema_error(
                table,
                f"{field} names column(s) {', '.join(missing)} that the table lacks "
                f"(it has {', '.join(sorted(have))}); fix the name or limit the "
                "transform with tables:",
            )


class SpecBase(BaseModel):
    """Config fields every transform has."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tables: list[str] | None = None  # schema.table or glob patterns; default: every table

    @field_validator("tables")
    @classmethod
    def _patterns(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("empty list (leave tables out to match every table)")
            for p in v:
                if not p or not p.strip():
                    raise ValueError("empty table pattern")
        return v

    def build(self, index: int) -> Transform:
        raise NotImplementedError


def table_matcher(patterns: list[str] | None) -> Callable[[str], bool]:
    """``schema.table`` globs; a pattern without a dot matches the table name in any schema."""
    if not patterns:
        return lambda table_id: True
    parts = [fnmatch.translate(p if "." in p else "*." + p) for p in patterns]
    rx = re.compile("|".join(f"(?:{p})" for p in parts))
    return lambda table_id: rx.match(table_id) is not None


def field_names(v: Iterable[str], what: str = "field") -> None:
    for name in v:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what} names must be non-empty strings")


# ---- changes and schemas ---------------------------------------------------------------


def replace(change: Change, key: Row | None = None, **fields: Any) -> Change:
    """A new change with some event fields replaced; the original is left untouched."""
    event = msgspec.structs.replace(change.event, **fields) if fields else change.event
    return Change(change.key if key is None else key, event)


def with_columns(
    table: TableSchema, columns: Iterable[Column], key: tuple[str, ...] | None = None
) -> TableSchema:
    return dataclasses.replace(table, columns=tuple(columns), key=table.key if key is None else key)


def set_column(table: TableSchema, column: Column) -> TableSchema:
    """Replace the column of that name, or append it."""
    cols = list(table.columns)
    for i, c in enumerate(cols):
        if c.name == column.name:
            cols[i] = column
            return with_columns(table, cols)
    cols.append(column)
    return with_columns(table, cols)
