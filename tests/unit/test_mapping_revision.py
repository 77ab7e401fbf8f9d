"""A cleared mapped task's revision as the run's tally sees it: added instances run with
the others, removed ones are no upstream of the tasks downstream, and the task's one
state leaves them out (the database side is tests/integration/test_mapping_revision.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ketch import DAG, task
from ketch.authoring.serialize import serialize_dag
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import Revision, RunTally, cascade
from ketch.scheduler.trigger_rules import Decision
from ketch.states import mapped_task_state


def _tally(rows: list[tuple[str, int, str | None]]) -> RunTally:
    with DAG("revise", schedule=None, start_date=datetime(2026, 1, 1)) as d:

        @task
        def items():
            return [1, 2, 3]

        @task
        def work(x):
            return x

        @task
        def total(values):
            return values

        total(work.expand(x=items()))
    return RunTally.build(1, DagInfo(serialize_dag(d, Path("/tmp"))), rows, {})


def _cleared(length: int) -> list[tuple[str, int, str | None]]:
    """items done again; work's instances and total cleared."""
    return [
        ("items", -1, "success"),
        *[("work", i, None) for i in range(length)],
        ("total", -1, None),
    ]


def test_a_longer_list_adds_instances_that_are_scheduled_with_the_others() -> None:
    tally = _tally(_cleared(3))
    asked: list[str] = []

    def revise(task_id: str) -> Revision:
        asked.append(task_id)
        return Revision(added=(3, 4))

    assert cascade(tally, ["work"], revise=revise) == {"work": Decision.RUN}
    assert asked == ["work"]
    assert tally.instances["work"] == dict.fromkeys(range(5), "scheduled")
    for i in range(4):
        tally.set_state("work", "success", i)
    assert tally.decide("total") == Decision.WAIT  # instance 4 still counts
    tally.set_state("work", "success", 4)
    assert tally.decide("total") == Decision.RUN


def test_removed_instances_are_no_upstream_and_leave_the_task_state() -> None:
    tally = _tally(_cleared(4))
    cascade(tally, ["work"], revise=lambda _: Revision(removed=(2, 3)))
    assert tally.instances["work"] == {0: "scheduled", 1: "scheduled", 2: "removed", 3: "removed"}
    assert tally.unfinished == 3  # two instances and total
    tally.set_state("work", "success", 0)
    assert tally.decide("total") == Decision.WAIT
    tally.set_state("work", "success", 1)
    # Airflow's TriggerRuleDep would count the removed ones as not successful here.
    assert tally.decide("total") == Decision.RUN
    assert tally.states["work"] == "success"


def test_a_revision_that_leaves_nothing_to_run_decides_the_downstream() -> None:
    rows = [
        ("items", -1, "success"),
        ("work", 0, "success"),
        ("work", 1, None),
        ("total", -1, None),
    ]
    tally = _tally(rows)
    assert cascade(tally, ["work"], revise=lambda _: Revision(removed=(1,))) == {
        "total": Decision.RUN
    }
    assert tally.instances["work"] == {0: "success", 1: "removed"}


def test_an_upstream_with_every_instance_removed_counts_as_skipped() -> None:
    tally = _tally(_cleared(2))
    assert cascade(tally, ["work"], revise=lambda _: Revision(removed=(0, 1))) == {
        "total": Decision.SKIPPED
    }
    assert tally.states["work"] == "removed"


def test_without_a_change_the_instances_run_as_they_are() -> None:
    tally = _tally(_cleared(2))
    assert cascade(tally, ["work"], revise=lambda _: Revision()) == {"work": Decision.RUN}
    assert tally.instances["work"] == {0: "scheduled", 1: "scheduled"}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["success", "removed"], "success"),
        (["skipped", "removed"], "skipped"),
        (["failed", "removed"], "failed"),
        ([None, "removed"], None),
        (["removed", "removed"], "removed"),
    ],
)
def test_removed_instances_do_not_change_the_mapped_task_state(
    states: list[Any], expected: str | None
) -> None:
    assert mapped_task_state(states) == expected
