"""A try whose log cannot be written fails with a reason that says so (issue 7).

The log file is a symlink to /dev/full, where every write fails with ENOSPC as on a
full disk; the try must neither crash with an unrelated error, nor hang, nor end
without reporting: its error reaches the task instance and retries work as usual.
"""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.config import get_settings
from ketch.executors.base import LaunchRequest, TryEnded
from ketch.executors.local import LocalExecutor
from ketch.worker import task_log
from ketch.worker.task_log import log_path
from tests.unit._worker_support import ApiServer, DagSetup, api_server, api_url, dag_setup  # noqa: F401 (fixtures)

ENOSPC = "[Errno 28] No space left on device"

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@pytest.fixture
def executor(api_url: str) -> Iterator[tuple[LocalExecutor, queue.Queue[TryEnded]]]:
    events: queue.Queue[TryEnded] = queue.Queue()
    ex = LocalExecutor(get_settings())
    ex.start(events.put)
    yield ex, events
    ex.stop()


@pytest.fixture
def clean_problem() -> Iterator[None]:
    task_log._problem = None
    yield
    task_log._problem = None


def full_log(request: LaunchRequest) -> Path:
    """Point the try's log file at /dev/full."""
    path = log_path(get_settings().log_folder, request.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/full")
    return path


def test_local_try_with_a_full_log_disk_fails_saying_so(
    executor: tuple[LocalExecutor, queue.Queue[TryEnded]], dag_setup: DagSetup
) -> None:
    ex, events = executor
    once = dag_setup.queue_try("produce", max_tries=1)
    path = full_log(once)
    ex.launch(once)
    ended = events.get(timeout=30)
    assert ended.exit_code == 1
    ti = dag_setup.ti(once.ti_id)
    assert ti.state == "up_for_retry"  # a retry remains: retries as usual
    assert ti.error == f"cannot write the task log: {ENOSPC} ({path})"
    assert dag_setup.xcom("produce") is None  # the task did not run blind


def test_local_try_whose_log_cannot_be_opened_fails_saying_so(
    executor: tuple[LocalExecutor, queue.Queue[TryEnded]], dag_setup: DagSetup
) -> None:
    ex, events = executor
    request = dag_setup.queue_try("bash")
    path = log_path(get_settings().log_folder, request.key)
    path.parent.parent.mkdir(parents=True)
    path.parent.write_text("a file where the log directory should be")
    ex.launch(request)
    assert events.get(timeout=30).exit_code == 1
    ti = dag_setup.ti(request.ti_id)
    assert ti.state == "failed"
    assert ti.error is not None and ti.error.startswith("cannot write the task log: [Errno")
    assert ti.error.endswith(f"({path})")


def test_pod_try_with_a_full_log_disk_fails_and_keeps_its_stdout(
    api_url: str, dag_setup: DagSetup, tmp_path: Path
) -> None:
    request = dag_setup.queue_try("bash")
    log_file = tmp_path / "pod.log"
    log_file.symlink_to("/dev/full")
    key = request.key
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ketch.worker.runner",
            key.dag_id,
            key.task_id,
            key.run_id,
            "--try",
            str(key.try_number),
            "--log-file",
            str(log_file),
        ],
        env={**os.environ, "KETCH_TRY_TOKEN": request.token, "KETCH_EXECUTION_API_URL": api_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    expected = f"cannot write the task log: {ENOSPC} ({log_file})"
    assert expected in done.stdout  # kubectl logs still shows the try's output
    ti = dag_setup.ti(request.ti_id)
    assert (ti.state, ti.error) == ("failed", expected)


def test_guarded_output_notes_the_first_failure_and_never_raises(
    clean_problem: None, tmp_path: Path
) -> None:
    fd = os.open("/dev/full", os.O_WRONLY)
    raw = task_log._GuardedFileIO(fd, str(tmp_path / "a.log"))
    assert raw.write(b"hello\n") == 6
    assert raw.write(b"again\n") == 6
    assert task_log.write_problem() == f"cannot write the task log: {ENOSPC} ({tmp_path}/a.log)"
    os.close(fd)
