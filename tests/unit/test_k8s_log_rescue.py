"""A finished pod's log is rescued into the archive before the pod is deleted (OOM kill,
eviction, a crash before the task started, an image that cannot be pulled), unless its
try completed the log itself; the web follows a running try's log from its pod. Against
the Kubernetes API simulator (real HTTP, real client, real pod processes)."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.config import Settings
from ketch.executors.base import LaunchRequest, TryEnded, TryKey
from ketch.executors.kubernetes import KubernetesExecutor, pod_name, reasons
from ketch.executors.kubernetes.client import KubeApiError
from ketch.executors.kubernetes.pod import build_pod, try_annotations, try_labels
from ketch.logs.archive.base import ArchiveUnavailable, Completion, LogArchive, log_key
from ketch.logs.archive.local import LocalFolderArchive
from ketch.logs.pod_log import PodLog, capture_pod_log
from ketch.logs.pump.config import CONFIG_ENV
from ketch.testing.kube_sim import Faults, KubeSimulator

_NAMESPACES = itertools.count()
# The task container: prints $LINES lines ("line 0".."line N-1"), $DELAY seconds apart, to
# stdout (or $STDERR_TEXT to stderr), then sleeps $SLEEP seconds and exits with $CODE.
SCRIPT = textwrap.dedent("""\
    import os, sys, time
    err = os.environ.get('STDERR_TEXT')
    if err:
        sys.stderr.write(err)
        sys.stderr.flush()
    for i in range(int(os.environ.get('LINES', '0'))):
        print(f'line {i}', flush=True)
        time.sleep(float(os.environ.get('DELAY', '0')))
    if os.environ.get('JSON_LINES'):
        sys.stdout.write(open(os.environ['JSON_LINES']).read())
        sys.stdout.flush()
    time.sleep(float(os.environ.get('SLEEP', '0')))
    sys.exit(int(os.environ.get('CODE', '0')))
""")


def lines(n: int) -> bytes:
    return b"".join(f"line {i}\n".encode() for i in range(n))


@pytest.fixture(scope="module")
def sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


class Env:
    """One test's namespace, settings, archive and (started) executors."""

    def __init__(self, sim: KubeSimulator, tmp_path: Path) -> None:
        self.sim = sim
        self.tmp_path = tmp_path
        self.ns = f"rescue-{next(_NAMESPACES)}"
        self.kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig", namespace=self.ns)
        self.archive = LocalFolderArchive(tmp_path / "archive")
        self.executors: list[KubernetesExecutor] = []
        self.events: queue.Queue[TryEnded] = queue.Queue()

    def settings(self, **kube: Any) -> Settings:
        template = self.tmp_path / "pod_template.yaml"
        template.write_text(
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n"
            "    - name: base\n      image: ketch:test\n"
            f"      command: [{sys.executable!r}, -c, {SCRIPT!r}]\n"
        )
        values: dict[str, Any] = {
            "namespace": self.ns,
            "config_file": str(self.kubeconfig),
            "pod_template_file": str(template),
        }
        values.update(kube)
        return Settings(kubernetes=values, logging={"base_log_folder": str(self.tmp_path / "l")})

    def executor(
        self,
        *,
        start: bool = True,
        json_format: bool = False,
        archive: LogArchive | None = None,
        **kube: Any,
    ) -> Any:
        """An executor whose capture writes to ``archive`` (default: the test's archive)."""
        executor = KubernetesExecutor(self.settings(**kube))
        executor.capture_backoff = (0.1, 0.2)
        into = archive or self.archive
        executor.log_capture = lambda pod, reason: capture_pod_log(
            executor.api, into, pod, reason, json_format
        )
        if start:
            executor.start(self.events.put)
        self.executors.append(executor)
        return executor

    def log(self, key: TryKey) -> bytes:
        return self.archive.read(log_key(key), 0, 1 << 20)

    def completion(self, key: TryKey, timeout: float = 20.0) -> Completion:
        done: Completion = self.sim.wait_for(
            lambda: self.archive.completion(log_key(key)), timeout=timeout
        )
        return done

    def pod(self, key: TryKey) -> dict[str, Any] | None:
        return self.sim.pod(self.ns, pod_name(key))

    def log_reads(self) -> int:
        return self.sim.request_log.count(("get", "pods/log"))


