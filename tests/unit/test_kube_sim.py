"""The Kubernetes API simulator, driven by the official ``kubernetes`` client (and kubectl once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from ketch.testing.kube_sim import Faults, KubeSimulator

NS = "sim-test"


@pytest.fixture
def sim() -> Iterator[KubeSimulator]:
    s = KubeSimulator(bookmark_interval=0.2).start()
    try:
        yield s
    finally:
        s.stop()


def core_api(sim: KubeSimulator, tmp_path: Path) -> client.CoreV1Api:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture
def api(sim: KubeSimulator, tmp_path: Path) -> client.CoreV1Api:
    return core_api(sim, tmp_path)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def pod_body(
    name: str,
    command: list[str] | None = None,
    labels: dict[str, str] | None = None,
    image: str = "ketch:test",
    **container: Any,
) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "base", "image": image, **container}
    if command is not None:
        base["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "ketch"}},
        "spec": {"restartPolicy": "Never", "containers": [base]},
    }


def terminated(
    pod: dict[str, Any], index: int = 0, key: str = "containerStatuses"
) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"][key][index]["state"]
    return state["terminated"]


# -- discovery and metadata ------------------------------------------------------------------


def test_discovery_and_version(sim: KubeSimulator, tmp_path: Path) -> None:
    api_client = config.new_client_from_config(
        config_file=str(sim.write_kubeconfig(tmp_path / "kc"))
    )
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    names = {r.name for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert {"pods", "pods/log", "events"} <= names


def test_create_fills_server_side_metadata_and_rejects_duplicates(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    first = api.create_namespaced_pod(NS, pod_body("a", py("pass")))
    second = api.create_namespaced_pod(NS, pod_body("b", py("pass")))
    assert first.metadata.uid and first.metadata.uid != second.metadata.uid
    assert first.metadata.namespace == NS
    assert first.metadata.creation_timestamp is not None
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert first.status.phase == "Pending"
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, pod_body("a", py("pass")))
    assert exc.value.status == 409
    assert json.loads(exc.value.body)["reason"] == "AlreadyExists"
    assert api.read_namespaced_pod("a", NS).metadata.uid == first.metadata.uid
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404
    # dryRun validates without storing
    api.create_namespaced_pod(NS, pod_body("dry", py("pass")), dry_run="All")
    assert sim.pod(NS, "dry") is None


@pytest.mark.parametrize(
    "body",
    [
        pod_body("Bad_Name", py("pass")),
        pod_body("ok", py("pass"), labels={"ketch.io/run-id": "manual__2026-01-01T00:00:00+00:00"}),
        pod_body("ok", py("pass"), image=""),
    ],
)
def test_invalid_pods_are_rejected_with_422(api: client.CoreV1Api, body: dict[str, Any]) -> None:
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_pod(NS, body)
    assert exc.value.status == 422
    assert json.loads(exc.value.body)["reason"] == "Invalid"


def test_list_with_label_selectors(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    for name, task in (("p1", "extract"), ("p2", "load"), ("p3", "report")):
        api.create_namespaced_pod(
            NS, pod_body(name, py("pass"), labels={"app": "ketch", "task": task})
        )
    api.create_namespaced_pod("other", pod_body("p4", py("pass"), labels={"app": "ketch"}))

    def names(selector: str) -> list[str]:
        return sorted(
            p.metadata.name for p in api.list_namespaced_pod(NS, label_selector=selector).items
        )

    assert names("app=ketch") == ["p1", "p2", "p3"]
    assert names("task==load") == ["p2"]
    assert names("app=ketch,task!=load") == ["p1", "p3"]
    assert names("task in (extract, report)") == ["p1", "p3"]
    assert names("task notin (extract)") == ["p2", "p3"]
    assert names("task,!missing") == ["p1", "p2", "p3"]
    listed = api.list_namespaced_pod(NS)
    assert int(listed.metadata.resource_version) >= max(
        int(p.metadata.resource_version) for p in listed.items
    )
    assert len(api.list_pod_for_all_namespaces(label_selector="app=ketch").items) == 4
    assert [p["metadata"]["name"] for p in sim.pods("other")] == ["p4"]


# -- the fake kubelet -------------------------------------------------------------------------


def test_pod_runs_command_with_env_and_workdir(
    sim: KubeSimulator, api: client.CoreV1Api, tmp_path: Path
) -> None:
    sim.set_secret(NS, "db", {"url": "postgresql://secret"})
    sim.set_config_map(NS, "settings", {"MODE": "test"})
    body = pod_body(
        "env",
        py("""
            import os
            print(os.environ["PLAIN"], os.environ["FROM_SECRET"], os.environ["MODE"],
                  os.environ["POD_NAME"], os.getcwd())
        """),
        env=[
            {"name": "PLAIN", "value": "plain"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}}],
        workingDir=str(tmp_path),
    )
    api.create_namespaced_pod(NS, body)
    pod = sim.wait_for_phase(NS, "env", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod) | {"exitCode": 0, "reason": "Completed"} == terminated(pod)
    assert pod["status"]["startTime"]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["PodScheduled"] == "True"
    log = api.read_namespaced_pod_log("env", NS)
    assert log == f"plain postgresql://secret test env {tmp_path}\n"


def test_exit_code_fails_pod_and_stderr_is_in_the_log(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    api.create_namespaced_pod(
        NS, pod_body("bad", py("import sys; print('oops', file=sys.stderr); sys.exit(3)"))
    )
    pod = sim.wait_for_phase(NS, "bad", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["exitCode"] == 3
    assert terminated(pod)["reason"] == "Error"
    assert api.read_namespaced_pod_log("bad", NS, container="base") == "oops\n"


def test_restart_policy_restarts_containers_and_keeps_the_previous_log(
    sim: KubeSimulator, api: client.CoreV1Api, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    body = pod_body(
        "flaky",
        py(f"""
            import sys
            with open({str(marker)!r}, "a+") as f:
                f.seek(0)
                run = len(f.read())
                f.write("x")
            print(f"run {{run}}", flush=True)
            sys.exit(4 if run < 2 else 0)
        """),
    )
    body["spec"]["restartPolicy"] = "OnFailure"
    api.create_namespaced_pod(NS, body)
    pod = sim.wait_for_phase(NS, "flaky", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 4
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert terminated(pod)["exitCode"] == 0
    assert api.read_namespaced_pod_log("flaky", NS) == "run 2\n"
    assert api.read_namespaced_pod_log("flaky", NS, previous=True) == "run 1\n"
    assert sim.pod_log(NS, "flaky", previous=True) == "run 1\n"
    assert "BackOff" in [e["reason"] for e in sim.events(NS)]
    # never restarted: no previous log
    api.create_namespaced_pod(NS, pod_body("once", py("print('once')")))
    sim.wait_for_phase(NS, "once", "Succeeded")
    with pytest.raises(ApiException) as exc:
        api.read_namespaced_pod_log("once", NS, previous=True)
    assert exc.value.status == 400 and "previous terminated container" in exc.value.body


def test_restart_policy_always_restarts_until_deleted_and_oom_kills_restart(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    body = pod_body("always", py("print('hi', flush=True)"))
    body["spec"]["restartPolicy"] = "Always"
    api.create_namespaced_pod(NS, body)

    def restarts(name: str) -> int:
        pod = sim.pod(NS, name) or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return int(statuses[0].get("restartCount") or 0)

    sim.wait_for(lambda: restarts("always") >= 2)
    assert sim.pod(NS, "always")["status"]["phase"] == "Running"  # type: ignore[index]
    api.delete_namespaced_pod("always", NS, grace_period_seconds=0)
    sim.wait_for(lambda: sim.pod(NS, "always") is None)
    # an OOM-killed container of an OnFailure pod runs again; its last state says OOMKilled
    body = pod_body("oom-again", py("import time; print('up', flush=True); time.sleep(60)"))
    body["spec"]["restartPolicy"] = "OnFailure"
    api.create_namespaced_pod(NS, body)
    sim.wait_for(lambda: sim.pod_log(NS, "oom-again"))
    sim.oom_kill(NS, "oom-again")
    sim.wait_for(lambda: restarts("oom-again") == 1)
    (status,) = sim.pod(NS, "oom-again")["status"]["containerStatuses"]  # type: ignore[index]
    assert status["lastState"]["terminated"]["reason"] == "OOMKilled"
    assert status["lastState"]["terminated"]["exitCode"] == 137
    sim.wait_for(lambda: sim.pod_log(NS, "oom-again"))
    assert api.read_namespaced_pod_log("oom-again", NS, previous=True) == "up\n"
    api.delete_namespaced_pod("oom-again", NS, grace_period_seconds=0)


def test_missing_secret_keeps_pod_pending_with_config_error(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    body = pod_body(
        "nosecret",
        py("import os; print(os.environ['X'])"),
        env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}],
    )
    api.create_namespaced_pod(NS, body)

    def waiting_reason() -> str | None:
        pod = sim.pod(NS, "nosecret")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    sim.wait_for(lambda: waiting_reason() == "CreateContainerConfigError")
    sim.set_secret(NS, "absent", {"k": "now-there"})
    sim.wait_for_phase(NS, "nosecret", "Succeeded")
    assert api.read_namespaced_pod_log("nosecret", NS) == "now-there\n"


def test_init_containers_run_first_and_their_failure_fails_the_pod(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    ok = pod_body("init-ok", py("import pathlib; print(pathlib.Path('synced').read_text())"))
    ok["spec"]["initContainers"] = [
        {
            "name": "git-sync",
            "image": "git-sync:v4",
            "command": py("open('synced','w').write('dags')"),
        },
        {"name": "no-command", "image": "busybox"},
    ]
    api.create_namespaced_pod(NS, ok)
    pod = sim.wait_for_phase(NS, "init-ok", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded"
    assert [s["state"]["terminated"]["reason"] for s in pod["status"]["initContainerStatuses"]] == [
        "Completed",
        "Completed",
    ]
    assert api.read_namespaced_pod_log("init-ok", NS) == "dags\n"

    bad = pod_body("init-bad", py("open('ran', 'w')"))
    bad["spec"]["initContainers"] = [
        {"name": "git-sync", "image": "git-sync:v4", "command": py("import sys; sys.exit(2)")}
    ]
    api.create_namespaced_pod(NS, bad)
    pod = sim.wait_for_phase(NS, "init-bad", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod, key="initContainerStatuses")["exitCode"] == 2
    assert pod["status"].get("containerStatuses", [{}])[0].get("state", {}).get("waiting")
    assert api.read_namespaced_pod_log("init-bad", NS, container="git-sync") == ""


def test_image_entrypoints_and_missing_executable(sim: KubeSimulator, tmp_path: Path) -> None:
    sim2 = KubeSimulator(image_entrypoints={"ketch:1": [sys.executable, "-c"]}).start()
    try:
        api = core_api(sim2, tmp_path)
        api.create_namespaced_pod(
            NS, pod_body("ep", None, image="ketch:1", args=["print('via entrypoint')"])
        )
        api.create_namespaced_pod(NS, pod_body("noexe", ["/nonexistent/binary"]))
        assert (
            sim2.wait_for_phase(NS, "ep", ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
        )
        assert api.read_namespaced_pod_log("ep", NS) == "via entrypoint\n"
        pod = sim2.wait_for_phase(NS, "noexe", ("Succeeded", "Failed"))
        assert pod["status"]["phase"] == "Failed"
        assert terminated(pod)["reason"] == "StartError"
    finally:
        sim2.stop()


# -- watch --------------------------------------------------------------------------------------


def test_watch_streams_phases_and_resumes_from_resource_version(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    rv = api.list_namespaced_pod(NS, label_selector="app=ketch").metadata.resource_version
    api.create_namespaced_pod(NS, pod_body("w1", py("print('x')")))
    api.create_namespaced_pod(NS, pod_body("other", py("pass"), labels={"app": "other"}))
    seen: list[tuple[str, str, str]] = []
    w = watch.Watch()
    for event in w.stream(
        api.list_namespaced_pod,
        NS,
        label_selector="app=ketch",
        resource_version=rv,
        timeout_seconds=10,
    ):
        pod = event["object"]
        seen.append((event["type"], pod.metadata.name, pod.status.phase))
        if pod.status.phase == "Succeeded":
            w.stop()
    assert seen[0] == ("ADDED", "w1", "Pending")
    assert seen[-1] == ("MODIFIED", "w1", "Succeeded")
    assert ("MODIFIED", "w1", "Running") in seen
    assert all(name == "w1" for _, name, _ in seen)

    # resume from a midpoint: only later events, then DELETED after a delete
    resume_at = api.list_namespaced_pod(NS).metadata.resource_version
    api.delete_namespaced_pod("w1", NS)
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            api.list_namespaced_pod,
            NS,
            label_selector="app=ketch",
            resource_version=resume_at,
            timeout_seconds=1,
        )
    ]
    assert events == [("DELETED", "w1")]


def test_watch_without_resource_version_starts_with_current_pods(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    api.create_namespaced_pod(NS, pod_body("existing", py("pass")))
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(api.list_namespaced_pod, NS, timeout_seconds=1)
    ]
    assert events[0] == ("ADDED", "existing")


def test_watch_from_compacted_resource_version_gets_410_gone(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    old = api.list_namespaced_pod(NS).metadata.resource_version
    api.create_namespaced_pod(NS, pod_body("g", py("pass")))
    sim.wait_for_phase(NS, "g", "Succeeded")
    sim.compact()
    with pytest.raises(ApiException) as exc:
        list(
            watch.Watch().stream(
                api.list_namespaced_pod, NS, resource_version=old, timeout_seconds=5
            )
        )
    assert exc.value.status == 410
    # the raw stream: one ERROR event carrying a Status with code 410
    resp = api.list_namespaced_pod(NS, watch=True, resource_version=old, _preload_content=False)
    lines = [json.loads(line) for line in resp.data.decode().splitlines()]
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410
    assert lines[0]["object"]["reason"] == "Expired"
    # the current resourceVersion still works after a relist
    fresh = api.list_namespaced_pod(NS).metadata.resource_version
    assert (
        list(
            watch.Watch().stream(
                api.list_namespaced_pod, NS, resource_version=fresh, timeout_seconds=1
            )
        )
        == []
    )


def test_small_history_limit_expires_lagging_resource_versions(tmp_path: Path) -> None:
    with KubeSimulator(history_limit=4) as sim2:
        api = core_api(sim2, tmp_path)
        old = api.list_namespaced_pod(NS).metadata.resource_version
        for i in range(4):
            api.create_namespaced_pod(NS, pod_body(f"h{i}", None))
        sim2.wait_for(
            lambda: (
                all(p["status"]["phase"] == "Succeeded" for p in sim2.pods(NS))
                and len(sim2.pods(NS)) == 4
            )
        )
        with pytest.raises(ApiException) as exc:
            list(
                watch.Watch().stream(
                    api.list_namespaced_pod, NS, resource_version=old, timeout_seconds=2
                )
            )
        assert exc.value.status == 410


def test_watch_bookmarks_and_timeout(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    rv = api.list_namespaced_pod(NS).metadata.resource_version
    resp = api.list_namespaced_pod(
        NS,
        watch=True,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [
        json.loads(line) for line in resp.data.decode().splitlines()
    ]  # ends by timeoutSeconds
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"]["metadata"]["resourceVersion"] == rv


# -- delete ----------------------------------------------------------------------------------------

TRAP_TERM = """
    import signal, sys, time
    def term(*_):
        print("got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print("ready", flush=True)
    time.sleep(60)
"""

IGNORE_TERM = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
"""


def test_delete_with_grace_sends_sigterm_then_removes(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    api.create_namespaced_pod(NS, pod_body("graceful", py(TRAP_TERM)))
    sim.wait_for(lambda: sim.pod_log(NS, "graceful") == "ready\n")
    rv = api.list_namespaced_pod(NS).metadata.resource_version
    deleted = api.delete_namespaced_pod("graceful", NS, grace_period_seconds=30)
    assert deleted.metadata.deletion_timestamp is not None
    events = []
    for e in watch.Watch().stream(
        api.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=10
    ):
        events.append((e["type"], e["object"]))
        if e["type"] == "DELETED":
            break
    assert events[-1][0] == "DELETED"
    assert events[0][1].metadata.deletion_timestamp is not None
    assert sim.pod(NS, "graceful") is None
    assert [
        e.reason
        for e in api.list_namespaced_event(NS, field_selector="involvedObject.name=graceful").items
    ][-1] == "Killing"


def test_delete_kills_after_grace_period_and_zero_grace_is_immediate(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    api.create_namespaced_pod(NS, pod_body("stubborn", py(IGNORE_TERM)))
    api.create_namespaced_pod(NS, pod_body("now", py(IGNORE_TERM)))
    sim.wait_for(
        lambda: sim.pod_log(NS, "stubborn") == "ready\n" and sim.pod_log(NS, "now") == "ready\n"
    )
    api.delete_namespaced_pod("stubborn", NS, body=client.V1DeleteOptions(grace_period_seconds=1))
    assert sim.pod(NS, "stubborn")["metadata"]["deletionGracePeriodSeconds"] == 1
    api.delete_namespaced_pod("now", NS, grace_period_seconds=0)
    assert sim.pod(NS, "now") is None
    sim.wait_for(lambda: sim.pod(NS, "stubborn") is None, timeout=15)
    with pytest.raises(ApiException) as exc:
        api.delete_namespaced_pod("stubborn", NS)
    assert exc.value.status == 404


# -- logs and events ------------------------------------------------------------------------------


def test_log_follow_tail_and_container_selection(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    body = pod_body(
        "logs",
        py("""
            import time
            for i in range(5):
                print(f"line {i}", flush=True)
                time.sleep(0.05)
        """),
    )
    body["spec"]["containers"].append(
        {"name": "side", "image": "x", "command": py("print('side')")}
    )
    api.create_namespaced_pod(NS, body)
    sim.wait_for(lambda: sim.pod_log(NS, "logs"))
    with pytest.raises(ApiException) as exc:
        api.read_namespaced_pod_log("logs", NS)
    assert exc.value.status == 400 and "container name must be specified" in exc.value.body
    resp = api.read_namespaced_pod_log(
        "logs", NS, container="base", follow=True, _preload_content=False
    )
    followed = b"".join(resp.stream(1024)).decode()
    assert followed == "".join(f"line {i}\n" for i in range(5))
    assert (
        api.read_namespaced_pod_log("logs", NS, container="base", tail_lines=2)
        == "line 3\nline 4\n"
    )
    assert api.read_namespaced_pod_log("logs", NS, container="side") == "side\n"


def test_events_list_with_field_selector(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod_body("ev1", py("pass")))
    api.create_namespaced_pod(NS, pod_body("ev2", py("pass")))
    sim.wait_for_phase(NS, "ev1", "Succeeded")
    events = api.list_namespaced_event(NS, field_selector="involvedObject.name=ev1").items
    assert [e.reason for e in events][:2] == ["Scheduled", "Pulled"]
    assert "Started" in [e.reason for e in events]
    assert {e.involved_object.name for e in events} == {"ev1"}
    assert events[0].involved_object.kind == "Pod"
    assert events[0].source.component == "default-scheduler"


def test_request_count_by_verb(sim: KubeSimulator, api: client.CoreV1Api) -> None:
    api.create_namespaced_pod(NS, pod_body("rc", py("pass")))
    api.list_namespaced_pod(NS)
    api.read_namespaced_pod("rc", NS)
    sim.wait_for_phase(NS, "rc", "Succeeded")
    api.delete_namespaced_pod("rc", NS)
    list(watch.Watch().stream(api.list_namespaced_pod, NS, timeout_seconds=0))
    assert sim.request_count == {"create": 1, "list": 1, "get": 1, "delete": 1, "watch": 1}
    assert ("create", "pods") in sim.request_log


def test_kubectl_get_pods_and_logs(
    sim: KubeSimulator, api: client.CoreV1Api, tmp_path: Path
) -> None:
    api.create_namespaced_pod(NS, pod_body("kubectl-pod", py("print('from kubectl')")))
    sim.wait_for_phase(NS, "kubectl-pod", "Succeeded")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)}
    out = subprocess.run(
        ["/usr/bin/kubectl", f"--server={sim.url}", "get", "pods", "-n", NS],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row.split()[:3] == ["kubectl-pod", "0/1", "Completed"]
    logs = subprocess.run(
        ["/usr/bin/kubectl", f"--server={sim.url}", "logs", "-n", NS, "kubectl-pod"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    ).stdout
    assert logs == "from kubectl\n"


def test_standalone_module_serves_and_writes_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ketch.testing.kube_sim",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert line.startswith("kube-sim listening on http://127.0.0.1:")
        with urllib.request.urlopen(url + "/version", timeout=10) as resp:
            assert json.load(resp)["major"] == "1"
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        assert api.list_namespaced_pod("default").items == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_stop_kills_running_pods(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    sim2 = KubeSimulator().start()
    api = core_api(sim2, tmp_path)
    api.create_namespaced_pod(
        NS,
        pod_body(
            "long",
            py(
                f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
            ),
        ),
    )
    sim2.wait_for(lambda: marker.exists() and marker.read_text())
    pid = int(marker.read_text())
    sim2.stop()

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone()


def test_faults_object_roundtrip() -> None:
    faults = Faults().updated(
        {"api_error_rate": 0.1, "forbidden": ["create pods"], "api_error_codes": [429]}
    )
    assert faults.api_error_rate == 0.1
    assert faults.forbidden == frozenset({"create pods"})
    assert faults.to_json()["api_error_codes"] == [429]
    with pytest.raises(ValueError, match="unknown fault"):
        Faults().updated({"nope": 1})


def test_malformed_requests_are_bad_requests(sim: KubeSimulator) -> None:
    def call(method: str, path: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(sim.url + path, method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    base = f"/api/v1/namespaces/{NS}/pods"
    assert call("GET", base + "?watch=true&resourceVersion=abc")[0] == 400
    assert call("GET", base + "?labelSelector=a%20in%20")[0] == 400
    assert call("POST", base, b"not json")[0] == 400
    assert call("POST", base, b"[1, 2]")[0] == 400
    assert call("DELETE", base + "/x?gracePeriodSeconds=soon")[0] == 400
    status, body = call("GET", "/api/v1/namespaces/x/configmaps")
    assert status == 404 and body["kind"] == "Status"
    assert call("GET", "/version")[0] == 200  # the server is still fine


def test_delete_right_after_create_and_while_pending(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    for i in range(10):
        api.create_namespaced_pod(NS, pod_body(f"quick{i}", py("import time; time.sleep(30)")))
        api.delete_namespaced_pod(f"quick{i}", NS, grace_period_seconds=0)
    sim.update_faults(image_pull_failures={"never:1"})
    api.create_namespaced_pod(NS, pod_body("pending", py("pass"), image="never:1"))
    sim.wait_for(lambda: sim.pod(NS, "pending")["status"].get("containerStatuses"))  # type: ignore[index]
    api.delete_namespaced_pod("pending", NS)
    assert sim.pods(NS) == []


def test_simulator_does_not_import_ketch_web_or_db_stack() -> None:
    code = (
        "import sys, ketch.testing.kube_sim\n"
        "heavy = ('sqlalchemy', 'fastapi', 'starlette', 'uvicorn', 'alembic', 'kubernetes')\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('ketch.api', 'ketch.db', 'ketch.scheduler'))])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pod_status_subresource_and_watch_across_namespaces(
    sim: KubeSimulator, api: client.CoreV1Api
) -> None:
    rv = api.list_pod_for_all_namespaces().metadata.resource_version
    api.create_namespaced_pod("ns-a", pod_body("a", py("pass")))
    api.create_namespaced_pod("ns-b", pod_body("b", py("pass")))
    sim.wait_for_phase("ns-b", "b", "Succeeded")
    sim.wait_for_phase("ns-a", "a", "Succeeded")
    assert api.read_namespaced_pod_status("a", "ns-a").status.phase == "Succeeded"
    added = [
        (e["object"].metadata.namespace, e["object"].metadata.name)
        for e in watch.Watch().stream(
            api.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=1
        )
        if e["type"] == "ADDED"
    ]
    assert sorted(added) == [("ns-a", "a"), ("ns-b", "b")]
    assert api.read_namespace("anything").status.phase == "Active"
