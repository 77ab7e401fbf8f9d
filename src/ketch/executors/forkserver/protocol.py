"""What both sides of the fork server agree on: the default target, the preload list
and its environment variable, and how an event is written (one JSON line).

Stdlib only: the server imports it before anything else, and so does every try.
"""

from __future__ import annotations

import json
import os
from typing import Any

DEFAULT_TARGET = "ketch.worker.runner:main"
PRELOAD_ENV = "KETCH_FORKSERVER_PRELOAD"
DEFAULT_PRELOAD = [
    "json",
    "http.client",
    "argparse",
    "traceback",
    "subprocess",
    "psutil",
    "ketch.exceptions",
    "ketch.states",
    "ketch.worker.client",
    "ketch.worker.task_log",
    "ketch.logs.pump",
    "ketch.logs.masking",
    "ketch.worker.runner",
    "ketch.authoring",
    "ketch.authoring.loader",
    "ketch.authoring.context",
    "ketch.authoring.tasks",
    "ketch",
    # A templated field imports jinja2 (~40 ms): once here rather than in every try.
    "jinja2.sandbox",
    "jinja2.nativetypes",
    "ketch.authoring.templating",
]


def write_event(fd: int, event: dict[str, Any]) -> None:
    data = (json.dumps(event) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
