"""A mapped branch's choices in the run's tally: none applies to a whole task; instances of
a mapped downstream task skipped at its expansion (or revision) count as skipped, and a
task whose every instance was skipped lets its downstream tasks be decided at once."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ketch import DAG, task
from ketch.authoring.serialize import serialize_dag
from ketch.scheduler.dag_cache import DagInfo
from ketch.scheduler.evaluation import Expansion, Revision, RunTally, cascade
from ketch.scheduler.mapped_branch import mapped_branch_parents
from ketch.scheduler.trigger_rules import Decision


def _info() -> DagInfo:
    with DAG("mb", schedule=None, start_date=datetime(2026, 1, 1)) as d:

        @task.branch
        def route(i):
            return "handle"

        @task
        def handle(i):
            return i

        @task
        def plain():
            return 1

        @task
        def reduce(values):
            return values

        routes = route.expand(i=[0, 1])
        handled = handle.expand(i=[0, 1])
        routes >> [handled, plain()]
        reduce(handled)
    return DagInfo(serialize_dag(d, Path("/tmp")))


def _tally(rows: list[tuple[str, int, str | None]], choices: dict[str, object]) -> RunTally:
    return RunTally.build(1, _info(), rows, choices)


def test_only_a_mapped_downstream_of_a_mapped_branch_has_branch_parents() -> None:
    info = _info()
    assert mapped_branch_parents(info, "handle") == ["route"]
    assert mapped_branch_parents(info, "plain") == []  # not mapped: no per-instance choice
    assert mapped_branch_parents(info, "reduce") == []


def test_a_task_that_is_not_mapped_follows_its_trigger_rule_only() -> None:
    rows = [("route", 0, "success"), ("route", 1, "success"), ("plain", -1, None)]
    tally = _tally(rows, {})
    assert tally.decide("plain") == Decision.RUN


def test_instances_skipped_at_expansion_count_and_can_finish_the_task() -> None:
    rows = [
        ("route", 0, "success"),
        ("route", 1, "success"),
        ("handle", -1, None),
        ("reduce", -1, None),
    ]
    tally = _tally(rows, {})
    some = cascade(tally, ["handle"], lambda _: Expansion(length=2, skipped=(1,)))
    assert some == {}
    assert tally.instances["handle"] == {0: "scheduled", 1: "skipped"}
    assert tally.states["handle"] == "running"

    tally = _tally(rows, {})
    every = cascade(tally, ["handle"], lambda _: Expansion(length=2, skipped=(0, 1)))
    assert tally.states["handle"] == "skipped"
    assert every == {"reduce": Decision.SKIPPED}  # all_success after skipped upstreams


def test_a_revision_skips_the_instances_not_followed_this_time() -> None:
    rows = [
        ("route", 0, "success"),
        ("route", 1, "success"),
        ("handle", 0, None),
        ("handle", 1, None),
        ("reduce", -1, None),
    ]
    tally = _tally(rows, {})
    decided = cascade(tally, ["handle"], revise=lambda _: Revision(skipped=(0,)))
    assert decided == {"handle": Decision.RUN}
    assert tally.instances["handle"] == {0: "skipped", 1: "scheduled"}
