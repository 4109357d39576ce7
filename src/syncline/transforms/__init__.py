"""Per-pipeline transform chain (route, rename, drop, add, compute, cast, filter, mask,
encrypt, python), applied between the log and the sink. See docs/transforms.md.

``validate_specs`` runs at config load (errors name the transform and field);
``build_chain`` turns the same specs into the runtime ``Chain``.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, get_args

from pydantic import Field, TypeAdapter, ValidationError

from syncline.transforms.base import SpecBase, Transform
from syncline.transforms.chain import Chain
from syncline.transforms.computed import AddFieldsSpec, ComputeSpec, FilterSpec
from syncline.transforms.fields import CastSpec, DropFieldsSpec, RenameFieldsSpec
from syncline.transforms.privacy import EncryptSpec, MaskSpec, decrypt_value
from syncline.transforms.python import PythonSpec
from syncline.transforms.route import RouteSpec

TransformSpec = Annotated[
    RouteSpec
    | RenameFieldsSpec
    | DropFieldsSpec
    | AddFieldsSpec
    | ComputeSpec
    | CastSpec
    | FilterSpec
    | MaskSpec
    | EncryptSpec
    | PythonSpec,
    Field(discriminator="type"),
]
TYPES = (
    "route",
    "rename_fields",
    "drop_fields",
    "add_fields",
    "compute",
    "cast",
    "filter",
    "mask",
    "encrypt",
    "python",
)
_adapter: TypeAdapter[SpecBase] = TypeAdapter(TransformSpec)
_SPECS: dict[str, type[SpecBase]] = {
    get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in get_args(get_args(TransformSpec)[0])
}


def _unknown_key(kind: str, key: str) -> str:
    spec = _SPECS.get(kind)
    known = list(spec.model_fields) if spec is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return (
        f"unknown key (did you mean {close[0]}?)" if close else "unknown key (check the spelling)"
    )


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_spec(index: int, spec: Any) -> SpecBase:
    """One spec as its model; ValueError ``transforms[i] (type): field: what is wrong``."""
    if not isinstance(spec, dict):
        raise ValueError(f"transforms[{index}]: expected a mapping with a type: key")
    kind = spec.get("type")
    if kind not in TYPES:
        what = "missing type" if kind is None else f"unknown type {kind!r}"
        raise ValueError(f"transforms[{index}]: {what}; expected one of {', '.join(TYPES)}")
    try:
        return _adapter.validate_python(spec)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            loc = err["loc"][1:]  # the first element is the type tag
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(kind, str(loc[-1]) if loc else "")
            else:
                msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{_where(loc)}: {msg}" if loc else msg)
        raise ValueError(f"transforms[{index}] ({kind}): " + "; ".join(parts)) from None


def validate_specs(specs: list[dict[str, Any]]) -> None:
    """Check transform specs at config load; raises ValueError naming transform and field."""
    for i, spec in enumerate(specs):
        parse_spec(i, spec)


def build_chain(specs: list[dict[str, Any]], pipeline: str) -> Chain:
    """The runtime chain of a pipeline's (already validated) transform specs."""
    transforms: list[Transform] = [parse_spec(i, s).build(i) for i, s in enumerate(specs)]
    return Chain(transforms, pipeline)


__all__ = ["Chain", "Transform", "build_chain", "decrypt_value", "parse_spec", "validate_specs"]
