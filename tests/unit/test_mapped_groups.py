"""Mapped task groups (``@task_group`` ``.partial``/``.expand``/``.expand_kwargs``): the
authoring errors, the serialized shape, what one instance runs with, and the scheduler's
per-map_index decisions (real scheduler loop and database, SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch import DAG, EmptyTask, dag, task, task_group
from ketch.authoring.mapped_group import MappedTaskGroup, same_group_map_index
from ketch.authoring.serialize import serialize_dag
from ketch.authoring.tasks import TaskResult
from ketch.config import get_settings
from ketch.db.models import TaskInstance
from ketch.exceptions import DagDefinitionError
from ketch.scheduler.loop import Scheduler
from tests.support.fake_executor import FakeExecutor, Outcome, drive, insert_dag, run_state, trigger

START = datetime(2026, 1, 1)


def _pipeline(values: Any = None) -> DAG:
    """numbers -> tg(x, y){a -> b} -> total, the group mapped over numbers' value."""

    @dag(dag_id="groups", schedule=None, start_date=START)
    def groups():
        @task
        def numbers():
            return [1, 2, 3]

        @task
        def a(x, y):
            return x + y

        @task
        def b(v):
            return v * 10

        @task
        def total(vs):
            return sum(vs)

        @task_group
        def tg(x, y):
            return b(a(x, y))

        total(tg.partial(y=1).expand(x=numbers() if values is None else values))

    return groups()


def test_a_mapped_group_links_its_input_and_serializes_its_shape_on_every_task() -> None:
    d = _pipeline()
    assert isinstance(d.task_group.get_child_by_label("tg"), MappedTaskGroup)
    assert d.tasks["tg.a"].upstream_task_ids == {"numbers"}
    assert d.tasks["tg.b"].upstream_task_ids == {"tg.a"}
    assert d.tasks["total"].upstream_task_ids == {"tg.b"}
    s = serialize_dag(d, Path("/tmp"))
    for tid in ("tg.a", "tg.b"):
        t = s.tasks[tid]
        assert t.mapped_group_id == "tg" and t.is_mapped
        assert t.expand is not None and t.expand.kind == "dict_of_lists"
        assert [(x.name, x.xcom_task_id) for x in t.expand.args] == [("x", "numbers")]
    assert s.tasks["numbers"].mapped_group_id is None and not s.tasks["total"].is_mapped
    assert s.task_groups["tg"].expand == s.tasks["tg.a"].expand


def test_an_instance_gets_its_element_of_the_cross_product_and_literal_lengths() -> None:
    with DAG("cross", schedule=None, start_date=START) as d:

        @task
        def show(x, y, z):
            return (x, y, z)

        @task_group
        def tg(x, y, z):
            show(x, y, z)

        tg.partial(z="p").expand(x=[1, 2], y={"k": 0, "m": 9})
    context: dict[str, Any] = {"map_index": 3, "params": {}}
    result = d.tasks["tg.show"].execute(context, lambda *a: pytest.fail("no pull"))
    assert result.return_value == (2, ("m", 9), "p")
    s = serialize_dag(d, Path("/tmp"))
    assert [x.length for x in s.tasks["tg.show"].expand.args] == [2, 2]  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="outside a mapped instance"):
        d.tasks["tg.show"].execute({"params": {}}, lambda *a: None)


def test_expand_kwargs_gives_each_instance_one_dict_of_arguments() -> None:
    with DAG("kw", schedule=None, start_date=START) as d:

        @task
        def make():
            return [{"x": 1, "y": 2}, {"x": 3, "y": 4}]

        @task
        def add(x, y):
            return x + y

        @task_group
        def tg(x, y):
            add(x, y)

        tg.expand_kwargs(make())
    assert d.tasks["tg.add"].upstream_task_ids == {"make"}
    pulled = {"make": [{"x": 1, "y": 2}, {"x": 3, "y": 4}]}
    context: dict[str, Any] = {"map_index": 1, "params": {}}
    result = d.tasks["tg.add"].execute(context, lambda tid, key: pulled[tid])
    assert result.return_value == 7
    s = serialize_dag(d, Path("/tmp"))
    assert s.tasks["tg.add"].expand.kind == "list_of_dicts"  # type: ignore[union-attr]


def test_a_value_of_the_same_group_is_read_at_the_instance_map_index() -> None:
    d = _pipeline()
    a, b, total = d.tasks["tg.a"], d.tasks["tg.b"], d.tasks["total"]
    assert same_group_map_index(b, "tg.a", 2) == 2
    assert same_group_map_index(b, "numbers", 2) is None  # outside the group: whole value
    assert same_group_map_index(total, "tg.b", -1) is None  # the reduce: every instance
    assert same_group_map_index(a, "tg.b", -1) is None


