"""Why a try was stopped from outside: a SIGTERM (the scheduler's cancel, the executor's
timeout backstop, a pod eviction) and the execution API's 401 "try has ended", put in
words for the try's last log line."""

from __future__ import annotations

import re
import threading
from types import FrameType

from ketch.exceptions import KetchException


class TaskTerminated(KetchException):
    """The try received SIGTERM (cancelled, or killed by the executor's timeout backstop)."""


_ENDED_DETAIL = re.compile(
    r"task instance is (?P<state>\w+) with try_number (?P<ti_try>\d+), this is try (?P<mine>\d+)"
)


def why_ended(detail: str) -> str:
    """What happened to the task instance, from the execution API's 401 "try has ended"
    (or 409) detail, in words; anything the server adds after the states (who did it)
    is kept."""
    if "no longer exists" in detail:
        return "the task instance no longer exists (its run or DAG was deleted)"
    match = _ENDED_DETAIL.search(detail)
    if match is None:
        return detail
    state, ti_try, mine = match["state"], int(match["ti_try"]), int(match["mine"])
    guess = ""
    if ti_try > mine:
        what = f"the task instance was cleared and try {ti_try} has replaced this one"
    elif state in ("none", "scheduled"):
        what = "the task instance was cleared"
    elif state == "success":
        what = "the task instance was marked success"
    elif state == "failed":
        what, guess = (
            "the task instance was set to failed",
            "marked failed, or its run was cancelled",
        )
    elif state == "skipped":
        what, guess = "the task instance was set to skipped", "marked skipped, or its run timed out"
    else:
        what = f"the task instance was set to {state} from outside"
    # What the server adds after the states (who did it) beats a guess.
    more = detail[match.end() :].strip(" .;:()")
    if more:
        return f"{what}: {more}"
    return f"{what} ({guess})" if guess else what


SIGTERM_RECEIVED = "received SIGTERM"
# SIGTERM arrived when the task was not running (before it started, while reporting).
sigterm_noted = threading.Event()


def note_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handler outside the task itself: noted, not fatal."""
    sigterm_noted.set()


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM handler while the task runs: stops it."""
    raise TaskTerminated("task received SIGTERM")
