"""``GET /static/...``: the UI's stylesheet, scripts and vendored htmx (package data).

Public on purpose: these files hold no data and no secret (the same for every visitor),
and the sign-in and refusal pages need the stylesheet before anyone is signed in. A
route (not a mounted app) so the route-access test sees it and states who may call it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)

_files = StaticFiles(packages=[("ketch.web", "static")])


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    if response.status_code == 200:
        # Revalidated each time (a cheap 304 by ETag), so an upgrade shows at once.
        response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
