"""``GET /variables``: variables (sensitive values as ``***``, exactly as the REST API
shows them: the page renders the API's own responses), which sync source owns each key,
the sync sources' status, and forms to set or delete a variable (op).

A key a sync source owns is read-only here: the next sync would overwrite an edit, so
the page says where to change it instead of offering a form.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from ketch.api.rest.common import SettingsDep
from ketch.api.rest.variable_sync import get_sync_status
from ketch.api.rest.variables import list_variables
from ketch.web import access
from ketch.web.common import PrincipalDep, SessionDep, page, refused

router = APIRouter(include_in_schema=False)

API = "/api/v1/variables"
SHOWN = 500


@router.get("/variables", response_class=HTMLResponse)
def variables_page(
    request: Request, principal: PrincipalDep, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    if not access.may_read(principal, API):
        return refused(request, principal, "Variables", API)
    found = list_variables(session, settings, limit=SHOWN, offset=0)
    return page(
        request,
        principal,
        "variables.html",
        {
            "title": "Variables",
            "variables": found.variables,
            "total": found.total_entries,
            "shown": SHOWN,
            "sources": get_sync_status(session, settings).sources,
            "may_write": access.may_write(principal, API + "/x"),
            "api": API,
        },
    )
