"""The try's outcome sent to the execution API (``try/finish``), including the failure
of a try whose log could not be written; a try that ended from outside meanwhile is
told apart (:class:`Cancelled`), as its outcome no longer matters."""

from __future__ import annotations

from dataclasses import replace

from ketch.worker.client import ExecutionApiClient, ExecutionApiError, TryEnded, TryStateConflict
from ketch.worker.runner.outcome import Outcome
from ketch.worker.runner.output import say
from ketch.worker.runner.stopping import why_ended


class Cancelled(Exception):
    """The execution API says the try is over (cleared, marked, its run cancelled)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def report(client: ExecutionApiClient, outcome: Outcome) -> bool:
    """Send the outcome; False when the API would not take it. Raises :class:`Cancelled`
    when the try has ended from outside (its outcome no longer matters)."""
    try:
        client.finish(
            outcome.state,
            error=outcome.error,
            return_value=outcome.return_value,
            has_return_value=outcome.has_return_value,
            follow_task_ids=outcome.follow_task_ids,
            xcoms=outcome.xcoms,
            retry=outcome.retry,
            reschedule_date=outcome.reschedule_date,
            rendered_map_index=outcome.rendered_map_index,
        )
    except TryEnded as exc:
        raise Cancelled(why_ended(exc.detail)) from exc
    except TryStateConflict as exc:
        say(f"outcome not recorded, task instance changed externally: {exc.detail}")
        return False
    except ExecutionApiError as exc:
        if exc.status == 413 and outcome.state == "success":
            say(exc.detail)
            failed = Outcome("failed", error=exc.detail)
            return report(client, replace(failed, rendered_map_index=outcome.rendered_map_index))
        say(f"outcome not recorded: {exc}")
        return False
    return True


def log_problem() -> str | None:
    """Why this try's log could not be written (see ``ketch.worker.task_log``), or None."""
    from ketch.worker.task_log import write_problem

    return write_problem()


def with_log_problem(outcome: Outcome) -> Outcome:
    """A try whose log could not be written while it ran fails, saying so."""
    problem = log_problem()
    if problem is None:
        return outcome
    say(problem)
    if outcome.state == "failed":
        return replace(outcome, error=f"{outcome.error}; also {problem}")
    return Outcome("failed", error=problem)
