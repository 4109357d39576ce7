"""The ordered chain of a pipeline's transforms, applied between the log and the sink.

Which transforms touch a table is worked out once per table id (following the
renames ``route`` makes on the way) and cached, so a change runs through just
the steps that apply to it; a table no transform matches costs one dict lookup,
and an empty chain returns the batch as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import cast

from syncline.errors import SchemaError
from syncline.events import Change
from syncline.schema import TableSchema
from syncline.transforms.base import Transform

Plan = tuple[Transform, ...]
Step = Callable[[Change], Change | None]


class Chain:
    def __init__(self, transforms: Sequence[Transform], pipeline: str) -> None:
        self.transforms: Plan = tuple(transforms)
        self.pipeline = pipeline
        self._plans: dict[str, Plan] = {}  # from the first transform, by source table id
        self._tails: dict[tuple[int, str], Plan] = {}  # from a later one (after python steps)
        # by source table id, for tables without python steps: the bound apply methods
        self._steps: dict[str, tuple[Step, ...]] = {}

    def __len__(self) -> int:
        return len(self.transforms)

    def plan(self, table_id: str, start: int = 0) -> Plan:
        """The transforms a change of ``table_id`` goes through, from index ``start`` on."""
        cache_key = (start, table_id)
        hit = self._plans.get(table_id) if start == 0 else self._tails.get(cache_key)
        if hit is not None:
            return hit
        steps = []
        tid = table_id
        for t in self.transforms[start:]:
            if t.matches(tid):
                steps.append(t)
                tid = t.route(tid)
        plan = tuple(steps)
        if start == 0:
            self._plans[table_id] = plan
        else:
            self._tails[cache_key] = plan
        return plan

    def apply(self, changes: Sequence[Change]) -> list[Change]:
        """Run each change through its table's steps; dropped changes are left out."""
        if not self.transforms:
            return changes if isinstance(changes, list) else list(changes)
        out: list[Change] = []
        known = self._steps
        for change in changes:
            src = change.event.source
            tid = src.schema + "." + src.table
            steps = known.get(tid)
            if steps is None:
                steps = self._compile(tid)
                if steps is None:  # a python step may fan out or move the change
                    self._run(change, self.plan(tid), out)
                    continue
            for step in steps:
                result = step(change)
                if result is None:
                    break
                change = result
            else:
                out.append(change)
        return out

    def _compile(self, table_id: str) -> tuple[Step, ...] | None:
        """Bound apply methods for the common case: no step returns lists or moves tables."""
        plan = self.plan(table_id)
        if any(t.dynamic for t in plan):
            return None
        steps = self._steps[table_id] = tuple(cast(Step, t.apply) for t in plan)
        return steps

    def _run(self, change: Change, steps: Plan, out: list[Change]) -> None:
        for t in steps:
            result = t.apply(change)
            if result is None:
                return
            if type(result) is list:  # fan-out: each change continues on its own table's path
                for c in result:
                    self._run(c, self.plan(c.event.table_id, t.index + 1), out)
                return
            assert isinstance(result, Change)
            if t.dynamic:  # it may have moved the change to another table
                self._run(result, self.plan(result.event.table_id, t.index + 1), out)
                return
            change = result
        out.append(change)

    def schemas(self, schemas: Mapping[str, TableSchema]) -> dict[str, TableSchema]:
        """Table shapes as the sink will see them, keyed by (routed) table id."""
        if not self.transforms:
            return dict(schemas)
        out: dict[str, TableSchema] = {}
        origin: dict[str, str] = {}
        for table_id, table in schemas.items():
            shaped = self._shape(table_id, table)
            if shaped is None:
                continue
            tid = shaped.table_id
            prev = out.get(tid)
            if prev is not None and (
                [c.name for c in prev.columns] != [c.name for c in shaped.columns]
                or prev.key != shaped.key
            ):
                raise SchemaError(
                    f"pipeline {self.pipeline}: tables {origin[tid]} and {table_id} both go to "
                    f"{tid} after the transforms but have different columns or keys; route them "
                    "to different tables or make their shapes match"
                )
            out[tid] = shaped
            origin.setdefault(tid, table_id)
        return out

    def _shape(self, table_id: str, table: TableSchema) -> TableSchema | None:
        steps = self.plan(table_id)
        shaped: TableSchema | None = table
        i = 0
        while i < len(steps):
            t = steps[i]
            assert shaped is not None
            before = shaped.table_id
            shaped = t.schema(shaped)
            if shaped is None:
                return None
            if t.dynamic and shaped.table_id != before:
                steps, i = self.plan(shaped.table_id, t.index + 1), 0
                continue
            i += 1
        return shaped
