"""Sync variables from their sources (AWS Secrets Manager, mounted files) into the database.

Each configured source (``[variables] sync_sources``) is polled every
``sync_interval`` seconds by a thread of the scheduler process. A poll asks the
source for a snapshot newer than the version applied last (usually one cheap call
that answers "unchanged"); a new snapshot is applied in ONE transaction:

- a key the source has and the table does not: created, owned by the source;
- a key the source owns: updated when its value changed;
- a key set by hand (no source): ``conflict_policy`` decides: ``source_wins``
  (default) overwrites it and takes ownership (a warning is logged and the audit
  row says ``overwrote_manual``); ``keep_manual`` leaves it;
- a key owned by another source: left alone (the first source keeps it), logged;
- a key the source owns that is no longer in its snapshot: deleted. Keys it does not
  own are never deleted.

Every change writes a ``variable_audit_log`` row (key, action, source, version,
time; never the value) and the source's ``variable_sync_status`` row is updated in
the same transaction. A source that fails (unreachable, denied, missing, invalid
JSON, half-written file) changes nothing: the error is recorded in its status row
and logged with the source and reason, and the source is retried after
``sync_interval * 2**(failures-1)`` seconds, at most ``sync_max_backoff``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ketch.db.models import Variable, VariableAuditLog, VariableSyncStatus
from ketch.variables import metrics
from ketch.variables.sources import Snapshot, SourceError, VariableSource, build_source

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet
    from sqlalchemy import Engine

    from ketch.config import Settings

log = logging.getLogger("ketch.variables.sync")

MAX_KEY_LENGTH = 250  # variable.key's column length


@dataclass(frozen=True)
class SourceStatus:
    """What ``ketch variables sync-status`` and ``GET /api/v1/variables/syncStatus`` show."""

    source_id: str
    kind: str
    version: str | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    next_attempt_at: datetime | None
    managed_keys: int
    # False while the source's last attempt failed (its last good variables stay).
    ok: bool = True

    @classmethod
    def from_row(cls, row: VariableSyncStatus) -> SourceStatus:
        return cls(
            source_id=row.source_id,
            kind=row.kind,
            version=row.version,
            last_attempt_at=row.last_attempt_at,
            last_success_at=row.last_success_at,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
            consecutive_failures=row.consecutive_failures or 0,
            next_attempt_at=row.next_attempt_at,
            managed_keys=row.managed_keys or 0,
            ok=row.last_error is None,
        )

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        return data


@dataclass
class ApplyResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    overwrote_manual: int = 0
    kept: int = 0  # keys left alone: set by hand (keep_manual) or owned by another source

    @property
    def changed(self) -> int:
        return self.created + self.updated + self.deleted + self.overwrote_manual


def _now() -> datetime:
    return datetime.now(UTC)


def sync_status(session: Session) -> list[SourceStatus]:
    """Every source's status row, by source id."""
    rows = session.scalars(select(VariableSyncStatus).order_by(VariableSyncStatus.source_id))
    return [SourceStatus.from_row(row) for row in rows]


def _status_row(session: Session, source: VariableSource) -> VariableSyncStatus:
    row = session.get(VariableSyncStatus, source.source_id)
    if row is None:
        row = VariableSyncStatus(
            source_id=source.source_id, kind=source.kind, consecutive_failures=0, managed_keys=0
        )
        session.add(row)
    return row


def _apply_sensitive_flag(session: Session, source_id: str, sensitive: bool) -> None:
    """A source's ``sensitive`` setting holds for every key it owns, also after the setting
    changed while the secret did not: the per-key write in :func:`apply_snapshot` only runs
    for a changed value, and an unchanged source version applies no snapshot at all."""
    session.execute(
        update(Variable)
        .where(Variable.source == source_id, Variable.is_sensitive.is_not(sensitive))
        .values(is_sensitive=sensitive)
    )


