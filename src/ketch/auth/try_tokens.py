"""Per-try tokens: a task try proves which try it is, and nothing more.

Workers never get database credentials. The scheduler signs a short JWT naming
exactly one try (dag, run, task, try number, task instance id) and hands it to
the try; the execution API accepts calls only about that try. HS256 with a shared
secret keeps verification a cheap local computation in the web process.

The secret comes from ``[api_auth] jwt_secret``; when unset (the embedded default),
a random one is generated once into ``$KETCH_HOME/jwt_secret`` so the scheduler and
the web process on one machine agree without any configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from ketch.auth.secret_file import read_or_create_secret
from ketch.config import Settings
from ketch.executors.base import TryKey

ALGORITHM = "HS256"
SUBJECT = "try"
_REQUIRED_CLAIMS = ("sub", "exp", "iat", "dag_id", "run_id", "task_id", "try_number", "ti_id")


class InvalidTryToken(Exception):
    """The token is missing, malformed, forged, expired or not a try token."""


@dataclass(frozen=True, slots=True)
class TryClaims:
    """What a verified try token says about its bearer."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int
    ti_id: int
    exp: int
    iat: int
    map_index: int = -1

    @property
    def key(self) -> TryKey:
        return TryKey(self.dag_id, self.run_id, self.task_id, self.try_number, self.map_index)


def jwt_secret(settings: Settings) -> str:
    """The signing secret: configured, or the machine's generated one."""
    if settings.api_auth.jwt_secret is not None:
        return settings.api_auth.jwt_secret.get_secret_value()
    return read_or_create_secret(settings.home / "jwt_secret")


def sign_try_token(settings: Settings, key: TryKey, ti_id: int) -> str:
    """A token valid for ``jwt_expiration_time`` seconds, for this one try only."""
    now = int(time.time())
    claims = {
        "sub": SUBJECT,
        "dag_id": key.dag_id,
        "run_id": key.run_id,
        "task_id": key.task_id,
        "try_number": key.try_number,
        "ti_id": ti_id,
        "map_index": key.map_index,
        "iat": now,
        "exp": now + settings.api_auth.jwt_expiration_time,
    }
    return jwt.encode(claims, jwt_secret(settings), algorithm=ALGORITHM)


def verify_try_token(settings: Settings, token: str) -> TryClaims:
    """The claims of a valid try token; :class:`InvalidTryToken` says why one is not."""
    try:
        claims = jwt.decode(
            token,
            jwt_secret(settings),
            algorithms=[ALGORITHM],
            options={"require": list(_REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidTryToken("try token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidTryToken("try token signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise InvalidTryToken(f"invalid try token: {exc}") from exc
    if claims["sub"] != SUBJECT:
        raise InvalidTryToken("not a try token")
    try:
        return TryClaims(
            dag_id=str(claims["dag_id"]),
            run_id=str(claims["run_id"]),
            task_id=str(claims["task_id"]),
            try_number=int(claims["try_number"]),
            ti_id=int(claims["ti_id"]),
            exp=int(claims["exp"]),
            iat=int(claims["iat"]),
            map_index=int(claims.get("map_index", -1)),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidTryToken(f"invalid try token claims: {exc}") from exc
