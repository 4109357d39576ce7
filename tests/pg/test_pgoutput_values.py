"""pgoutput decoding and text → value conversion: pure units plus a type round trip on a real server."""

from __future__ import annotations

import struct
import time
import uuid
from typing import Any

import psycopg2
import pytest

from syncline.config import PostgresSourceConfig
from syncline.errors import DataError
from syncline.events import Change, decode_value, encode_value
from syncline.sources.postgres import PostgresSource, catalog
from syncline.sources.postgres.pgoutput import PG_EPOCH_US, Decoder, format_lsn, parse_lsn
from syncline.sources.postgres.values import (
    BOOL,
    BYTEA,
    CANONICAL_OPTIONS,
    FLOAT,
    INT,
    TEXT,
    TypeInfo,
    TypeRegistry,
    parse_array,
)

# -- converters -------------------------------------------------------------------


def test_scalar_converters_from_bytes_and_str() -> None:
    assert INT.from_bytes(b"-9223372036854775808") == -(2**63)
    assert FLOAT.from_bytes(b"0.1") == 0.1
    assert FLOAT.from_str("1e+308") == 1e308
    for special in ("NaN", "Infinity", "-Infinity"):
        assert FLOAT.from_bytes(special.encode()) == special
        assert FLOAT.from_str(special) == special
    assert BOOL.from_bytes(b"t") is True and BOOL.from_str("f") is False
    assert BYTEA.from_bytes(b"\\x00ff0010") == "AP8AEA=="
    assert BYTEA.from_str("\\x") == ""
    assert TEXT.from_bytes("ünï\t\\".encode()) == "ünï\t\\"


def test_parse_array_shapes() -> None:
    assert parse_array("{}", int) == []
    assert parse_array("{1,2,NULL}", int) == [1, 2, None]
    assert parse_array("{{1,2},{3,NULL}}", int) == [[1, 2], [3, None]]
    assert parse_array("[0:1]={5,6}", int) == [5, 6]
    assert parse_array("{{{1}},{{2}}}", int) == [[[1]], [[2]]]
    assert parse_array("(1,2)", str) == "(1,2)"  # not an array literal: left as printed


def test_parse_array_quoting_and_escapes() -> None:
    text = r'{"a,b","c\"d","NULL",NULL,"back\\slash","","x y","{}",plain}'
    assert parse_array(text, str) == [
        "a,b",
        'c"d',
        "NULL",
        None,
        "back\\slash",
        "",
        "x y",
        "{}",
        "plain",
    ]
    assert parse_array('{{"a}",b},{c,"d\\\\"}}', str) == [["a}", "b"], ["c", "d\\"]]


def test_parse_array_other_delimiter_and_errors() -> None:
    assert parse_array("{(1,1),(0,0);(2,2),(1,1)}", str, ";") == ["(1,1),(0,0)", "(2,2),(1,1)"]
    with pytest.raises(ValueError):
        parse_array('{"unterminated}', str)
    with pytest.raises(ValueError):
        parse_array('{"a"x}', str)


def test_registry_resolves_domains_and_custom_arrays_once() -> None:
    calls: list[int] = []
    catalog = {
        50000: TypeInfo("N", 0, ",", 23),  # domain over int4
        50001: TypeInfo("A", 50000, ",", 0),  # array of that domain
        50002: TypeInfo("E", 0, ",", 0),  # an enum
    }

    def fetch(oid: int) -> TypeInfo | None:
        calls.append(oid)
        return catalog.get(oid)

    reg = TypeRegistry(fetch)
    assert reg.converter(50000).from_bytes(b"7") == 7
    assert reg.converter(50001).from_bytes(b"{1,NULL}") == [1, None]
    assert reg.converter(50002).from_bytes(b"red") == "red"
    assert reg.converter(1007).from_bytes(b"{1,2}") == [1, 2]  # built-in: no catalog trip
    assert reg.converter(60000).from_bytes(b"?") == "?"  # unknown: the text
    reg.converter(50001)
    assert calls.count(50001) == 1


def test_lsn_text_round_trip() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("0/1A2B3C")) == "0/1A2B3C"


# -- decoder on hand-built pgoutput messages ---------------------------------------


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def _relation(
    oid: int, cols: list[tuple[str, int, bool]], schema: str = "public", name: str = "t"
) -> bytes:
    out = (
        b"R"
        + struct.pack(">I", oid)
        + _cstr(schema)
        + _cstr(name)
        + b"d"
        + struct.pack(">H", len(cols))
    )
    for col, typ, key in cols:
        out += bytes([1 if key else 0]) + _cstr(col) + struct.pack(">Ii", typ, -1)
    return out


