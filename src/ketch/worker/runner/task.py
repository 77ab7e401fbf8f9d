"""Running the task itself, in the try: load its DAG file (or take ``dags test``'s DAG),
build its context, execute it under its execution_timeout with its XCom puller and
rendered-fields reporter, and turn every way it can end into an
:class:`~ketch.worker.runner.outcome.Outcome`."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from ketch.exceptions import FailTask, RescheduleTask, SkipTask, TaskTimeout
from ketch.worker.client import ExecutionApiClient, ExecutionApiError, TryStateConflict
from ketch.worker.runner.children import terminate_whole_group
from ketch.worker.runner.outcome import Outcome
from ketch.worker.runner.output import say
from ketch.worker.runner.return_values import mapping_problem, success_outcome
from ketch.worker.runner.stopping import (
    SIGTERM_RECEIVED,
    TaskTerminated,
    note_sigterm,
    on_sigterm,
    sigterm_noted,
    why_ended,
)
from ketch.worker.runner.timeout import execution_timeout

ENV_DAGS_FOLDER = "KETCH_DAGS_FOLDER"


def dag_file(payload: dict[str, Any]) -> str:
    """The DAG file: under $KETCH_DAGS_FOLDER when set (a pod), else the scheduler's path."""
    folder = os.environ.get(ENV_DAGS_FOLDER)
    if folder:
        return str(Path(folder) / payload["relative_fileloc"])
    return str(payload["fileloc"])


def _xcom_puller(client: ExecutionApiClient) -> Any:
    # None when there is no value, unless the task takes it as an argument (see upstream).
    from ketch.worker.upstream import xcom_puller

    return xcom_puller(client)


def _rendered_fields_reporter(client: ExecutionApiClient) -> Any:
    """Sends a task's rendered template fields (already masked) to the execution API, so
    the API shows them for this try. A try that was cleared or ended meanwhile stops at
    once, as at a heartbeat; any other refusal is only logged."""

    def send(fields: dict[str, Any]) -> None:
        try:
            client._call("PUT", "/try/rendered-fields", {"rendered_fields": fields})
        except TryStateConflict as exc:
            terminate_whole_group(
                f"try cancelled: {why_ended(exc.detail)}; its processes were killed"
            )
        except ExecutionApiError as exc:
            say(f"rendered template fields not recorded: {exc}")

    return send


def _failure(exc: BaseException, *, retry: bool = True, show: bool = True) -> Outcome:
    if show:
        traceback.print_exception(exc, file=sys.stdout)
        sys.stdout.flush()
    message = str(exc) or type(exc).__name__
    return Outcome("failed", error=f"{type(exc).__name__}: {message}", retry=retry)


_KETCH_DIR = str(Path(__file__).resolve().parents[2])


def _show_where_stopped(exc: BaseException) -> None:
    """Where the task's own code was when it was stopped (ketch's frames left out)."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not str(Path(frame.filename).resolve()).startswith(_KETCH_DIR)
    ]
    if frames:
        say("the task was here when it was stopped:")
        print("".join(traceback.format_list(frames)), end="", flush=True)


def _stopped(exc: TaskTimeout | TaskTerminated, payload: dict[str, Any], began: float) -> Outcome:
    """The outcome of a task stopped by its timeout or a SIGTERM: no traceback of ketch's;
    for a timeout, where the task's own code was."""
    outcome = _failure(exc, show=False)
    outcome.kill_children = True
    timeout = payload.get("execution_timeout")
    if isinstance(exc, TaskTimeout):
        outcome.stopped = str(exc)
    elif timeout and time.monotonic() - began >= float(timeout):
        # The executor's backstop: the task outlived its timeout without stopping.
        outcome.stopped = f"execution_timeout of {float(timeout):g}s exceeded (SIGTERM)"
    else:
        # The scheduler's cancel (the finish call then says what happened), or a kill,
        # a pod eviction, a node drain.
        outcome.stopped = SIGTERM_RECEIVED
        return outcome
    _show_where_stopped(exc)
    return outcome


def run_task(payload: dict[str, Any], client: ExecutionApiClient, dag: Any = None) -> Outcome:
    """Load the DAG (unless given: ``ketch dags test`` runs its in-memory DAG) and run the
    task here, turning every way it can end into an Outcome, named by its
    map_index_template: rendered strictly after a success (inside :func:`_run_task`), and
    quietly after any other end, as Airflow's task runner does."""
    from ketch.authoring.map_index_template import render_map_index

    outcome = _run_task(payload, client, dag)
    if outcome.state != "success":
        rendered = render_map_index(strict=False, task_id=payload["task_id"])
        outcome = replace(outcome, rendered_map_index=rendered)
    return outcome


def _run_task(payload: dict[str, Any], client: ExecutionApiClient, dag: Any) -> Outcome:
    from ketch.authoring.context import build_context
    from ketch.authoring.loader import load_dag
    from ketch.authoring.map_index_template import render_map_index
    from ketch.authoring.templating import reporting_to

    task_id = payload["task_id"]
    began = time.monotonic()
    try:
        if sigterm_noted.is_set():
            raise TaskTerminated("task received SIGTERM")
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            context = build_context(payload)
            dag = dag if dag is not None else load_dag(dag_file(payload), payload["dag_id"])
            task = dag.get_task(task_id)
            # From the serialized task (defaults resolved at parse time): reading the task's
            # own property could import the settings stack into the try.
            with (
                execution_timeout(payload.get("execution_timeout")),
                reporting_to(_rendered_fields_reporter(client)),
            ):
                result = task.execute(context, _xcom_puller(client))
                rendered = render_map_index(strict=True)
            problem = mapping_problem(task, result, payload)
        finally:
            signal.signal(signal.SIGTERM, note_sigterm)
    except SkipTask as exc:
        say(f"task skipped: {exc}" if str(exc) else "task skipped")
        return Outcome("skipped")
    except RescheduleTask as exc:
        when = exc.reschedule_date.isoformat()
        say(f"rescheduling: the task runs again (a new try) at {when}")
        return Outcome("up_for_reschedule", reschedule_date=when)
    except FailTask as exc:
        return _failure(exc, retry=False)
    except (TaskTimeout, TaskTerminated) as exc:
        return _stopped(exc, payload, began)
    except TryStateConflict as exc:
        # The task's own call (Variable.get, an XCom) found the try over: the finish
        # call will be refused the same way and say so in one line.
        return _failure(exc, show=False)
    except Exception as exc:
        return _failure(exc)
    except SystemExit as exc:
        return _failure(RuntimeError(f"task called sys.exit({exc.code!r})"))
    if problem:
        say(problem)
        return Outcome("failed", error=problem)
    return replace(success_outcome(task_id, result, payload), rendered_map_index=rendered)
