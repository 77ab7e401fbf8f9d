"""``GET /api/v1/dagSources/{dag_id}``: the source of a DAG's file, as the DAG processor
stored it, so clients (and the UI) need no access to the DAGs folder. Airflow 3's
``DAGSourceResponse`` shape; ketch keeps only the latest source (no ``version_number``
query parameter)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ketch import operations
from ketch.api.rest.common import SessionDep, error_responses

router = APIRouter(tags=["DagSource"])


class DAGSourceResponse(BaseModel):
    """Airflow 3's response: the file's text and the DAG's version number."""

    content: str | None = Field(description="The DAG file's text (or a note if too large)")
    dag_id: str
    version_number: int | None = Field(
        description="Which form of the DAG this is, from 1, growing with each change"
    )
    dag_display_name: str


@router.get("/dagSources/{dag_id}", responses=error_responses(404))
def get_dag_source(dag_id: str, session: SessionDep) -> DAGSourceResponse:
    source = operations.get_dag_source(session, dag_id)
    return DAGSourceResponse(
        content=source.content,
        dag_id=source.dag_id,
        version_number=source.version_number,
        dag_display_name=source.dag_display_name,
    )
