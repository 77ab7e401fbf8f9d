"""What every page handler needs: the signed-in principal, a database session, a page
render that carries the principal, and a 404 page for ids that name nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.responses import HTMLResponse

from ketch.api.deps import get_session
from ketch.auth.principal import Principal, page_principal
from ketch.web.templates import render

PrincipalDep = Annotated[Principal, Depends(page_principal)]
SessionDep = Annotated[Session, Depends(get_session)]


def page(
    request: Request,
    principal: Principal,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """A page of a signed-in principal (the header shows who, and how to sign out)."""
    return render(
        request,
        template,
        {"principal": principal, **context},
        status_code=status_code,
        csrf_token=principal.csrf_token,
    )


def not_found(request: Request, principal: Principal, message: str) -> HTMLResponse:
    return page(
        request,
        principal,
        "message.html",
        {
            "title": "Not found",
            "message": message,
            "alert": True,
            "link_href": "/dags",
            "link_text": "All DAGs",
        },
        status_code=404,
    )


def refused(request: Request, principal: Principal, what: str, api_path: str) -> HTMLResponse:
    """403 page for a page whose API resource the principal's role may not read."""
    from ketch.auth import policy

    needed = policy.required_role("GET", api_path)
    return page(
        request,
        principal,
        "message.html",
        {
            "title": "Not allowed",
            "message": f"{what} need the {needed} role; you are signed in as {principal.role}.",
            "alert": True,
            "link_href": "/dags",
            "link_text": "All DAGs",
        },
        status_code=403,
    )
