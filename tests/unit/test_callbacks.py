"""Task callbacks run in the try, as in Airflow 3's task runner; DAG callbacks are accepted.

``on_execute_callback`` before the task; then, once the outcome is known and before it
is reported, ``on_success_callback``, ``on_skipped_callback``, ``on_retry_callback`` (a
failure that will be retried) or ``on_failure_callback``, each with the context (plus
``exception``). A callback that raises is logged; the others still run.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ketch import DAG, EmptyTask, dag
from ketch.authoring.serialize import serialize_dag
from ketch.exceptions import DagDefinitionError
from ketch.worker.callbacks import callback_kind
from ketch.worker.runner.outcome import Outcome
from tests.support.ketch_process import Api, KetchEnv, running, wait_for

START = datetime(2026, 1, 1)


def test_callbacks_are_accepted_as_one_callable_or_a_list_and_from_default_args() -> None:
    def cb(context: Any) -> None: ...

    def other(context: Any) -> None: ...

    with DAG("cbs", schedule=None, start_date=START, default_args={"on_failure_callback": cb}):
        one = EmptyTask(task_id="one", on_success_callback=cb)
        many = EmptyTask(task_id="many", on_retry_callback=[cb, other])
    assert one.on_success_callback == [cb] and one.on_failure_callback == [cb]
    assert many.on_retry_callback == [cb, other] and many.on_execute_callback == []


def test_a_callback_that_is_not_callable_is_a_definition_error() -> None:
    with (
        DAG("bad", schedule=None, start_date=START),
        pytest.raises(DagDefinitionError, match="on_success_callback must be a callable"),
    ):
        EmptyTask(task_id="t", on_success_callback="notify")


def test_dag_level_callbacks_are_accepted_and_flagged(tmp_path: Path) -> None:
    def cb(context: Any) -> None: ...

    @dag(schedule=None, on_success_callback=cb, on_failure_callback=[cb])
    def flow() -> None:
        EmptyTask(task_id="t")

    d = flow()
    assert d.on_success_callback is cb and d.on_failure_callback == [cb]
    serialized = serialize_dag(d, tmp_path)
    assert serialized.has_on_success_callback and serialized.has_on_failure_callback
    with DAG("plain", schedule=None, start_date=START) as plain:
        EmptyTask(task_id="t")
    assert not serialize_dag(plain, tmp_path).has_on_success_callback


@pytest.mark.parametrize(
    ("outcome", "try_number", "max_tries", "kind"),
    [
        (Outcome("success"), 1, 0, "on_success_callback"),
        (Outcome("skipped"), 1, 0, "on_skipped_callback"),
        (Outcome("failed"), 1, 1, "on_retry_callback"),
        (Outcome("failed"), 2, 1, "on_failure_callback"),
        (Outcome("failed", retry=False), 1, 3, "on_failure_callback"),  # FailTask
    ],
)
def test_which_callbacks_an_outcome_calls(
    outcome: Outcome, try_number: int, max_tries: int, kind: str
) -> None:
    payload = {"try_number": try_number, "max_tries": max_tries}
    assert callback_kind(payload, outcome) == kind


# ----- end to end on the local executor ------------------------------------------------------

CALLBACK_DAG = """
import json
import os
from datetime import datetime, timedelta, timezone

from ketch import DAG, task
from ketch.exceptions import SkipTask


def mark(kind):
    def callback(context):
        ti = context["ti"]
        error = context.get("exception")
        line = {"kind": kind, "task": ti.task_id, "try": ti.try_number,
                "error": str(error) if error is not None else None}
        with open(os.environ["E2E_MARKS"], "a") as fh:
            fh.write(json.dumps(line) + "\\n")
    return callback


def broken(context):
    raise RuntimeError("callback broke")


with DAG("e2e_callbacks", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         default_args={"on_failure_callback": mark("failure")},
         on_success_callback=mark("dag_success"), on_failure_callback=mark("dag_failure")):

    @task(on_execute_callback=mark("execute"), on_success_callback=mark("success"))
    def ok():
        return 1

    @task(retries=1, retry_delay=timedelta(0), on_retry_callback=mark("retry"),
          on_success_callback=mark("success"))
    def flaky(ti=None):
        if ti.try_number == 1:
            raise ValueError("first try fails")

    @task(on_failure_callback=[broken, mark("failure")])
    def bad():
        raise ValueError("boom")

    @task(on_skipped_callback=mark("skipped"))
    def skipper():
        raise SkipTask("not today")

    ok()
    flaky()
    bad()
    skipper()
"""


def test_task_callbacks_run_in_the_try_end_to_end(ketch_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "callbacks.py").write_text(CALLBACK_DAG)
    marks = tmp_path / "marks.jsonl"
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'e2e.db'}",
        dags_folder=folder,
        extra={"E2E_MARKS": str(marks)},
    )
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_callbacks"), 60, 0.1, "e2e_callbacks parsed")
        run_id = api.trigger("e2e_callbacks")["dag_run_id"]
        finished = api.wait_run_finished("e2e_callbacks", run_id, 120)
        tis = api.task_instances("e2e_callbacks", run_id)
    assert finished["state"] == "failed", tis
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "ok": "success",
        "flaky": "success",
        "bad": "failed",
        "skipper": "skipped",
    }
    lines = [json.loads(line) for line in marks.read_text().splitlines()]
    seen = sorted((m["kind"], m["task"], m["try"], m["error"]) for m in lines)
    assert seen == [
        ("execute", "ok", 1, None),
        ("failure", "bad", 1, "boom"),  # after the broken callback, which only logged
        ("retry", "flaky", 1, "first try fails"),
        ("skipped", "skipper", 1, None),
        ("success", "flaky", 2, None),
        ("success", "ok", 1, None),
    ]
    # The order in the try: on_execute before on_success.
    ok_kinds = [m["kind"] for m in lines if m["task"] == "ok"]
    assert ok_kinds == ["execute", "success"]


DAG_CALLBACK_DAG = """
import json
import os
from datetime import datetime, timezone

from ketch import DAG, task


def mark(kind):
    def callback(context):
        line = {"kind": kind, "dag": context["dag"].dag_id, "run_id": context["run_id"],
                "reason": context["reason"], "state": context["dag_run"].state,
                "conf": context["dag_run"].conf}
        with open(os.environ["E2E_MARKS"], "a") as fh:
            fh.write(json.dumps(line) + "\\n")
    return callback


def broken(context):
    raise RuntimeError("dag callback broke")


with DAG("e2e_dag_ok", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         on_success_callback=[broken, mark("dag_success")], on_failure_callback=mark("dag_failure")):
    @task
    def fine():
        return 1

    fine()


with DAG("e2e_dag_bad", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
         on_success_callback=mark("dag_success"), on_failure_callback=mark("dag_failure")):
    @task
    def fails():
        raise ValueError("no")

    fails()
"""


def test_dag_callbacks_run_when_a_run_ends(ketch_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "dag_callbacks.py").write_text(DAG_CALLBACK_DAG)
    marks = tmp_path / "marks.jsonl"
    env = KetchEnv(
        home=ketch_home,
        db_url=f"sqlite:///{ketch_home / 'e2e.db'}",
        dags_folder=folder,
        extra={"E2E_MARKS": str(marks)},
    )
    api = Api(env.base_url)

    def lines() -> list[dict[str, Any]]:
        if not marks.exists():
            return []
        return [json.loads(line) for line in marks.read_text().splitlines()]

    with running(env, "standalone") as process:
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag("e2e_dag_ok") and api.dag("e2e_dag_bad"), 60, 0.1, "parsed")
        ok_run = api.trigger("e2e_dag_ok", {"k": 1})["dag_run_id"]
        bad_run = api.trigger("e2e_dag_bad")["dag_run_id"]
        assert api.wait_run_finished("e2e_dag_ok", ok_run, 120)["state"] == "success"
        assert api.wait_run_finished("e2e_dag_bad", bad_run, 120)["state"] == "failed"
        wait_for(lambda: len(lines()) >= 2, 60, 0.1, "both DAG callbacks")
        # Each child's output reaches the scheduler's log when the child has ended.
        wait_for(lambda: process.output().count("callbacks ran") >= 2, 60, 0.1, "their logs")
        output = process.output()
    seen = sorted((m["kind"], m["dag"], m["run_id"], m["reason"], m["state"]) for m in lines())
    assert seen == [
        ("dag_failure", "e2e_dag_bad", bad_run, "task_failure", "failed"),
        ("dag_success", "e2e_dag_ok", ok_run, "success", "success"),
    ]
    assert [m["conf"] for m in lines() if m["dag"] == "e2e_dag_ok"] == [{"k": 1}]
    # The raising callback is in the scheduler's log; the next callback still ran.
    assert "dag callback broke" in output