@pytest.fixture
def env(sim: KubeSimulator, tmp_path: Path) -> Iterator[Env]:
    sim.faults = Faults()
    e = Env(sim, tmp_path)
    yield e
    for executor in e.executors:
        executor.stop()
    sim.faults = Faults()


def req(task: str, **config: Any) -> LaunchRequest:
    env = [{"name": k.upper(), "value": str(v)} for k, v in config.pop("env", {}).items()]
    if env:
        config["env"] = env
    return LaunchRequest(
        TryKey("dag", "r1", task, 1), 7, "tok", "d.py", "/d.py", executor_config=config
    )


def footer(data: bytes) -> str:
    last = data.decode(errors="replace").splitlines()[-1]
    assert "ketch: the end of this log was captured by the scheduler from the pod's log:" in last
    return last.split("from the pod's log: ", 1)[1]


# -- rescues -----------------------------------------------------------------------------


def test_oom_killed_pod_log_is_archived_with_the_memory_limit(env: Env) -> None:
    executor = env.executor(delete_worker_pods_on_failure=True)
    request = req("oom", env={"lines": 5, "sleep": 60}, resources={"limits": {"memory": "256Mi"}})
    # the pump shipped the first chunk before the kill: only the tail is rescued
    env.archive.write_chunk(log_key(request.key), 0, b"line 0\nline 1\n")
    executor.launch(request)
    name = pod_name(request.key)
    env.sim.wait_for(lambda: "line 4" in env.sim.pod_log(env.ns, name))
    env.sim.oom_kill(env.ns, name)
    done = env.completion(request.key)
    data = env.log(request.key)
    assert data.startswith(lines(5))
    assert footer(data) == "OOMKilled, memory limit 256Mi"
    assert done.captured_by == "scheduler" and done.reason == "OOMKilled, memory limit 256Mi"
    assert done.size == len(data)
    env.sim.wait_for(lambda: env.pod(request.key) is None)  # deleted after the capture
    assert executor.log_capture_state() == {
        "failures": 0,
        "pending": 0,
        "abandoned": 0,
        "last_error": None,
    }


def test_evicted_pod_is_captured_and_kept(env: Env) -> None:
    env.executor()  # failed pods are kept (delete_worker_pods_on_failure off)
    request = req("evicted", env={"lines": 3, "sleep": 60})
    env.executors[0].launch(request)
    name = pod_name(request.key)
    env.sim.wait_for(lambda: "line 2" in env.sim.pod_log(env.ns, name))
    env.sim.evict(env.ns, name)
    env.completion(request.key)
    data = env.log(request.key)
    assert data.startswith(lines(3))
    assert footer(data).startswith("Evicted: The node was low on resource: memory.")
    pod = env.pod(request.key)
    assert pod is not None and pod["status"]["reason"] == "Evicted"  # kept, log captured


def test_crash_before_the_task_started_captures_the_whole_pod_log(env: Env) -> None:
    executor = env.executor(delete_worker_pods_on_failure=True)
    crash = "Traceback (most recent call last):\nImportError: cannot import name 'x'\n"
    request = req("crash", env={"stderr_text": crash, "code": 3})
    executor.launch(request)
    env.completion(request.key)
    data = env.log(request.key)
    assert data.startswith(crash.encode())
    assert footer(data) == "the container exited with code 3"
    env.sim.wait_for(lambda: env.pod(request.key) is None)


def test_image_pull_failure_leaves_a_log_saying_why(env: Env) -> None:
    env.sim.update_faults(image_pull_failures={"broken:1"})
    executor = env.executor()
    request = req("pull", image="broken:1")
    executor.launch(request)
    env.completion(request.key)
    reason = footer(env.log(request.key))
    assert reason.startswith('ErrImagePull: Failed to pull image "broken:1"')
    assert len(env.log(request.key).splitlines()) == 1  # the container never wrote a byte
    env.sim.wait_for(lambda: env.pod(request.key) is None)  # never started: deleted


