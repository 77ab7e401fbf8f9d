"""DAGs: look one up, its serialized form, list them with their latest run, pause."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from ketch.db.models import DagModel, DagRun
from ketch.operations._common import Page, _notify_after_commit
from ketch.operations.errors import DagNotFound
from ketch.serialization import SerializedDag


def get_dag(session: Session, dag_id: str, *, active_only: bool = False) -> DagModel:
    dag = session.get(DagModel, dag_id)
    if dag is None or (active_only and not dag.is_active):
        raise DagNotFound(dag_id)
    return dag


def serialized_dag(dag: DagModel) -> SerializedDag:
    """The DAG's latest serialized form (what the DAG processor last parsed)."""
    return SerializedDag.model_validate(dag.serialized)


@dataclass(frozen=True, slots=True)
class DagSummary:
    dag: DagModel
    last_run: DagRun | None


def list_dags(
    session: Session,
    *,
    paused: bool | None = None,
    tags: list[str] | None = None,
    only_active: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> Page[DagSummary]:
    """DAGs by dag_id with their latest run. A DAG matches ``tags`` if it has any of them
    (Airflow's default tags match mode)."""
    query = select(DagModel).order_by(DagModel.dag_id)
    if only_active:
        query = query.where(DagModel.is_active.is_(True))
    if paused is not None:
        query = query.where(DagModel.is_paused.is_(paused))
    dags = list(session.scalars(query))
    if tags:
        # Tags are a JSON list; filtering here keeps one portable query for both backends
        # (DAG counts are small: this is not a scheduling path).
        wanted = set(tags)
        dags = [d for d in dags if wanted.intersection(d.tags or [])]
    page = dags[offset : None if limit is None else offset + limit]
    last_runs = _latest_runs(session, [d.dag_id for d in page])
    return Page([DagSummary(d, last_runs.get(d.dag_id)) for d in page], len(dags))


def list_dag_models(session: Session, *, only_active: bool = True) -> list[DagModel]:
    """Every DAG by dag_id, without its serialized form (left unloaded: the largest column,
    and a list page needs none of it; reading it later loads it for that DAG only)."""
    query = select(DagModel).options(defer(DagModel.serialized)).order_by(DagModel.dag_id)
    if only_active:
        query = query.where(DagModel.is_active.is_(True))
    return list(session.scalars(query))


def _latest_runs(session: Session, dag_ids: list[str]) -> dict[str, DagRun]:
    if not dag_ids:
        return {}
    latest_ids = (
        select(func.max(DagRun.id)).where(DagRun.dag_id.in_(dag_ids)).group_by(DagRun.dag_id)
    )
    return {r.dag_id: r for r in session.scalars(select(DagRun).where(DagRun.id.in_(latest_ids)))}


def set_paused(session: Session, dag_id: str, paused: bool) -> DagModel:
    """Pause or unpause. Unpausing asks the scheduler to recompute the next run from the
    timetable (``needs_next_dagrun``), as time may have passed while paused."""
    dag = get_dag(session, dag_id)
    dag.is_paused = paused
    if not paused:
        dag.needs_next_dagrun = True
    _notify_after_commit(session)
    return dag