def _tuple(values: list[bytes | str | None]) -> bytes:
    out = struct.pack(">H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "u":
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack(">i", len(v)) + v
    return out


def _begin(lsn: int, xid: int, ts_us: int = 0) -> bytes:
    return b"B" + struct.pack(">QqI", lsn, ts_us - PG_EPOCH_US, xid)


def _commit(lsn: int, end: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, lsn, end, 0)


COLS = [("id", 23, True), ("name", 25, False), ("tags", 1009, False)]


def _decoder(skip: tuple[int, int] | None = None) -> Decoder:
    return Decoder("p", "db", {"public.t": ("id",)}, TypeRegistry().converter, skip)


def _feed(dec: Decoder, *msgs: bytes) -> list[Change]:
    out: list[Change] = []
    for m in msgs:
        dec.feed(m, out, 1_700_000_000_000_000)
    return out


def test_decoder_insert_update_delete_truncate() -> None:
    dec = _decoder()
    ts = 1_700_000_000_123_456
    out = _feed(
        dec,
        _relation(16384, COLS),
        _begin(1000, 77, ts),
        b"I" + struct.pack(">I", 16384) + b"N" + _tuple([b"1", b"a\tb", b'{x,"y z",NULL}']),
        b"U" + struct.pack(">I", 16384) + b"N" + _tuple([b"1", b"b", "u"]),
        b"U"
        + struct.pack(">I", 16384)
        + b"K"
        + _tuple([b"1", None, None])
        + b"N"
        + _tuple([b"2", b"b", None]),
        b"D" + struct.pack(">I", 16384) + b"K" + _tuple([b"2", None, None]),
        b"T" + struct.pack(">IBI", 1, 0, 16384),
        _commit(1000, 1100),
    )
    assert [c.event.op for c in out] == ["c", "u", "d", "c", "d", "t"]
    assert [c.event.source.seq for c in out] == [0, 1, 2, 3, 4, 5]
    assert {c.event.source.lsn for c in out} == {1000}
    ins = out[0].event
    assert out[0].key == {"id": 1}
    assert ins.after == {"id": 1, "name": "a\tb", "tags": ["x", "y z", None]}
    assert ins.source.txId == 77 and ins.source.ts_us == ts and ins.source.ts_ms == ts // 1000
    upd = out[1].event
    assert upd.before is None and upd.after == {"id": 1, "name": "b"} and upd.unchanged == ["tags"]
    assert out[2].key == {"id": 1} and out[2].event.before == {"id": 1}  # old key of the PK change
    assert out[3].key == {"id": 2} and out[3].event.after == {"id": 2, "name": "b", "tags": None}
    assert out[4].event.before == {"id": 2} and out[4].event.after is None
    assert out[5].key == {} and out[5].event.before is None and out[5].event.after is None
    assert dec.end_lsn == 1100 and not dec.in_txn
    # the events survive the wire codec unchanged
    assert decode_value(encode_value(upd)) == upd


def test_decoder_skips_what_the_checkpoint_covers() -> None:
    insert = [
        b"I" + struct.pack(">I", 16384) + b"N" + _tuple([str(i).encode(), b"x", None])
        for i in range(5)
    ]
    dec = _decoder(skip=(2000, 2))
    out = _feed(
        dec,
        _relation(16384, COLS),
        _begin(1000, 1),
        *insert[:2],
        _commit(1000, 1050),  # older transaction: all dropped
        _begin(2000, 2),
        *insert,
        _commit(2000, 2050),  # partly published: seq 3 and 4 remain
        _begin(3000, 3),
        insert[0],
        _commit(3000, 3050),
    )
    assert [(c.event.source.lsn, c.event.source.seq) for c in out] == [
        (2000, 3),
        (2000, 4),
        (3000, 0),
    ]
    assert dec.end_lsn == 3050


def test_decoder_ignores_uncaptured_relations_and_rejects_unknown_ones() -> None:
    dec = _decoder()
    out = _feed(
        dec,
        _relation(20000, [("id", 23, True)], name="other"),
        _begin(10, 1),
        b"I" + struct.pack(">I", 20000) + b"N" + _tuple([b"1"]),
        _commit(10, 20),
    )
    assert out == []
    with pytest.raises(DataError, match="relation OID 999"):
        _feed(dec, _begin(30, 2), b"I" + struct.pack(">I", 999) + b"N" + _tuple([b"1"]))


# -- every type through a real server, snapshot and stream ------------------------

TEXT_VALUE = "tab\there\nnew line \\ back\\slash ünïcødé 🎉 'single' \"double\" \r cr"
BIG_NUMERIC = "12345678901234567890123456789.123456789012345678901234567890"

TYPES: list[tuple[str, str, str, Any]] = [
    # column, type, SQL literal, expected value
    ("c_int2", "smallint", "-32768", -32768),
    ("c_int4", "integer", "2147483647", 2147483647),
    ("c_int8", "bigint", "-9223372036854775808", -9223372036854775808),
    ("c_num", "numeric", f"'{BIG_NUMERIC}'", BIG_NUMERIC),
    ("c_num_scale", "numeric(10,2)", "1.5", "1.50"),
    ("c_num_nan", "numeric", "'NaN'", "NaN"),
    ("c_real", "real", "0.1", 0.1),
    ("c_double", "double precision", "1.7976931348623157e308", 1.7976931348623157e308),
    ("c_double_third", "double precision", "1.0/3", 1.0 / 3),
    ("c_nan", "double precision", "'NaN'", "NaN"),
    ("c_inf", "double precision", "'Infinity'", "Infinity"),
    ("c_ninf", "real", "'-Infinity'", "-Infinity"),
    ("c_text", "text", "%(text)s", TEXT_VALUE),
    ("c_varchar", "varchar(20)", "'abc'", "abc"),
    ("c_char", "char(5)", "'ab'", "ab   "),
    ("c_bool_t", "boolean", "true", True),
    ("c_bool_f", "boolean", "false", False),
    (
        "c_uuid",
        "uuid",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ),
    ("c_json", "json", """'{"b": 1,  "a": [1, 2]}'""", '{"b": 1,  "a": [1, 2]}'),
    ("c_jsonb", "jsonb", """'{"b": 1,  "a": [1, 2]}'""", '{"a": [1, 2], "b": 1}'),
    ("c_date", "date", "'2024-02-29'", "2024-02-29"),
    ("c_ts", "timestamp", "'2024-02-29 12:34:56.789012'", "2024-02-29 12:34:56.789012"),
    ("c_tstz", "timestamptz", "'2024-02-29 12:34:56.789012+02'", "2024-02-29 10:34:56.789012+00"),
    ("c_interval", "interval", "'1 day 2 hours 3 minutes 4 seconds'", "P1DT2H3M4S"),
    ("c_inet", "inet", "'10.0.0.1'", "10.0.0.1"),
    ("c_bytea", "bytea", "'\\x00ff000010'::bytea", "AP8AABA="),
    ("c_int_arr", "integer[]", "'{1,2,NULL}'", [1, 2, None]),
    ("c_int_arr2", "integer[]", "'{{1,2},{3,4}}'", [[1, 2], [3, 4]]),
    (
        "c_text_arr",
        "text[]",
        """ARRAY['a,b', 'c"d', NULL, 'NULL', 'back\\slash', '', 'x y', '{}']""",
        ["a,b", 'c"d', None, "NULL", "back\\slash", "", "x y", "{}"],
    ),
    ("c_float_arr", "float8[]", "'{1.5,NaN,-Infinity}'", [1.5, "NaN", "-Infinity"]),
    ("c_bool_arr", "boolean[]", "'{t,f,NULL}'", [True, False, None]),
    (
        "c_tstz_arr",
        "timestamptz[]",
        "ARRAY['2024-01-01 00:00:00+00'::timestamptz]",
        ["2024-01-01 00:00:00+00"],
    ),
    ("c_bytea_arr", "bytea[]", "ARRAY['\\x00'::bytea, NULL]", ["AA==", None]),
    ("c_domain", "posint", "5", 5),
    ("c_domain_arr", "posint[]", "'{1,2}'", [1, 2]),
    ("c_enum", "mood", "'happy'", "happy"),
]


def _exec(dsn: str, *stmts: str, params: dict[str, Any] | None = None) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s, params)
    conn.close()


