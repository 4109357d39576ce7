"""Answers "where is the change to table T, key K?" from the monitoring store.

``find`` returns the recorded changes of one key (most recent first), each with
its stages in order — committed at the source, captured, published to the log,
applied to the target — or the failure that stopped it. The CLI's ``syncline
trace`` prints them; the REST API returns ``TraceRecord.to_dict()``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from syncline.config import MonitoringConfig
from syncline.errors import ConfigError
from syncline.monitoring.records import HELD
from syncline.monitoring.store import open_store

MAX_KEY_COLUMNS_PERMUTED = 5  # composite keys are matched in any column order up to this


@dataclass(slots=True)
class Stage:
    name: str  # committed | captured | published | applied | dead_lettered | held
    at_us: int
    detail: str = ""

    @property
    def at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.at_us / 1e6, dt.UTC)


@dataclass(slots=True)
class TraceRecord:
    pipeline: str
    table: str
    key: str
    position: str
    correlation_id: str | None
    op: str | None
    status: str  # captured | published | applied | dead_lettered | held
    error: str | None
    stages: list[Stage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "table": self.table,
            "key": msgspec.json.decode(self.key) if self.key.startswith("{") else self.key,
            "position": self.position,
            "correlation_id": self.correlation_id,
            "op": self.op,
            "status": self.status,
            "error": self.error,
            "stages": [
                {"stage": s.name, "at": s.at.isoformat(), "at_us": s.at_us, "detail": s.detail}
                for s in self.stages
            ],
        }


def key_variants(key: Mapping[str, Any] | str) -> list[str]:
    """The encoded forms a key can have in the log: the log keeps the primary key's
    column order, which the caller may not know, so every order is tried."""
    if isinstance(key, str):
        try:
            key = msgspec.json.decode(key)
        except msgspec.DecodeError as exc:
            raise ConfigError(
                f"--key must be a JSON object such as '{{\"id\": 5}}': {exc}"
            ) from exc
    if not isinstance(key, Mapping) or not key:
        raise ConfigError("--key must be a non-empty JSON object such as '{\"id\": 5}'")
    items = list(key.items())
    if len(items) > MAX_KEY_COLUMNS_PERMUTED:
        orders: Any = [items]
    else:
        orders = itertools.permutations(items)
    return list(dict.fromkeys(msgspec.json.encode(dict(o)).decode() for o in orders))


def find(
    cfg: MonitoringConfig,
    *,
    table: str | None = None,
    key: Mapping[str, Any] | str | None = None,
    correlation_id: str | None = None,
    pipeline: str | None = None,
    limit: int = 20,
) -> list[TraceRecord]:
    """Recorded changes of ``table``/``key`` (or the one with ``correlation_id``), newest first."""
    if correlation_id is None and (table is None or key is None):
        raise ConfigError("trace needs --table and --key, or --id")
    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    keys = key_variants(key) if key is not None else []
    store = open_store(cfg, create=False)
    try:
        rows = store.query(
            table=table, keys=keys, cid=correlation_id, pipeline=pipeline, limit=limit
        )
    finally:
        store.close()
    return [_record(r) for r in rows]


def _record(r: dict[str, Any]) -> TraceRecord:
    stages: list[Stage] = []
    if r["committed_us"] is not None:
        stages.append(Stage("committed", r["committed_us"], "source commit"))
    if r["captured_us"] is not None:
        stages.append(Stage("captured", r["captured_us"], f"position {r['position']}"))
    if r["published_us"] is not None:
        where = f"partition {r['log_partition']}" if r["log_partition"] is not None else ""
        if r["log_offset"] is not None:
            where += f", offset {r['log_offset']}"
        stages.append(Stage("published", r["published_us"], where))
    failed = r["failed_us"]
    applied = r["applied_us"]
    if failed is not None:
        stages.append(Stage(r["failure"] or "failed", failed, r["error"] or ""))
    if applied is not None:
        after_failure = " (dead-letter replay)" if failed is not None and applied > failed else ""
        stages.append(Stage("applied", applied, f"{r['target'] or ''}{after_failure}"))
    stages.sort(key=lambda s: s.at_us)
    if applied is not None and (failed is None or applied > failed):
        status = "applied"
    elif failed is not None:
        status = r["failure"] or "failed"
    elif r["published_us"] is not None:
        status = "published"
    else:
        status = "captured"
    return TraceRecord(
        pipeline=r["pipeline"],
        table=r["tbl"],
        key=r["key"],
        position=r["position"],
        correlation_id=r["cid"],
        op=r["op"],
        status=status,
        error=r["error"] if status in ("dead_lettered", HELD, "failed") else None,
        stages=stages,
    )


def render(records: list[TraceRecord]) -> list[str]:
    """Human-readable lines for the CLI."""
    out: list[str] = []
    for rec in records:
        out.append(
            f"{rec.table} {rec.key} op={rec.op or '?'} position {rec.position} "
            f"[{rec.status}] id={rec.correlation_id} ({rec.pipeline})"
        )
        first = rec.stages[0].at_us if rec.stages else 0
        for s in rec.stages:
            delta = (s.at_us - first) / 1000.0
            when = s.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            detail = f"  {s.detail}" if s.detail else ""
            out.append(f"  {s.name:<14} {when}  +{delta:,.1f} ms{detail}")
    return out
