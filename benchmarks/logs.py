"""Task log benchmarks: ``python -m benchmarks.logs [follow|overhead|s3|memory ...] [--quick]``.

Real ``ketch web`` and ``ketch scheduler`` processes (separate, SQLite) run the DAGs of
``benchmarks/dags/logs/``; the Kubernetes executor runs on the API simulator
(``ketch.testing.kube_sim``, pods are local processes), S3 is ``moto.server`` in its own
process behind a counting HTTP proxy (this file) that names the process behind each
request (web, scheduler, pod). Scenarios (all of them without arguments):

- ``follow``: a task prints ``time.time()`` every 50 ms for 10 s; a client follows
  ``GET .../logs/1?follow=true`` (SSE) from the web and, for every line, takes receive
  time - printed time: p50/p95/max, on the local executor (the web reads the live file)
  and on Kubernetes (the web has its own log folder, as in a cluster: it reads the pod's
  log through the API; S3 archive). Target p95 <= 1 s. Then a probe: a follower of a
  try whose pod stays Pending, and the web's Kubernetes API and S3 requests per second
  before it connects, while it is connected, and after it has gone.
- ``overhead``: a task writes 100k lines of ~80 bytes (1% hold one of 3 secrets
  registered with ``secrets_mask.mask_secret``) to stdout (the log pump's pipe, line
  buffered except during a burst: ``ketch.worker.stdout_pacing``), vs the
  same prints to ``os.devnull`` opened line buffered (the same write calls: what the pipe
  and the pump cost) and block buffered (a script's stdout to /dev/null); the task times
  its own writes; local executor, repetitions in alternating order. Target overhead
  <= 10%. Two more targets split the figure: a line-buffered pipe read by ``cat`` (what
  any pipe costs), the same stdout block buffered, and never coalesced (``[logging]
  coalesce_print_bursts = false``). Also the pump's CPU time and when
  it has caught up with the writes.
- ``s3``: S3 requests per try-minute at the default chunking (5 s / 1024 KiB) of a try
  printing a line every 0.1 s and of one that only sleeps, both for 60 s (``--quick``:
  20 s, scaled to a minute), on Kubernetes (pods ship) and on the local executor (the
  scheduler ships).
- ``memory``: a finished try's 200 MB log (in the local folder archive and in S3, 1 MiB
  chunks) is read by three concurrent clients, plain GET then ``follow=true``, while the
  web process's RSS is sampled every 0.2 s: baseline, peak, peak - baseline (should be a
  few MB). Also the S3 requests the web makes for it and the read throughput. Each client
  stops after 300 s (``--quick``: 60 s) and reports how much it read. From S3 a reader
  streams the finished log with one GET per 1 MiB chunk and no listing (the archive keeps
  a complete log's listing: the warm-up request made it); it used to list all the chunks
  and GET 64 KiB for every 64 KiB read, about 0.3 MB/s per client.

Results: a table on stdout and ``benchmarks/results/logs.json`` (a scenario run alone
replaces only its own entry). Measurements, never assertions: the machine's load average
is recorded with each scenario (a small shared machine makes them noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import psutil
from tests.support.ketch_process import Api, KetchEnv, KetchProcess, wait_for
from tests.support.moto_server import DUMMY_CREDENTIALS, REGION, MotoProcess, s3_client

RESULTS = Path(__file__).parent / "results"
LOG_DAGS = Path(__file__).parent / "dags" / "logs"
BUCKET = "ketch-bench-logs"
SCENARIOS = ("follow", "overhead", "s3", "memory")
MACHINE_NOTE = (
    "2 CPU cores shared with other engineers running test suites at the same time: "
    "figures are noisy (see load_avg_before/after)"
)


# -- a counting proxy in front of moto ----------------------------------------------------


@dataclass(frozen=True)
class S3Request:
    at: float
    client: str  # web, scheduler, pod (a try or its log pump), bench, ?
    method: str
    kind: str  # PUT, GET, LIST, HEAD, DELETE, ...
    path: str  # path and query, unquoted
    status: int

    @property
    def detail(self) -> str:
        """``PUT chunk``, ``GET complete.json``, ``LIST``, ``HEAD bucket``..."""
        path = self.path.partition("?")[0]
        name = path.rsplit("/", 1)[-1]
        if self.kind in ("LIST", "DELETE"):
            return self.kind
        if name.endswith(".chunk") or name == "complete.json":
            return f"{self.kind} {'chunk' if name.endswith('.chunk') else name}"
        return f"{self.kind} {'bucket' if path.strip('/') == BUCKET else 'other'}"


def _kind(method: str, path: str) -> str:
    query = path.partition("?")[2]
    if method == "GET":
        return "LIST" if "list-type=" in query else "GET"
    if method == "POST" and "delete" in query:
        return "DELETE"
    return method


def _client_of(peer_port: int, server_port: int) -> str:
    """The process behind a client socket on this machine, by its command line."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if (
                conn.laddr
                and conn.raddr
                and conn.laddr.port == peer_port
                and conn.raddr.port == server_port
                and conn.pid
            ):
                if conn.pid == os.getpid():
                    return "bench"
                args = psutil.Process(conn.pid).cmdline()
                if "task" in args and "run" in args:
                    return "pod"
                for name in ("scheduler", "web", "standalone"):
                    if name in args:
                        return name
                return Path(args[0]).name if args else "?"
    except (psutil.Error, OSError):
        pass
    return "?"


