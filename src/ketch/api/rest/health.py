"""``GET /api/v1/health``: is the web process up and can it reach the database."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from ketch.api.rest.common import SessionDep
from ketch.api.schemas import HealthResponse

router = APIRouter(tags=["Monitor"])


@router.get("/health")
def health(session: SessionDep, response: Response) -> HealthResponse:
    """200 when the metadata database answers, 503 otherwise (for load balancer probes)."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        response.status_code = 503
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HealthResponse(status="unhealthy", database=reason)
    return HealthResponse(status="ok", database="ok")
