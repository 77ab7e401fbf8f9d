"""API tokens (admin): create (the secret is in the answer, once), list, revoke."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from ketch.api.rest.common import RowId, SessionDep, error_responses
from ketch.auth import api_tokens
from ketch.auth.principal import actor_name
from ketch.config import Role
from ketch.db.models import ApiToken

router = APIRouter(prefix="/tokens", tags=["Token"])


class TokenCreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=250)
    role: Role
    expires_in_days: int | None = Field(
        default=90, ge=1, le=36500, description="Lifetime in days; null: never expires."
    )
    scopes: list[str] = Field(default=[], description="Extra scopes, e.g. `metrics`.")


class TokenResponse(BaseModel):
    id: int
    name: str
    role: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenResponse:
        return cls(
            id=token.id,
            name=token.name,
            role=token.role,
            scopes=list(token.scopes or []),
            created_at=token.created_at,
            created_by=token.created_by,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


class CreatedTokenResponse(TokenResponse):
    token: str = Field(description="The secret: shown once, never stored in clear.")


class TokenCollectionResponse(BaseModel):
    tokens: list[TokenResponse]
    total_entries: int


@router.get("")
def list_tokens(session: SessionDep) -> TokenCollectionResponse:
    tokens = api_tokens.list_tokens(session)
    return TokenCollectionResponse(
        tokens=[TokenResponse.of(t) for t in tokens], total_entries=len(tokens)
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400))
def create_token(
    body: TokenCreateBody, request: Request, session: SessionDep
) -> CreatedTokenResponse:
    expires = None if body.expires_in_days is None else timedelta(days=body.expires_in_days)
    token, secret = api_tokens.create_token(
        session,
        name=body.name,
        role=body.role,
        expires_in=expires,
        scopes=body.scopes,
        created_by=actor_name(request),
    )
    session.commit()
    return CreatedTokenResponse(**TokenResponse.of(token).model_dump(), token=secret)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
)
def revoke_token(token_id: RowId, request: Request, session: SessionDep) -> Response:
    """Revoke: the next request with this token gets 401. 404 for an unknown id."""
    api_tokens.revoke_token(session, token_id, revoked_by=actor_name(request))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
