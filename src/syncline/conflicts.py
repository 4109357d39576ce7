"""Conflict resolution shared by the SQL sinks, and the parked-conflicts store the CLI uses.

``lww``, ``source_wins`` and ``target_wins`` run inside the sinks' set statements.
The code here covers the two strategies that have to look at single changes: ``custom``, where a
user function decides each change, and ``manual``, which splits a batch into changes to
apply and changes to park. Both start from the target's current rows for the
batch's keys, which the sink fetches with one query per table (``Fetch``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec

from syncline.config import ConflictConfig, PipelineConfig
from syncline.errors import ConfigError, DataError
from syncline.events import Change, ChangeEvent, Op, Row

log = logging.getLogger("syncline.conflicts")

Decision = str | Row  # "apply", "skip" or the merged row to write
Resolver = Callable[[ChangeEvent, Row | None], Decision]

_json = msgspec.json.Encoder(order="sorted")


class ConflictNotFound(ConfigError):
    """The conflict id given on the command line does not name an open conflict."""


def load_resolver(ref: str, where: str) -> Resolver:
    """Import ``module:function`` once, at sink start, so a typo stops the pipeline early."""
    module_name, _, func_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs user code: any failure is the user's to fix
        raise ConfigError(
            f"conflict resolver {ref} ({where}) cannot be imported: {type(exc).__name__}: {exc}; "
            "check the module name and that it is on PYTHONPATH"
        ) from exc
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        what = "has no" if fn is None else "has a non-callable"
        raise ConfigError(
            f"conflict resolver {ref} ({where}): module {module_name} {what} {func_name}"
        )
    return fn  # type: ignore[no-any-return]


def key_text(key: Row) -> str:
    """The key as canonical JSON (sorted names): how parked conflicts are looked up."""
    return _json.encode(key).decode()


def short(value: Any, limit: int = 300) -> str:
    """JSON of ``value`` for a log line: long strings cut to 60 characters, the whole to ``limit``."""

    def cut(v: Any) -> Any:
        if isinstance(v, str) and len(v) > 60:
            return v[:57] + "..."
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list):
            return [cut(x) for x in v[:10]]
        return v

    try:
        text = _json.encode(cut(value)).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_conflict(table: str, key: Any, outcome: str, incoming: Any, current: Any) -> None:
    log.info(
        "conflict on %s key %s: %s; incoming %s; current %s",
        table,
        short(key, 120),
        outcome,
        short(incoming),
        short(current),
    )


def log_lost(table: str, count: int, reason: str) -> None:
    log.info("%d change(s) to %s kept the target's row: %s", count, table, reason)


# ---- custom and manual: deciding change by change ------------------------------------


@dataclass(slots=True)
class KeyState:
    """What the target holds for one key when the batch starts."""

    row: Row | None  # the current row (None: no such row)
    clean: bool = True  # the row is exactly as syncline last wrote it
    live: bool = False  # syncline wrote this key and has not deleted it since
    open: bool = False  # an earlier change of the key is parked and unresolved


@dataclass(slots=True)
class Parked:
    """A change kept out of the target until someone resolves it."""

    table_id: str
    key: Row
    event: ChangeEvent
    current: Row | None
    first: bool  # met the conflict itself (False: queued behind an open conflict)


@dataclass(slots=True)
class Prefiltered:
    changes: list[Change]  # what goes on to the set statements, in log order
    parked: list[Parked] = field(default_factory=list)
    conflicts: int = 0  # changes parked, skipped or rewritten by a resolver
    dropped: int = 0  # changes not passed on (parked or skipped)
    # manual: keys deleted locally whose incoming delete agrees; the sink forgets their
    # shadow rows first, so a re-creation folded into the same batch is not a conflict
    forget: dict[str, list[Row]] = field(default_factory=dict)


Fetch = Callable[[str, list[Row]], list[KeyState]]


def _locally_changed(state: KeyState, op: str) -> bool:
    """Manual: the target row was changed (or deleted) by someone else since syncline wrote it."""
    if state.row is not None:
        return not state.clean
    return state.live and op != Op.DELETE  # deleted locally; a delete agrees with that


def _image_after(current: Row | None, event: ChangeEvent) -> Row | None:
    if event.op == Op.DELETE:
        return None
    after = event.after or {}
    if event.unchanged and current is not None:
        return {**current, **after}
    return dict(after)


def _merged(change: Change, merged: Row, current: Row) -> Change:
    """A resolver's row as an update; columns it leaves out keep the target's values."""
    row = {**merged, **change.key}
    missing = [c for c in current if c not in row]
    ev = msgspec.structs.replace(change.event, op=Op.UPDATE, after=row, unchanged=missing or None)
    return Change(change.key, ev)


def prefilter(
    changes: Sequence[Change],
    rules: Mapping[str, ConflictConfig],
    resolvers: Mapping[str, Resolver],
    fetch: Fetch,
) -> Prefiltered:
    """Apply the custom and manual rules of ``rules`` (by source table) to ``changes``.

    ``resolvers`` maps each custom rule's ``module:function`` to the loaded function.

    The current rows come from ``fetch`` once per table. Custom: every change whose
    key exists in the target (as it stands after the batch's earlier changes) goes
    to the resolver. Manual: a key whose target row was changed locally, or that
    has an open conflict, has all its changes in the batch parked, in order.
    """
    keys: dict[str, dict[str, Row]] = {}
    for ch in changes:
        table_id = ch.event.table_id
        if table_id in rules and ch.event.op != Op.TRUNCATE and ch.key:
            keys.setdefault(table_id, {}).setdefault(key_text(ch.key), ch.key)
    states: dict[tuple[str, str], KeyState] = {}
    for table_id, by_text in keys.items():
        found = fetch(table_id, list(by_text.values()))
        states.update(((table_id, kt), st) for kt, st in zip(by_text, found, strict=True))

    out = Prefiltered(changes=[])
    current: dict[tuple[str, str], Row | None] = {}  # custom: the row as the batch leaves it
    parked: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()  # manual: keys already judged in this batch
    truncated: set[str] = set()
    for ch in changes:
        ev = ch.event
        table_id = ev.table_id
        rule = rules.get(table_id)
        if rule is None or not ch.key:
            out.changes.append(ch)
            continue
        if ev.op == Op.TRUNCATE:
            truncated.add(table_id)
            for k in [k for k in current if k[0] == table_id]:
                current[k] = None
            out.changes.append(ch)
            continue
        slot = (table_id, key_text(ch.key))
        state = states[slot]
        if rule.strategy == "manual":
            if slot not in seen:
                seen.add(slot)
                if state.row is None and state.live and not state.open and ev.op == Op.DELETE:
                    out.forget.setdefault(table_id, []).append(ch.key)
                if state.open or (table_id not in truncated and _locally_changed(state, ev.op)):
                    parked.add(slot)
                    out.parked.append(Parked(table_id, ch.key, ev, state.row, not state.open))
                    log_conflict(
                        table_id,
                        ch.key,
                        "parked (an earlier change is parked)" if state.open else "parked",
                        ev.after if ev.op != Op.DELETE else {"deleted": ch.key},
                        state.row,
                    )
                    out.conflicts += 1
                    out.dropped += 1
                    continue
            elif slot in parked:
                out.parked.append(Parked(table_id, ch.key, ev, state.row, False))
                out.conflicts += 1
                out.dropped += 1
                continue
            out.changes.append(ch)
            continue
        # custom
        cur = current.get(slot, state.row)
        if cur is None:
            current[slot] = _image_after(None, ev)
            out.changes.append(ch)
            continue
        assert rule.resolver is not None
        decision = _decide(resolvers[rule.resolver], rule.resolver, ch, cur)
        if decision == "apply":
            current[slot] = _image_after(cur, ev)
            out.changes.append(ch)
        elif decision == "skip":
            out.conflicts += 1
            out.dropped += 1
            log_conflict(table_id, ch.key, f"resolver {rule.resolver} skipped it", ev.after, cur)
        else:
            assert isinstance(decision, dict)
            merged = _merged(ch, decision, cur)
            current[slot] = {**cur, **(merged.event.after or {})}
            out.changes.append(merged)
            out.conflicts += 1
            log_conflict(
                table_id, ch.key, f"resolver {rule.resolver} merged it", merged.event.after, cur
            )
    return out


def _decide(resolver: Resolver, ref: str, change: Change, current: Row) -> Decision:
    try:
        decision = resolver(change.event, current)
    except Exception as exc:
        raise DataError(
            f"conflict resolver {ref} failed on {change.event.table_id} key "
            f"{short(change.key, 80)}: {type(exc).__name__}: {exc}"
        ) from exc
    if decision in ("apply", "skip") or isinstance(decision, dict):
        return decision
    raise DataError(
        f"conflict resolver {ref} returned {short(decision, 60)} for {change.event.table_id} key "
        f"{short(change.key, 80)}; expected 'apply', 'skip' or a dict (the row to write)"
    )


# ---- the parked-conflicts store --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conflict:
    """One parked change, as ``syncline conflicts`` shows it."""

    id: int
    pipeline: str
    table: str  # the target table
    source_table: str
    key: Row
    incoming: dict[str, Any]  # the parked change event (Debezium layout)
    current: Row | None  # the target row when the change was parked
    detected_at: str
    status: str  # open | resolved
    resolution: str | None = None
    resolved_at: str | None = None

    @property
    def op(self) -> str:
        return str(self.incoming.get("op", "?"))


@runtime_checkable
class ConflictStore(Protocol):
    """What a sink offers ``syncline conflicts`` (the conflicts table of its database)."""

    @property
    def where(self) -> str: ...

    def list_conflicts(
        self, pipeline: str | None = None, include_resolved: bool = False
    ) -> list[Conflict]: ...

    def get_conflict(self, conflict_id: int) -> Conflict | None: ...

    def resolve_conflict(self, conflict_id: int, use: str) -> list[int]:
        """Settle ``conflict_id`` with ``use`` (incoming | current); the ids marked resolved."""
        ...

    def close(self) -> None: ...


def open_store(pipeline: PipelineConfig) -> ConflictStore:
    """The conflicts store in the sink database of ``pipeline`` (no connection yet)."""
    from syncline.factory import build_sink

    sink = build_sink(pipeline.sink, pipeline.name)
    if not isinstance(sink, ConflictStore):  # pragma: no cover - every SQL sink is one
        raise ConfigError(
            f"the {pipeline.sink.kind} sink of pipeline {pipeline.name} keeps no conflicts"
        )
    return sink


def parked_changes(rows: Sequence[tuple[int, Row, bytes | str]]) -> list[tuple[int, Change]]:
    """(id, key, incoming event JSON) rows as changes to apply, in id order."""
    from syncline.events import decode_value

    out = []
    for conflict_id, key, incoming in rows:
        data = incoming.encode() if isinstance(incoming, str) else incoming
        out.append((conflict_id, Change(key, decode_value(data))))
    return out


def check_use(use: str) -> None:
    if use not in ("incoming", "current"):
        raise ConfigError(f"--use must be incoming or current, not {use!r}")
