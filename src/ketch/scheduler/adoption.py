"""Start-up: take over the tries a previous scheduler left queued or running.

Every queued/running TI is offered to ``Executor.adopt()`` (always called, even with no
offer, so the executor's one list call can also clean up orphans). A running TI is
offered with what the try recorded at start (pid, hostname) besides its external id, so
a try whose launch was never recorded is still found. Adopted tries need nothing: their
end arrives as an event. Queued TIs not adopted are launched again with the SAME
try_number (the execution API lets only one process start a try, and the exit of the
one refused is not taken for the try's end). Running TIs not adopted ended while nobody
watched: they go through the event path, which records the failure (and the retry).

Then every running run is flagged for one full evaluation: a decision the previous
scheduler owed (a try that ended while it was down, a commit it never made) is taken
from the database alone.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass, field

from sqlalchemy import select, update

from ketch.db.models import DagRun, TaskInstance
from ketch.executors.base import RunningTry, TryEnded, TryKey
from ketch.faults import fault_point
from ketch.scheduler.context import SchedulerContext
from ketch.scheduler.queueing import launch_try, try_key
from ketch.scheduler.reactions import react_to_changes
from ketch.states import DagRunState, TaskInstanceState

log = logging.getLogger("ketch.scheduler.adoption")

_TI = TaskInstanceState


@dataclass
class AdoptionResult:
    adopted: list[TryKey] = field(default_factory=list)
    relaunched: list[TryKey] = field(default_factory=list)
    lost: list[TryEnded] = field(default_factory=list)  # to record through the event path


def _offers(ctx: SchedulerContext, rows: list[tuple[TaskInstance, str]]) -> list[RunningTry]:
    offers = []
    with ctx.sessions() as session:
        for ti, dag_hash in rows:
            info = ctx.dags.get(session, dag_hash)
            task = info.task(ti.task_id) if info else None
            offers.append(
                RunningTry(
                    key=try_key(ti),
                    ti_id=ti.id,
                    external_executor_id=ti.external_executor_id,
                    execution_timeout=task.execution_timeout if task else None,
                    started_at_epoch=ti.start_date.timestamp() if ti.start_date else None,
                    hostname=ti.hostname if ti.state == _TI.RUNNING.value else None,
                    pid=ti.pid if ti.state == _TI.RUNNING.value else None,
                )
            )
    return offers


def adopt_tries(ctx: SchedulerContext, events: queue.SimpleQueue[TryEnded]) -> AdoptionResult:
    """Offer, adopt, relaunch; returns what happened (lost tries become events)."""
    result = AdoptionResult()
    with ctx.sessions() as session:
        rows = [
            (ti, dag_hash)
            for ti, dag_hash in session.execute(
                select(TaskInstance, DagRun.dag_hash)
                .join(DagRun, DagRun.id == TaskInstance.dag_run_id)
                .where(TaskInstance.state.in_([_TI.QUEUED.value, _TI.RUNNING.value]))
            )
        ]
    adopted = set(ctx.executor.adopt(_offers(ctx, rows)))
    result.adopted = sorted(adopted, key=str)
    to_relaunch = [(ti, h) for ti, h in rows if try_key(ti) not in adopted and ti.state == "queued"]
    relaunch_keys = {try_key(ti) for ti, _ in to_relaunch}
    _drop_vanished_reports(events, relaunch_keys, result)
    _relaunch(ctx, to_relaunch, result)
    for ti, _ in rows:
        key = try_key(ti)
        if key not in adopted and ti.state == _TI.RUNNING.value:
            reason = "the try was not found after a scheduler restart (not adoptable)"
            result.lost.append(TryEnded(key=key, ti_id=ti.id, exit_code=None, reason=reason))
    flagged = _flag_running_runs(ctx)
    log.info(
        "adoption: %d adopted, %d relaunched, %d lost; %d running runs to re-evaluate",
        len(result.adopted),
        len(result.relaunched),
        len(result.lost),
        flagged,
    )
    return result


def _flag_running_runs(ctx: SchedulerContext) -> int:
    """Every running run gets one full evaluation (``needs_evaluation``) after a restart."""
    with ctx.sessions() as session:
        result = session.execute(
            update(DagRun)
            .where(DagRun.state == DagRunState.RUNNING.value)
            .values(needs_evaluation=True)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    ctx.poke()
    return int(getattr(result, "rowcount", 0) or 0)


def _drop_vanished_reports(
    events: queue.SimpleQueue[TryEnded], relaunch: set[TryKey], result: AdoptionResult
) -> None:
    """adopt() reports unfound tries as ended; for queued ones we relaunch instead."""
    kept = []
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            break
        if event.key in relaunch and event.exit_code is None:
            continue
        kept.append(event)
    for event in kept:
        events.put(event)


def _relaunch(
    ctx: SchedulerContext, rows: list[tuple[TaskInstance, str]], result: AdoptionResult
) -> None:
    with ctx.sessions() as session:
        failed = []
        for seen, dag_hash in rows:
            # Read again, never merged: the process launched before the restart may have
            # started this try since the rows were read (the execution API answers while
            # adoption runs). Merging the stale copy wrote it back to queued, so the
            # relaunched process was let start too, and the try ran twice.
            ti = session.get(TaskInstance, seen.id, populate_existing=True)
            if ti is None or ti.state != _TI.QUEUED.value or ti.try_number != seen.try_number:
                continue  # started (or changed) meanwhile: its own process carries it
            if launch_try(ctx, session, ti, dag_hash):
                result.relaunched.append(try_key(ti))
            else:
                failed.append(ti)
        if rows:
            fault_point("adoption.after_relaunch")
        session.flush()
        for ti in failed:
            react_to_changes(ctx, session, ti.dag_run_id, [ti])
        session.commit()
