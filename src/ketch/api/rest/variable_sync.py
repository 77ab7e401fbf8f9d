"""``GET /api/v1/variables/syncStatus`` and the Prometheus ``/metrics`` endpoint.

The sync status router is registered before the variables router, so
``syncStatus`` is not taken for a variable key.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from ketch.api.rest.common import SessionDep, SettingsDep, error_responses
from ketch.variables.sync import SourceStatus, sync_status

router = APIRouter(prefix="/variables", tags=["Variable"])
metrics_router = APIRouter(tags=["Monitor"], responses=error_responses(401, 403, 503))


class SyncSourceStatusResponse(BaseModel):
    source_id: str
    kind: str
    ok: bool
    version: str | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    next_attempt_at: datetime | None
    managed_keys: int
    configured: bool

    @classmethod
    def from_status(cls, status: SourceStatus, configured: bool) -> SyncSourceStatusResponse:
        return cls(**status.__dict__, configured=configured)


class SyncStatusCollectionResponse(BaseModel):
    sources: list[SyncSourceStatusResponse]
    total_entries: int


@router.get("/syncStatus")
def get_sync_status(session: SessionDep, settings: SettingsDep) -> SyncStatusCollectionResponse:
    """Each sync source: last success, last error, current version, managed keys.

    Sources configured in this process's settings but never synced yet are listed with
    empty fields; ``configured`` is false for a source that has a status but is no
    longer configured (its keys stay until deleted by hand).
    """
    configured = {c.source_id: c.kind for c in settings.variables.sync_sources}
    statuses = {s.source_id: s for s in sync_status(session)}
    for source_id, kind in configured.items():
        statuses.setdefault(
            source_id,
            SourceStatus(source_id, kind, None, None, None, None, None, 0, None, 0),
        )
    entries = [
        SyncSourceStatusResponse.from_status(s, s.source_id in configured)
        for s in sorted(statuses.values(), key=lambda s: s.source_id)
    ]
    return SyncStatusCollectionResponse(sources=entries, total_entries=len(entries))


@metrics_router.get("/metrics", response_class=Response)
def metrics(session: SessionDep, request: Request) -> Response:
    """Prometheus text: this process's metrics, per-source sync gauges from the database,
    and whether the log archive answers."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    from ketch.api.rest.logs import log_access
    from ketch.logs.metrics import ArchiveUpCollector
    from ketch.variables.metrics import SyncStatusCollector

    from_db = CollectorRegistry(auto_describe=False)
    from_db.register(SyncStatusCollector(lambda: sync_status(session)))
    from_db.register(ArchiveUpCollector(log_access(request).archive_status))
    body = generate_latest(REGISTRY) + generate_latest(from_db)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
