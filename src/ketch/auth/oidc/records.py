"""What sign-in and sign-out write to the database: the user's sign-in (an account an
admin disabled is refused here) and an audit-log entry for every sign-in, refusal and
sign-out. Called from the routes in a worker thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Request

from ketch.auth import audit, roles, sessions, users
from ketch.config import Role

log = logging.getLogger("ketch.auth")


@dataclass(frozen=True, slots=True)
class SignInOutcome:
    role: Role | None
    reason: str


def record_outcome(
    request: Request, *, email: str, name: str, admission: roles.Admission, ip: str | None
) -> SignInOutcome:
    role, reason = admission.role, admission.reason
    with request.app.state.session_factory() as db:
        if role is not None and not users.record_sign_in(db, email=email, name=name, role=role):
            role, reason = None, "an administrator disabled this account"
        audit.record(
            db,
            actor=email,
            action="sign-in" if role is not None else "sign-in refused",
            role=role,
            status_code=303 if role is not None else 403,
            ip=ip,
            detail=reason or None,
        )
        db.commit()
    return SignInOutcome(role, reason)


def record_failure(request: Request, *, detail: str, status_code: int, ip: str | None) -> None:
    try:
        with request.app.state.session_factory() as db:
            audit.record(
                db,
                actor="unknown",
                action="sign-in refused",
                status_code=status_code,
                ip=ip,
                detail=detail,
            )
            db.commit()
    except Exception:  # the refusal page matters more than its audit entry
        log.exception("could not record a refused sign-in in the audit log")


def record_sign_out(request: Request, user: sessions.SessionUser, ip: str | None) -> None:
    with request.app.state.session_factory() as db:
        audit.record(
            db, actor=user.email, action="sign-out", role=user.role, status_code=303, ip=ip
        )
        db.commit()
