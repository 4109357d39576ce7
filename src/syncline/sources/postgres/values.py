"""PostgreSQL text output → JSON-natural, lossless Python values.

Both the replication stream (pgoutput sends each value in the type's text
output form) and the snapshot (which selects the same text form) go through the
same converters, so a row reads identically whichever path delivered it. The
session GUCs in ``CANONICAL_OPTIONS`` pin the text form (ISO dates in UTC,
shortest exact floats, hex bytea) so it never depends on server defaults.

Each type has two converters: one for ``bytes`` (the stream hands us raw
slices; ``int(b"12")`` needs no decode step) and one for ``str`` (snapshot
values and array elements). They are built once per relation, never per row.
"""

from __future__ import annotations

import math
import re
from base64 import b64encode
from binascii import unhexlify
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CANONICAL_OPTIONS = (
    "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 "
    "-c IntervalStyle=iso_8601 -c bytea_output=hex -c client_encoding=UTF8"
)

BytesConv = Callable[[bytes], Any]
StrConv = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Converter:
    """How to turn one type's text output into a value, from bytes or from str."""

    from_bytes: BytesConv
    from_str: StrConv


def _float_b(b: bytes) -> float | str:
    v = float(b)
    return v if math.isfinite(v) else b.decode()  # NaN/Infinity: JSON has no number for them


def _float_s(s: str) -> float | str:
    v = float(s)
    return v if math.isfinite(v) else s


def _bytea_b(b: bytes) -> str:
    return b64encode(unhexlify(memoryview(b)[2:])).decode("ascii")


def _bytea_s(s: str) -> str:
    return b64encode(unhexlify(s[2:])).decode("ascii")


_decode: BytesConv = bytes.decode

INT = Converter(int, int)
FLOAT = Converter(_float_b, _float_s)
BOOL = Converter({b"t": True, b"f": False}.__getitem__, {"t": True, "f": False}.__getitem__)
BYTEA = Converter(_bytea_b, _bytea_s)
TEXT = Converter(_decode, str)

# Scalar OIDs whose value is not a plain string. Everything else (text, numeric,
# dates, json, uuid, inet, enums, ranges, ...) stays the string PostgreSQL prints.
_SCALARS: dict[int, Converter] = {
    20: INT, 21: INT, 23: INT, 26: INT, 28: INT,  # int8 int2 int4 oid xid
    700: FLOAT, 701: FLOAT,
    16: BOOL,
    17: BYTEA,
    22: TEXT, 30: TEXT,  # int2vector/oidvector print "1 2", not "{1,2}"
}  # fmt: skip

# Built-in array type OID → element type OID, so common arrays need no catalog trip.
BUILTIN_ARRAYS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1007: 23, 1009: 25, 1014: 1042,
    1015: 1043, 1016: 20, 1021: 700, 1022: 701, 1028: 26, 1115: 1114, 1182: 1082,
    1183: 1083, 1185: 1184, 1187: 1186, 1231: 1700, 1270: 1266, 199: 114, 3807: 3802,
    2951: 2950, 1041: 869, 651: 650, 1040: 829, 1561: 1560, 1563: 1562, 2287: 2249,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """What the catalog says about a type (``pg_type``), enough to pick a converter."""

    category: str  # typcategory: 'A' array, 'N' numeric, ...
    elem: int  # typelem (element type of an array)
    delim: str  # typdelim (',' for nearly everything, ';' for box)
    base: int  # typbasetype for domains, else 0


TypeFetcher = Callable[[int], TypeInfo | None]


