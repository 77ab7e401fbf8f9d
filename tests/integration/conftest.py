"""Fixtures of the integration tests: moto (AWS Secrets Manager) in server mode."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto_server import DUMMY_CREDENTIALS, MotoServer, start_moto


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_session: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean moto server; boto3 in this process gets dummy credentials and no retries."""
    moto_session.reset()
    for key, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return moto_session
