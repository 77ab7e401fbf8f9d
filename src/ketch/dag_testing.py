"""``ketch dags test`` and ``DAG.test()``: one run of a DAG, every task in this process.

Like Airflow 3's ``airflow dags test`` / ``dag.test()``: the DAG is stored and a manual run
created in the metadata database, then its tasks run one at a time, in dependency order, in
this process (a debugger's breakpoint in a task works), their logs printed here.

Why this shape: every decision is the scheduler's own, scoped to this one run, as Airflow's
``dag.test()`` calls ``DagRun.update_state`` for its run only. The run is evaluated by
``evaluate_run_fully``; each ended try goes through ``react_to_changes`` (trigger rules,
branching, short-circuit, depends_on_past, run completion, the DAG's callbacks); a try is
queued with the scheduler's ``_mark_queued``/``_request`` and runs the worker's
``run_task``, reporting through the real execution API (served here on a loopback port),
which records retries with ``record_try_outcome``. The whole scheduling loop is not used: in
a shared database it would also schedule and launch other DAGs' runs.

Which database: the configured one when ``[database] sql_alchemy_conn`` is set (as Airflow
uses its metadata database; the run then shows in the UI). When it is not set, a throwaway
SQLite database in a temporary folder, deleted at the end, so ``dag.test()`` in a unit test
needs no setup and leaves nothing behind (ketch's default database would otherwise be
``$KETCH_HOME/ketch.db``, shared with ``ketch standalone``).
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ketch.executors.base import LaunchRequest, RunningTry, TryEnded, TryKey
from ketch.states import DagRunState, TaskInstanceState

if TYPE_CHECKING:
    from ketch.authoring.dag import DAG
    from ketch.config import Settings
    from ketch.scheduler.context import SchedulerContext

_TI = TaskInstanceState
_ACTIVE = (_TI.QUEUED.value, _TI.RUNNING.value)
Echo = Callable[[str], None]


@dataclass(frozen=True)
class DagTestResult:
    """What ``DAG.test()`` returns: the run and its task instances' final states."""

    dag_id: str
    run_id: str
    state: str  # success | failed | running (it could not finish: see ``stuck``)
    task_states: dict[str, str | None]
    stuck: list[str]  # tasks that could not run when the run stopped moving

    @property
    def succeeded(self) -> bool:
        return self.state == DagRunState.SUCCESS.value


class DagTestError(Exception):
    """The test could not start (a bad conf, a duplicate run): one line for the user."""


class _InlineExecutor:
    """The executor of the scheduling context: tries are launched by the driver itself."""

    name = "inline"

    def start(self, on_try_ended: Callable[[TryEnded], None]) -> None: ...

    def launch(self, request: LaunchRequest) -> str:
        return f"inline:{os.getpid()}"

    def launch_many(self, requests: Sequence[LaunchRequest]) -> list[str | Any]:
        return [self.launch(r) for r in requests]

    def adopt(self, tries: Iterable[RunningTry]) -> list[TryKey]:
        return []

    def cancel(self, key: TryKey) -> None: ...

    def running(self) -> set[TryKey]:
        return set()

    def stop(self) -> None: ...


def _echo(line: str) -> None:
    print(line, flush=True)


