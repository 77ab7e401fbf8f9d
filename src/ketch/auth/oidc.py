"""OpenID Connect sign-in: Google by default, any provider by its issuer URL.

Authlib's Starlette client does the protocol: discovery at
``{issuer}/.well-known/openid-configuration``, the authorization code flow with PKCE
(S256), ``state`` and ``nonce`` generated and kept in the signed session cookie (a state
is used once), and the ID token's signature checked against the provider's JWKS; a
token signed with a ``kid`` that the cached JWKS lacks makes Authlib fetch the JWKS
again once, so a key rotated at the provider is picked up at the next sign-in.

What this module adds to Authlib:

- the audience: Authlib 1.9 checks ``aud`` only through ``azp``; here ``aud`` must name
  our client id, and ``iss``, ``sub``, ``exp`` and ``iat`` are required (60 s leeway);
- the issuer that discovery returns must be the configured one, and an ``iss`` callback
  parameter (RFC 9207) must match it;
- an ``http://`` issuer only on a loopback host (:func:`check_settings`, at app build);
- who gets in: a verified email, ``hd`` and the role rules (:func:`ketch.auth.roles.admit`),
  an account an admin disabled (:func:`ketch.auth.users.record_sign_in`), the audit log;
- the redirect URI from the request, believing ``X-Forwarded-Proto``/``X-Forwarded-Host``
  only from a peer in ``[auth] trusted_proxies``.

Routes (``include_in_schema=False``): ``GET /login?next=/path``, ``GET
{oidc_callback_path}``, ``POST /logout`` (needs the session's CSRF token) and ``GET
/logout`` (the signed-out page). A refused account gets a 403 page naming the account
and the reason, never a redirect back to the provider.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import authlib.deprecate
import httpx
from fastapi import APIRouter, FastAPI, Request
from joserfc.errors import JoseError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from ketch.auth import audit, roles, sessions, users
from ketch.auth.exposure import is_loopback_host
from ketch.config import AuthSettings, Role, Settings, get_settings
from ketch.web.templates import render

with warnings.catch_warnings():
    # Authlib 1.9 announces at import that its httpx client will move to "httpx2". It
    # works with httpx as installed; unfiltered, the notice would open every server log.
    warnings.filterwarnings("ignore", category=authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

log = logging.getLogger("ketch.auth")

SCOPES = "openid email profile"
LEEWAY_SECONDS = 60
"""Clock skew allowed between this server and the provider for ``exp`` and ``iat``."""
GOOGLE_ISSUER = "https://accounts.google.com"
DEFAULT_CALLBACK_PATH = "/oauth2callback"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
_NEXT_KEY = "login_next"
_MAX_FORM_BYTES = 64 * 1024
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _http_errors() -> tuple[type[Exception], ...]:
    """Transport errors of the HTTP client Authlib uses: httpx2 when installed, else httpx."""
    errors: list[type[Exception]] = [httpx.HTTPError]
    try:
        import httpx2
    except ImportError:
        pass
    else:
        errors.append(httpx2.HTTPError)
    return tuple(errors)


_HTTP_ERRORS = _http_errors()


class OidcConfigError(ValueError):
    """The identity provider settings cannot work (one line that says how to fix them)."""


class ProviderError(RuntimeError):
    """The identity provider's discovery document is unusable."""


_UNREACHABLE: tuple[type[Exception], ...] = (*_HTTP_ERRORS, ValueError, ProviderError)


# ---------------------------------------------------------------------------- settings


