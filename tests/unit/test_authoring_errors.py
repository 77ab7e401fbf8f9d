"""Every DAG-definition error is a DagDefinitionError with a message naming the problem;
and the loader imports files as fresh modules."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ketch import DAG, EmptyTask, Param, task
from ketch.authoring.loader import DagNotFound, collect_dags, load_dag, module_name
from ketch.authoring.serialize import serialize_dag
from ketch.exceptions import DagDefinitionError


def _serialize(d: DAG, tmp_path: Path) -> None:
    serialize_dag(d, tmp_path)


def test_cycle_is_named(tmp_path: Path) -> None:
    with DAG("cyc") as d:
        a, b, c = EmptyTask(task_id="a"), EmptyTask(task_id="b"), EmptyTask(task_id="c")
        a >> b >> c >> a
    with pytest.raises(DagDefinitionError, match=r"cycle: a >> b >> c >> a"):
        _serialize(d, tmp_path)


def test_duplicate_task_id() -> None:
    with DAG("dup"), pytest.raises(DagDefinitionError, match="duplicate task_id 'a'"):
        EmptyTask(task_id="a")
        EmptyTask(task_id="a")


def test_invalid_trigger_rule() -> None:
    with DAG("tr"), pytest.raises(DagDefinitionError, match="invalid trigger_rule 'sometimes'"):
        EmptyTask(task_id="a", trigger_rule="sometimes")


def test_invalid_trigger_rule_in_decorator() -> None:
    with DAG("tr2"), pytest.raises(DagDefinitionError, match="invalid trigger_rule"):

        @task(trigger_rule="nope")
        def f() -> None:
            pass

        f()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_date": "2024-01-01"}, "start_date must be a datetime"),
        (
            {"start_date": datetime(2024, 2, 1), "end_date": datetime(2024, 1, 1)},
            "end_date .* is before start_date",
        ),
        ({"schedule": 5}, "schedule must be a cron string"),
        ({"schedule": timedelta(0)}, "must be positive"),
        ({"schedule": "@continuous"}, "not supported"),
    ],
)
def test_bad_dag_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DagDefinitionError, match=message):
        DAG("bad", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", ["every day", "61 * * * *", "@sometimes"])
def test_bad_schedule_string(schedule: str, tmp_path: Path) -> None:
    with DAG("bs", schedule=schedule) as d:
        EmptyTask(task_id="a")
    with pytest.raises(DagDefinitionError, match="invalid schedule"):
        _serialize(d, tmp_path)


def test_executor_config_must_be_dict() -> None:
    with DAG("ec"), pytest.raises(DagDefinitionError, match="executor_config must be a dict"):
        EmptyTask(task_id="a", executor_config=["x"])


def test_unknown_task_argument() -> None:
    with DAG("ua"), pytest.raises(DagDefinitionError, match="unknown argument"):
        EmptyTask(task_id="a", retires=3)


def test_invalid_ids() -> None:
    with pytest.raises(DagDefinitionError, match="invalid dag_id"):
        DAG("has space")
    with DAG("ids"), pytest.raises(DagDefinitionError, match="invalid task_id"):
        EmptyTask(task_id="a/b")


def test_param_default_must_satisfy_schema(tmp_path: Path) -> None:
    with DAG("pd", params={"n": Param("x", type="integer")}) as d:
        EmptyTask(task_id="a")
    with pytest.raises(DagDefinitionError, match="default of param 'n' is invalid"):
        _serialize(d, tmp_path)


def test_scheduled_dag_needs_param_defaults(tmp_path: Path) -> None:
    with DAG("sp", schedule="@daily", params={"n": Param(type="integer")}) as d:
        EmptyTask(task_id="a")
    with pytest.raises(DagDefinitionError, match="param 'n' has no default"):
        _serialize(d, tmp_path)
    with DAG("mp", params={"n": Param(type="integer")}) as manual:
        EmptyTask(task_id="a")
    _serialize(manual, tmp_path)  # a manual-only DAG may require the value at trigger time


def test_tasks_of_two_dags_cannot_be_linked() -> None:
    with DAG("one"):
        a = EmptyTask(task_id="a")
    with DAG("two"):
        b = EmptyTask(task_id="b")
    with pytest.raises(DagDefinitionError, match="different DAGs"):
        a >> b


def _write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def test_loader_collects_registered_and_global_dags(tmp_path: Path) -> None:
    (tmp_path / "helper_mod_ketch.py").write_text("VALUE = 7\n")
    f = _write(
        tmp_path / "two.py",
        """
        from ketch import DAG, EmptyTask, dag
        from helper_mod_ketch import VALUE

        @dag
        def decorated():
            EmptyTask(task_id="t")

        decorated()  # registered, not assigned

        with DAG("ctx") as glob:
            EmptyTask(task_id="t")

        plain = DAG("plain")
        EmptyTask(task_id="x", dag=plain)
        """,
    )
    dags = collect_dags(str(f))
    assert [d.dag_id for d in dags] == ["decorated", "ctx", "plain"]
    assert all(d.fileloc == str(f) for d in dags)
    assert load_dag(str(f), "plain").get_task("x").task_id == "x"
    with pytest.raises(DagNotFound):
        load_dag(str(f), "nope")
    assert module_name(str(f)).startswith("unusual_prefix_") and module_name(str(f)).endswith(
        "_two"
    )


def test_loader_imports_fresh_each_time(tmp_path: Path) -> None:
    f = _write(tmp_path / "fresh.py", 'from ketch import DAG\nd = DAG("v1")\n')
    assert [d.dag_id for d in collect_dags(str(f))] == ["v1"]
    f.write_text('from ketch import DAG\nd = DAG("v2")\n')
    assert [d.dag_id for d in collect_dags(str(f))] == ["v2"]


def test_same_dag_id_twice_in_a_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "twice.py", 'from ketch import DAG\na = DAG("x")\nb = DAG("x")\n')
    with pytest.raises(DagDefinitionError, match="defines DAG 'x' twice"):
        collect_dags(str(f))


def test_uncalled_dag_function_defines_no_dag(tmp_path: Path) -> None:
    """As in Airflow, ``@dag`` only builds the DAG when the decorated function is called."""
    f = _write(
        tmp_path / "uncalled.py",
        """
        from ketch import EmptyTask, dag

        @dag
        def never_called():
            EmptyTask(task_id="t")

        @dag
        def called():
            EmptyTask(task_id="t")

        called()
        """,
    )
    assert [d.dag_id for d in collect_dags(str(f))] == ["called"]
