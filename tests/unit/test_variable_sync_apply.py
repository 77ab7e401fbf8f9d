"""Applying a source's snapshot: ownership, conflict policy, audit, one transaction, backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ketch.config import Settings, get_settings
from ketch.db.models import Variable, VariableAuditLog
from ketch.variables import crypto
from ketch.variables.sources import Snapshot, SourceError, Unchanged
from ketch.variables.sync import SyncService, apply_snapshot


class ListSource:
    """A source that returns prepared results in turn (the real sources have their own tests)."""

    kind = "test"

    def __init__(self, source_id: str, *results: Snapshot | Unchanged | Exception) -> None:
        self.source_id = source_id
        self.results = list(results)
        self.asked: list[str | None] = []

    def fetch(self, previous_version: str | None) -> Snapshot | Unchanged:
        self.asked.append(previous_version)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def rows(engine: Engine) -> dict[str, tuple[str, str | None, str | None]]:
    """key -> (value, source, source_version)."""
    fernet = crypto.get_fernet(get_settings())
    with Session(engine) as session:
        return {
            v.key: (crypto.decrypt(fernet, v.val), v.source, v.source_version)
            for v in session.scalars(select(Variable))
        }


def audit(engine: Engine) -> list[tuple[str, str, str, str | None]]:
    with Session(engine) as session:
        return [
            (a.key, a.action, a.source, a.version)
            for a in session.scalars(select(VariableAuditLog).order_by(VariableAuditLog.id))
        ]


def set_by_hand(engine: Engine, key: str, value: str) -> None:
    now = datetime.now(UTC)
    fernet = crypto.get_fernet(get_settings())
    with Session(engine) as session, session.begin():
        session.add(
            Variable(key=key, val=crypto.encrypt(fernet, value), created_at=now, updated_at=now)
        )


def settings(**variables: object) -> Settings:
    base = get_settings()
    return base.model_copy(
        update={"variables": base.variables.model_copy(update=variables)}, deep=True
    )


def test_create_update_delete_with_audit(engine: Engine) -> None:
    source = ListSource(
        "src-a",
        Snapshot("v1", {"a": "1", "b": "2"}),
        Snapshot("v2", {"a": "1", "b": "3", "c": "4"}),
        Snapshot("v3", {"c": "4"}),
    )
    service = SyncService(get_settings(), engine, [(source, True)])
    assert service.run_once()[0].managed_keys == 2
    assert rows(engine) == {"a": ("1", "src-a", "v1"), "b": ("2", "src-a", "v1")}
    assert service.run_once()[0].managed_keys == 3
    assert rows(engine) == {
        "a": ("1", "src-a", "v1"),  # unchanged value: keeps the version that set it
        "b": ("3", "src-a", "v2"),
        "c": ("4", "src-a", "v2"),
    }
    status = service.run_once()[0]
    assert status.managed_keys == 1 and status.version == "v3"
    assert rows(engine) == {"c": ("4", "src-a", "v2")}
    assert source.asked == [None, "v1", "v2"]
    assert audit(engine) == [
        ("a", "created", "src-a", "v1"),
        ("b", "created", "src-a", "v1"),
        ("b", "updated", "src-a", "v2"),
        ("c", "created", "src-a", "v2"),
        ("a", "deleted", "src-a", "v3"),
        ("b", "deleted", "src-a", "v3"),
    ]


def test_values_are_encrypted_at_rest_and_flagged_sensitive(sqlite_engine: Engine) -> None:
    service = SyncService(
        get_settings(), sqlite_engine, [(ListSource("s", Snapshot("v1", {"pw": "hunter2"})), True)]
    )
    service.run_once()
    with Session(sqlite_engine) as session:
        [row] = session.scalars(select(Variable))
    assert "hunter2" not in row.val and row.is_sensitive


def test_source_wins_overwrites_a_hand_set_key_and_logs_it(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    set_by_hand(engine, "shared", "manual")
    set_by_hand(engine, "mine", "keep me")
    source = ListSource("src", Snapshot("v1", {"shared": "from-source"}), Snapshot("v2", {}))
    service = SyncService(settings(conflict_policy="source_wins"), engine, [(source, True)])
    with caplog.at_level("WARNING", logger="ketch.variables.sync"):
        service.run_once()
    assert rows(engine) == {"shared": ("from-source", "src", "v1"), "mine": ("keep me", None, None)}
    assert audit(engine) == [("shared", "overwrote_manual", "src", "v1")]
    assert any(
        "set by hand" in r.getMessage() and "shared" in r.getMessage() for r in caplog.records
    )
    assert all("from-source" not in r.getMessage() for r in caplog.records)
    # The source now owns the key: when it disappears from the source, it is deleted.
    service.run_once()
    assert rows(engine) == {"mine": ("keep me", None, None)}


def test_keep_manual_leaves_hand_set_keys(engine: Engine) -> None:
    set_by_hand(engine, "shared", "manual")
    source = ListSource("src", Snapshot("v1", {"shared": "from-source", "new": "n"}))
    [status] = SyncService(
        settings(conflict_policy="keep_manual"), engine, [(source, True)]
    ).run_once()
    assert rows(engine) == {"shared": ("manual", None, None), "new": ("n", "src", "v1")}
    assert status.managed_keys == 1
    assert audit(engine) == [("new", "created", "src", "v1")]


def test_a_source_never_deletes_or_takes_keys_of_another_source(engine: Engine) -> None:
    first = ListSource("first", Snapshot("f1", {"k": "from-first", "only-first": "1"}))
    second = ListSource(
        "second", Snapshot("s1", {"k": "from-second"}), Snapshot("s2", {"other": "x"})
    )
    service = SyncService(get_settings(), engine, [(first, True), (second, True)])
    service.run_once()
    assert rows(engine)["k"] == ("from-first", "first", "f1")
    second_status = SyncService(get_settings(), engine, [(second, True)]).run_once()[0]
    assert second_status.managed_keys == 1
    assert rows(engine) == {
        "k": ("from-first", "first", "f1"),
        "only-first": ("1", "first", "f1"),
        "other": ("x", "second", "s2"),
    }


def test_a_failed_apply_changes_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ListSource(
        "src", Snapshot("v1", {"a": "1", "b": "2"}), Snapshot("v2", {"a": "9", "c": "3"})
    )
    service = SyncService(get_settings(), engine, [(source, True)])
    service.run_once()
    real_encrypt = crypto.encrypt
    calls = []

    def failing_encrypt(fernet: object, value: str) -> str:
        calls.append(value)
        if len(calls) == 2:  # the second write of the change set fails
            raise RuntimeError("disk on fire")
        return real_encrypt(fernet, value)  # type: ignore[arg-type]

    monkeypatch.setattr(crypto, "encrypt", failing_encrypt)
    [status] = service.run_once()
    assert status.consecutive_failures == 1 and "disk on fire" in (status.last_error or "")
    assert status.version == "v1"
    assert rows(engine) == {"a": ("1", "src", "v1"), "b": ("2", "src", "v1")}
    assert [a[3] for a in audit(engine)] == ["v1", "v1"]


def test_errors_back_off_exponentially_and_recover(sqlite_engine: Engine) -> None:
    source = ListSource(
        "src",
        Snapshot("v1", {"a": "1"}),
        SourceError("AccessDeniedException: not allowed", kind="AccessDeniedException"),
        SourceError("ThrottlingException: slow down", kind="ThrottlingException"),
        SourceError("ThrottlingException: slow down", kind="ThrottlingException"),
        Snapshot("v2", {"a": "2"}),
    )
    service = SyncService(
        settings(sync_interval=10.0, sync_max_backoff=25.0), sqlite_engine, [(source, True)]
    )
    service.run_once()
    delays = []
    for expected_failures in (1, 2, 3):
        status = service.run_once()
        assert status[0].consecutive_failures == expected_failures
        assert status[0].version == "v1"  # the last good version stays
        assert status[0].last_success_at is not None and status[0].next_attempt_at is not None
        assert status[0].last_error_at is not None
        delays.append(round((status[0].next_attempt_at - status[0].last_error_at).total_seconds()))
        assert rows(sqlite_engine) == {"a": ("1", "src", "v1")}
    assert delays == [10, 20, 25]
    assert [service.backoff(n) for n in (1, 2, 3, 4)] == [10.0, 20.0, 25.0, 25.0]
    [status] = service.run_once()
    assert source.asked == [None, "v1", "v1", "v1", "v1"]
    assert status.consecutive_failures == 0 and status.last_error is None
    assert rows(sqlite_engine) == {"a": ("2", "src", "v2")}


def test_only_due_sources_are_polled(sqlite_engine: Engine) -> None:
    source = ListSource("src", Snapshot("v1", {"a": "1"}), Unchanged("v1"))
    service = SyncService(settings(sync_interval=3600.0), sqlite_engine, [(source, True)])
    assert len(service.run_once(only_due=True)) == 1
    assert service.run_once(only_due=True) == []  # next poll in an hour
    assert len(service.run_once()) == 1  # an explicit sync (CLI) polls anyway


def test_apply_snapshot_in_callers_transaction(sqlite_engine: Engine) -> None:
    fernet = crypto.get_fernet(get_settings())
    with Session(sqlite_engine) as session:
        result = apply_snapshot(session, fernet, "src", Snapshot("v1", {"a": "1"}))
        assert result.created == 1
        session.rollback()
    assert rows(sqlite_engine) == {}


def test_background_thread_syncs_and_stops(sqlite_engine: Engine) -> None:
    import threading

    done = threading.Event()

    class Once(ListSource):
        def fetch(self, previous_version: str | None) -> Snapshot | Unchanged:
            try:
                return super().fetch(previous_version)
            finally:
                done.set()

    service = SyncService(
        get_settings(), sqlite_engine, [(Once("src", Snapshot("v1", {"a": "1"})), True)]
    )
    service.start()
    try:
        assert done.wait(10)
    finally:
        service.stop()
    assert rows(sqlite_engine) == {"a": ("1", "src", "v1")}


def test_a_snapshot_with_an_invalid_key_is_rejected_whole(engine: Engine) -> None:
    source = ListSource("src", Snapshot("v1", {"ok": "1", "k" * 300: "2"}))
    [status] = SyncService(get_settings(), engine, [(source, True)]).run_once()
    assert not status.ok and "longer than 250" in (status.last_error or "")
    assert rows(engine) == {}


def test_source_settings_from_json_and_their_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from pydantic import ValidationError

    monkeypatch.setenv(
        "KETCH__VARIABLES__SYNC_SOURCES",
        json.dumps(
            [
                {"kind": "aws-secrets-manager", "secret_id": "a/b.json", "region": "eu-west-1"},
                {"kind": "aws-secrets-manager", "tags": {"team": "data"}, "id": "by-tag"},
                {"kind": "file", "path": "/x/variables.json", "sensitive": False},
            ]
        ),
    )
    monkeypatch.setenv("KETCH__VARIABLES__CONFLICT_POLICY", "keep_manual")
    get_settings.cache_clear()
    cfg = get_settings().variables
    assert [s.source_id for s in cfg.sync_sources] == [
        "aws-secrets-manager:a/b.json",
        "by-tag",
        "file:/x/variables.json",
    ]
    assert cfg.conflict_policy == "keep_manual" and cfg.sync_interval == 30
    for bad in (
        [{"kind": "aws-secrets-manager"}],
        [{"kind": "aws-secrets-manager", "secret_id": "a", "name_prefix": "b/"}],
        [{"kind": "s3", "path": "x"}],
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate({"variables": {"sync_sources": bad}})


def test_database_outage_is_a_failure_with_backoff(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    source = ListSource("src", Snapshot("v1", {"a": "1"}), Snapshot("v1", {"a": "1"}))
    service = SyncService(
        settings(sync_interval=10.0, sync_max_backoff=100.0), sqlite_engine, [(source, True)]
    )

    def no_database() -> Session:
        raise OperationalError("SELECT 1", {}, Exception("database is away"))

    working = service._sessions
    monkeypatch.setattr(service, "_sessions", no_database)
    for failures in (1, 2):
        [status] = service.run_once()  # never raises: the sync thread must keep going
        assert not status.ok and status.consecutive_failures == failures
        assert "database is away" in (status.last_error or "")
    assert service.run_once(only_due=True) == []  # backing off
    monkeypatch.setattr(service, "_sessions", working)
    [status] = service.run_once()
    assert status.ok and rows(sqlite_engine) == {"a": ("1", "src", "v1")}


def sensitivity(engine: Engine) -> dict[str, bool]:
    with Session(engine) as session:
        return {v.key: v.is_sensitive for v in session.scalars(select(Variable))}


def test_a_changed_sensitive_setting_reaches_keys_whose_secret_did_not_change(
    engine: Engine,
) -> None:
    snapshot = Snapshot("v1", {"region": "eu-west-1", "pw": "hunter2"})
    SyncService(get_settings(), engine, [(ListSource("src", snapshot), True)]).run_once()
    assert sensitivity(engine) == {"region": True, "pw": True}
    # The operator marks the source not sensitive; the secret is unchanged (no snapshot).
    relaxed = SyncService(get_settings(), engine, [(ListSource("src", Unchanged("v1")), False)])
    relaxed.run_once()
    assert sensitivity(engine) == {"region": False, "pw": False}
    strict = SyncService(get_settings(), engine, [(ListSource("src", Unchanged("v1")), True)])
    strict.run_once()
    assert sensitivity(engine) == {"region": True, "pw": True}


def test_the_flag_applies_only_to_the_sources_own_keys(engine: Engine) -> None:
    set_by_hand(engine, "manual", "x")
    other = ListSource("other", Snapshot("o1", {"theirs": "1"}))
    SyncService(get_settings(), engine, [(other, True)]).run_once()
    mine = ListSource("mine", Snapshot("m1", {"ours": "2"}))
    SyncService(get_settings(), engine, [(mine, False)]).run_once()
    assert sensitivity(engine) == {"manual": False, "theirs": True, "ours": False}
