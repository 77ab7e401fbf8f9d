"""Short-circuit tasks: Airflow 3.3's ``ShortCircuitOperator`` / ``@task.short_circuit``.

A falsy result skips every descendant (``ignore_downstream_trigger_rules=True``, the
default) or only the direct downstream tasks (``False``, trigger rules decide the rest);
a truthy one lets the pipeline continue and is the task's return value.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import ketch
from ketch import DAG, EmptyTask, ShortCircuitOperator, task
from ketch.authoring.context import build_context
from ketch.authoring.serialize import serialize_dag
from ketch.authoring.tasks import TaskResult
from tests.support.fake_executor import Outcome
from tests.support.ketch_process import standalone_with_dag
from tests.unit.test_authoring import PAYLOAD
from tests.unit.test_scheduler import run_dag

START = datetime(2026, 1, 1)


def build(ignore: bool = True) -> DAG:
    with DAG("sc", schedule=None, start_date=START) as d:

        @task.short_circuit(ignore_downstream_trigger_rules=ignore)
        def check(params: dict[str, Any]) -> Any:
            return params["value"]

        check() >> EmptyTask(task_id="a") >> EmptyTask(task_id="b")
        EmptyTask(task_id="alone")
    return d


def result_of(d: DAG, task_id: str, value: Any) -> TaskResult:
    ctx = build_context({**PAYLOAD, "params": {"value": value}})
    return d.get_task(task_id).execute(ctx, lambda *_: None)


@pytest.mark.parametrize("value", [True, 1, "yes", [0], {"k": 1}])
def test_truthy_continues_and_is_the_return_value(value: Any) -> None:
    r = result_of(build(), "check", value)
    assert r.return_value == value
    assert r.push_return_value is True
    assert r.follow_task_ids == ["a"]  # every direct downstream task is followed


@pytest.mark.parametrize("value", [False, 0, "", [], {}, None])
def test_falsy_follows_nothing_and_stores_no_value(value: Any) -> None:
    r = result_of(build(), "check", value)
    assert r.follow_task_ids == []
    assert r.push_return_value is False  # Airflow raises DownstreamTasksSkipped before pushing


def test_falsy_without_downstream_tasks_keeps_its_value() -> None:
    with DAG("sc_leaf", schedule=None, start_date=START) as d:
        ShortCircuitOperator(task_id="leaf", python_callable=lambda: 0)
    r = d.get_task("leaf").execute(build_context(PAYLOAD), lambda *_: None)
    assert (r.return_value, r.push_return_value, r.follow_task_ids) == (0, True, [])


def test_operator_class_takes_airflow_arguments(tmp_path: Path) -> None:
    with DAG("sc_op", schedule=None, start_date=START) as d:
        sc = ketch.ShortCircuitOperator(
            task_id="sc",
            python_callable=lambda x, y: x > y,
            op_args=[1],
            op_kwargs={"y": 2},
            ignore_downstream_trigger_rules=False,
        )
        sc >> ketch.DummyOperator(task_id="after")
    r = d.get_task("sc").execute(build_context(PAYLOAD), lambda *_: None)
    assert r.follow_task_ids == [] and r.push_return_value is False
    serialized = serialize_dag(d, tmp_path)
    assert serialized.tasks["sc"].kind == "short_circuit"
    assert serialized.tasks["sc"].ignore_downstream_trigger_rules is False
    assert serialize_dag(build(), tmp_path).tasks["check"].ignore_downstream_trigger_rules is True


def test_airflow_operator_names_are_exported() -> None:
    assert ketch.PythonOperator is ketch.PythonTask
    assert ketch.BranchPythonOperator is ketch.BranchPythonTask
    assert ketch.ShortCircuitOperator is ketch.ShortCircuitTask
    assert ketch.DummyOperator is ketch.EmptyOperator is ketch.EmptyTask
    with DAG("names", schedule=None, start_date=START) as d:
        ketch.PythonOperator(task_id="p", python_callable=lambda a: a, op_args=[3])
        ketch.BranchPythonOperator(task_id="b", python_callable=lambda: "p")
    assert d.get_task("p").execute(build_context(PAYLOAD), lambda *_: None).return_value == 3


# ----- the scheduler's side (scripted outcomes) -------------------------------------------

# sc >> a >> b; a >> join; other >> join; join has trigger rule all_done.
GRAPH: dict[str, Any] = {
    "sc": {"kind": "short_circuit"},
    "other": {},
    "a": {"upstream": ["sc"]},
    "b": {"upstream": ["a"]},
    "join": {"upstream": ["a", "other"], "trigger_rule": "all_done"},
}


def graph(ignore: bool) -> dict[str, Any]:
    return {**GRAPH, "sc": {"kind": "short_circuit", "ignore_downstream_trigger_rules": ignore}}


def test_falsy_skips_every_descendant_whatever_their_trigger_rules(engine: Engine) -> None:
    states, run, _ = run_dag(engine, graph(True), {"sc": Outcome.branch([])})
    assert states == {
        "sc": "success",
        "other": "success",
        "a": "skipped",
        "b": "skipped",
        "join": "skipped",  # all_done, skipped anyway: trigger rules are ignored
    }
    assert run == "success"


def test_falsy_respecting_trigger_rules_skips_only_direct_downstream(sqlite_engine: Engine) -> None:
    states, run, _ = run_dag(sqlite_engine, graph(False), {"sc": Outcome.branch([])})
    assert states == {
        "sc": "success",
        "other": "success",
        "a": "skipped",
        "b": "skipped",  # all_success with a skipped upstream: skip propagation
        "join": "success",  # all_done: its rule decides, and it runs
    }
    assert run == "success"


def test_truthy_runs_everything(sqlite_engine: Engine) -> None:
    states, run, _ = run_dag(sqlite_engine, graph(True), {"sc": Outcome.branch(["a"])})
    assert set(states.values()) == {"success"}
    assert run == "success"


# ----- end to end on the local executor ------------------------------------------------------

SC_DAG = """
from datetime import datetime, timezone

