"""What a task returned, made storable: its return value and further XComs encoded as
tagged JSON within ``max_xcom_size``, a value mapped over downstream checked, and the
outcome of a task that finished with them."""

from __future__ import annotations

import json
from typing import Any

from ketch.worker.runner.outcome import Outcome
from ketch.worker.runner.output import say


def encode_return_value(task_id: str, value: Any, max_size: int) -> tuple[Any, str | None]:
    """The value as it is stored and sent downstream (tagged JSON, see
    :mod:`ketch.worker.serde`, so a ``datetime`` or a tuple arrives as one), and why it
    cannot be stored (None when it can)."""
    from ketch.worker.serde import encode

    try:
        encoded = encode(value)
        text = json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return None, f"return value of task {task_id!r} is not JSON-serialisable: {exc}"
    size = len(text.encode())
    if size > max_size:
        return None, (
            f"return value of task {task_id!r} is {size} bytes of JSON, "
            f"more than max_xcom_size ({max_size} bytes)"
        )
    return encoded, None


def check_return_value(task_id: str, value: Any, max_size: int) -> str | None:
    """Why the return value cannot be stored, or None when it can."""
    return encode_return_value(task_id, value, max_size)[1]


def mapping_problem(task: Any, result: Any, payload: dict[str, Any]) -> str | None:
    """Why the value cannot be mapped over downstream (see ketch.authoring.mapped)."""
    from ketch.authoring.mapped import push_problem

    if not hasattr(result, "push_return_value"):
        return None
    return push_problem(task, result, int(payload.get("max_map_length") or 1024))


def success_outcome(task_id: str, result: Any, payload: dict[str, Any]) -> Outcome:
    """A finished task's outcome. Its return value is always stored, ``None`` included
    (as JSON null): a downstream task taking it then receives ``None``, as in Airflow,
    while an upstream marked success without running (no value at all) still fails a
    task that needs its value with a message naming both (:mod:`ketch.worker.upstream`)."""
    value = getattr(result, "return_value", None)
    follow = getattr(result, "follow_task_ids", None)
    if getattr(result, "push_return_value", True) is False:
        # A short-circuit that skips stores no value (Airflow raises before pushing it).
        return Outcome("success", follow_task_ids=list(follow) if follow is not None else None)
    encoded, problem = encode_return_value(task_id, value, int(payload["max_xcom_size"]))
    xcoms, xcoms_problem = _encode_xcoms(task_id, getattr(result, "xcoms", None), payload)
    problem = problem or xcoms_problem
    if problem:
        say(problem)
        return Outcome("failed", error=problem)
    return Outcome(
        "success",
        return_value=encoded,
        has_return_value=True,
        follow_task_ids=list(follow) if follow is not None else None,
        xcoms=xcoms,
    )


def _encode_xcoms(
    task_id: str, xcoms: dict[str, Any] | None, payload: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """Each further XCom encoded like a return value, or why one cannot be stored."""
    if not xcoms:
        return None, None
    out: dict[str, Any] = {}
    for key, value in xcoms.items():
        encoded, problem = encode_return_value(task_id, value, int(payload["max_xcom_size"]))
        if problem:
            return None, f"XCom {key!r}: {problem}"
        out[key] = encoded
    return out, None
