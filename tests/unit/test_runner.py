"""The task-try runner as a pod runs it (``python -m ketch.worker.runner``), its pieces,
and the stdlib execution API client's retries."""

# ruff: noqa: F811  (pytest fixtures imported from _worker_support are parameters here)

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from ketch.db.models import TaskInstance
from ketch.exceptions import TaskTimeout
from ketch.executors.base import LaunchRequest
from ketch.worker.client import ExecutionApiClient, ExecutionApiError, TryStateConflict
from ketch.worker.runner.entry import parse_args
from ketch.worker.runner.return_values import check_return_value
from ketch.worker.runner.timeout import execution_timeout
from tests.unit._worker_support import DagSetup, api_server, api_url, dag_setup, free_port  # noqa: F401 (fixtures)


def run_pod_style(
    request: LaunchRequest,
    api_url: str,
    tmp_path: Path,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    key = request.key
    argv = [
        sys.executable,
        "-m",
        "ketch.worker.runner",
        key.dag_id,
        key.task_id,
        key.run_id,
        "--try",
        str(key.try_number),
        "--log-file",
        str(tmp_path / "pod.log"),
    ]
    environment = {
        **os.environ,
        "KETCH_TRY_TOKEN": request.token,
        "KETCH_EXECUTION_API_URL": api_url,
        **env,
    }
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=60)


def test_pod_style_try_tees_its_output_and_resolves_the_dags_folder(
    api_url: str,
    dag_setup: DagSetup,
    tmp_path: Path,
) -> None:
    # The pod has the DAGs folder elsewhere: only relative_fileloc is valid there.
    pod_folder = tmp_path / "pod_dags"
    pod_folder.mkdir()
    shutil.move(dag_setup.fileloc, pod_folder / dag_setup.fileloc.name)
    request = dag_setup.queue_try("produce")
    done = run_pod_style(request, api_url, tmp_path, KETCH_DAGS_FOLDER=str(pod_folder))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dag=worker_test task=produce" in done.stdout and "producing" in done.stdout
    log = (tmp_path / "pod.log").read_text()
    assert "producing" in log and "task success" in log
    assert dag_setup.ti(request.ti_id).state == "success"
    assert dag_setup.xcom("produce") == {"n": 41}


def test_try_process_never_imports_the_database_or_web_stack(
    api_url: str,
    dag_setup: DagSetup,
    tmp_path: Path,
) -> None:
    request = dag_setup.queue_try("modules")
    done = run_pod_style(request, api_url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dag_setup.xcom("modules") == []


def test_a_try_that_is_not_queued_exits_without_running(
    api_url: str,
    dag_setup: DagSetup,
    tmp_path: Path,
) -> None:
    request = dag_setup.queue_try("produce")
    with Session(dag_setup.engine) as session:
        ti = session.get(TaskInstance, request.ti_id)
        assert ti is not None
        ti.state = "running"  # another process already owns this try
        session.commit()
    done = run_pod_style(request, api_url, tmp_path)
    assert done.returncode == 0
    assert "not running the task" in done.stdout
    assert "producing" not in done.stdout
    assert dag_setup.xcom("produce") is None


def test_failed_try_exits_1_with_the_traceback(
    api_url: str,
    dag_setup: DagSetup,
    tmp_path: Path,
) -> None:
    request = dag_setup.queue_try("boom")
    done = run_pod_style(request, api_url, tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stdout and "ValueError: boom" in done.stdout
    assert dag_setup.ti(request.ti_id).error == "ValueError: boom"


def test_check_return_value() -> None:
    assert check_return_value("t", {"a": [1, 2.5, None]}, 100) is None
    assert check_return_value("t", {1, 2}, 100) is None  # tagged (ketch.worker.serde)
    assert check_return_value("t", None, 100) is None
    assert check_return_value("t", {1, object()}, 100) == (
        "return value of task 't' is not JSON-serialisable: "
        "Object of type object is not JSON serializable"
    )
    assert "not JSON-serialisable" in (check_return_value("t", float("nan"), 100) or "")
    too_big = check_return_value("t", "x" * 200, 100)
    assert (
        too_big
        == "return value of task 't' is 202 bytes of JSON, more than max_xcom_size (100 bytes)"
    )


def test_execution_timeout_raises_in_the_main_thread() -> None:
    with (
        pytest.raises(TaskTimeout, match=r"^execution_timeout of 0.2s exceeded$"),
        execution_timeout(0.2),
    ):
        time.sleep(5)
    with execution_timeout(5):
        pass  # the timer is cancelled when the block ends
    time.sleep(0.01)


def test_parse_args() -> None:
    args = parse_args(["d", "t", "r", "--try", "3", "--log-file", "/tmp/x.log"])
    assert (args.dag_id, args.task_id, args.run_id, args.try_number) == ("d", "t", "r", 3)
    assert args.log_file == Path("/tmp/x.log")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: list[tuple[int, dict[str, object]]] = []
    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.seen.append((self.path, self.headers.get("Authorization")))
        status, body = self.answers.pop(0) if self.answers else (200, {"ok": True})
        data = json.dumps(body).encode()
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0.05")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[tuple[int, type[_Handler]]]:
    port = free_port()
    handler = type("H", (_Handler,), {"answers": [], "seen": []})
    holder: dict[str, http.server.ThreadingHTTPServer] = {}

    def serve_later() -> None:
        time.sleep(0.4)  # the client starts before the server: it must retry
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        holder["server"] = server
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve_later, daemon=True)
    thread.start()
    yield port, handler
    deadline = time.monotonic() + 5
    while "server" not in holder and time.monotonic() < deadline:
        time.sleep(0.05)
    if "server" in holder:
        holder["server"].shutdown()
        holder["server"].server_close()
    thread.join(timeout=5)


def test_client_retries_until_the_server_answers(fake_server: tuple[int, type[_Handler]]) -> None:
    port, handler = fake_server
    handler.answers.extend([(503, {"detail": "restarting"}), (200, {"dag_id": "d"})])
    client = ExecutionApiClient(f"http://127.0.0.1:{port}/execution", "tok", retry_timeout=30)
    assert client.start(1, "h") == {"dag_id": "d"}
    assert handler.seen == [("/execution/try/start", "Bearer tok")] * 2
    handler.answers.append((409, {"detail": "task instance is success"}))
    with pytest.raises(TryStateConflict, match="task instance is success"):
        client.heartbeat()
    handler.answers.append((401, {"detail": "try token expired"}))
    with pytest.raises(ExecutionApiError) as info:
        client.heartbeat()
    assert info.value.status == 401 and not isinstance(info.value, TryStateConflict)
    client.close()


def test_client_follows_retry_after_of_a_503(
    fake_server: tuple[int, type[_Handler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server was unreachable (the back-off grew), then answers 503 while its
    database is down: the client asks again after Retry-After, not the grown back-off."""
    import ketch.worker.client as client_module

    port, handler = fake_server
    handler.answers.extend([(503, {"detail": "database unavailable"})] * 3 + [(200, {"a": 1})])
    sleeps: list[float] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(client_module.time, "sleep", recording_sleep)
    client = ExecutionApiClient(f"http://127.0.0.1:{port}/execution", "tok", retry_timeout=30)
    assert client.start(1, "h") == {"a": 1}
    client.close()
    assert len(handler.seen) == 4
    # The last three sleeps followed a 503: each at most its Retry-After, although the
    # back-off of the connection refusals before the server started had grown past it.
    assert max(sleeps[:-3]) > 0.05 and all(s <= 0.05 for s in sleeps[-3:]), sleeps


def test_client_gives_up_after_the_retry_timeout() -> None:
    client = ExecutionApiClient(f"http://127.0.0.1:{free_port()}/execution", "t", retry_timeout=0.3)
    with pytest.raises(ExecutionApiError, match="unreachable"):
        client.heartbeat()


def test_client_from_env_requires_url_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_TRY_TOKEN", raising=False)
    monkeypatch.setenv("KETCH_EXECUTION_API_URL", "http://127.0.0.1:1/execution")
    with pytest.raises(ExecutionApiError, match="KETCH_TRY_TOKEN"):
        ExecutionApiClient.from_env()
