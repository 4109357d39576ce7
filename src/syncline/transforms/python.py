"""``python``: a user function (``package.module:func``) for what the built-ins cannot do.

The function is imported at config load, so a typo fails before anything runs.
It gets each ``Change`` and returns a ``Change``, None (drop it) or a list of
changes (fan-out); it must not modify the change it was given (build a new one,
e.g. with ``msgspec.structs.replace``). An optional ``schema`` function
(``TableSchema -> TableSchema | None``) says how it reshapes tables.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from syncline.errors import SynclineError
from syncline.events import Change
from syncline.schema import TableSchema
from syncline.transforms.base import Result, SpecBase, Transform

_REF = r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*"


def load_function(ref: str) -> Callable[..., Any]:
    """Import ``module:attr``; ValueError with the reason if that fails."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name}: {exc}") from None
    except Exception as exc:  # the module itself raised while importing
        raise ValueError(
            f"importing module {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"module {module_name} has no attribute {attr}")
    if not callable(fn):
        raise ValueError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


class PythonTransform(Transform):
    kind = "python"
    dynamic = True  # the function may send a change to any table

    def __init__(
        self,
        index: int,
        tables: list[str] | None,
        fn: Callable[[Change], Any],
        schema_fn: Callable[[TableSchema], Any] | None,
        ref: str,
    ) -> None:
        super().__init__(index, tables)
        self.label = f"transforms[{index}] (python {ref})"
        self._fn = fn
        self._schema_fn = schema_fn

    def apply(self, change: Change) -> Result:
        try:
            out = self._fn(change)
        except SynclineError:
            raise
        except Exception as exc:
            raise self.data_error(change, f"raised {type(exc).__name__}: {exc}") from exc
        if out is None or type(out) is Change:
            return out
        if type(out) is list and all(type(c) is Change for c in out):
            return out
        raise self.data_error(
            change, f"returned {type(out).__name__}; expected a Change, None or a list of Changes"
        )

    def schema(self, table: TableSchema) -> TableSchema | None:
        if self._schema_fn is None:
            return table
        try:
            out = self._schema_fn(table)
        except SynclineError:
            raise
        except Exception as exc:
            raise self.schema_error(
                table, f"schema function raised {type(exc).__name__}: {exc}"
            ) from exc
        if out is not None and not isinstance(out, TableSchema):
            raise self.schema_error(
                table, f"schema function returned {type(out).__name__}, not a TableSchema"
            )
        return out


class PythonSpec(SpecBase):
    """``{type: python, function: "package.module:func", schema: "package.module:shape"}``."""

    type: Literal["python"]
    function: str
    schema_: str | None = Field(default=None, alias="schema")

    @field_validator("function", "schema_")
    @classmethod
    def _importable(cls, v: str | None) -> str | None:
        if v is not None:
            if not re.fullmatch(_REF, v):
                raise ValueError(f"{v!r} is not package.module:function")
            load_function(v)
        return v

    def build(self, index: int) -> Transform:
        schema_fn = load_function(self.schema_) if self.schema_ else None
        return PythonTransform(
            index, self.tables, load_function(self.function), schema_fn, self.function
        )