def apply_snapshot(
    session: Session,
    fernet: MultiFernet,
    source_id: str,
    snapshot: Snapshot,
    *,
    conflict_policy: str = "source_wins",
    sensitive: bool = True,
    now: datetime | None = None,
) -> ApplyResult:
    """Apply one source's snapshot with the ownership rules (the caller commits, so the
    whole change set is one transaction). Values are never logged."""
    from ketch.variables.crypto import decrypt, encrypt

    now = now or _now()
    result = ApplyResult()
    wanted = snapshot.values
    bad = [key for key in wanted if not key or len(key) > MAX_KEY_LENGTH]
    if bad:  # checked before any write: the change set is all or nothing
        raise SourceError(
            f"{len(bad)} key(s) are empty or longer than {MAX_KEY_LENGTH} characters "
            f"(first: {bad[0][:60]!r})",
            kind="invalid_key",
        )
    rows = {
        row.key: row
        for row in session.scalars(select(Variable).where(Variable.source == source_id))
    }
    keys = [key for key in wanted if key not in rows]
    for first in range(0, len(keys), 500):  # bounded IN lists (SQLite's parameter limit)
        chunk = keys[first : first + 500]
        rows.update(
            (row.key, row)
            for row in session.scalars(select(Variable).where(Variable.key.in_(chunk)))
        )

    def audit(key: str, action: str) -> None:
        session.add(
            VariableAuditLog(
                key=key, action=action, source=source_id, version=snapshot.version, timestamp=now
            )
        )
        metrics.SYNC_CHANGES.labels(source=source_id, action=action).inc()

    for key, value in wanted.items():
        row = rows.get(key)
        if row is None:
            session.add(
                Variable(
                    key=key,
                    val=encrypt(fernet, value),
                    is_sensitive=sensitive,
                    source=source_id,
                    source_version=snapshot.version,
                    created_at=now,
                    updated_at=now,
                )
            )
            audit(key, "created")
            result.created += 1
        elif row.source == source_id:
            if decrypt(fernet, row.val) != value:
                row.val = encrypt(fernet, value)
                row.is_sensitive = sensitive
                row.source_version = snapshot.version
                row.updated_at = now
                audit(key, "updated")
                result.updated += 1
        elif row.source is None:
            if conflict_policy == "keep_manual":
                log.warning(
                    "variable %r was set by hand: source %s leaves it (conflict_policy=keep_manual)",
                    key,
                    source_id,
                )
                result.kept += 1
                continue
            log.warning(
                "variable %r was set by hand: source %s overwrites it and now owns it "
                "(conflict_policy=source_wins)",
                key,
                source_id,
            )
            row.val = encrypt(fernet, value)
            row.is_sensitive = sensitive
            row.source = source_id
            row.source_version = snapshot.version
            row.updated_at = now
            audit(key, "overwrote_manual")
            result.overwrote_manual += 1
        else:
            log.warning(
                "variable %r is owned by source %s: source %s leaves it", key, row.source, source_id
            )
            result.kept += 1
    for key, row in rows.items():
        if row.source == source_id and key not in wanted:
            session.delete(row)
            audit(key, "deleted")
            result.deleted += 1
    return result


def _managed_keys(session: Session, source_id: str) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Variable).where(Variable.source == source_id)
        )
        or 0
    )


