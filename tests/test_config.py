"""Config loading: the shape from DESIGN.md, ${ENV} interpolation, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncline.config import PostgresSourceConfig, load_config
from syncline.errors import ConfigError

GOOD = """
pipelines:
  - name: orders-to-inventory
    source:    {kind: postgres, dsn: "${ORDERS_DSN}", tables: [public.orders, items], snapshot: initial}
    transport: {kind: embedded, path: ./.syncline}
    transforms: []
    sink:
      kind: postgres
      dsn: "${INVENTORY_DSN:-postgresql://localhost/inventory}"
      tables:
        public.orders: {target: public.orders_replica}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "syncline.yaml"
    p.write_text(text)
    return p


def test_good_config_loads_with_env_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"ORDERS_DSN": "postgresql://a/orders"})
    p = cfg.pipelines[0]
    assert isinstance(p.source, PostgresSourceConfig)
    assert p.source.dsn == "postgresql://a/orders"
    assert p.source.tables == ["public.orders", "public.items"]
    assert p.sink.kind == "postgres"
    assert p.sink.dsn == "postgresql://localhost/inventory"  # type: ignore[union-attr]
    assert p.sink.tables["public.orders"].target == "public.orders_replica"
    assert p.transport.partitions == 4
    assert cfg.pipeline("orders-to-inventory") is p


BAD = [
    ("pipelines: [", "invalid YAML at line"),
    ("- just a list", "expected a mapping with a 'pipelines' list"),
    ("pipelines: []", "pipelines: List should have at least 1 item"),
    (
        "pipelines: [{name: a, source: {kind: postgres, dsn: x, tables: [t]}, sink: {kind: sqlite, path: y}, extra: 1}]",
        "pipelines[0].extra: unknown key",
    ),
    (
        "pipelines: [{name: a, source: {kind: oracle, dsn: x}, sink: {kind: sqlite, path: y}}]",
        "pipelines[0].source: unknown kind 'oracle'",
    ),
    (
        "pipelines: [{name: a, source: {kind: postgres, tables: [t]}, sink: {kind: sqlite, path: y}}]",
        "pipelines[0].source.dsn: Field required",
    ),
    (
        "pipelines: [{name: a, source: {kind: postgres, dsn: x, tables: [t], snapshot: sometimes}, sink: {kind: sqlite, path: y}}]",
        "pipelines[0].source.snapshot: Input should be 'initial' or 'never'",
    ),
    (
        "pipelines: [{name: a, source: {kind: postgres, dsn: x, tables: ['a.b.c']}, sink: {kind: sqlite, path: y}}]",
        "is not a table name",
    ),
    (
        "pipelines: [{name: Bad Name, source: {kind: sqlite, path: x, tables: [t]}, sink: {kind: sqlite, path: y}}]",
        "pipelines[0].name: use lowercase letters, digits, - and _",
    ),
    (
        "pipelines: [{name: a, source: {kind: sqlite, path: x, tables: [t]}, sink: {kind: sqlite, path: y}, batch: {max_events: zero}}]",
        "pipelines[0].batch.max_events: Input should be a valid integer",
    ),
    (
        "pipelines: [{name: a, source: {kind: sqlite, path: x, tables: [t]}, sink: {kind: sqlite, path: y}},"
        " {name: a, source: {kind: sqlite, path: x, tables: [t]}, sink: {kind: sqlite, path: y}}]",
        "pipeline name 'a' is used twice",
    ),
    (
        "pipelines: [{name: a, source: {kind: postgres, dsn: '${NOPE_NOT_SET}', tables: [t]}, sink: {kind: sqlite, path: y}}]",
        "environment variable NOPE_NOT_SET is not set",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[b[1][:40] for b in BAD])
def test_bad_config_gives_one_line_naming_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(tmp_path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_pipeline_name(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"ORDERS_DSN": "x"})
    with pytest.raises(ConfigError, match="no pipeline named 'zzz'"):
        cfg.pipeline("zzz")