def test_an_unmappable_value_fails_the_task_that_pushes_it() -> None:
    from ketch.authoring.mapped import push_problem

    d = _pipeline()
    problem = push_problem(d.tasks["numbers"], TaskResult("abc"), 10)
    assert problem is not None and "UnmappableXComTypePushed" in problem and "'tg'" in problem
    assert push_problem(d.tasks["numbers"], TaskResult([1, 2]), 10) is None


def _group(body: Any) -> Any:
    @task
    def one(x):
        return x

    @task_group
    def tg(x):
        body(one, x)

    return tg


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda tg: tg.expand(), "no arguments to expand against"),
        (lambda tg: tg.expand(y=[1]), "expand() got an unexpected keyword argument 'y'"),
        (lambda tg: tg.expand(x="abc"), "expand() got an unexpected type 'str' for keyword"),
        (lambda tg: tg.partial(x=1).expand(x=[1]), "mapping already partial argument: x"),
        (lambda tg: tg.partial(x=1).partial(x=2), "duplicate partial argument: x"),
        (lambda tg: tg.partial(q=1), "partial() got an unexpected keyword argument 'q'"),
        (lambda tg: tg.expand_kwargs("x"), "expected XComArg or list[dict], not str"),
        (lambda tg: tg.expand_kwargs([1]), "expected XComArg or list[dict], not list"),
    ],
)
def test_bad_group_expansions_are_dag_errors(build: Any, message: str) -> None:
    with DAG("bad", schedule=None, start_date=START), pytest.raises(DagDefinitionError) as err:
        build(_group(lambda one, x: one(x)))
    assert message in str(err.value)


def test_what_a_mapped_group_cannot_hold_is_a_dag_error_naming_it() -> None:
    def nested_mapping(one: Any, x: Any) -> None:
        one.expand(x=[1, 2])

    def always(one: Any, x: Any) -> None:
        one.override(trigger_rule="always")(x)

    def branch(one: Any, x: Any) -> None:
        @task.branch
        def pick(v):
            return None

        pick(x)

    def nested_group(one: Any, x: Any) -> None:
        @task_group
        def inner(v):
            one(v)

        inner.expand(v=[1])

    def linked(one: Any, x: Any) -> None:
        x >> one(1)

    cases = [
        (linked, "its argument 'x' is a value, not a task"),
        (nested_mapping, "mapping a task inside a mapped task group"),
        (always, "not allowed with trigger rule 'always'"),
        (branch, "a branch task inside a mapped task group is not supported"),
        (nested_group, "a mapped task group inside the mapped task group 'tg'"),
    ]
    for body, message in cases:
        with DAG("bad", schedule=None, start_date=START), pytest.raises(DagDefinitionError) as err:
            _group(body).expand(x=[1, 2])
        assert message in str(err.value), body.__name__

    @task_group
    def star(**kwargs):
        EmptyTask(task_id="e")

    with DAG("star", schedule=None, start_date=START), pytest.raises(DagDefinitionError) as err:
        star.expand_kwargs([{"a": 1}])
    assert "expand_kwargs() on task group function with * or ** is not supported" in str(err.value)


# ----- the scheduler ---------------------------------------------------------------------


def _instances(engine: Engine, run_id: int) -> dict[str, dict[int, str | None]]:
    with Session(engine) as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.dag_run_id == run_id
            )
        ).all()
    out: dict[str, dict[int, str | None]] = {}
    for task_id, map_index, state in rows:
        out.setdefault(task_id, {})[map_index] = state
    return out


def _start(engine: Engine, d: DAG, scripts: dict[str, Any]) -> tuple[int, Scheduler]:
    insert_dag(engine, serialize_dag(d, Path("/tmp")).model_dump(mode="json", by_alias=True))
    run_id = trigger(engine, d.dag_id)
    executor = FakeExecutor(engine, scripts)
    scheduler = Scheduler(get_settings(), engine, executor, token_signer=lambda k, i: "token")
    scheduler.start_executor()
    return run_id, scheduler


def _finished(engine: Engine, run_id: int) -> bool:
    return run_state(engine, run_id) in ("success", "failed")


def test_instance_i_of_b_runs_after_instance_i_of_a_not_after_all_of_a(engine: Engine) -> None:
    opened = threading.Event()
    scripts = {
        "numbers": Outcome.success([1, 2, 3]),
        "tg.a[1]": Outcome.gate(opened, 3),
        "tg.a": Outcome.success(2),
        "tg.b": Outcome.success(20),
    }
    run_id, scheduler = _start(engine, _pipeline(), scripts)

    def others_done() -> bool:
        b = _instances(engine, run_id).get("tg.b", {})
        return b.get(0) == "success" and b.get(2) == "success"

    drive(scheduler, others_done)
    seen = _instances(engine, run_id)
    assert seen["tg.a"] == {0: "success", 1: "running", 2: "success"}
    assert seen["tg.b"] == {0: "success", 1: None, 2: "success"}
    assert seen["total"] == {-1: None}  # the reduce waits for every instance
    opened.set()
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.b"] == dict.fromkeys(range(3), "success")
    assert seen["total"] == {-1: "success"} and run_state(engine, run_id) == "success"