class TypeRegistry:
    """Picks and caches a ``Converter`` per type OID.

    Types missing from the built-in tables are looked up once through
    ``fetch`` (a catalog query on a normal connection); unknown types fall
    back to the text PostgreSQL prints, which is always lossless.
    """

    def __init__(self, fetch: TypeFetcher | None = None) -> None:
        self._fetch = fetch
        self._cache: dict[int, Converter] = {}

    def converter(self, oid: int) -> Converter:
        conv = self._cache.get(oid)
        if conv is None:
            conv = self._cache[oid] = self._resolve(oid, 0)
        return conv

    def _resolve(self, oid: int, depth: int) -> Converter:
        scalar = _SCALARS.get(oid)
        if scalar is not None:
            return scalar
        elem = BUILTIN_ARRAYS.get(oid)
        if elem is not None:
            return array_converter(self.converter(elem).from_str, ",")
        if oid < 10000 or self._fetch is None or depth > 8:
            return TEXT  # other built-ins print a lossless string
        info = self._fetch(oid)
        if info is None:
            return TEXT
        if info.base:  # a domain converts like its base type
            return self._resolve(info.base, depth + 1)
        if info.category == "A" and info.elem:
            return array_converter(self._resolve(info.elem, depth + 1).from_str, info.delim)
        return TEXT


def array_converter(elem: StrConv, delim: str) -> Converter:
    def from_str(s: str) -> Any:
        return parse_array(s, elem, delim)

    def from_bytes(b: bytes) -> Any:
        return parse_array(b.decode(), elem, delim)

    return Converter(from_bytes, from_str)


_TOKEN: dict[str, re.Pattern[str]] = {}
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.S)  # unrolled: no per-char alternation
_UNESCAPE = re.compile(r"\\(.)", re.S)


def parse_array(s: str, conv: StrConv, delim: str = ",") -> list[Any] | str:
    """Parse ``array_out`` text (``{1,NULL,"a\\"b"}``, nested, ``[0:1]={..}``) into lists.

    Elements go through ``conv``; unquoted ``NULL`` becomes ``None``. Text that
    is not an array literal is returned unchanged rather than guessed at.
    """
    if not s.startswith("{"):
        if s.startswith("["):  # non-default lower bounds: "[0:1]={...}"
            s = s[s.find("=") + 1 :]
        if not s.startswith("{"):
            return s
    if s == "{}":
        return []
    if s[1] != "{":  # one dimension (array_out starts nested arrays with "{{")
        if '"' not in s:
            return [None if e == "NULL" else conv(e) for e in s[1:-1].split(delim)]
        if delim == ",":
            return _flat_quoted(s, conv)
    token = _TOKEN.get(delim)
    if token is None:
        token = _TOKEN[delim] = re.compile(f"[^{re.escape(delim)}}}]*")
    value, end = _parse(s, 0, conv, delim, token)
    if end != len(s):
        raise ValueError(f"trailing text after array literal at {end}")
    return value


_FLAT = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"|([^,"{}]+)', re.S)


def _flat_quoted(s: str, conv: StrConv) -> list[Any]:
    """One-dimensional array with some quoted elements: one regex scan."""
    out: list[Any] = []
    append = out.append
    pos = 1
    for m in _FLAT.finditer(s, 1, len(s) - 1):
        if m.start() != pos:
            raise ValueError(f"unexpected {s[pos]!r} in array literal at {pos}")
        pos = m.end() + 1  # past the delimiter
        plain = m.group(2)
        if plain is None:
            text = m.group(1)
            append(conv(_UNESCAPE.sub(r"\1", text) if "\\" in text else text))
        else:
            append(None if plain == "NULL" else conv(plain))
    if pos != len(s):
        raise ValueError(f"unexpected text in array literal at {pos - 1}")
    return out


def _parse(
    s: str, i: int, conv: StrConv, delim: str, token: re.Pattern[str]
) -> tuple[list[Any], int]:
    out: list[Any] = []
    i += 1  # past "{"
    if s[i] == "}":
        return out, i + 1
    while True:
        c = s[i]
        if c == "{":
            sub, i = _parse(s, i, conv, delim, token)
            out.append(sub)
        elif c == '"':
            m = _QUOTED.match(s, i)
            if m is None:
                raise ValueError(f"unterminated quoted array element at {i}")
            text = m.group(1)
            out.append(conv(_UNESCAPE.sub(r"\1", text) if "\\" in text else text))
            i = m.end()
        else:
            m = token.match(s, i)
            assert m is not None  # the pattern matches the empty string
            tok = m.group()
            out.append(None if tok == "NULL" else conv(tok))
            i = m.end()
        c = s[i]
        if c == "}":
            return out, i + 1
        if c != delim:
            raise ValueError(f"unexpected {c!r} in array literal at {i}")
        i += 1
