"""``syncline trace``: where is the change to a key? (the monitoring store, observability.md)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from syncline.config import load_config
from syncline.errors import ConfigError, SynclineError

ConfigArg = Annotated[
    Path, typer.Argument(help="Path to the YAML config file.", show_default=False)
]


def trace(
    config: ConfigArg,
    table: Annotated[
        str | None, typer.Option("--table", "-t", help="Source table (schema.table or name).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Primary key as JSON, e.g. '{\"id\": 5}'."),
    ] = None,
    correlation_id: Annotated[
        str | None, typer.Option("--id", help="A correlation id (cid) from a log line.")
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", "-p", help="Only this pipeline (default: every pipeline)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many changes, newest first.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where is the change to a key? Captured, published, applied, or failed with what."""
    from syncline.monitoring.trace import find, render

    try:
        cfg = load_config(config)
        if not cfg.monitoring.enabled:
            raise ConfigError(
                f"{config}: monitoring is not enabled (add monitoring: {{enabled: true}})"
            )
        if pipeline is not None:
            cfg.pipeline(pipeline)  # a one-line error for an unknown name
        records = find(
            cfg.monitoring,
            table=table,
            key=key,
            correlation_id=correlation_id,
            pipeline=pipeline,
            limit=limit,
        )
    except SynclineError as exc:
        typer.echo(f"syncline: error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        what = f"id {correlation_id}" if correlation_id else f"{table} key {key}"
        typer.echo(f"no recorded changes for {what} (within monitoring.retention_hours)")
        raise typer.Exit(1)
    for line in render(records):
        typer.echo(line)
