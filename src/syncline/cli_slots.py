"""``syncline slots list|drop``: see and remove PostgreSQL replication slots.

A slot keeps every WAL segment its consumer has not confirmed, so a slot left by a
stopped or deleted pipeline fills the server's disk. ``list`` shows each slot of
the config's source servers (or of ``--dsn``) with the WAL it retains and the
pipeline that owns it; ``drop`` removes an inactive one after asking.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from syncline.config import PostgresSourceConfig, load_config
from syncline.errors import ConfigError, PermanentError, SynclineError

if TYPE_CHECKING:
    from syncline.sources.postgres.errors import Endpoint
    from syncline.sources.postgres.slots import SlotStatus

slots_app = typer.Typer(
    no_args_is_help=True,
    help="List and drop PostgreSQL replication slots and see the WAL each one retains.",
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file: look at its PostgreSQL sources' servers."),
]
DsnOpt = Annotated[
    str | None,
    typer.Option("--dsn", help="Look at this PostgreSQL server instead (libpq URL or key=value)."),
]
PipelineOpt = Annotated[
    str | None,
    typer.Option("--pipeline", "-p", help="Only this pipeline's source server."),
]


class SlotNotFound(ConfigError):
    """The slot named on the command line does not exist."""


class SlotActive(PermanentError):
    """A process is streaming from the slot; dropping it would break that consumer."""


@dataclasses.dataclass
class _Server:
    ep: Endpoint
    owners: dict[tuple[str, str], str]  # (slot, database) → pipeline


def _fail(exc: SynclineError) -> typer.Exit:
    typer.echo(f"syncline: error: {exc}", err=True)
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


def _servers(config: Path | None, dsn: str | None, pipeline: str | None) -> list[_Server]:
    """The servers to look at, each with the configured pipelines whose slots live there."""
    try:
        from syncline.sources.postgres.errors import endpoint
        from syncline.sources.postgres.source import default_slot
    except ImportError as exc:
        raise ConfigError(
            f"PostgreSQL support needs the 'postgres' extra: pip install 'syncline[postgres]' ({exc})"
        ) from exc
    if config is None and dsn is None:
        raise ConfigError("give a config file (-c CONFIG) or a server (--dsn DSN)")
    if pipeline and config is None:
        raise ConfigError("--pipeline needs a config file (-c CONFIG)")
    eps: dict[str, Endpoint] = {}
    owners: dict[str, dict[tuple[str, str], str]] = {}
    if config is not None:
        cfg = load_config(config)
        chosen = [cfg.pipeline(pipeline)] if pipeline else list(cfg.pipelines)
        for p in chosen:
            if isinstance(p.source, PostgresSourceConfig):
                ep = endpoint(p.source.dsn, p.name)
                slot = p.source.slot or default_slot(p.name)
                eps.setdefault(ep.where, ep)
                owners.setdefault(ep.where, {})[(slot, ep.dbname)] = p.name
        if not eps and dsn is None:
            which = f"pipeline {pipeline} has no" if pipeline else "no pipeline has a"
            raise ConfigError(f"{config}: {which} PostgreSQL source")
    if dsn is not None:
        # host names may differ between the config and --dsn; match owners by slot and database
        every = {k: v for by_server in owners.values() for k, v in by_server.items()}
        return [_Server(endpoint(dsn, "", label="--dsn"), every)]
    return [_Server(eps[w], owners[w]) for w in eps]


def _slots(server: _Server) -> list[SlotStatus]:
    import psycopg2

    from syncline.sources.postgres.errors import connect, translate
    from syncline.sources.postgres.slots import list_slots

    conn = connect(server.ep)
    try:
        with conn.cursor() as cur:
            return list_slots(cur, conn.server_version)
    except psycopg2.Error as exc:
        raise translate(exc, server.ep, "listing replication slots") from exc
    finally:
        conn.close()


def _active(s: SlotStatus) -> str:
    if not s.active:
        return "no"
    return f"yes (pid {s.active_pid})" if s.active_pid else "yes"


@slots_app.command("list")
def slots_list(config: ConfigOpt = None, dsn: DsnOpt = None, pipeline: PipelineOpt = None) -> None:
    """List every replication slot with the WAL it retains and the pipeline that owns it."""
    from syncline.metrics import pretty_bytes

    try:
        servers = _servers(config, dsn, pipeline)
    except SynclineError as exc:
        raise _fail(exc) from None
    failed = False
    for server in servers:
        try:
            rows = _slots(server)
        except SynclineError as exc:
            typer.echo(f"syncline: error: {exc}", err=True)
            failed = True
            continue
        n = len(rows)
        typer.echo(f"{server.ep.where}: {n} replication slot{'s' if n != 1 else ''}")
        if not rows:
            continue
        header = (
            "SLOT",
            "PLUGIN",
            "TYPE",
            "DATABASE",
            "ACTIVE",
            "RETAINED",
            "WAL_STATUS",
            "PIPELINE",
        )
        table = [header] + [
            (
                s.name,
                s.plugin or "-",
                s.slot_type,
                s.database or "-",
                _active(s),
                pretty_bytes(s.retained_bytes),
                s.wal_status or "-",
                server.owners.get((s.name, s.database or ""), "-"),
            )
            for s in rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            typer.echo(
                "  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
    raise typer.Exit(1 if failed else 0)


def _find(servers: list[_Server], name: str) -> tuple[_Server, SlotStatus]:
    hits = [(srv, s) for srv in servers for s in _slots(srv) if s.name == name]
    if not hits:
        where = ", ".join(srv.ep.where for srv in servers)
        raise SlotNotFound(f"no replication slot {name} at {where}; see syncline slots list")
    if len(hits) > 1:
        where = " and ".join(srv.ep.where for srv, _ in hits)
        raise ConfigError(f"replication slot {name} exists at {where}; pick one with -p or --dsn")
    return hits[0]


def _drop(server: _Server, slot: SlotStatus) -> None:
    import psycopg2

    from syncline.sources.postgres import catalog
    from syncline.sources.postgres.errors import connect, translate

    # a logical slot can only be dropped from a connection to its own database
    ep = dataclasses.replace(server.ep, dbname=slot.database or server.ep.dbname)
    conn = connect(ep, dbname=ep.dbname)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            catalog.drop_slot(cur, slot.name)
    except psycopg2.errors.ObjectInUse as exc:
        raise SlotActive(
            f"replication slot {slot.name} at {ep.where} became active meanwhile; not dropped"
        ) from exc
    except psycopg2.Error as exc:
        raise translate(exc, ep, f"dropping replication slot {slot.name}") from exc
    finally:
        conn.close()


@slots_app.command("drop")
def slots_drop(
    name: Annotated[str, typer.Argument(help="The slot's name (see slots list).")],
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    pipeline: PipelineOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop an inactive replication slot so the server can remove the WAL it retains."""
    from syncline.metrics import pretty_bytes

    try:
        servers = _servers(config, dsn, pipeline)
        server, slot = _find(servers, name)
        where = server.ep.where
        if slot.active:
            pid = f"pid {slot.active_pid}" if slot.active_pid else "another process"
            raise SlotActive(
                f"replication slot {name} at {where} is active (held by {pid}); "
                "stop its consumer first"
            )
        db = f"database {slot.database}, " if slot.database else ""
        typer.echo(
            f"replication slot {name} at {where} ({db}{slot.plugin or slot.slot_type}) "
            f"retains {pretty_bytes(slot.retained_bytes)} of WAL"
        )
        owner = server.owners.get((name, slot.database or ""))
        if owner:
            typer.echo(
                f"syncline: warning: pipeline {owner} captures through this slot: dropped, the "
                "pipeline loses its place and refuses to start until its log is reset for a "
                "new snapshot",
                err=True,
            )
        if not yes:
            try:
                ok = typer.confirm(f"drop replication slot {name}?", default=False)
            except typer.Abort:
                raise ConfigError(
                    f"no answer, replication slot {name} kept (pass --yes to drop without asking)"
                ) from None
            if not ok:
                typer.echo(f"replication slot {name} kept")
                raise typer.Exit(1)
        _drop(server, slot)
    except SynclineError as exc:
        raise _fail(exc) from None
    typer.echo(f"dropped replication slot {name} at {where}")
