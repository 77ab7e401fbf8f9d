"""One term of leadership: keeping the lease until it is released or lost.

The keeping side of the lease, apart from acquisition (``standby``): a keeper thread
renews the row on the term's own connection; on PostgreSQL a watchdog thread declares
the lease lost once ``lease_ttl`` has passed since the last renewal that got through,
because from then on a standby may own it, whatever this process believes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ketch.config import SchedulerSettings
from ketch.db.outage import OutageTracker
from ketch.scheduler.lease.link import LeaseLink
from ketch.scheduler.lease.statements import release_lease, renew_lease, short_error

# One logger for the whole lease package: operators (and tests) follow it by this name.
log = logging.getLogger("ketch.scheduler.lease")


class Term:
    """One stretch of leadership: its token, the threads keeping it, and why it ended.

    ``lose(term, reason)`` is the owner's reaction to a loss the keeper or the watchdog
    noticed; it calls :meth:`mark_lost`.
    """

    def __init__(
        self,
        token: int,
        valid_until: float,
        link: LeaseLink,
        *,
        holder: str,
        name: str,
        settings: SchedulerSettings,
        outage: OutageTracker,
        lose: Callable[[Term, str], None],
    ) -> None:
        self.token = token
        self.valid_until = valid_until  # monotonic; the lease surely has not expired before
        self.link = link
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lost_reason: str | None = None
        self.release = False
        self._lock = threading.Lock()
        self._holder = holder
        self._name = name
        self._settings = settings
        self._outage = outage
        self._lose = lose

    def start(self, *, watchdog: bool) -> None:
        """The link (with its advisory lock) now belongs to the keeper thread."""
        self.threads.append(threading.Thread(target=self._keep, name="ketch-lease", daemon=True))
        if watchdog:
            self.threads.append(
                threading.Thread(target=self._watch, name="ketch-lease-watchdog", daemon=True)
            )
        for thread in self.threads:
            thread.start()

    def mark_lost(self, reason: str) -> bool:
        """Record why the term ended; False if a reason was already recorded."""
        with self._lock:
            if self.lost_reason is not None:
                return False
            self.lost_reason = reason
            return True

    def end(self, *, release: bool, join: float) -> None:
        """Stop the threads (releasing the row first if asked and the term is intact)."""
        self.release = release and self.lost_reason is None
        self.stop.set()
        for thread in self.threads:
            thread.join(join)
        self.mark_lost("released" if release else "the term ended")

    def _keep(self) -> None:
        """Renew every ``lease_renew_interval`` (after an error: reconnect, re-take our
        advisory lock, retry sooner). At the end of the term: release if asked, then close
        the connection (which lets go of the advisory lock)."""
        settings = self._settings
        interval = settings.lease_renew_interval
        try:
            while not self.stop.wait(interval):
                sent = time.monotonic()
                try:
                    conn = self.link.connection()
                    self.link.take_key()
                    renewed = renew_lease(
                        conn, self._holder, self.token, settings.lease_ttl, self._name
                    )
                    conn.commit()
                except Exception as exc:
                    self._outage.failed(f"cannot renew the scheduler lease: {short_error(exc)}")
                    self.link.drop()
                    interval = min(settings.lease_renew_interval, 0.5)
                    continue
                interval = settings.lease_renew_interval
                self._outage.succeeded()
                if not renewed:
                    self._lose(self, "another scheduler took over the lease")
                    return
                self.valid_until = max(self.valid_until, sent + settings.lease_ttl)
            if self.release:
                self._release_row()
        finally:
            self.link.drop()

    def _release_row(self) -> None:
        try:
            conn = self.link.connection()
            released = release_lease(conn, self._holder, self.token, self._name)
            conn.commit()
        except Exception as exc:
            log.warning("cannot release the scheduler lease (%s); it will expire", short_error(exc))
            return
        if released:
            log.info("released the scheduler lease (token %d)", self.token)

    def _watch(self) -> None:
        """Stop scheduling once the lease may have expired without a renewal: from that
        moment a standby may own it, whatever this process believes."""
        while not self.stop.is_set():
            left = self.valid_until - time.monotonic()
            if left <= 0:
                ttl = self._settings.lease_ttl
                self._lose(self, f"no renewal got through within lease_ttl ({ttl:g} s)")
                return
            self.stop.wait(min(left, 0.25))
