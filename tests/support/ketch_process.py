"""Run real ketch processes (`ketch standalone`, `ketch scheduler`, `ketch web`) for end-to-end tests.

Each process gets the test's KETCH_HOME, database URL, DAGs folder and a free port,
and writes its output to a file the test can show when something fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.postgres import free_port


@dataclass
class KetchEnv:
    """The settings shared by every ketch process of one test."""

    home: Path
    db_url: str
    dags_folder: Path
    port: int = field(default_factory=free_port)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KETCH")}
        env.update(
            {
                "KETCH_HOME": str(self.home),
                "KETCH__DATABASE__SQL_ALCHEMY_CONN": self.db_url,
                "KETCH__CORE__DAGS_FOLDER": str(self.dags_folder),
                "KETCH__API__PORT": str(self.port),
                "KETCH__CORE__DAGS_ARE_PAUSED_AT_CREATION": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra)
        # Tries get a minimal environment: the test's own variables (E2E_MARKS...) are
        # passed through by name, as a user would with [core] task_env_passthrough.
        own = sorted(k for k in self.extra if not k.startswith("KETCH"))
        if own:
            env.setdefault("KETCH__CORE__TASK_ENV_PASSTHROUGH", json.dumps(own))
        return env


class KetchProcess:
    def __init__(self, env: KetchEnv, *args: str, name: str | None = None) -> None:
        self.env = env
        self.args = args
        self.name = name or args[0]
        self.log_path = env.home / f"{self.name}.{int(time.time() * 1000)}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> KetchProcess:
        self.env.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ketch", *self.args],
                env=self.env.environ(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """Kill the server process only (not its process group: tries run in their own sessions)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (and SIGCONT: a stopped process acts on nothing else), SIGKILL to its
        process group if it does not exit in time; then whatever is left in its group.
        Its task tries run in their own sessions: the ``ketch_home`` fixture ends those
        (``tests.support.cleanup``)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid)
                self.proc.wait(5)
        _kill_group(self.proc.pid)
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Api:
    """A thin client over ketch's REST API for tests."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def healthy(self) -> bool:
        try:
            return self.http.get("/api/v1/health").status_code == 200
        except httpx.HTTPError:
            return False

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        r = self.http.get(f"/api/v1/dags/{dag_id}")
        return r.json() if r.status_code == 200 else None

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.http.post(f"/api/v1/dags/{dag_id}/dagRuns", json={"conf": conf or {}})
        assert r.status_code in (200, 201), r.text
        return dict(r.json())

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/dags/{dag_id}/dagRuns/{run_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        r = self.http.get(f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert r.status_code == 200, r.text
        body = r.json()
        items = body["task_instances"] if isinstance(body, dict) else body
        return {ti["task_id"]: ti for ti in items}

    def wait_run_finished(self, dag_id: str, run_id: str, timeout: float = 60) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return dict(wait_for(finished, timeout, 0.1, f"run {dag_id}/{run_id} to finish"))


@contextmanager
def running(env: KetchEnv, *args: str) -> Iterator[KetchProcess]:
    """Start a ketch server process and stop it afterwards, printing its output on failure."""
    process = KetchProcess(env, *args).start()
    try:
        yield process
    finally:
        process.stop()
        # pytest shows a test's captured stderr only when it fails: no noise otherwise.
        sys.stderr.write(f"--- output of ketch {' '.join(args)} ---\n{process.output()[-20000:]}\n")


@contextmanager
def standalone_with_dag(
    home: Path, tmp_path: Path, filename: str, source: str, dag_id: str
) -> Iterator[Api]:
    """``ketch standalone`` (SQLite, local executor) over a folder holding one DAG file,
    once the web answers and ``dag_id`` is parsed: the start of every end-to-end test."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / filename).write_text(source)
    env = KetchEnv(home=home, db_url=f"sqlite:///{home / 'e2e.db'}", dags_folder=folder)
    api = Api(env.base_url)
    with running(env, "standalone"):
        wait_for(api.healthy, 60, 0.05, "web server")
        wait_for(lambda: api.dag(dag_id), 60, 0.1, f"{dag_id} parsed")
        yield api
