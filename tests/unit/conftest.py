"""Fixtures shared by the UI page tests: ``web`` (SQLite) and ``web_both`` (SQLite and
PostgreSQL), an app signed in per role (see tests/unit/test_web_pages.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.unit.test_web_pages import Web, _web


@pytest.fixture
def web(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    yield from _web(sqlite_engine, monkeypatch)


@pytest.fixture
def web_both(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Web]:
    """On SQLite and on PostgreSQL."""
    yield from _web(engine, monkeypatch)
