"""``GET /api/v1/importErrors``: DAG files that failed to parse, with their traceback."""

from __future__ import annotations

from fastapi import APIRouter

from ketch import operations
from ketch.api.rest.common import Limit, Offset, SessionDep
from ketch.api.schemas.import_errors import ImportErrorCollectionResponse, ImportErrorResponse

router = APIRouter(tags=["ImportError"])


@router.get("/importErrors")
def list_import_errors(
    session: SessionDep, limit: Limit = 50, offset: Offset = 0
) -> ImportErrorCollectionResponse:
    page = operations.list_import_errors(session, limit=limit, offset=offset)
    return ImportErrorCollectionResponse(
        import_errors=[ImportErrorResponse.from_model(e) for e in page.items],
        total_entries=page.total_entries,
    )