class CountingProxy:
    """An HTTP/1.1 reverse proxy to ``127.0.0.1:target_port`` that records every request
    (keep-alive, one upstream connection per client connection)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.records: list[S3Request] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None
            client = ""

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                length = self.headers.get("Content-Length")
                if length is not None:
                    return self.rfile.read(int(length))
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                return None

            def _forward(self) -> None:
                if not self.client:
                    self.client = _client_of(self.client_address[1], self.server.server_port)
                body = self._body()
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                for attempt in range(2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(
                            "127.0.0.1", proxy.target_port, timeout=120
                        )
                    try:
                        self.upstream.request(self.command, self.path, body=body, headers=headers)
                        resp = self.upstream.getresponse()
                        break
                    except (OSError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None
                        if attempt:
                            raise
                proxy.record(self.client, self.command, self.path, resp.status)
                out_headers = [
                    (k, v)
                    for k, v in resp.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection")
                ]
                length = resp.getheader("Content-Length")
                data = b""
                if length is None and self.command != "HEAD":
                    data = resp.read()
                    out_headers.append(("Content-Length", str(len(data))))
                self.send_response_only(resp.status, resp.reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    resp.read()
                elif length is None:
                    self.wfile.write(data)
                else:
                    while piece := resp.read(65536):
                        self.wfile.write(piece)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def record(self, client: str, method: str, path: str, status: int) -> None:
        path = unquote(path)
        with self.lock:
            self.records.append(
                S3Request(time.time(), client, method, _kind(method, path), path, status)
            )

    def since(self, mark: int) -> list[S3Request]:
        with self.lock:
            return self.records[mark:]

    def mark(self) -> int:
        with self.lock:
            return len(self.records)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def count(records: list[S3Request], *, by: str = "kind") -> dict[str, int]:
    return dict(sorted(Counter(getattr(r, by) for r in records).items()))


# -- the processes ------------------------------------------------------------------------


class Bench:
    """Shared resources, started on first use: temp folder, simulator, moto, proxy."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="ketch-bench-logs-"))
        self.counter = 0
        self._sim: Any = None
        self._moto: MotoProcess | None = None
        self._proxy: CountingProxy | None = None
        # moto's dummy credentials for every process: ketch's servers, pods (they inherit
        # the simulator's environment, i.e. ours) and this one
        os.environ.update(DUMMY_CREDENTIALS)

    @property
    def sim(self) -> Any:
        if self._sim is None:
            from ketch.testing.kube_sim import KubeSimulator

            self._sim = KubeSimulator()
            self._sim.start()
        return self._sim

    @property
    def moto(self) -> MotoProcess:
        if self._moto is None:
            self._moto = MotoProcess()
            self._moto.start()
            client = s3_client(self._moto.url)
            client.create_bucket(
                Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
        return self._moto

    @property
    def proxy(self) -> CountingProxy:
        if self._proxy is None:
            self._proxy = CountingProxy(self.moto.port)
        return self._proxy

    def s3(self) -> Any:
        """A client straight to moto (not counted)."""
        return s3_client(self.moto.url)

    def close(self) -> None:
        if self._sim is not None:
            self._sim.stop()  # first: its pods would still ship
        if self._proxy is not None:
            self._proxy.close()
        if self._moto is not None:
            self._moto.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Stack:
    env: KetchEnv
    web_env: KetchEnv
    folder: Path
    api: Api
    namespace: str | None
    s3_prefix: str | None
    web: KetchProcess | None = None
    scheduler: KetchProcess | None = None

    def log_path(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        return (
            f"/api/v1/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/logs/{try_number}"
        )

    def start(self, scheduler: bool = True) -> None:
        self.web = KetchProcess(self.web_env, "web").start()
        wait_for(self.api.healthy, 90, 0.05, "web up")
        if scheduler:
            self.scheduler = KetchProcess(self.env, "scheduler").start()

    def stop(self) -> None:
        for process in (self.scheduler, self.web):
            if process is not None:
                process.stop()
        self.scheduler = self.web = None

    def archive_key(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        from ketch.executors.base import TryKey
        from ketch.logs.archive.base import log_key

        key = log_key(TryKey(dag_id, run_id, task_id, try_number))
        return f"{self.s3_prefix}/{key}" if self.s3_prefix else key


def make_stack(
    bench: Bench,
    *,
    executor: str = "local",
    s3: bool = False,
    extra: dict[str, str] | None = None,
) -> Stack:
    bench.counter += 1
    name = f"{executor}{bench.counter}"
    folder = bench.tmp / name
    home = folder / "home"
    home.mkdir(parents=True)
    env = KetchEnv(
        home=home, db_url=f"sqlite:///{home / 'ketch.db'}", dags_folder=LOG_DAGS, extra={}
    )
    prefix = None
    if s3:
        prefix = name
        env.extra.update(
            {
                "KETCH__LOGGING__REMOTE_LOGGING": "true",
                "KETCH__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{BUCKET}/{prefix}",
                "KETCH__LOGGING__S3_ENDPOINT_URL": bench.proxy.url,
                "KETCH__LOGGING__S3_REGION": REGION,
            }
        )
    env.extra.update(extra or {})
    namespace = None
    web_env = env
    if executor == "kubernetes":
        from tests.support.kube_env import use_kubernetes

        namespace = use_kubernetes(env, bench.sim, folder)
        # The web does not share the pods' disk in a cluster: its own log folder, so it
        # reads a running try from the pod's log (and a finished one from S3).
        web_env = dataclasses.replace(
            env,
            extra={**env.extra, "KETCH__LOGGING__BASE_LOG_FOLDER": str(folder / "web-logs")},
        )
    return Stack(env, web_env, folder, Api(env.base_url), namespace, prefix)


@contextmanager
def running_stack(bench: Bench, dag_id: str, **options: Any) -> Iterator[Stack]:
    stack = make_stack(bench, **options)
    try:
        stack.start()
        wait_for(lambda: stack.api.dag(dag_id), 120, 0.1, f"{dag_id} parsed")
        yield stack
    except BaseException:
        for process in (stack.scheduler, stack.web):
            if process is not None:
                sys.stderr.write(f"--- {process.name} ---\n{process.output()[-5000:]}\n")
        raise
    finally:
        stack.stop()


def wait_try_started(api: Api, dag_id: str, run_id: str, task_id: str, timeout: float) -> None:
    def started() -> bool:
        ti = api.task_instances(dag_id, run_id).get(task_id) or {}
        return bool(ti.get("try_number", 0) >= 1 and ti.get("state"))

    wait_for(started, timeout, 0.05, f"{task_id} queued")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# -- 1. follow latency --------------------------------------------------------------------

TICK = re.compile(r"TICK (\d+) ([0-9.]+)")
TICKS = re.compile(r"TICKS (\d+)")


@dataclass
class Follower:
    url: str
    connected: float = 0.0
    latencies: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)
    printed: int | None = None
    end: str | None = None
    error: str | None = None

    def run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # reported with the figures
            self.error = f"{type(exc).__name__}: {exc}"

    def _follow(self) -> None:
        timeout = httpx.Timeout(10, read=120)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", self.url, params={"follow": "true"}) as response,
        ):
            response.raise_for_status()
            self.connected = time.time()
            event, data, text = "", [], ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])
                elif line == "":
                    received = time.time()
                    if event == "end":
                        self.end = "\n".join(data)
                        return
                    if event == "log":
                        text += "\n".join(data)
                        *complete, text = text.split("\n")
                        for log_line in complete:
                            self._line(log_line, received)
                    event, data = "", []

    def _line(self, line: str, received: float) -> None:
        if match := TICK.search(line):
            self.latencies.append((int(match[1]), float(match[2]), received))
        elif match := TICKS.search(line):
            self.printed = int(match[1])