class SyncService:
    """Polls every configured source; :meth:`start` runs it on a thread of the scheduler."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sources: list[tuple[VariableSource, bool]] | None = None,
    ) -> None:
        from ketch.db.engine import session_factory

        self.settings = settings
        self.engine = engine
        self._sessions = session_factory(engine)
        if sources is None:
            sources = [
                (build_source(config), config.sensitive)
                for config in settings.variables.sync_sources
            ]
        self.sources = sources
        self._next_due: dict[str, float] = {}
        self._failures: dict[str, int] = {}  # while the database cannot say (outage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fernet: MultiFernet | None = None

    @property
    def fernet(self) -> MultiFernet:
        if self._fernet is None:
            from ketch.variables.crypto import get_fernet

            self._fernet = get_fernet(self.settings)
        return self._fernet

    def backoff(self, failures: int) -> float:
        cfg = self.settings.variables
        return float(min(cfg.sync_max_backoff, cfg.sync_interval * 2 ** max(0, failures - 1)))

    def run_once(self, *, only_due: bool = False) -> list[SourceStatus]:
        """Sync every source (``only_due``: those whose next attempt is due) and return
        their statuses."""
        statuses = []
        for source, sensitive in self.sources:
            if only_due and self._next_due.get(source.source_id, 0.0) > time.monotonic():
                continue
            statuses.append(self.sync_source(source, sensitive=sensitive))
        return statuses

    def sync_source(self, source: VariableSource, *, sensitive: bool = True) -> SourceStatus:
        started = time.perf_counter()
        source_id = source.source_id
        failures = self._failures.get(source_id, 0)
        try:
            with self._sessions() as session:
                previous = session.get(VariableSyncStatus, source_id)
                previous_version = previous.version if previous is not None else None
                failures = previous.consecutive_failures if previous is not None else failures
            result = source.fetch(previous_version)
            with self._sessions() as session, session.begin():
                now = _now()
                row = _status_row(session, source)
                applied: ApplyResult | None = None
                if isinstance(result, Snapshot):
                    applied = apply_snapshot(
                        session,
                        self.fernet,
                        source_id,
                        result,
                        conflict_policy=self.settings.variables.conflict_policy,
                        sensitive=sensitive,
                        now=now,
                    )
                    session.flush()
                    row.managed_keys = _managed_keys(session, source_id)
                _apply_sensitive_flag(session, source_id, sensitive)
                row.version = result.version
                row.last_attempt_at = row.last_success_at = now
                row.last_error = row.last_error_at = None
                row.consecutive_failures = 0
                row.next_attempt_at = now + timedelta(seconds=self.settings.variables.sync_interval)
                status = SourceStatus.from_row(row)
        except Exception as exc:
            failures += 1
            reason = str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
            kind = exc.kind if isinstance(exc, SourceError) else type(exc).__name__
            delay = self.backoff(failures)
            log.warning(
                "variable sync from %s failed (attempt %d, retry in %.0f s): %s",
                source_id,
                failures,
                delay,
                reason,
            )
            metrics.SYNC_RUNS.labels(source=source_id, result="error").inc()
            metrics.SYNC_ERRORS.labels(source=source_id, error=kind).inc()
            self._next_due[source_id] = time.monotonic() + delay
            self._failures[source_id] = failures
            status = self._record_failure(source, reason, failures, delay)
        else:
            if applied is not None:
                metrics.SYNC_RUNS.labels(source=source_id, result="changed").inc()
                log.info(
                    "variables synced from %s version %s: %d created, %d updated, %d deleted, "
                    "%d hand-set overwritten, %d left alone",
                    source_id,
                    result.version,
                    applied.created,
                    applied.updated,
                    applied.deleted,
                    applied.overwrote_manual,
                    applied.kept,
                )
            else:
                metrics.SYNC_RUNS.labels(source=source_id, result="unchanged").inc()
            self._next_due[source_id] = time.monotonic() + self.settings.variables.sync_interval
            self._failures.pop(source_id, None)
        metrics.SYNC_DURATION.labels(source=source_id).observe(time.perf_counter() - started)
        return status

    def _record_failure(
        self, source: VariableSource, reason: str, failures: int, delay: float
    ) -> SourceStatus:
        now = _now()
        try:
            with self._sessions() as session, session.begin():
                row = _status_row(session, source)
                row.last_attempt_at = row.last_error_at = now
                row.last_error = reason[:2000]
                row.consecutive_failures = failures
                row.next_attempt_at = now + timedelta(seconds=delay)
                return SourceStatus.from_row(row)
        except Exception as exc:  # the database itself is away: report in memory only
            log.warning("cannot record the sync status of %s: %s", source.source_id, exc)
            return SourceStatus(
                source_id=source.source_id,
                kind=source.kind,
                version=None,
                last_attempt_at=now,
                last_success_at=None,
                last_error=reason,
                last_error_at=now,
                consecutive_failures=failures,
                next_attempt_at=now + timedelta(seconds=delay),
                managed_keys=0,
                ok=False,
            )

    # The background thread (scheduler process).

    def start(self) -> None:
        if not self.sources or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ketch-variable-sync", daemon=True)
        self._thread.start()
        log.info(
            "variable sync: %d source(s), every %.0f s",
            len(self.sources),
            self.settings.variables.sync_interval,
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(only_due=True)
            except Exception:  # never let the thread die; each source already logs its own
                log.exception("variable sync loop error")
            now = time.monotonic()
            next_due = min(
                (self._next_due.get(s.source_id, now) for s, _ in self.sources), default=now + 1
            )
            self._stop.wait(max(0.05, next_due - now))


def run_sync_once(settings: Settings, engine: Engine) -> list[SourceStatus]:
    """One sync of every configured source (``ketch variables sync --once``)."""
    return SyncService(settings, engine).run_once()