def test_a_log_the_try_completed_itself_is_not_read_from_the_pod(env: Env) -> None:
    executor = env.executor()
    request = req("flushed", env={"lines": 2})
    key = log_key(request.key)
    env.archive.write_chunk(key, 0, lines(2))
    env.archive.complete(key, Completion(size=len(lines(2))))
    reads = env.log_reads()
    executor.launch(request)
    assert env.events.get(timeout=20).exit_code == 0
    env.sim.wait_for(lambda: env.pod(request.key) is None)  # deleted after the capture
    assert env.log_reads() == reads  # one archive request, no pod log read
    assert env.log(request.key) == lines(2)
    assert env.archive.completion(key) == Completion(size=len(lines(2)))


@pytest.mark.parametrize("kill", ["oom", "evict"])
def test_a_log_its_try_completed_still_says_kubernetes_ended_the_try(env: Env, kill: str) -> None:
    """The try's log pump survived the OOM kill or eviction and completed the log (a
    runtime that killed the main process only): the scheduler adds the footer saying why
    the try ended, and only that; a second capture adds nothing."""
    executor = env.executor()  # failed pods are kept: captured again below
    request = req(
        f"survivor-{kill}", env={"lines": 2, "sleep": 60}, resources={"limits": {"memory": "64Mi"}}
    )
    key = log_key(request.key)
    executor.launch(request)
    name = pod_name(request.key)
    env.sim.wait_for(lambda: "line 1" in env.sim.pod_log(env.ns, name))
    env.archive.write_chunk(key, 0, lines(2))  # what the surviving pump shipped, complete
    env.archive.complete(key, Completion(size=len(lines(2))))
    reads = env.log_reads()
    (env.sim.oom_kill if kill == "oom" else env.sim.evict)(env.ns, name)
    done = env.sim.wait_for(
        lambda: (
            (c := env.archive.completion(key)) is not None and c.captured_by == "scheduler" and c
        )
    )
    data = env.log(request.key)
    assert data.startswith(lines(2)) and data.count(b"\n") == 3
    last = data.decode().splitlines()[-1]
    assert (
        "ketch: the end of this log was captured by the scheduler from the pod's status: " in last
    )
    reason = last.split("from the pod's status: ", 1)[1]
    if kill == "oom":
        assert reason == "OOMKilled, memory limit 64Mi"
    else:
        assert reason.startswith("Evicted: The node was low on resource: memory.")
    assert done.reason == reason and done.size == len(data)
    assert env.log_reads() == reads  # the pod's log was not needed
    pod = env.pod(request.key)
    assert pod is not None
    capture_pod_log(executor.api, env.archive, pod, reasons.capture_reason(pod), False)
    assert env.log(request.key) == data


def test_pods_that_ended_while_no_scheduler_ran_are_captured_at_adoption(env: Env) -> None:
    first = env.executor()  # keeps failed pods, should it see this one end
    first.log_capture = None
    request = req("while-down", env={"lines": 2, "sleep": 1, "code": 1})
    first.launch(request)
    first.stop()  # the scheduler is gone; the pod runs on and fails
    pod = env.sim.wait_for_phase(env.ns, pod_name(request.key), "Failed")
    assert env.archive.completion(log_key(request.key)) is None
    second = env.executor(delete_worker_pods_on_failure=True)
    assert second.adopt([]) == []  # the database no longer runs the try
    env.completion(request.key)
    assert env.log(request.key).startswith(lines(2))
    assert footer(env.log(request.key)) == "the container exited with code 1"
    env.sim.wait_for(lambda: env.pod(request.key) is None)
    assert pod["metadata"]["name"] == pod_name(request.key)


