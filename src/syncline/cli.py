"""Command line: ``syncline run|check|demo|conflicts|dlq|slots|trace``.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. A user
error prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from syncline import __version__
from syncline.config import Config, load_config
from syncline.errors import ConfigError, SynclineError, for_pipeline, naming
from syncline.gctune import tune_for_throughput

if TYPE_CHECKING:
    from syncline.conflicts import Conflict, ConflictStore

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Keep microservices' databases in sync in real time, exactly once.",
)

ConfigArg = Annotated[
    Path, typer.Argument(help="Path to the YAML config file.", show_default=False)
]


def _setup_logging(level: str, fmt: str = "text") -> None:
    from syncline.observability.logs import setup_logging

    setup_logging(level, fmt, sys.stderr)


def _fail(exc: SynclineError) -> typer.Exit:
    typer.echo(f"syncline: error: {exc}", err=True)
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


@app.command()
def run(
    config: ConfigArg,
    pipeline: Annotated[
        list[str] | None,
        typer.Option("--pipeline", "-p", help="Run only this pipeline (repeatable)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to drain on SIGINT/SIGTERM.")
    ] = 10.0,
    role: Annotated[
        str,
        typer.Option(
            help="all: capture and apply; capture or apply: one side only (run more "
            "apply processes to share a pipeline's partitions)."
        ),
    ] = "all",
    worker_id: Annotated[
        str | None,
        typer.Option(help="Name of this apply worker (default: host, and pid for --role apply)."),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            "--api",
            metavar="HOST:PORT",
            help="Serve the management REST API here (overrides api.listen; docs/api.md).",
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="text (for people) or json (one object per line).")
    ] = "text",
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (overrides metrics.listen).",
            metavar="HOST:PORT",
        ),
    ] = None,
) -> None:
    """Run the pipelines until SIGINT/SIGTERM, then drain and exit."""
    from syncline.api.settings import resolve_settings
    from syncline.runtime import Runtime

    runtime: Runtime | None = None
    server = None
    try:
        _setup_logging(log_level, log_format)
        cfg = load_config(config)
        settings = resolve_settings(cfg.api, api)
        runtime = Runtime(
            cfg,
            pipeline or (),
            role=role,
            worker_id=worker_id,
            api=settings,
            log_format=log_format,
        )
        # Fail fast on what a user can fix (typo in a host, wrong password, missing
        # table); once running, outages are retried instead.
        for p in runtime.pipelines:
            try:
                p.check(source=role != "apply", sink=role != "capture")
            except SynclineError as exc:
                raise for_pipeline(exc, p.name) from exc
        listen = metrics or cfg.metrics.listen
        if listen:
            from syncline.observability.prometheus import serve_metrics

            pipes = runtime
            server = serve_metrics(lambda: pipes.pipelines, listen)
        tune_for_throughput()
        try:
            code = runtime.run(drain_timeout=drain_timeout)
        finally:
            if server is not None:
                server.close()
    except SynclineError as exc:
        for p in runtime.pipelines if runtime is not None else ():
            p.transport.close()  # nothing was started; release the log files
        raise _fail(exc) from None
    for p in runtime.pipelines:
        if p.stats.state == "failed":  # the log said it already; this is the line to act on
            typer.echo(f"syncline: error: {naming(p.name, p.stats.error or 'failed')}", err=True)
    raise typer.Exit(code)


@app.command()
def check(config: ConfigArg) -> None:
    """Validate the config and connect to every source, log and sink (creates the embedded log if missing)."""
    from syncline.api.settings import resolve_settings
    from syncline.pipeline import Pipeline

    try:
        cfg = load_config(config)
        api = resolve_settings(cfg.api)  # tokens read from the environment as run would
    except SynclineError as exc:
        raise _fail(exc) from None
    typer.echo(f"{config}: config ok ({len(cfg.pipelines)} pipeline(s))")
    if api is not None:
        typer.echo(f"api: {api.host}:{api.port}, {len(api.tokens)} token(s)")
    code = 0
    for p in cfg.pipelines:
        try:
            for note in Pipeline(p).check():
                typer.echo(f"  {p.name}: {note}")
            typer.echo(f"{p.name}: ok")
        except SynclineError as exc:
            typer.echo(f"syncline: error: {naming(p.name, str(exc))}", err=True)
            code = max(code, 2 if isinstance(exc, ConfigError) else 1)
    if cfg.monitoring.enabled:
        from syncline.monitoring.store import open_store

        try:
            open_store(cfg.monitoring).close()
            typer.echo(f"monitoring store ({cfg.monitoring.store.kind}): ok")
        except SynclineError as exc:
            typer.echo(f"syncline: error: monitoring store: {exc}", err=True)
            code = max(code, 1)
    raise typer.Exit(code)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="How long the change generator runs.")] = 10.0,
    rate: Annotated[int, typer.Option(help="Target changes per second from the generator.")] = 2000,
    workdir: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the demo databases here (default: a temp dir)."),
    ] = None,
) -> None:
    """Sync two SQLite service databases (orders → inventory) live, then verify them."""
    from syncline.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        ok = run_demo(seconds=seconds, rate=rate, workdir=workdir)
    except SynclineError as exc:
        raise _fail(exc) from None
    raise typer.Exit(0 if ok else 1)


# ---- conflicts -----------------------------------------------------------------------

conflicts_app = typer.Typer(
    no_args_is_help=True,
    help="List, inspect and resolve changes parked by conflict strategy manual.",
)
app.add_typer(conflicts_app, name="conflicts")

PipelineOpt = Annotated[
    str | None,
    typer.Option("--pipeline", "-p", help="Only this pipeline (default: every pipeline)."),
]
IdArg = Annotated[int, typer.Argument(help="The conflict id (see conflicts list).")]


def _pipelines(cfg: Config, pipeline: str | None) -> list[Any]:
    return [cfg.pipeline(pipeline)] if pipeline else list(cfg.pipelines)


def _find(cfg: Config, conflict_id: int, pipeline: str | None) -> tuple[ConflictStore, Conflict]:
    """The store holding ``conflict_id`` of one of the selected pipelines."""
    from syncline.conflicts import ConflictNotFound, open_store

    hits: list[tuple[ConflictStore, Conflict]] = []
    for p in _pipelines(cfg, pipeline):
        store = open_store(p)
        found = store.get_conflict(conflict_id)
        if found is not None and found.pipeline == p.name:
            hits.append((store, found))
        else:
            store.close()
    if not hits:
        where = f"pipeline {pipeline}" if pipeline else "the sinks of this config"
        raise ConflictNotFound(f"no conflict {conflict_id} in {where}; see syncline conflicts list")
    if len(hits) > 1:
        for store, _ in hits:
            store.close()
        names = ", ".join(c.pipeline for _, c in hits)
        raise ConfigError(f"conflict {conflict_id} exists for pipelines {names}; pick one with -p")
    return hits[0]


@conflicts_app.command("list")
def conflicts_list(
    config: ConfigArg,
    pipeline: PipelineOpt = None,
    include_resolved: Annotated[
        bool, typer.Option("--all", help="Include resolved conflicts.")
    ] = False,
) -> None:
    """List parked conflicts (open ones unless --all)."""
    from syncline.conflicts import open_store, short

    rows: list[Conflict] = []
    try:
        cfg = load_config(config)
        for p in _pipelines(cfg, pipeline):
            store = open_store(p)
            try:
                rows += store.list_conflicts(p.name, include_resolved)
            finally:
                store.close()
    except SynclineError as exc:
        raise _fail(exc) from None
    if not rows:
        typer.echo("no conflicts" if include_resolved else "no open conflicts")
        return
    header = ("ID", "PIPELINE", "TABLE", "KEY", "OP", "STATUS", "DETECTED")
    table = [header] + [
        (str(c.id), c.pipeline, c.table, short(c.key, 40), c.op, c.status, c.detected_at)
        for c in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@conflicts_app.command("show")
def conflicts_show(config: ConfigArg, conflict_id: IdArg, pipeline: PipelineOpt = None) -> None:
    """Show one conflict: the target's row beside the parked change, column by column."""
    from syncline.conflicts import short

    try:
        store, c = _find(load_config(config), conflict_id, pipeline)
        store.close()
    except SynclineError as exc:
        raise _fail(exc) from None
    state = c.status + (f" ({c.resolution}, {c.resolved_at})" if c.resolution else "")
    typer.echo(f"conflict {c.id}: {state}")
    typer.echo(f"  pipeline {c.pipeline}, table {c.table} (source {c.source_table})")
    typer.echo(f"  key {short(c.key)}, op {c.op}, detected {c.detected_at}")
    after = c.incoming.get("after") if c.op != "d" else None
    current = c.current or {}
    columns = list(dict.fromkeys([*current, *(after or {})]))
    typer.echo(
        "  column: current -> incoming" + ("  (incoming deletes the row)" if c.op == "d" else "")
    )
    for col in columns:
        old = short(current.get(col), 60) if c.current is not None else "(no row)"
        new = short((after or {}).get(col), 60) if after is not None else "(deleted)"
        if after is not None and col not in after:
            new = "(unchanged)"
        mark = "  " if old == new else "* "
        typer.echo(f"  {mark}{col}: {old} -> {new}")
    typer.echo(f"  incoming event: {short(c.incoming, 2000)}")


