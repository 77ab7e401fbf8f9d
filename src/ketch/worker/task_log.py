"""Where a try's log lives, and the tee a try uses when it runs in a pod.

One path rule for everyone: the local executor writes the file, the REST API
and the log archive read it. The tee works on file descriptors, not on
``sys.stdout``, so output of C extensions and of child processes (a bash task)
is captured too.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ketch.executors.base import TryKey


def log_path(settings_log_folder: Path, key: TryKey) -> Path:
    """``{log_folder}/dag_id=D/run_id=R/task_id=T/attempt=N.log`` (Airflow's layout)."""
    return (
        Path(settings_log_folder)
        / f"dag_id={key.dag_id}"
        / f"run_id={key.run_id}"
        / f"task_id={key.task_id}"
        / f"attempt={key.try_number}.log"
    )


def _pump(read_fd: int, targets: list[int]) -> None:
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        for fd in targets:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
    os.close(read_fd)


@contextmanager
def tee_output(path: Path) -> Iterator[None]:
    """Send fds 1 and 2 to their old target and appended to ``path`` until the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved_out = os.dup(1)
    saved_err = os.dup(2)
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(
        target=_pump, args=(read_fd, [saved_out, log_fd]), name="ketch-log-tee", daemon=True
    )
    pump.start()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        pump.join(timeout=5)  # children still holding the pipe must not hang the exit
        os.close(saved_err)
        if not pump.is_alive():
            os.close(saved_out)
            os.close(log_fd)