def test_a_failed_instance_fails_only_its_own_index_and_the_reduce(engine: Engine) -> None:
    scripts = {
        "numbers": Outcome.success([1, 2, 3]),
        "tg.a[1]": Outcome.fail(retry=False),
        "tg.a": Outcome.success(2),
        "tg.b": Outcome.success(20),
    }
    run_id, scheduler = _start(engine, _pipeline(), scripts)
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.a"] == {0: "success", 1: "failed", 2: "success"}
    assert seen["tg.b"] == {0: "success", 1: "upstream_failed", 2: "success"}
    assert seen["total"] == {-1: "upstream_failed"}
    assert run_state(engine, run_id) == "failed"


def test_zero_length_skips_every_task_of_the_group(engine: Engine) -> None:
    scripts = {"numbers": Outcome.success([])}
    run_id, scheduler = _start(engine, _pipeline(), scripts)
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.a"] == {-1: "skipped"} and seen["tg.b"] == {-1: "skipped"}
    assert seen["total"] == {-1: "skipped"}
    assert run_state(engine, run_id) == "success"


def test_over_max_map_length_fails_the_group_saying_so(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings().core, "max_map_length", 2)
    run_id, scheduler = _start(engine, _pipeline(values=[1, 2, 3]), {})
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.a"] == {-1: "failed"} and seen["tg.b"] == {-1: "upstream_failed"}
    assert seen["total"] == {-1: "upstream_failed"}
    with Session(engine) as session:
        error = session.scalar(
            select(TaskInstance.error).where(
                TaskInstance.dag_run_id == run_id, TaskInstance.task_id == "tg.a"
            )
        )
    assert (
        error == "task 'tg.a' expanded to 3 items, above max_map_length=2 ([core] max_map_length)"
    )


def test_a_restarted_scheduler_rebuilds_the_per_index_state_from_the_database(
    engine: Engine,
) -> None:
    opened = threading.Event()
    scripts = {"numbers": Outcome.success([1, 2]), "tg.a[0]": Outcome.gate(opened, 1)}
    run_id, first = _start(engine, _pipeline(), scripts)
    drive(first, lambda: _instances(engine, run_id).get("tg.b", {}).get(1) == "success")
    assert _instances(engine, run_id)["tg.b"] == {0: None, 1: "success"}
    # A second scheduler (fresh tallies) takes over; the first's running try ends.
    opened.set()
    drive(first, lambda: _instances(engine, run_id)["tg.a"][0] == "success")
    second = Scheduler(
        get_settings(), engine, FakeExecutor(engine, {}), token_signer=lambda k, i: "token"
    )
    second.start_executor()
    drive(second, lambda: _finished(engine, run_id))
    assert _instances(engine, run_id)["tg.b"] == {0: "success", 1: "success"}
    assert run_state(engine, run_id) == "success"


def test_an_instance_counts_its_own_index_inside_and_every_instance_outside() -> None:
    """In memory: b (all_done) in the group after a, and after x outside the group."""
    from ketch.scheduler.dag_cache import DagInfo
    from ketch.scheduler.evaluation import RunTally
    from ketch.scheduler.mapped_group import decide_instances, inner_upstreams
    from ketch.scheduler.trigger_rules import Decision

    with DAG("mixed", schedule=None, start_date=START) as d:

        @task
        def x():
            return 1

        @task
        def a(v):
            return v

        @task(trigger_rule="all_done")
        def b(v, w):
            return v

        @task_group
        def tg(v):
            b(a(v), x_out)

        x_out = x()
        tg.expand(v=[1, 2, 3])
    info = DagInfo(serialize_dag(d, Path("/tmp")))
    b_task = info.task("tg.b")
    assert b_task is not None and set(b_task.upstream_task_ids) == {"tg.a", "x"}
    a_states = {0: "failed", 1: "running", 2: "success"}
    rows = [("x", -1, "running"), *(("tg.a", i, s) for i, s in a_states.items())]
    rows += [("tg.b", i, None) for i in range(3)]
    tally = RunTally.build(1, info, rows, {})
    inner = inner_upstreams(tally, b_task)
    assert inner == ["tg.a"]
    assert decide_instances(tally, b_task, inner) == {}  # x outside is not done
    tally.set_state("x", "success")
    # all_done: instance 0 (its a failed) and 2 run; 1 waits for its own a only.
    assert decide_instances(tally, b_task, inner) == {0: Decision.RUN, 2: Decision.RUN}