@conflicts_app.command("resolve")
def conflicts_resolve(
    config: ConfigArg,
    conflict_id: IdArg,
    use: Annotated[
        str,
        typer.Option(
            "--use",
            help="incoming: apply the parked change, then the key's later parked changes; "
            "current: keep the target's row.",
        ),
    ],
    pipeline: PipelineOpt = None,
) -> None:
    """Settle a parked conflict with the incoming change or the target's current row."""
    from syncline.conflicts import check_use

    try:
        check_use(use)
        store, _ = _find(load_config(config), conflict_id, pipeline)
        try:
            ids = store.resolve_conflict(conflict_id, use)
        finally:
            store.close()
    except SynclineError as exc:
        raise _fail(exc) from None
    if use == "current":
        typer.echo(f"conflict {conflict_id} resolved: kept the target's current row")
        return
    later = ", ".join(map(str, ids[1:]))
    then = f"; then applied later parked change(s) {later}" if later else ""
    typer.echo(f"conflict {conflict_id} resolved: applied the incoming change{then}")


def _register_subcommands() -> None:
    from syncline.cli_dlq import dlq_app
    from syncline.cli_slots import slots_app
    from syncline.cli_trace import trace

    app.command()(trace)

    app.add_typer(dlq_app, name="dlq")
    app.add_typer(slots_app, name="slots")


_register_subcommands()


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"syncline {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
