"""Per-try tokens: valid, expired, forged, malformed, and the shared generated secret."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest

from ketch.auth.try_tokens import (
    InvalidTryToken,
    jwt_secret,
    sign_try_token,
    verify_try_token,
)
from ketch.config import Settings
from ketch.executors.base import TryKey

KEY = TryKey("dag", "run_1", "task", 2)


def test_round_trip_names_the_try(ketch_home: Path) -> None:
    settings = Settings()
    claims = verify_try_token(settings, sign_try_token(settings, KEY, ti_id=7))
    assert claims.key == KEY
    assert claims.ti_id == 7
    assert claims.exp - claims.iat == settings.api_auth.jwt_expiration_time


def test_generated_secret_is_private_and_shared(ketch_home: Path) -> None:
    token = sign_try_token(Settings(), KEY, ti_id=1)
    path = ketch_home / "jwt_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another process reads the same file: simulate with a fresh cache.
    from ketch.auth import secret_file

    secret_file._cache.clear()
    assert verify_try_token(Settings(), token).ti_id == 1
    assert jwt_secret(Settings()) == path.read_text().strip()


def test_configured_secret_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__API_AUTH__JWT_SECRET", "s3cret-" * 8)
    settings = Settings()
    token = sign_try_token(settings, KEY, ti_id=1)
    decoded = jwt.decode(token, "s3cret-" * 8, algorithms=["HS256"])
    assert decoded["sub"] == "try" and decoded["task_id"] == "task"


def test_expired_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH__API_AUTH__JWT_EXPIRATION_TIME", "1")
    settings = Settings()
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 100)
    token = sign_try_token(settings, KEY, ti_id=1)
    monkeypatch.setattr(time, "time", real_time)
    with pytest.raises(InvalidTryToken, match="expired"):
        verify_try_token(settings, token)


def test_forged_token_is_refused() -> None:
    settings = Settings()
    forged = jwt.encode(
        {
            "sub": "try",
            "dag_id": "dag",
            "run_id": "r",
            "task_id": "t",
            "try_number": 1,
            "ti_id": 1,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        "not-the-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    with pytest.raises(InvalidTryToken, match="signature"):
        verify_try_token(settings, forged)


def test_malformed_and_incomplete_tokens_are_refused() -> None:
    settings = Settings()
    with pytest.raises(InvalidTryToken):
        verify_try_token(settings, "not.a.jwt")
    incomplete = jwt.encode({"sub": "try", "exp": int(time.time()) + 60}, jwt_secret(settings))
    with pytest.raises(InvalidTryToken, match=r"iat|dag_id|claim"):
        verify_try_token(settings, incomplete)
    other_subject = jwt.encode(
        {
            "sub": "user",
            "dag_id": "d",
            "run_id": "r",
            "task_id": "t",
            "try_number": 1,
            "ti_id": 1,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        jwt_secret(settings),
    )
    with pytest.raises(InvalidTryToken, match="not a try token"):
        verify_try_token(settings, other_subject)