@contextmanager
def settings_for_test(base: Settings) -> Iterator[tuple[Settings, bool]]:
    """The settings to test with, and whether the database is a throwaway one."""
    if base.database.sql_alchemy_conn is not None:
        yield base, False
        return
    with tempfile.TemporaryDirectory(prefix="ketch-dags-test-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'ketch.db'}"
        secret = base.api_auth.jwt_secret or SecretStr(secrets.token_urlsafe(32))
        settings = base.model_copy(
            update={
                "database": base.database.model_copy(update={"sql_alchemy_conn": SecretStr(url)}),
                "api_auth": base.api_auth.model_copy(update={"jwt_secret": secret}),
                "logging": base.logging.model_copy(update={"base_log_folder": Path(tmp) / "logs"}),
            }
        )
        try:
            yield settings, True
        finally:
            from ketch.db.engine import dispose_engine

            dispose_engine(url)


def run_dag_test(
    dag: DAG,
    *,
    logical_date: datetime | None = None,
    conf: dict[str, Any] | None = None,
    dags_folder: Path | None = None,
    settings: Settings | None = None,
    echo: Echo = _echo,
) -> DagTestResult:
    """Store ``dag``, create one manual run (logical date: now by default) and run it here."""
    from ketch.config import get_settings

    with settings_for_test(settings or get_settings()) as (used, throwaway):
        where = "a throwaway SQLite database" if throwaway else "the configured database"
        echo(f"ketch dags test: DAG {dag.dag_id!r} in {where}")
        return _test(dag, used, logical_date or datetime.now(UTC), conf or {}, dags_folder, echo)


def _test(
    dag: DAG,
    settings: Settings,
    logical_date: datetime,
    conf: dict[str, Any],
    dags_folder: Path | None,
    echo: Echo,
) -> DagTestResult:
    from ketch.api.inline_server import execution_api
    from ketch.db.engine import get_engine
    from ketch.db.migrate import migrate
    from ketch.scheduler.context import SchedulerContext, default_token_signer

    engine = get_engine(settings.database_url)
    migrate(engine)
    run_pk = _create_run(engine, settings, dag, logical_date, conf, dags_folder)
    ctx = SchedulerContext(
        settings=settings,
        engine=engine,
        executor=_InlineExecutor(),
        sign_token=default_token_signer(settings),
    )
    with execution_api(settings) as url:
        stuck = _drive(ctx, run_pk, dag, url, echo)
    result = _result(ctx, run_pk, stuck)
    for task_id, state in result.task_states.items():
        echo(f"  {task_id}: {state or 'no state'}")
    echo(f"run {result.run_id} of DAG {result.dag_id}: {result.state}")
    if stuck:
        echo(f"the run cannot go on: no task can run ({', '.join(stuck)} still without state)")
    return result


def _create_run(
    engine: Any,
    settings: Settings,
    dag: DAG,
    logical_date: datetime,
    conf: dict[str, Any],
    dags_folder: Path | None,
) -> int:
    from ketch.authoring.serialize import serialize_dag
    from ketch.dag_processing.store import store_dag
    from ketch.db.engine import session_scope
    from ketch.exceptions import ParamValidationError
    from ketch.operations.errors import OperationError
    from ketch.operations.runs import trigger_dag

    folder = dags_folder or Path(dag.fileloc).parent
    data = serialize_dag(dag, folder).model_dump(mode="json", by_alias=True)
    with session_scope(engine) as session:
        store_dag(session, data, paused_at_creation=settings.core.dags_are_paused_at_creation)
    try:
        with session_scope(engine) as session:
            run = trigger_dag(session, dag.dag_id, conf=conf, logical_date=logical_date)
            session.flush()
            return run.id
    except (OperationError, ParamValidationError) as exc:
        raise DagTestError(str(exc)) from exc


def _drive(ctx: SchedulerContext, run_pk: int, dag: DAG, url: str, echo: Echo) -> list[str]:
    """Run tries until the run ends; the tasks left without a way to run if it gets stuck."""
    _start_run(ctx, run_pk)
    while True:
        step = _next_step(ctx, run_pk)
        if isinstance(step, LaunchRequest):
            _react(ctx, run_pk, _run_try(step, dag, url, echo))
        elif isinstance(step, float):
            time.sleep(step)  # a retry is due later (retry_delay), as Airflow's dag.test waits
        else:
            return step


def _start_run(ctx: SchedulerContext, run_pk: int) -> None:
    """The run starts at once (Airflow's dag.test ignores max_active_runs and pausing)."""
    from ketch.db.models import DagRun
    from ketch.scheduler.reactions import evaluate_run_fully

    with ctx.sessions() as session:
        run = session.get(DagRun, run_pk)
        assert run is not None
        run.state, run.start_date, run.needs_evaluation = (
            DagRunState.RUNNING.value,
            ctx.clock(),
            False,
        )
        evaluate_run_fully(ctx, session, run)
        session.commit()


def _next_step(ctx: SchedulerContext, run_pk: int) -> LaunchRequest | float | list[str]:
    """The next try to run (queued and committed), seconds to wait for a retry, or the end
    (an empty list when the run finished, else the tasks stuck without a state)."""
    from ketch.db.models import DagRun, TaskInstance
    from ketch.scheduler.queueing import _mark_queued, _request
    from ketch.scheduler.reactions import evaluate_run_fully

    with ctx.sessions() as session:
        run = session.get(DagRun, run_pk)
        assert run is not None
        if run.state == DagRunState.RUNNING.value and run.needs_evaluation:
            run.needs_evaluation = False  # a paused DAG's reaction leaves it to us
            evaluate_run_fully(ctx, session, run)
        if run.state != DagRunState.RUNNING.value:
            session.commit()
            return []
        now = ctx.clock()
        _make_retries_due(session, run_pk, now)
        ti = session.scalars(
            select(TaskInstance)
            .where(TaskInstance.dag_run_id == run_pk, TaskInstance.state == _TI.SCHEDULED.value)
            .order_by(TaskInstance.priority_weight.desc(), TaskInstance.id)
            .limit(1)
        ).first()
        if ti is None:
            session.commit()
            return _wait_or_stuck(session, run_pk, now)
        _mark_queued(ctx, session, ti, now)
        request = _request(ctx, session, ti, run.dag_hash)
        ti.external_executor_id = ctx.executor.launch(request)
        session.commit()
        return request


# A retry, or a sensor's next poke in reschedule mode: both wait for next_retry_at.
_WAITING = (_TI.UP_FOR_RETRY.value, _TI.UP_FOR_RESCHEDULE.value)


def _make_retries_due(session: Session, run_pk: int, now: datetime) -> None:
    """The housekeeping's ``make_retries_due``, for this run only."""
    from ketch.db.models import TaskInstance

    session.execute(
        update(TaskInstance)
        .where(
            TaskInstance.dag_run_id == run_pk,
            TaskInstance.state.in_(_WAITING),
            TaskInstance.next_retry_at <= now,
        )
        .values(state=_TI.SCHEDULED.value)
        .execution_options(synchronize_session=False)
    )


def _wait_or_stuck(session: Session, run_pk: int, now: datetime) -> float | list[str]:
    from ketch.db.models import TaskInstance

    rows = session.execute(
        select(TaskInstance.task_id, TaskInstance.state, TaskInstance.next_retry_at).where(
            TaskInstance.dag_run_id == run_pk
        )
    ).all()
    retries = [at for _, state, at in rows if state in _WAITING and at]
    if retries:
        return min(1.0, max(0.01, (min(retries) - now).total_seconds()))
    return sorted(task_id for task_id, state, _ in rows if state is None) or ["(unknown)"]


def _run_try(request: LaunchRequest, dag: DAG, url: str, echo: Echo) -> TryEnded:
    """One try in this process, through the execution API like any try (the worker's code)."""
    from ketch.authoring.variable import Variable
    from ketch.worker.callbacks import run_state_callbacks
    from ketch.worker.client import ExecutionApiClient, TryStateConflict, in_process_try
    from ketch.worker.masked_output import masked_output
    from ketch.worker.runner.output import say
    from ketch.worker.runner.report import Cancelled, report
    from ketch.worker.runner.task import run_task

    key = request.key
    echo(f"--- task {key.task_id}, try {key.try_number} ---")
    client = ExecutionApiClient(url, request.token, retry_timeout=30.0)
    host, pid = socket.gethostname(), os.getpid()
    exit_code = 1
    Variable.clear_cache()  # each try reads the values of its own time, as in a real try
    with in_process_try(url, request.token), masked_output():  # masked as the pump does
        try:
            payload = client.start(pid, host)
            outcome = run_task(payload, client, dag=dag)
            run_state_callbacks(payload, outcome)
            recorded = report(client, outcome)
            say(f"task {outcome.state}" + (f": {outcome.error}" if outcome.error else ""))
            exit_code = 0 if outcome.state != "failed" and recorded else 1
        except (TryStateConflict, Cancelled) as exc:
            say(f"try not run: {exc}")
    return TryEnded(key, request.ti_id, exit_code, hostname=host, pid=pid)


def _react(ctx: SchedulerContext, run_pk: int, event: TryEnded) -> None:
    """What ``process_events`` does for one ended try, for this run only."""
    from ketch.db.models import TaskInstance
    from ketch.scheduler.reactions import event_error, fail_unreported_try, react_to_changes

    with ctx.sessions() as session:
        ti = session.get(TaskInstance, event.ti_id)
        assert ti is not None
        if ti.state in _ACTIVE:  # ended without reporting
            fail_unreported_try(ctx, session, ti, event_error(event), ctx.clock())
            session.flush()
        react_to_changes(ctx, session, run_pk, [ti])
        session.commit()


def _result(ctx: SchedulerContext, run_pk: int, stuck: list[str]) -> DagTestResult:
    from ketch.db.models import DagRun, TaskInstance

    with ctx.sessions() as session:
        run = session.get(DagRun, run_pk)
        assert run is not None
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.state)
            .where(TaskInstance.dag_run_id == run_pk)
            .order_by(TaskInstance.id)
        ).all()
        states = {task_id: state for task_id, state in rows}
        return DagTestResult(run.dag_id, run.run_id, run.state, states, stuck)
