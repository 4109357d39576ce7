"""``route``: send a table's changes to another table id (rename or re-schema it).

The new id is worked out once per source table id and cached; each event gets a
new ``source`` block (``msgspec.structs.replace``), never an edited shared one.
Sinks then treat the routed id like any source table (``tables:`` options of
the sink refer to it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import msgspec
from pydantic import Field, field_validator, model_validator

from syncline.errors import SchemaError
from syncline.events import Change
from syncline.schema import TableSchema
from syncline.transforms.base import Result, SpecBase, Transform, replace, table_matcher

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]*"
_TABLE = re.compile(rf"(?:({_IDENT})\.)?({_IDENT})")
_GROUP_REF = re.compile(r"\\(\d+)|\\g<(\w+)>")


def _split(table_id: str, current: str) -> tuple[str, str] | None:
    """``schema.table`` → (schema, table); a bare name keeps the current schema."""
    m = _TABLE.fullmatch(table_id)
    if m is None:
        return None
    return (m.group(1) or current.partition(".")[0], m.group(2))


class Route(Transform):
    kind = "route"

    def __init__(
        self,
        index: int,
        tables: list[str] | None,
        source: str | None,
        pattern: re.Pattern[str] | None,
        to: str,
    ) -> None:
        super().__init__(index, tables)
        self._from = table_matcher([source]) if source is not None else None
        self._pattern = pattern
        self._to = to
        self._targets: dict[str, tuple[str, str] | None] = {}

    def _target(self, table_id: str) -> tuple[str, str] | None:
        if table_id in self._targets:
            return self._targets[table_id]
        to: str | None = None
        if self._from is not None:
            to = self._to if self._from(table_id) else None
        elif self._pattern is not None and (m := self._pattern.fullmatch(table_id)):
            to = m.expand(self._to)
        target = None
        if to is not None:
            target = _split(to, table_id)
            if target is None:
                raise SchemaError(
                    f"{self.label}: routing {table_id} gives {to!r}, which is not schema.table"
                )
        self._targets[table_id] = target
        return target

    def matches(self, table_id: str) -> bool:
        return super().matches(table_id) and self._target(table_id) is not None

    def route(self, table_id: str) -> str:
        target = self._target(table_id)
        return table_id if target is None else f"{target[0]}.{target[1]}"

    def apply(self, change: Change) -> Result:
        src = change.event.source
        target = self._target(src.schema + "." + src.table)
        if target is None:
            return change
        return replace(
            change, source=msgspec.structs.replace(src, schema=target[0], table=target[1])
        )

    def schema(self, table: TableSchema) -> TableSchema | None:
        target = self._target(table.table_id)
        if target is None:
            return table
        return dataclasses.replace(table, schema=target[0], name=target[1])


class RouteSpec(SpecBase):
    """``{type: route, from: public.orders, to: sales.orders_copy}`` or ``pattern:`` + ``to:``."""

    type: Literal["route"]
    from_: str | None = Field(default=None, alias="from")
    pattern: str | None = None
    to: str

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _shape(self) -> RouteSpec:
        if (self.from_ is None) == (self.pattern is None):
            raise ValueError("give exactly one of from: (a table) or pattern: (a regex)")
        if self.pattern is None:
            if _TABLE.fullmatch(self.to) is None:
                raise ValueError(f"to: {self.to!r} is not a table name (schema.table or table)")
            return self
        rx = re.compile(self.pattern)
        for m in _GROUP_REF.finditer(self.to):
            ref = m.group(1) or m.group(2)
            if (int(ref) > rx.groups) if ref.isdigit() else (ref not in rx.groupindex):
                raise ValueError(f"to: refers to group {ref} but pattern has no such group")
        return self

    def build(self, index: int) -> Transform:
        pattern = re.compile(self.pattern) if self.pattern is not None else None
        return Route(index, self.tables, self.from_, pattern, self.to)
