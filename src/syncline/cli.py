"""Command line: ``syncline run|check|demo``.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. A user
error prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from syncline import __version__
from syncline.config import load_config
from syncline.errors import ConfigError, SynclineError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Keep microservices' databases in sync in real time, exactly once.",
)

ConfigArg = Annotated[
    Path, typer.Argument(help="Path to the YAML config file.", show_default=False)
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
) -> None:
    """Run the pipelines until SIGINT/SIGTERM, then drain and exit."""
    from syncline.runtime import Runtime

    _setup_logging(log_level)
    try:
        cfg = load_config(config)
        runtime = Runtime(cfg, pipeline or ())
        # Fail fast on what a user can fix (typo in a host, wrong password, missing
        # table); once running, outages are retried instead.
        for p in runtime.pipelines:
            p.check()
        code = runtime.run(drain_timeout=drain_timeout)
    except SynclineError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


@app.command()
def check(config: ConfigArg) -> None:
    """Validate the config and connect to every source, log and sink (changes nothing)."""
    from syncline.pipeline import Pipeline

    try:
        cfg = load_config(config)
    except SynclineError as exc:
        raise _fail(exc) from None
    typer.echo(f"{config}: config ok ({len(cfg.pipelines)} pipeline(s))")
    failed = False
    for p in cfg.pipelines:
        try:
            for note in Pipeline(p).check():
                typer.echo(f"  {p.name}: {note}")
            typer.echo(f"{p.name}: ok")
        except SynclineError as exc:
            typer.echo(f"{p.name}: error: {exc}", err=True)
            failed = True
    raise typer.Exit(1 if failed else 0)


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


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"syncline {__version__}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
