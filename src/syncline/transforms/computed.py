"""Expression-driven transforms: ``filter``, ``compute`` and ``add_fields``.

Expressions are checked and compiled at config load (see ``expr``); at run time
an evaluation error becomes a ``DataError`` naming the transform, table and key.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from syncline.events import Change, Row
from syncline.schema import Column, TableSchema
from syncline.transforms.base import Result, SpecBase, Transform, field_names, replace, set_column
from syncline.transforms.expr import Expr, compile_expr, json_value

_EMPTY: Row = {}
_NEW_ROW_OPS = frozenset({"c", "u", "r"})


def _expr(text: str) -> Expr:
    return compile_expr(text)  # ValueError names the refused construct


# ---- filter ----------------------------------------------------------------------------


class Filter(Transform):
    kind = "filter"

    def __init__(self, index: int, tables: list[str] | None, expr: Expr, keep: bool) -> None:
        super().__init__(index, tables)
        self._expr = expr
        self._fn = expr.fn
        self._keep = keep  # keep changes for which the predicate is this

    def apply(self, change: Change) -> Result:
        ev = change.event
        row = ev.before if ev.op == "d" else ev.after
        src = ev.source
        try:
            hit = bool(
                self._fn(
                    row or _EMPTY,
                    ev.op,
                    ev.before,
                    ev.after,
                    src.schema + "." + src.table,
                    change.key,
                )
            )
        except Exception as exc:
            raise self.data_error(
                change, f"{self._expr.text!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return change if hit is self._keep else None

    def schema(self, table: TableSchema) -> TableSchema | None:
        self.require(table, self._expr.fields, "the expression")
        return table


class FilterSpec(SpecBase):
    """``{type: filter, where: "..."}`` keeps matching changes; ``exclude:`` drops them."""

    type: Literal["filter"]
    where: str | None = None
    exclude: str | None = None

    @field_validator("where", "exclude")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            _expr(v)
        return v

    @model_validator(mode="after")
    def _one(self) -> FilterSpec:
        if (self.where is None) == (self.exclude is None):
            raise ValueError("give exactly one of where: or exclude:")
        return self

    def build(self, index: int) -> Transform:
        text = self.where if self.where is not None else self.exclude
        assert text is not None
        return Filter(index, self.tables, _expr(text), keep=self.where is not None)


# ---- compute / add_fields --------------------------------------------------------------


class Computed(Transform):
    """Sets columns of ``after`` from constants or expressions, in the order given."""

    def __init__(
        self,
        index: int,
        tables: list[str] | None,
        fields: list[tuple[str, Expr | None, Any, str, bool]],  # name, expr, value, type, typed
    ) -> None:
        super().__init__(index, tables)
        self._fields = fields
        self._steps = tuple((name, e, value) for name, e, value, _, _ in fields)

    def apply(self, change: Change) -> Result:
        ev = change.event
        after = ev.after
        if after is None or ev.op not in _NEW_ROW_OPS:
            return change  # deletes and truncates carry no new row to extend
        row = dict(after)
        unchanged = ev.unchanged
        unsent: list[str] | None = None
        table = ""
        for name, e, value in self._steps:
            if e is None:
                row[name] = value
            elif unchanged and any(f in unchanged for f in e.fields):
                # an input was not sent (unchanged TOAST): so is the result, the target keeps it
                row.pop(name, None)
                if unsent is None:
                    unsent = list(unchanged)
                if name not in unsent:
                    unsent.append(name)
                continue
            else:
                if not table:
                    table = ev.table_id
                try:
                    row[name] = json_value(e.fn(row, ev.op, ev.before, row, table, change.key))
                except Exception as exc:
                    raise self.data_error(
                        change, f"{name} = {e.text} failed: {type(exc).__name__}: {exc}"
                    ) from exc
            if unchanged and name in unchanged:
                unsent = [c for c in (unchanged if unsent is None else unsent) if c != name]
        if unsent is not None:
            return replace(change, after=row, unchanged=unsent or None)
        return replace(change, after=row)

    def schema(self, table: TableSchema) -> TableSchema | None:
        known = {c.name for c in table.columns}
        for name, e, _, type_, typed in self._fields:
            if e is not None:
                missing = [f for f in e.fields if f not in known]
                if missing:
                    self.require(table, missing, f"fields.{name}.expr")
            existing = table.column(name)
            if existing is not None:
                if self.kind == "add_fields":
                    raise self.schema_error(
                        table, f"column {name} exists already; use compute to overwrite it"
                    )
                if name in table.key:
                    raise self.schema_error(
                        table, f"cannot compute key column {name}: rows are applied by key"
                    )
                if typed:
                    table = set_column(table, Column(name, type_, True))
            else:
                table = set_column(table, Column(name, type_, True))
            known.add(name)
        return table


class AddFields(Computed):
    kind = "add_fields"


class Compute(Computed):
    kind = "compute"


def _plain_value(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()  # YAML reads unquoted dates as dates
    try:
        return json_value(v)
    except TypeError:
        raise ValueError(f"value {v!r:.40} is not a JSON value") from None


class _Field(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    expr: str | None = None
    value: Any = None
    type: str = "text"  # the column type in the source's dialect, for created targets

    @field_validator("expr")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            _expr(v)
        return v

    @field_validator("value")
    @classmethod
    def _json(cls, v: Any) -> Any:
        return _plain_value(v)

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not v.strip() or ";" in v:
            raise ValueError(f"{v!r} is not a column type")
        return v.strip()

    def entry(self, name: str) -> tuple[str, Expr | None, Any, str, bool]:
        e = _expr(self.expr) if self.expr is not None else None
        return (name, e, self.value, self.type, "type" in self.model_fields_set)


class AddField(_Field):
    @model_validator(mode="after")
    def _one(self) -> AddField:
        if (self.expr is None) == ("value" not in self.model_fields_set):
            raise ValueError("give exactly one of value: or expr:")
        return self


class ComputeField(_Field):
    expr: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"expr": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _no_value(self) -> ComputeField:
        if "value" in self.model_fields_set:
            raise ValueError("compute takes expr:; use add_fields for constant values")
        return self


class AddFieldsSpec(SpecBase):
    """``{type: add_fields, fields: {name: {value: 1 | expr: "...", type: text}}}``."""

    type: Literal["add_fields"]
    fields: dict[str, AddField]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, AddField]) -> dict[str, AddField]:
        if not v:
            raise ValueError("give at least one field")
        field_names(v)
        return v

    def build(self, index: int) -> Transform:
        entries = [f.entry(n) for n, f in self.fields.items()]
        return AddFields(index, self.tables, entries)


class ComputeSpec(SpecBase):
    """``{type: compute, fields: {total: {expr: "price * qty", type: numeric}}}``."""

    type: Literal["compute"]
    fields: dict[str, ComputeField]

    @field_validator("fields")
    @classmethod
    def _names(cls, v: dict[str, ComputeField]) -> dict[str, ComputeField]:
        if not v:
            raise ValueError("give at least one field")
        field_names(v)
        return v

    def build(self, index: int) -> Transform:
        entries = [f.entry(n) for n, f in self.fields.items()]
        return Compute(index, self.tables, entries)
