"""The command line: help on every verb, exit codes, one-line errors, the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e_helpers import syncline


@pytest.mark.parametrize("verb", ["run", "check", "demo", "version"])
def test_every_verb_has_help(verb: str) -> None:
    result = syncline(verb, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_no_args_prints_usage() -> None:
    result = syncline()
    assert result.returncode == 2
    assert "Usage:" in result.stdout + result.stderr


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "pipelines: [{name: a, source: {kind: sqlite, path: x, tables: [t]}, sink: {kind: nope}}]\n"
    )
    for verb in ("run", "check"):
        result = syncline(verb, str(cfg))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"syncline: error: {cfg}: pipelines[0].sink: unknown kind 'nope'; expected one of 'postgres', 'sqlite'"
        ]


def test_missing_config_file(tmp_path: Path) -> None:
    result = syncline("check", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_sqlite_missing_source_file_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"pipelines: [{{name: a, source: {{kind: sqlite, path: {tmp_path}/nope.db, tables: [t]}},"
        f" transport: {{path: {tmp_path}/log}}, sink: {{kind: sqlite, path: {tmp_path}/out.db}}}}]\n"
    )
    result = syncline("check", str(cfg))
    assert result.returncode == 1
    assert "nope.db" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_and_verifies(tmp_path: Path) -> None:
    result = syncline(
        "demo", "--seconds", "3", "--rate", "1000", "--dir", str(tmp_path), timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "source and target are identical" in result.stdout
    assert (tmp_path / "inventory.db").exists()
