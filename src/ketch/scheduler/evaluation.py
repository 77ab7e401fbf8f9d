"""Deciding task instances: per-run upstream tallies and the cascade of decisions.

Each run the loop touches gets a :class:`RunTally`: every TI's state and, per task, the
counts of its direct upstreams by finished state. It is built from one query when first
needed and then kept up to date as tries end (O(out-degree) per change), so evaluating
the downstream of a finished task never re-counts a 10,000-upstream join from the database.
The tally is a cache: it is dropped whenever someone else may have changed the run
(``needs_evaluation``) and rebuilt from the database, which stays the source of truth.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance, XCom
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.trigger_rules import (
    Decision,
    UpstreamCounts,
    decide,
    expand_follow,
    skipped_by_branch,
)
from ketch.states import FINISHED_TI_STATES, TaskInstanceState

BRANCH_XCOM_KEY = "__branch__"
_FINISHED = frozenset(s.value for s in FINISHED_TI_STATES)
_CHUNK = 500


@dataclass(eq=False)
class RunTally:
    """The in-memory view of one run's TI states, for O(changed) decisions."""

    dag_run_id: int
    info: DagInfo
    states: dict[str, str | None]
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    follow: dict[str, set[str]] = field(default_factory=dict)  # branch task -> kept tasks
    unfinished: int = 0
    # depends_on_past tasks whose previous run does not let them run yet; set by the
    # caller before each evaluation pass (see ketch.scheduler.past_deps).
    past_blocked: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        dag_run_id: int,
        info: DagInfo,
        states: dict[str, str | None],
        branch_choices: dict[str, Any],
    ) -> RunTally:
        tally = cls(dag_run_id, info, states)
        tally.counts = {tid: Counter() for tid in info.dag.tasks}
        for task_id, state in states.items():
            task = info.task(task_id)
            if state not in _FINISHED:
                tally.unfinished += 1
            elif task is not None:
                for down in task.downstream_task_ids:
                    tally.counts[down][state] += 1
        for task_id, value in branch_choices.items():
            tally.record_branch(task_id, value)
        return tally

    def record_branch(self, task_id: str, value: Any) -> None:
        """Remember what a finished branch task chose (its ``__branch__`` XCom)."""
        chosen = [value] if isinstance(value, str) else list(value or [])
        self.follow[task_id] = expand_follow(chosen, self._descendants)

    def _descendants(self, task_id: str) -> frozenset[str]:
        if self.info.task(task_id) is None:
            return frozenset()
        return self.info.descendants(task_id)

    def set_state(self, task_id: str, new: str | None) -> None:
        old = self.states.get(task_id)
        if old == new or task_id not in self.states:
            return
        self.states[task_id] = new
        self.unfinished += (old in _FINISHED) - (new in _FINISHED)
        task = self.info.task(task_id)
        for down in task.downstream_task_ids if task else ():
            if old in _FINISHED:
                self.counts[down][old] -= 1
            if new in _FINISHED:
                self.counts[down][new] += 1

    def decide(self, task_id: str) -> Decision:
        task = self.info.task(task_id)
        if task is None:
            return Decision.WAIT
        if self._short_circuited(task_id):
            return Decision.SKIPPED
        branch_parents = self.info.branch_ids.intersection(task.upstream_task_ids)
        if branch_parents and skipped_by_branch(
            task_id, (self.follow.get(p) for p in branch_parents if self.states.get(p) in _FINISHED)
        ):
            return Decision.SKIPPED
        counts = UpstreamCounts.from_tally(self.counts[task_id], len(task.upstream_task_ids))
        decision = decide(task.trigger_rule, counts)
        if decision == Decision.RUN and task_id in self.past_blocked:
            return Decision.WAIT  # Airflow's PrevDagrunDep: it keeps no state, it waits
        return decision

    def _short_circuited(self, task_id: str) -> bool:
        """A short-circuit task above it (ignoring trigger rules) succeeded and followed
        nothing: Airflow's ShortCircuitOperator skips all its descendants at once."""
        circuits = self.info.short_circuit_ancestors.get(task_id)
        if not circuits:
            return False
        return any(
            self.states.get(sc) == TaskInstanceState.SUCCESS.value and self.follow.get(sc) == set()
            for sc in circuits
        )


