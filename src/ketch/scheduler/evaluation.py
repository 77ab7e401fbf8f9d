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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
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
from ketch.states import FINISHED_TI_STATES, TaskInstanceState, mapped_task_state_of_counts

BRANCH_XCOM_KEY = "__branch__"
_FINISHED = frozenset(s.value for s in FINISHED_TI_STATES)
_REMOVED = TaskInstanceState.REMOVED.value
_CHUNK = 500


@dataclass(eq=False)
class RunTally:
    """The in-memory view of one run's TI states, for O(changed) decisions.

    ``states`` has one entry per task. An expanded mapped task's entry is the aggregate of
    its instances (``instances``); the upstream counts of its downstream tasks count every
    instance, as Airflow's TriggerRuleDep does, and ``extra_upstreams`` holds how many
    instances beyond one each task's upstreams have.
    """

    dag_run_id: int
    info: DagInfo
    states: dict[str, str | None]
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    follow: dict[str, set[str]] = field(default_factory=dict)  # branch task -> kept tasks
    unfinished: int = 0
    # depends_on_past tasks whose previous run does not let them run yet; set by the
    # caller before each evaluation pass (see ketch.scheduler.past_deps).
    past_blocked: frozenset[str] = frozenset()
    instances: dict[str, dict[int, str | None]] = field(default_factory=dict)
    instance_counts: dict[str, Counter[str | None]] = field(default_factory=dict)
    extra_upstreams: Counter[str] = field(default_factory=Counter)

    @classmethod
    def build(
        cls,
        dag_run_id: int,
        info: DagInfo,
        rows: Iterable[tuple[str, int, str | None]],
        branch_choices: dict[str, Any],
    ) -> RunTally:
        tally = cls(dag_run_id, info, {})
        tally.counts = {tid: Counter() for tid in info.dag.tasks}
        mapped: dict[str, dict[int, str | None]] = {}
        for task_id, map_index, state in rows:
            if map_index >= 0:
                mapped.setdefault(task_id, {})[map_index] = state
            else:
                tally.states[task_id] = state
            if state not in _FINISHED:
                tally.unfinished += 1
            task = info.task(task_id)
            if state in _FINISHED and task is not None:
                for down in task.downstream_task_ids:
                    tally.counts[down][state] += 1
        for task_id, states in mapped.items():
            tally._add_instances(task_id, states)
        for task_id, value in branch_choices.items():
            tally.record_branch(task_id, value)
        return tally

    def _add_instances(self, task_id: str, states: dict[int, str | None]) -> None:
        self.instances[task_id] = states
        self.instance_counts[task_id] = Counter(states.values())
        self.states[task_id] = self._aggregate(task_id)
        task = self.info.task(task_id)
        for down in task.downstream_task_ids if task else ():
            self.extra_upstreams[down] += len(states) - 1

    def expanded(self, task_id: str, length: int, state: str | None) -> None:
        """A mapped task's placeholder became ``length`` instances in ``state``."""
        if self.states.get(task_id, "absent") is None:
            self.unfinished -= 1
        self.unfinished += length
        self._add_instances(task_id, dict.fromkeys(range(length), state))

    def revised(self, task_id: str, revision: Revision) -> None:
        """A mapped task's instances were revised: ``added`` ones (no state) exist now,
        ``removed`` ones are ``removed``."""
        instances = self.instances[task_id]
        task = self.info.task(task_id)
        for index in revision.added:
            instances[index] = None
            self.instance_counts[task_id][None] += 1
            self.unfinished += 1
            for down in task.downstream_task_ids if task else ():
                self.extra_upstreams[down] += 1
        for index in revision.removed:
            self._set_instance_state(task_id, instances, index, _REMOVED)
        self.skip_instances(task_id, revision.skipped)

    def skip_instances(self, task_id: str, indexes: Iterable[int]) -> None:
        """Instances a mapped branch's same-index instance did not follow were skipped
        (see scheduler/mapped_branch.py)."""
        instances = self.instances[task_id]
        for index in indexes:
            self._set_instance_state(task_id, instances, index, TaskInstanceState.SKIPPED.value)
        self.states[task_id] = self._aggregate(task_id)

    def _aggregate(self, task_id: str) -> str | None:
        """One state for a mapped task's instances (see ``mapped_task_state``)."""
        return mapped_task_state_of_counts(self.instance_counts[task_id])

    def record_branch(self, task_id: str, value: Any) -> None:
        """Remember what a finished branch task chose (its ``__branch__`` XCom)."""
        chosen = [value] if isinstance(value, str) else list(value or [])
        self.follow[task_id] = expand_follow(chosen, self._descendants)

    def _descendants(self, task_id: str) -> frozenset[str]:
        if self.info.task(task_id) is None:
            return frozenset()
        return self.info.descendants(task_id)

    def set_state(self, task_id: str, new: str | None, map_index: int = -1) -> None:
        instances = self.instances.get(task_id)
        if instances is not None:
            self._set_instance_state(task_id, instances, map_index, new)
            return
        old = self.states.get(task_id)
        if old == new or task_id not in self.states:
            return
        self.states[task_id] = new
        self._count_change(task_id, old, new)

    def _set_instance_state(
        self, task_id: str, instances: dict[int, str | None], map_index: int, new: str | None
    ) -> None:
        """One instance changed; a decision for the whole task (map_index -1) sets every
        instance that had none (what write_decisions writes)."""
        targets = (
            [map_index]
            if map_index >= 0
            else [i for i, state in instances.items() if state is None]
        )
        counts = self.instance_counts[task_id]
        for index in targets:
            old = instances.get(index, "absent")
            if old == "absent" or old == new:
                continue
            instances[index] = new
            counts[old] -= 1
            counts[new] += 1
            self._count_change(task_id, old, new)
        self.states[task_id] = self._aggregate(task_id)

    def _count_change(self, task_id: str, old: str | None, new: str | None) -> None:
        self.unfinished += (old in _FINISHED) - (new in _FINISHED)
        task = self.info.task(task_id)
        for down in task.downstream_task_ids if task else ():
            if old in _FINISHED:
                self.counts[down][old] -= 1
            if new in _FINISHED:
                self.counts[down][new] += 1

    def needs_expansion(self, task_id: str) -> bool:
        task = self.info.task(task_id)
        return task is not None and task.is_mapped and task_id not in self.instances

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
        decision = decide(task.trigger_rule, self._upstream_counts(task_id))
        if decision == Decision.RUN and task_id in self.past_blocked:
            return Decision.WAIT  # Airflow's PrevDagrunDep: it keeps no state, it waits
        return decision

    def _upstream_counts(self, task_id: str) -> UpstreamCounts:
        """Every upstream instance counts, but removed ones (see scheduler/revision.py and
        docs/airflow-compat.md: Airflow counts them, and an all_success reduce never runs);
        an upstream whose every instance was removed counts as one skipped upstream, as
        a fresh expansion of nothing skips the mapped task."""
        task = self.info.task(task_id)
        assert task is not None
        tally = self.counts[task_id]
        total = len(task.upstream_task_ids) + self.extra_upstreams[task_id]
        counts = UpstreamCounts.from_tally(tally, total)
        if not counts.removed:
            return counts
        emptied = sum(1 for up in task.upstream_task_ids if self.states.get(up) == _REMOVED)
        return replace(
            counts,
            total=total - counts.removed + emptied,
            skipped=counts.skipped + emptied,
            removed=0,
        )

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


