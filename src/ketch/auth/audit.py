"""The audit log: who changed what, when, from where.

Every state-changing HTTP request is recorded by :class:`AuditMiddleware` after its
answer, whatever the outcome (refused attempts too). Sign-ins and refusals are
recorded by the sign-in routes. Only the route and its path parameters are kept,
never a request body: no secret value can reach the log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ketch.db.models import AuditLog

log = logging.getLogger("ketch.audit")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Task tries call the execution API thousands of times; their actions are the try
# history itself. Sign-in routes write their own, more telling, records.
_NOT_AUDITED_PREFIXES = ("/execution",)


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    role: str | None = None,
    target: dict[str, Any] | None = None,
    status_code: int | None = None,
    ip: str | None = None,
    detail: str | None = None,
) -> None:
    """Add one entry (the caller commits)."""
    session.add(
        AuditLog(
            at=datetime.now(UTC),
            actor=actor,
            role=role,
            action=action,
            target=target or {},
            status_code=status_code,
            ip=ip,
            detail=detail,
        )
    )


class AuditMiddleware:
    """Records every state-changing request once its status is known."""

    def __init__(self, app: ASGIApp, *, skip_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or scope["path"].startswith(_NOT_AUDITED_PREFIXES)
            or scope["path"] in self.skip_paths
        ):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            await to_thread.run_sync(self._write, scope, status[0] if status else 500)

    def _write(self, scope: Scope, status_code: int) -> None:
        app = scope.get("app")
        factory = getattr(getattr(app, "state", None), "session_factory", None)
        if factory is None:
            return
        principal = scope.get("state", {}).get("principal")
        action = _printable(f"{scope['method']} {scope['path']}")
        client = scope.get("client")
        try:
            with factory() as session:
                record(
                    session,
                    actor=principal.name if principal is not None else "anonymous",
                    role=principal.role if principal is not None else None,
                    action=action,
                    target={
                        k: _printable(str(v)) for k, v in (scope.get("path_params") or {}).items()
                    },
                    status_code=status_code,
                    ip=client[0] if client else None,
                )
                session.commit()
        except Exception:  # the answer is sent; losing an entry must not become a 500
            log.exception("could not write the audit log entry for %s", action)


def _printable(text: str) -> str:
    """Control characters escaped (PostgreSQL refuses NUL in text; a log reader wants no
    line breaks in an entry), and at most the column's 250 characters for the action."""
    escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return escaped[:250]
