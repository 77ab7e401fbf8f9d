"""Pages over the REST API's own list responses, so they show exactly what the API
would (passwords and sensitive ``extra`` keys as ``***``): ``/connections`` and
``/pools`` (op; both with forms that act through the API: a connection's edit sends a
PATCH naming the fields it changes, so a password left blank stays), ``/tokens`` and ``/audit`` (admin), and ``/health`` (every signed-in
role: the database, the log archive and the scheduler lease).

A role that may not read the resource gets a 403 page naming the role it needs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from starlette.responses import HTMLResponse

from ketch.api.rest.audit_log import list_audit_log
from ketch.api.rest.common import SettingsDep
from ketch.api.rest.connections import list_connections
from ketch.api.rest.health import health
from ketch.api.rest.pools import list_pools
from ketch.api.rest.tokens import list_tokens
from ketch.db.models import SchedulerLease
from ketch.web import access
from ketch.web.common import PrincipalDep, SessionDep, page, refused

router = APIRouter(include_in_schema=False)

SHOWN = 500


@router.get("/connections", response_class=HTMLResponse)
def connections_page(
    request: Request, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    api = "/api/v1/connections"
    if not access.may_read(principal, api):
        return refused(request, principal, "Connections", api)
    found = list_connections(session, settings, limit=SHOWN, offset=0)
    context = {
        "title": "Connections",
        "items": found.connections,
        "total": found.total_entries,
        "shown": SHOWN,
        "api": api,
        "may_write": access.may_write(principal, api + "/x"),
    }
    return page(request, principal, "connections.html", context)


@router.get("/pools", response_class=HTMLResponse)
def pools_page(request: Request, principal: PrincipalDep, session: SessionDep) -> HTMLResponse:
    api = "/api/v1/pools"
    if not access.may_read(principal, api):
        return refused(request, principal, "Pools", api)
    found = list_pools(session, limit=SHOWN, offset=0)
    context = {
        "title": "Pools",
        "items": found.pools,
        "total": found.total_entries,
        "api": api,
        "may_write": access.may_write(principal, api + "/x"),
    }
    return page(request, principal, "pools.html", context)


@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request, principal: PrincipalDep, session: SessionDep) -> HTMLResponse:
    api = "/api/v1/tokens"
    if not access.may_read(principal, api):
        return refused(request, principal, "API tokens", api)
    found = list_tokens(session)
    context = {"title": "API tokens", "items": found.tokens, "total": found.total_entries}
    return page(request, principal, "tokens.html", context)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    actor: Annotated[str | None, Query(max_length=320)] = None,
) -> HTMLResponse:
    api = "/api/v1/auditLog"
    if not access.may_read(principal, api):
        return refused(request, principal, "The audit log", api)
    found = list_audit_log(session, limit=200, offset=0, actor=actor or None)
    context = {
        "title": "Audit log",
        "items": found.entries,
        "total": found.total_entries,
        "actor": actor or "",
    }
    return page(request, principal, "audit.html", context)


@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request, principal: PrincipalDep, session: SessionDep) -> HTMLResponse:
    from starlette.responses import Response

    answer = health(session, request, Response())
    lease = session.scalars(select(SchedulerLease)).first()
    now = datetime.now(UTC)
    scheduler = "no scheduler has run yet"
    if lease is not None:
        expires = lease.expires_at.replace(tzinfo=lease.expires_at.tzinfo or UTC)
        alive = expires > now
        scheduler = f"{'running' if alive else 'gone'}: {lease.holder}, lease {'until' if alive else 'expired at'} {expires:%Y-%m-%d %H:%M:%S} UTC"
    context = {"title": "Health", "health": answer, "scheduler": scheduler}
    return page(request, principal, "health.html", context)
