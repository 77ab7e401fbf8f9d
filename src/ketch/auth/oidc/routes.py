"""The sign-in routes: ``GET /login`` (off to the provider), the callback (verify the ID
token, admit the identity, start the session), ``POST /logout`` (with the session's CSRF
token) and ``GET /logout`` (the signed-out page), and :func:`install`, which adds them to
an app with its runtime. A refused sign-in answers a page saying why, never a redirect
back to the provider."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import parse_qs, urlencode

from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from fastapi import APIRouter, FastAPI, Request
from joserfc.errors import JoseError
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from ketch.auth import roles, sessions
from ketch.auth.oidc.errors import HTTP_ERRORS, UNREACHABLE
from ketch.auth.oidc.paths import DEFAULT_CALLBACK_PATH, LOGIN_PATH, LOGOUT_PATH, safe_next
from ketch.auth.oidc.provider import (
    GOOGLE_ISSUER,
    LEEWAY_SECONDS,
    build_runtime,
    claims_options,
    provider_metadata,
    runtime_of,
)
from ketch.auth.oidc.proxies import client_ip, external_base_url
from ketch.auth.oidc.records import record_failure, record_outcome, record_sign_out
from ketch.config import Settings
from ketch.web.templates import render

log = logging.getLogger("ketch.auth")

_NEXT_KEY = "login_next"
_MAX_FORM_BYTES = 64 * 1024


def install(app: FastAPI, settings: Settings) -> None:
    """Check the settings (raises :class:`~ketch.auth.oidc.errors.OidcConfigError`) and add
    the sign-in routes."""
    app.state.oidc = build_runtime(settings)
    path = settings.auth.oidc_callback_path
    app.include_router(router if path == DEFAULT_CALLBACK_PATH else build_router(path))


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
    runtime = runtime_of(request)
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
        metadata = await provider_metadata(runtime)
    except UNREACHABLE as exc:
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


async def callback(request: Request) -> Response:
    """The provider sends the browser back here with a code: verify, admit, sign in."""
    runtime = runtime_of(request)
    if runtime.client is None:
        return _message(request, 404, "Sign-in is not configured", "There is nothing here.")
    ip = client_ip(request, runtime.trusted)
    again = f"{LOGIN_PATH}?{urlencode({'next': request.session.get(_NEXT_KEY, '/')})}"

    async def refuse(status_code: int, title: str, message: str, detail: str) -> Response:
        log.warning("sign-in refused from %s: %s", ip, detail)
        await run_in_threadpool(
            record_failure, request, detail=detail, status_code=status_code, ip=ip
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
        metadata = await provider_metadata(runtime)
    except UNREACHABLE as exc:
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
            claims_options=claims_options(runtime, issuer),
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
    except HTTP_ERRORS as exc:
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
        record_outcome, request, email=email, name=name, admission=admission, ip=ip
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


async def logout(request: Request) -> Response:
    """End the session; the session's CSRF token must come with the request."""
    runtime = runtime_of(request)
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
        await run_in_threadpool(record_sign_out, request, user, client_ip(request, runtime.trusted))
        log.info("%s signed out", user.email)
    sessions.sign_out(request)
    return RedirectResponse(LOGOUT_PATH, status_code=303)


async def signed_out(request: Request) -> Response:
    """The signed-out page (or, with a session still open, a sign-out button)."""
    user = sessions.session_user(request, runtime_of(request).auth)
    return render(
        request,
        "signed_out.html",
        {"title": "Signed out" if user is None else "Sign out", "email": user and user.email},
        csrf_token=user.csrf_token if user is not None else None,
    )


router = build_router(DEFAULT_CALLBACK_PATH)
"""The sign-in routes at the default callback path (:func:`install` picks the configured one)."""