def _collect(src: PostgresSource, n: int, seconds: float = 20.0) -> list[Change]:
    out: list[Change] = []
    deadline = time.monotonic() + seconds
    while len(out) < n and time.monotonic() < deadline:
        batch = src.read(100, 0.2)
        if batch is not None:
            out.extend(batch.changes)
            src.ack(batch.checkpoint)
    return out


def test_every_type_round_trips_in_snapshot_and_stream(pg_source_dsn: str) -> None:
    cols = ", ".join(f"{c} {t}" for c, t, _, _ in TYPES)
    values = ", ".join(lit for _, _, lit, _ in TYPES)
    names = ", ".join(c for c, _, _, _ in TYPES)
    _exec(
        pg_source_dsn,
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
        "CREATE TYPE mood AS ENUM ('sad', 'happy')",
        f"CREATE TABLE public.all_types (id int PRIMARY KEY, {cols})",
    )
    insert = f"INSERT INTO public.all_types (id, {names}) VALUES (%(id)s, {values})"
    _exec(pg_source_dsn, insert, params={"id": 1, "text": TEXT_VALUE})
    _exec(pg_source_dsn, "INSERT INTO public.all_types (id) VALUES (2)")  # NULL everywhere
    cfg = PostgresSourceConfig(kind="postgres", dsn=pg_source_dsn, tables=["all_types"])
    src = PostgresSource(cfg, f"types-{uuid.uuid4().hex[:8]}")
    try:
        src.open(None)
        snap = _collect(src, 2)
        _exec(pg_source_dsn, insert, params={"id": 3, "text": TEXT_VALUE})
        _exec(pg_source_dsn, "INSERT INTO public.all_types (id) VALUES (4)")
        stream = _collect(src, 2)
    finally:
        src.close()
    assert [c.event.op for c in snap] == ["r", "r"] and [c.event.op for c in stream] == ["c", "c"]
    by_id = {c.key["id"]: c.event.after for c in snap + stream}
    assert set(by_id) == {1, 2, 3, 4}
    for full in (by_id[1], by_id[3]):
        assert full is not None
        for col, _t, _lit, expected in TYPES:
            assert full[col] == expected, col
            assert type(full[col]) is type(expected), col
    for empty in (by_id[2], by_id[4]):
        assert empty is not None
        assert all(empty[c] is None for c, _, _, _ in TYPES)
    assert {k: v for k, v in by_id[1].items() if k != "id"} == {
        k: v for k, v in by_id[3].items() if k != "id"
    }


