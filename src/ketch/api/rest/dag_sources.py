"""``GET /api/v1/dagSources/{dag_id}[?version_number=]``: the source of a DAG's file, as
the DAG processor stored it, so clients (and the UI) need no access to the DAGs folder.

Airflow 3's route: ``DAGSourceResponse`` as JSON (``Accept`` JSON or ``*/*``), the bare
text for ``Accept: text/plain``, 406 for anything else. ketch keeps only the latest source
of a file, so ``version_number`` other than the DAG's current one is a 404 saying so."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse

from ketch import operations
from ketch.api.rest.common import MAX_INT32, SessionDep, error_responses

router = APIRouter(tags=["DagSource"])

TEXT = "text/plain"


class DAGSourceResponse(BaseModel):
    """Airflow 3's response: the file's text and the DAG's version number."""

    content: str | None = Field(description="The DAG file's text (or a note if too large)")
    dag_id: str
    version_number: int | None = Field(
        description="Which form of the DAG this is, from 1, growing with each change"
    )
    dag_display_name: str


@router.get(
    "/dagSources/{dag_id}",
    responses={
        **error_responses(404, 406),
        200: {"content": {TEXT: {"schema": {"type": "string"}}}},
    },
    response_model=DAGSourceResponse,
)
def get_dag_source(
    dag_id: str,
    session: SessionDep,
    version_number: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
    accept: Annotated[str, Header()] = "*/*",
) -> DAGSourceResponse | PlainTextResponse:
    source = operations.get_dag_source(session, dag_id)
    if version_number is not None and version_number != source.version_number:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"the source of DAG {dag_id!r} version {version_number} is not stored: ketch "
            f"keeps only the latest source of a DAG file (version {source.version_number})",
        )
    if accept.startswith(TEXT):
        return PlainTextResponse(source.content)
    if not accept.startswith(("application/json", "*/*")):
        raise HTTPException(
            status.HTTP_406_NOT_ACCEPTABLE, "Content not available for Accept header"
        )
    return DAGSourceResponse(
        content=source.content,
        dag_id=source.dag_id,
        version_number=source.version_number,
        dag_display_name=source.dag_display_name,
    )
