"""``GET /api/v1/variables/syncStatus`` and ``/metrics``, after real syncs from a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from ketch.api.app import create_app
from ketch.config import get_settings
from ketch.variables.sources.file import FileVariableSource
from ketch.variables.sync import SyncService
from tests.support.web import local_client

API = "/api/v1"


def test_sync_status_and_metrics(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"a": "1", "b": "2"}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"a": ')
    never = tmp_path / "never.json"
    monkeypatch.setenv(
        "KETCH__VARIABLES__SYNC_SOURCES",
        json.dumps([{"kind": "file", "path": str(p)} for p in (good, broken, never)]),
    )
    get_settings.cache_clear()
    settings = get_settings()
    SyncService(
        settings,
        engine,
        [(FileVariableSource(good), True), (FileVariableSource(broken), True)],
    ).run_once()
    with local_client(create_app(settings)) as client:
        answer = client.get(f"{API}/variables/syncStatus")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        by_id = {s["source_id"]: s for s in body["sources"]}
        assert body["total_entries"] == 3
        assert by_id[f"file:{good}"]["ok"] and by_id[f"file:{good}"]["managed_keys"] == 2
        assert by_id[f"file:{good}"]["last_success_at"] is not None
        assert not by_id[f"file:{broken}"]["ok"]
        assert "not valid JSON" in by_id[f"file:{broken}"]["last_error"]
        assert by_id[f"file:{never}"]["last_attempt_at"] is None
        assert all(s["configured"] for s in body["sources"])
        # syncStatus is not taken for a variable key
        assert client.get(f"{API}/variables/a").json()["source"] == f"file:{good}"

        text = client.get("/metrics").text
        assert f'ketch_variable_sync_managed_keys{{source="file:{good}"}} 2.0' in text
        assert f'ketch_variable_sync_consecutive_failures{{source="file:{broken}"}} 1.0' in text
        assert "ketch_variable_sync_last_success_timestamp_seconds" in text
        assert f'ketch_variable_sync_runs_total{{result="changed",source="file:{good}"}}' in text
        assert "ketch_variable_sync_errors_total" in text
