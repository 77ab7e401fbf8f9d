"""API tokens for automation and the CLI: created by an admin, sent as ``Bearer``.

A token is ``ketch_`` plus 256 random bits. Only its SHA-256 is stored, so the
database (or a backup of it) cannot be used to call the API; the secret is shown
once, at creation. ``last_used_at`` is written at most once a minute per token so
a busy CI job does not turn every read into a write.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ketch.auth.roles import ROLES
from ketch.db.models import ApiToken

PREFIX = "ketch_"
KNOWN_SCOPES = frozenset({"metrics"})
_LAST_USED_RESOLUTION = timedelta(seconds=60)


class InvalidApiToken(Exception):
    """The bearer token is unknown, expired or revoked (the message says which)."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_token(secret: str) -> bool:
    return secret.startswith(PREFIX)


def create_token(
    session: Session,
    *,
    name: str,
    role: str,
    expires_in: timedelta | None,
    scopes: Sequence[str] = (),
    created_by: str,
) -> tuple[ApiToken, str]:
    """A new token and its secret, which is not stored and cannot be shown again."""
    from ketch.operations import InvalidRequest

    if role not in ROLES:
        raise InvalidRequest("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
    unknown = set(scopes) - KNOWN_SCOPES
    if unknown:
        raise InvalidRequest(
            "scopes", f"unknown scope(s) {sorted(unknown)}; known: {sorted(KNOWN_SCOPES)}"
        )
    if not name.strip():
        raise InvalidRequest("name", "a token needs a name")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidRequest("expires_in", "a token's lifetime must be positive")
    now = datetime.now(UTC)
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name.strip(),
        secret_hash=_hash(secret),
        role=role,
        scopes=sorted(set(scopes)),
        created_at=now,
        created_by=created_by,
        expires_at=None if expires_in is None else now + expires_in,
    )
    session.add(token)
    session.flush()
    return token, secret


def verify_token(session: Session, secret: str, *, now: datetime | None = None) -> ApiToken:
    """The live token with this secret; :class:`InvalidApiToken` says why not."""
    now = now or datetime.now(UTC)
    token = session.scalar(select(ApiToken).where(ApiToken.secret_hash == _hash(secret)))
    if token is None:
        raise InvalidApiToken("unknown API token")
    if token.revoked_at is not None:
        raise InvalidApiToken(f"API token {token.name!r} was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise InvalidApiToken(f"API token {token.name!r} expired")
    if token.last_used_at is None or now - token.last_used_at >= _LAST_USED_RESOLUTION:
        session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        session.commit()
    return token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int, *, revoked_by: str) -> ApiToken:
    """Revoke at once (the next request with it gets 401); revoking twice is a no-op."""
    from ketch.operations import NotFound

    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"API token {token_id} does not exist")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
        token.revoked_by = revoked_by
    return token
