"""Pause a DAG whose last N runs failed: Airflow's ``max_consecutive_failed_dag_runs``.

A DAG that fails every run keeps creating runs, pods and alerts until someone notices;
Airflow pauses it after ``max_consecutive_failed_dag_runs`` (default from ``[core]
max_consecutive_failed_dag_runs_per_dag``, 0: never). The check runs in the transaction
that fails the run, so the run's end and the pause commit together: a scheduler that
dies in between leaves neither, and the run is failed (and checked) again after restart.

As in Airflow, only a run failed by its tasks counts as a trigger (not a run that hit
its ``dagrun_timeout``), and the last N runs are the newest ones whatever their type.
Airflow orders them by logical date, where manual runs of Airflow 3 may have none;
ketch orders by ``run_after`` (the logical date when there is one) and then creation.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ketch.db.models import DagModel, DagRun
from ketch.states import DagRunState

log = logging.getLogger(__name__)


def pause_after_consecutive_failures(session: Session, run: DagRun, limit: int) -> bool:
    """Pause ``run``'s DAG when ``limit`` > 0 and its ``limit`` newest runs all failed
    (``run`` is already failed in ``session``). True if it paused the DAG."""
    if limit <= 0:
        return False
    session.flush()  # the run's own failed state counts
    states = session.scalars(
        select(DagRun.state)
        .where(DagRun.dag_id == run.dag_id)
        .order_by(DagRun.run_after.desc(), DagRun.id.desc())
        .limit(limit)
    ).all()
    if len(states) < limit or any(state != DagRunState.FAILED.value for state in states):
        return False
    paused = session.execute(
        update(DagModel)
        .where(DagModel.dag_id == run.dag_id, DagModel.is_paused.is_(False))
        .values(is_paused=True)
    )
    if getattr(paused, "rowcount", 0):
        log.warning(
            "DAG %s paused: its last %d runs failed (max_consecutive_failed_dag_runs=%d)",
            run.dag_id,
            limit,
            limit,
        )
        return True
    return False
