"""A DAG's source code, as the DAG processor stored it (``dag_code``), for the API and UI.

ketch keeps one source per DAG file, the latest the processor stored; Airflow 3 keeps one
per DAG version and numbers the versions. The equivalent number here is the position of
the DAG's current serialized form among its ``dag_version`` rows by creation (1 for the
first form ever stored), so it grows by one with each changed DAG as Airflow's does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ketch.db.models import DagCode, DagModel, DagVersion
from ketch.operations.dags import get_dag
from ketch.operations.errors import NotFound


@dataclass(frozen=True, slots=True)
class DagSource:
    dag_id: str
    dag_display_name: str
    fileloc: str
    content: str
    version_number: int | None


def get_dag_source(session: Session, dag_id: str) -> DagSource:
    """The stored source of ``dag_id``'s file; NotFound for an unknown DAG or no source."""
    dag = get_dag(session, dag_id)
    code = session.get(DagCode, dag.fileloc)
    if code is None:
        raise NotFound(
            f"no source stored for DAG {dag_id!r} (file {dag.fileloc}): "
            "the DAG processor stores it when it next parses the file"
        )
    display = (dag.serialized or {}).get("dag_display_name") or dag.dag_id
    return DagSource(
        dag.dag_id, display, dag.fileloc, code.source_code, version_number(session, dag)
    )


def version_number(session: Session, dag: DagModel) -> int | None:
    """The 1-based position of the DAG's current form among its versions by creation."""
    created = session.scalar(
        select(DagVersion.created_at).where(DagVersion.dag_hash == dag.serialized_hash)
    )
    if created is None:
        return None
    count = session.scalar(
        select(func.count())
        .select_from(DagVersion)
        .where(DagVersion.dag_id == dag.dag_id, DagVersion.created_at <= created)
    )
    return int(count or 0) or None
