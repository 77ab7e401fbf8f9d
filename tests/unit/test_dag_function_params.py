"""``@dag`` function arguments become DAG params (Airflow's ``DagParam``).

``@dag def flow(x=5)``: the DAG gets ``params={"x": 5}`` and the function receives a
reference that a task resolves in its try to the run's conf value, else the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ketch import Param, dag, task
from ketch.authoring.context import build_context
from ketch.authoring.serialize import serialize_dag
from ketch.authoring.xcom_args import DagParam
from tests.support.ketch_process import standalone_with_dag
from tests.unit.test_authoring import PAYLOAD


def build(**call: Any) -> Any:
    @dag(schedule=None, params={"y": Param(1, type="integer", minimum=0)})
    def flow(x: int = 5, y: int = 7, *, label: str = "l") -> None:
        @task
        def show(a: Any, b: Any, c: Any) -> Any:
            return [a, b, c]

        show(x, y, c=label)

    return flow(**call)


def run_show(d: Any, conf: dict[str, Any]) -> Any:
    ctx = build_context({**PAYLOAD, "conf": conf, "params": {}})
    return d.get_task("show").execute(ctx, lambda *_: None).return_value


def test_arguments_become_params_keeping_a_declared_schema(tmp_path: Path) -> None:
    d = build()
    assert {k: p.value for k, p in d.params.items()} == {"y": 7, "x": 5, "label": "l"}
    assert d.params["y"].schema == {"type": "integer", "minimum": 0}
    serialized = serialize_dag(d, tmp_path)
    assert serialized.params["x"].default == 5 and serialized.params["x"].has_default
    assert d.get_task("show").upstream_task_ids == set()  # a param links no task


def test_the_task_receives_conf_else_the_default() -> None:
    d = build()
    assert run_show(d, {}) == [5, 7, "l"]
    assert run_show(d, {"x": 9, "label": "z"}) == [9, 7, "z"]


def test_arguments_given_at_call_time_are_the_defaults() -> None:
    d = build(x=11)
    assert d.params["x"].value == 11
    assert run_show(d, {}) == [11, 7, "l"]


def test_a_missing_argument_is_an_error_as_in_airflow() -> None:
    @dag(schedule=None)
    def needs(value: int) -> None: ...

    with pytest.raises(TypeError, match="value"):
        needs()


def test_a_param_without_default_resolves_from_params() -> None:
    @dag(schedule=None, params={"p": 3})
    def flow() -> None:
        @task
        def show(v: Any) -> Any:
            return v

        show(DagParam(flow_dag(), "p"))

    def flow_dag() -> Any:
        from ketch.authoring._context import current_dag

        return current_dag()

    d = flow()
    ctx = build_context({**PAYLOAD, "conf": {}, "params": {"p": 4}})
    assert d.get_task("show").execute(ctx, lambda *_: None).return_value == 4


PARAM_DAG = """
from datetime import datetime, timezone

from ketch import dag, task


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
def e2e_params(n: int = 2):
    @task
    def double(v):
        return v * 2

    double(n)


e2e_params()
"""


def test_dag_function_params_end_to_end(ketch_home: Path, tmp_path: Path) -> None:
    value = "/api/v1/dags/e2e_params/dagRuns/{}/taskInstances/double/xcomEntries/return_value"
    with standalone_with_dag(ketch_home, tmp_path, "params.py", PARAM_DAG, "e2e_params") as api:
        default_run = api.trigger("e2e_params")["dag_run_id"]
        conf_run = api.trigger("e2e_params", {"n": 21})["dag_run_id"]
        states = [
            api.wait_run_finished("e2e_params", r, 120)["state"] for r in (default_run, conf_run)
        ]
        values = [api.http.get(value.format(r)).json()["value"] for r in (default_run, conf_run)]
        params = api.http.get("/api/v1/dags/e2e_params").json()["params"]
    assert states == ["success", "success"]
    assert values == [4, 42]
    assert params["n"]["value"] == 2