# -- generated row decoders agree with the generic one -----------------------------

# Column names a code generator could trip over; pgoutput sends them verbatim.
ODD_NAMES = [
    'a"b\\c',
    "new\nline",
    "it's",
    "'''",
    '"""',
    "{}",
    "}, 1: {",
    "v0",
    "pos",
    "\\",
    "ü 🎉",
]


def _pair(keys: dict[str, tuple[str, ...]], registry: TypeRegistry) -> tuple[Decoder, Decoder]:
    return Decoder("p", "db", keys, registry.converter), Decoder(
        "p", "db", keys, registry.converter
    )


def _generic_only(dec: Decoder) -> None:
    """Switch the generated decoders off, so every row takes ``Decoder._tuple``."""
    for rel in dec.relations.values():
        rel.image = rel.image_end = lambda data, pos: None


def _feed_both(
    fast: Decoder, generic: Decoder, msgs: list[bytes]
) -> tuple[list[Change], list[Change]]:
    a: list[Change] = []
    b: list[Change] = []
    for m in msgs:
        fast.feed(m, a, 1_700_000_000_000_000)
        generic.feed(m, b, 1_700_000_000_000_000)
        if m[:1] == b"R":
            _generic_only(generic)
    return a, b


def _same(a: list[Change], b: list[Change]) -> None:
    assert a == b
    # byte-identical events: the same key order in every dict, the same unchanged lists
    assert [encode_value(c.event) for c in a] == [encode_value(c.event) for c in b]
    assert [list(c.key) for c in a] == [list(c.key) for c in b]


def _outcome(dec: Decoder, msg: bytes) -> Any:
    try:
        return _feed(dec, msg)
    except Exception as exc:  # whatever the generic decoder raises, the fast one must too
        return f"{type(exc).__name__}: {exc}"


