"""Test clients for the web app as a local user reaches it.

With no identity provider configured, ketch lets in requests from this machine that
carry a loopback ``Host`` (as the local admin). Starlette's TestClient calls itself
``testclient`` at ``testserver``; these clients present themselves as 127.0.0.1 so
the tests exercise the same door a local user goes through.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

LOOPBACK_BASE_URL = "http://127.0.0.1"


def local_client(app: Any, **kwargs: Any) -> TestClient:
    """A client that reaches ``app`` from loopback, as ``ketch standalone``'s user does."""
    kwargs.setdefault("base_url", LOOPBACK_BASE_URL)
    kwargs.setdefault("client", ("127.0.0.1", 50000))
    return TestClient(app, **kwargs)


def remote_client(app: Any, **kwargs: Any) -> TestClient:
    """A client from another machine (no loopback admin), for authentication tests."""
    kwargs.setdefault("base_url", "http://ketch.example.com")
    kwargs.setdefault("client", ("203.0.113.7", 50000))
    return TestClient(app, **kwargs)