def check_settings(auth: AuthSettings) -> None:
    """Refuse settings that cannot be served safely; called when the app is built."""
    issuer = urlsplit(auth.oidc_issuer)
    if issuer.scheme not in ("https", "http") or not issuer.hostname:
        raise OidcConfigError(
            f"[auth] oidc_issuer must be an https:// URL, not {auth.oidc_issuer!r}"
        )
    if issuer.query or issuer.fragment:
        raise OidcConfigError(
            f"[auth] oidc_issuer must not have a query or fragment: {auth.oidc_issuer!r}"
        )
    if issuer.scheme == "http" and not is_loopback_host(issuer.hostname):
        raise OidcConfigError(
            f"[auth] oidc_issuer {auth.oidc_issuer} is http:// on a host that is not this "
            "machine: tokens and the client secret would cross the network in clear "
            "(use https://; http:// is accepted only for a loopback issuer)"
        )
    path = auth.oidc_callback_path
    if not path.startswith("/") or path.startswith("//") or path in (LOGIN_PATH, LOGOUT_PATH):
        raise OidcConfigError(
            f"[auth] oidc_callback_path must be a path such as /oauth2callback, not {path!r}"
        )
    trusted_networks(auth.trusted_proxies)


def trusted_networks(entries: list[str]) -> tuple[Network, ...]:
    """``[auth] trusted_proxies`` as networks (a bare address is a /32 or /128)."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise OidcConfigError(
                f"[auth] trusted_proxies: {entry!r} is not an IP address or CIDR range"
            ) from exc
    return tuple(networks)


def discovery_url(issuer: str) -> str:
    return f"{issuer.rstrip('/')}/.well-known/openid-configuration"


@dataclass(slots=True)
class OidcRuntime:
    """What the routes need, built once per app from its settings."""

    auth: AuthSettings
    client: StarletteOAuth2App | None
    trusted: tuple[Network, ...]
    base_url: str | None = None  # [api] base_url: the external URL, when configured
    discovery_checked: bool = False


def build_runtime(settings: Settings) -> OidcRuntime:
    auth = settings.auth
    check_settings(auth)
    client: StarletteOAuth2App | None = None
    if auth.oidc_configured and auth.oidc_client_secret is not None:
        client = OAuth().register(
            name="oidc",
            client_id=auth.oidc_client_id,
            client_secret=auth.oidc_client_secret.get_secret_value(),
            server_metadata_url=discovery_url(auth.oidc_issuer),
            client_kwargs={"scope": SCOPES, "code_challenge_method": "S256", "timeout": 10.0},
        )
    return OidcRuntime(
        auth=auth,
        client=client,
        trusted=trusted_networks(auth.trusted_proxies),
        base_url=settings.api.base_url.rstrip("/") if settings.api.base_url else None,
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Check the settings (raises :class:`OidcConfigError`) and add the sign-in routes."""
    app.state.oidc = build_runtime(settings)
    path = settings.auth.oidc_callback_path
    app.include_router(router if path == DEFAULT_CALLBACK_PATH else build_router(path))


def _runtime(request: Request) -> OidcRuntime:
    runtime: OidcRuntime | None = getattr(request.app.state, "oidc", None)
    if runtime is None:  # an app that included the router without install()
        settings: Settings | None = getattr(request.app.state, "settings", None)
        runtime = request.app.state.oidc = build_runtime(settings or get_settings())
    return runtime


async def _metadata(runtime: OidcRuntime) -> dict[str, Any]:
    """The provider's discovery document; its issuer must be the configured one."""
    assert runtime.client is not None
    metadata: dict[str, Any] = await runtime.client.load_server_metadata()
    if not runtime.discovery_checked:
        found = str(metadata.get("issuer", ""))
        if found.rstrip("/") != runtime.auth.oidc_issuer.rstrip("/"):
            runtime.client.server_metadata.pop("_loaded_at", None)  # fetch again next time
            raise ProviderError(
                f"discovery at {discovery_url(runtime.auth.oidc_issuer)} names issuer "
                f"{found!r}, not the configured {runtime.auth.oidc_issuer!r}"
            )
        runtime.discovery_checked = True
    return metadata