ODD_COLS = [  # the key second, so a NULL can lead a row
    ("i2", 21, False),
    ("id", 20, True),
    ("i4", 23, False),
    ("f4", 700, False),
    ("f8", 701, False),
    ("ok", 16, False),
    ("raw", 17, False),
    ("num", 1700, False),
    ("ts", 1184, False),
    ("js", 3802, False),
    ("ints", 1007, False),
    ("texts", 1009, False),
    ("vec", 22, False),
    *[(n, 25, False) for n in ODD_NAMES],
]
ODD_ROW: list[bytes | str | None] = [
    b"-32768",
    b"-9223372036854775808",
    b"7",
    b"0.1",
    b"NaN",
    b"t",
    b"\\x00ff10",
    b"12345678901234567890.5",
    b"2024-02-29 10:34:56.789012+00",
    b'{"A": [1, 2]}',
    b"{1,NULL,3}",
    b'{"a,b",NULL,"c\\"d"}',
    b"1 2",
    *[f"Ünï\t\\ 🎉 {n}".encode() for n in ODD_NAMES],
]


def test_generated_row_decoder_matches_generic_on_every_converter_and_odd_names() -> None:
    fast, generic = _pair({"public.t": ("id",)}, TypeRegistry())
    oid = struct.pack(">I", 16384)
    nulls: list[bytes | str | None] = [None, b"1"] + [None] * (len(ODD_COLS) - 2)
    toast: list[bytes | str | None] = [b"5", b"2", *ODD_ROW[2:-1], "u"]  # unchanged TOAST
    msgs = [
        _relation(16384, ODD_COLS),
        _begin(1000, 5),
        b"I" + oid + b"N" + _tuple(ODD_ROW),
        b"I" + oid + b"N" + _tuple(nulls),
        b"U" + oid + b"N" + _tuple(toast),
        b"U" + oid + b"O" + _tuple(ODD_ROW) + b"N" + _tuple(toast),  # key change, old row kept
        b"U" + oid + b"K" + _tuple(nulls) + b"N" + _tuple(ODD_ROW),
        b"D" + oid + b"O" + _tuple(ODD_ROW),
        b"D" + oid + b"K" + _tuple(nulls),
        _commit(1000, 1100),
    ]
    a, b = _feed_both(fast, generic, msgs)
    _same(a, b)
    assert [c.event.op for c in a] == ["c", "c", "u", "d", "c", "d", "c", "d", "d"]
    after = a[0].event.after
    assert after is not None
    assert list(after) == [c for c, _, _ in ODD_COLS]
    assert after["id"] == -(2**63) and after["f8"] == "NaN" and after["ok"] is True
    assert after["raw"] == "AP8Q" and after["texts"] == ["a,b", None, 'c"d']
    assert {n: after[n] for n in ODD_NAMES} == {n: f"Ünï\t\\ 🎉 {n}" for n in ODD_NAMES}
    assert a[2].event.unchanged == [ODD_NAMES[-1]]
    assert ODD_NAMES[-1] not in (a[2].event.after or {})
    # the generated decoder really ran on the plain rows and stood aside for 'u'
    rel = fast.relations[16384]
    assert rel.image(msgs[2], 6) == after
    assert rel.image_end(msgs[2], 6) == (after, len(msgs[2]))
    assert rel.image(msgs[4], 6) is None


@pytest.mark.parametrize(
    ("column", "value"),
    [("name", b"\xff\xfe not utf-8"), ("id", b"12x"), ("id", b""), ("tags", b'{"open')],
)
def test_generated_row_decoder_raises_like_generic_on_bad_values(column: str, value: bytes) -> None:
    row: dict[str, bytes | str | None] = {"id": b"1", "name": b"n", "tags": b"{a}"}
    row[column] = value
    msg = b"I" + struct.pack(">I", 16384) + b"N" + _tuple(list(row.values()))
    fast, generic = _pair({"public.t": ("id",)}, TypeRegistry())
    for dec in (fast, generic):
        _feed(dec, _relation(16384, COLS), _begin(10, 1))
    _generic_only(generic)
    got = _outcome(fast, msg)
    assert got == _outcome(generic, msg)
    assert got.startswith("DataError: cannot decode a column of public.t")