def test_a_pod_deleted_outside_ketch_closes_its_log(env: Env) -> None:
    executor = env.executor()
    request = req("deleted", env={"lines": 2, "sleep": 60})
    executor.launch(request)
    name = pod_name(request.key)
    env.sim.wait_for(lambda: "line 1" in env.sim.pod_log(env.ns, name))
    # what the pump had shipped before someone ran kubectl delete --grace-period=0
    env.archive.write_chunk(log_key(request.key), 0, lines(2))
    executor.api.delete_pod(name, grace_period_seconds=0)
    assert env.events.get(timeout=20).reason == "pod deleted before it finished"
    env.completion(request.key)
    data = env.log(request.key)
    assert data.startswith(lines(2))
    assert footer(data) == (
        "the pod was deleted before it finished (the pod was gone: its log could not be read)"
    )


# -- the API failing ---------------------------------------------------------------------


def test_pod_log_api_failing_keeps_the_pod_until_the_capture_succeeds(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.sim.update_faults(forbidden={"get pods/log"})
    executor = env.executor(delete_worker_pods_on_failure=True)
    executor.capture_attempts = 100
    request = req("rbac", env={"lines": 2, "code": 1})
    name = pod_name(request.key)
    with caplog.at_level(logging.WARNING, logger="ketch.executors.kubernetes.executor"):
        executor.launch(request)
        env.sim.wait_for(lambda: executor.log_capture_failures >= 3)
        state = executor.log_capture_state()
        assert state["pending"] == 1 and state["abandoned"] == 0
        assert state["last_error"].startswith(f"pod {name}: ")
        assert 'may not "get" "pods/log"' in state["last_error"]
        assert env.pod(request.key) is not None  # kept while its log is not captured
        assert env.archive.completion(log_key(request.key)) is None
        env.sim.update_faults(forbidden=set())  # the API answers again
        env.completion(request.key)
        env.sim.wait_for(lambda: env.pod(request.key) is None)
    assert env.log(request.key).startswith(lines(2))
    assert executor.log_capture_pending == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and name in r.message]
    assert len(warnings) >= 3 and "pods/log" in warnings[0].message


def test_after_the_last_attempt_the_pod_is_deleted_and_the_failure_counted(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.sim.update_faults(forbidden={"get pods/log"})
    executor = env.executor(delete_worker_pods_on_failure=True)
    executor.capture_attempts = 3
    request = req("lost", env={"code": 1})
    with caplog.at_level(logging.WARNING, logger="ketch.executors.kubernetes.executor"):
        executor.launch(request)
        env.sim.wait_for(lambda: env.pod(request.key) is None)
    state = executor.log_capture_state()
    assert (state["failures"], state["pending"], state["abandoned"]) == (3, 0, 1)
    assert env.archive.completion(log_key(request.key)) is None
    errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert pod_name(request.key) in errors[0] and "may be incomplete" in errors[0]


def test_an_archive_failure_is_retried_too(env: Env) -> None:
    class Flaky(LocalFolderArchive):
        fail = 2

        def completion(self, key: str) -> Completion | None:
            if self.fail:
                self.fail -= 1
                raise ArchiveUnavailable("s3://logs: SlowDown: please reduce your request rate")
            return super().completion(key)

    flaky = Flaky(env.tmp_path / "archive")
    executor = env.executor(archive=flaky, delete_worker_pods_on_failure=True)
    request = req("flaky", env={"lines": 1, "code": 2})
    executor.launch(request)
    env.completion(request.key)
    assert executor.log_capture_failures == 2
    assert "SlowDown" in (executor.log_capture_last_error or "")
    assert footer(env.log(request.key)) == "the container exited with code 2"


# -- capture_pod_log on its own ----------------------------------------------------------


def ketch_pod(
    key: TryKey, script: str, restart_policy: str = "Never", **env: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "base",
        "image": "ketch:test",
        "command": [sys.executable, "-c", script],
        "env": [{"name": k.upper(), "value": str(v)} for k, v in env.items()],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(key),
            "labels": try_labels(key, 1),
            "annotations": try_annotations(key),
        },
        "spec": {
            "restartPolicy": restart_policy,
            "containers": [container],
        },
    }


