"""Browser sessions: a signed, HttpOnly cookie that names the signed-in user.

Starlette's ``SessionMiddleware`` signs the cookie (itsdangerous) and keeps it
``HttpOnly`` and ``SameSite=Lax``; ``Secure`` unless the server is bound to a loopback
address (plain ``http://localhost`` in development and tests). A tampered cookie
fails its signature and reads as no session at all. On top of the middleware's
rolling lifetime this module enforces an idle timeout and an absolute one, and keeps
a CSRF token per session that state-changing requests must send back.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp

from ketch.auth.exposure import is_loopback_host
from ketch.auth.secret_file import read_or_create_secret
from ketch.config import AuthSettings, Role, Settings

SESSION_COOKIE = "ketch_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
# Write "last seen" back at most this often: every write re-sends the cookie anyway,
# but a coarse clock keeps concurrent requests from racing over it.
_SEEN_RESOLUTION_SECONDS = 30


@dataclass(frozen=True, slots=True)
class SessionUser:
    """Who a valid session cookie says is signed in."""

    email: str
    name: str
    role: Role
    hosted_domain: str | None
    csrf_token: str
    signed_in_at: int
    checked_at: int


def session_secret(settings: Settings) -> str:
    """The cookie signing key: configured, or this machine's generated one."""
    if settings.auth.session_secret is not None:
        return settings.auth.session_secret.get_secret_value()
    return read_or_create_secret(settings.home / "session_secret")


def session_middleware(app: ASGIApp, settings: Settings) -> SessionMiddleware:
    """The cookie layer, configured from the settings (``app.add_middleware`` style)."""
    return SessionMiddleware(
        app,
        secret_key=session_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=settings.auth.session_max_age,
        same_site="lax",
        https_only=not is_loopback_host(settings.api.host),
    )


def sign_in(
    conn: HTTPConnection,
    *,
    email: str,
    name: str,
    role: Role,
    hosted_domain: str | None,
) -> SessionUser:
    """Start a fresh session (a new CSRF token; nothing kept from before sign-in)."""
    now = int(time.time())
    conn.session.clear()
    conn.session["user"] = {
        "email": email,
        "name": name,
        "role": role,
        "hd": hosted_domain,
        "iat": now,
        "seen": now,
        "checked": now,
    }
    conn.session["csrf"] = secrets.token_urlsafe(32)
    user = session_user(conn, None, now=now)
    assert user is not None
    return user


def sign_out(conn: HTTPConnection) -> None:
    conn.session.clear()


def session_user(
    conn: HTTPConnection, auth: AuthSettings | None, *, now: int | None = None
) -> SessionUser | None:
    """The session's user, or None when there is none or it expired (then it is cleared)."""
    if "session" not in conn.scope:
        return None
    data: Any = conn.session.get("user")
    csrf = conn.session.get("csrf")
    if not isinstance(data, dict) or not isinstance(csrf, str):
        return None
    now = int(time.time()) if now is None else now
    try:
        signed_in_at, seen = int(data["iat"]), int(data["seen"])
        user = SessionUser(
            email=str(data["email"]),
            name=str(data.get("name") or data["email"]),
            role=data["role"],
            hosted_domain=data.get("hd"),
            csrf_token=csrf,
            signed_in_at=signed_in_at,
            checked_at=int(data.get("checked", signed_in_at)),
        )
    except (KeyError, TypeError, ValueError):
        conn.session.clear()
        return None
    if auth is not None and (
        now - signed_in_at > auth.session_max_age or now - seen > auth.session_idle_timeout
    ):
        conn.session.clear()
        return None
    if now - seen >= _SEEN_RESOLUTION_SECONDS:
        data["seen"] = now
        conn.session["user"] = data
    return user


def mark_checked(conn: HTTPConnection, role: Role, *, now: int | None = None) -> None:
    """Record a re-check of the session's user (and the role the rules give now)."""
    data = conn.session.get("user")
    if isinstance(data, dict):
        data["checked"] = int(time.time()) if now is None else now
        data["role"] = role
        conn.session["user"] = data