def test_generated_row_decoder_raises_like_generic_on_malformed_tuples() -> None:
    oid = struct.pack(">I", 16384)
    good = _tuple([b"1", b"n", None])
    bad = [
        b"I" + oid + b"N" + struct.pack(">H", 2) + good[2:],  # column count disagrees
        b"I" + oid + b"N" + good[:2] + b"z" + good[3:],  # unknown column kind
        b"I" + oid + b"N" + good[:-3],  # cut short inside a value
        b"I" + oid + b"N" + good[:2] + b"t" + struct.pack(">i", 1000) + b"1",  # length past the end
        b"I" + oid + b"N" + good[:-1] + b"n",  # one column too many: ignored by both
        b"U" + oid + b"K" + good[:-1],  # old tuple cut short
        b"D" + oid + b"K",  # no tuple at all
    ]
    for msg in bad:
        fast, generic = _pair({"public.t": ("id",)}, TypeRegistry())
        for dec in (fast, generic):
            _feed(dec, _relation(16384, COLS), _begin(10, 1))
        _generic_only(generic)
        assert _outcome(fast, msg) == _outcome(generic, msg), msg


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_generated_row_decoder_on_real_pgoutput_messages(pg_source_dsn: str) -> None:
    """Raw pgoutput from the server (SQL-level decoding): every type, odd names, TOAST."""
    odd = ", ".join(f"{_quote(n)} text" for n in ODD_NAMES)
    typed = ", ".join(f"{c} {t}" for c, t, _, _ in TYPES)
    names = ", ".join(c for c, _, _, _ in TYPES) + ", " + ", ".join(map(_quote, ODD_NAMES))
    values = ", ".join(lit for _, _, lit, _ in TYPES) + ", %(odd)s" * len(ODD_NAMES)
    params = {"text": TEXT_VALUE, "odd": 'ünï "q" \\ \n', "big": uuid.uuid4().hex * 400}
    # the stream's text forms, and commits flushed at once so SQL-level decoding sees them
    conn = psycopg2.connect(pg_source_dsn, options=CANONICAL_OPTIONS + " -c synchronous_commit=on")
    conn.autocommit = True
    cur = conn.cursor()
    try:
        cur.execute("CREATE DOMAIN posint AS integer CHECK (VALUE > 0)")
        cur.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        for table, identity in (("odd", "DEFAULT"), ("odd_full", "FULL")):
            cur.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, {typed}, {odd}, big text, n int)"
            )
            cur.execute(f"ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL")
            cur.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity}")
        cur.execute("CREATE PUBLICATION pub FOR ALL TABLES")
        cur.execute("SELECT pg_create_logical_replication_slot('gen', 'pgoutput')")
        for table in ("odd", "odd_full"):
            insert = f"INSERT INTO {table} (id, {names}, big, n) VALUES (1, {values}, %(big)s, 0)"
            cur.execute(insert, params)
            cur.execute(f"INSERT INTO {table} (id) VALUES (2)")
            cur.execute(f"UPDATE {table} SET n = 1 WHERE id = 1")  # big: unchanged TOAST
            cur.execute(f"UPDATE {table} SET id = 3, n = 2 WHERE id = 1")  # key change
            cur.execute(f"UPDATE {table} SET {_quote(ODD_NAMES[0])} = 'x' WHERE id = 2")
            cur.execute(f"DELETE FROM {table} WHERE id IN (2, 3)")
        cur.execute(
            "SELECT data FROM pg_logical_slot_get_binary_changes('gen', NULL, NULL, "
            "'proto_version', '1', 'publication_names', 'pub')"
        )
        msgs = [bytes(r[0]) for r in cur.fetchall()]
        cur.execute("SELECT pg_drop_replication_slot('gen')")
        registry = TypeRegistry(lambda oid: catalog.fetch_type(conn.cursor(), oid))
        fast, generic = _pair({"public.odd": ("id",), "public.odd_full": ("id",)}, registry)
        a, b = _feed_both(fast, generic, msgs)
    finally:
        conn.close()
    _same(a, b)
    ops = ["c", "c", "u", "d", "c", "u", "d", "d"]
    assert [c.event.op for c in a] == ops + ops
    for first in (a[0], a[len(ops)]):
        row = first.event.after
        assert row is not None
        for col, _t, _lit, expected in TYPES:
            assert row[col] == expected and type(row[col]) is type(expected), col
        assert {n: row[n] for n in ODD_NAMES} == {n: params["odd"] for n in ODD_NAMES}
        assert row["big"] == params["big"]
    assert a[2].event.unchanged == ["big"]  # DEFAULT identity: the TOAST value is left out
    assert a[2].event.after is not None and "big" not in a[2].event.after
    old = a[len(ops) + 3].event.before  # FULL identity: the whole old row ('O')
    assert old is not None and old["c_text"] == TEXT_VALUE and old["n"] == 1
