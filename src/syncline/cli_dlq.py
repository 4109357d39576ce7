"""``syncline dlq list|show|replay|purge``: the dead-letter queue from the command line.

The CLI only marks entries; the pipeline's apply worker applies replays (between
its batches, so replayed events never race live ones of the same key). When the
pipeline is running, ``replay`` waits for the outcome and reports it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from syncline.config import Config, PipelineConfig, load_config
from syncline.dlq import (
    DEAD,
    OPEN_STATUSES,
    REPLAY,
    REPLAYED,
    REPLAYING,
    DeadLetter,
    DeadLetterStore,
    dlq_file,
)
from syncline.errors import ConfigError, SynclineError

dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Inspect, replay and purge events that could not be applied.",
)

ConfigArg = Annotated[
    Path, typer.Argument(help="Path to the YAML config file.", show_default=False)
]
PipelineOpt = Annotated[
    str | None,
    typer.Option("--pipeline", "-p", help="The pipeline (needed when the config has several)."),
]
IdsArg = Annotated[
    list[int] | None, typer.Argument(help="Entry ids (see dlq list).", show_default=False)
]
TableOpt = Annotated[
    str | None, typer.Option("--table", "-t", help="Only entries of this source table.")
]


def _fail(exc: SynclineError) -> typer.Exit:
    typer.echo(f"syncline: error: {exc}", err=True)
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def _selected(cfg: Config, pipeline: str | None, *, one: bool) -> list[PipelineConfig]:
    if pipeline:
        return [cfg.pipeline(pipeline)]
    if one and len(cfg.pipelines) > 1:
        names = ", ".join(p.name for p in cfg.pipelines)
        raise ConfigError(f"the config has several pipelines ({names}); pick one with -p")
    return list(cfg.pipelines)


@contextmanager
def _store(p: PipelineConfig) -> Iterator[DeadLetterStore]:
    if not p.dlq.enabled:
        raise ConfigError(f"pipeline {p.name} has the dead-letter queue disabled (dlq.enabled)")
    store = DeadLetterStore(p.dlq_dir, p.name, create=False)
    try:
        yield store
    finally:
        store.close()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _table_name(p: PipelineConfig, table: str | None) -> str | None:
    if table is None or "." in table:
        return table
    return f"{'main' if p.source.kind == 'sqlite' else 'public'}.{table}"


@dlq_app.command("list")
def dlq_list(
    config: ConfigArg,
    pipeline: PipelineOpt = None,
    table: TableOpt = None,
    include_replayed: Annotated[
        bool, typer.Option("--all", help="Include entries already replayed.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many per pipeline.")] = 100,
) -> None:
    """List dead-lettered (and held) events, oldest first."""
    rows: list[DeadLetter] = []
    try:
        cfg = load_config(config)
        for p in _selected(cfg, pipeline, one=False):
            if not p.dlq.enabled or not dlq_file(p.dlq_dir, p.name).exists():
                continue
            with _store(p) as store:
                statuses = (*OPEN_STATUSES, REPLAYED) if include_replayed else OPEN_STATUSES
                rows += store.entries(statuses=statuses, table=_table_name(p, table), limit=limit)
    except SynclineError as exc:
        raise _fail(exc) from None
    if not rows:
        typer.echo("the dead-letter queue is empty")
        return
    header = ("ID", "PIPELINE", "TABLE", "KEY", "STATUS", "TRIES", "FAILED AT", "ERROR")
    table_rows = [header] + [
        (
            str(e.id),
            e.pipeline,
            e.source_table,
            _short(e.key_text, 30),
            e.status + (f" (behind #{e.blocked_by})" if e.status == "held" else ""),
            str(e.attempts),
            _when(e.last_failed_at),
            _short(f"{e.error_class}: {e.error}" if e.error else "", 70),
        )
        for e in rows
    ]
    widths = [max(len(r[i]) for r in table_rows) for i in range(len(header))]
    for r in table_rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@dlq_app.command("show")
def dlq_show(
    config: ConfigArg,
    entry_id: Annotated[int, typer.Argument(help="The entry id (see dlq list).")],
    pipeline: PipelineOpt = None,
) -> None:
    """Show one entry: why it failed, how often, and the original event."""
    try:
        (p,) = _selected(load_config(config), pipeline, one=True)
        with _store(p) as store:
            e = store.get(entry_id)
    except SynclineError as exc:
        raise _fail(exc) from None
    typer.echo(f"entry {e.id}: {e.status}")
    typer.echo(f"  pipeline {e.pipeline}, table {e.source_table}, key {e.key_text}")
    typer.echo(f"  log position: partition {e.partition}, offset {e.offset}")
    if e.error:
        typer.echo(f"  error: {e.error_class}: {e.error}")
    if e.blocked_by:
        typer.echo(f"  held behind entry {e.blocked_by} (same key, earlier in the log)")
    typer.echo(
        f"  attempts {e.attempts}, first failed {_when(e.first_failed_at)}, "
        f"last failed {_when(e.last_failed_at)}, updated {_when(e.updated_at)}"
    )
    try:
        event = json.dumps(json.loads(e.value), indent=2, sort_keys=True)
    except ValueError:
        event = repr(e.value)  # the undecodable event itself
    typer.echo("  event:")
    for line in event.splitlines():
        typer.echo(f"    {line}")


def _pick(
    store: DeadLetterStore, ids: list[int] | None, all_: bool, table: str | None
) -> list[int]:
    if ids and (all_ or table):
        raise ConfigError("give entry ids, or --all / --table, not both")
    if ids:
        return ids
    if not (all_ or table):
        raise ConfigError("say which entries: ids, --table TABLE or --all")
    return [e.id for e in store.entries(statuses=(DEAD,), table=table)]


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigArg,
    ids: IdsArg = None,
    pipeline: PipelineOpt = None,
    table: TableOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead entry.")] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for a running pipeline to apply them.")
    ] = 60.0,
) -> None:
    """Apply dead entries again, in their original order, with the events held behind them.

    Fix the cause first (schema, constraint, transform). A running pipeline applies
    them between batches and this waits for the outcome; otherwise they are
    applied when the pipeline next starts.
    """
    try:
        (p,) = _selected(load_config(config), pipeline, one=True)
        with _store(p) as store:
            queued = store.request_replay(_pick(store, ids, all_, _table_name(p, table)))
            if not queued:
                typer.echo("nothing to replay")
                return
            if not store.worker_running():
                typer.echo(
                    f"queued {len(queued)} entries of pipeline {p.name} for replay; "
                    "they are applied in order when the pipeline runs"
                )
                return
            outcome = _await(store, queued, wait)
    except SynclineError as exc:
        raise _fail(exc) from None
    done = [e for e in outcome if e.status == REPLAYED]
    failed = [e for e in outcome if e.status == DEAD]
    pending = [e for e in outcome if e.status in (REPLAY, REPLAYING)]
    held = [e for e in outcome if e.status == "held"]
    typer.echo(f"replayed {len(done)} of {len(queued)} entries of pipeline {p.name}")
    for e in failed:
        typer.echo(f"  #{e.id} failed again: {e.error_class}: {e.error}")
    if held:
        typer.echo(f"  {len(held)} entries wait behind the failed ones (same key)")
    if pending:
        typer.echo(f"  {len(pending)} not applied yet after {wait:.0f}s; see syncline dlq list")
    raise typer.Exit(1 if failed or pending else 0)


def _await(store: DeadLetterStore, ids: list[int], wait: float) -> list[DeadLetter]:
    deadline = time.monotonic() + wait
    while True:
        outcome = [store.get(i) for i in ids]
        if all(e.status not in (REPLAY, REPLAYING) for e in outcome):
            return outcome
        if time.monotonic() >= deadline or not store.worker_running():
            return outcome
        time.sleep(0.1)


@dlq_app.command("purge")
def dlq_purge(
    config: ConfigArg,
    ids: IdsArg = None,
    pipeline: PipelineOpt = None,
    table: TableOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="Every open entry.")] = False,
    replayed: Annotated[
        bool, typer.Option("--replayed", help="Remove the history of replayed entries.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop entries for good; events held behind a purged entry are then applied."""
    try:
        (p,) = _selected(load_config(config), pipeline, one=True)
        with _store(p) as store:
            if replayed:
                if ids or all_ or table:
                    raise ConfigError("--replayed takes no ids, --all or --table")
                typer.echo(f"removed {store.purge_replayed()} replayed entries")
                return
            if ids and (all_ or table):
                raise ConfigError("give entry ids, or --all / --table, not both")
            if not (ids or all_ or table):
                raise ConfigError("say which entries: ids, --table TABLE or --all")
            chosen = ids or [e.id for e in store.entries(table=_table_name(p, table))]
            if not chosen:
                typer.echo("nothing to purge")
                return
            if not yes and not typer.confirm(
                f"drop {len(chosen)} entries of pipeline {p.name} without applying them?"
            ):
                raise typer.Exit(1)
            deleted, released = store.purge(chosen)
    except SynclineError as exc:
        raise _fail(exc) from None
    msg = f"purged {deleted} entries of pipeline {p.name}"
    if released:
        msg += f"; {len(released)} held events behind them will now be applied"
    typer.echo(msg)
