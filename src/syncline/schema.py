"""Table shapes as sources describe them, so sinks can check or create targets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # as the source database spells it: "numeric(10,2)", "text[]", "INTEGER"
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class TableSchema:
    """A captured table: ``schema.name``, its columns in order, and its key columns."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    dialect: str = "postgres"  # which database's type names ``Column.type`` uses

    @property
    def table_id(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


_schemas_decoder = msgspec.json.Decoder(dict[str, TableSchema])


def encode_schemas(schemas: Mapping[str, TableSchema]) -> str:
    """JSON text of the table shapes, for a transport's metadata (split capture/apply)."""
    return msgspec.json.encode(dict(schemas)).decode()


def decode_schemas(text: str | bytes) -> dict[str, TableSchema]:
    return _schemas_decoder.decode(text)
