"""Column-level transforms: ``rename_fields``, ``drop_fields`` and ``cast``.

Each touches ``before``, ``after`` (and ``key``/``unchanged`` where the column
can appear there) and copies a row only when it actually changes something in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import field_validator

from syncline.events import Change, Row
from syncline.schema import Column, TableSchema
from syncline.transforms.base import Result, SpecBase, Transform, field_names, replace, with_columns
from syncline.transforms.convert import CASTS, Converter


def _touches(row: Row, names: Mapping[str, Any] | frozenset[str]) -> bool:
    return not row.keys().isdisjoint(names)  # iterates the (short) names, in C


# ---- rename_fields ---------------------------------------------------------------------


class RenameFields(Transform):
    kind = "rename_fields"

    def __init__(self, index: int, tables: list[str] | None, mapping: dict[str, str]) -> None:
        super().__init__(index, tables)
        self._map = mapping
        self._pairs = tuple(mapping.items())

    def _rename(self, row: Row) -> Row:
        """A copy with the columns renamed (they move to the end: rows are read by name)."""
        out = dict(row)
        pairs = self._pairs
        for old, _ in pairs:
            out.pop(old, None)
        for old, new in pairs:
            if old in row:
                out[new] = row[old]
        return out

    def apply(self, change: Change) -> Result:
        m = self._map
        ev = change.event
        new: dict[str, Any] = {}
        if ev.before and _touches(ev.before, m):
            new["before"] = self._rename(ev.before)
        if ev.after and _touches(ev.after, m):
            new["after"] = self._rename(ev.after)
        if ev.unchanged and any(c in m for c in ev.unchanged):
            new["unchanged"] = [m.get(c, c) for c in ev.unchanged]
        key = self._rename(change.key) if _touches(change.key, m) else None
        if not new and key is None:
            return change
        return replace(change, key, **new)

    def schema(self, table: TableSchema) -> TableSchema | None:
        m = self._map
        self.require(table, m, "fields")
        kept = {c.name for c in table.columns if c.name not in m}
        clash = [n for n in m.values() if n in kept]
        if clash:
            raise self.schema_error(
                table, f"cannot rename to {', '.join(clash)}: the table already has that column"
            )
        cols = [Column(m.get(c.name, c.name), c.type, c.nullable) for c in table.columns]
        return with_columns(table, cols, tuple(m.get(k, k) for k in table.key))


class RenameFieldsSpec(SpecBase):
    """``{type: rename_fields, fields: {old: new}}``."""

    type: Literal["rename_fields"]
    fields: dict[str, str]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("give at least one old: new pair")
        field_names(v)
        field_names(v.values())
        if len(set(v.values())) != len(v):
            raise ValueError("two columns are renamed to the same name")
        return v

    def build(self, index: int) -> Transform:
        return RenameFields(index, self.tables, dict(self.fields))


# ---- drop_fields -----------------------------------------------------------------------


class DropFields(Transform):
    kind = "drop_fields"

    def __init__(self, index: int, tables: list[str] | None, names: list[str]) -> None:
        super().__init__(index, tables)
        self._names = frozenset(names)

    def _drop(self, row: Row) -> Row:
        out = dict(row)
        for name in self._names:
            out.pop(name, None)
        return out

    def apply(self, change: Change) -> Result:
        names = self._names
        ev = change.event
        new: dict[str, Any] = {}
        if ev.before and _touches(ev.before, names):
            new["before"] = self._drop(ev.before)
        if ev.after and _touches(ev.after, names):
            new["after"] = self._drop(ev.after)
        if ev.unchanged and any(c in names for c in ev.unchanged):
            new["unchanged"] = [c for c in ev.unchanged if c not in names] or None
        return replace(change, **new) if new else change

    def schema(self, table: TableSchema) -> TableSchema | None:
        names = self._names
        self.require(table, sorted(names), "fields")
        keys = [k for k in table.key if k in names]
        if keys:
            raise self.schema_error(
                table,
                f"cannot drop key column(s) {', '.join(keys)}: the target applies rows by key",
            )
        return with_columns(table, [c for c in table.columns if c.name not in names])


class DropFieldsSpec(SpecBase):
    """``{type: drop_fields, fields: [a, b]}``."""

    type: Literal["drop_fields"]
    fields: list[str]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one column to drop")
        field_names(v)
        return v

    def build(self, index: int) -> Transform:
        return DropFields(index, self.tables, list(self.fields))


# ---- cast ------------------------------------------------------------------------------

CastTarget = Literal[
    "int", "float", "bool", "str", "numeric", "decimal", "date", "timestamp", "timestamptz"
]


class Cast(Transform):
    kind = "cast"

    def __init__(self, index: int, tables: list[str] | None, fields: dict[str, str]) -> None:
        super().__init__(index, tables)
        self._targets = fields
        self._conv: tuple[tuple[str, Converter], ...] = tuple(
            (name, CASTS[to][0]) for name, to in fields.items()
        )

    def _cast(self, change: Change, row: Row) -> Row:
        out: Row | None = None
        for name, conv in self._conv:
            if name not in row:
                continue
            v = row[name]
            try:
                nv = conv(v)
            except (ValueError, TypeError, OverflowError) as exc:
                raise self.data_error(change, f"column {name}: {exc}") from exc
            if nv is not v:
                if out is None:
                    out = dict(row)
                out[name] = nv
        return row if out is None else out

    def apply(self, change: Change) -> Result:
        ev = change.event
        new: dict[str, Any] = {}
        if ev.before and (b := self._cast(change, ev.before)) is not ev.before:
            new["before"] = b
        if ev.after and (a := self._cast(change, ev.after)) is not ev.after:
            new["after"] = a
        key = self._cast(change, change.key) if change.key else change.key
        if not new and key is change.key:
            return change
        return replace(change, key, **new)

    def schema(self, table: TableSchema) -> TableSchema | None:
        self.require(table, self._targets, "fields")
        cols = []
        for c in table.columns:
            to = self._targets.get(c.name)
            if to is not None:
                types = CASTS[to][1]
                c = Column(c.name, types.get(table.dialect, types["postgres"]), c.nullable)
            cols.append(c)
        return with_columns(table, cols)


class CastSpec(SpecBase):
    """``{type: cast, fields: {amount: float, qty: int, flag: bool, code: str}}``."""

    type: Literal["cast"]
    fields: dict[str, CastTarget]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("give at least one column: type pair")
        field_names(v)
        return v

    def build(self, index: int) -> Transform:
        return Cast(index, self.tables, dict(self.fields))
