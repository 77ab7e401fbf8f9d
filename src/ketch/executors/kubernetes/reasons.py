"""From a pod's status to why its try ended (one line, shown in the try's state and log)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ketch.executors.kubernetes.pod import BASE_CONTAINER

# waiting reasons of a container that will not start without a change: fail the try now
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
}


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    reason: str | None
    failed_before_start: bool = False
    succeeded: bool = False


def phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _statuses(pod: dict[str, Any], key: str = "containerStatuses") -> list[dict[str, Any]]:
    return list((pod.get("status") or {}).get(key) or [])


def _base_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    for s in _statuses(pod):
        if s.get("name") == BASE_CONTAINER:
            return s
    statuses = _statuses(pod)
    return statuses[0] if statuses else None


def memory_limit(pod: dict[str, Any]) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == BASE_CONTAINER:
            return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def ended(pod: dict[str, Any]) -> Outcome | None:
    """The outcome of a pod that has finished, or that can never start; None while it may
    still run."""
    status = pod.get("status") or {}
    p = phase(pod)
    if p == "Succeeded":
        return Outcome(0, None, succeeded=True)
    if p == "Failed":
        if status.get("reason") == "Evicted":
            return Outcome(None, f"pod evicted: {status.get('message') or 'Evicted'}")
        if status.get("reason") == "DeadlineExceeded":
            return Outcome(None, f"pod deadline exceeded: {status.get('message') or ''}".strip())
        for init in _statuses(pod, "initContainerStatuses"):
            term = (init.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode", 0) != 0:
                return Outcome(
                    None,
                    f"init container {init.get('name')} failed with exit code "
                    f"{term.get('exitCode')} ({term.get('reason') or 'Error'})",
                    failed_before_start=True,
                )
        base = _base_status(pod) or {}
        term = (base.get("state") or {}).get("terminated") or {}
        code = term.get("exitCode")
        if term.get("reason") == "OOMKilled":
            limit = memory_limit(pod)
            detail = f" (memory limit {limit})" if limit else " (no memory limit set)"
            return Outcome(code if code is not None else 137, f"OOMKilled{detail}")
        if code is not None:
            return Outcome(int(code), f"exited with code {code} ({term.get('reason') or 'Error'})")
        return Outcome(None, f"pod failed: {status.get('reason') or status.get('message') or '?'}")
    if p == "Pending":
        for s in [*_statuses(pod, "initContainerStatuses"), *_statuses(pod)]:
            waiting = (s.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FATAL_WAITING:
                msg = waiting.get("message") or ""
                return Outcome(
                    None,
                    f"container {s.get('name')} cannot start: {waiting['reason']}"
                    + (f": {msg}" if msg else ""),
                    failed_before_start=True,
                )
    return None


def killed_by_kubernetes(pod: dict[str, Any]) -> bool:
    """Whether Kubernetes ended the try rather than the try itself: its container was
    OOM-killed, the pod evicted or killed at its ``activeDeadlineSeconds``. The try's log
    then says so (a footer) even when the try's log pump managed to complete it."""
    status = pod.get("status") or {}
    if phase(pod) == "Failed" and status.get("reason") in ("Evicted", "DeadlineExceeded"):
        return True
    base = _base_status(pod) or {}
    term = (base.get("state") or {}).get("terminated") or {}
    return term.get("reason") == "OOMKilled"


def pending_reason(pod: dict[str, Any], events: list[dict[str, Any]], waited: float) -> str:
    """Why a pod stayed Pending too long, with its conditions and Kubernetes events."""
    parts = [f"pod Pending for {waited:.0f}s (worker_pods_pending_timeout)"]
    return "; ".join(parts + pending_details(pod, events))


def pending_details(pod: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """What holds a Pending pod back: false conditions (``PodScheduled: Unschedulable:
    0/3 nodes are available...``), waiting containers and the last Kubernetes events."""
    parts: list[str] = []
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "False" and cond.get("reason"):
            parts.append(f"{cond.get('type')}: {cond['reason']}: {cond.get('message') or ''}")
    for s in [*_statuses(pod, "initContainerStatuses"), *_statuses(pod)]:
        waiting = (s.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            parts.append(f"container {s.get('name')}: {waiting['reason']}")
    seen = []
    for ev in events[-5:]:
        text = f"{ev.get('reason')}: {ev.get('message')}"
        if text not in seen:
            seen.append(text)
    if seen:
        parts.append("events: " + " | ".join(seen))
    return parts


def is_started(pod: dict[str, Any]) -> bool:
    """True once the pod left Pending (the task container started or the pod ended)."""
    return phase(pod) != "Pending"


def _signal_name(code: int) -> str | None:
    if 128 < code < 128 + 65:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            return None
    return None


def capture_reason(pod: dict[str, Any], pending: str | None = None) -> str:
    """Why a finished pod's try did not close its own log, in words for the footer of a
    rescued log ("... captured by the scheduler from the pod's log: REASON"):
    ``OOMKilled, memory limit 256Mi``, ``Evicted: The node was low on resource: memory.``,
    ``the container exited with code 3``, ``ErrImagePull: <message>``, ``killed at its
    execution_timeout (...)``. ``pending``: the reason a pod that stayed Pending too long was
    given up (see :func:`pending_reason`)."""
    if pending:
        return pending
    status = pod.get("status") or {}
    p = phase(pod)
    if p == "Failed":
        if status.get("reason") == "Evicted":
            return f"Evicted: {status.get('message') or 'the pod was evicted'}"
        if status.get("reason") == "DeadlineExceeded":
            detail = status.get("message") or "the pod's activeDeadlineSeconds passed"
            return f"killed at its execution_timeout ({detail})"
    base = _base_status(pod) or {}
    term = (base.get("state") or {}).get("terminated") or {}
    if p in ("Failed", "Succeeded") and term:
        code = term.get("exitCode")
        if term.get("reason") == "OOMKilled":
            limit = memory_limit(pod)
            return f"OOMKilled, memory limit {limit}" if limit else "OOMKilled, no memory limit set"
        if term.get("reason") in ("StartError", "ContainerCannotRun") or code == 128:
            return f"the container could not start: {term.get('message') or term.get('reason')}"
        if code is not None:
            sig = _signal_name(int(code))
            return f"the container exited with code {code}" + (f" ({sig})" if sig else "")
    for s in [*_statuses(pod, "initContainerStatuses"), *_statuses(pod)]:
        waiting = (s.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            msg = waiting.get("message") or ""
            return f"{waiting['reason']}: {msg}" if msg else str(waiting["reason"])
    outcome = ended(pod)
    if outcome is not None and outcome.reason:
        return outcome.reason
    return f"the pod ended ({p})"


def finished_at(pod: dict[str, Any]) -> float | None:
    """Epoch seconds when the pod's containers finished (or it was created), if known."""
    stamps = []
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        fin = ((s.get("state") or {}).get("terminated") or {}).get("finishedAt")
        if fin:
            stamps.append(fin)
    stamp = max(stamps) if stamps else (pod.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