def cascade(tally: RunTally, candidates: Iterable[str]) -> dict[str, Decision]:
    """Decide every NULL-state candidate; final states cascade to their downstream tasks."""
    work = deque(candidates)
    decided: dict[str, Decision] = {}
    while work:
        task_id = work.popleft()
        if tally.states.get(task_id, "absent") is not None:
            continue
        decision = tally.decide(task_id)
        if decision == Decision.WAIT:
            continue
        decided[task_id] = decision
        tally.set_state(task_id, decision.value)
        if decision != Decision.RUN:
            task = tally.info.task(task_id)
            work.extend(task.downstream_task_ids if task else ())
    return decided


def downstream_of(tally: RunTally, task_ids: Iterable[str]) -> list[str]:
    """Direct downstream tasks of ``task_ids``, deduplicated, in first-seen order."""
    seen: dict[str, None] = {}
    for task_id in task_ids:
        task = tally.info.task(task_id)
        for down in task.downstream_task_ids if task else ():
            seen.setdefault(down, None)
    return list(seen)


def write_decisions(
    session: Session, dag_run_id: int, decided: dict[str, Decision], now: datetime
) -> None:
    """Persist decisions in bulk; only TIs still without a state change (a guard against races)."""
    by_state: dict[Decision, list[str]] = {}
    for task_id, decision in decided.items():
        by_state.setdefault(decision, []).append(task_id)
    for decision, task_ids in by_state.items():
        values: dict[str, Any] = {"state": decision.value}
        if decision != Decision.RUN:
            values.update(start_date=now, end_date=now, duration=0.0)
        for i in range(0, len(task_ids), _CHUNK):
            session.execute(
                update(TaskInstance)
                .where(
                    TaskInstance.dag_run_id == dag_run_id,
                    TaskInstance.task_id.in_(task_ids[i : i + _CHUNK]),
                    TaskInstance.state.is_(None),
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )


def load_branch_choices(
    session: Session, dag_run_id: int, task_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    stmt = select(XCom.task_id, XCom.value).where(
        XCom.dag_run_id == dag_run_id, XCom.key == BRANCH_XCOM_KEY
    )
    if task_ids is not None:
        stmt = stmt.where(XCom.task_id.in_(list(task_ids)))
    return {task_id: value for task_id, value in session.execute(stmt)}


class TallyStore:
    """An LRU of :class:`RunTally` by dag_run_id (bounded so finished runs age out)."""

    def __init__(self, max_runs: int = 512) -> None:
        self._tallies: OrderedDict[int, RunTally] = OrderedDict()
        self._max = max_runs
        self._lock = threading.Lock()

    def drop(self, dag_run_id: int) -> None:
        with self._lock:
            self._tallies.pop(dag_run_id, None)

    def clear(self) -> None:
        with self._lock:
            self._tallies.clear()

    def get(self, session: Session, dag_run_id: int, info: DagInfo) -> RunTally:
        with self._lock:
            tally = self._tallies.get(dag_run_id)
            if tally is not None and tally.info is info:
                self._tallies.move_to_end(dag_run_id)
                return tally
        tally = self.build(session, dag_run_id, info)
        with self._lock:
            self._tallies[dag_run_id] = tally
            while len(self._tallies) > self._max:
                self._tallies.popitem(last=False)
        return tally

    @staticmethod
    def build(session: Session, dag_run_id: int, info: DagInfo) -> RunTally:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state).where(
                TaskInstance.dag_run_id == dag_run_id
            )
        )
        states = {task_id: state for task_id, state in rows}
        choices = load_branch_choices(session, dag_run_id) if info.branch_ids else {}
        choices = {
            tid: value
            for tid, value in choices.items()
            if states.get(tid) == TaskInstanceState.SUCCESS.value
        }
        return RunTally.build(dag_run_id, info, states, choices)
