"""DAG authoring: dependencies, XComArg edges, ids, default_args, context, branch, bash."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ketch import (
    DAG,
    BashOperator,
    BashTask,
    EmptyOperator,
    EmptyTask,
    FailTask,
    Param,
    SkipTask,
    TriggerRule,
    dag,
    get_current_context,
    task,
)
from ketch.authoring.context import build_context
from ketch.authoring.serialize import serialize_dag
from ketch.authoring.tasks import TaskResult

PAYLOAD = {
    "dag_id": "d",
    "task_id": "t",
    "run_id": "manual__1",
    "try_number": 1,
    "max_tries": 0,
    "logical_date": "2024-03-01T00:00:00+00:00",
    "data_interval_start": "2024-03-01T00:00:00+00:00",
    "data_interval_end": "2024-03-02T00:00:00+00:00",
    "params": {"x": 3},
    "conf": {"x": 3},
}


def run(the_dag: DAG, task_id: str, xcoms: dict[str, Any] | None = None) -> TaskResult:
    values = xcoms or {}
    ctx = build_context({**PAYLOAD, "dag_id": the_dag.dag_id, "task_id": task_id})
    return the_dag.get_task(task_id).execute(ctx, lambda tid, key: values[tid])


def test_aliases() -> None:
    assert BashOperator is BashTask
    assert EmptyOperator is EmptyTask


def test_shift_operators_and_lists() -> None:
    with DAG("deps") as d:
        a, b, c, e = (EmptyTask(task_id=x) for x in "abce")
        a >> [b, c]
        [b, c] >> e
        f = EmptyTask(task_id="f")
        f << a
    assert d.tasks["a"].downstream_task_ids == {"b", "c", "f"}
    assert d.tasks["e"].upstream_task_ids == {"b", "c"}
    assert d.tasks["f"].upstream_task_ids == {"a"}


def test_xcomarg_edges_values_and_unique_ids() -> None:
    @dag(schedule=None)
    def flow() -> None:
        @task
        def one() -> int:
            return 1

        @task
        def add(a: int, b: dict[str, Any]) -> int:
            return a + b["v"][0]

        x = one()
        y = one()
        add(x, {"v": [y]}) >> EmptyTask(task_id="end")

    d = flow()
    assert list(d.tasks) == ["one", "one__1", "add", "end"]
    assert d.tasks["add"].upstream_task_ids == {"one", "one__1"}
    assert run(d, "add", {"one": 10, "one__1": 5}).return_value == 15


def test_dag_decorator_defaults_to_function_name_and_doc() -> None:
    @dag
    def my_pipeline() -> None:
        """Docs here."""
        EmptyTask(task_id="x")

    d = my_pipeline()
    assert d.dag_id == "my_pipeline"
    assert d.doc_md == "Docs here."


def test_default_args_and_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__CORE__DEFAULT_TASK_RETRIES", "4")
    with DAG("da", default_args={"retry_delay": timedelta(seconds=7), "owner": "x"}) as d:
        t1 = EmptyTask(task_id="t1")
        t2 = EmptyTask(task_id="t2", retries=1, execution_timeout=timedelta(minutes=1))
    assert (t1.retries, t1.retry_delay, t1.execution_timeout) == (4, 7.0, None)
    assert (t2.retries, t2.execution_timeout) == (1, 60.0)
    assert d.max_active_runs == 16 and d.catchup is False


def test_weight_rules_give_effective_priority(tmp_path: Path) -> None:
    with DAG("w") as d:
        a = EmptyTask(task_id="a", priority_weight=2)
        b = EmptyTask(task_id="b", priority_weight=3)
        c = EmptyTask(task_id="c", weight_rule="upstream")
        z = EmptyTask(task_id="z", weight_rule="absolute", priority_weight=9)
        a >> b >> c
        a >> z
    tasks = serialize_dag(d, tmp_path).tasks
    assert tasks["a"].priority_weight == 2 + 3 + 1 + 9
    assert tasks["b"].priority_weight == 3 + 1
    assert tasks["c"].priority_weight == 1 + 3 + 2
    assert tasks["z"].priority_weight == 9


def test_context_injection_and_get_current_context() -> None:
    seen: dict[str, Any] = {}

    with DAG("ctx") as d:

        @task
        def named(params: dict[str, Any], logical_date: datetime, ds: str, run_id: str) -> str:
            seen["ctx"] = get_current_context()["task_id"]
            return f"{params['x']} {logical_date.isoformat()} {ds} {run_id}"

        @task
        def kw(a: int = 1, **context: Any) -> tuple[int, str, int]:
            return a, context["data_interval_end"].isoformat(), context["try_number"]

        named()
        kw()
    assert run(d, "named").return_value == "3 2024-03-01T00:00:00+00:00 2024-03-01 manual__1"
    assert seen["ctx"] == "named"
    assert run(d, "kw").return_value == (1, "2024-03-02T00:00:00+00:00", 1)
    with pytest.raises(RuntimeError, match="no context"):
        get_current_context()


def test_ti_xcom_pull_in_context() -> None:
    with DAG("pull") as d:

        @task
        def up() -> int:
            return 1

        @task
        def down(ti: Any) -> int:
            return int(ti.xcom_pull(task_ids="up")) + 1

        up() >> down()
    assert run(d, "down", {"up": 41}).return_value == 42


def test_skip_and_fail_propagate() -> None:
    with DAG("sf") as d:

        @task
        def skipper() -> None:
            raise SkipTask("nothing to do")

        @task
        def failer() -> None:
            raise FailTask("broken for good")

        skipper()
        failer()
    with pytest.raises(SkipTask):
        run(d, "skipper")
    with pytest.raises(FailTask):
        run(d, "failer")


def test_airflow_exception_names_are_exported_from_ketch() -> None:
    import ketch
    from ketch import AirflowFailException, AirflowSkipException

    assert AirflowSkipException is SkipTask and AirflowFailException is FailTask
    assert {"AirflowSkipException", "AirflowFailException"} <= set(ketch.__all__)
    with DAG("af") as d:

        @task
        def skipper() -> None:
            raise AirflowSkipException("nothing to do")

        skipper()
    with pytest.raises(SkipTask):
        run(d, "skipper")


def test_branch_follows_any_task_of_its_dag() -> None:
    with DAG("br") as d:

        @task.branch
        def choose(params: dict[str, Any]) -> str | list[str] | None:
            return params.get("choice")

        c = choose()
        c >> [EmptyTask(task_id="left"), EmptyTask(task_id="right")]
        EmptyTask(task_id="far").set_upstream(d.tasks["left"])
    ctx = build_context({**PAYLOAD, "params": {"choice": "left"}})
    assert d.get_task("choose").execute(ctx, lambda *_: None).follow_task_ids == ["left"]
    ctx = build_context({**PAYLOAD, "params": {"choice": ["left", "right"]}})
    assert d.get_task("choose").execute(ctx, lambda *_: None).follow_task_ids == ["left", "right"]
    ctx = build_context({**PAYLOAD, "params": {}})
    assert d.get_task("choose").execute(ctx, lambda *_: None).follow_task_ids == []
    ctx = build_context({**PAYLOAD, "params": {"choice": "far"}})
    assert d.get_task("choose").execute(ctx, lambda *_: None).follow_task_ids == ["far"]
    ctx = build_context({**PAYLOAD, "params": {"choice": "nowhere"}})
    with pytest.raises(ValueError, match=r"\['nowhere'\], which are not tasks of DAG 'br'"):
        d.get_task("choose").execute(ctx, lambda *_: None)


def test_bash_last_line_skip_and_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with DAG("bash") as d:
        BashTask(task_id="ok", bash_command="echo one; echo two >&2; echo three")
        BashTask(task_id="skip", bash_command="exit 99")
        BashTask(task_id="bad", bash_command="exit 3")
        BashTask(task_id="noskip", bash_command="exit 99", skip_on_exit_code=None)
    assert run(d, "ok").return_value == "three"
    assert capsys.readouterr().out.splitlines()[-3:] == ["one", "two", "three"]
    with pytest.raises(SkipTask):
        run(d, "skip")
    with pytest.raises(RuntimeError, match="non-zero exit code 3"):
        run(d, "bad")
    with pytest.raises(RuntimeError, match="exit code 99"):
        run(d, "noskip")


def test_bash_env_append_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH_TEST_OUTER", "outer")
    with DAG("env") as d:
        BashTask(
            task_id="replace", bash_command='echo "${KETCH_TEST_OUTER:-none} $A"', env={"A": "a"}
        )
        BashTask(
            task_id="append",
            bash_command='echo "$KETCH_TEST_OUTER $A"',
            env={"A": "a"},
            append_env=True,
        )
        BashTask(task_id="cwd", bash_command="pwd", cwd=str(tmp_path))
        BashTask(task_id="ctx", bash_command="echo $KETCH_CTX_DAG_ID")
        BashTask(task_id="nocwd", bash_command="pwd", cwd=str(tmp_path / "missing"))
    assert run(d, "replace").return_value == "none a"
    assert run(d, "append").return_value == "outer a"
    assert run(d, "cwd").return_value == str(tmp_path)
    assert run(d, "ctx").return_value == "env"
    with pytest.raises(FileNotFoundError, match="Can not find the cwd"):
        run(d, "nocwd")


def test_task_bash_decorator_uses_returned_command() -> None:
    with DAG("tb") as d:

        @task.bash
        def greet(name: str, ds: str) -> str:
            return f"echo hello {name} {ds}"

        greet("ketch")
    assert run(d, "greet").return_value == "hello ketch 2024-03-01"


def test_bash_interrupted_kills_process_group(tmp_path: Path) -> None:
    """An exception during the command (a timeout) kills bash and its children."""
    pidfile = tmp_path / "pid"
    with DAG("kill") as d:
        BashTask(task_id="slow", bash_command=f"sleep 30 & echo $! > {pidfile}; echo started; wait")

    class Boom(Exception):
        pass

    real_write = sys.stdout.write

    def write(text: str) -> int:
        if text.startswith("started"):
            raise Boom
        return real_write(text)

    sys.stdout.write = write  # type: ignore[method-assign]
    try:
        with pytest.raises(Boom):
            run(d, "slow")
    finally:
        sys.stdout.write = real_write  # type: ignore[method-assign]
    child = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(child, 0)
            import time

            time.sleep(0.02)


def test_params_plain_and_param_objects(tmp_path: Path) -> None:
    with DAG("p", params={"a": 1, "b": Param("x", type="string", description="B")}) as d:
        EmptyTask(task_id="t")
    params = serialize_dag(d, tmp_path).params
    assert params["a"].default == 1 and params["a"].schema_ == {}
    assert params["b"].schema_ == {"type": "string"} and params["b"].description == "B"


def test_trigger_rule_enum_and_string() -> None:
    with DAG("tr"):
        a = EmptyTask(task_id="a", trigger_rule=TriggerRule.ALL_DONE)
        b = EmptyTask(task_id="b", trigger_rule="one_failed")
    assert a.trigger_rule is TriggerRule.ALL_DONE
    assert b.trigger_rule is TriggerRule.ONE_FAILED


def test_serialized_dag_fields(tmp_path: Path) -> None:
    dag_file = tmp_path / "sub" / "f.py"
    with DAG(
        "full",
        schedule="@daily",
        start_date=datetime(2024, 1, 1),
        max_active_runs=2,
        tags=["b", "a"],
        dagrun_timeout=timedelta(hours=1),
        is_paused_upon_creation=False,
    ) as d:
        EmptyTask(task_id="t", executor_config={"pod_override": {"x": 1}}, pool="p", pool_slots=2)
    d.fileloc = str(dag_file)
    s = serialize_dag(d, tmp_path)
    assert s.relative_fileloc == os.path.join("sub", "f.py") and s.fileloc == str(dag_file)
    assert s.start_date == datetime(2024, 1, 1, tzinfo=UTC)
    assert (s.max_active_runs, s.tags, s.dagrun_timeout, s.is_paused_upon_creation) == (
        2,
        ["a", "b"],
        3600.0,
        False,
    )
    assert s.schedule.kind == "cron_trigger" and s.schedule.expression == "0 0 * * *"
    assert s.tasks["t"].executor_config == {"pod_override": {"x": 1}}
    assert (s.tasks["t"].pool, s.tasks["t"].pool_slots) == ("p", 2)
