"""The web app's start-up heap is frozen out of the garbage collector's full passes
(ketch.api.heap): what exists when the server starts is not walked by later passes, and
what the first requests would build (templates) is built before that."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from ketch.api import heap
from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.web.templates import templates
from tests.support.web import local_client


class Marker:
    """An object alive before the server starts (a stand-in for imported modules)."""


@pytest.fixture
def fresh_heap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a new process: nothing frozen yet; unfrozen again afterwards, so this test
    leaves the test process's collector as it found it."""
    gc.unfreeze()
    monkeypatch.setattr(heap, "_frozen", False)
    yield
    gc.unfreeze()


def test_start_up_freezes_the_heap_once(engine: Engine, fresh_heap: None) -> None:
    before = Marker()
    assert any(o is before for o in gc.get_objects())
    templates.env.cache.clear()  # type: ignore[union-attr]
    with local_client(create_app(get_settings())) as client:
        assert client.get("/api/v1/health").status_code == 200
        assert gc.get_freeze_count() > 0
        assert not any(o is before for o in gc.get_objects())  # not walked any more
        assert len(templates.env.cache) >= len(templates.env.list_templates(["html"]))  # type: ignore[arg-type]
        after = Marker()
        assert any(o is after for o in gc.get_objects())  # later objects: collected as ever
    between = Marker()
    with local_client(create_app(get_settings())):  # a second app in the same process
        assert any(o is between for o in gc.get_objects())  # froze nothing more
