"""A ``ketch scheduler`` and a ``ketch web`` apart, for the log behaviour suite.

One :class:`LogStack` per combination of executor (local subprocesses, or pods on the
Kubernetes API simulator) and archive (the local folder, or S3: moto in server mode
behind a :class:`~tests.support.tcp_proxy.TcpProxy` the test can cut). The two
processes share the database and the keys that must match (Fernet, try tokens), never
their ``KETCH_HOME``; which log folder each one sees is what the deployment would give it:

- **local executor**: the web reads the scheduler's ``base_log_folder`` (the documented
  limitation: a local try's live file is on the scheduler's machine);
- **Kubernetes, local folder archive**: scheduler, web and pods share the folder (it stands
  for a ReadWriteMany volume);
- **Kubernetes, S3**: the web has a log folder of its own and reads running pods through the
  Kubernetes API and finished tries from S3.

AWS credentials are in the servers' environments and in the pod template's env (the pods'
identity), never passed to local tries (the scheduler ships their logs).

Also here: reading a try's log straight from the archive, the simulator's pod stdout, and
a Server-Sent Events client for ``?follow=true``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ketch.executors.base import TryKey
from ketch.logs.archive.base import log_key
from ketch.worker.task_log import log_path
from tests.support import cleanup
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for
from tests.support.moto_server import DUMMY_CREDENTIALS, REGION, MotoProcess, s3_client
from tests.support.tcp_proxy import TcpProxy

LOCAL = "local"
KUBERNETES = "kubernetes"
FOLDER = "folder"
S3 = "s3"
BUCKET = "ketch-logs"
AWS_CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_CHUNK = re.compile(r"(\d{16})\.chunk")


@dataclass(frozen=True)
class Combo:
    executor: str
    archive: str
    json_format: bool = False

    @property
    def id(self) -> str:
        name = f"{'k8s' if self.executor == KUBERNETES else 'local'}-{self.archive}"
        return name + ("-json" if self.json_format else "")


@dataclass
class SseResult:
    """What a ``?follow=true`` reader received: the log text and the ``end`` event."""

    events: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(data for event, data in self.events if event == "log")

    @property
    def end(self) -> str | None:
        ends = [data for event, data in self.events if event == "end"]
        return ends[-1] if ends else None


def read_sse(url: str, timeout: float = 90.0, result: SseResult | None = None) -> SseResult:
    """Follow ``url`` (an SSE stream) to its end; events are parsed as the spec says
    (``data:`` lines joined with newlines, one event per blank line)."""
    result = result or SseResult()
    deadline = time.monotonic() + timeout
    try:
        headers = {"Accept": "text/event-stream"}
        with (
            httpx.Client(timeout=httpx.Timeout(30.0)) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            result.status = response.status_code
            if response.status_code != 200:
                response.read()
                result.error = response.text
                return result
            event = "message"
            data: list[str] = []
            for line in _lines(response):
                if time.monotonic() > deadline:
                    result.error = f"still streaming after {timeout}s"
                    return result
                if line == "":
                    if data:
                        result.events.append((event, "\n".join(data)))
                    event, data = "message", []
                    if result.end is not None:
                        return result
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _lines(response: httpx.Response) -> Iterator[str]:
    """The lines of an SSE body. ketch writes ``\\n`` only; not httpx's ``iter_lines``,
    which also splits on characters a log may hold (``\\x1c``, U+2028...)."""
    pending = b""
    for chunk in response.iter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode("utf-8")


class Follower:
    """A ``?follow=true`` reader on a thread of its own."""

    def __init__(self, url: str, timeout: float = 90.0) -> None:
        self.result = SseResult()
        self._thread = threading.Thread(
            target=read_sse, args=(url, timeout, self.result), daemon=True
        )
        self._thread.start()

    def join(self, timeout: float = 90.0) -> SseResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.result.error = self.result.error or f"follower still running after {timeout}s"
        return self.result


def decode_json_stdout(data: bytes) -> bytes:
    """The plain bytes a pod's JSON-lines stdout stands for; every line must be a record
    of the try (``message`` with ``\\udcXX`` for bytes that are not UTF-8, ``partial``
    for a piece that does not end its line)."""
    out = bytearray()
    for line in data.splitlines():
        record = json.loads(line)
        missing = {"timestamp", "level", "dag_id", "run_id", "task_id", "try_number"} - set(record)
        assert not missing, f"a stdout record without {missing}: {line!r}"
        out += record["message"].encode("utf-8", "surrogateescape")
        if not record.get("partial"):
            out += b"\n"
    return bytes(out)


def join_chunks(chunks: dict[int, bytes]) -> bytes:
    """A log from its S3 chunks (offset -> bytes): overlaps are used once; a gap is an
    error (a finished log has none)."""
    out = bytearray()
    for offset in sorted(chunks):
        data = chunks[offset]
        if offset > len(out):
            raise AssertionError(f"gap in the archived log: {len(out)}..{offset}")
        overlap = len(out) - offset
        if data[:overlap] != out[offset:]:
            raise AssertionError(f"chunk at {offset} disagrees with the bytes before it")
        out += data[overlap:]
    return bytes(out)


class LogStack:
    """The processes and peers of one combination (see the module docstring)."""

    def __init__(
        self,
        combo: Combo,
        root: Path,
        dags_source: str,
        *,
        sim: Any = None,
        moto: MotoProcess | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        from cryptography.fernet import Fernet

        self.combo = combo
        self.root = root
        self.sim = sim
        self.moto = moto
        self.namespace: str | None = None
        self.prefix = f"{combo.id}-{secrets.token_hex(3)}"
        dags = root / "dags"
        dags.mkdir(parents=True)
        (dags / "logt_dags.py").write_text(dags_source)
        shared = root / "shared"
        shared.mkdir()
        self.scheduler_logs = shared / "logs" if combo.archive == FOLDER else root / "sched_logs"
        if combo.executor == LOCAL:
            self.web_logs = self.scheduler_logs  # the documented limitation
        elif combo.archive == FOLDER:
            self.web_logs = self.scheduler_logs  # the shared volume
        else:
            self.web_logs = root / "web_logs"  # nothing of the scheduler's
        self.web_logs.mkdir(parents=True, exist_ok=True)
        self.scheduler_logs.mkdir(parents=True, exist_ok=True)
        # tries reach the execution API through a proxy: a test holds a try queued with it
        self.exec_proxy: TcpProxy | None = None
        self.s3_proxy: TcpProxy | None = None
        port = _free_port()
        self.exec_proxy = TcpProxy(port)
        common = {
            "KETCH__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "KETCH__API_AUTH__JWT_SECRET": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "KETCH__CORE__EXECUTION_API_SERVER_URL": (
                f"http://127.0.0.1:{self.exec_proxy.port}/execution"
            ),
            "KETCH__LOGGING__CHUNK_INTERVAL_SECONDS": "0.5",
            "KETCH__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "0.5",
            # no test variable is passed to local tries (AWS credentials above all)
            "KETCH__CORE__TASK_ENV_PASSTHROUGH": "[]",
            **({"KETCH__LOGGING__JSON_FORMAT": "true"} if combo.json_format else {}),
            **(extra or {}),
        }
        if combo.archive == S3:
            assert moto is not None
            self.s3_proxy = TcpProxy(moto.port)
            s3_client(moto.url).create_bucket(
                Bucket=f"{BUCKET}-{self.prefix}",
                CreateBucketConfiguration={"LocationConstraint": REGION},
            )
            self.bucket = f"{BUCKET}-{self.prefix}"
            common.update(
                {
                    "KETCH__LOGGING__REMOTE_LOGGING": "true",
                    "KETCH__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{self.bucket}/{self.prefix}",
                    "KETCH__LOGGING__S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_proxy.port}",
                    "KETCH__LOGGING__S3_REGION": REGION,
                    **DUMMY_CREDENTIALS,
                }
            )
        db_url = f"sqlite:///{shared / 'ketch.db'}"
        self.scheduler_env = KetchEnv(
            home=root / "scheduler_home",
            db_url=db_url,
            dags_folder=dags,
            port=port,
            extra={**common, "KETCH__LOGGING__BASE_LOG_FOLDER": str(self.scheduler_logs)},
        )
        if combo.executor == KUBERNETES:
            from tests.support.kube_env import use_kubernetes

            assert sim is not None
            self.namespace = use_kubernetes(self.scheduler_env, sim, root)
        web_extra = {
            **self.scheduler_env.extra,
            "KETCH__LOGGING__BASE_LOG_FOLDER": str(self.web_logs),
        }
        self.web_env = KetchEnv(
            home=root / "web_home", db_url=db_url, dags_folder=dags, port=port, extra=web_extra
        )
        self.api = Api(self.web_env.base_url)
        self.scheduler: KetchProcess | None = None
        self.web: KetchProcess | None = None
        self.processes: list[KetchProcess] = []
        self.runs: dict[str, str] = {}  # dag_id -> run_id of a finished run, for later tests
        self.finished: list[TryKey] = []  # tries whose archived log a test checked

    # -- processes -------------------------------------------------------------------------

    def _start(self, env: KetchEnv, command: str) -> KetchProcess:
        name = f"{command}-{len(self.processes) + 1}"
        process = KetchProcess(env, command, name=name).start()
        assert process.proc is not None
        # the stack lives for the whole module: not one test's leftovers
        cleanup.spare(process.proc.pid)
        self.processes.append(process)
        return process

    def start(self) -> LogStack:
        # one after the other: two first migrations of a fresh SQLite file at once fail
        # (/tmp/log_suite_bugs.md #5)
        self.web = self._start(self.web_env, "web")
        try:
            wait_for(self.api.healthy, 60, 0.05, f"{self.combo.id}: ketch web")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None
        self.start_scheduler()
        return self

    def start_scheduler(self) -> None:
        self.scheduler = self._start(self.scheduler_env, "scheduler")

    def restart_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.stop()
        self.start_scheduler()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for proxy in (self.exec_proxy, self.s3_proxy):
            if proxy is not None:
                proxy.close()

    def output(self, limit: int = 6000) -> str:
        return "\n".join(f"--- ketch {p.name} ---\n{p.output()[-limit:]}" for p in self.processes)

    def cli(
        self,
        *args: str,
        remote: bool = False,
        timeout: float = 120,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """``ketch ARGS`` on the scheduler's machine (its database and log folder), or
        ``remote``: against the web through ``KETCH_API_URL`` (nothing else set)."""
        return subprocess.run(
            [sys.executable, "-m", "ketch", *args],
            env=self.cli_env(remote),
            capture_output=True,
            timeout=timeout,
            input=stdin.encode() if stdin is not None else None,
        )

    def cli_env(self, remote: bool = False) -> dict[str, str]:
        env = self.scheduler_env.environ()
        if remote:
            env = {k: v for k, v in env.items() if not k.startswith("KETCH")}
            env["KETCH_HOME"] = str(self.root / "cli_home")
            env["KETCH_API_URL"] = self.web_env.base_url
        return env

    # -- runs ------------------------------------------------------------------------------

    def trigger(self, dag_id: str) -> str:
        wait_for(lambda: self.api.dag(dag_id), 60, 0.05, f"{dag_id} parsed")
        return str(self.api.trigger(dag_id)["dag_run_id"])

    def wait_finished(self, dag_id: str, run_id: str, timeout: float = 90) -> dict[str, Any]:
        try:
            self.api.wait_run_finished(dag_id, run_id, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None
        return self.api.task_instances(dag_id, run_id)

    def wait_state(self, dag_id: str, run_id: str, task_id: str, states: tuple[str, ...]) -> str:
        def state() -> str | None:
            now = self.api.task_instances(dag_id, run_id)[task_id]["state"]
            return now if now in states else None

        return str(wait_for(state, 60, 0.05, f"{task_id} in {states}"))

    def log_url(self, key: TryKey) -> str:
        return (
            f"{self.web_env.base_url}/api/v1/dags/{key.dag_id}/dagRuns/{key.run_id}"
            f"/taskInstances/{key.task_id}/logs/{key.try_number}"
        )

    def get_log(self, key: TryKey, **params: Any) -> httpx.Response:
        response = self.api.http.get(self.log_url(key), params=params, timeout=60)
        return response

    # -- where the log is ------------------------------------------------------------------

    def live_file(self, key: TryKey) -> Path:
        """The try's live file (the scheduler's machine: local tries and pods alike)."""
        return log_path(self.scheduler_logs, key)

    def s3(self) -> Any:
        assert self.moto is not None
        return s3_client(self.moto.url)  # straight to moto, not through the proxy

    def _s3_objects(self, prefix: str) -> dict[str, bytes]:
        client = self.s3()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = client.get_object(Bucket=self.bucket, Key=obj["Key"])[
                    "Body"
                ].read()
        return found

    def archived(self, key: TryKey) -> bytes | None:
        """The try's log as the archive holds it (read without ketch's reader)."""
        if self.combo.archive == FOLDER:
            path = log_path(self.scheduler_logs, key)
            return path.read_bytes() if path.exists() else None
        prefix = f"{self.prefix}/{log_key(key)}/"
        objects = self._s3_objects(prefix)
        chunks = {
            int(m[1]): data
            for name, data in objects.items()
            if (m := _CHUNK.fullmatch(name[len(prefix) :]))
        }
        return join_chunks(chunks) if chunks else None

    def archive_complete(self, key: TryKey) -> bool:
        if self.combo.archive == FOLDER:
            return Path(f"{log_path(self.scheduler_logs, key)}.complete").exists()
        prefix = f"{self.prefix}/{log_key(key)}/"
        return any(name.endswith("complete.json") for name in self._s3_objects(prefix))

    def wait_archived(self, key: TryKey, timeout: float = 30) -> bytes:
        """The archived log once it is marked complete."""
        wait_for(lambda: self.archive_complete(key), timeout, 0.1, f"{key} archived complete")
        data = self.archived(key)
        assert data is not None
        if key not in self.finished:
            self.finished.append(key)  # the restart test checks it is left as it is
        return data

    def archive_bytes(self) -> bytes:
        """Every byte of every object/file of this stack's archive (to look for secrets)."""
        if self.combo.archive == FOLDER:
            return b"".join(
                p.read_bytes() for p in sorted(self.scheduler_logs.rglob("*")) if p.is_file()
            )
        return b"".join(self._s3_objects(f"{self.prefix}/").values())

    # -- pods ------------------------------------------------------------------------------

    def pod_name(self, key: TryKey) -> str:
        from ketch.executors.kubernetes.pod import pod_name

        return pod_name(key)

    def pod_exists(self, key: TryKey) -> bool:
        assert self.sim is not None and self.namespace is not None
        return self.sim.pod(self.namespace, self.pod_name(key)) is not None

    def delete_pod(self, key: TryKey) -> None:
        """Delete the try's pod now, through the Kubernetes API (as kubectl would)."""
        assert self.sim is not None and self.namespace is not None
        url = f"{self.sim.url}/api/v1/namespaces/{self.namespace}/pods/{self.pod_name(key)}"
        response = httpx.delete(url, params={"gracePeriodSeconds": "0"}, timeout=10)
        assert response.status_code in (200, 202, 404), response.text

    def _runtimes(self, key: TryKey) -> list[Any]:
        """The simulator's runtimes of the try's pod (kept after the pod is deleted)."""
        assert self.sim is not None and self.namespace is not None
        name = self.pod_name(key)
        cluster = self.sim._cluster
        with cluster.cond:
            return [
                rt
                for rt in cluster.runtimes.values()
                if rt.namespace == self.namespace and rt.name == name
            ]

    def kill_container_processes(self, key: TryKey) -> list[int]:
        """SIGKILL every process of the pod's ``base`` container but its main one, in any
        session (the log pump): what a cgroup-wide OOM kill does besides the main process."""
        import psutil

        killed = []
        for rt in self._runtimes(key):
            proc = rt.procs.get("base")
            if proc is None or proc.poll() is not None:
                continue
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
                    killed.append(child.pid)
        assert killed, f"no process of the pod of {key} besides its main one"
        return killed

    def pod_stdout(self, key: TryKey) -> bytes:
        """Everything the try's pod wrote to its stdout, also after the pod was deleted
        (the simulator keeps each pod's runtime; read here, as ``kubectl logs`` would have)."""
        out = b""
        for rt in self._runtimes(key):
            for logs in (rt.previous_logs, rt.logs):
                buf = logs.get("base")
                if buf is not None:
                    with buf.cond:
                        out += bytes(buf.data)
        return out


def _free_port() -> int:
    from tests.support.postgres import free_port

    return free_port()


@contextlib.contextmanager
def moto_process() -> Iterator[MotoProcess]:
    moto = MotoProcess()
    moto.start()
    try:
        yield moto
    finally:
        moto.stop()
