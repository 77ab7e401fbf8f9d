"""Trigger rules, table-driven, with cases taken from Airflow 3.3's TriggerRuleDep logic."""

from __future__ import annotations

import pytest

from ketch.scheduler.trigger_rules import (
    Decision,
    UpstreamCounts,
    decide,
    expand_follow,
    skipped_by_branch,
)
from ketch.states import TriggerRule as TR

RUN, WAIT, UF, SKIP = Decision.RUN, Decision.WAIT, Decision.UPSTREAM_FAILED, Decision.SKIPPED


def c(total: int, s: int = 0, sk: int = 0, f: int = 0, uf: int = 0, rm: int = 0) -> UpstreamCounts:
    return UpstreamCounts(
        total=total, success=s, skipped=sk, failed=f, upstream_failed=uf, removed=rm
    )


CASES = [
    # all_success
    (TR.ALL_SUCCESS, c(2, s=2), RUN),
    (TR.ALL_SUCCESS, c(2, s=1), WAIT),
    (TR.ALL_SUCCESS, c(2, s=1, f=1), UF),
    (TR.ALL_SUCCESS, c(2, uf=1), UF),
    (TR.ALL_SUCCESS, c(2, s=1, sk=1), SKIP),
    (TR.ALL_SUCCESS, c(3, sk=1), SKIP),  # skipped upstream propagates before the rest finish
    (TR.ALL_SUCCESS, c(2, sk=1, f=1), UF),  # a failure wins over a skip
    # all_failed
    (TR.ALL_FAILED, c(2, f=2), RUN),
    (TR.ALL_FAILED, c(2, f=1, uf=1), RUN),
    (TR.ALL_FAILED, c(2, f=1), WAIT),
    (TR.ALL_FAILED, c(2, f=1, s=1), SKIP),
    (TR.ALL_FAILED, c(2, sk=1), SKIP),
    # all_done
    (TR.ALL_DONE, c(2, s=1), WAIT),
    (TR.ALL_DONE, c(2, s=1, f=1), RUN),
    (TR.ALL_DONE, c(3, sk=1, uf=1, rm=1), RUN),
    # one_success: runs as soon as one succeeded
    (TR.ONE_SUCCESS, c(3, s=1), RUN),
    (TR.ONE_SUCCESS, c(2, f=1), WAIT),
    (TR.ONE_SUCCESS, c(2, f=2), UF),
    (TR.ONE_SUCCESS, c(2, sk=2), SKIP),
    (TR.ONE_SUCCESS, c(2, sk=1, f=1), UF),
    # one_failed: runs as soon as one failed
    (TR.ONE_FAILED, c(3, f=1), RUN),
    (TR.ONE_FAILED, c(3, uf=1), RUN),
    (TR.ONE_FAILED, c(2, s=1), WAIT),
    (TR.ONE_FAILED, c(2, s=2), SKIP),
    (TR.ONE_FAILED, c(2, s=1, sk=1), SKIP),
    # none_failed
    (TR.NONE_FAILED, c(2, s=1, sk=1), RUN),
    (TR.NONE_FAILED, c(2, sk=2), RUN),
    (TR.NONE_FAILED, c(2, s=1), WAIT),
    (TR.NONE_FAILED, c(2, f=1), UF),
    (TR.NONE_FAILED, c(2, uf=1, s=1), UF),
    # none_skipped
    (TR.NONE_SKIPPED, c(2, s=1, f=1), RUN),
    (TR.NONE_SKIPPED, c(2, s=1), WAIT),
    (TR.NONE_SKIPPED, c(2, sk=1), SKIP),
    # none_failed_min_one_success
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, c(2, s=1, sk=1), RUN),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, c(2, sk=2), SKIP),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, c(2, sk=1), WAIT),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, c(2, uf=1), UF),
    (TR.NONE_FAILED_MIN_ONE_SUCCESS, c(2, f=1, s=1), UF),
    # always
    (TR.ALWAYS, c(2), RUN),
    (TR.ALWAYS, c(2, f=2), RUN),
    # one_done: at least one upstream succeeded or failed
    (TR.ONE_DONE, c(3, s=1), RUN),
    (TR.ONE_DONE, c(3, f=1), RUN),
    (TR.ONE_DONE, c(3, sk=1), WAIT),
    (TR.ONE_DONE, c(2, sk=1, uf=1), SKIP),  # all done, none succeeded or failed
    # all_skipped
    (TR.ALL_SKIPPED, c(2, sk=2), RUN),
    (TR.ALL_SKIPPED, c(2, sk=1), WAIT),
    (TR.ALL_SKIPPED, c(2, sk=1, s=1), SKIP),
    (TR.ALL_SKIPPED, c(2, uf=1), SKIP),
    # all_done_min_one_success: skipped upstreams skip it; all done with no success fails it
    (TR.ALL_DONE_MIN_ONE_SUCCESS, c(2, s=1, f=1), RUN),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, c(2, s=1), WAIT),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, c(2, f=2), UF),
    (TR.ALL_DONE_MIN_ONE_SUCCESS, c(2, s=1, sk=1), SKIP),
]


@pytest.mark.parametrize(("rule", "counts", "expected"), CASES)
def test_decide(rule: TR, counts: UpstreamCounts, expected: Decision) -> None:
    assert decide(rule, counts) == expected


@pytest.mark.parametrize("rule", list(TR))
def test_no_upstream_runs_now(rule: TR) -> None:
    assert decide(rule, c(0)) == RUN


def test_counts_from_states_ignore_unfinished() -> None:
    counts = UpstreamCounts.from_states(["success", None, "running", "skipped", "failed"])
    assert (counts.total, counts.success, counts.skipped, counts.failed, counts.done) == (
        5,
        1,
        1,
        1,
        3,
    )


def test_branch_follow_includes_descendants_of_chosen_tasks() -> None:
    # branch >> [a, b]; a >> join; branch >> join: choosing a keeps join.
    descendants = {"a": frozenset({"join"}), "b": frozenset(), "join": frozenset()}
    kept = expand_follow(["a"], lambda t: descendants[t])
    assert kept == {"a", "join"}
    assert skipped_by_branch("b", [kept])
    assert not skipped_by_branch("join", [kept])
    assert not skipped_by_branch("b", [None])  # the branch recorded no choice yet