from ketch import DAG, EmptyTask, ShortCircuitOperator, TriggerRule, task

with DAG("e2e_sc", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)):
    @task.short_circuit
    def gate(params):
        return params.get("go", 0)

    @task
    def use(value):
        return value * 2

    g = gate()
    after = use(g)
    final = EmptyTask(task_id="final", trigger_rule=TriggerRule.ALL_DONE)
    after >> final

    keep_rules = ShortCircuitOperator(
        task_id="keep_rules", python_callable=lambda: False, ignore_downstream_trigger_rules=False
    )
    direct = EmptyTask(task_id="direct")
    cleanup = EmptyTask(task_id="cleanup", trigger_rule="all_done")
    keep_rules >> direct >> cleanup
"""


def test_short_circuit_end_to_end_on_the_local_executor(ketch_home: Path, tmp_path: Path) -> None:
    xcoms = "/api/v1/dags/e2e_sc/dagRuns/{}/taskInstances/{}/xcomEntries/return_value"
    with standalone_with_dag(ketch_home, tmp_path, "sc.py", SC_DAG, "e2e_sc") as api:
        stop = api.trigger("e2e_sc")["dag_run_id"]
        stopped = api.wait_run_finished("e2e_sc", stop, 120)
        stop_tis = api.task_instances("e2e_sc", stop)
        stop_value = api.http.get(xcoms.format(stop, "gate"))
        go = api.trigger("e2e_sc", {"go": 21})["dag_run_id"]
        went = api.wait_run_finished("e2e_sc", go, 120)
        go_tis = api.task_instances("e2e_sc", go)
        go_value = api.http.get(xcoms.format(go, "use"))
    assert stopped["state"] == "success", stop_tis
    assert {t: ti["state"] for t, ti in stop_tis.items()} == {
        "gate": "success",
        "use": "skipped",
        "final": "skipped",  # all_done, but every descendant is skipped
        "keep_rules": "success",
        "direct": "skipped",
        "cleanup": "success",  # trigger rules respected below the direct downstream
    }
    assert stop_value.status_code == 404, stop_value.text  # no return value stored
    assert went["state"] == "success", go_tis
    assert {t: ti["state"] for t, ti in go_tis.items() if t in ("gate", "use", "final")} == {
        "gate": "success",
        "use": "success",
        "final": "success",
    }
    assert go_value.json()["value"] == 42
