"""The Kubernetes executor against the Kubernetes API simulator (real HTTP, real client,
real pod processes)."""

from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ketch.config import Settings
from ketch.executors.base import LaunchError, LaunchRequest, RunningTry, TryEnded, TryKey
from ketch.executors.kubernetes import KubernetesExecutor, pod_name
from ketch.executors.kubernetes import watch as watch_module
from ketch.executors.kubernetes.client import KubeApi
from ketch.executors.kubernetes.pod import SELECTOR, pod_hostname
from ketch.executors.kubernetes.watch import PodWatcher
from ketch.testing.kube_sim import Faults, KubeSimulator

NS = "ketch-test"
_NAMESPACES = itertools.count()
# The task container: exits with $CODE after $SLEEP seconds, appending a line to $RUNS first
# (and its hostname, as a try records it at start, to $HOSTS).
SCRIPT = (
    "import os, socket, sys, time\n"
    "runs = os.environ.get('RUNS')\n"
    "if runs:\n"
    "    open(runs, 'a').write(os.environ['HOSTNAME'] + '\\n')\n"
    "hosts = os.environ.get('HOSTS')\n"
    "if hosts:\n"
    "    open(hosts, 'a').write(socket.gethostname() + '\\n')\n"
    "print('args', sys.argv[1:], flush=True)\n"
    "time.sleep(float(os.environ.get('SLEEP', '0')))\n"
    "sys.exit(int(os.environ.get('CODE', '0')))\n"
)


@pytest.fixture(scope="module")
def sim() -> Iterator[KubeSimulator]:
    with KubeSimulator() as simulator:
        yield simulator


@pytest.fixture
def kubeconfig(sim: KubeSimulator, tmp_path: Path) -> Iterator[Path]:
    global NS
    NS = f"test-{next(_NAMESPACES)}"  # a namespace per test: kept pods do not leak across
    sim.faults = Faults()
    yield sim.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    sim.faults = Faults()


def make_settings(tmp_path: Path, kubeconfig: Path, **kube: Any) -> Settings:
    template = tmp_path / "pod_template.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n"
        f"    - name: base\n      image: ketch:test\n"
        f"      command: [{sys.executable!r}, -c, {SCRIPT!r}]\n"
    )
    values: dict[str, Any] = {
        "namespace": NS,
        "config_file": str(kubeconfig),
        "pod_template_file": str(template),
    }
    values.update(kube)
    return Settings(kubernetes=values, logging={"base_log_folder": str(tmp_path / "logs")})


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.executor = KubernetesExecutor(settings)
        self.events: queue.Queue[TryEnded] = queue.Queue()
        self.executor.start(self.events.put)

    def next_event(self, timeout: float = 20.0) -> TryEnded:
        return self.events.get(timeout=timeout)

    def collect(self, n: int, timeout: float = 30.0) -> dict[TryKey, TryEnded]:
        out = {}
        for _ in range(n):
            event = self.next_event(timeout)
            assert event.key not in out, f"two end events for {event.key}"
            out[event.key] = event
        return out


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.executor.stop()


def req(task: str, try_number: int = 1, run: str = "r1", **config: Any) -> LaunchRequest:
    env = [{"name": k.upper(), "value": str(v)} for k, v in config.pop("env", {}).items()]
    if env:
        config["env"] = env
    return LaunchRequest(
        TryKey("dag", run, task, try_number),
        hash(task) % 10_000,
        "tok",
        "d.py",
        "/d.py",
        executor_config=config,
    )


def start(harnesses: list[Harness], tmp_path: Path, kubeconfig: Path, **kube: Any) -> Harness:
    h = Harness(make_settings(tmp_path, kubeconfig, **kube))
    harnesses.append(h)
    return h


