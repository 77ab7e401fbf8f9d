"""Fault injection settings for the Kubernetes API simulator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    """What can go wrong. Every field can be changed while the simulator runs.

    API faults apply to Kubernetes API requests (not to the ``/_sim`` admin endpoints):

    - ``api_error_rate``: fraction (0..1) of requests answered with an error status, chosen at
      random among ``api_error_codes`` (429 TooManyRequests with ``Retry-After``, 500 InternalError,
      503 ServiceUnavailable ...). The request has no effect.
    - ``api_timeout_rate``: fraction of requests that hang ``api_timeout_seconds`` and then have their
      connection closed without an answer. With ``api_timeout_after_commit`` a mutating request
      (create/delete) takes effect first and only the answer is lost (the client then sees 409
      AlreadyExists / 404 NotFound when it retries).
    - ``api_fault_verbs``: restrict error and timeout faults to these verbs (``create``, ``get``,
      ``list``, ``watch``, ``delete``); empty means every verb.
    - ``latency_seconds``: added to every request before it is handled (e.g. ``0.02``).
    - ``watch_drop_after_seconds``: every watch connection is closed abruptly after that long.
    - ``forbidden``: RBAC denials, as ``"verb resource"`` strings, e.g. ``{"create pods",
      "get pods/log", "list events"}``: such requests get 403 Forbidden naming verb and resource.

    Pod faults select pods with a Kubernetes label selector string (``""`` selects every pod,
    ``None`` disables the fault):

    - ``image_pull_failures``: images that cannot be pulled; the pod stays Pending with the
      container waiting in ``ErrImagePull`` then ``ImagePullBackOff``, with ``Failed``/``BackOff``
      Events. Removing the image from the set lets the pull succeed.
    - ``unschedulable_selector``: matching pods stay Pending with condition PodScheduled=False,
      reason Unschedulable, and a ``FailedScheduling`` Event (until the fault is cleared).
    - ``oom_kill_selector``: matching pods' main container is killed ``oom_after_seconds`` after it
      started: terminated reason ``OOMKilled``, exit code 137, pod Failed.
    - ``evict_selector``: matching running pods are evicted ``evict_after_seconds`` after they
      started: processes killed, pod phase Failed with status reason ``Evicted``.
    """

    api_error_rate: float = 0.0
    api_error_codes: tuple[int, ...] = (429, 500)
    api_timeout_rate: float = 0.0
    api_timeout_seconds: float = 2.0
    api_timeout_after_commit: bool = False
    api_fault_verbs: frozenset[str] = field(default_factory=frozenset)
    latency_seconds: float = 0.0
    watch_drop_after_seconds: float | None = None
    forbidden: frozenset[str] = field(default_factory=frozenset)
    image_pull_failures: frozenset[str] = field(default_factory=frozenset)
    unschedulable_selector: str | None = None
    oom_kill_selector: str | None = None
    oom_after_seconds: float = 0.0
    evict_selector: str | None = None
    evict_after_seconds: float = 0.0
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["api_error_codes"] = list(self.api_error_codes)
        out["forbidden"] = sorted(self.forbidden)
        out["api_fault_verbs"] = sorted(self.api_fault_verbs)
        out["image_pull_failures"] = sorted(self.image_pull_failures)
        return out

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied (JSON values; unknown names raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        values = dict(changes)
        if "api_error_codes" in values:
            values["api_error_codes"] = tuple(int(c) for c in values["api_error_codes"])
        for key in ("forbidden", "image_pull_failures", "api_fault_verbs"):
            if key in values:
                values[key] = frozenset(values[key] or ())
        return dataclasses.replace(self, **values)
