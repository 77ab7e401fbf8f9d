"""``GET /api/v1/health``: is the web process up, and does the database take writes."""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ketch.api.rest.common import SessionDep
from ketch.api.schemas.health import HealthResponse
from ketch.db.models import HealthProbe
from ketch.db.outage import OutageTracker, reason

router = APIRouter(tags=["Monitor"])

PROBE_ROW = 1


@router.get("/health")
def health(session: SessionDep, request: Request, response: Response) -> HealthResponse:
    """200 when the metadata database commits a write, 503 otherwise (for load balancer
    and Kubernetes probes).

    The write is one UPDATE of the single ``health_probe`` row, committed: a database that
    answers reads but refuses writes (disk full, read-only) is unhealthy too, with
    ``database`` saying ``writes refused: <reason>``.
    """
    try:
        write_probe(session)
    except Exception as exc:
        _rollback(session)
        problem = reason(exc)
        try:
            session.execute(text("SELECT 1"))
        except Exception as read_exc:
            problem = reason(read_exc)  # cannot even read: the database is unreachable
        else:
            problem = f"writes refused: {problem}"
        finally:
            _rollback(session)
        outage: OutageTracker | None = getattr(request.app.state, "db_outage", None)
        if outage is not None:
            outage.failed(problem)
        response.status_code = 503
        return HealthResponse(status="unhealthy", database=problem, log_archive=_archive(request))
    return HealthResponse(status="ok", database="ok", log_archive=_archive(request))


def _archive(request: Request) -> str:
    """The log archive's state (checked at most every 30 s): not part of the status,
    a broken bucket must not make Kubernetes restart healthy web pods."""
    from ketch.api.rest.logs import log_access

    return log_access(request).archive_status()


def write_probe(session: Session) -> None:
    """Update the probe row and commit (insert it if someone deleted it)."""
    now = datetime.now(UTC)
    result = session.execute(
        update(HealthProbe).where(HealthProbe.id == PROBE_ROW).values(checked_at=now)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.add(HealthProbe(id=PROBE_ROW, checked_at=now))
    try:
        session.commit()
    except IntegrityError:  # another web process inserted it first: that write worked
        session.rollback()


def _rollback(session: Session) -> None:
    with suppress(Exception):  # a dead connection: nothing to roll back
        session.rollback()
