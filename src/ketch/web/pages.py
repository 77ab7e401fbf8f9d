"""UI pages. Every page needs a principal: an anonymous browser is sent to sign in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse

from ketch.auth.principal import Principal, page_principal
from ketch.web.templates import render

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def home(
    request: Request, principal: Annotated[Principal, Depends(page_principal)]
) -> HTMLResponse:
    """The signed-in landing page: who you are, your role, sign out."""
    return render(
        request,
        "home.html",
        {"title": "Home", "principal": principal},
        csrf_token=principal.csrf_token,
    )
