"""DAG-level ``on_success_callback`` / ``on_failure_callback``, run when a run ends.

Airflow 3 runs them in its DAG processor: the scheduler sends a callback request, and a
processor child imports the DAG file and calls them. ketch does the same from the
scheduler process without importing DAG code in it: once the transaction that finished
the run commits, a child ``python -m ketch.scheduler.dag_callbacks REQUEST`` imports the
file and calls the callbacks with the run's context plus ``reason`` (``success``,
``task_failure``, ``timed_out``), like Airflow's. Its output goes to the scheduler's log,
one line each; a callback that raises is logged and the next still runs. The child is
killed after ``[core] dagbag_import_timeout`` seconds plus a minute.

At most once: a scheduler that dies between the commit and the start of the child loses
that run's callback (Airflow keeps callback requests in its database).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ketch.db.models import DagRun
    from ketch.scheduler.context import SchedulerContext

log = logging.getLogger("ketch.scheduler.dag_callbacks")

_PENDING = "ketch_dag_callbacks"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def request_dag_callback(
    ctx: SchedulerContext, session: Session, run: DagRun, state: str, reason: str
) -> None:
    """Run the DAG's callback for a run that ended in ``state``, after ``session`` commits
    (a rolled back transaction runs nothing)."""
    info = ctx.dags.get(session, run.dag_hash)
    if info is None:
        return
    wanted = (
        info.dag.has_on_success_callback if state == "success" else info.dag.has_on_failure_callback
    )
    if not wanted:
        return
    request = {
        "fileloc": info.dag.fileloc,
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        "state": state,
        "reason": reason,
        "logical_date": _iso(run.logical_date),
        "data_interval_start": _iso(run.data_interval_start),
        "data_interval_end": _iso(run.data_interval_end),
        "conf": run.conf or {},
        "params": run.params or {},
    }
    pending: list[dict[str, Any]] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        timeout = float(ctx.settings.core.dagbag_import_timeout) + 60.0

        @event.listens_for(session, "after_commit", once=True)
        def _launch(committed: Session) -> None:
            for item in committed.info.pop(_PENDING, []):
                _start(item, timeout)

        @event.listens_for(session, "after_rollback", once=True)
        def _drop(rolled_back: Session) -> None:
            rolled_back.info.pop(_PENDING, None)

    pending.append(request)


def _start(request: dict[str, Any], timeout: float) -> None:
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ketch.scheduler.dag_callbacks", json.dumps(request)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.error(
            "DAG %s run %s: cannot run its callback: %s", request["dag_id"], request["run_id"], exc
        )
        return
    threading.Thread(
        target=_watch, args=(proc, request, timeout), name="dag-callback", daemon=True
    ).start()


def _watch(proc: subprocess.Popen[bytes], request: dict[str, Any], timeout: float) -> None:
    where = f"DAG {request['dag_id']} run {request['run_id']} callback"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        log.error("%s: killed after %gs", where, timeout)
    for line in out.decode(errors="replace").splitlines():
        log.info("%s: %s", where, line)
    if proc.returncode:
        log.error("%s: exited with code %s", where, proc.returncode)


# -- the child ----------------------------------------------------------------------------


def _context(dag: Any, request: dict[str, Any]) -> dict[str, Any]:
    from ketch.authoring.context import build_context

    context = build_context(
        {
            "dag_id": request["dag_id"],
            "run_id": request["run_id"],
            "logical_date": request["logical_date"],
            "data_interval_start": request["data_interval_start"],
            "data_interval_end": request["data_interval_end"],
            "conf": request["conf"],
            "params": request["params"],
        }
    )
    context["dag_run"].state = request["state"]
    context.update(dag=dag, reason=request["reason"])
    for key in ("task_id", "ti", "task_instance", "try_number", "max_tries"):
        context.pop(key, None)
    return context


def run_callbacks(request: dict[str, Any]) -> int:
    import traceback

    from ketch.authoring.loader import collect_dags

    dags = {d.dag_id: d for d in collect_dags(request["fileloc"])}
    dag = dags.get(request["dag_id"])
    if dag is None:
        print(f"DAG {request['dag_id']!r} is no longer in {request['fileloc']}", flush=True)
        return 1
    kind = "on_success_callback" if request["state"] == "success" else "on_failure_callback"
    value = getattr(dag, kind, None)
    callbacks = list(value) if isinstance(value, list | tuple) else [value] if value else []
    context = _context(dag, request)
    failed = 0
    for i, callback in enumerate(callbacks):
        try:
            callback(context)
        except Exception:
            failed += 1
            print(f"Failed to run DAG callback {kind}[{i}]:", flush=True)
            traceback.print_exc(file=sys.stdout)
    print(f"{kind}: {len(callbacks) - failed} of {len(callbacks)} callbacks ran", flush=True)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    # Anything the DAG file prints is output of the callback run too.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_callbacks(request)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
