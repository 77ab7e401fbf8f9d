"""The scheduling loop: one thread, woken at once by executor events.

Each iteration, in short transactions:

a. record the tries that ended (executor events) and decide their downstream tasks;
b. start queued runs within ``max_active_runs`` (housekeeping);
c. evaluate runs flagged ``needs_evaluation`` (new runs, user actions; housekeeping);
d. refresh next runs and create due scheduled runs (housekeeping);
e. make due retries scheduled (housekeeping);
f. queue scheduled TIs within the limits and launch them;
g. every ``task_instance_heartbeat_timeout_detection_interval``: zombies, stuck queued
   tries, run timeouts.

Housekeeping runs at most once per ``scheduler_idle_sleep_time`` unless something asks for
it (``wake()``, a run ended, a run was created), so a stream of events costs only the
event path and queueing. The database stays the source of truth: events are kept in
memory only until the transaction that records them commits, and a database outage
makes the loop back off and retry with its events still pending.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ketch.config import Settings
from ketch.executors.base import Executor, TryEnded
from ketch.faults import fault_point
from ketch.scheduler import housekeeping as hk
from ketch.scheduler.adoption import adopt_tries
from ketch.scheduler.context import (
    Clock,
    SchedulerContext,
    TokenSigner,
    default_token_signer,
    utcnow,
)
from ketch.scheduler.queueing import queue_and_launch
from ketch.scheduler.reactions import evaluate_flagged_runs, process_events

if TYPE_CHECKING:
    from ketch.dag_processing.processor import DagProcessor
    from ketch.db.outage import OutageTracker

log = logging.getLogger("ketch.scheduler.loop")

_MAX_EVENTS_PER_BATCH = 1000
_MAX_EVENT_FAILURES = 5


def is_db_unavailable(exc: BaseException) -> bool:
    """An error worth waiting out: the database cannot be reached now, dropped the
    connection, or refuses writes (read-only, disk full; see ``ketch.db.outage``)."""
    from ketch.db.outage import is_db_unavailable as unavailable

    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and unavailable(exc)


def _reason(exc: BaseException) -> str:
    from ketch.db.outage import reason

    return reason(exc)


class Scheduler:
    """The scheduling loop. ``run(stop)`` blocks; ``wake()`` is safe from any thread."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        executor: Executor,
        dag_processor: DagProcessor | None = None,
        *,
        clock: Clock = utcnow,
        token_signer: TokenSigner | None = None,
    ) -> None:
        self.settings = settings
        self.executor = executor
        self.dag_processor = dag_processor
        self.ctx = SchedulerContext(
            settings=settings,
            engine=engine,
            executor=executor,
            sign_token=token_signer or default_token_signer(settings),
            clock=clock,
            poke=self._poke,
            healthy_since=clock(),
        )
        self._events: queue.SimpleQueue[TryEnded] = queue.SimpleQueue()
        self._pending: list[TryEnded] = []
        self._pending_failures = 0
        self._signal = threading.Event()
        self._housekeeping_requested = True
        self._last_housekeeping = 0.0
        self._last_detection = time.monotonic()
        self._executor_started = False

    # -- thread-safe entry points ----------------------------------------------------------

    def on_try_ended(self, event: TryEnded) -> None:
        """The executor's event sink: queue the event and wake the loop."""
        self._events.put(event)
        self._signal.set()

    def wake(self) -> None:
        """Ask the loop to look at the database now (a user action, a new DAG version)."""
        self._poke()

    def _poke(self) -> None:
        self._housekeeping_requested = True
        self._signal.set()

    # -- lifecycle ---------------------------------------------------------------------

    def start_executor(self) -> None:
        if not self._executor_started:
            self.executor.start(self.on_try_ended)
            self._executor_started = True

    def adopt(self) -> None:
        """Take over the tries of a previous scheduler (see ``adoption``)."""
        result = adopt_tries(self.ctx, self._events)
        for event in result.lost:
            self._events.put(event)

    def run(self, stop: threading.Event) -> None:
        """Start the executor, adopt leftover tries, then loop until ``stop`` is set."""
        try:
            self.start_executor()
            self._retrying(stop, self.adopt)
            if self.dag_processor is not None:
                self.dag_processor.start()
            while not stop.is_set():
                busy = self._retrying(stop, self.run_once)
                if not busy and not stop.is_set():
                    self._signal.wait(self.settings.scheduler.scheduler_idle_sleep_time)
        finally:
            if self.dag_processor is not None:
                self.dag_processor.stop()
            self.executor.stop()

    # While the database is unavailable it is probed this often (a connection and SELECT 1).
    db_probe_interval = 0.5

    def _retrying(self, stop: threading.Event, step: object) -> bool:
        """Run one step; wait out database outages; never die.

        While the database cannot be reached it is probed every ``db_probe_interval`` and
        the step runs again as soon as a probe answers. A database that answers but keeps
        failing the step (read-only, disk full) gets the step again with exponential
        back-off up to ``db_retry_max_interval``. The outage is logged once when it begins
        and once when a step succeeds again.
        """
        outage = self._db_outage()
        backoff = self.db_probe_interval
        while not stop.is_set():
            try:
                result = bool(step())  # type: ignore[operator]
            except Exception as exc:
                if not is_db_unavailable(exc):
                    log.exception("scheduler loop iteration failed; continuing")
                    self._note_event_failure()
                    stop.wait(0.1)
                    return False
                outage.failed(_reason(exc))
                self.ctx.healthy_since = None  # see detect_zombies
                self.ctx.engine.dispose()
                self.ctx.tallies.clear()
                if self._await_database(stop, backoff):
                    backoff = self.db_probe_interval  # it was unreachable and is back: go
                else:
                    limit = max(self.settings.scheduler.db_retry_max_interval, backoff)
                    backoff = min(backoff * 2, limit)
                continue
            outage.succeeded()
            return result
        return False

    def _db_outage(self) -> OutageTracker:
        """This scheduler's outage log (created on first use)."""
        from ketch.db.outage import OutageTracker

        tracker: OutageTracker | None = getattr(self, "_db_outage_tracker", None)
        if tracker is None:
            tracker = self._db_outage_tracker = OutageTracker(log, "database")
        return tracker

    def _await_database(self, stop: threading.Event, backoff: float) -> bool:
        """Probe every ``db_probe_interval`` until the database answers and ``backoff`` has
        passed, or at once once it answers after having been unreachable (returns True)."""
        outage = self._db_outage()
        deadline = time.monotonic() + backoff
        unreachable = False
        while not stop.wait(self.db_probe_interval):
            try:
                self._probe_database()
            except Exception as exc:
                outage.failed(_reason(exc))  # DEBUG: the outage was logged when it began
                unreachable = True
                continue
            if unreachable or time.monotonic() >= deadline:
                return unreachable
        return unreachable

    def _probe_database(self) -> None:
        """A connection and ``SELECT 1`` (the pool keeps the connection for the step)."""
        from sqlalchemy import text

        with self.ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _note_event_failure(self) -> None:
        """Keep pending events across failures, but not forever (a poison event would block)."""
        if not self._pending:
            return
        self._pending_failures += 1
        if self._pending_failures >= _MAX_EVENT_FAILURES:
            log.error("dropping %d executor events that failed repeatedly", len(self._pending))
            self._pending, self._pending_failures = [], 0

    # -- one iteration -----------------------------------------------------------------

    def run_once(self) -> bool:
        """One iteration of the loop. Returns True when more work is already waiting."""
        self._signal.clear()
        self.ctx.paused.clear()
        changed = self._handle_events()
        housekeeping = self._housekeeping_due()
        if housekeeping:
            self._housekeeping_requested = False
            changed += self._housekeeping()
            self._last_housekeeping = time.monotonic()
        if changed or housekeeping:
            with self.ctx.sessions() as session:
                queue_and_launch(self.ctx, session)
        self._detect_if_due()
        return self._housekeeping_requested or not self._events.empty()

    def _handle_events(self) -> int:
        while len(self._pending) < _MAX_EVENTS_PER_BATCH:
            try:
                self._pending.append(self._events.get_nowait())
            except queue.Empty:
                break
        if not self._pending:
            return 0
        with self.ctx.sessions() as session:
            changed = process_events(self.ctx, session, self._pending)
            fault_point("events.before_commit")
            session.commit()
        fault_point("events.after_commit")
        self._pending, self._pending_failures = [], 0
        return changed + 1

    def _housekeeping_due(self) -> bool:
        interval = self.settings.scheduler.scheduler_idle_sleep_time
        return (
            self._housekeeping_requested or time.monotonic() - self._last_housekeeping >= interval
        )

    def _housekeeping(self) -> int:
        work = 0
        with self.ctx.sessions() as session:
            # The safety pass: ends recorded in the database that no event brought us
            # (a try that finished while this scheduler was down or its event was lost).
            work += process_events(self.ctx, session, [])
            session.commit()
            work += hk.start_queued_runs(self.ctx, session)
            session.commit()
            work += evaluate_flagged_runs(self.ctx, session)
            session.commit()
            work += hk.schedule_runs(self.ctx, session)
            session.commit()
            work += hk.make_retries_due(self.ctx, session)
            session.commit()
        return work

    def _detect_if_due(self) -> None:
        interval = self.settings.scheduler.task_instance_heartbeat_timeout_detection_interval
        if time.monotonic() - self._last_detection < interval:
            return
        self._last_detection = time.monotonic()
        self.detect_failures()

    def detect_failures(self) -> None:
        """Zombies, tries stuck in queued, run timeouts (also callable from tests)."""
        with self.ctx.sessions() as session:
            hk.detect_zombies(self.ctx, session)
            hk.detect_stuck_queued(self.ctx, session)
            hk.enforce_dagrun_timeouts(self.ctx, session)
            session.commit()
