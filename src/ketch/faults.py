"""Fault points: named places where a test can make this process die on purpose.

Crash safety is only proven where a crash is aimed. A random ``kill -9`` almost never
lands between two commits a few microseconds apart, so the code marks each commit
boundary of the try's life with :func:`fault_point` and a test arms one of them::

    KETCH_FAULT_POINTS="queueing.after_queued_commit"       # die the first time
    KETCH_FAULT_POINTS="api.finish.after_commit@3"          # die at the third hit
    KETCH_FAULT_POINTS="a@2,b"                              # several points

The process then sends itself SIGKILL at that point: no ``finally``, no atexit, no
flush, exactly what an OOM kill or a node loss does. Disarmed (the variable unset, the
normal case) a fault point is one dictionary lookup.

Every point is listed in :data:`FAULT_POINTS` so tests can iterate over all of them and
a typo in a test fails loudly instead of never firing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

ENV = "KETCH_FAULT_POINTS"

FAULT_POINTS: dict[str, str] = {
    "queueing.after_queued_commit": "TIs committed queued, before the executor launches them",
    "queueing.after_launch": "tries launched, before their external ids are recorded",
    "queueing.after_launch_commit": "external ids committed",
    "events.before_commit": "ended tries' downstream decided, before the commit",
    "events.after_commit": "ended tries' reactions committed",
    "expansion.before_commit": "a mapped task's instances written, before the commit",
    "expansion.after_commit": "a mapped task's expansion committed",
    "revision.before_commit": "a cleared mapped task's instances added/removed, before the commit",
    "revision.after_commit": "a cleared mapped task's revision committed",
    "mapped_group.before_commit": "a mapped group's task expanded into undecided instances, "
    "before the commit",
    "mapped_group.after_commit": "a mapped group's task expansion committed",
    "adoption.after_relaunch": "adoption relaunched never-started tries, before its commit",
    "api.start.before_commit": "a try's start UPDATE done, before its commit",
    "api.start.after_commit": "a try's start committed, before the answer is sent",
    "api.finish.before_commit": "a try's outcome written, before its commit",
    "api.finish.after_commit": "a try's outcome committed, before the answer is sent",
    "api.reschedule.before_commit": "a sensor's up_for_reschedule and next date written, "
    "before their commit",
    "api.reschedule.after_commit": "a sensor's reschedule committed, before the answer is sent",
}

log = logging.getLogger(__name__)
_lock = threading.Lock()
_hits: dict[str, int] = {}


def _armed() -> dict[str, int]:
    """``{point: hit number that kills}`` from the environment; checked on every call
    so a test can arm a point in a process that is already running (tests only)."""
    spec = os.environ.get(ENV)
    if not spec:
        return {}
    armed: dict[str, int] = {}
    for item in spec.split(","):
        name, _, nth = item.strip().partition("@")
        if not name:
            continue
        if name not in FAULT_POINTS:
            raise ValueError(f"{ENV}: unknown fault point {name!r}; known: {sorted(FAULT_POINTS)}")
        armed[name] = int(nth or 1)
    return armed


def fault_point(name: str) -> None:
    """Die here (SIGKILL to this process) when ``name`` is armed and this is its hit."""
    armed = _armed()
    if name not in armed:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] != armed[name]:
            return
    log.warning("fault point %s reached (hit %d): killing this process", name, armed[name])
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