def test_tries_run_as_pods_and_finished_pods_follow_the_settings(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    seen_at_capture: list[tuple[str, bool, str]] = []
    h.executor.log_capture = lambda pod, reason: seen_at_capture.append(
        (pod["metadata"]["name"], sim.pod(NS, pod["metadata"]["name"]) is not None, reason)
    )
    results = h.executor.launch_many(
        [req("ok"), req("bad", env={"code": 3}), req("bad2", run="r2", env={"code": 1})]
    )
    assert results == [
        f"{NS}/{pod_name(r.key)}" for r in (req("ok"), req("bad"), req("bad2", run="r2"))
    ]
    events = h.collect(3)
    ok, bad = events[req("ok").key], events[req("bad").key]
    assert (ok.exit_code, ok.reason, ok.failed_before_start) == (0, None, False)
    assert bad.exit_code == 3 and bad.reason == "exited with code 3 (Error)"
    assert h.executor.running() == set()
    # success: deleted (after its log was captured); failure: kept for inspection, and its
    # log captured too
    sim.wait_for(lambda: sim.pod(NS, pod_name(req("ok").key)) is None)
    sim.wait_for(lambda: len(seen_at_capture) == 3)
    assert sorted(seen_at_capture) == sorted(
        [
            (pod_name(req("ok").key), True, "the container exited with code 0"),
            (pod_name(req("bad").key), True, "the container exited with code 3"),
            (pod_name(req("bad2", run="r2").key), True, "the container exited with code 1"),
        ]
    )
    assert sim.pod(NS, pod_name(req("bad").key))["status"]["phase"] == "Failed"
    assert "args ['task', 'run', 'dag', 'bad', 'r1', '--try', '1', '--log-file'" in sim.pod_log(
        NS, pod_name(req("bad").key)
    )
    # no polling: the watch told us everything
    assert "get" not in h.executor.api.requests
    assert h.executor.api.requests["create"] == 3 and h.executor.api.requests["delete"] == 1
    # kept failed pods go after the retention period (reconcile, one list call)
    h.executor.kube.failed_worker_pod_retention = 0
    h.executor.reconcile()
    sim.wait_for(lambda: not sim.pods(NS))


def test_delete_on_failure_and_duplicate_launch(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig, delete_worker_pods_on_failure=True)
    runs = tmp_path / "runs.txt"
    request = req("dup", env={"code": 1, "sleep": 0.5, "runs": runs})
    first = h.executor.launch(request)
    assert h.executor.launch(request) == first  # 409 AlreadyExists: launched already
    event = h.next_event()
    assert event.exit_code == 1
    sim.wait_for(lambda: not sim.pods(NS))
    assert runs.read_text().splitlines() == [pod_name(request.key)]
    with pytest.raises(queue.Empty):
        h.events.get(timeout=0.3)


def test_invalid_executor_config_fails_the_launch_at_once(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    results = h.executor.launch_many([req("x", resources={"limitz": {}}), req("ok")])
    assert isinstance(results[0], LaunchError)
    assert "executor_config.resources.limitz" in str(results[0])
    assert isinstance(results[1], str)
    assert h.next_event().key == req("ok").key
    assert h.executor.running() == set()


def test_rbac_denial_names_verb_and_resource(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    sim.update_faults(forbidden=["create pods"])
    h = start(harnesses, tmp_path, kubeconfig)
    with pytest.raises(LaunchError, match=r'RBAC.*"create" "pods"'):
        h.executor.launch(req("x"))
    assert h.executor.running() == set()


def test_oom_eviction_and_image_pull_reasons(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    sim.update_faults(
        oom_kill_selector="ketch.io/task-id=oom",
        evict_selector="ketch.io/task-id=evicted",
        image_pull_failures=["missing:1"],
    )
    h = start(harnesses, tmp_path, kubeconfig)
    h.executor.launch_many(
        [
            req("oom", env={"sleep": 30}, resources={"limits": {"memory": "64Mi"}}),
            req("evicted", env={"sleep": 30}),
            req("pull", image="missing:1"),
            req("pull", 2, image="missing:1"),
        ]
    )
    events = h.collect(4)
    oom = events[req("oom").key]
    assert oom.exit_code == 137 and oom.reason == "OOMKilled (memory limit 64Mi)"
    assert not oom.failed_before_start
    evicted = events[req("evicted").key]
    assert evicted.reason is not None and evicted.reason.startswith("pod evicted")
    pulls = [events[req("pull").key], events[req("pull", 2).key]]
    assert all(
        "ErrImagePull" in (e.reason or "") or "ImagePullBackOff" in (e.reason or "") for e in pulls
    )
    # both are reported as failures before start; the scheduler decides how many are free
    # (from the try history: tests/unit/test_scheduler_recovery.py)
    assert [e.failed_before_start for e in pulls] == [True, True]
    # pods that never started are deleted (there is nothing to inspect)
    sim.wait_for(lambda: all(sim.pod(NS, pod_name(req("pull", n).key)) is None for n in (1, 2)))


def test_pending_timeout_reports_unschedulable_with_events(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    sim.update_faults(unschedulable_selector="ketch.io/task-id=stuck")
    h = start(harnesses, tmp_path, kubeconfig, worker_pods_pending_timeout=1.0)
    h.executor.launch(req("stuck"))
    event = h.next_event()
    assert event.failed_before_start and event.exit_code is None
    assert "worker_pods_pending_timeout" in (event.reason or "")
    assert "Unschedulable" in (event.reason or "") and "FailedScheduling" in (event.reason or "")
    sim.wait_for(lambda: sim.pod(NS, pod_name(req("stuck").key)) is None)


def test_cancel_deletes_the_pod(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    request = req("long", env={"sleep": 60})
    h.executor.launch(request)
    sim.wait_for(
        lambda: (
            (sim.pod(NS, pod_name(request.key)) or {}).get("status", {}).get("phase") == "Running"
        )
    )
    h.executor.cancel(request.key)
    event = h.next_event()
    assert event.key == request.key and "cancelled" in (event.reason or "")
    sim.wait_for(lambda: sim.pod(NS, pod_name(request.key)) is None)


def test_watch_resumes_and_relists_after_410(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    watcher = h.executor._watcher
    assert watcher is not None and watcher.synced.wait(10)
    h.executor.launch(req("a", env={"sleep": 0.5}))
    sim.compact()
    sim.drop_watches()
    assert h.next_event().key == req("a").key
    sim.wait_for(lambda: watcher.relists >= 2)


def test_adoption_after_restart(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    first = start(harnesses, tmp_path, kubeconfig)
    running, finished, orphan = (
        req("running", env={"sleep": 2}),
        req("finished"),
        req("orphan", env={"sleep": 60}),
    )
    ids = dict(
        zip(
            ("running", "finished", "orphan"),
            first.executor.launch_many([running, finished, orphan]),
            strict=True,
        )
    )
    sim.wait_for(
        lambda: (
            (sim.pod(NS, pod_name(running.key)) or {}).get("status", {}).get("phase") == "Running"
        )
    )
    first.executor.stop()  # the scheduler dies; "finished" ends while nobody watches
    sim.wait_for(lambda: sim.pod(NS, pod_name(finished.key))["status"]["phase"] == "Succeeded")

    second = start(harnesses, tmp_path, kubeconfig)
    assert second.executor._watcher is not None and second.executor._watcher.synced.wait(10)
    lists_before = second.executor.api.requests.get("list", 0)
    offers = [
        RunningTry(running.key, running.ti_id, ids["running"]),
        RunningTry(finished.key, finished.ti_id, ids["finished"]),
        RunningTry(req("vanished").key, 1, f"{NS}/gone"),  # launched, pod gone
        RunningTry(req("never").key, 2, None),  # never launched: the scheduler relaunches it
    ]
    adopted = second.executor.adopt(offers)
    assert second.executor.api.requests["list"] == lists_before + 1  # ONE list call
    assert set(adopted) == {running.key, finished.key}
    events = second.collect(3)
    assert events[finished.key].exit_code == 0
    assert events[req("vanished").key].exit_code is None and "vanished" in (
        events[req("vanished").key].reason or ""
    )
    # every end names the pod (its hostname), also when the pod is gone
    assert {k: e.hostname for k, e in events.items()} == {k: pod_name(k) for k in events}
    assert events[running.key].exit_code == 0
    # the orphan's try is not queued or running any more: its pod is removed
    sim.wait_for(lambda: not sim.pods(NS))
    with pytest.raises(queue.Empty):
        second.events.get(timeout=0.3)


def test_api_faults_lose_nothing_and_run_nothing_twice(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    sim.update_faults(
        api_error_rate=0.1,
        api_timeout_rate=0.03,
        api_timeout_seconds=0.3,
        api_timeout_after_commit=True,
        watch_drop_after_seconds=1.0,
        seed=7,
    )
    h = start(harnesses, tmp_path, kubeconfig)
    runs = tmp_path / "runs.txt"
    requests = [req(f"t{i}", env={"runs": runs, "sleep": 0.2}) for i in range(20)]
    results = h.executor.launch_many(requests)
    assert all(isinstance(r, str) for r in results), results
    events = h.collect(20, timeout=60)
    assert {e.exit_code for e in events.values()} == {0}
    lines = runs.read_text().splitlines()
    assert sorted(lines) == sorted(pod_name(r.key) for r in requests)  # each ran exactly once
    sim.faults = Faults()
    h.executor.reconcile()  # deletes lost to faults are retried by the reconciliation
    sim.wait_for(lambda: not sim.pods(NS), timeout=20)


def test_api_down_keeps_the_try_queued_and_creates_it_later(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    h.executor.api.retry_deadline = 0.3
    sim.update_faults(api_error_rate=1.0, api_error_codes=[503])
    request = req("later")
    assert h.executor.launch(request) == f"{NS}/{pod_name(request.key)}"
    assert h.executor.running() == {request.key}
    with pytest.raises(queue.Empty):
        h.events.get(timeout=0.5)
    sim.faults = Faults()
    event = h.next_event()
    assert (event.key, event.exit_code) == (request.key, 0)


# -- orphans, hostnames, watch backoff (issue 7: a scheduler restart never strands a run) ------


def running(sim: KubeSimulator, name: str, namespace: str | None = None) -> bool:
    pod = sim.pod(namespace or NS, name) or {}
    return pod.get("status", {}).get("phase") == "Running" and not pod["metadata"].get(
        "deletionTimestamp"
    )


def create_untracked(h: Harness, request: LaunchRequest) -> str:
    """A try's pod created behind the executor's back (as a previous scheduler did)."""
    pod = h.executor.builder.build(request)
    assert h.executor.api.create_pod(pod)
    return str(pod["metadata"]["name"])


def test_adopt_with_no_tries_deletes_orphans_with_one_list_call(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    first = start(harnesses, tmp_path, kubeconfig)
    orphan = req("orphan", env={"sleep": 60})
    first.executor.launch(orphan)
    sim.wait_for(lambda: running(sim, pod_name(orphan.key)))
    first.executor.stop()  # the scheduler dies; its tries are then cleared or marked
    done, failed = req("done"), req("failed", env={"code": 2})
    for request in (done, failed):  # ended while no scheduler watched
        create_untracked(first, request)
    sim.wait_for(
        lambda: (
            [
                (sim.pod(NS, pod_name(r.key)) or {}).get("status", {}).get("phase")
                for r in (done, failed)
            ]
            == ["Succeeded", "Failed"]
        )
    )
    # not ours to touch: a ketch pod of another namespace, a pod without ketch's labels
    other_ns = f"{NS}-other"
    (tmp_path / "other").mkdir()
    other = start(harnesses, tmp_path / "other", kubeconfig, namespace=other_ns)
    elsewhere = req("elsewhere", env={"sleep": 60})
    other.executor.launch(elsewhere)
    stranger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stranger", "labels": {"app": "other"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "x",
                    "command": [sys.executable, "-c", "import time; time.sleep(60)"],
                }
            ]
        },
    }
    assert first.executor.api.create_pod(stranger)
    sim.wait_for(
        lambda: running(sim, "stranger") and running(sim, pod_name(elsewhere.key), other_ns)
    )

    second = start(harnesses, tmp_path, kubeconfig)
    lists_before = second.executor.api.requests.get("list", 0)
    assert second.executor.adopt([]) == []  # the scheduler always adopts at start
    assert second.executor.api.requests["list"] == lists_before + 1  # one list call
    assert "get" not in second.executor.api.requests  # and no per-pod GET
    # the running orphan is deleted at once (not at the next reconcile), the succeeded one
    # too; the failed one is kept for inspection (delete_worker_pods_on_failure is off)
    sim.wait_for(
        lambda: (
            sim.pod(NS, pod_name(orphan.key)) is None and sim.pod(NS, pod_name(done.key)) is None
        )
    )
    assert sim.pod(NS, pod_name(failed.key))["status"]["phase"] == "Failed"
    assert running(sim, "stranger") and running(sim, pod_name(elsewhere.key), other_ns)
    # orphans are not tries: no end is reported for them
    with pytest.raises(queue.Empty):
        second.events.get(timeout=0.3)
    other.executor.cancel(elsewhere.key)
    assert other.next_event().key == elsewhere.key
    first.executor.api.delete_pod("stranger", grace_period_seconds=0)


def test_reconcile_deletes_running_orphans_once_adoption_happened(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    early = req("early", env={"sleep": 60})
    create_untracked(h, early)
    sim.wait_for(lambda: running(sim, pod_name(early.key)))
    # before the scheduler offered its tries, an untracked pod may be one it still runs
    h.executor.reconcile()
    assert "delete" not in h.executor.api.requests
    assert h.executor.adopt([RunningTry(early.key, early.ti_id, f"{NS}/x")]) == [early.key]

    mine = req("mine", env={"sleep": 60})
    h.executor.launch(mine)
    late = req("late", env={"sleep": 60})  # e.g. left by a scheduler that was not quite dead
    create_untracked(h, late)
    sim.wait_for(lambda: running(sim, pod_name(late.key)) and running(sim, pod_name(mine.key)))
    h.executor.reconcile()
    sim.wait_for(lambda: sim.pod(NS, pod_name(late.key)) is None)
    assert running(sim, pod_name(early.key)) and running(sim, pod_name(mine.key))
    assert h.executor.running() == {early.key, mine.key}
    assert h.executor.api.requests["delete"] == 1
    with pytest.raises(queue.Empty):
        h.events.get(timeout=0.3)
    for key in (early.key, mine.key):
        h.executor.cancel(key)
    assert set(h.collect(2)) == {early.key, mine.key}


def test_reconcile_spares_a_pod_whose_create_is_in_flight(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    h.executor.adopt([])
    runs = tmp_path / "runs.txt"
    request = req("slow-create", env={"runs": runs, "sleep": 1})
    # the create takes effect but its answer is lost after 3 s: the launch is still waiting
    # while the pod already runs
    sim.update_faults(
        api_fault_verbs=["create"],
        api_timeout_rate=1.0,
        api_timeout_after_commit=True,
        api_timeout_seconds=3.0,
    )
    launcher = threading.Thread(target=h.executor.launch, args=(request,))
    launcher.start()
    sim.wait_for(lambda: sim.pod(NS, pod_name(request.key)) is not None)
    h.executor.reconcile()
    sim.faults = Faults()
    launcher.join(30)
    # not taken for an orphan: it ran to its end (a deletion would have killed it: exit 143)
    event = h.next_event()
    assert (event.key, event.exit_code, event.reason) == (request.key, 0, None)
    assert runs.read_text().splitlines() == [pod_name(request.key)]


def test_try_ended_events_name_the_pods_hostname(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, harnesses: list[Harness]
) -> None:
    h = start(harnesses, tmp_path, kubeconfig)
    hosts = tmp_path / "hosts.txt"
    template = yaml.safe_load((tmp_path / "pod_template.yaml").read_text())
    template["spec"]["hostname"] = "worker-7"
    custom = tmp_path / "custom_template.yaml"
    custom.write_text(yaml.safe_dump(template))
    plain = req("plain", env={"hosts": hosts})
    named = req("named", env={"hosts": hosts}, pod_template_file=str(custom))
    long = req("long", env={"sleep": 60})
    h.executor.launch_many([plain, named, long])
    events = h.collect(2)
    assert events[plain.key].hostname == pod_name(plain.key)
    assert events[named.key].hostname == "worker-7"
    assert {e.pid for e in events.values()} == {None}
    # the hostname each try saw in its pod (what it records at start) is the one reported
    assert sorted(hosts.read_text().split()) == sorted(e.hostname for e in events.values())
    sim.wait_for(lambda: running(sim, pod_name(long.key)))
    h.executor.cancel(long.key)
    assert h.next_event().hostname == pod_name(long.key)


def test_pod_hostname_is_what_the_kubelet_gives_the_pod() -> None:
    meta = {"metadata": {"name": "dag-t-1-abc"}}
    assert pod_hostname(meta) == "dag-t-1-abc"
    assert pod_hostname({**meta, "spec": {"hostname": "worker-7"}}) == "worker-7"
    assert pod_hostname({"metadata": {"name": "a" * 62 + "-b"}}) == "a" * 62
    # hostNetwork: the node's hostname, known once scheduled; an FQDN we cannot know: None
    assert pod_hostname({**meta, "spec": {"hostNetwork": True}}) is None
    assert pod_hostname({**meta, "spec": {"hostNetwork": True, "nodeName": "n1"}}) == "n1"
    fqdn = {"setHostnameAsFQDN": True, "subdomain": "s"}
    assert pod_hostname({**meta, "spec": fqdn}) is None


def test_a_watch_that_ends_at_once_is_reopened_with_growing_delays(
    sim: KubeSimulator, kubeconfig: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = KubeApi(make_settings(tmp_path, kubeconfig).kubernetes)
    opened: list[float] = []
    watch_pods = api.watch_pods

    def counting_watch(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        opened.append(time.monotonic())
        return watch_pods(*args, **kwargs)

    api.watch_pods = counting_watch  # type: ignore[method-assign]
    # timeoutSeconds=0: the simulator ends every watch at once, cleanly, with no event
    watcher = PodWatcher(
        api, SELECTOR, lambda kind, pod: None, lambda pods: None, timeout_seconds=0
    )
    caplog.set_level(logging.WARNING, logger=watch_module.__name__)
    watcher.start()
    try:
        time.sleep(2.0)
    finally:
        watcher.stop()
    # reopened, but not in a hot loop: 0.1 s, 0.2 s, 0.4 s, 0.8 s ... between watches
    assert 2 <= len(opened) <= 6, len(opened)
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(gap >= 0.1 * 2**i * 0.99 for i, gap in enumerate(gaps)), gaps
    assert watcher.relists == 1  # each watch resumed from the list's resourceVersion
    warnings = [r for r in caplog.records if r.name == watch_module.__name__]
    assert len(warnings) == 1 and "ended at once" in warnings[0].getMessage()


class _ScriptedApi:
    """Watches that deliver the scripted events, one script per watch, then stop the watcher."""

    def __init__(self, scripts: list[list[dict[str, Any]]]) -> None:
        self.scripts = scripts
        self.watcher: PodWatcher | None = None

    def list_pods(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        return [], "1"

    def watch_pods(self, *args: Any) -> Iterator[dict[str, Any]]:
        assert self.watcher is not None
        if not self.scripts:
            self.watcher._stop.set()
            return iter(())
        return iter(self.scripts.pop(0))


class _RecordingStop(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


def test_watch_backoff_resets_once_a_watch_delivers_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}}
    api = _ScriptedApi([[], [], [], [bookmark], [], []])
    watcher = PodWatcher(api, SELECTOR, lambda kind, pod: None, lambda pods: None)  # type: ignore[arg-type]
    api.watcher = watcher
    stop = _RecordingStop()
    watcher._stop = stop
    caplog.set_level(logging.WARNING, logger=watch_module.__name__)
    watcher._run()
    # three empty ends back off 0.1, 0.2, 0.4; the bookmark resets it; then 0.1, 0.2 again
    assert stop.waits == [0.1, 0.2, 0.4, 0.1, 0.2]
    assert watcher.resource_version == "5"
    assert len([r for r in caplog.records if r.name == watch_module.__name__]) == 2  # per streak