def follow_once(bench: Bench, executor: str) -> dict[str, Any]:
    seconds, interval, delay = 10.0, 0.05, 3.0
    kube = executor == "kubernetes"
    with running_stack(bench, "logs_follow", executor=executor, s3=kube) as stack:
        api = stack.api
        run = api.trigger("logs_follow", {"seconds": seconds, "interval": interval, "delay": delay})
        run_id = run["dag_run_id"]
        wait_try_started(api, "logs_follow", run_id, "ticker", 60)
        follower = Follower(stack.env.base_url + stack.log_path("logs_follow", run_id, "ticker"))
        k8s_mark = len(bench.sim.request_log) if kube else 0
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        run = api.wait_run_finished("logs_follow", run_id, 180)
        thread.join(timeout=90)
        k8s = Counter(f"{v} {r}" for v, r in bench.sim.request_log[k8s_mark:]) if kube else None
        probe = pending_pod_probe(bench, stack) if kube else None
    counted = [(i, p, r) for i, p, r in follower.latencies if p >= follower.connected]
    ms = [(r - p) * 1000 for _i, p, r in counted]
    result: dict[str, Any] = {
        "run_state": run["state"],
        "lines_printed": follower.printed,
        "lines_received": len(follower.latencies),
        "lines_counted": len(ms),  # printed after the follower was connected
        "end_event": follower.end,
        "latency_ms_p50": round(statistics.median(ms), 1) if ms else None,
        "latency_ms_p95": round(percentile(ms, 95), 1) if ms else None,
        "latency_ms_max": round(max(ms), 1) if ms else None,
        "latency_ms_min": round(min(ms), 1) if ms else None,
    }
    if follower.error:
        result["follower_error"] = follower.error
    if k8s is not None:
        result["kube_api_requests_during_follow"] = dict(sorted(k8s.items()))
    if probe is not None:
        result["pending_pod_probe"] = probe
    return result


