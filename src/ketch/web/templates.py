"""The UI's Jinja2 templates (package data under ``ketch/web/templates``), autoescaped.

Every page renders through :func:`render`, which hands the base layout the signed-in
user's CSRF token for its ``<meta name="csrf-token">`` (scripts send it back as the
``X-CSRF-Token`` header; forms carry it as the ``csrf_token`` field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from ketch.auth.sessions import CSRF_FORM_FIELD, CSRF_HEADER
from ketch.web import access
from ketch.web import format as fmt

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("ketch.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
_FILTERS: dict[str, Any] = {
    # one path segment of a URL: a dag, run or task id may hold any character
    "seg": lambda value: quote(str(value), safe=""),
    "state_key": fmt.state_key,
    "when": fmt.when,
    "iso": fmt.iso,
}
templates.env.filters.update(_FILTERS)
templates.env.globals["duration"] = fmt.duration
templates.env.globals["menu"] = access.menu


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    csrf_token: str | None = None,
) -> HTMLResponse:
    """A page; ``csrf_token`` only on pages of a signed-in session."""
    values: dict[str, Any] = {
        "csrf_token": csrf_token,
        "csrf_field": CSRF_FORM_FIELD,
        "csrf_header": CSRF_HEADER,
        **(context or {}),
    }
    return templates.TemplateResponse(
        request,
        name,
        values,
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )
