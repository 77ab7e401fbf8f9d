"""The parse child: ``python -m ketch.dag_processing.parse_file FILE DAGS_FOLDER``.

Imports one DAG file and prints one JSON object on stdout:
``{"ok": true, "dags": [<SerializedDag>...]}`` or ``{"ok": false, "error": <traceback>,
"error_type": <exception class>, "error_message": <its first line>, "lineno": <line>}``,
``lineno`` being the line of the traceback's last frame in the DAG file itself (or the
line of a syntax error in it; null when no frame is in the file).
Running each file in its own process keeps a slow, crashing or memory-hungry
file away from the scheduler, and lets the processor kill it on timeout.
Anything the DAG file itself prints goes to stderr so it cannot corrupt the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def check_executor_configs(dags: list[Any]) -> None:
    """With the Kubernetes executor, a task's executor_config (and its own pod template
    file) must be valid at parse time: an import error naming the task and the field
    beats a try that fails, or a pod that never starts, much later."""
    from ketch.authoring._defaults import default

    if default("executor") != "kubernetes":
        return
    from ketch.exceptions import DagDefinitionError
    from ketch.executors.kubernetes.pod import (
        PodConfigError,
        load_template,
        normalise_executor_config,
    )

    for dag in dags:
        for task in dag.tasks.values():
            try:
                config = normalise_executor_config(task.executor_config)
                if config.get("pod_template_file"):
                    load_template(config["pod_template_file"])
            except PodConfigError as exc:
                raise DagDefinitionError(
                    f"DAG {dag.dag_id!r}, task {task.task_id!r}: {exc}"
                ) from exc


def parse(fileloc: str, dags_folder: str) -> dict[str, Any]:
    """Import ``fileloc`` and serialize its DAGs; any failure becomes ``{"ok": False}``."""
    try:
        from ketch.authoring.loader import collect_dags
        from ketch.authoring.serialize import serialize_dag

        dags = collect_dags(fileloc)
        check_executor_configs(dags)
        serialized = [
            serialize_dag(d, Path(dags_folder)).model_dump(mode="json", by_alias=True) for d in dags
        ]
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from a DAG file are errors too
        return {"ok": False, "error": traceback.format_exc(), **error_summary(exc, fileloc)}
    return {"ok": True, "dags": serialized}


MAX_MESSAGE = 300


def error_summary(exc: BaseException, fileloc: str) -> dict[str, Any]:
    """The exception's class, the first line of its message, and the line of the DAG file
    it came from: the last frame of its traceback in that file, else (a syntax error in
    the file itself) the line the compiler names."""
    target = os.path.realpath(fileloc)

    def in_file(filename: str | None) -> bool:
        return bool(filename) and os.path.realpath(str(filename)) == target

    lineno: int | None = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if in_file(frame.filename):
            lineno = frame.lineno
    if isinstance(exc, SyntaxError):
        if lineno is None and in_file(exc.filename):
            lineno = exc.lineno
        message = str(exc.msg or "")
    else:
        message = str(exc)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(lines) > 1:
        first += " ..."
    if len(first) > MAX_MESSAGE:
        first = first[: MAX_MESSAGE - 3] + "..."
    return {"error_type": type(exc).__name__, "error_message": first, "lineno": lineno}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ketch.dag_processing.parse_file FILE DAGS_FOLDER", file=sys.stderr)
        return 2
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the DAG file's own output (even from C code) goes to stderr
    sys.stdout = sys.stderr
    result = parse(argv[0], argv[1])
    out.write(json.dumps(result))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
