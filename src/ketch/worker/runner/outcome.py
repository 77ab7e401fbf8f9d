"""How a try ended, the one value every part of the runner passes on: the task produces
it, callbacks read it, the report sends it (``POST /execution/try/finish``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """How the task ended, in the shape ``POST /execution/try/finish`` takes."""

    state: str  # success | failed | skipped | up_for_reschedule
    error: str | None = None
    return_value: Any = None
    has_return_value: bool = False
    follow_task_ids: list[str] | None = None
    # Further XComs by key (encoded like return_value): ``multiple_outputs``.
    xcoms: dict[str, Any] | None = None
    retry: bool = True
    reschedule_date: str | None = None  # ISO 8601, with up_for_reschedule
    kill_children: bool = field(default=False, repr=False)
    # Why the try was stopped (a SIGTERM, its execution_timeout): its log's last line.
    stopped: str | None = field(default=None, repr=False)
    # The instance's name from its map_index_template (ketch.authoring.map_index_template).
    rendered_map_index: str | None = None
