"""Put authentication on a web app: sessions, the audit trail, docs behind sign-in,
and how a refusal looks (401 JSON for the API, a redirect to sign-in for a page)."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ketch.auth.audit import AuditMiddleware
from ketch.auth.principal import Forbidden, NotAuthenticated, authorize
from ketch.auth.sessions import session_middleware
from ketch.config import Settings

_API_PREFIXES = ("/api/", "/metrics", "/openapi.json", "/execution")


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Call after the routers are included (the docs routes are added here)."""
    _add_docs_routes(app)
    app.add_exception_handler(NotAuthenticated, _not_authenticated)
    app.add_exception_handler(Forbidden, _forbidden)
    # Outermost last: the audit middleware sees the answer the client gets, and the
    # session layer runs inside it so a refused request is still recorded.
    app.add_middleware(_SessionLayer, settings=settings)
    app.add_middleware(AuditMiddleware, skip_paths=_sign_in_paths(settings))


class _SessionLayer:
    """``SessionMiddleware`` built from the settings (add_middleware passes keywords)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self._inner = session_middleware(app, settings)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._inner(scope, receive, send)


def _sign_in_paths(settings: Settings) -> frozenset[str]:
    return frozenset({"/login", "/logout", settings.auth.oidc_callback_path})


def _add_docs_routes(app: FastAPI) -> None:
    """``/openapi.json`` and ``/docs`` for signed-in viewers only (FastAPI's are off)."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorize)])
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API")


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith(_API_PREFIXES) and request.method in ("GET", "HEAD")


async def _not_authenticated(request: Request, exc: Exception) -> Response:
    if _wants_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
    return JSONResponse(
        {"detail": f"not authenticated: {exc}"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _forbidden(request: Request, exc: Exception) -> Response:
    if _wants_page(request):
        return HTMLResponse(
            f"<!doctype html><title>Forbidden</title><h1>Forbidden</h1><p>{html.escape(str(exc))}</p>",
            status_code=403,
        )
    return JSONResponse({"detail": f"forbidden: {exc}"}, status_code=403)
