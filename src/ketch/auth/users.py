"""People who signed in: recorded at each sign-in, disabled by an admin.

Roles come from rules in settings, so there is nothing to create by hand; what an
admin manages is whether an account may still sign in and use its sessions.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ketch.config import Role
from ketch.db.models import WebUser


def record_sign_in(session: Session, *, email: str, name: str, role: Role) -> bool:
    """Remember the sign-in; False when an admin disabled this account (refuse it)."""
    now = datetime.now(UTC)
    user = session.get(WebUser, email)
    if user is None:
        session.add(
            WebUser(email=email, name=name, role=role, first_sign_in_at=now, last_sign_in_at=now)
        )
        return True
    user.name, user.role, user.last_sign_in_at = name, role, now
    return not user.disabled


def is_disabled(session: Session, email: str) -> bool:
    disabled = session.scalar(select(WebUser.disabled).where(WebUser.email == email))
    return bool(disabled)


def list_users(session: Session) -> list[WebUser]:
    return list(session.scalars(select(WebUser).order_by(WebUser.email)))


def set_disabled(session: Session, email: str, disabled: bool, *, by: str) -> WebUser:
    """Disable or re-enable an account; raises NotFound for someone who never signed in."""
    from ketch.operations import NotFound

    user = session.get(WebUser, email)
    if user is None:
        raise NotFound(f"user {email!r} never signed in")
    user.disabled = disabled
    user.disabled_at = datetime.now(UTC) if disabled else None
    user.disabled_by = by if disabled else None
    return user
