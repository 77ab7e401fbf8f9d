"""Fault injection in the Kubernetes API simulator, seen through the official client."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from ketch.testing.kube_sim import Faults, KubeSimulator
from tests.unit.test_kube_sim import NS, core_api, pod_body, py, terminated

SLEEPER = py("import time; print('started', flush=True); time.sleep(60)")


@pytest.fixture
def sim() -> Iterator[KubeSimulator]:
    s = KubeSimulator().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def api(sim: KubeSimulator, tmp_path: Path) -> client.CoreV1Api:
    return core_api(sim, tmp_path)


def waiting_reason(sim: KubeSimulator, name: str) -> str | None:
    pod = sim.pod(NS, name) or {}
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None


def event_reasons(api: client.CoreV1Api, name: str) -> list[str]:
    return [
        e.reason
        for e in api.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    ]


def test_api_errors_429_and_500_have_no_effect(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(api_error_rate=1.0, api_error_codes=(429,))
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, pod_body("e", py("pass")))
    assert exc.value.status == 429
    assert exc.value.headers["Retry-After"] == "1"
    assert json.loads(exc.value.body)["reason"] == "TooManyRequests"
    sim.update_faults(api_error_codes=(500,))
    with pytest.raises(ApiException) as exc:
        api.list_namespaced_pod(NS)
    assert exc.value.status == 500
    assert sim.pods(NS) == []
    sim.update_faults(api_error_rate=0.0)
    api.create_namespaced_pod(NS, pod_body("e", py("pass")))


def test_api_error_rate_is_a_fraction_and_retries_never_duplicate(tmp_path: Path) -> None:
    with KubeSimulator(faults=Faults(api_error_rate=0.3, seed=7)) as sim:
        api = core_api(sim, tmp_path)
        failures = 0
        for i in range(20):
            while True:
                try:
                    api.create_namespaced_pod(NS, pod_body(f"p{i}", None))
                    break
                except ApiException as exc:
                    assert exc.status in (429, 500)
                    failures += 1
        assert 0 < failures < 40
        assert len(sim.pods(NS)) == 20


def test_api_faults_restricted_to_verbs(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(api_error_rate=1.0, api_error_codes=(503,), api_fault_verbs={"create"})
    api.list_namespaced_pod(NS)
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, pod_body("v", py("pass")))
    assert exc.value.status == 503
    assert sim.faults.to_json()["api_fault_verbs"] == ["create"]


def test_request_timeout_drops_the_answer(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(api_timeout_rate=1.0, api_timeout_seconds=0.5)
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.list_namespaced_pod(NS, _request_timeout=0.2)
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.create_namespaced_pod(NS, pod_body("t", py("pass")), _request_timeout=0.2)
    assert sim.pod(NS, "t") is None  # timed out before taking effect


def test_timeout_after_commit_creates_then_loses_the_answer(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    sim.update_faults(api_timeout_rate=1.0, api_timeout_seconds=0.3, api_timeout_after_commit=True)
    with pytest.raises(urllib3.exceptions.HTTPError):
        api.create_namespaced_pod(NS, pod_body("lost", py("pass")), _request_timeout=5)
    assert sim.pod(NS, "lost") is not None
    sim.update_faults(api_timeout_rate=0.0)
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, pod_body("lost", py("pass")))
    assert exc.value.status == 409


def test_added_latency_applies_to_every_request(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(latency_seconds=0.05)
    started = time.monotonic()
    for _ in range(4):
        api.list_namespaced_pod(NS)
    assert time.monotonic() - started >= 4 * 0.05  # a lower bound: the delay was injected


def test_dropped_watch_connections(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(watch_drop_after_seconds=0.3)
    rv = api.list_namespaced_pod(NS).metadata.resource_version
    resp = api.list_namespaced_pod(NS, watch=True, resource_version=rv, _preload_content=False)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in resp.stream(1024):
            pass
    # a watch opened before the fault is dropped too
    sim.update_faults(watch_drop_after_seconds=None)
    resp = api.list_namespaced_pod(NS, watch=True, resource_version=rv, _preload_content=False)
    sim.wait_for(lambda: sim.request_count.get("watch") == 2)
    sim.update_faults(watch_drop_after_seconds=0.0)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in resp.stream(1024):
            pass
    # drop on demand
    sim.update_faults(watch_drop_after_seconds=None)
    resp = api.list_namespaced_pod(NS, watch=True, resource_version=rv, _preload_content=False)
    sim.wait_for(lambda: sim.request_count.get("watch") == 3)
    time.sleep(0.1)  # let the server reach its wait
    sim.drop_watches()
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in resp.stream(1024):
            pass


def test_image_pull_failure_keeps_pod_pending_until_cleared(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    sim.update_faults(image_pull_failures={"registry.example/missing:1"})
    api.create_namespaced_pod(
        NS, pod_body("pull", py("print('ran')"), image="registry.example/missing:1")
    )
    sim.wait_for(lambda: waiting_reason(sim, "pull") == "ImagePullBackOff")
    pod = sim.pod(NS, "pull")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    reasons = event_reasons(api, "pull")
    assert "Failed" in reasons and "BackOff" in reasons
    messages = [
        e.message
        for e in api.list_namespaced_event(NS, field_selector="involvedObject.name=pull").items
    ]
    assert any("ErrImagePull" in m for m in messages)
    sim.update_faults(image_pull_failures=set())
    sim.wait_for_phase(NS, "pull", "Succeeded")


def test_first_pull_failure_reports_err_image_pull(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    sim.update_faults(image_pull_failures={"bad:1"})
    rv = api.list_namespaced_pod(NS).metadata.resource_version
    api.create_namespaced_pod(NS, pod_body("pull2", None, image="bad:1"))
    reasons = []
    w = watch.Watch()
    for e in w.stream(api.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=10):
        for st in e["object"].status.container_statuses or []:
            if st.state.waiting and st.state.waiting.reason not in reasons:
                reasons.append(st.state.waiting.reason)
        if "ImagePullBackOff" in reasons:
            w.stop()
    assert reasons == ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"]


def test_unschedulable(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(unschedulable_selector="size=huge")
    api.create_namespaced_pod(NS, pod_body("huge", py("pass"), labels={"size": "huge"}))
    api.create_namespaced_pod(NS, pod_body("small", py("pass"), labels={"size": "small"}))
    sim.wait_for_phase(NS, "small", "Succeeded")

    def scheduled_condition() -> dict[str, Any] | None:
        pod = sim.pod(NS, "huge") or {}
        conds = [
            c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == "PodScheduled"
        ]
        return conds[0] if conds else None

    cond = sim.wait_for(scheduled_condition)
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert sim.pod(NS, "huge")["status"]["phase"] == "Pending"  # type: ignore[index]
    events = api.list_namespaced_event(NS, field_selector="involvedObject.name=huge").items
    assert [e.reason for e in events] == ["FailedScheduling"]
    assert events[0].type == "Warning" and "nodes are available" in events[0].message
    sim.update_faults(unschedulable_selector=None)
    sim.wait_for_phase(NS, "huge", "Succeeded")


def test_oom_kill(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(oom_kill_selector="task=big", oom_after_seconds=0.2)
    api.create_namespaced_pod(NS, pod_body("big", SLEEPER, labels={"task": "big"}))
    pod = sim.wait_for_phase(NS, "big", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["reason"] == "OOMKilled"
    assert terminated(pod)["exitCode"] == 137
    assert api.read_namespaced_pod_log("big", NS) == "started\n"
    # init containers are not OOM-killed by the fault; the main container is
    with_init = pod_body("big-init", SLEEPER, labels={"task": "big"})
    with_init["spec"]["initContainers"] = [
        {"name": "init", "image": "x", "command": py("import time; time.sleep(0.4)")}
    ]
    api.create_namespaced_pod(NS, with_init)
    pod = sim.wait_for_phase(NS, "big-init", "Failed")
    assert terminated(pod, key="initContainerStatuses")["exitCode"] == 0
    assert terminated(pod)["reason"] == "OOMKilled"
    # on demand
    sim.update_faults(oom_kill_selector=None)
    api.create_namespaced_pod(NS, pod_body("big2", SLEEPER))
    sim.wait_for(lambda: sim.pod_log(NS, "big2"))
    sim.oom_kill(NS, "big2")
    assert terminated(sim.wait_for_phase(NS, "big2", "Failed"))["reason"] == "OOMKilled"


def test_eviction(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(evict_selector="", evict_after_seconds=0.2)
    api.create_namespaced_pod(NS, pod_body("ev", SLEEPER))
    pod = sim.wait_for_phase(NS, "ev", ("Succeeded", "Failed"))
    assert pod["status"]["reason"] == "Evicted"
    assert "low on resource" in pod["status"]["message"]
    assert "Evicted" in event_reasons(api, "ev")
    sim.update_faults(evict_selector=None)
    api.create_namespaced_pod(NS, pod_body("ev2", SLEEPER))
    sim.wait_for(lambda: sim.pod_log(NS, "ev2"))
    sim.evict(NS, "ev2")
    assert sim.wait_for_phase(NS, "ev2", "Failed")["status"]["reason"] == "Evicted"
    assert api.read_namespaced_pod_log("ev2", NS) == "started\n"  # readable until deleted


def test_forbidden_names_verb_and_resource(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    sim.update_faults(forbidden={"create pods", "list events"})
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, pod_body("rbac", py("pass")))
    assert exc.value.status == 403
    assert 'cannot create resource "pods"' in json.loads(exc.value.body)["message"]
    with pytest.raises(ApiException) as exc:
        api.list_namespaced_event(NS)
    assert 'cannot list resource "events"' in json.loads(exc.value.body)["message"]
    api.list_namespaced_pod(NS)


def test_admin_endpoint_changes_faults_at_runtime(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    def admin(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            sim.url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    status, faults = admin(
        "PATCH", "/_sim/faults", {"api_error_rate": 1.0, "api_error_codes": [500]}
    )
    assert status == 200 and faults["api_error_rate"] == 1.0
    assert sim.faults.api_error_codes == (500,)
    with pytest.raises(ApiException):
        api.list_namespaced_pod(NS)
    assert admin("GET", "/_sim/faults")[1]["api_error_rate"] == 1.0  # admin is never faulted
    assert admin("PATCH", "/_sim/faults", {"bogus": 1})[0] == 400
    admin("PUT", "/_sim/faults", {"api_error_rate": 0.0})
    api.list_namespaced_pod(NS)
    assert admin("GET", "/_sim/requests")[1]["list"] == 2
    # pod faults on demand
    api.create_namespaced_pod(NS, pod_body("adm", SLEEPER))
    sim.wait_for(lambda: sim.pod_log(NS, "adm"))
    assert admin("POST", f"/_sim/pods/{NS}/adm/oom-kill")[0] == 200
    assert terminated(sim.wait_for_phase(NS, "adm", "Failed"))["reason"] == "OOMKilled"
    assert admin("POST", f"/_sim/pods/{NS}/absent/evict")[0] == 404


def test_faults_given_at_start(tmp_path: Path) -> None:
    with KubeSimulator(faults=Faults(forbidden=frozenset({"list pods"}))) as sim:
        api = core_api(sim, tmp_path)
        with pytest.raises(ApiException) as exc:
            api.list_namespaced_pod(NS)
        assert exc.value.status == 403


# A container whose processes leave its process group: a child in a session of its own (as
# ketch's log pump is) and an orphan of a middle process that exited (reparented, no longer
# a descendant of the container's main process). Each prints its pid.
ESCAPERS = py(
    """
    import subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = subprocess.Popen(sleep, start_new_session=True)
    print("child", child.pid, flush=True)
    spawn = f"import subprocess; p = subprocess.Popen({sleep!r}, start_new_session=True);"
    spawn += " print('orphan', p.pid, flush=True)"
    subprocess.run([sys.executable, "-c", spawn], check=True)
    time.sleep(60)
    """
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("kill", ["oom_kill", "evict", "delete"])
def test_killing_a_container_kills_every_process_of_it(
    sim: KubeSimulator, api: client.CoreV1Api, kill: str
) -> None:
    """A real kubelet kills a container through its cgroup: an OOM kill, an eviction or a
    deletion's SIGKILL leaves no process of it alive, in whatever session or group."""
    name = f"escape-{kill.replace('_', '-')}"
    body = pod_body(name, ESCAPERS)
    body["spec"]["terminationGracePeriodSeconds"] = 0
    api.create_namespaced_pod(NS, body)
    # Whole lines only: with PYTHONUNBUFFERED a print's pieces arrive one write each.
    sim.wait_for(lambda: re.search(r"^orphan \d+\n", sim.pod_log(NS, name), re.M))
    pids = {
        word: int(pid)
        for word, pid in re.findall(r"^(child|orphan) (\d+)\n", sim.pod_log(NS, name), re.M)
    }
    assert set(pids) == {"child", "orphan"}
    assert not any(_gone(pid) for pid in pids.values())
    procs = [psutil.Process(pid) for pid in pids.values()]  # (a pid reused later is not ours)
    if kill == "delete":
        api.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    else:
        getattr(sim, kill)(NS, name)
        sim.wait_for_phase(NS, name, "Failed")
    try:
        sim.wait_for(lambda: all(_gone(pid) for pid in pids.values()), timeout=10)
    finally:
        for proc in procs:  # what the simulator missed must not outlive the test
            with contextlib.suppress(psutil.Error):
                proc.kill()