def test_a_restarted_container_s_previous_log_comes_first(env: Env) -> None:
    marker = env.tmp_path / "ran-once"
    script = (
        "import os, sys\n"
        f"first = not os.path.exists({str(marker)!r})\n"
        f"open({str(marker)!r}, 'a').close()\n"
        "print('first run' if first else 'second run', flush=True)\n"
        "sys.exit(5 if first else 0)\n"
    )
    key = TryKey("dag", "r1", "restarted", 1)
    api = env.executor(start=False).api
    api.create_pod(ketch_pod(key, script, restart_policy="OnFailure"))
    pod = env.sim.wait_for_phase(env.ns, pod_name(key), "Succeeded")
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 5
    capture_pod_log(api, env.archive, pod, reasons.capture_reason(pod), False)
    data = env.log(key)
    assert data.startswith(b"first run\nsecond run\n")
    assert footer(data) == "the container exited with code 0"


def test_a_pod_gone_before_its_capture_still_closes_the_log(env: Env) -> None:
    key = TryKey("dag", "r1", "gone", 1)
    api = env.executor(start=False).api
    pod = ketch_pod(key, "pass")
    capture_pod_log(api, env.archive, pod, "the container exited with code 1", False)
    assert footer(env.log(key)) == (
        "the container exited with code 1 (the pod was gone: its log could not be read)"
    )
    # a pod that is not a ketch try's: nothing to do
    capture_pod_log(api, env.archive, {"metadata": {"name": "other"}}, "x", False)


@pytest.mark.parametrize(
    ("archived", "printed", "expected", "gap"),
    [
        # output before the log pump started is in the pod's log only
        (lines(2), b"a warning before the pump\n" + lines(5), lines(5), False),
        # the kubelet rotated the pod's log: it serves only the newest part
        (lines(10), lines(15)[len(lines(5)) :], lines(15), False),
        # ... which no longer reaches back to what the archive has: both, and a note
        (lines(3), lines(15)[len(lines(10)) :], lines(3), True),
        # the pump shipped every byte but could not mark the log complete
        (lines(4), lines(4), lines(4), False),
        # the pod's stdout is behind the archive (the pump died between its two writes)
        (lines(6), lines(4), lines(6), False),
    ],
)
def test_the_pod_log_carries_on_where_the_archive_ends(
    env: Env, archived: bytes, printed: bytes, expected: bytes, gap: bool
) -> None:
    key = TryKey("dag", "r1", "align", 1)
    source = env.tmp_path / "printed"
    source.write_bytes(printed)
    script = f"import sys\nsys.stdout.buffer.write(open({str(source)!r}, 'rb').read())\n"
    api = env.executor(start=False).api
    api.create_pod(ketch_pod(key, script))
    pod = env.sim.wait_for_phase(env.ns, pod_name(key), "Succeeded")
    env.archive.write_chunk(log_key(key), 0, archived)
    capture_pod_log(api, env.archive, pod, "the container exited with code 0", False)
    data = env.log(key)
    assert footer(data).startswith("the container exited with code 0")
    assert ("part of the log is missing" in footer(data)) is gap
    if gap:
        before, after = data.split(b"\n", 3)[:3], data.split(b"\n", 4)[4]
        assert b"\n".join(before) + b"\n" == expected
        assert b"ketch: the pod's log no longer reaches back to here" in data.splitlines()[3]
        assert after.startswith(printed)
    else:
        assert data.startswith(expected)
        assert len(data.splitlines()) == len(expected.splitlines()) + 1


# -- JSON lines ----------------------------------------------------------------------------


def encode_json_lines(plain: bytes, task_id: str) -> bytes:
    """``plain`` as the log pump echoes it to the pod's stdout with ``json_format``."""
    json_lines = pytest.importorskip("ketch.logs.json_lines")
    meta = {"dag_id": "dag", "run_id": "r1", "task_id": task_id, "try_number": 1}
    framer = json_lines.LineFramer()
    out = [json_lines.encode_record(f, meta, partial) for f, partial in framer.feed(plain)]
    tail = framer.flush_partial()
    if tail:
        out.append(json_lines.encode_record(tail, meta, True))
    return b"".join(out)


