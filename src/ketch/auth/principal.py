"""Who is calling, and whether they may: the one check every route goes through.

A request is authenticated by exactly one of, in order:

1. ``Authorization: Bearer ketch_…``: an API token (a bad one is refused, never
   "fallen back" from);
2. the session cookie of a signed-in user (re-checked against the role rules and
   the disabled flag every ``session_recheck_interval``);
3. with no identity provider configured: a request from this machine with a
   loopback ``Host`` is the local admin (the ``Host`` check stops DNS rebinding);
4. ``[auth] mode = "none"``: everyone is admin.

:func:`authorize` is the FastAPI dependency that routers carry: it resolves the
principal, asks :mod:`ketch.auth.policy` what the route needs, checks CSRF for
cookie-authenticated changes, and leaves the principal on ``request.state`` for the
audit log. Try tokens belong to the execution API only and are refused here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ketch.auth import api_tokens, policy, roles, sessions, users
from ketch.auth.exposure import is_loopback_host
from ketch.config import Role, Settings, get_settings

Via = Literal["session", "token", "loopback", "open"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    via: Via
    scopes: frozenset[str] = field(default_factory=frozenset)
    csrf_token: str | None = None


class NotAuthenticated(Exception):
    """No valid credentials: 401 for the API, a redirect to sign-in for a page."""


class Forbidden(Exception):
    """Authenticated, but the role (or a missing CSRF token) does not allow this."""


def actor_name(request: Request) -> str:
    """Who made this request, for records (created_by, revoked_by, the audit log)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.name if principal is not None else "anonymous"


def _settings(request: Request) -> Settings:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings if settings is not None else get_settings()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'")
    return credentials.strip()


def _from_token(request: Request, secret: str) -> Principal:
    if not api_tokens.looks_like_api_token(secret):
        raise NotAuthenticated("not an API token (task try tokens are for the execution API)")
    with request.app.state.session_factory() as session:
        try:
            token = api_tokens.verify_token(session, secret)
        except api_tokens.InvalidApiToken as exc:
            raise NotAuthenticated(str(exc)) from exc
        return Principal(
            name=f"token:{token.name}",
            role=token.role,  # type: ignore[arg-type]  # validated at creation
            via="token",
            scopes=frozenset(token.scopes or ()),
        )


def _from_session(request: Request, settings: Settings) -> Principal | None:
    user = sessions.session_user(request, settings.auth)
    if user is None:
        return None
    role = user.role
    now = int(time.time())
    if now - user.checked_at >= settings.auth.session_recheck_interval:
        admission = roles.admit(
            settings.auth,
            email=user.email,
            email_verified=True,  # checked at sign-in; the rules are what may have changed
            hosted_domain=user.hosted_domain,
        )
        with request.app.state.session_factory() as session:
            disabled = users.is_disabled(session, user.email)
        if admission.role is None or disabled:
            sessions.sign_out(request)
            return None
        role = admission.role
        sessions.mark_checked(request, role, now=now)
    return Principal(name=user.email, role=role, via="session", csrf_token=user.csrf_token)


_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def _is_local_request(request: Request) -> bool:
    """From this machine, for this machine, and not relayed by a proxy on it.

    A reverse proxy on the same host connects from 127.0.0.1 (and nginx sends the
    upstream's loopback address as Host by default): its forwarding headers show that
    the request really comes from elsewhere, so it is not the local admin.
    """
    if any(name in request.headers for name in _FORWARDING_HEADERS):
        return False
    client = request.client
    host = request.headers.get("host", "")
    hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return client is not None and is_loopback_host(client.host) and is_loopback_host(hostname)


def resolve_principal(request: Request) -> Principal | None:
    """The caller, or None for an anonymous request; raises for bad credentials."""
    settings = _settings(request)
    secret = _bearer(request)
    if secret is not None:
        return _from_token(request, secret)
    if settings.auth.mode == "none":
        return Principal(name="anonymous (authentication off)", role="admin", via="open")
    if settings.auth.oidc_configured:
        return _from_session(request, settings)
    if _is_local_request(request):
        return Principal(name="local admin", role="admin", via="loopback")
    return None


def _check_csrf(request: Request, principal: Principal) -> None:
    """Cookie- and loopback-authenticated changes must come from our own pages.

    A bearer token cannot be sent by a foreign page, so token requests need nothing.
    """
    if request.method in ("GET", "HEAD", "OPTIONS") or principal.via in ("token", "open"):
        return
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        origin_host = origin.split("://", 1)[-1]
        if origin_host != request.headers.get("host"):
            raise Forbidden(f"cross-site request refused (Origin {origin})")
    if principal.via == "session":
        sent = request.headers.get(sessions.CSRF_HEADER)
        if not sent or sent != principal.csrf_token:
            raise Forbidden(f"missing or wrong CSRF token (send the {sessions.CSRF_HEADER} header)")


def _check_role(request: Request, principal: Principal, needed: Role) -> None:
    if not roles.at_least(principal.role, needed):
        raise Forbidden(
            f"{principal.name} has role {principal.role}; "
            f"{request.method} {_route_path(request)} needs {needed}"
        )


def _route_path(request: Request) -> str:
    return str(request.scope["path"])


def _authorize_sync(request: Request) -> Principal | None:
    settings = _settings(request)
    path = _route_path(request)
    if path == policy.METRICS_PATH:
        if settings.api.metrics_public:
            return None
        principal = resolve_principal(request)
        if principal is None:
            raise NotAuthenticated("sign in or send an API token with the metrics scope")
        if "metrics" not in principal.scopes and principal.role != "admin":
            raise Forbidden(f"{principal.name} lacks the metrics scope")
        return principal
    needed = policy.required_role(request.method, path)
    if needed is None:
        return None
    principal = resolve_principal(request)
    if principal is None:
        raise NotAuthenticated("sign in, or send an API token as 'Authorization: Bearer'")
    request.state.principal = principal
    _check_csrf(request, principal)
    _check_role(request, principal, needed)
    return principal


async def authorize(request: Request) -> Principal | None:
    """The router-level dependency: the principal, or None on an open route."""
    return await run_in_threadpool(_authorize_sync, request)


async def page_principal(request: Request) -> Principal:
    """For pages that always need someone signed in (whatever the route's policy)."""
    principal = await run_in_threadpool(_authorize_sync, request)
    if principal is None:
        principal = await run_in_threadpool(resolve_principal, request)
    if principal is None:
        raise NotAuthenticated("sign in")
    return principal