@dataclass(frozen=True, slots=True)
class Expansion:
    """What expanding a mapped task gave: ``length`` scheduled instances, or a final
    ``state`` of its placeholder (skipped: nothing to map over; failed: see its error);
    ``skipped``: instances a mapped branch did not follow."""

    length: int = 0
    state: str | None = None
    skipped: tuple[int, ...] = ()


Expander = Callable[[str], Expansion]
# Decides a task per map_index (a task of a mapped task group) and writes it; returns the
# tasks to evaluate next, or None when the task is decided the usual way.
GroupStep = Callable[[str], list[str] | None]


@dataclass(frozen=True, slots=True)
class Revision:
    """What revising an expanded mapped task's instances did: the map indexes it created
    (no state yet) and those it made ``removed`` (see scheduler/revision.py); ``skipped``:
    instances a mapped branch did not follow."""

    removed: tuple[int, ...] = ()
    added: tuple[int, ...] = ()
    skipped: tuple[int, ...] = ()


Reviser = Callable[[str], Revision]


def cascade(
    tally: RunTally,
    candidates: Iterable[str],
    expand: Expander | None = None,
    revise: Reviser | None = None,
    group_step: GroupStep | None = None,
) -> dict[str, Decision]:
    """Decide every NULL-state candidate; final states cascade to their downstream tasks.

    A mapped task not expanded yet whose rule is met is handed to ``expand``, which
    writes its instances (or its placeholder's final state) itself; it is not in the
    returned decisions. An expanded one (cleared) is handed to ``revise`` first, which
    adds or removes instances when the length it maps over changed.
    A task ``group_step`` takes is decided per instance by it.
    """
    work = deque(candidates)
    decided: dict[str, Decision] = {}
    while work:
        task_id = work.popleft()
        if group_step is not None and (following := group_step(task_id)) is not None:
            work.extend(following)
            continue
        if tally.states.get(task_id, "absent") is not None:
            continue
        decision = tally.decide(task_id)
        if decision == Decision.WAIT:
            continue
        if decision == Decision.RUN and expand is not None and tally.needs_expansion(task_id):
            result = expand(task_id)
            if result.state is None:
                tally.expanded(task_id, result.length, Decision.RUN.value)
                tally.skip_instances(task_id, result.skipped)
                if tally.states.get(task_id) not in _FINISHED:
                    continue
            else:
                tally.set_state(task_id, result.state)
        elif decision == Decision.RUN and revise is not None and task_id in tally.instances:
            tally.revised(task_id, revise(task_id))
            if tally.states.get(task_id) is None:
                decided[task_id] = decision
                tally.set_state(task_id, decision.value)
                continue
            # no instance is left to run (the others are removed or finished): decide
            # its downstream tasks
        else:
            decided[task_id] = decision
            tally.set_state(task_id, decision.value)
            if decision == Decision.RUN:
                continue
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
    _write_undecided(
        session, [TaskInstance.dag_run_id == dag_run_id], TaskInstance.task_id, decided, now
    )


