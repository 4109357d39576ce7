"""Value conversions shared by ``cast`` and the expression functions.

Event values are JSON-natural (docs/events.md): numeric travels as an exact
string, NaN/±Infinity floats as strings. Conversions keep those conventions, so a
cast value looks like one the source could have sent. Each raises ``ValueError``
(or ``TypeError``) on a value it cannot convert; callers add the context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

_json = msgspec.json.Encoder()
_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_SPECIAL_FLOATS = frozenset({"NaN", "Infinity", "-Infinity"})


def _no(v: Any, what: str) -> ValueError:
    return ValueError(f"cannot convert {v!r:.60} to {what}")


def float_out(f: float) -> float | str:
    """NaN and infinities as the strings events use (JSON has no such numbers)."""
    if math.isfinite(f):
        return f
    return "NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity")


def to_int(v: Any) -> int | None:
    t = type(v)
    if v is None or t is int:
        return v  # type: ignore[no-any-return]
    if t is bool:
        return int(v)
    if t is float:
        if v.is_integer():
            return int(v)
        raise _no(v, "int (it has a fraction)")
    if t is str:
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            d = Decimal(s)
        except InvalidOperation:
            raise _no(v, "int") from None
        if d.is_finite() and d == d.to_integral_value():
            return int(d)
        raise _no(v, "int")
    if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
        return int(v)
    raise _no(v, "int")


def to_float(v: Any) -> float | str | None:
    t = type(v)
    if v is None:
        return None
    if t is float or t is int or t is bool:
        return float_out(float(v))
    if t is str:
        if v in _SPECIAL_FLOATS:
            return v  # type: ignore[no-any-return]
        try:
            return float_out(float(v))
        except ValueError:
            raise _no(v, "float") from None
    if isinstance(v, Decimal):
        return float_out(float(v))
    raise _no(v, "float")


def to_bool(v: Any) -> bool | None:
    t = type(v)
    if v is None or t is bool:
        return v  # type: ignore[no-any-return]
    if t is int or t is float:
        return v != 0  # type: ignore[no-any-return]
    if t is str:
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _no(v, "bool")


def to_str(v: Any) -> str | None:
    t = type(v)
    if v is None or t is str:
        return v  # type: ignore[no-any-return]
    if t is bool:
        return "true" if v else "false"
    if isinstance(v, Decimal):
        return format(v, "f")
    if t is float:
        f = float_out(v)
        return f if isinstance(f, str) else repr(f)
    if t is int:
        return str(v)
    return _json.encode(v).decode()  # lists and dicts as JSON text


def to_numeric(v: Any) -> str | None:
    """The exact decimal string (the form numeric columns travel in)."""
    t = type(v)
    if v is None:
        return None
    if t is int:
        return str(v)
    if t is float:
        f = float_out(v)
        return f if isinstance(f, str) else format(Decimal(repr(f)), "f")
    if t is str:
        s: str = v.strip()
        try:
            Decimal(s)
        except InvalidOperation:
            raise _no(v, "numeric") from None
        return s
    if isinstance(v, Decimal):
        return format(v, "f")
    raise _no(v, "numeric")


def to_decimal(v: Any) -> Decimal | None:
    """For exact arithmetic in expressions; results are written back as numeric strings."""
    if v is None:
        return None
    if type(v) is bool:
        raise _no(v, "decimal")
    if type(v) is float:
        return Decimal(repr(v))
    try:
        return Decimal(v.strip() if type(v) is str else v)
    except (InvalidOperation, TypeError):
        raise _no(v, "decimal") from None


def _datetime(v: Any) -> datetime:
    if type(v) is int or type(v) is float:
        return datetime.fromtimestamp(v, UTC)  # epoch seconds
    if type(v) is str:
        try:
            return datetime.fromisoformat(v.strip())
        except ValueError:
            pass
    raise _no(v, "a timestamp")


def _ts_text(d: datetime) -> str:
    return d.isoformat(sep=" ", timespec="microseconds" if d.microsecond else "seconds")


def to_timestamp(v: Any) -> str | None:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]`` without zone; zoned values are converted to UTC."""
    if v is None:
        return None
    d = _datetime(v)
    if d.tzinfo is not None:
        d = d.astimezone(UTC).replace(tzinfo=None)
    return _ts_text(d)


def to_timestamptz(v: Any) -> str | None:
    """``YYYY-MM-DD HH:MM:SS[.ffffff]+00`` (UTC); values without zone are taken as UTC."""
    if v is None:
        return None
    d = _datetime(v)
    d = d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)
    return _ts_text(d.replace(tzinfo=None)) + "+00"


def to_date(v: Any) -> str | None:
    if v is None:
        return None
    if type(v) is str:
        s = v.strip()
        try:
            return date.fromisoformat(s).isoformat()
        except ValueError:
            pass
    return _datetime(v).date().isoformat()


Converter = Callable[[Any], Any]

# cast target → (converter, column type by source dialect)
CASTS: dict[str, tuple[Converter, dict[str, str]]] = {
    "int": (to_int, {"postgres": "bigint", "sqlite": "INTEGER"}),
    "float": (to_float, {"postgres": "double precision", "sqlite": "REAL"}),
    "bool": (to_bool, {"postgres": "boolean", "sqlite": "BOOLEAN"}),
    "str": (to_str, {"postgres": "text", "sqlite": "TEXT"}),
    # SQLite's NUMERIC affinity would round the exact string to a double: keep it TEXT
    "numeric": (to_numeric, {"postgres": "numeric", "sqlite": "TEXT"}),
    "decimal": (to_numeric, {"postgres": "numeric", "sqlite": "TEXT"}),
    "date": (to_date, {"postgres": "date", "sqlite": "TEXT"}),
    "timestamp": (to_timestamp, {"postgres": "timestamp", "sqlite": "TEXT"}),
    "timestamptz": (to_timestamptz, {"postgres": "timestamptz", "sqlite": "TEXT"}),
}
