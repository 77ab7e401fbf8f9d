"""The audit log (admin): every state-changing request and sign-in, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from ketch.api.rest.common import Limit, Offset, SessionDep
from ketch.db.models import AuditLog

router = APIRouter(prefix="/auditLog", tags=["AuditLog"])


class AuditLogEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    target: dict[str, Any]
    status_code: int | None
    ip: str | None
    detail: str | None


class AuditLogCollectionResponse(BaseModel):
    entries: list[AuditLogEntry]
    total_entries: int


@router.get("")
def list_audit_log(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    actor: str | None = Query(default=None, description="Only entries by this actor."),
) -> AuditLogCollectionResponse:
    query = select(AuditLog)
    if actor is not None:
        query = query.where(AuditLog.actor == actor)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(AuditLog.id.desc()).limit(limit).offset(offset)).all()
    return AuditLogCollectionResponse(
        entries=[AuditLogEntry.model_validate(r, from_attributes=True) for r in rows],
        total_entries=total,
    )
