"""Task groups with Airflow 3's semantics: ``with TaskGroup(...)`` and ``@task_group``.

Ids are prefixed (``group.task``, ``outer.inner.task``) unless ``prefix_group_id=False``;
``>>`` with a group links its roots or leaves; ``default_args`` of a group are merged over
the DAG's, inner winning; a group id used twice is an error (a decorated group called
twice gets ``__1``). Serialized DAGs and the REST API carry each task's group, and a DAG
with groups runs end to end with the local executor.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ketch import DAG, EmptyTask, TaskGroup, XComArg, dag, task, task_group
from ketch.api.app import create_app
from ketch.authoring.context import build_context
from ketch.authoring.serialize import serialize_dag
from ketch.config import get_settings
from ketch.exceptions import DagDefinitionError
from ketch.serialization import SerializedDag
from tests.support.ketch_process import Api, KetchEnv, running, wait_for
from tests.support.web import local_client
from tests.unit.test_authoring import PAYLOAD, run
from tests.unit.test_operations import add_dag

START = datetime(2026, 1, 1, tzinfo=UTC)


def edges(d: DAG) -> set[tuple[str, str]]:
    return {(t.task_id, down) for t in d.tasks.values() for down in t.downstream_task_ids}


# ----- ids -----------------------------------------------------------------------------


def test_ids_are_prefixed_by_every_enclosing_group() -> None:
    with DAG("ids") as d:
        EmptyTask(task_id="start")
        with TaskGroup("outer") as outer:
            EmptyTask(task_id="a")
            with TaskGroup("inner") as inner:
                EmptyTask(task_id="b")
    assert list(d.tasks) == ["start", "outer.a", "outer.inner.b"]
    assert outer.group_id == "outer" and inner.group_id == "outer.inner"
    assert d.tasks["outer.inner.b"].label == "b"
    assert d.tasks["outer.inner.b"].task_group is inner
    assert d.tasks["start"].task_group is d.task_group and d.task_group.group_id is None
    assert list(d.task_group_dict) == ["outer", "outer.inner"]
    assert inner.path() == ["outer", "outer.inner"]
    assert outer["a"] is d.tasks["outer.a"] and outer["inner"] is inner


def test_prefix_group_id_false_leaves_children_unprefixed() -> None:
    with DAG("noprefix") as d, TaskGroup("outer", prefix_group_id=False) as outer:
        EmptyTask(task_id="a")
        with TaskGroup("inner") as inner:
            EmptyTask(task_id="b")
    # outer does not prefix what is inside it; inner (prefixing) still prefixes its own.
    assert list(d.tasks) == ["a", "inner.b"]
    assert inner.group_id == "inner"
    assert d.tasks["a"].task_group is outer


def test_decorated_tasks_in_a_group_get_unique_prefixed_ids() -> None:
    with DAG("deco") as d, TaskGroup("g"):

        @task
        def x() -> int:
            return 1

        x()
        x()
        x()
    assert list(d.tasks) == ["g.x", "g.x__1", "g.x__2"]


def test_explicit_task_group_and_dag_arguments() -> None:
    d = DAG("explicit")
    g = TaskGroup("g", dag=d)
    t = EmptyTask(task_id="t", task_group=g)
    assert t.task_id == "g.t" and t.dag is d and d.tasks["g.t"] is t
    child = TaskGroup("child", parent_group=g, default_args={"retries": 5})
    u = EmptyTask(task_id="u", task_group=child)
    assert (child.group_id, u.task_id, u.retries) == ("g.child", "g.child.u", 5)
    assert list(g.children) == ["g.t", "g.child"] and child.parent_group is g


# ----- dependencies ------------------------------------------------------------------------


def test_shift_between_tasks_and_groups_links_roots_and_leaves() -> None:
    with DAG("shift") as d:
        start = EmptyTask(task_id="start")
        with TaskGroup("g1") as g1:
            a = EmptyTask(task_id="a")
            b = EmptyTask(task_id="b")
            c = EmptyTask(task_id="c")
            a >> [b, c]
        with TaskGroup("g2") as g2:
            EmptyTask(task_id="x")
            EmptyTask(task_id="y")
        end = EmptyTask(task_id="end")
        start >> g1 >> g2 >> end
    assert edges(d) == {
        ("start", "g1.a"),
        ("g1.a", "g1.b"),
        ("g1.a", "g1.c"),
        ("g1.b", "g2.x"),
        ("g1.b", "g2.y"),
        ("g1.c", "g2.x"),
        ("g1.c", "g2.y"),
        ("g2.x", "end"),
        ("g2.y", "end"),
    }
    assert [t.task_id for t in g1.roots] == ["g1.a"]
    assert [t.task_id for t in g1.leaves] == ["g1.b", "g1.c"]
    assert g2.upstream_group_ids == {"g1"} and g1.downstream_group_ids == {"g2"}
    assert g1.upstream_task_ids == {"start"} and g2.downstream_task_ids == {"end"}
    assert end.upstream_task_ids == {"g2.x", "g2.y"}
    assert start.downstream_task_ids == {"g1.a"}


def test_left_shift_lists_and_set_upstream_with_groups() -> None:
    with DAG("lshift") as d:
        with TaskGroup("g") as g:
            EmptyTask(task_id="a")
        other = EmptyTask(task_id="other")
        final = EmptyTask(task_id="final")
        final << [g, other]
        first = EmptyTask(task_id="first")
        g.set_upstream(first)
        [first] >> other
    assert edges(d) == {
        ("g.a", "final"),
        ("other", "final"),
        ("first", "g.a"),
        ("first", "other"),
    }


def test_an_empty_group_passes_its_upstream_through() -> None:
    with DAG("empty") as d:
        a = EmptyTask(task_id="a")
        with TaskGroup("nothing") as nothing:
            pass
        b = EmptyTask(task_id="b")
        a >> nothing >> b
    assert edges(d) == {("a", "b")}


# ----- default_args ------------------------------------------------------------------------


def test_group_default_args_merge_over_the_dag_inner_wins() -> None:
    with DAG("defaults", default_args={"retries": 1, "owner": "dag", "pool": "p0"}) as d:
        EmptyTask(task_id="plain")
        with TaskGroup("outer", default_args={"retries": 2, "owner": "outer"}):
            EmptyTask(task_id="in_outer")
            with TaskGroup("inner", default_args={"retries": 3}):
                EmptyTask(task_id="in_inner")
                EmptyTask(task_id="explicit", retries=7)
    t = d.tasks
    assert (t["plain"].retries, t["plain"].owner, t["plain"].pool) == (1, "dag", "p0")
    assert (t["outer.in_outer"].retries, t["outer.in_outer"].owner) == (2, "outer")
    inner = t["outer.inner.in_inner"]
    assert (inner.retries, inner.owner, inner.pool) == (3, "outer", "p0")
    assert t["outer.inner.explicit"].retries == 7


def test_group_default_args_are_checked_like_task_arguments() -> None:
    with (
        pytest.raises(DagDefinitionError, match="trigger_rule"),
        DAG("bad"),
        TaskGroup("g", default_args={"trigger_rule": "sometimes"}),
    ):
        EmptyTask(task_id="t")


# ----- @task_group ------------------------------------------------------------------------


def test_task_group_decorator_returns_the_group_or_the_returned_task() -> None:
    @task_group
    def nothing_returned() -> None:
        """Tooltip from the docstring."""
        EmptyTask(task_id="a")
        EmptyTask(task_id="b")

    @task_group(group_id="chain", default_args={"retries": 4})
    def returns_last(n: int) -> XComArg:
        @task
        def first() -> int:
            return n

        @task
        def second(v: int) -> int:
            return v + 1

        return second(first())

    with DAG("decorated") as d:
        start = EmptyTask(task_id="start")
        group = nothing_returned()
        last = returns_last(3)
        end = EmptyTask(task_id="end")
        start >> group >> last >> end

    assert isinstance(group, TaskGroup) and group.group_id == "nothing_returned"
    assert group.tooltip == "Tooltip from the docstring."
    assert isinstance(last, XComArg) and last.operator.task_id == "chain.second"
    assert edges(d) == {
        ("start", "nothing_returned.a"),
        ("start", "nothing_returned.b"),
        ("nothing_returned.a", "chain.second"),
        ("nothing_returned.b", "chain.second"),
        ("chain.first", "chain.second"),
        ("chain.second", "end"),
    }
    # Only the returned task was linked: chain.first has no upstream from the group before.
    assert d.tasks["chain.first"].upstream_task_ids == set()
    assert d.tasks["chain.first"].retries == 4
    assert run(d, "chain.second", {"chain.first": 3}).return_value == 4


def test_calling_a_task_group_function_twice_suffixes_and_override_renames() -> None:
    @task_group
    def section() -> None:
        EmptyTask(task_id="t")

    with DAG("twice") as d:
        first = section()
        second = section()
        third = section()
        named = section.override(group_id="named", tooltip="given")()
    assert [g.group_id for g in (first, second, third, named)] == [
        "section",
        "section__1",
        "section__2",
        "named",
    ]
    assert named.tooltip == "given"
    assert list(d.tasks) == ["section.t", "section__1.t", "section__2.t", "named.t"]


def test_nested_decorated_groups_called_twice() -> None:
    @task_group
    def inner() -> None:
        EmptyTask(task_id="t")

    @task_group
    def outer() -> None:
        inner()
        inner()
        inner()

    with DAG("nested") as d:
        outer()
    assert list(d.tasks) == ["outer.inner.t", "outer.inner__1.t", "outer.inner__2.t"]


def test_task_group_decorator_rejects_unknown_arguments_like_airflow() -> None:
    with pytest.raises(TypeError):
        task_group(colour="red")(lambda: None)


def test_task_group_inside_a_dag_function() -> None:
    @task_group
    def process(value: int) -> XComArg:
        @task
        def double(v: int) -> int:
            return v * 2

        return double(value)

    @dag(schedule=None, start_date=START)
    def flow() -> None:
        @task
        def source() -> int:
            return 5

        process(source())

    d = flow()
    assert edges(d) == {("source", "process.double")}
    assert run(d, "process.double", {"source": 5}).return_value == 10


# ----- errors ----------------------------------------------------------------------------


def test_a_group_id_used_twice_is_an_error() -> None:
    with pytest.raises(DagDefinitionError) as err, DAG("dup"):
        TaskGroup("g")
        TaskGroup("g")
    assert "group_id 'g' has already been added to the DAG" in str(err.value)


def test_group_and_task_ids_may_not_collide() -> None:
    with (
        pytest.raises(DagDefinitionError, match="group_id 'x' has already been added"),
        DAG("task_first"),
    ):
        EmptyTask(task_id="x")
        TaskGroup("x")
    with (
        pytest.raises(DagDefinitionError, match="task_id 'x' is already used by a task group"),
        DAG("group_first"),
    ):
        TaskGroup("x")
        EmptyTask(task_id="x")


def test_the_same_group_name_in_different_parents_is_fine() -> None:
    with DAG("parents") as d:
        with TaskGroup("a"), TaskGroup("common"):
            EmptyTask(task_id="t")
        with TaskGroup("b"), TaskGroup("common"):
            EmptyTask(task_id="t")
    assert list(d.tasks) == ["a.common.t", "b.common.t"]


@pytest.mark.parametrize("bad", ["with.dot", "", "sp ace", 3])
def test_invalid_group_ids(bad: Any) -> None:
    with pytest.raises(DagDefinitionError, match="task group id"), DAG("invalid"):
        TaskGroup(bad)


def test_a_task_group_outside_a_dag_is_an_error() -> None:
    with pytest.raises(DagDefinitionError, match="TaskGroup can only be used inside a dag"):
        TaskGroup("lonely")


# ----- serialization and REST ----------------------------------------------------------------


def build_grouped(fileloc: Path) -> DAG:
    with DAG("grouped", schedule=None, start_date=START) as d:
        start = EmptyTask(task_id="start")
        with TaskGroup("outer", tooltip="the outer one", ui_color="#abcdef") as outer:
            EmptyTask(task_id="a")
            with TaskGroup("inner", group_display_name="Inner!"):
                EmptyTask(task_id="b")
        start >> outer
    d.fileloc = str(fileloc)
    return d


def serialized_grouped(tmp_path: Path) -> SerializedDag:
    fileloc = tmp_path / "grouped.py"
    fileloc.write_text("# test\n")
    return serialize_dag(build_grouped(fileloc), tmp_path)


def test_serialized_tasks_carry_their_group(tmp_path: Path) -> None:
    s = SerializedDag.model_validate_json(serialized_grouped(tmp_path).model_dump_json())
    assert s.tasks["start"].task_group_id is None and s.tasks["start"].label == "start"
    assert s.tasks["outer.a"].task_group_id == "outer" and s.tasks["outer.a"].label == "a"
    assert s.tasks["outer.inner.b"].task_group_id == "outer.inner"
    assert s.task_group_path("outer.inner.b") == ["outer", "outer.inner"]
    assert s.task_group_path("start") == []
    assert list(s.task_groups) == ["outer", "outer.inner"]
    outer, inner = s.task_groups["outer"], s.task_groups["outer.inner"]
    assert (outer.label, outer.tooltip, outer.ui_color) == ("outer", "the outer one", "#abcdef")
    assert outer.children == ["outer.a", "outer.inner"] and outer.upstream_task_ids == ["start"]
    assert (inner.label, inner.parent_group_id) == ("Inner!", "outer")
    # The scheduler's view: plain tasks with prefixed ids and edges.
    assert s.tasks["outer.a"].upstream_task_ids == ["start"]
    assert s.tasks["outer.inner.b"].upstream_task_ids == ["start"]


@pytest.fixture
def client(sqlite_engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    with Session(sqlite_engine) as session:
        add_dag(session, serialized_grouped(tmp_path))
        session.commit()
    with local_client(create_app(get_settings())) as c:
        yield c


def test_rest_tasks_and_details_show_groups(client: TestClient) -> None:
    tasks = client.get("/api/v1/dags/grouped/tasks").json()["tasks"]
    by_id = {t["task_id"]: t for t in tasks}
    assert by_id["outer.inner.b"]["task_group_id"] == "outer.inner"
    assert by_id["outer.inner.b"]["task_group_path"] == ["outer", "outer.inner"]
    assert by_id["outer.inner.b"]["label"] == "b"
    assert by_id["start"]["task_group_id"] is None and by_id["start"]["task_group_path"] == []
    detail = client.get("/api/v1/dags/grouped").json()
    groups = {g["group_id"]: g for g in detail["task_groups"]}
    assert groups["outer"]["children"] == ["outer.a", "outer.inner"]
    assert groups["outer.inner"]["parent_group_id"] == "outer"
    assert [t["task_id"] for t in detail["tasks"]] == ["start", "outer.a", "outer.inner.b"]


# ----- end to end ------------------------------------------------------------------------------

GROUP_DAG = """
from datetime import datetime, timezone