def _issuer_values(issuer: str) -> list[str]:
    values = [issuer]
    if issuer.rstrip("/") == GOOGLE_ISSUER:
        values.append("accounts.google.com")  # Google documents both forms of its iss
    return values


def _claims_options(runtime: OidcRuntime, issuer: str) -> dict[str, dict[str, Any]]:
    """Fresh each time (Authlib pops keys from it)."""
    return {
        "iss": {"essential": True, "values": _issuer_values(issuer)},
        "aud": {"essential": True, "value": runtime.auth.oidc_client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }


# ------------------------------------------------------------------ request helpers


def safe_next(value: str | None, callback_path: str = DEFAULT_CALLBACK_PATH) -> str:
    """``value`` when it is a path on this site, else ``/`` (no open redirect)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    if parts.path in (LOGIN_PATH, LOGOUT_PATH, callback_path):
        return "/"
    return value


def _peer_trusted(request: Request, trusted: tuple[Network, ...]) -> bool:
    if not trusted or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in trusted)


def _last_value(header: str | None) -> str | None:
    """The value the nearest proxy (the trusted one) set: the last of a list."""
    if not header:
        return None
    value = header.rsplit(",", 1)[-1].strip()
    return value or None


def external_base_url(request: Request, trusted: tuple[Network, ...]) -> str:
    """``scheme://host`` as the browser sees it; forwarded headers only from a trusted proxy."""
    scheme = request.url.scheme
    host = request.headers.get("host") or request.url.netloc
    if _peer_trusted(request, trusted):
        proto = (_last_value(request.headers.get("x-forwarded-proto")) or "").lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = _last_value(request.headers.get("x-forwarded-host"))
        if forwarded_host and _HOST.fullmatch(forwarded_host):
            host = forwarded_host
    return f"{scheme}://{host}"


def client_ip(request: Request, trusted: tuple[Network, ...]) -> str | None:
    """The caller's address: the peer, or what a trusted proxy says in X-Forwarded-For."""
    if request.client is None:
        return None
    if _peer_trusted(request, trusted):
        forwarded = _last_value(request.headers.get("x-forwarded-for"))
        if forwarded:
            return forwarded[:64]
    return request.client.host


async def _form_field(request: Request, name: str) -> str | None:
    """One field of an ``application/x-www-form-urlencoded`` body (no multipart needed)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None
    values = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).get(name)
    return values[0] if values else None


def _message(
    request: Request,
    status_code: int,
    title: str,
    message: str,
    *,
    link_href: str | None = None,
    link_text: str = "",
) -> Response:
    return render(
        request,
        "message.html",
        {
            "title": title,
            "message": message,
            "alert": status_code >= 400,
            "link_href": link_href,
            "link_text": link_text,
        },
        status_code=status_code,
    )


def _provider_unreachable(request: Request, exc: Exception) -> Response:
    log.warning("identity provider unavailable: %s", exc)
    return _message(
        request,
        502,
        "The identity provider cannot be reached",
        f"Signing in needs the identity provider, which did not answer as expected ({exc}). "
        "Try again in a moment.",
        link_href=LOGIN_PATH,
        link_text="Try again",
    )


# -------------------------------------------------------------------------- routes


def build_router(callback_path: str = DEFAULT_CALLBACK_PATH) -> APIRouter:
    """The sign-in routes, the callback at ``callback_path``."""
    api = APIRouter(include_in_schema=False)
    api.add_api_route(LOGIN_PATH, login, methods=["GET"])
    api.add_api_route(callback_path, callback, methods=["GET"])
    api.add_api_route(LOGOUT_PATH, logout, methods=["POST"])
    api.add_api_route(LOGOUT_PATH, signed_out, methods=["GET"])
    return api


async def login(request: Request, next: str = "/", switch: bool = False) -> Response:
    """Off to the identity provider (``switch``: let the user pick another account)."""
    runtime = _runtime(request)
    target = safe_next(next, runtime.auth.oidc_callback_path)
    if runtime.auth.mode == "none":
        return _message(
            request,
            200,
            "Authentication is off",
            'This server runs with [auth] mode = "none": everyone is let in as admin.',
            link_href=target,
            link_text="Continue",
        )
    if runtime.client is None:
        return _message(
            request,
            200,
            "Sign-in is not configured",
            "No identity provider is configured on this server, so there is no sign-in: "
            "requests from this machine are let in as admin, others are refused. "
            "Set [auth] oidc_client_id and oidc_client_secret to turn Google sign-in on.",
            link_href=target,
            link_text="Continue",
        )
    if not switch and sessions.session_user(request, runtime.auth) is not None:
        return RedirectResponse(target, status_code=303)
    try:
        metadata = await _metadata(runtime)
    except _UNREACHABLE as exc:
        return _provider_unreachable(request, exc)
    extra: dict[str, str] = {}
    if switch:
        google = runtime.auth.oidc_issuer.rstrip("/") == GOOGLE_ISSUER
        supported = metadata.get("prompt_values_supported") or []
        extra["prompt"] = "select_account" if google or "select_account" in supported else "login"
    request.session[_NEXT_KEY] = target
    # The configured external URL wins: behind an Ingress the request says http:// and an
    # internal host, and the provider accepts only the registered https:// redirect URI.
    base = runtime.base_url or external_base_url(request, runtime.trusted)
    redirect_uri = base + runtime.auth.oidc_callback_path
    response: Response = await runtime.client.authorize_redirect(request, redirect_uri, **extra)
    return response


@dataclass(frozen=True, slots=True)
class _Outcome:
    role: Role | None
    reason: str


def _record_outcome(
    request: Request, *, email: str, name: str, admission: roles.Admission, ip: str | None
) -> _Outcome:
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
    return _Outcome(role, reason)


def _record_failure(request: Request, *, detail: str, status_code: int, ip: str | None) -> None:
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


async def callback(request: Request) -> Response:
    """The provider sends the browser back here with a code: verify, admit, sign in."""
    runtime = _runtime(request)
    if runtime.client is None:
        return _message(request, 404, "Sign-in is not configured", "There is nothing here.")
    ip = client_ip(request, runtime.trusted)
    again = f"{LOGIN_PATH}?{urlencode({'next': request.session.get(_NEXT_KEY, '/')})}"

    async def refuse(status_code: int, title: str, message: str, detail: str) -> Response:
        log.warning("sign-in refused from %s: %s", ip, detail)
        await run_in_threadpool(
            _record_failure, request, detail=detail, status_code=status_code, ip=ip
        )
        return _message(
            request, status_code, title, message, link_href=again, link_text="Sign in again"
        )

    params = request.query_params
    if params.get("error"):
        error = params["error"]
        description = params.get("error_description") or ""
        return await refuse(
            403 if error == "access_denied" else 400,
            "Sign-in did not complete",
            f"The identity provider ended the sign-in: {error}"
            + (f" ({description})" if description else "")
            + ".",
            f"provider error {error}: {description}",
        )
    try:
        metadata = await _metadata(runtime)
    except _UNREACHABLE as exc:
        return _provider_unreachable(request, exc)
    issuer = str(metadata["issuer"])
    if "iss" in params and params["iss"] != issuer:
        return await refuse(
            400,
            "Sign-in failed",
            "The answer came from another identity provider than the one this server uses.",
            f"callback iss {params['iss']!r} is not {issuer!r} (RFC 9207)",
        )
    next_path = safe_next(request.session.get(_NEXT_KEY), runtime.auth.oidc_callback_path)
    try:
        token = await runtime.client.authorize_access_token(
            request,
            claims_options=_claims_options(runtime, issuer),
            leeway=LEEWAY_SECONDS,
        )
    except MismatchingStateError:
        return await refuse(
            400,
            "This sign-in link is not valid",
            "It was already used, has expired, or was started in another browser. "
            "Start again from the sign-in page.",
            "unknown or replayed state",
        )
    except OAuthError as exc:
        return await refuse(
            400,
            "Sign-in failed",
            f"The identity provider refused to complete the sign-in ({exc.error}: "
            f"{exc.description}).",
            f"token endpoint refused: {exc.error}: {exc.description}",
        )
    except _HTTP_ERRORS as exc:
        return _provider_unreachable(request, exc)
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        return await refuse(
            403,
            "Sign-in refused",
            "The identity provider's answer failed verification, so nobody is signed in "
            f"({type(exc).__name__}: {exc}).",
            f"ID token rejected: {type(exc).__name__}: {exc}",
        )
    claims = token.get("userinfo")
    if not claims:
        return await refuse(
            400,
            "Sign-in failed",
            "The identity provider sent no ID token.",
            "no ID token in the token response",
        )
    email = str(claims.get("email") or "").strip().lower()
    if not email:
        return await refuse(
            403,
            "Sign-in refused",
            "The identity provider did not tell which email address signed in.",
            "no email claim in the ID token",
        )
    hosted_domain = claims.get("hd")
    hosted_domain = str(hosted_domain) if hosted_domain else None
    name = str(claims.get("name") or email)
    admission = roles.admit(
        runtime.auth,
        email=email,
        email_verified=claims.get("email_verified") in (True, "true"),
        hosted_domain=hosted_domain,
    )
    outcome = await run_in_threadpool(
        _record_outcome, request, email=email, name=name, admission=admission, ip=ip
    )
    if outcome.role is None:
        log.info("sign-in refused for %s from %s: %s", email, ip, outcome.reason)
        sessions.sign_out(request)
        return render(
            request,
            "no_access.html",
            {
                "title": "No access",
                "email": email,
                "reason": outcome.reason,
                "switch_url": f"{LOGIN_PATH}?switch=1",
            },
            status_code=403,
        )
    log.info("%s signed in from %s as %s", email, ip, outcome.role)
    sessions.sign_in(
        request, email=email, name=name, role=outcome.role, hosted_domain=hosted_domain
    )
    return RedirectResponse(next_path, status_code=303)


def _record_sign_out(request: Request, user: sessions.SessionUser, ip: str | None) -> None:
    with request.app.state.session_factory() as db:
        audit.record(
            db, actor=user.email, action="sign-out", role=user.role, status_code=303, ip=ip
        )
        db.commit()


async def logout(request: Request) -> Response:
    """End the session; the session's CSRF token must come with the request."""
    runtime = _runtime(request)
    user = sessions.session_user(request, None)
    if user is not None:
        sent = request.headers.get(sessions.CSRF_HEADER) or await _form_field(
            request, sessions.CSRF_FORM_FIELD
        )
        if not sent or not secrets.compare_digest(sent, user.csrf_token):
            return _message(
                request,
                403,
                "Sign-out refused",
                "The request did not carry this session's CSRF token, so it may not come "
                "from ketch's own page. Use the Sign out button.",
                link_href=LOGOUT_PATH,
                link_text="Sign out",
            )
        await run_in_threadpool(
            _record_sign_out, request, user, client_ip(request, runtime.trusted)
        )
        log.info("%s signed out", user.email)
    sessions.sign_out(request)
    return RedirectResponse(LOGOUT_PATH, status_code=303)


async def signed_out(request: Request) -> Response:
    """The signed-out page (or, with a session still open, a sign-out button)."""
    user = sessions.session_user(request, _runtime(request).auth)
    return render(
        request,
        "signed_out.html",
        {"title": "Signed out" if user is None else "Sign out", "email": user and user.email},
        csrf_token=user.csrf_token if user is not None else None,
    )


router = build_router(DEFAULT_CALLBACK_PATH)
"""The sign-in routes at the default callback path (:func:`install` picks the configured one)."""