def pending_pod_probe(bench: Bench, stack: Stack, window: float = 5.0) -> dict[str, Any]:
    """A follower of a try whose pod stays Pending (unschedulable): the web's Kubernetes
    API and S3 requests per second in three windows: before the follower connects,
    while it is connected, after it has disconnected."""
    import socket

    from ketch.executors.kubernetes.pod import LABEL_DAG_ID

    sim, api = bench.sim, stack.api
    sim.update_faults(unschedulable_selector=f"{LABEL_DAG_ID}=logs_follow")
    try:
        run = api.trigger("logs_follow", {"seconds": 1})
        run_id = run["dag_run_id"]
        wait_try_started(api, "logs_follow", run_id, "ticker", 60)
        wait_for(lambda: sim.pods(stack.namespace), 30, 0.05, "a pending pod")

        def window_rates() -> dict[str, float]:
            k8s_mark, s3_mark = len(sim.request_log), bench.proxy.mark()
            time.sleep(window)
            gets = Counter(f"{v} {r}" for v, r in sim.request_log[k8s_mark:] if v == "get")
            s3 = [r for r in bench.proxy.since(s3_mark) if r.client == "web"]
            rates = {f"kube {k}": round(n / window, 1) for k, n in sorted(gets.items())}
            rates.update({f"s3 {k}": round(n / window, 1) for k, n in count(s3).items()})
            return rates

        before = window_rates()
        path = stack.log_path("logs_follow", run_id, "ticker") + "?follow=true"
        sock = socket.create_connection(("127.0.0.1", stack.env.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        connected = window_rates()
        sock.settimeout(0.5)
        received = b""
        with contextlib.suppress(OSError):
            while piece := sock.recv(65536):
                received += piece
        sock.close()
        after = window_rates()
    finally:
        sim.update_faults(unschedulable_selector=None)
    return {
        "window_s": window,
        "requests_per_s_before_follower": before,
        "requests_per_s_follower_connected": connected,
        "requests_per_s_after_follower_left": after,
        "follower_received_bytes": len(received),
        "follower_received_head": received[:200].decode(errors="replace"),
    }


def scenario_follow(bench: Bench) -> dict[str, Any]:
    return {
        "task": "a line with time.time() every 50 ms for 10 s",
        "target_p95_ms": 1000,
        "local": follow_once(bench, "local"),
        "kubernetes": follow_once(bench, "kubernetes"),
    }


# -- 2. logging overhead ------------------------------------------------------------------

OVERHEAD_LINE = re.compile(r"BENCH_OVERHEAD (\{.*\})")
MODES = [
    "stdout",
    "devnull_line",
    "devnull_buffered",
    "pipe_line",
    "stdout_block",
    "stdout_unpaced",
]


def scenario_overhead(bench: Bench) -> dict[str, Any]:
    reps = 3 if bench.quick else 5
    with running_stack(bench, "logs_overhead", extra={"KETCH_BENCH_LOG_REPS": str(reps)}) as stack:
        api = stack.api
        run = api.trigger("logs_overhead")
        run = api.wait_run_finished("logs_overhead", run["dag_run_id"], 900)
        tis = api.task_instances("logs_overhead", run["dag_run_id"])
        samples: dict[str, list[dict[str, Any]]] = {}
        for task_id in sorted(tis):
            path = stack.log_path("logs_overhead", run["dag_run_id"], task_id)
            text = api.http.get(path, params={"tail_lines": 20}).text
            match = OVERHEAD_LINE.search(text)
            if match:
                figures = json.loads(match[1])
                samples.setdefault(figures["mode"], []).append(figures)

    def med(mode: str, field: str) -> float:
        values = [s[field] for s in samples.get(mode, []) if s.get(field) is not None]
        return statistics.median(values) if values else float("nan")

    medians = {m: med(m, "write_s") for m in MODES}

    def pct(base: str, than: str = "stdout") -> float:
        return round((medians[than] / medians[base] - 1) * 100, 1)

    return {
        "run_state": run["state"],
        "lines": 100_000,
        "line_bytes": 80,
        "secrets": 3,
        "repetitions": reps,
        "modes": MODES,
        "write_s_median": medians,
        "write_s_all": {m: [s["write_s"] for s in samples.get(m, [])] for m in MODES},
        # the figure asked for: the same prints, to os.devnull opened directly
        "overhead_pct_vs_devnull_line_buffered": pct("devnull_line"),
        "overhead_pct_vs_devnull_block_buffered": pct("devnull_buffered"),
        # its parts: any pipe (read by cat), then what ketch's pump adds to a pipe
        "pipe_line_pct_vs_devnull_line_buffered": pct("devnull_line", "pipe_line"),
        "overhead_pct_vs_pipe_line": pct("pipe_line"),
        # [logging] coalesce_print_bursts = false: one pipe write per line
        "unpaced_overhead_pct_vs_devnull_line_buffered": pct("devnull_line", "stdout_unpaced"),
        "stdout_block_pct_vs_devnull_block_buffered": pct("devnull_buffered", "stdout_block"),
        "until_pump_caught_up_s_median": {
            m: med(m, "until_pump_caught_up_s") for m in ("stdout", "stdout_block")
        },
        "task_cpu_s_median": {m: med(m, "task_cpu_s") for m in MODES},
        "pump_cpu_s_median": {m: med(m, "pump_cpu_s") for m in ("stdout", "stdout_block")},
        "pump_cpu_us_per_line": round(med("stdout", "pump_cpu_s") / 100_000 * 1e6, 2),
        "target_overhead_pct": 10,
    }


# -- 3. S3 requests per try-minute --------------------------------------------------------


def _completed(bench: Bench, key: str) -> bool:
    try:
        bench.s3().head_object(Bucket=BUCKET, Key=f"{key}/complete.json")
        return True
    except Exception:
        return False


def s3_once(bench: Bench, executor: str, seconds: float) -> dict[str, Any]:
    proxy = bench.proxy
    with running_stack(bench, "logs_s3", executor=executor, s3=True) as stack:
        api = stack.api
        mark = proxy.mark()
        run = api.trigger("logs_s3", {"seconds": seconds, "interval": 0.1})
        run_id = run["dag_run_id"]
        run = api.wait_run_finished("logs_s3", run_id, seconds + 300)
        tis = api.task_instances("logs_s3", run_id)
        keys = {t: stack.archive_key("logs_s3", run_id, t) for t in ("chatty", "idle")}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            completed = {t: _completed(bench, k) for t, k in keys.items()}
            if all(completed.values()):
                break
            time.sleep(0.5)
        time.sleep(1.0)
        records = proxy.since(mark)
        assert stack.scheduler is not None
        keeper_failures = stack.scheduler.output().count("log keeper pass failed")
    result: dict[str, Any] = {
        "run_state": run["state"],
        "complete_json_written": completed,
        "scheduler_log_keeper_pass_failures": keeper_failures,
    }
    attributed: set[int] = set()
    for task_id, key in keys.items():
        ti = tis[task_id]
        duration = float(ti.get("duration") or seconds)
        ours = [r for r in records if f"{key}/" in r.path or r.path.endswith(key)]
        attributed.update(id(r) for r in ours)
        per_minute = 60.0 / duration
        result[task_id] = {
            "try_duration_s": round(duration, 1),
            "requests": count(ours),
            "requests_per_try_minute": {
                k: round(v * per_minute, 1) for k, v in count(ours).items()
            },
            "by_client": {
                c: count([r for r in ours if r.client == c])
                for c in sorted({r.client for r in ours})
            },
            "by_object": count(ours, by="detail"),
            "errors": sum(1 for r in ours if r.status >= 400 and r.kind != "GET"),
        }
    others = [r for r in records if id(r) not in attributed]
    result["other_requests"] = {
        c: count([r for r in others if r.client == c]) for c in sorted({r.client for r in others})
    }
    return result


def scenario_s3(bench: Bench) -> dict[str, Any]:
    seconds = 20.0 if bench.quick else 60.0
    return {
        "try_seconds": seconds,
        "scaled_to_one_minute": bench.quick,
        "chunk_interval_seconds": 5.0,
        "chunk_size_kib": 1024,
        "tries": "chatty: a line every 0.1 s; idle: sleeps",
        "kubernetes": s3_once(bench, "kubernetes", seconds),
        "local": s3_once(bench, "local", seconds),
    }


# -- 4. web memory while three clients read a 200 MB log -----------------------------------


def big_block(target: int = 1 << 20) -> bytes:
    lines, size, i = [], 0, 0
    while size < target - 200:
        line = f"{i:07d} memory benchmark line, the same text over and over to fill the log\n"
        lines.append(line.encode())
        size += len(line)
        i += 1
    return b"".join(lines)


def write_big_logs(bench: Bench, stack: Stack, run_id: str, size_mb: int) -> int:
    from ketch.executors.base import TryKey
    from ketch.logs.archive.base import Completion
    from ketch.logs.archive.s3 import S3Archive
    from ketch.worker.task_log import log_path

    block = big_block()
    blocks = size_mb * (1 << 20) // len(block)
    size = blocks * len(block)
    key = TryKey("logs_memory", run_id, "small", 1)
    path = log_path(stack.env.home / "logs", key)
    with path.open("wb") as fh:
        for _ in range(blocks):
            fh.write(block)
    completion = json.dumps(Completion(size=size, ended_at="2026-01-01T00:00:00Z").to_json())
    Path(f"{path}.complete").write_text(completion)
    s3 = bench.s3()
    archive = S3Archive(BUCKET, stack.s3_prefix or "", client_factory=lambda: s3)
    from ketch.logs.archive.base import log_key

    name = log_key(key)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=archive.chunk_name(name, 0).rsplit("/", 1)[0])
    for obj in listed.get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for i in range(blocks):
        archive.write_chunk(name, i * len(block), block)
    archive.complete(name, Completion(size=size, ended_at="2026-01-01T00:00:00Z"))
    return size


def moto_timings(bench: Bench, stack: Stack, run_id: str) -> dict[str, float]:
    """What one listing of the big log's chunks and one 64 KiB ranged GET take on moto,
    straight (not through the proxy): the unit costs of reading from the S3 archive."""
    s3 = bench.s3()
    prefix = stack.archive_key("logs_memory", run_id, "small") + "/"
    listing, ranged = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
        t1 = time.perf_counter()
        s3.get_object(Bucket=BUCKET, Key=keys[0], Range="bytes=0-65535")["Body"].read()
        t2 = time.perf_counter()
        listing.append((t1 - t0) * 1000)
        ranged.append((t2 - t1) * 1000)
    return {
        "list_chunks": round(statistics.median(listing), 1),
        "objects_listed": len(keys),
        "get_64kib_range": round(statistics.median(ranged), 1),
    }


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@dataclass
class Reader:
    url: str
    params: dict[str, str]
    cap_s: float | None
    received: int = 0
    seconds: float = 0.0
    finished: bool = False
    error: str | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(30, read=300)) as client,
                client.stream("GET", self.url, params=self.params) as response,
            ):
                response.raise_for_status()
                for piece in response.iter_raw():
                    self.received += len(piece)
                    if self.cap_s is not None and time.monotonic() - t0 > self.cap_s:
                        break
                else:
                    self.finished = True
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        self.seconds = time.monotonic() - t0


