"""People who signed in (admin): list them, disable or re-enable an account."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from ketch.api.rest.common import SessionDep, error_responses
from ketch.auth import users
from ketch.auth.principal import actor_name
from ketch.db.models import WebUser

router = APIRouter(prefix="/users", tags=["User"])


class UserResponse(BaseModel):
    email: str
    name: str | None
    role: str | None
    first_sign_in_at: datetime
    last_sign_in_at: datetime
    disabled: bool
    disabled_at: datetime | None
    disabled_by: str | None

    @classmethod
    def of(cls, user: WebUser) -> UserResponse:
        return cls.model_validate(user, from_attributes=True)


class UserCollectionResponse(BaseModel):
    users: list[UserResponse]
    total_entries: int


class UserPatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disabled: bool


@router.get("")
def list_users(session: SessionDep) -> UserCollectionResponse:
    rows = users.list_users(session)
    return UserCollectionResponse(users=[UserResponse.of(u) for u in rows], total_entries=len(rows))


@router.patch("/{email}", responses=error_responses(400, 404))
def patch_user(
    email: str, body: UserPatchBody, request: Request, session: SessionDep
) -> UserResponse:
    """Disable (or re-enable) an account: its sessions end at their next re-check
    (``[auth] session_recheck_interval``) and it cannot sign in again."""
    user = users.set_disabled(session, email, body.disabled, by=actor_name(request))
    session.commit()
    return UserResponse.of(user)
