"""The dispatcher splits a batch into single-origin runs, in log order."""

from __future__ import annotations

from syncline.events import Change, ChangeEvent, SourceInfo
from syncline.pipeline import origin_runs


def ch(i: int, origin: str | None) -> Change:
    src = SourceInfo(
        connector="postgresql", name="p", ts_ms=0, db="d", schema="s", table="t", origin=origin
    )
    return Change({"id": i}, ChangeEvent(after={"id": i}, source=src, op="c", ts_ms=0))


def test_single_origin_is_one_run() -> None:
    assert origin_runs([ch(1, None), ch(2, None)]) == [(0, 2)]
    assert origin_runs([]) == []


def test_mixed_origins_split_into_consecutive_runs() -> None:
    batch = [ch(1, None), ch(2, "a"), ch(3, "a"), ch(1, None), ch(4, "b")]
    assert origin_runs(batch) == [(0, 1), (1, 3), (3, 4), (4, 5)]
