"""Trigger rules: from the states of a task's direct upstreams to a decision.

Pure functions, mirroring Airflow 3.3's ``TriggerRuleDep`` (``ti_deps/deps/trigger_rule_dep.py``)
and ``NotPreviouslySkippedDep`` for branching, so a DAG moved from Airflow behaves the same.
Airflow evaluates a rule in two steps: first it may *set* a final state on the task instance
(``upstream_failed`` or ``skipped``: the rule can never be met), then it checks whether the rule
passes now. A state set in the first step wins; we return it as the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ketch.states import TaskInstanceState, TriggerRule

_TI = TaskInstanceState


class Decision(StrEnum):
    """What the scheduler does with a task instance that has no state yet."""

    RUN = "scheduled"  # the rule is met: the TI becomes scheduled
    WAIT = "wait"  # not yet decidable: leave the TI as it is
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class UpstreamCounts:
    """Counts of a task's direct upstream TIs by finished state (Airflow's _UpstreamTIStates).

    ``done`` counts every finished upstream (success, skipped, failed, upstream_failed,
    removed); ``total`` is the number of direct upstream tasks.
    """

    total: int
    success: int = 0
    skipped: int = 0
    failed: int = 0
    upstream_failed: int = 0
    removed: int = 0

    @property
    def done(self) -> int:
        return self.success + self.skipped + self.failed + self.upstream_failed + self.removed

    @classmethod
    def from_states(cls, states: Iterable[str | None], total: int | None = None) -> UpstreamCounts:
        """Count upstream states; unfinished ones (None, queued...) only count towards total."""
        tally: dict[str | None, int] = {}
        n = 0
        for state in states:
            tally[state] = tally.get(state, 0) + 1
            n += 1
        return cls.from_tally(tally, n if total is None else total)

    @classmethod
    def from_tally(cls, tally: Mapping[Any, int], total: int) -> UpstreamCounts:
        return cls(
            total=total,
            success=tally.get(_TI.SUCCESS, 0),
            skipped=tally.get(_TI.SKIPPED, 0),
            failed=tally.get(_TI.FAILED, 0),
            upstream_failed=tally.get(_TI.UPSTREAM_FAILED, 0),
            removed=tally.get(_TI.REMOVED, 0),
        )


def _final_state(rule: TriggerRule, c: UpstreamCounts) -> Decision | None:
    """Airflow's ``flag_upstream_failed`` step: a state the TI takes because the rule can't pass."""
    upstream_done = c.done >= c.total
    failures = c.failed or c.upstream_failed
    if rule == TriggerRule.ALL_SUCCESS:
        if failures:
            return Decision.UPSTREAM_FAILED
        if c.skipped:
            return Decision.SKIPPED
    elif rule == TriggerRule.ALL_FAILED:
        if c.success or c.skipped:
            return Decision.SKIPPED
    elif rule == TriggerRule.ONE_SUCCESS:
        if upstream_done and c.done == c.skipped:
            return Decision.SKIPPED
        if upstream_done and c.success <= 0:
            return Decision.UPSTREAM_FAILED
    elif rule == TriggerRule.ONE_FAILED:
        if upstream_done and not failures:
            return Decision.SKIPPED
    elif rule == TriggerRule.NONE_FAILED:
        if failures:
            return Decision.UPSTREAM_FAILED
    elif rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS:
        if failures:
            return Decision.UPSTREAM_FAILED
        if c.skipped == c.total:
            return Decision.SKIPPED
    elif rule == TriggerRule.NONE_SKIPPED and c.skipped:
        return Decision.SKIPPED
    elif rule == TriggerRule.ONE_DONE:
        if upstream_done and not (c.failed or c.success):
            return Decision.SKIPPED
    elif rule == TriggerRule.ALL_SKIPPED:
        if c.success or c.failed or c.upstream_failed:
            return Decision.SKIPPED
    elif rule == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS:
        # Skipped upstreams are not "done" for this rule (Airflow skips the task then).
        if c.skipped:
            return Decision.SKIPPED
        if _non_skipped_done(c) >= c.total - c.skipped and c.success == 0:
            return Decision.UPSTREAM_FAILED
    return None


def _non_skipped_done(c: UpstreamCounts) -> int:
    return c.success + c.failed + c.upstream_failed + c.removed


def _passes(rule: TriggerRule, c: UpstreamCounts) -> bool:
    """Airflow's second step: is the rule met right now?"""
    upstream_done = c.done >= c.total
    if rule == TriggerRule.ONE_SUCCESS:
        return c.success > 0
    if rule == TriggerRule.ONE_FAILED:
        return bool(c.failed or c.upstream_failed)
    if rule == TriggerRule.ALL_SUCCESS:
        return c.total - c.success <= 0
    if rule == TriggerRule.ALL_FAILED:
        return c.total - c.failed - c.upstream_failed <= 0
    if rule == TriggerRule.ALL_DONE:
        return upstream_done
    if rule in (TriggerRule.NONE_FAILED, TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS):
        return c.total - c.success - c.skipped <= 0
    if rule == TriggerRule.NONE_SKIPPED:
        return upstream_done and c.skipped == 0
    if rule == TriggerRule.ONE_DONE:
        return c.success + c.failed > 0
    if rule == TriggerRule.ALL_SKIPPED:
        return c.total - c.skipped <= 0
    if rule == TriggerRule.ALL_DONE_MIN_ONE_SUCCESS:
        return c.skipped == 0 and _non_skipped_done(c) >= c.total - c.skipped and c.success > 0
    if rule == TriggerRule.ALWAYS:
        return True
    raise ValueError(f"no strategy to evaluate trigger rule {rule!r}")


def decide(rule: TriggerRule | str, counts: UpstreamCounts) -> Decision:
    """The decision for a TI with trigger rule ``rule`` and these direct-upstream counts."""
    rule = TriggerRule(rule)
    if counts.total == 0 or rule == TriggerRule.ALWAYS:
        return Decision.RUN
    final = _final_state(rule, counts)
    if final is not None:
        return final
    return Decision.RUN if _passes(rule, counts) else Decision.WAIT


def expand_follow(
    follow: Iterable[str], descendants: Callable[[str], frozenset[str]] | None = None
) -> set[str]:
    """The tasks a branch keeps: those it chose plus everything downstream of them.

    Mirrors Airflow's ``skip_all_except``: in ``branch >> join`` plus ``branch >> a >> join``,
    choosing ``a`` must not skip ``join`` although ``join`` is directly downstream of the branch.
    """
    kept = set(follow)
    if descendants is not None:
        for task_id in list(kept):
            kept |= descendants(task_id)
    return kept


def skipped_by_branch(task_id: str, followed_by_parent: Iterable[set[str] | None]) -> bool:
    """NotPreviouslySkippedDep: skip a TI a finished direct-upstream branch did not follow.

    ``followed_by_parent`` holds, for each direct upstream branch task that has recorded a
    choice, the expanded set of followed task ids (None when it recorded nothing yet).
    """
    return any(kept is not None and task_id not in kept for kept in followed_by_parent)