def test_a_json_format_pod_log_is_archived_as_the_exact_plain_bytes(env: Env) -> None:
    plain = (
        'héllo\n\ttabs and "quotes" \\ back\n\x1b[31mred\x1b[0m\n'.encode()
        + b"not utf-8: \xff\xfe\n"
        + b"no newline at the end"
    )
    encoded = encode_json_lines(plain, "json")
    source = env.tmp_path / "pod-stdout.jsonl"
    source.write_bytes(encoded)
    executor = env.executor(json_format=True, delete_worker_pods_on_failure=True)
    request = req("json", env={"json_lines": source, "code": 1})
    executor.launch(request)
    env.completion(request.key)
    data = env.log(request.key)
    assert data.startswith(plain + b"\n")  # the rescue ends an unfinished line first
    assert footer(data) == "the container exited with code 1"


# -- the web's live log --------------------------------------------------------------------


def test_pod_log_reads_and_follows_from_an_offset(env: Env) -> None:
    key = TryKey("dag", "r1", "live", 1)
    api = env.executor(start=False).api
    live = PodLog(api, pod_name(key), json_format=False)
    assert not live.pod_exists()
    assert list(live.follow(0)) == []  # no pod: nothing to follow
    api.create_pod(ketch_pod(key, SCRIPT, lines=8, delay=0.05))
    assert live.pod_exists()
    env.sim.wait_for(lambda: "line 1" in env.sim.pod_log(env.ns, pod_name(key)))
    assert live.read().startswith(b"line 0\nline 1\n")
    followed = b"".join(live.follow(10))  # ends when the container ends
    assert followed == lines(8)[10:]
    assert live.read() == lines(8)


def test_a_pending_pod_says_why_it_has_not_started(env: Env) -> None:
    """What a follower of a queued try is told: the pod's false conditions and events."""
    key = TryKey("dag", "r1", "stuck", 1)
    api = env.executor(start=False).api
    pending = PodLog(api, pod_name(key), json_format=False)
    assert pending.waiting_reason() is None  # no pod yet
    env.sim.update_faults(unschedulable_selector="ketch.io/task-id=stuck")
    api.create_pod(ketch_pod(key, SCRIPT, lines=1))
    reason = env.sim.wait_for(
        lambda: (r := pending.waiting_reason()) and "FailedScheduling" in r and r
    )
    assert reason.startswith("pod Pending for ")
    assert "PodScheduled: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu" in reason
    assert "events: FailedScheduling: 0/1 nodes are available" in reason
    env.sim.update_faults(unschedulable_selector=None)  # capacity came: it starts
    env.sim.wait_for(lambda: pending.waiting_reason() is None)