def write_instance_decisions(
    session: Session, dag_run_id: int, task_id: str, decided: dict[int, Decision], now: datetime
) -> None:
    """Persist per-instance decisions of one task (a task of a mapped task group), by
    map_index; only instances still undecided, as :func:`write_decisions`."""
    where = [TaskInstance.dag_run_id == dag_run_id, TaskInstance.task_id == task_id]
    _write_undecided(session, where, TaskInstance.map_index, decided, now)


def _write_undecided(
    session: Session,
    where: list[Any],
    key: Any,
    decided: Mapping[Any, Decision],
    now: datetime,
) -> None:
    """One UPDATE per decision (and chunk of keys) of the rows matching ``where`` whose
    ``key`` column is among the decided keys and whose state is still NULL."""
    by_state: dict[Decision, list[Any]] = {}
    for item, decision in decided.items():
        by_state.setdefault(decision, []).append(item)
    for decision, keys in by_state.items():
        values: dict[str, Any] = {"state": decision.value}
        if decision != Decision.RUN:
            values.update(start_date=now, end_date=now, duration=0.0)
        for i in range(0, len(keys), _CHUNK):
            session.execute(
                update(TaskInstance)
                .where(*where, key.in_(keys[i : i + _CHUNK]), TaskInstance.state.is_(None))
                .values(**values)
                .execution_options(synchronize_session=False)
            )


def load_branch_choices(
    session: Session, dag_run_id: int, task_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """What each branch task that is not mapped chose (a mapped one's choices apply per map
    index: scheduler/mapped_branch.py)."""
    stmt = select(XCom.task_id, XCom.value).where(
        XCom.dag_run_id == dag_run_id, XCom.key == BRANCH_XCOM_KEY, XCom.map_index == -1
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
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.dag_run_id == dag_run_id
            )
        ).all()
        states = {task_id: state for task_id, map_index, state in rows if map_index < 0}
        choices = load_branch_choices(session, dag_run_id) if info.branch_ids else {}
        choices = {
            tid: value
            for tid, value in choices.items()
            if states.get(tid) == TaskInstanceState.SUCCESS.value
        }
        return RunTally.build(dag_run_id, info, [(r[0], r[1], r[2]) for r in rows], choices)
