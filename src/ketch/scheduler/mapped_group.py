"""Tasks of a mapped task group: expanded with the group, decided per map_index.

Every task of a mapped group is a mapped task whose expand input is the group's (the DAG
processor copies it onto each task, with ``mapped_group_id``). A task of the group whose
upstreams are all outside the group (a *root*) is expanded like any mapped task
(``scheduler/expansion.py``): when its trigger rule is met, N ``scheduled`` instances,
or the placeholder skipped (nothing to map over) or failed.

A task with an upstream inside the group is taken here, as soon as every such upstream
has its instances (or ended as a whole): its placeholder becomes N *undecided* instances,
and instance i's trigger rule is evaluated on instance i of each upstream inside the group
and on every instance of each upstream outside it (Airflow's
``get_relevant_upstream_map_indexes``). So instance i of ``b`` runs when instance i of
``a`` succeeded, not when all of ``a`` did; a task downstream of the whole group counts
every instance (the reduce), as for a mapped task. While an upstream inside the group
has not expanded, the task is left to the usual path: if that upstream ended as a whole
(skipped by a zero-length expansion, failed), the task follows by its trigger rule.

After a clear, such a task is revised like a cleared mapped task (``scheduler/revision.py``,
Airflow revises every task of a mapped group by the group's length): when none of its
instances is decided and each upstream inside the group has a decided instance again (the
root was revised once what the group maps over ran again), missing map indexes are created
and the ones beyond the group's length now are removed, before the first decision. A clear
with downstream tasks thus carries the new length down the group, task after task.

Crash safety: the instances and the decisions are written in the caller's transaction,
the one that decided the upstream; killed before the commit (``mapped_group.before_commit``)
the run still has the placeholder, which the full evaluation after the restart expands
again; the per-instance UPDATEs only touch instances still undecided.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from sqlalchemy import event
from sqlalchemy.orm import Session

from ketch.faults import fault_point
from ketch.scheduler.evaluation import GroupStep, Revision, RunTally, write_instance_decisions
from ketch.scheduler.expansion import _Unexpandable, _write_instances, expansion_length
from ketch.scheduler.revision import revise_map_indexes
from ketch.scheduler.trigger_rules import Decision, UpstreamCounts, decide, skipped_by_branch
from ketch.serialization import SerializedTask
from ketch.states import FINISHED_TI_STATES

log = logging.getLogger("ketch.scheduler.mapped_group")

_FINISHED = frozenset(s.value for s in FINISHED_TI_STATES)


def inner_upstreams(tally: RunTally, task: SerializedTask) -> list[str]:
    """The upstream tasks of ``task`` inside its mapped group."""
    if task.mapped_group_id is None:
        return []
    out = []
    for up in task.upstream_task_ids:
        upstream = tally.info.task(up)
        if upstream is not None and upstream.mapped_group_id == task.mapped_group_id:
            out.append(up)
    return out


def _ready_to_expand(tally: RunTally, inner: list[str]) -> bool:
    """Every upstream inside the group has instances or ended as a whole; one has instances."""
    expanded = [up for up in inner if up in tally.instances]
    return bool(expanded) and all(
        up in tally.instances or tally.states.get(up) in _FINISHED for up in inner
    )


def _outside_counts(
    tally: RunTally, task: SerializedTask, inner: list[str]
) -> tuple[Counter[str], int]:
    """Finished states and number of the instances of the upstreams outside the group
    (every instance of a mapped one): the same for each instance of ``task``."""
    counts: Counter[str] = Counter()
    total = 0
    for up in task.upstream_task_ids:
        if up in inner:
            continue
        instances = tally.instances.get(up)
        if instances is None:
            total += 1
            state = tally.states.get(up)
            if state in _FINISHED:
                counts[state] += 1
            continue
        total += len(instances)
        for state, n in tally.instance_counts[up].items():
            if state in _FINISHED:
                counts[state] += n
    return counts, total


def _task_level_decision(tally: RunTally, task: SerializedTask) -> Decision | None:
    """What skips every instance at once: a short circuit or a branch above the task."""
    if tally._short_circuited(task.task_id):
        return Decision.SKIPPED
    parents = tally.info.branch_ids.intersection(task.upstream_task_ids)
    if parents and skipped_by_branch(
        task.task_id,
        (tally.follow.get(p) for p in parents if tally.states.get(p) in _FINISHED),
    ):
        return Decision.SKIPPED
    return None


def decide_instances(
    tally: RunTally, task: SerializedTask, inner: list[str]
) -> dict[int, Decision]:
    """A decision for each undecided instance whose trigger rule can be decided now.

    Instance i counts instance i of each upstream inside the group (or its one state if it
    ended as a whole) and every instance of the upstreams outside it. Instances whose
    upstreams inside the group are in the same states get the same decision, so the rule
    is evaluated once per distinct combination, not once per instance.
    """
    shared = _task_level_decision(tally, task)
    outside, outside_total = _outside_counts(tally, task, inner)
    sources = [(tally.instances.get(up), tally.states.get(up)) for up in inner]
    total = outside_total + len(inner)
    by_states: dict[tuple[str | None, ...], Decision] = {}
    out: dict[int, Decision] = {}
    undecided = [i for i, state in tally.instances[task.task_id].items() if state is None]
    for index, key in zip(undecided, _inner_states(sources, undecided), strict=True):
        decision = by_states.get(key)
        if decision is None:
            decision = shared or _decide(task, outside, total, key)
            if decision == Decision.RUN and task.task_id in tally.past_blocked:
                decision = Decision.WAIT
            by_states[key] = decision
        if decision != Decision.WAIT:
            out[index] = decision
    return out


def _inner_states(
    sources: list[tuple[dict[int, str | None] | None, str | None]], indexes: list[int]
) -> list[tuple[str | None, ...]]:
    """For each index, the states of the upstreams inside the group at that index."""
    columns = [
        [inst.get(i) for i in indexes] if inst is not None else [whole] * len(indexes)
        for inst, whole in sources
    ]
    return list(zip(*columns, strict=True))


def _decide(
    task: SerializedTask, outside: Counter[str], total: int, inner_states: tuple[str | None, ...]
) -> Decision:
    counts = outside.copy()
    counts.update(s for s in inner_states if s in _FINISHED)
    return decide(task.trigger_rule, UpstreamCounts.from_tally(counts, total))


def _all_undecided(tally: RunTally, task_id: str) -> bool:
    """No instance of ``task_id`` is decided: it was just cleared (a clear sets every row of
    the task, removed ones included, back to no state), or expanded and not decided yet."""
    return tally.instance_counts[task_id][None] == len(tally.instances[task_id])


def _revisable(tally: RunTally, task_id: str, inner: list[str]) -> bool:
    """Time to revise ``task_id``'s instances (scheduler/revision.py): none is decided (it was
    cleared) and each upstream inside the group has instances of which one is decided, so
    the root of the group was revised after what it maps over ran again. A clear of the
    upstream with its downstream tasks leaves every task of the group undecided; the
    revision then follows the group down, one task after the other, each with the same
    length (the group's). Also true once after a fresh expansion in an earlier transaction
    (a query that changes nothing)."""
    return _all_undecided(tally, task_id) and all(
        up in tally.instances and not _all_undecided(tally, up) for up in inner
    )


def _expand_undecided(
    session: Session, tally: RunTally, task: SerializedTask, max_length: int
) -> bool:
    """The placeholder -> N undecided instances; False when it cannot (left to the usual
    path, which ends the placeholder with the reason)."""
    try:
        length = expansion_length(session, tally.dag_run_id, tally.info, task, max_length)
    except _Unexpandable:
        return False
    if length == 0 or not _write_instances(
        session, tally.dag_run_id, task.task_id, length, state=None
    ):
        return False
    log.info("run %s: task %s expanded to %d instances", tally.dag_run_id, task.task_id, length)
    fault_point("mapped_group.before_commit")
    event.listen(session, "after_commit", _after_commit, once=True)
    tally.expanded(task.task_id, length, None)
    return True


def _after_commit(_session: Session) -> None:
    fault_point("mapped_group.after_commit")


def group_stepper(
    session: Session, tally: RunTally, *, max_length: int, now: datetime
) -> GroupStep:
    """The cascade's step for tasks of mapped groups with an upstream inside the group."""

    def step(task_id: str) -> list[str] | None:
        task = tally.info.task(task_id)
        if task is None or task.mapped_group_id is None:
            return None
        inner = inner_upstreams(tally, task)
        if not inner:
            return None  # a root of the group: decided and expanded as a mapped task
        expanded_now = False
        if task_id not in tally.instances:
            if tally.states.get(task_id, "absent") is not None or not _ready_to_expand(
                tally, inner
            ):
                return None
            if not _expand_undecided(session, tally, task, max_length):
                return None
            expanded_now = True
        revision = Revision()
        if not expanded_now and _revisable(tally, task_id, inner):
            revision = revise_map_indexes(
                session, tally.dag_run_id, tally.info, task_id, max_length=max_length, now=now
            )
            if revision.added or revision.removed:
                tally.revised(task_id, revision)
        decided = decide_instances(tally, task, inner)
        if decided:
            write_instance_decisions(session, tally.dag_run_id, task_id, decided, now)
            for index, decision in decided.items():
                tally.set_state(task_id, decision.value, index)
        if not revision.removed and all(d == Decision.RUN for d in decided.values()):
            return []
        return list(task.downstream_task_ids)

    return step