def test_a_follower_of_a_queued_try_is_told_why_its_pod_waits(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LogReader.follow gives a Waiting step per new reason, then the log once it starts;
    a plain read of the queued try says the same in its message."""
    from ketch.logs import reader as reader_module
    from ketch.logs.reader import LogReader, LogUnavailable, Waiting

    monkeypatch.setattr(reader_module, "WAITING_CHECK_SECONDS", 0.2)
    key = TryKey("dag", "r1", "waits", 1)
    api = env.executor(start=False).api
    settings = env.settings()
    reader = LogReader(settings, env.archive, lambda k: PodLog(api, pod_name(k), False))
    env.sim.update_faults(unschedulable_selector="ketch.io/task-id=waits")
    api.create_pod(ketch_pod(key, SCRIPT, lines=3))
    env.sim.wait_for(lambda: env.sim.pod(env.ns, pod_name(key)))
    with pytest.raises(LogUnavailable) as queued:
        reader.best(key, True, state="queued")
    assert "is queued: its log begins when it starts (pod Pending for" in str(queued.value)
    steps = reader.follow(key, 0, lambda: None)
    waiting = next(step for step in steps if isinstance(step, Waiting))
    assert "Unschedulable" in waiting.reason
    env.sim.update_faults(unschedulable_selector=None)
    data = b""
    for step in steps:
        assert not isinstance(step, Waiting) or "Pending" in step.reason
        if isinstance(step, bytes):
            data += step
        if data == lines(3):
            break
    steps.close()  # type: ignore[attr-defined]
    assert data == lines(3)


def test_pod_log_follow_stops_when_the_generator_is_closed(env: Env) -> None:
    key = TryKey("dag", "r1", "closed", 1)
    api = env.executor(start=False).api
    script = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)\n"
    api.create_pod(ketch_pod(key, script))
    live = PodLog(api, pod_name(key), json_format=False)
    env.sim.wait_for(lambda: env.sim.pod_log(env.ns, pod_name(key)))
    follow = live.follow(0)
    assert next(follow).startswith(b"tick\n")
    follow.close()  # closes the HTTP stream (the web's client went away)
    stream = api.stream_pod_log(pod_name(key))
    assert next(stream).startswith(b"tick\n")
    stream.close()
    api.delete_pod(pod_name(key), grace_period_seconds=0)


def test_pod_log_follows_json_lines_as_plain_bytes(env: Env) -> None:
    plain = lines(20) + b"and a partial line"
    encoded = encode_json_lines(plain, "jlive")
    key = TryKey("dag", "r1", "jlive", 1)
    # written in small pieces that cut lines in the middle
    script = (
        "import sys, time\n"
        f"data = {encoded!r}\n"
        "for i in range(0, len(data), 7):\n"
        "    sys.stdout.buffer.write(data[i:i + 7]); sys.stdout.flush(); time.sleep(0.005)\n"
    )
    api = env.executor(start=False).api
    api.create_pod(ketch_pod(key, script))
    live = PodLog(api, pod_name(key), json_format=True)
    env.sim.wait_for(lambda: env.sim.pod_log(env.ns, pod_name(key)))
    assert b"".join(live.follow(15)) == plain[15:]
    assert live.read() == plain


def test_read_pod_log_errors_say_which_pod(env: Env) -> None:
    api = env.executor(start=False).api
    with pytest.raises(KubeApiError) as exc:
        api.read_pod_log("nope")
    assert exc.value.status == 404 and "pod nope" in str(exc.value)
    env.sim.update_faults(image_pull_failures={"never:1"})
    key = TryKey("dag", "r1", "waiting", 1)
    body = ketch_pod(key, "pass")
    body["spec"]["containers"][0]["image"] = "never:1"
    api.create_pod(body)
    with pytest.raises(KubeApiError) as exc:
        api.read_pod_log(pod_name(key))
    assert exc.value.status == 400 and "is waiting to start" in str(exc.value)
    with pytest.raises(KubeApiError) as exc:
        api.read_pod_log(pod_name(key), previous=True)
    assert exc.value.status == 400 and "previous" in str(exc.value)


def test_read_pod_log_bytes_are_exact(env: Env) -> None:
    key = TryKey("dag", "r1", "bytes", 1)
    raw = bytes(range(256)) * 4 + "ünïcødé\r\n".encode()
    script = f"import sys\nsys.stdout.buffer.write({raw!r})\n"
    api = env.executor(start=False).api
    api.create_pod(ketch_pod(key, script))
    env.sim.wait_for_phase(env.ns, pod_name(key), "Succeeded")
    assert api.read_pod_log(pod_name(key)) == raw
    assert api.read_pod_log(pod_name(key), limit_bytes=10) == raw[:10]
    assert b"".join(api.stream_pod_log(pod_name(key))) == raw


# -- the pod: pump configuration and grace period ------------------------------------------


def test_the_try_container_gets_its_pump_config(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "spec:\n  terminationGracePeriodSeconds: 30\n  containers:\n    - name: base\n"
    )
    key = TryKey("etl", "r1", "load", 2)
    request = LaunchRequest(key, 1, "tok", "d.py", "/d.py")

    def pump_env(pod: dict[str, Any]) -> dict[str, Any]:
        (base,) = pod["spec"]["containers"]
        value = {e["name"]: e.get("value") for e in base["env"]}[CONFIG_ENV]
        parsed: dict[str, Any] = json.loads(value)
        return parsed

    plain = Settings(kubernetes={"pod_template_file": str(template)})
    pod = build_pod(plain, request)
    assert pump_env(pod) == {"echo": True, "json": False, "ship": None, "coalesce": True}
    unpaced = Settings(
        kubernetes={"pod_template_file": str(template)},
        logging={"coalesce_print_bursts": False},
    )
    assert pump_env(build_pod(unpaced, request))["coalesce"] is False
    assert pod["spec"]["terminationGracePeriodSeconds"] == 30  # nothing to flush
    remote = Settings(
        kubernetes={"pod_template_file": str(template)},
        logging={
            "remote_logging": True,
            "remote_base_log_folder": "s3://logs/ketch",
            "json_format": True,
            "chunk_interval_seconds": 2,
            "chunk_size_kib": 64,
            "final_flush_timeout": 40,
            "s3_endpoint_url": "http://s3.local",
            "s3_region": "eu-west-1",
            "encrypt_s3_logs": True,
            "s3_kms_key_id": "alias/logs",
            "remote_log_conn_id": "aws_logs",
        },
    )
    pod = build_pod(remote, request)
    config = pump_env(pod)
    assert (config["echo"], config["json"]) == (True, True)
    assert config["ship"] == {
        "key": "dag_id=etl/run_id=r1/task_id=load/attempt=2.log",
        "remote_base_log_folder": "s3://logs/ketch",
        "interval": 2.0,
        "size_bytes": 64 * 1024,
        "final_flush_timeout": 40.0,
        "endpoint_url": "http://s3.local",
        "region": "eu-west-1",
        "encrypt": True,
        "kms_key_id": "alias/logs",
        "conn_id": "aws_logs",
    }
    # a deleted pod's try has time for its final flush
    assert pod["spec"]["terminationGracePeriodSeconds"] == 40 + 15
    template.write_text(
        "spec:\n  terminationGracePeriodSeconds: 300\n  containers:\n    - name: base\n"
    )
    assert build_pod(remote, request)["spec"]["terminationGracePeriodSeconds"] == 300


@pytest.mark.parametrize(
    ("status", "spec", "expected"),
    [
        (
            {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"},
            {},
            "killed at its execution_timeout (Pod was active too long)",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "base",
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ],
            },
            {},
            "OOMKilled, no memory limit set",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "base", "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}
                ],
            },
            {},
            "the container exited with code 143 (SIGTERM)",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "base",
                        "state": {
                            "terminated": {
                                "exitCode": 128,
                                "reason": "StartError",
                                "message": "exec: ketch: not found",
                            }
                        },
                    }
                ],
            },
            {},
            "the container could not start: exec: ketch: not found",
        ),
        (
            {
                "phase": "Failed",
                "initContainerStatuses": [
                    {
                        "name": "git-sync",
                        "state": {"terminated": {"exitCode": 1, "reason": "Error"}},
                    }
                ],
                "containerStatuses": [
                    {"name": "base", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
            {},
            "init container git-sync failed with exit code 1 (Error)",
        ),
    ],
)
def test_capture_reasons(status: dict[str, Any], spec: dict[str, Any], expected: str) -> None:
    assert reasons.capture_reason({"status": status, "spec": spec}) == expected


def test_capture_runs_off_the_watch_thread(env: Env) -> None:
    """A slow capture (a big log, a slow archive) delays neither the try's end event nor
    other pods."""
    release = threading.Event()
    executor = env.executor()
    executor.log_capture = lambda pod, reason: release.wait(20)
    executor.launch(req("slow1"))
    executor.launch(req("slow2"))
    ends = {env.events.get(timeout=20).key.task_id, env.events.get(timeout=20).key.task_id}
    assert ends == {"slow1", "slow2"}
    assert env.pod(req("slow1").key) is not None  # not deleted before its capture returns
    release.set()
    env.sim.wait_for(lambda: not env.sim.pods(env.ns))
