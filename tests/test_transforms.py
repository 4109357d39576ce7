"""The transform chain, one transform at a time, and the expression language's refusals."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from pathlib import Path
from typing import Any

import msgspec
import pytest

from syncline.config import load_config, parse_config
from syncline.errors import ConfigError, DataError, SchemaError
from syncline.events import Change, ChangeEvent, SourceInfo
from syncline.schema import Column, TableSchema
from syncline.transforms import build_chain, decrypt_value, validate_specs
from syncline.transforms.expr import compile_expr

KEY = base64.b64encode(bytes(range(32))).decode()


def change(
    op: str = "c",
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
    table: str = "public.orders",
    unchanged: list[str] | None = None,
) -> Change:
    schema, _, name = table.partition(".")
    if after is None and op in ("c", "u", "r"):
        after = {"id": 1, "status": "new", "price": "2.50", "qty": 3, "email": "Ann@Example.com"}
    if key is None:
        row = before if op == "d" else after
        key = {"id": row["id"]} if row else {}
    src = SourceInfo(connector="test", name="p", ts_ms=1, db="db", schema=schema, table=name)
    ev = ChangeEvent(before=before, after=after, source=src, op=op, ts_ms=1, unchanged=unchanged)
    return Change(key, ev)


def table(name: str = "public.orders", dialect: str = "postgres") -> TableSchema:
    schema, _, tname = name.partition(".")
    cols = (
        Column("id", "bigint", False),
        Column("status", "text"),
        Column("price", "numeric(10,2)"),
        Column("qty", "integer"),
        Column("email", "text"),
    )
    return TableSchema(schema, tname, cols, ("id",), dialect)


def run(specs: list[dict[str, Any]], *changes: Change) -> list[Change]:
    validate_specs(specs)
    return build_chain(specs, "p").apply(list(changes))


def one(specs: list[dict[str, Any]], c: Change) -> Change:
    out = run(specs, c)
    assert len(out) == 1
    return out[0]


def snapshot(c: Change) -> bytes:
    return msgspec.json.encode(c)


# ---- chain -----------------------------------------------------------------------------


def test_empty_chain_returns_the_batch_itself() -> None:
    chain = build_chain([], "p")
    batch = [change(), change(op="d", before={"id": 1})]
    assert chain.apply(batch) is batch
    schemas = {"public.orders": table()}
    assert chain.schemas(schemas) == schemas


def test_transform_of_another_table_leaves_the_change_untouched() -> None:
    c = change()
    specs = [{"type": "drop_fields", "fields": ["status"], "tables": ["public.customers"]}]
    assert run(specs, c)[0] is c


def test_no_transform_mutates_its_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SALT", "pepper")
    monkeypatch.setenv("T_KEY", KEY)
    specs: list[dict[str, Any]] = [
        {"type": "route", "from": "public.orders", "to": "sales.orders"},
        {"type": "rename_fields", "fields": {"qty": "quantity", "id": "order_id"}},
        {"type": "cast", "fields": {"quantity": "str"}},
        {"type": "compute", "fields": {"total": {"expr": "decimal(price) * int(quantity)"}}},
        {"type": "add_fields", "fields": {"origin": {"value": "shop"}}},
        {"type": "mask", "fields": ["email"], "method": "hash", "salt_env": "T_SALT"},
        {"type": "encrypt", "fields": ["status"], "key_env": "T_KEY"},
        {"type": "drop_fields", "fields": ["price"]},
        {"type": "filter", "where": "op != 'd'"},
    ]
    originals = [
        change(),
        change(op="u", before={"id": 1, "status": "old", "qty": 1}, unchanged=["email"]),
    ]
    frozen = [snapshot(c) for c in originals]
    out = run(specs, *originals)
    assert [snapshot(c) for c in originals] == frozen
    assert out[0].event.after is not None and out[0].event.after["total"] == "7.50"
    assert out[0].key == {"order_id": 1}


# ---- route -----------------------------------------------------------------------------


def test_route_renames_the_table_and_keeps_the_original() -> None:
    c = change()
    out = one([{"type": "route", "from": "public.orders", "to": "sales.orders_copy"}], c)
    assert (out.event.source.schema, out.event.source.table) == ("sales", "orders_copy")
    assert out.event.after == c.event.after and out.key == c.key
    assert c.event.source.schema == "public"
    other = change(table="public.customers")
    assert run([{"type": "route", "from": "public.orders", "to": "x.y"}], other)[0] is other


def test_route_by_pattern_and_bare_target_name() -> None:
    specs = [{"type": "route", "pattern": r"public\.(.*)", "to": r"replica.\1"}]
    assert one(specs, change(table="public.items")).event.table_id == "replica.items"
    bare = [{"type": "route", "from": "main.orders", "to": "orders_copy"}]
    assert one(bare, change(table="main.orders")).event.table_id == "main.orders_copy"


def test_route_reshapes_schemas_and_later_transforms_see_the_new_name() -> None:
    specs = [
        {"type": "route", "from": "public.orders", "to": "sales.orders"},
        {"type": "drop_fields", "fields": ["email"], "tables": ["sales.*"]},
    ]
    chain = build_chain(specs, "p")
    shaped = chain.schemas({"public.orders": table()})
    assert list(shaped) == ["sales.orders"]
    assert [c.name for c in shaped["sales.orders"].columns] == ["id", "status", "price", "qty"]
    assert chain.apply([change()])[0].event.after == {
        "id": 1,
        "status": "new",
        "price": "2.50",
        "qty": 3,
    }


def test_routing_two_different_tables_into_one_is_refused() -> None:
    other = TableSchema("public", "items", (Column("id", "bigint"),), ("id",))
    chain = build_chain([{"type": "route", "pattern": r"public\..*", "to": "all.rows"}], "p")
    with pytest.raises(SchemaError, match=r"public.orders and public.items both go to all.rows"):
        chain.schemas({"public.orders": table(), "public.items": other})


def test_route_producing_a_bad_name_is_a_schema_error() -> None:
    chain = build_chain([{"type": "route", "pattern": r"(.*)", "to": r"x.\1"}], "p")
    with pytest.raises(SchemaError, match=r"transforms\[0\] \(route\).*not schema.table"):
        chain.apply([change()])


def test_tables_patterns() -> None:
    specs = [{"type": "drop_fields", "fields": ["email"], "tables": ["orders", "sales.*"]}]
    chain = build_chain(specs, "p")
    assert "email" not in (chain.apply([change()])[0].event.after or {})
    assert "email" not in (chain.apply([change(table="sales.x")])[0].event.after or {})
    assert "email" in (chain.apply([change(table="public.other")])[0].event.after or {})


# ---- rename / drop ---------------------------------------------------------------------


def test_rename_fields_everywhere_a_column_appears() -> None:
    c = change(
        op="u",
        after={"id": 1, "status": "paid"},
        before={"id": 1, "status": "new"},
        unchanged=["email"],
    )
    out = one([{"type": "rename_fields", "fields": {"id": "order_id", "email": "mail"}}], c)
    assert out.key == {"order_id": 1}
    assert out.event.after == {"order_id": 1, "status": "paid"}
    assert out.event.before == {"order_id": 1, "status": "new"}
    assert out.event.unchanged == ["mail"]


def test_rename_fields_schema() -> None:
    chain = build_chain([{"type": "rename_fields", "fields": {"id": "oid", "qty": "n"}}], "p")
    shaped = chain.schemas({"public.orders": table()})["public.orders"]
    assert [c.name for c in shaped.columns] == ["oid", "status", "price", "n", "email"]
    assert shaped.key == ("oid",)
    swap = build_chain([{"type": "rename_fields", "fields": {"qty": "email", "email": "qty"}}], "p")
    assert [c.name for c in swap.schemas({"t.o": table("t.o")})["t.o"].columns][3:] == [
        "email",
        "qty",
    ]
    clash = build_chain([{"type": "rename_fields", "fields": {"qty": "email"}}], "p")
    with pytest.raises(SchemaError, match=r"transforms\[0\] \(rename_fields\).*email"):
        clash.schemas({"public.orders": table()})
    typo = build_chain([{"type": "rename_fields", "fields": {"qtty": "n"}}], "p")
    with pytest.raises(SchemaError, match=r"qtty that the table lacks"):
        typo.schemas({"public.orders": table()})


def test_drop_fields() -> None:
    c = change(op="u", after={"id": 1, "status": "x", "email": "e"}, unchanged=["price"])
    out = one([{"type": "drop_fields", "fields": ["email", "price"]}], c)
    assert out.event.after == {"id": 1, "status": "x"}
    assert out.event.unchanged is None
    chain = build_chain([{"type": "drop_fields", "fields": ["email"]}], "p")
    cols = chain.schemas({"public.orders": table()})["public.orders"].columns
    assert [c.name for c in cols] == ["id", "status", "price", "qty"]


def test_drop_key_column_is_refused_at_schema_time() -> None:
    chain = build_chain([{"type": "drop_fields", "fields": ["id"]}], "p")
    with pytest.raises(
        SchemaError, match=r"transforms\[0\] \(drop_fields\).*cannot drop key column"
    ):
        chain.schemas({"public.orders": table()})


# ---- add_fields / compute ----------------------------------------------------------------


def test_add_fields_constant_and_expression() -> None:
    specs = [
        {
            "type": "add_fields",
            "fields": {
                "region": {"value": "eu"},
                "label": {"expr": "concat(upper(status), '#', id)", "type": "varchar(40)"},
            },
        }
    ]
    out = one(specs, change())
    assert out.event.after is not None
    assert (out.event.after["region"], out.event.after["label"]) == ("eu", "NEW#1")
    cols = build_chain(specs, "p").schemas({"public.orders": table()})["public.orders"].columns
    assert cols[-2:] == (Column("region", "text"), Column("label", "varchar(40)"))
    deleted = change(op="d", before={"id": 1})
    assert run(specs, deleted)[0] is deleted
    with pytest.raises(SchemaError, match="column status exists already; use compute"):
        build_chain([{"type": "add_fields", "fields": {"status": {"value": 1}}}], "p").schemas(
            {"public.orders": table()}
        )


def test_compute_fields_in_order_with_exact_numerics() -> None:
    specs = [
        {
            "type": "compute",
            "fields": {
                "total": {"expr": "decimal(price) * qty", "type": "numeric"},
                "big": "total if decimal(total) > 5 else None",
                "email": "lower(email)",
            },
        }
    ]
    after = one(specs, change()).event.after
    assert after is not None
    assert (after["total"], after["big"], after["email"]) == ("7.50", "7.50", "ann@example.com")
    shaped = build_chain(specs, "p").schemas({"public.orders": table()})["public.orders"]
    assert shaped.column("total") == Column("total", "numeric")
    assert shaped.column("big") == Column("big", "text")
    assert shaped.column("email") == Column("email", "text")  # existing column keeps its type


def test_compute_with_an_unsent_input_leaves_the_result_unsent() -> None:
    specs = [{"type": "compute", "fields": {"total": "decimal(price) * qty"}}]
    c = change(op="u", after={"id": 1, "qty": 2}, unchanged=["price"])
    out = one(specs, c)
    assert out.event.after == {"id": 1, "qty": 2}
    assert out.event.unchanged == ["price", "total"]


def test_compute_runtime_error_names_transform_table_and_key() -> None:
    specs = [
        {"type": "drop_fields", "fields": ["email"]},
        {"type": "compute", "fields": {"x": "qty * 2"}},
    ]
    c = change(after={"id": 7, "qty": None})
    with pytest.raises(
        DataError,
        match=r"transforms\[1\] \(compute\) on public.orders key \{\"id\":7\}: x = qty \* 2 failed: TypeError",
    ):
        run(specs, c)
    with pytest.raises(DataError, match="numeric columns arrive as text"):
        run([{"type": "compute", "fields": {"t": "price * qty"}}], change())


def test_compute_schema_checks() -> None:
    with pytest.raises(SchemaError, match="cannot compute key column id"):
        build_chain([{"type": "compute", "fields": {"id": "id + 1"}}], "p").schemas(
            {"public.orders": table()}
        )
    with pytest.raises(SchemaError, match=r"fields.t.expr names column\(s\) prise"):
        build_chain([{"type": "compute", "fields": {"t": "prise"}}], "p").schemas(
            {"public.orders": table()}
        )


# ---- cast ------------------------------------------------------------------------------


def test_cast_values_and_schema() -> None:
    specs = [
        {
            "type": "cast",
            "fields": {
                "price": "float",
                "qty": "str",
                "status": "bool",
                "email": "numeric",
                "id": "str",
            },
        }
    ]
    c = change(after={"id": 5, "price": "2.50", "qty": 3, "status": "yes", "email": 1.25})
    out = one(specs, c)
    assert out.event.after == {"id": "5", "price": 2.5, "qty": "3", "status": True, "email": "1.25"}
    assert out.key == {"id": "5"}
    cols = build_chain(specs, "p").schemas({"public.orders": table()})["public.orders"].columns
    assert [c.type for c in cols] == ["text", "boolean", "double precision", "text", "numeric"]
    lite = build_chain(specs, "p").schemas({"main.orders": table("main.orders", "sqlite")})
    assert [c.type for c in lite["main.orders"].columns] == [
        "TEXT",
        "BOOLEAN",
        "REAL",
        "TEXT",
        "TEXT",
    ]


@pytest.mark.parametrize(
    ("to", "value", "expected"),
    [
        ("int", "42", 42),
        ("int", "42.000", 42),
        ("int", 3.0, 3),
        ("int", True, 1),
        ("float", "NaN", "NaN"),
        ("float", "1e999", "Infinity"),
        ("float", 2, 2.0),
        ("bool", "off", False),
        ("bool", 0, False),
        ("str", [1, "a"], '[1,"a"]'),
        ("str", False, "false"),
        ("numeric", 0.1, "0.1"),
        ("numeric", 1e20, "100000000000000000000"),
        ("numeric", " 12.50 ", "12.50"),
        ("date", "2024-02-29 10:00:00+00", "2024-02-29"),
        ("timestamp", "2024-02-29T12:34:56+02:00", "2024-02-29 10:34:56"),
        ("timestamptz", "2024-02-29 10:34:56.5", "2024-02-29 10:34:56.500000+00"),
        ("timestamptz", 0, "1970-01-01 00:00:00+00"),
        ("int", None, None),
    ],
)
def test_cast_conversions(to: str, value: Any, expected: Any) -> None:
    out = one([{"type": "cast", "fields": {"v": to}}], change(after={"id": 1, "v": value}))
    assert out.event.after is not None and out.event.after["v"] == expected


@pytest.mark.parametrize(
    ("to", "value"),
    [
        ("int", "4.5"),
        ("int", 2.5),
        ("bool", "maybe"),
        ("numeric", "abc"),
        ("date", "tomorrow"),
        ("float", "x"),
    ],
)
def test_cast_failure_is_a_data_error(to: str, value: Any) -> None:
    with pytest.raises(
        DataError,
        match=r"transforms\[0\] \(cast\) on public.orders key \{\"id\":1\}: column v: cannot convert",
    ):
        run([{"type": "cast", "fields": {"v": to}}], change(after={"id": 1, "v": value}))


# ---- filter ----------------------------------------------------------------------------


def test_filter_where_and_exclude() -> None:
    batch = [
        change(after={"id": 1, "status": "draft"}),
        change(after={"id": 2, "status": "paid"}),
        change(op="d", before={"id": 3}),
        change(op="t", after=None, key={}),
    ]
    where = [{"type": "filter", "where": "op != 'd' and after['status'] != 'draft'"}]
    with pytest.raises(DataError, match=r"transforms\[0\] \(filter\).*TypeError"):
        run(where, *batch)  # the truncate has no after
    guarded = [{"type": "filter", "where": "op in ('c', 'u') and after['status'] != 'draft'"}]
    assert [c.key for c in run(guarded, *batch)] == [{"id": 2}]
    exclude = [
        {"type": "filter", "exclude": "status == 'draft' or table == 'public.orders' and id == 3"}
    ]
    assert [c.key for c in run(exclude, *batch)] == [{"id": 2}, {}]


def test_filter_on_deletes_reads_before() -> None:
    specs = [{"type": "filter", "where": "status != 'secret'"}]
    kept = change(op="d", before={"id": 1, "status": "open"})
    dropped = change(op="d", before={"id": 2, "status": "secret"})
    assert run(specs, kept, dropped) == [kept]


# ---- mask ------------------------------------------------------------------------------


def test_mask_hash_with_and_without_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASK_SALT", "s3cret")
    plain = one([{"type": "mask", "fields": ["email"], "method": "hash"}], change())
    assert plain.event.after is not None
    assert plain.event.after["email"] == hashlib.sha256(b"Ann@Example.com").hexdigest()
    specs = [{"type": "mask", "fields": ["email", "id"], "method": "hash", "salt_env": "MASK_SALT"}]
    salted = one(specs, change())
    want = hmac.new(b"s3cret", b"Ann@Example.com", hashlib.sha256).hexdigest()
    assert salted.event.after is not None and salted.event.after["email"] == want
    hashed_id = hmac.new(b"s3cret", b"1", hashlib.sha256).hexdigest()
    assert salted.key == {"id": hashed_id} and salted.event.after["id"] == hashed_id


def test_mask_redact_and_partial() -> None:
    c = change(after={"id": 1, "email": "a@b.c", "card": "4111111111111111", "pin": "12"})
    redact = one([{"type": "mask", "fields": ["email"], "method": "redact"}], c)
    assert redact.event.after is not None and redact.event.after["email"] is None
    other = one(
        [{"type": "mask", "fields": ["email"], "method": "redact", "replacement": "hidden"}], c
    )
    assert other.event.after is not None and other.event.after["email"] == "hidden"
    part = one([{"type": "mask", "fields": ["card", "pin"], "method": "partial"}], c)
    assert part.event.after is not None
    assert (part.event.after["card"], part.event.after["pin"]) == ("************1111", "**")
    chain = build_chain([{"type": "mask", "fields": ["id"], "method": "partial"}], "p")
    with pytest.raises(SchemaError, match=r"cannot mask key column\(s\) id"):
        chain.schemas({"public.orders": table()})


# ---- encrypt ---------------------------------------------------------------------------


def test_encrypt_round_trip_and_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNCLINE_FIELD_KEY", KEY)
    c = change(after={"id": 1, "card": "4111 1111", "qty": 3, "none": None})
    out = one([{"type": "encrypt", "fields": ["card", "qty", "none"]}], c)
    after = out.event.after
    assert after is not None
    assert after["card"].startswith("enc:v1:") and after["none"] is None
    key = base64.b64decode(KEY)
    assert decrypt_value(key, "public.orders", "card", after["card"]) == "4111 1111"
    assert decrypt_value(key, "public.orders", "qty", after["qty"]) == 3
    with pytest.raises(ValueError, match=r"cannot decrypt public\.orders\.qty"):
        decrypt_value(key, "public.orders", "qty", after["card"])  # moved to another column
    with pytest.raises(ValueError, match="cannot decrypt"):
        decrypt_value(key, "public.other", "card", after["card"])
    with pytest.raises(ValueError, match="cannot decrypt"):
        decrypt_value(bytes(32), "public.orders", "card", after["card"])
    tampered = after["card"][:-4] + ("AAAA" if not after["card"].endswith("AAAA") else "BBBB")
    with pytest.raises(ValueError, match="cannot decrypt"):
        decrypt_value(key, "public.orders", "card", tampered)
    again = one([{"type": "encrypt", "fields": ["card"]}], c).event.after
    assert again is not None and again["card"] != after["card"]  # a fresh nonce every time
    chain = build_chain([{"type": "encrypt", "fields": ["id"]}], "p")
    with pytest.raises(SchemaError, match=r"cannot encrypt key column\(s\) id"):
        chain.schemas({"public.orders": table()})


# ---- python ----------------------------------------------------------------------------


def split_in_two(c: Change) -> list[Change]:
    twin = msgspec.structs.replace(
        c.event, source=msgspec.structs.replace(c.event.source, table="audit")
    )
    return [c, Change(dict(c.key), twin)]


def drop_odd(c: Change) -> Change | None:
    return None if c.key.get("id", 0) % 2 else c


def returns_junk(c: Change) -> Any:
    return {"not": "a change"}


def explodes(c: Change) -> Change:
    raise RuntimeError("boom")


def audit_shape(t: TableSchema) -> TableSchema:
    return t


NOT_CALLABLE = 42


def test_python_transform_fan_out_follows_each_tables_path() -> None:
    specs = [
        {"type": "python", "function": "test_transforms:split_in_two"},
        {"type": "drop_fields", "fields": ["email"], "tables": ["public.audit"]},
        {"type": "python", "function": "test_transforms:drop_odd"},
    ]
    out = run(specs, change(after={"id": 2, "email": "e"}), change(after={"id": 3, "email": "e"}))
    assert [(c.event.table_id, c.event.after) for c in out] == [
        ("public.orders", {"id": 2, "email": "e"}),
        ("public.audit", {"id": 2}),
    ]


def test_python_transform_errors() -> None:
    with pytest.raises(
        DataError, match=r"transforms\[0\] \(python test_transforms:returns_junk\).*returned dict"
    ):
        run([{"type": "python", "function": "test_transforms:returns_junk"}], change())
    with pytest.raises(DataError, match="raised RuntimeError: boom"):
        run([{"type": "python", "function": "test_transforms:explodes"}], change())
    chain = build_chain(
        [
            {
                "type": "python",
                "function": "test_transforms:drop_odd",
                "schema": "test_transforms:audit_shape",
            }
        ],
        "p",
    )
    assert chain.schemas({"public.orders": table()}) == {"public.orders": table()}


# ---- the expression language -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("__import__('os')", "the function __import__()"),
        ("().__class__", "attribute access (.__class__)"),
        ("''.join", "attribute access (.join)"),
        ("lambda: 1", "lambda"),
        ("status.upper()", "attribute access (.upper)"),
        ("[x for x in after]", "comprehension"),
        ("{k: 1 for k in after}", "comprehension"),
        ("min(x for x in after)", "generator expression"),
        ("eval('1')", "the function eval()"),
        ("open('/etc/passwd')", "the function open()"),
        ("getattr(after, 'x')", "the function getattr()"),
        ("lower(status, x=1)", "keyword arguments"),
        ("after['x'](1)", "calling anything but a named function"),
        ("__builtins__", "the name __builtins__"),
        ("[*after]", "*unpacking"),
        ("(y := 1)", "assignment (:=)"),
        ("b'x'", "the constant b'x'"),
        ("import os", "invalid expression"),
        ("", "expression is empty"),
    ],
)
def test_expression_refusals(text: str, refused: str) -> None:
    with pytest.raises(ValueError) as err:
        compile_expr(text)
    assert refused in str(err.value)


def test_expression_language_features() -> None:
    def ev(text: str, row: dict[str, Any], op: str = "u") -> Any:
        return compile_expr(text).fn(row, op, None, row, "public.t", {"id": 1})

    row = {"a": 7, "s": "Hello", "n": None, "d": {"k": [1, 2]}, "op": "shadowed"}
    assert ev("a // 2 + a % 4 - -1", row) == 7
    assert ev("abs(-a) if a > 3 and not n else 0", row) == 7
    assert ev("s[1:3] + lower(s)[-1] + substr(s, 2, 2)", row) == "eloel"
    assert ev("d['k'][1] in (2, 3) and 'ell' in s", row) is True
    assert ev(
        "coalesce(n, a, 0) + len(s) + max(1, a) + min(a, 2) + round(2.567, 1)", row
    ) == pytest.approx(23.6)
    assert ev("startswith(s, 'He') and endswith(s, 'lo') and not startswith(n, 'x')", row)
    assert ev("op", row, "d") == "d"  # reserved names win over row fields
    assert ev("table + ':' + str(key['id'])", row) == "public.t:1"
    assert ev("hash(s) == sha256('Hello')", row)
    assert ev("int('12') + float('0.5') + bool('yes')", row) == 13.5
    assert ev("missing is None", row) is True
    assert ev("2 ** 10", row) == 1024
    with pytest.raises(ValueError, match="exponent"):
        ev("2 ** 100000", row)
    assert ev("now_iso()", row).endswith("+00:00")
    assert compile_expr("a + lower(b) + after['x'] + a").fields == ("a", "b")


# ---- bad configs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "nope"}, "transforms[0]: unknown type 'nope'; expected one of route,"),
        ({"fields": ["a"]}, "transforms[0]: missing type"),
        ({"type": "mask", "fields": ["a"]}, "transforms[0] (mask): method: Field required"),
        (
            {"type": "mask", "fields": ["a"], "method": "hash", "salt_env": "NO_SUCH_SALT_VAR"},
            "transforms[0] (mask): salt_env: environment variable NO_SUCH_SALT_VAR is not set",
        ),
        (
            {"type": "mask", "fields": ["a"], "method": "redact", "keep_last": 2},
            "transforms[0] (mask): keep_last only applies to method partial",
        ),
        (
            {"type": "mask", "fields": [], "method": "redact"},
            "transforms[0] (mask): fields: give at least one",
        ),
        (
            {"type": "drop_fields", "fields": ["a"], "colour": 1},
            "transforms[0] (drop_fields): colour: unknown key",
        ),
        ({"type": "route", "to": "a.b"}, "transforms[0] (route): give exactly one of from:"),
        ({"type": "route", "from": "a.b", "to": "a.b.c"}, "to: 'a.b.c' is not a table name"),
        ({"type": "route", "pattern": "(", "to": "a.b"}, "pattern: invalid regular expression"),
        ({"type": "route", "pattern": "p\\.(.*)", "to": "r.\\2"}, "refers to group 2"),
        (
            {"type": "cast", "fields": {"a": "money"}},
            "transforms[0] (cast): fields.a: Input should be 'int'",
        ),
        ({"type": "filter"}, "transforms[0] (filter): give exactly one of where: or exclude:"),
        (
            {"type": "filter", "where": "x.__class__"},
            "transforms[0] (filter): where: attribute access (.__class__)",
        ),
        (
            {"type": "compute", "fields": {"t": {"expr": "__import__('os')"}}},
            "transforms[0] (compute): fields.t.expr: the function __import__() is not allowed",
        ),
        ({"type": "compute", "fields": {"t": {"value": 1}}}, "fields.t.expr: Field required"),
        (
            {"type": "add_fields", "fields": {"t": {"type": "int"}}},
            "give exactly one of value: or expr:",
        ),
        (
            {"type": "encrypt", "fields": ["a"], "key_env": "NO_SUCH_KEY_VAR"},
            "key_env: environment variable NO_SUCH_KEY_VAR is not set",
        ),
        (
            {"type": "encrypt", "fields": ["a"], "key_env": "BAD_B64_KEY"},
            "BAD_B64_KEY is not valid base64",
        ),
        (
            {"type": "encrypt", "fields": ["a"], "key_env": "SHORT_KEY"},
            "SHORT_KEY decodes to 16 bytes, AES-256 needs 32",
        ),
        (
            {"type": "python", "function": "no_such_module_xyz:f"},
            "function: cannot import module no_such_module_xyz",
        ),
        (
            {"type": "python", "function": "test_transforms:nope"},
            "module test_transforms has no attribute nope",
        ),
        ({"type": "python", "function": "test_transforms:NOT_CALLABLE"}, "is not callable"),
        ({"type": "python", "function": "os.system"}, "'os.system' is not package.module:function"),
        (
            {"type": "rename_fields", "fields": {"a": "c", "b": "c"}},
            "two columns are renamed to the same name",
        ),
        ({"type": "drop_fields", "fields": ["a"], "tables": []}, "tables: empty list"),
    ],
)
def test_bad_specs_name_transform_and_field(
    spec: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BAD_B64_KEY", "not base64!!")
    monkeypatch.setenv("SHORT_KEY", base64.b64encode(bytes(16)).decode())
    specs = [{"type": "drop_fields", "fields": ["x"]}, spec]
    with pytest.raises(ValueError) as err:
        validate_specs(specs)
    assert message.replace("transforms[0]", "transforms[1]") in str(err.value)


def test_bad_spec_through_parse_config_is_one_line() -> None:
    data = {
        "pipelines": [
            {
                "name": "p",
                "source": {"kind": "sqlite", "path": "x.db", "tables": ["t"]},
                "transforms": [
                    {"type": "route", "from": "main.t", "to": "main.u"},
                    {"type": "mask", "fields": ["email"], "method": "hashh"},
                ],
                "sink": {"kind": "sqlite", "path": "y.db"},
            }
        ]
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data, "c.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("c.yaml: pipelines[0].transforms[1] (mask): method: Input should be")
    good = copy.deepcopy(data)
    good["pipelines"][0]["transforms"][1]["method"] = "hash"
    assert parse_config(good).pipelines[0].transforms[1]["method"] == "hash"


def test_yaml_config_with_env_and_regex_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SALT_FROM_ENV", "s")
    path = tmp_path / "c.yaml"
    path.write_text(
        """
pipelines:
  - name: p
    source: {kind: sqlite, path: x.db, tables: [orders]}
    transforms:
      - {type: route, pattern: "main\\\\.(.*)", to: "replica.\\\\1"}
      - {type: route, from: replica.orders, to: orders_copy}
      - {type: mask, fields: [email], method: hash, salt_env: "${SALT_ENV_NAME:-SALT_FROM_ENV}"}
    sink: {kind: sqlite, path: y.db}
"""
    )
    cfg = load_config(path).pipelines[0]
    out = build_chain(cfg.transforms, cfg.name).apply([change(table="main.orders")])
    assert out[0].event.table_id == "replica.orders_copy"
    assert out[0].event.after is not None and len(out[0].event.after["email"]) == 64