def test_dag_test_runs_a_mapped_group_through_the_real_tries(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``DAG.test()``: every instance in this process, values through the execution API."""

    @dag(dag_id="group_dag_test", schedule=None, start_date=START)
    def group_dag_test():
        @task
        def numbers():
            return [1, 2, 3]

        @task
        def a(x, y):
            return x + y

        @task
        def b(v):
            return v * 10

        @task
        def total(vs):
            print(f"reduced {list(vs)}")

        @task_group
        def tg(x, y):
            return b(a(x, y))

        total(tg.partial(y=1).expand(x=numbers()))

    result = group_dag_test().test()
    assert result.state == "success"
    assert "reduced [20, 30, 40]" in capsys.readouterr().out


def _clear(engine: Engine, run_id: int, task_id: str) -> None:
    """Clear ``task_id`` and its downstream tasks, as the REST clear endpoint does."""
    from ketch.db.models import DagRun
    from ketch.operations.task_instances import clear_task_instances

    with Session(engine) as session, session.begin():
        run = session.get(DagRun, run_id)
        assert run is not None
        clear_task_instances(session, run.dag_id, run.run_id, [task_id], include_downstream=True)


def test_a_cleared_group_follows_the_new_length_in_every_task(engine: Engine) -> None:
    """Clearing the upstream a group maps over (with its downstream): the chained task b is
    revised like the root a, not left with the old count (issue 12)."""
    scripts: dict[str, Any] = {"numbers": Outcome.success([1, 2, 3])}
    run_id, scheduler = _start(engine, _pipeline(), scripts)
    drive(scheduler, lambda: _finished(engine, run_id))
    assert _instances(engine, run_id)["tg.b"] == dict.fromkeys(range(3), "success")

    for length in (5, 2, 2):
        scripts["numbers"] = Outcome.success(list(range(length)))
        _clear(engine, run_id, "numbers")
        drive(scheduler, lambda: _finished(engine, run_id))
        seen = _instances(engine, run_id)
        expected = {i: "success" if i < length else "removed" for i in range(5)}
        assert seen["tg.a"] == expected and seen["tg.b"] == expected, seen
        assert seen["total"] == {-1: "success"} and run_state(engine, run_id) == "success"

    # Clearing the chained task alone (its removed rows are cleared too) keeps the count.
    _clear(engine, run_id, "tg.b")
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.b"] == {0: "success", 1: "success", 2: "removed", 3: "removed", 4: "removed"}
    assert run_state(engine, run_id) == "success"


def test_a_cleared_group_emptied_by_its_upstream_removes_every_instance(engine: Engine) -> None:
    scripts: dict[str, Any] = {"numbers": Outcome.success([1, 2])}
    run_id, scheduler = _start(engine, _pipeline(), scripts)
    drive(scheduler, lambda: _finished(engine, run_id))
    scripts["numbers"] = Outcome.success([])
    _clear(engine, run_id, "numbers")
    drive(scheduler, lambda: _finished(engine, run_id))
    seen = _instances(engine, run_id)
    assert seen["tg.a"] == seen["tg.b"] == {0: "removed", 1: "removed"}
    # As for a plain mapped task emptied by a revision: the reduce is skipped.
    assert seen["total"] == {-1: "skipped"} and run_state(engine, run_id) == "success"


def test_the_new_length_reaches_every_task_of_a_longer_chain(engine: Engine) -> None:
    """numbers -> tg{a -> b -> c} -> total: each chained task is revised after the one above."""

    @dag(dag_id="chain3", schedule=None, start_date=START)
    def chain3():
        @task
        def numbers():
            return [1, 2, 3]

        @task
        def a(x):
            return x

        @task
        def b(v):
            return v

        @task
        def c(v):
            return v

        @task
        def total(vs):
            return sum(vs)

        @task_group
        def tg(x):
            return c(b(a(x)))

        total(tg.expand(x=numbers()))

    scripts: dict[str, Any] = {"numbers": Outcome.success([1, 2, 3])}
    run_id, scheduler = _start(engine, chain3(), scripts)
    drive(scheduler, lambda: _finished(engine, run_id))
    for length, rows in ((1, 3), (4, 4)):
        scripts["numbers"] = Outcome.success(list(range(length)))
        _clear(engine, run_id, "numbers")
        drive(scheduler, lambda: _finished(engine, run_id))
        seen = _instances(engine, run_id)
        expected = {i: "success" if i < length else "removed" for i in range(rows)}
        assert seen["tg.a"] == seen["tg.b"] == seen["tg.c"] == expected, seen
        assert seen["total"] == {-1: "success"} and run_state(engine, run_id) == "success"
