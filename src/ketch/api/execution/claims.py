"""The dependencies every execution route shares: the database session, the settings,
and the claims of the caller's try token (verified; or verified and the try still
alive). A try token is the only credential the execution API accepts."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from ketch.api.deps import get_session, settings_dep
from ketch.api.execution.liveness import ended, is_live, liveness_row
from ketch.auth.try_tokens import InvalidTryToken, TryClaims, verify_try_token
from ketch.config import Settings

_bearer = HTTPBearer(auto_error=False)
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]


def try_claims(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TryClaims:
    """The verified claims of the bearer token; 401 for anything else."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return verify_try_token(settings, credentials.credentials)
    except InvalidTryToken as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc


ClaimsDep = Annotated[TryClaims, Depends(try_claims)]


def live_try_claims(claims: ClaimsDep, session: SessionDep) -> TryClaims:
    """The verified claims of a try that has not ended; 401 once it has."""
    ti = liveness_row(session, claims)
    if not is_live(ti, claims):
        raise ended(ti, claims)
    return claims


LiveClaimsDep = Annotated[TryClaims, Depends(live_try_claims)]
