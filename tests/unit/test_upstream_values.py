"""A task whose upstream has no return value: a clear error naming both, not ``None``.

In-process with a fake execution API client for each rule, then a real try
(``python -m ketch.worker.runner``) against the real execution API: the upstream was
marked success by hand, so it has no XCom.
"""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ketch import DAG, EmptyTask, task
from ketch.authoring.context import running_context
from ketch.authoring.tasks import BaseTask
from ketch.db.models import DagRun, TaskInstance, XCom
from ketch.worker.upstream import UpstreamValueMissing, xcom_puller
from tests.unit._worker_support import DagSetup, api_server, api_url, dag_setup  # noqa: F401
from tests.unit.test_runner import run_pod_style

MISSING = (
    "task 'b' needs the return value of 'a', but 'a' has none "
    "(it was marked success without running)"
)


class FakeClient:
    """Holds some tasks' values; ``xcom`` raises KeyError for the rest (the API's 404)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        if key != "return_value" or task_id not in self.values:
            raise KeyError(f"no XCom {key!r} of task {task_id!r}")
        return self.values[task_id]


def build(trigger_rule: str = "all_success") -> dict[str, BaseTask]:
    with DAG("d", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task
        def a() -> int:
            return 1

        @task
        def other() -> int:
            return 2

        @task(trigger_rule=trigger_rule)
        def b(value: Any, more: dict[str, Any]) -> Any:
            return value

        b(a(), {"x": [other()]})
        EmptyTask(task_id="plain")
    return dict(dag.tasks)


def execute(tasks: dict[str, BaseTask], task_id: str, values: dict[str, Any]) -> Any:
    context: dict[str, Any] = {"task_id": task_id}
    return tasks[task_id].execute(context, xcom_puller(FakeClient(values))).return_value


def test_a_missing_value_the_task_takes_fails_it_naming_both_tasks() -> None:
    tasks = build()
    assert execute(tasks, "b", {"a": 7, "other": 2}) == 7
    with pytest.raises(UpstreamValueMissing) as missing:
        execute(tasks, "b", {"other": 2})
    assert str(missing.value) == MISSING
    with pytest.raises(UpstreamValueMissing, match="return value of 'other'"):
        execute(tasks, "b", {"a": 7})  # nested in a dict and a list: needed just the same


def test_a_value_stored_as_null_is_none_and_ti_xcom_pull_stays_lenient() -> None:
    tasks = build()
    assert execute(tasks, "b", {"a": None, "other": 2}) is None  # a value, even if null
    pull = xcom_puller(FakeClient({}))
    with running_context({"task": tasks["b"], "task_id": "b"}):
        assert pull("plain") is None  # not one of b's arguments (ti.xcom_pull)
        assert pull("a", "other_key") is None  # not the return value
    assert pull("a") is None  # outside a running task


def test_under_another_trigger_rule_a_missing_value_is_none() -> None:
    # none_failed: 'a' may have been skipped; Airflow gives None then.
    assert execute(build("none_failed"), "b", {"other": 2}) is None


def test_a_try_whose_upstream_was_marked_success_fails_with_that_message(
    api_url: str, dag_setup: DagSetup, tmp_path: Path
) -> None:
    # worker_test: consume(produce()); produce marked success by hand: no XCom.
    with Session(dag_setup.engine) as session:
        run = session.scalars(select(DagRun)).one()
        run_pk = run.id
        session.add(
            TaskInstance(
                dag_run_id=run.id,
                dag_id=run.dag_id,
                run_id=run.run_id,
                task_id="produce",
                state="success",
                try_number=0,
            )
        )
        session.commit()
    request = dag_setup.queue_try("consume", max_tries=3)
    done = run_pod_style(request, api_url, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    ti = dag_setup.ti(request.ti_id)
    message = (
        "task 'consume' needs the return value of 'produce', but 'produce' has none "
        "(it was marked success without running)"
    )
    assert ti.error == f"UpstreamValueMissing: {message}"
    assert ti.state == "failed"  # no retry: another try would not find a value either
    assert message in done.stdout

    # Once produce has a value, consume gets it.
    with Session(dag_setup.engine) as session:
        session.add(
            XCom(
                dag_run_id=run_pk,
                task_id="produce",
                key="return_value",
                value={"n": 1},
                timestamp=datetime.now(UTC),
            )
        )
        session.commit()
    with Session(dag_setup.engine) as session:
        session.execute(TaskInstance.__table__.delete().where(TaskInstance.task_id == "consume"))
        session.commit()
    retried = dag_setup.queue_try("consume")
    assert run_pod_style(retried, api_url, tmp_path).returncode == 0
    assert dag_setup.xcom("consume") == 2


TYPED_DAG = """
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from ketch import dag, task

SENT = {
    "when": datetime(2026, 3, 1, 12, 30, 0, 250, tzinfo=ZoneInfo("Europe/Paris")),
    "day": date(2026, 3, 1),
    "span": timedelta(hours=1, microseconds=3),
    "amount": Decimal("19.99"),
    "id": uuid.UUID(int=7),
    "pair": (1, (2, "b")),
    "tags": {"x", "y"},
    "nothing": None,
}
RETURN_NONE = False


@dag(dag_id="worker_test", schedule=None, start_date=datetime(2026, 1, 1))
def worker_test():
    @task
    def produce():
        return None if RETURN_NONE else SENT

    @task
    def consume(value):
        if RETURN_NONE:
            assert value is None, value
            return "got None"
        assert value == SENT, value
        assert {k: type(v) for k, v in value.items()} == {k: type(v) for k, v in SENT.items()}
        assert value["when"].tzinfo == ZoneInfo("Europe/Paris")
        return value["pair"]

    consume(produce())


worker_test()
"""


def test_typed_values_and_none_reach_the_downstream_try(
    api_url: str, dag_setup: DagSetup, tmp_path: Path
) -> None:
    # Two real tries each time: produce stores its value, consume reads and checks it.
    for return_none in (False, True):
        dag_setup.fileloc.write_text(
            TYPED_DAG.replace("RETURN_NONE = False", f"RETURN_NONE = {return_none}")
        )
        with Session(dag_setup.engine) as session:
            session.execute(delete(TaskInstance))
            session.commit()
        for task_id in ("produce", "consume"):
            done = run_pod_style(dag_setup.queue_try(task_id), api_url, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
        if return_none:
            assert dag_setup.xcom("produce") is None  # JSON null: consume got None, no error
            assert dag_setup.xcom("consume") == "got None"
        else:
            stored = dag_setup.xcom("produce")
            assert isinstance(stored, dict)
            assert stored["day"] == {
                "__classname__": "datetime.date",
                "__version__": 2,
                "__data__": "2026-03-01",
            }
            assert dag_setup.xcom("consume") == {
                "__classname__": "builtins.tuple",
                "__version__": 1,
                "__data__": [
                    1,
                    {"__classname__": "builtins.tuple", "__version__": 1, "__data__": [2, "b"]},
                ],
            }
