"""What every scheduling step needs: settings, database, executor, caches and the clock.

One object instead of long parameter lists, so each step stays a short function that a
test can call with an injected clock and token signer. Every step opens its transactions
with :attr:`SchedulerContext.sessions`, so fencing those sessions with the scheduler lease
(:meth:`SchedulerContext.fence_with`) fences every write of the scheduling loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ketch.config import Settings
from ketch.executors.base import Executor, TryKey
from ketch.scheduler.dag_cache import DagCache
from ketch.scheduler.evaluation import TallyStore

TokenSigner = Callable[[TryKey, int], str]
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SchedulerContext:
    settings: Settings
    engine: Engine
    executor: Executor
    sign_token: TokenSigner
    clock: Clock = utcnow
    dags: DagCache = field(default_factory=DagCache)
    tallies: TallyStore = field(default_factory=TallyStore)
    # DAG id -> is_paused, read at most once per loop iteration (cleared by the loop).
    paused: dict[str, bool] = field(default_factory=dict)
    # Set by a step when another step should run soon (a run ended, runs were created...).
    poke: Callable[[], None] = lambda: None
    # When the scheduler last (re)gained the database. Tries cannot heartbeat while the
    # database (or the web server, in standalone) is down, so zombie detection only
    # counts silence after this moment. None: an outage is going on (the first step that
    # reaches the database again sets it).
    healthy_since: datetime | None = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        self.sessions: sessionmaker[Session] = sessionmaker(
            bind=self.engine, expire_on_commit=False
        )
        self.fenced = False

    def fence_with(self, check: Callable[[Session], None]) -> None:
        """Check the scheduler lease before every commit of :attr:`sessions` that wrote
        something (``ketch.scheduler.lease``): a scheduler that lost its lease cannot
        commit a single decision; ``check`` raises ``LeaseLost`` and the transaction
        rolls back. Off unless called (tests build a Scheduler without a lease)."""
        from ketch.scheduler.lease.fence import install_fence

        install_fence(self.sessions, check)
        self.fenced = True


def default_token_signer(settings: Settings) -> TokenSigner:
    """Sign per-try tokens with ``ketch.auth.try_tokens`` (imported when first used)."""

    def sign(key: TryKey, ti_id: int) -> str:
        from ketch.auth.try_tokens import sign_try_token

        return sign_try_token(settings, key, ti_id)

    return sign