from ketch import DAG, EmptyTask, TaskGroup, task, task_group


@task_group(default_args={"retries": 1})
def transform(value):
    @task
    def double(v):
        return v * 2

    @task
    def add_one(v):
        return v + 1

    return add_one(double(value))


with DAG("e2e_groups", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         is_paused_upon_creation=False) as d:
    @task
    def source():
        return 20

    value = transform(source())
    with TaskGroup("load") as load:
        @task
        def save(v):
            assert v == 41, v
            return "saved"

        save(value)
        with TaskGroup("checks"):
            EmptyTask(task_id="verify")

    load >> EmptyTask(task_id="done")


with DAG("e2e_group_branch", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         is_paused_upon_creation=False):
    @task.branch
    def choose():
        return "chosen"  # a task group id: its root tasks are followed

    with TaskGroup("chosen") as chosen:
        EmptyTask(task_id="a") >> EmptyTask(task_id="b")
    with TaskGroup("other") as other:
        EmptyTask(task_id="c")
    choose() >> [chosen, other]
"""


def test_a_dag_with_groups_runs_end_to_end_on_the_local_executor(
    ketch_home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "groups.py").write_text(GROUP_DAG)
    env = KetchEnv(home=ketch_home, db_url=f"sqlite:///{ketch_home / 'e2e.db'}", dags_folder=folder)
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_groups"), 60, 0.1, "e2e_groups parsed")
        run_ = api.trigger("e2e_groups")
        finished = api.wait_run_finished("e2e_groups", run_["dag_run_id"], 120)
        tis = api.task_instances("e2e_groups", run_["dag_run_id"])
        tasks = api.http.get("/api/v1/dags/e2e_groups/tasks").json()["tasks"]
        wait_for(lambda: api.dag("e2e_group_branch"), 60, 0.1, "e2e_group_branch parsed")
        branch_run = api.trigger("e2e_group_branch")
        branch_finished = api.wait_run_finished("e2e_group_branch", branch_run["dag_run_id"], 120)
        branch_tis = api.task_instances("e2e_group_branch", branch_run["dag_run_id"])
    assert finished["state"] == "success", tis
    assert {tid: ti["state"] for tid, ti in tis.items()} == {
        "source": "success",
        "transform.double": "success",
        "transform.add_one": "success",
        "load.save": "success",
        "load.checks.verify": "success",
        "done": "success",
    }
    paths = {t["task_id"]: t["task_group_path"] for t in tasks}
    assert paths["load.checks.verify"] == ["load", "load.checks"]
    assert paths["transform.add_one"] == ["transform"]
    assert {t["task_id"]: t["retries"] for t in tasks}["transform.double"] == 1
    # done waited for the whole load group (its leaves), nothing else.
    upstream = {t["task_id"]: t["upstream_task_ids"] for t in tasks}
    assert sorted(upstream["done"]) == ["load.checks.verify", "load.save"]
    assert branch_finished["state"] == "success", branch_tis
    assert {tid: ti["state"] for tid, ti in branch_tis.items()} == {
        "choose": "success",
        "chosen.a": "success",
        "chosen.b": "success",
        "other.c": "skipped",
    }


def build_branching() -> DAG:
    with DAG("branching", schedule=None, start_date=START) as d:

        @task.branch
        def pick(params: dict[str, Any]) -> Any:
            return params["choice"]

        with TaskGroup("left") as left:
            EmptyTask(task_id="a") >> EmptyTask(task_id="b")
            EmptyTask(task_id="c")
        with TaskGroup("right") as right:
            EmptyTask(task_id="x")
            with TaskGroup("deep"):

                @task.branch
                def inner_pick(params: dict[str, Any]) -> Any:
                    return params["choice"]

                inner_pick() >> EmptyTask(task_id="y")
        pick() >> [left, right]
    return d


def follow(d: DAG, task_id: str, choice: Any) -> list[str] | None:
    ctx = build_context({**PAYLOAD, "params": {"choice": choice}})
    return d.get_task(task_id).execute(ctx, lambda *_: None).follow_task_ids


def test_a_branch_may_return_a_task_group_id_meaning_its_roots() -> None:
    d = build_branching()
    assert follow(d, "pick", "left") == ["left.a", "left.c"]
    assert follow(d, "pick", ["right.deep", "left.b"]) == ["right.deep.inner_pick", "left.b"]
    # Relative to the branch task's own group, when nothing has that id itself.
    assert follow(d, "right.deep.inner_pick", "y") == ["right.deep.y"]
    assert follow(d, "right.deep.inner_pick", "left") == ["left.a", "left.c"]
    with pytest.raises(ValueError, match=r"returned \['nope'\]"):
        follow(d, "pick", "nope")
