"""Dynamic task mapping, authoring side: ``.partial``/``.expand``/``.expand_kwargs``, the
serialized shape the scheduler expands from, and what one instance runs with."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ketch import DAG, BashOperator, dag, task
from ketch.authoring.mapped import MappedTask, product_index, push_problem
from ketch.authoring.serialize import serialize_dag
from ketch.authoring.tasks import TaskResult
from ketch.exceptions import DagDefinitionError

START = datetime(2026, 1, 1)


def _no_upstream(task_id: str, key: str) -> Any:
    raise AssertionError(f"no upstream value expected, asked for {task_id}")


def test_decorated_expand_over_an_upstream_value_links_and_serializes() -> None:
    @dag(schedule=None, start_date=START)
    def mapped():
        @task
        def numbers():
            return [1, 2, 3]

        @task
        def add(x, y):
            return x + y

        @task
        def total(values):
            return sum(values)

        total(add.partial(y=10).expand(x=numbers()))

    d = mapped()
    add = d.tasks["add"]
    assert isinstance(add, MappedTask) and add.is_mapped
    assert add.upstream_task_ids == {"numbers"}
    assert d.tasks["total"].upstream_task_ids == {"add"}
    s = serialize_dag(d, Path("/tmp"))
    expand = s.tasks["add"].expand
    assert expand is not None and expand.kind == "dict_of_lists"
    assert [(a.name, a.length, a.xcom_task_id) for a in expand.args] == [("x", None, "numbers")]
    assert s.tasks["total"].expand is None and not s.tasks["total"].is_mapped
    instance = add.unmap(2, lambda task_id, key: [1, 2, 3])
    assert instance.op_kwargs == {"y": 10, "x": 3}
    assert instance.task_id == "add" and "add" in d.tasks and d.tasks["add"] is add


def test_cross_product_varies_the_last_argument_fastest_and_dicts_give_pairs() -> None:
    with DAG("cross", schedule=None, start_date=START) as d:

        @task
        def pair(a, b):
            return (a, b)

        pair.expand(a=[1, 2], b={"x": 0, "y": 9})
    mapped = d.tasks["pair"]
    assert isinstance(mapped, MappedTask)
    got = [mapped.mapped_kwargs(i, _no_upstream) for i in range(4)]
    assert got == [
        {"a": 1, "b": ("x", 0)},
        {"a": 1, "b": ("y", 9)},
        {"a": 2, "b": ("x", 0)},
        {"a": 2, "b": ("y", 9)},
    ]
    s = serialize_dag(d, Path("/tmp"))
    assert [a.length for a in s.tasks["pair"].expand.args] == [2, 2]  # type: ignore[union-attr]
    assert product_index([2, 3, 4], 23) == [1, 2, 3]


def test_classic_operator_partial_expand_and_expand_kwargs() -> None:
    with DAG("classic", schedule=None, start_date=START) as d:
        BashOperator.partial(task_id="echo", retries=2).expand(bash_command=["echo a", "echo b"])

        @task
        def show(x, y):
            return x + y

        show.expand_kwargs([{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    echo = d.tasks["echo"]
    assert isinstance(echo, MappedTask) and echo.kind == "bash" and echo.retries == 2
    instance = echo.unmap(1, _no_upstream)
    assert instance.bash_command == "echo b" and instance.retries == 2  # type: ignore[attr-defined]
    assert d.tasks["echo"] is echo  # the instance did not join the DAG
    show = d.tasks["show"]
    assert isinstance(show, MappedTask)
    assert show.mapped_kwargs(1, _no_upstream) == {"x": 3, "y": 4}
    s = serialize_dag(d, Path("/tmp"))
    assert s.tasks["show"].expand.kind == "list_of_dicts"  # type: ignore[union-attr]
    assert s.tasks["echo"].retries == 2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: t.expand(), "no arguments to expand against"),
        (lambda t: t.expand(x="abc"), "unexpected type 'str' for keyword argument 'x'"),
        (lambda t: t.expand(x=3), "unexpected type 'int' for keyword argument 'x'"),
        (lambda t: t.partial(x=1).expand(x=[1]), "given to both partial() and expand()"),
        (lambda t: t.expand_kwargs("x"), "expand_kwargs() takes a list of dicts"),
        (lambda t: t.expand_kwargs([1, 2]), "not a list holding 'int'"),
    ],
)
def test_bad_expansions_are_dag_errors(build: Any, message: str) -> None:
    with DAG("bad", schedule=None, start_date=START), pytest.raises(DagDefinitionError) as err:

        @task
        def one(x):
            return x

        build(one)
    assert message in str(err.value)


def test_classic_operator_cannot_map_a_task_argument_nor_go_without_task_id() -> None:
    with DAG("bad2", schedule=None, start_date=START):
        with pytest.raises(DagDefinitionError, match="cannot map over the task argument 'retries'"):
            BashOperator.partial(task_id="b", bash_command="true").expand(retries=[1, 2])
        with pytest.raises(DagDefinitionError, match="needs a task_id"):
            BashOperator.partial(bash_command="true")


def test_an_upstream_value_that_cannot_be_mapped_fails_the_pushing_task() -> None:
    with DAG("push", schedule=None, start_date=START) as d:

        @task
        def make():
            return "x"

        @task
        def use(v):
            return v

        @task
        def reduce(v):
            return v

        out = make()
        use.expand(v=out)
        reduce(out)
    make = d.tasks["make"]
    assert push_problem(make, TaskResult([1, 2]), 10) is None
    problem = push_problem(make, TaskResult("abc"), 10)
    assert problem is not None
    assert problem.startswith("UnmappableXComTypePushed: unmappable return type 'str'")
    problem = push_problem(make, TaskResult(list(range(11))), 10)
    assert problem is not None
    assert problem.startswith("UnmappableXComLengthPushed: unmappable return value length: 11 > 10")
    assert push_problem(make, TaskResult(None), 10) == (
        "XComForMappingNotPushed: did not push XCom for task mapping ('use' map over it)"
    )
    # A task nobody maps over may return anything.
    assert push_problem(d.tasks["use"], TaskResult("abc"), 10) is None
    assert push_problem(d.tasks["reduce"], TaskResult("abc"), 10) is None


def test_mapped_instance_runs_with_its_element_and_map_index() -> None:
    with DAG("run", schedule=None, start_date=START) as d:

        @task
        def show(x, map_index=None):
            return (x, map_index)

        show.expand(x=["a", "b", "c"])
    context: dict[str, Any] = {"map_index": 1, "params": {}}
    result = d.tasks["show"].execute(context, _no_upstream)  # type: ignore[arg-type]
    assert result.return_value == ("b", 1)
    with pytest.raises(RuntimeError, match="without a map_index"):
        d.tasks["show"].execute({"params": {}}, _no_upstream)  # type: ignore[arg-type]


def test_each_instance_has_its_own_log_path_pod_name_and_labels() -> None:
    import re

    from ketch.executors.base import TryKey, map_index_args
    from ketch.executors.kubernetes.pod import (
        LABEL_MAP_INDEX,
        key_of,
        pod_name,
        try_annotations,
        try_labels,
    )
    from ketch.worker.task_log import log_path

    unmapped = TryKey("d", "r", "t", 1)
    keys = [TryKey("d", "r", "t", 1, i) for i in range(3)]
    assert (
        str(log_path(Path("/logs"), unmapped)) == "/logs/dag_id=d/run_id=r/task_id=t/attempt=1.log"
    )
    assert str(log_path(Path("/logs"), keys[2])) == (
        "/logs/dag_id=d/run_id=r/task_id=t/map_index=2/attempt=1.log"
    )
    names = {pod_name(k) for k in [unmapped, *keys]}
    assert len(names) == 4
    assert all(len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names)
    assert LABEL_MAP_INDEX not in try_labels(unmapped, 7)
    assert try_labels(keys[1], 7)[LABEL_MAP_INDEX] == "1"
    pod = {"metadata": {"annotations": try_annotations(keys[1])}}
    assert key_of(pod) == keys[1]
    assert map_index_args(unmapped) == [] and map_index_args(keys[2]) == ["--map-index", "2"]


def _tally_of(rows: list[tuple[str, int, str | None]]) -> Any:
    from ketch.scheduler.dag_cache import DagInfo
    from ketch.scheduler.evaluation import RunTally

    with DAG("tally", schedule=None, start_date=START) as d:

        @task
        def work(x):
            return x

        @task(trigger_rule="one_failed")
        def alarm(values):
            return values

        @task
        def total(values):
            return values

        out = work.expand(x=[1, 2, 3])
        alarm(out)
        total(out)
    info = DagInfo(serialize_dag(d, Path("/tmp")))
    return RunTally.build(1, info, rows, {})


def test_trigger_rules_downstream_of_a_mapped_task_count_every_instance() -> None:
    from ketch.scheduler.evaluation import Expansion, cascade
    from ketch.scheduler.trigger_rules import Decision

    tally = _tally_of([("work", -1, None), ("alarm", -1, None), ("total", -1, None)])
    expanded: list[str] = []

    def expand(task_id: str) -> Expansion:
        expanded.append(task_id)
        return Expansion(length=3)

    assert cascade(tally, ["work"], expand) == {}
    assert expanded == ["work"] and tally.instances["work"] == dict.fromkeys(range(3), "scheduled")
    assert tally.unfinished == 5
    tally.set_state("work", "success", 0)
    assert tally.decide("total") == Decision.WAIT  # 1 of 3 instances done
    tally.set_state("work", "failed", 1)
    assert tally.decide("alarm") == Decision.RUN  # one_failed: the first failed instance
    assert tally.decide("total") == Decision.UPSTREAM_FAILED
    tally.set_state("work", "success", 2)
    assert tally.states["work"] == "failed"  # the aggregate a run's completion reads


def test_a_rebuilt_tally_counts_instances_from_the_database_rows() -> None:
    from ketch.scheduler.trigger_rules import Decision

    rows = [("work", i, "success") for i in range(3)]
    tally = _tally_of([*rows, ("alarm", -1, None), ("total", -1, None)])
    assert tally.decide("total") == Decision.RUN
    assert tally.decide("alarm") == Decision.SKIPPED
    assert tally.states["work"] == "success" and not tally.needs_expansion("work")
    partial = _tally_of([("work", 0, "success"), ("work", 1, "running"), ("total", -1, None)])
    assert partial.decide("total") == Decision.WAIT
    assert partial.states["work"] == "running"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["success", None], None),
        (["success", "running"], "running"),
        (["success", "up_for_retry"], "running"),
        (["success", "upstream_failed", "failed"], "failed"),
        (["success", "upstream_failed"], "upstream_failed"),
        (["skipped", "skipped"], "skipped"),
        (["skipped", "success"], "success"),
    ],
)
def test_a_mapped_task_shows_one_state_for_its_instances(
    states: list[str | None], expected: str | None
) -> None:
    from ketch.states import mapped_task_state

    assert mapped_task_state(states) == expected
