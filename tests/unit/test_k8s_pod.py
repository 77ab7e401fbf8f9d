"""Building a try's pod: template -> executor defaults -> executor_config overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.config import Settings
from ketch.executors.base import LaunchRequest, TryKey
from ketch.executors.kubernetes import reasons
from ketch.executors.kubernetes.pod import (
    PodBuilder,
    PodConfigError,
    build_pod,
    key_of,
    label_value,
    merge_named,
    normalise_executor_config,
    pod_name,
)

KEY = TryKey("etl", "manual__2026-01-01T00:00:00+00:00", "load", 2)

TEMPLATE = """
apiVersion: v1
kind: Pod
metadata:
  labels: {team: data}
  annotations: {note: from-template}
spec:
  serviceAccountName: from-template
  initContainers:
    - name: git-sync
      image: registry.k8s.io/git-sync/git-sync:v4.2.4
  containers:
    - name: base
      command: [ketch]
      env:
        - {name: A, value: template}
        - {name: B, value: template}
      volumeMounts:
        - {name: dags, mountPath: /dags}
    - name: sidecar
      image: busybox
  volumes:
    - name: dags
      emptyDir: {}
  tolerations:
    - {key: spot, operator: Exists}
"""


def settings(tmp_path: Path, template: str | None = TEMPLATE, **kube: object) -> Settings:
    values: dict[str, object] = {"namespace": "jobs", "dags_folder_in_pod": "/dags/repo"}
    if template is not None:
        path = tmp_path / "pod.yaml"
        path.write_text(template)
        values["pod_template_file"] = str(path)
    values.update(kube)
    return Settings(
        kubernetes=values,
        core={"execution_api_server_url": "http://web:8080/execution"},
    )


def request(config: dict[str, object] | None = None, key: TryKey = KEY) -> LaunchRequest:
    return LaunchRequest(
        key, 42, "secret-token", "etl.py", "/x/etl.py", executor_config=config or {}
    )


def container(pod: dict, name: str = "base") -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(pod).get("env", [])}


def test_pod_from_template_and_defaults(tmp_path: Path) -> None:
    pod = build_pod(settings(tmp_path), request())
    meta = pod["metadata"]
    assert meta["name"] == pod_name(KEY) and meta["namespace"] == "jobs"
    assert meta["labels"]["team"] == "data"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "ketch"
    assert meta["labels"]["ketch.io/ti-id"] == "42"
    assert meta["labels"]["ketch.io/try-number"] == "2"
    # the run id has characters a label cannot hold: sanitised label, full annotation
    assert meta["annotations"]["ketch.io/run-id"] == KEY.run_id
    assert meta["labels"]["ketch.io/run-id"] != KEY.run_id
    assert key_of(pod) == KEY
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "from-template"
    base = container(pod)
    assert base["image"] == "ketch:latest" and base["command"] == ["ketch"]
    assert base["args"][:7] == ["task", "run", "etl", "load", KEY.run_id, "--try", "2"]
    assert base["args"][7] == "--log-file"
    e = env(pod)
    assert e["KETCH_TRY_TOKEN"] == "secret-token"
    assert e["KETCH_EXECUTION_API_URL"] == "http://web:8080/execution"
    assert e["KETCH_DAGS_FOLDER"] == "/dags/repo"
    assert e["A"] == "template"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base", "sidecar"]
    assert pod["spec"]["initContainers"][0]["name"] == "git-sync"


def test_no_template_gives_a_base_container(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        template=None,
        worker_container_repository="repo/ketch",
        worker_container_tag="1.2",
        worker_service_account_name="worker",
        execution_api_server_url_for_pods="http://ketch-web/execution/",
    )
    pod = build_pod(s, request())
    assert container(pod)["image"] == "repo/ketch:1.2"
    assert pod["spec"]["serviceAccountName"] == "worker"
    assert env(pod)["KETCH_EXECUTION_API_URL"] == "http://ketch-web/execution"


def test_executor_config_overrides_merge_by_name(tmp_path: Path) -> None:
    config = {
        "image": "custom:1",
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}},
        "env": [{"name": "B", "value": "task"}, {"name": "C", "value": "task"}],
        "envFrom": [{"secretRef": {"name": "db"}}],
        "node_selector": {"pool": "batch"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "volumes": [
            {"name": "dags", "configMap": {"name": "x"}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/etl"},
        "init_containers": [
            {"name": "git-sync", "args": ["--one-time"]},
            {"name": "wait", "image": "busybox"},
        ],
        # an override cannot steal the try's identity or token
        "labels": {"ketch.io/ti-id": "7", "owner": "me"},
        "env_extra_ignored": None,
    }
    config.pop("env_extra_ignored")
    pod = build_pod(settings(tmp_path), request(config))
    base = container(pod)
    assert base["image"] == "custom:1"
    assert base["resources"]["limits"]["memory"] == "256Mi"
    e = env(pod)
    assert (e["A"], e["B"], e["C"]) == ("template", "task", "task")
    assert e["KETCH_TRY_TOKEN"] == "secret-token"
    assert base["envFrom"] == [{"secretRef": {"name": "db"}}]
    assert [m["name"] for m in base["volumeMounts"]] == ["dags", "scratch"]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["dags"] == {"name": "dags", "emptyDir": {}, "configMap": {"name": "x"}}
    assert "scratch" in vols
    assert pod["spec"]["nodeSelector"] == {"pool": "batch"}
    assert [t["key"] for t in pod["spec"]["tolerations"]] == ["spot", "gpu"]
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits] == ["git-sync", "wait"]
    assert inits[0]["image"].startswith("registry.k8s.io/git-sync") and inits[0]["args"] == [
        "--one-time"
    ]
    assert pod["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/etl")
    assert pod["metadata"]["annotations"]["note"] == "from-template"
    assert pod["metadata"]["labels"]["ketch.io/ti-id"] == "42"
    assert pod["metadata"]["labels"]["owner"] == "me"


def test_per_task_pod_template_file(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("spec:\n  containers:\n    - name: base\n      image: special:2\n")
    pod = build_pod(settings(tmp_path), request({"kubernetes": {"pod_template_file": str(other)}}))
    assert container(pod)["image"] == "special:2"
    assert "initContainers" not in pod["spec"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"imagee": "x"}, "executor_config.imagee"),
        ({"image": 3}, "executor_config.image"),
        ({"env": [{"value": "no name"}]}, "executor_config.env[0]"),
        ({"resources": {"limit": {}}}, "executor_config.resources.limit"),
        ({"command": "ketch"}, "executor_config.command"),
        ({"annotations": {"a": 1}}, "executor_config.annotations"),
    ],
)
def test_invalid_executor_config_names_the_field(config: dict, field: str) -> None:
    with pytest.raises(PodConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        normalise_executor_config(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Deployment\n", "kind must be Pod"),
        ("spec: [1]\n", "spec must be a mapping"),
        ("spec:\n  containers: [{image: x}]\n", "named containers"),
        ("spec: {containers: [\n", "invalid YAML"),
    ],
)
def test_invalid_template(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PodConfigError, match=message):
        build_pod(settings(tmp_path, template=text), request())


def test_missing_template(tmp_path: Path) -> None:
    s = settings(tmp_path, template=None, pod_template_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(PodConfigError, match="cannot read"):
        PodBuilder(s).build(request())


def test_names_and_labels() -> None:
    assert pod_name(KEY) == pod_name(TryKey(*[KEY.dag_id, KEY.run_id, KEY.task_id, 2]))
    assert pod_name(KEY) != pod_name(TryKey(KEY.dag_id, KEY.run_id, KEY.task_id, 3))
    long_key = TryKey("D" * 200, "r", "T_" * 100, 1)
    name = pod_name(long_key)
    assert len(name) <= 63 and name == name.lower()
    assert label_value("ok-1.2_x") == "ok-1.2_x"
    long = label_value("x" * 100)
    assert len(long) <= 63 and long != label_value("x" * 101)
    assert label_value("a:b") != label_value("a/b")
    with pytest.raises(PodConfigError):
        merge_named([], [{"no": "name"}], "env")


def test_reasons() -> None:
    spec = {"containers": [{"name": "base", "resources": {"limits": {"memory": "128Mi"}}}]}

    def pod(status: dict) -> dict:
        return {"spec": spec, "status": status}

    def term(reason: str, code: int) -> dict:
        return {
            "containerStatuses": [
                {"name": "base", "state": {"terminated": {"reason": reason, "exitCode": code}}}
            ]
        }

    assert reasons.ended(pod({"phase": "Running"})) is None
    assert reasons.ended(pod({"phase": "Succeeded"})).succeeded  # type: ignore[union-attr]
    oom = reasons.ended(pod({"phase": "Failed", **term("OOMKilled", 137)}))
    assert (
        oom is not None and oom.exit_code == 137 and oom.reason == "OOMKilled (memory limit 128Mi)"
    )
    err = reasons.ended(pod({"phase": "Failed", **term("Error", 3)}))
    assert err is not None and err.exit_code == 3 and "code 3" in (err.reason or "")
    ev = reasons.ended(pod({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}))
    assert ev is not None and "evicted" in (ev.reason or "") and not ev.failed_before_start
    pull = reasons.ended(
        pod(
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "base", "state": {"waiting": {"reason": "ErrImagePull"}}}
                ],
            }
        )
    )
    assert pull is not None and pull.failed_before_start and "ErrImagePull" in (pull.reason or "")
    init = reasons.ended(
        pod(
            {
                "phase": "Failed",
                "initContainerStatuses": [
                    {"name": "git-sync", "state": {"terminated": {"exitCode": 1}}}
                ],
            }
        )
    )
    assert init is not None and init.failed_before_start and "git-sync" in (init.reason or "")
    text = reasons.pending_reason(
        pod(
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes",
                    }
                ],
            }
        ),
        [{"reason": "FailedScheduling", "message": "0/1 nodes are available"}],
        301,
    )
    assert "Unschedulable" in text and "FailedScheduling" in text and "301s" in text


def test_execution_timeout_sets_a_pod_deadline_backstop(tmp_path: Path) -> None:
    s = settings(tmp_path, worker_pods_pending_timeout=30)
    timed = LaunchRequest(KEY, 1, "t", "etl.py", "/etl.py", execution_timeout=100.0)
    assert build_pod(s, timed)["spec"]["activeDeadlineSeconds"] == 190
    assert "activeDeadlineSeconds" not in build_pod(s, request())["spec"]
    config = {"active_deadline_seconds": 5}
    own = LaunchRequest(
        KEY, 1, "t", "etl.py", "/etl.py", execution_timeout=100.0, executor_config=config
    )
    assert build_pod(s, own)["spec"]["activeDeadlineSeconds"] == 5
    deadline = reasons.ended(
        {"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": "too long"}}
    )
    assert deadline is not None and "deadline exceeded" in (deadline.reason or "")
