"""A branch task may return any task of its DAG (Airflow 3's ``SkipMixin.skip_all_except``).

The chosen tasks and all their descendants are kept; the branch's direct downstream tasks
outside that set are skipped; tasks further away are decided by the usual skip propagation.
An id that is not a task of the DAG fails the branch task, naming the id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from ketch import DAG, EmptyTask, task
from ketch.authoring.context import build_context
from tests.support.fake_executor import Outcome
from tests.unit.test_authoring import PAYLOAD
from tests.unit.test_scheduler import run_dag


def test_choosing_a_task_further_down_skips_every_direct_downstream(engine: Engine) -> None:
    # branch >> [a, b]; a >> a2; side >> far; a >> far (far: none_failed_min_one_success).
    tasks = {
        "branch": {"kind": "branch"},
        "side": {},
        "a": {"upstream": ["branch"]},
        "b": {"upstream": ["branch"]},
        "a2": {"upstream": ["a"]},
        "far": {"upstream": ["a", "side"], "trigger_rule": "none_failed_min_one_success"},
    }
    states, run, _ = run_dag(engine, tasks, {"branch": Outcome.branch(["a2", "far"])})
    assert states == {
        "branch": "success",
        "side": "success",
        "a": "skipped",  # a direct downstream, not chosen nor below a chosen task
        "b": "skipped",
        "a2": "skipped",  # chosen, but its upstream a was skipped (all_success propagation)
        "far": "success",  # chosen; its own trigger rule lets it run past the skipped a
    }
    assert run == "success"


def test_a_direct_downstream_below_a_chosen_task_is_kept(sqlite_engine: Engine) -> None:
    # branch >> [a, join]; x >> join; x is not downstream of branch: choosing x keeps join.
    tasks = {
        "branch": {"kind": "branch"},
        "x": {},
        "a": {"upstream": ["branch"]},
        "join": {"upstream": ["branch", "x"]},
    }
    states, run, _ = run_dag(sqlite_engine, tasks, {"branch": Outcome.branch(["x"])})
    assert states == {"branch": "success", "x": "success", "a": "skipped", "join": "success"}
    assert run == "success"


def build_branch() -> DAG:
    with DAG("br", schedule=None, start_date=datetime(2026, 1, 1)) as d:

        @task.branch
        def choose(params: dict[str, Any]) -> Any:
            return params.get("choice")

        choose() >> [EmptyTask(task_id="left"), EmptyTask(task_id="right")]
        EmptyTask(task_id="far").set_upstream(d.tasks["left"])
        EmptyTask(task_id="elsewhere")
    return d


def follow(d: DAG, choice: Any) -> list[str] | None:
    ctx = build_context({**PAYLOAD, "params": {"choice": choice}})
    return d.get_task("choose").execute(ctx, lambda *_: None).follow_task_ids


def test_any_task_of_the_dag_may_be_returned() -> None:
    d = build_branch()
    assert follow(d, "far") == ["far"]
    assert follow(d, "elsewhere") == ["elsewhere"]
    assert follow(d, ("left", "far")) == ["left", "far"]


def test_an_id_not_in_the_dag_fails_the_branch_task_naming_it() -> None:
    d = build_branch()
    with pytest.raises(ValueError) as err:
        follow(d, ["left", "nope"])
    assert (
        str(err.value) == "branch task 'choose' returned ['nope'], which are not tasks of DAG 'br'"
    )
    with pytest.raises(TypeError, match="must return a task id"):
        follow(d, 3)