def memory_phase(
    bench: Bench, stack: Stack, web_env: KetchEnv, url: str, follow: bool, cap_s: float | None
) -> dict[str, Any]:
    web = KetchProcess(web_env, "web", name=f"web-memory-{int(time.time() * 1000)}").start()
    try:
        wait_for(stack.api.healthy, 90, 0.05, "web up")
        assert web.proc is not None
        pid = web.proc.pid
        stack.api.http.get(url, params={"limit": 1024})  # warm up: imports, the S3 client
        time.sleep(1.0)
        baseline_samples = []
        for _ in range(5):
            baseline_samples.append(tree_rss(pid))
            time.sleep(0.2)
        baseline = statistics.median(baseline_samples)
        mark = bench.proxy.mark() if bench._proxy is not None else 0
        params = {"follow": "true"} if follow else {}
        readers = [Reader(stack.env.base_url + url, params, cap_s) for _ in range(3)]
        threads = [threading.Thread(target=r.run, daemon=True) for r in readers]
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - t0, tree_rss(pid)))
            time.sleep(0.2)
        samples.append((time.monotonic() - t0, tree_rss(pid)))
        requests = bench.proxy.since(mark) if bench._proxy is not None else []
    finally:
        web.stop()
    peak = max(rss for _t, rss in samples)
    mb = 1 << 20
    web_requests = [r for r in requests if r.client == "web"]
    return {
        "baseline_mb": round(baseline / mb, 1),
        "peak_mb": round(peak / mb, 1),
        "peak_minus_baseline_mb": round((peak - baseline) / mb, 1),
        "end_mb": round(samples[-1][1] / mb, 1),
        "samples": len(samples),
        "seconds": round(max(r.seconds for r in readers), 1),
        "mb_read_per_client": [round(r.received / mb, 1) for r in readers],
        "mb_per_s_per_client": round(
            statistics.median(r.received / mb / max(r.seconds, 1e-3) for r in readers), 2
        ),
        "all_read_to_end": all(r.finished for r in readers),
        "errors": [r.error for r in readers if r.error],
        "s3_requests_by_web": count(web_requests),
        "rss_mb_over_time": [
            (round(t, 1), round(rss / mb, 1)) for t, rss in samples[:: max(1, len(samples) // 20)]
        ],
    }


def scenario_memory(bench: Bench) -> dict[str, Any]:
    size_mb = 200
    cap_s = 60.0 if bench.quick else 300.0
    stack = make_stack(bench, s3=True)
    try:
        stack.start()
        wait_for(lambda: stack.api.dag("logs_memory"), 120, 0.1, "logs_memory parsed")
        run = stack.api.trigger("logs_memory")
        run_id = run["dag_run_id"]
        stack.api.wait_run_finished("logs_memory", run_id, 120)
    finally:
        stack.stop()
    size = write_big_logs(bench, stack, run_id, size_mb)
    url = stack.log_path("logs_memory", run_id, "small")
    local_env = dataclasses.replace(
        stack.env, extra={**stack.env.extra, "KETCH__LOGGING__REMOTE_LOGGING": "false"}
    )
    result: dict[str, Any] = {
        "log_bytes": size,
        "clients": 3,
        "client_cap_s": cap_s,
        "s3_chunk_bytes": len(big_block()),
    }
    result["moto_direct_ms_median"] = moto_timings(bench, stack, run_id)
    for archive, web_env in (("local", local_env), ("s3", stack.env)):
        for mode in ("plain", "follow"):
            name = f"{archive}_{mode}"
            result[name] = memory_phase(bench, stack, web_env, url, mode == "follow", cap_s)
            print(f"  memory {name}: {json.dumps(result[name])[:300]}", flush=True)
    return result


# -- the table ----------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    if f := results.get("follow"):
        for ex in ("local", "kubernetes"):
            r = f.get(ex) or {}
            rows.append(
                (
                    f"follow {ex}",
                    f"p50 {r.get('latency_ms_p50')} ms, p95 {r.get('latency_ms_p95')} ms,"
                    f" max {r.get('latency_ms_max')} ms ({r.get('lines_counted')} lines)",
                    "p95 <= 1000 ms",
                )
            )
            if probe := r.get("pending_pod_probe"):
                rows.append(
                    (
                        "  pending pod probe",
                        "web requests/s before / with / after a follower:"
                        f" {probe['requests_per_s_before_follower']}"
                        f" / {probe['requests_per_s_follower_connected']}"
                        f" / {probe['requests_per_s_after_follower_left']}",
                        "",
                    )
                )
    if o := results.get("overhead"):
        w = o["write_s_median"]
        rows.append(
            (
                "overhead (local)",
                f"stdout {w['stdout']:.3f} s vs devnull line-buffered {w['devnull_line']:.3f} s:"
                f" {o['overhead_pct_vs_devnull_line_buffered']:+}%; vs block-buffered"
                f" {w['devnull_buffered']:.3f} s: {o['overhead_pct_vs_devnull_block_buffered']:+}%",
                "<= 10%",
            )
        )
        rows.append(
            (
                "  its parts",
                f"a line-buffered pipe to cat {w['pipe_line']:.3f} s"
                f" ({o['pipe_line_pct_vs_devnull_line_buffered']:+}% vs devnull), the pump on top"
                f" {o['overhead_pct_vs_pipe_line']:+}%; stdout block-buffered"
                f" {w['stdout_block']:.3f} s ({o['stdout_block_pct_vs_devnull_block_buffered']:+}%"
                " vs devnull block-buffered); never coalesced (coalesce_print_bursts = false)"
                f" {w['stdout_unpaced']:.3f} s"
                f" ({o['unpaced_overhead_pct_vs_devnull_line_buffered']:+}% vs devnull line-buffered)",
                "",
            )
        )
        rows.append(
            (
                "  pump CPU",
                f"{o['pump_cpu_s_median']['stdout']:.3f} s per 100k lines"
                f" ({o['pump_cpu_us_per_line']} us/line), block-buffered writer"
                f" {o['pump_cpu_s_median']['stdout_block']:.3f} s",
                "",
            )
        )
    if s := results.get("s3"):
        for ex in ("kubernetes", "local"):
            side = s.get(ex) or {}
            for task_id in ("chatty", "idle"):
                r = side.get(task_id) or {}
                per = ", ".join(
                    f"{k} {v}" for k, v in (r.get("requests_per_try_minute") or {}).items()
                )
                figure = f"per try-minute: {per or 'none'} (raw {r.get('by_object')} in"
                figure += f" {r.get('try_duration_s')} s)"
                if not (side.get("complete_json_written") or {}).get(task_id):
                    failures = side.get("scheduler_log_keeper_pass_failures")
                    figure += f"; LOG NOT ARCHIVED (scheduler log keeper passes failed: {failures})"
                rows.append((f"S3 {ex} {task_id}", figure, ""))
    if m := results.get("memory"):
        for phase in ("local_plain", "local_follow", "s3_plain", "s3_follow"):
            r = m.get(phase) or {}
            rows.append(
                (
                    f"web RSS {phase}",
                    f"baseline {r.get('baseline_mb')} MB, peak {r.get('peak_mb')} MB,"
                    f" +{r.get('peak_minus_baseline_mb')} MB; {r.get('mb_per_s_per_client')}"
                    f" MB/s per client, {r.get('seconds')} s, read to end:"
                    f" {r.get('all_read_to_end')}, S3 requests {r.get('s3_requests_by_web')}",
                    "flat (a few MB)",
                )
            )
    width = max((len(a) for a, _b, _c in rows), default=10)
    lines = [f"{'scenario'.ljust(width)}  figure  [target]"]
    lines += [f"{a.ljust(width)}  {b}" + (f"  [{c}]" if c else "") for a, b, c in rows]
    lines.append(f"note: {MACHINE_NOTE}")
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "follow": scenario_follow,
    "overhead": scenario_overhead,
    "s3": scenario_s3,
    "memory": scenario_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter tries (see the docstring)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}")
    selected = [s for s in SCENARIOS if s in (args.scenarios or SCENARIOS)]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "logs.json"
    results: dict[str, Any] = {}
    if out.exists():
        with contextlib.suppress(ValueError):
            results = json.loads(out.read_text())
    bench = Bench(args.quick)
    done: dict[str, Any] = {}
    try:
        for name in selected:
            print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
            before, t0 = load(), time.monotonic()
            figures = RUNNERS[name](bench)
            figures.update(
                {
                    "quick": args.quick,
                    "scenario_wall_s": round(time.monotonic() - t0, 1),
                    "load_avg_before": before,
                    "load_avg_after": load(),
                    "cpu_count": os.cpu_count(),
                    "note": MACHINE_NOTE,
                    "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
            results[name] = done[name] = figures
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(figures, indent=2), flush=True)
    finally:
        bench.close()
    print(table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
