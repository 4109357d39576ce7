"""Request and response bodies of the management API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error, whatever its status: one line saying what is wrong."""

    error: str


class PipelineSummary(BaseModel):
    name: str
    state: str
    error: str | None
    source: str  # kind
    sink: str  # kind


class PipelineInfo(BaseModel):
    name: str
    state: str
    config: dict[str, Any] = Field(description="The pipeline's config, passwords redacted.")


class ActionResult(BaseModel):
    name: str
    state: str
    message: str


class PartitionLag(BaseModel):
    partition: int
    end_offset: int = Field(description="Next offset the log will write.")
    applied_offset: int | None = Field(description="Next offset the sink has committed.")
    lag: int | None = Field(description="Events in the log not yet applied (None: not ours).")


class TransportLag(BaseModel):
    total: int | None
    partitions: list[PartitionLag]
    error: str | None = None


class Latency(BaseModel):
    p50_ms: float
    p99_ms: float


class DlqCounts(BaseModel):
    dead_lettered: int
    held: int
    replayed: int
    open: int
    entries: dict[str, int] = Field(description="Entries in the queue file by status.")


class Snapshot(BaseModel):
    rows: int
    total: int | None


class PipelineStatus(BaseModel):
    name: str
    state: str = Field(
        description="starting | snapshot | running | degraded | paused | standby | "
        "stopping | stopped | failed"
    )
    error: str | None
    worker_id: str
    role: str
    captured: int
    published: int
    applied: int
    skipped: int
    batches: int
    retries: int
    source_position: dict[str, Any]
    slot_retained_wal_bytes: int | None
    snapshot: Snapshot | None
    transport_lag: TransportLag
    apply_latency: Latency
    dlq: DlqCounts
    owned_partitions: list[int] | None


class DeadLetterEntry(BaseModel):
    id: int
    pipeline: str
    partition: int
    offset: int
    table: str
    key: str
    status: str
    error_class: str | None
    error: str | None
    attempts: int
    blocked_by: int | None
    first_failed_at: float
    last_failed_at: float
    updated_at: float


class DeadLetterDetail(DeadLetterEntry):
    event: Any = Field(description="The original event (JSON), or its text if undecodable.")


class ReplayRequest(_Body):
    ids: list[int] | None = None
    all: bool = False
    table: str | None = None
    wait: float = Field(
        default=0.0, ge=0, le=60, description="Seconds to wait for a running pipeline's outcome."
    )


class ReplayOutcome(BaseModel):
    id: int
    status: str
    error: str | None


class ReplayResult(BaseModel):
    queued: list[int]
    worker_running: bool
    entries: list[ReplayOutcome]


class PurgeRequest(_Body):
    ids: list[int] | None = None
    all: bool = False
    table: str | None = None
    replayed: bool = Field(default=False, description="Drop the history of replayed entries.")


class PurgeResult(BaseModel):
    deleted: int
    released: list[int] = Field(description="Held entries now queued to be applied.")


class ConflictEntry(BaseModel):
    id: int
    pipeline: str
    table: str
    source_table: str
    key: dict[str, Any]
    op: str
    status: str
    detected_at: str
    resolution: str | None
    resolved_at: str | None


class ConflictDetail(ConflictEntry):
    incoming: dict[str, Any]
    current: dict[str, Any] | None


class ResolveRequest(_Body):
    use: Literal["incoming", "current"]


class ResolveResult(BaseModel):
    id: int
    use: str
    resolved: list[int]


class ValidateResult(BaseModel):
    valid: bool
    error: str | None = None
    pipelines: list[str] = Field(default_factory=list)


class Check(BaseModel):
    pipeline: str
    component: Literal["source", "transport", "sink", "pipeline"]
    ok: bool
    detail: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: list[Check] = Field(default_factory=list)


class Deleted(BaseModel):
    name: str
    deleted: bool


class Caller(BaseModel):
    name: str
    role: str = Field(description="viewer | operator | admin")
    open_access: bool = Field(description="The API has no tokens: every local caller is admin.")


class TraceStage(BaseModel):
    stage: str = Field(
        description="committed | captured | published | applied | dead_lettered | held"
    )
    at: str
    at_us: int
    detail: str


class TraceEntry(BaseModel):
    pipeline: str
    table: str
    key: Any
    position: str
    correlation_id: str | None
    op: str | None
    status: str
    error: str | None
    stages: list[TraceStage]
