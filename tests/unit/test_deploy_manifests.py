"""deploy/kubernetes/base: renders with kustomize, validates against the Kubernetes schemas, and
keeps the invariants the deployment guide promises (docs/kubernetes.md).

Rendering uses the real `kubectl kustomize` (Debian's kubectl, offline). Every built-in object is
validated by kubernetes-validate against the official OpenAPI schemas bundled with it; the two
custom resources of external-secrets.io (no schema there) are checked structurally here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ketch.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
POD_TEMPLATE = BASE / "pod_template.yaml"
KUBERNETES_VERSION = "1.32.0"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

CUSTOM_KINDS = {
    ("external-secrets.io/v1beta1", "ExternalSecret"),
    ("external-secrets.io/v1beta1", "SecretStore"),
}
SECRET_ENV_KEYS = {
    "KETCH__DATABASE__SQL_ALCHEMY_CONN",
    "KETCH__CORE__FERNET_KEY",
    "KETCH__API_AUTH__JWT_SECRET",
    "KETCH__AUTH__OIDC_CLIENT_SECRET",
    "KETCH__AUTH__SESSION_SECRET",
}
SECRETISH_WORDS = ("SECRET", "PASSWORD", "TOKEN", "FERNET", "SQL_ALCHEMY_CONN", "PRIVATE")


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    if not Path(KUBECTL).is_file():
        pytest.fail("kubectl (1.32, with kustomize 5) is needed to render deploy/kubernetes/base")
    out = subprocess.run(
        [KUBECTL, "kustomize", str(BASE)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered() if o["kind"] == kind]


def one(kind: str, name_prefix: str) -> dict[str, Any]:
    found = [o for o in objects(kind) if o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"{kind} {name_prefix}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def deployment(name: str) -> dict[str, Any]:
    return one("Deployment", name)


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec that ketch ships: the Deployments' templates and the worker pod template."""
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in objects("Deployment")]
    return [*specs, ("worker pod template", worker_template()["spec"])]


def worker_template() -> dict[str, Any]:
    cm = one("ConfigMap", "ketch-pod-template")
    doc = yaml.safe_load(cm["data"]["pod_template.yaml"])
    assert isinstance(doc, dict)
    return doc


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def settings_env() -> dict[str, str]:
    data = one("ConfigMap", "ketch-config")["data"]
    assert isinstance(data, dict)
    return data


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process with these environment variables reads (JSON lists parsed)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def web_container() -> dict[str, Any]:
    (web,) = deployment("ketch-web")["spec"]["template"]["spec"]["containers"]
    assert isinstance(web, dict)
    return web


def container_port(container: dict[str, Any], name: str) -> int:
    (port,) = (p["containerPort"] for p in container["ports"] if p["name"] == name)
    assert isinstance(port, int)
    return port


# --- rendering and schemas ---------------------------------------------------------------------


def test_base_renders_every_object_the_guide_lists() -> None:
    # Generated ConfigMaps carry a content hash suffix (so a change rolls the Deployments).
    kinds = {(o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])) for o in rendered()}
    expected = {
        ("Namespace", "ketch"),
        ("ServiceAccount", "ketch-scheduler"),
        ("ServiceAccount", "ketch-web"),
        ("ServiceAccount", "ketch-worker"),
        ("ServiceAccount", "ketch-external-secrets"),
        ("Role", "ketch-scheduler"),
        ("RoleBinding", "ketch-scheduler"),
        ("Role", "ketch-web"),
        ("RoleBinding", "ketch-web"),
        ("ConfigMap", "ketch-config"),
        ("ConfigMap", "ketch-git-sync"),
        ("ConfigMap", "ketch-pod-template"),
        ("SecretStore", "ketch-aws-secrets-manager"),
        ("ExternalSecret", "ketch-secrets"),
        ("Deployment", "ketch-scheduler"),
        ("Deployment", "ketch-web"),
        ("Service", "ketch-web"),
        ("Ingress", "ketch-web"),
        ("PodDisruptionBudget", "ketch-web"),
        ("PodDisruptionBudget", "ketch-scheduler"),
        ("NetworkPolicy", "ketch-default-deny-ingress"),
        ("NetworkPolicy", "ketch-web"),
    }
    assert kinds == expected
    for obj in rendered():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "ketch", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ketch"


def test_every_builtin_object_validates_against_the_kubernetes_schema() -> None:
    validated = 0
    for obj in rendered():
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        validated += 1
    assert validated == len(rendered()) - 2


def test_the_worker_pod_template_is_a_valid_pod_with_a_base_container() -> None:
    template = worker_template()
    on_disk = yaml.safe_load(POD_TEMPLATE.read_text())
    assert template == on_disk  # the ConfigMap carries the file unchanged
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    assert template["kind"] == "Pod"
    spec = template["spec"]
    assert [c["name"] for c in spec["containers"]] == ["base"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "ketch-worker"
    assert spec["automountServiceAccountToken"] is False
    # DAGs: git-sync runs once, into the emptyDir the task container reads.
    (sync,) = spec["initContainers"]
    assert "git-sync" in sync["image"]
    env = {e["name"]: e.get("value") for e in sync["env"]}
    assert env["GITSYNC_ONE_TIME"] == "true"
    assert {"name": "dags", "emptyDir": {}} in spec["volumes"]
    base = spec["containers"][0]
    dags_mount = next(m for m in base["volumeMounts"] if m["name"] == "dags")
    git_sync = one("ConfigMap", "ketch-git-sync")["data"]
    assert settings_env()["KETCH__KUBERNETES__DAGS_FOLDER_IN_POD"] == (
        f"{dags_mount['mountPath']}/{git_sync['GITSYNC_LINK']}"
    )
    assert git_sync["GITSYNC_ROOT"] == dags_mount["mountPath"]
    # The ConfigMap the init container reads is named as rendered (no hash suffix to miss).
    assert sync["envFrom"] == [{"configMapRef": {"name": "ketch-git-sync"}}]


def test_the_scheduler_mounts_the_pod_template_where_the_setting_points() -> None:
    spec = deployment("ketch-scheduler")["spec"]["template"]["spec"]
    (scheduler,) = (c for c in spec["containers"] if c["name"] == "scheduler")
    path = Path(settings_env()["KETCH__KUBERNETES__POD_TEMPLATE_FILE"])
    mount = next(m for m in scheduler["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == one("ConfigMap", "ketch-pod-template")["metadata"]["name"]
    assert path.name in one("ConfigMap", "ketch-pod-template")["data"]


def test_external_secrets_are_structurally_sound() -> None:
    store = one("SecretStore", "ketch-aws-secrets-manager")
    aws = store["spec"]["provider"]["aws"]
    assert aws["service"] == "SecretsManager" and aws["region"]
    sa_name = aws["auth"]["jwt"]["serviceAccountRef"]["name"]
    assert one("ServiceAccount", sa_name)["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    external = one("ExternalSecret", "ketch-secrets")
    spec = external["spec"]
    assert spec["secretStoreRef"] == {"kind": "SecretStore", "name": store["metadata"]["name"]}
    assert spec["target"]["name"] == "ketch-secrets"
    filled = {item["secretKey"] for item in spec["data"]}
    for item in spec["data"]:
        assert set(item) == {"secretKey", "remoteRef"}
        assert item["remoteRef"]["key"] and item["remoteRef"]["property"]
    # Every key a Deployment reads from ketch-secrets is one the ExternalSecret fills.
    referenced = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for _, spec_ in pod_specs()
        for c in all_containers(spec_)
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "ketch-secrets"
    }
    assert (
        referenced
        == filled
        == {
            "sql-alchemy-conn",
            "fernet-key",
            "jwt-secret",
            "oidc-client-secret",
            "session-secret",
        }
    )


# --- secrets -----------------------------------------------------------------------------------


def test_no_secret_values_anywhere() -> None:
    assert objects("Secret") == []  # the ExternalSecret creates it in the cluster
    for cm in objects("ConfigMap"):
        for key in cm.get("data", {}):
            if cm["metadata"]["name"].startswith("ketch-pod-template"):
                continue
            assert not any(word in key.upper() for word in SECRETISH_WORDS), (
                cm["metadata"]["name"],
                key,
            )
    for name, spec in pod_specs():
        for container in all_containers(spec):
            for env in container.get("env", []):
                upper = env["name"].upper()
                if upper in SECRET_ENV_KEYS or any(w in upper for w in ("PASSWORD", "USERNAME")):
                    assert "value" not in env, (name, env["name"])
                    assert "secretKeyRef" in env["valueFrom"], (name, env["name"])
    # The secrets are references in the web Deployment, by ketch's own setting names.
    web = deployment("ketch-web")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in web["env"] if "valueFrom" in e} >= SECRET_ENV_KEYS


def test_configmap_settings_are_ketch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every KETCH__SECTION__KEY of the ConfigMap names a real setting and parses."""
    env = settings_env()
    known_sections = Settings.model_fields
    for name in env:
        prefix, section, key = name.split("__")
        assert prefix == "KETCH"
        section, key = section.lower(), key.lower()
        assert section in known_sections, name
        model = known_sections[section].annotation
        assert key in model.model_fields, name  # type: ignore[union-attr]
    settings = settings_from(env, monkeypatch)
    assert settings.core.executor == "kubernetes"
    assert settings.api.host == "0.0.0.0"
    assert settings.auth.allowed_domains == ["example.com"]
    assert [rule.role for rule in settings.auth.role_rules] == ["admin", "viewer"]


# --- RBAC ---------------------------------------------------------------------------------------


def test_rbac_is_namespaced_and_exactly_the_executor_verbs() -> None:
    assert objects("ClusterRole") == [] and objects("ClusterRoleBinding") == []
    roles = {r["metadata"]["name"]: r for r in objects("Role")}
    assert sorted(roles) == ["ketch-scheduler", "ketch-web"]

    def rules(name: str) -> dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]]:
        return {
            (tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
            for r in roles[name]["rules"]
        }

    assert rules("ketch-scheduler") == {
        (("",), ("pods",)): sorted(["create", "get", "list", "watch", "delete"]),
        (("",), ("pods/log",)): ["get"],
        (("",), ("events",)): ["list"],
    }
    # The web server only reads running tries' logs from their pods.
    assert rules("ketch-web") == {(("",), ("pods", "pods/log")): ["get"]}
    bindings = {b["metadata"]["name"]: b for b in objects("RoleBinding")}
    assert sorted(bindings) == ["ketch-scheduler", "ketch-web"]
    for name, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": "ketch"}
        ]
    # Task pods never talk to the API; the scheduler and the web server (logs) do.
    tokens = {name: spec.get("automountServiceAccountToken") for name, spec in pod_specs()}
    assert tokens == {"ketch-scheduler": True, "ketch-web": True, "worker pod template": False}


# --- pods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ketch-scheduler", "ketch-web", "worker pod template"])
def test_restricted_security_context_on_every_container(which: str) -> None:
    spec = dict(pod_specs())[which]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_sc["runAsUser"] != 0
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for container in all_containers(spec):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, container["name"]
        assert not sc.get("privileged"), container["name"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # A read-only root needs somewhere to write: /tmp is an emptyDir in every container.
    for container in all_containers(spec):
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, container["name"]


def test_the_namespace_enforces_the_restricted_pod_security_standard() -> None:
    (ns,) = objects("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Task pods go where the scheduler's Role allows them.
    assert settings_env()["KETCH__KUBERNETES__NAMESPACE"] == ns["metadata"]["name"]
    assert one("Role", "ketch-scheduler")["metadata"]["namespace"] == ns["metadata"]["name"]


def test_scheduler_active_and_standby_with_git_sync_and_a_probe_it_can_back() -> None:
    dep = deployment("ketch-scheduler")
    # Two replicas: the scheduler lease makes one active, the other a standby.
    assert dep["spec"]["replicas"] == 2
    # A rollout adds a new pod before it removes an old one: a standby is always there.
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    spec = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["selector"]["matchLabels"]
    (spread,) = spec["topologySpreadConstraints"]  # not both on one node
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == labels
    # Drains evict one scheduler at a time (maxUnavailable: a one-replica overlay still drains).
    pdb = one("PodDisruptionBudget", "ketch-scheduler")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
    # SIGTERM: stop the loop (the executor's stop is quick), then release the lease.
    assert spec["terminationGracePeriodSeconds"] >= 15
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"scheduler", "git-sync"}
    scheduler = containers["scheduler"]
    assert scheduler["args"] == ["scheduler"]
    probe = scheduler["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["ketch", "dags", "list"]  # a real CLI command (see below)
    assert "httpGet" not in scheduler.get("livenessProbe", {})  # it serves no HTTP
    sync = containers["git-sync"]
    assert "git-sync" in sync["image"]
    env = {e["name"]: e.get("value") for e in sync["env"]}
    assert "GITSYNC_ONE_TIME" not in env and env["GITSYNC_PERIOD"]
    assert sync["livenessProbe"]["httpGet"]["port"] == "git-sync"
    assert sync["startupProbe"]["httpGet"] == {"path": "/", "port": "git-sync"}
    # The scheduler parses the same code the task pods sync: one image, one ConfigMap.
    (init,) = worker_template()["spec"]["initContainers"]
    assert sync["image"] == init["image"]
    assert sync["envFrom"] == init["envFrom"]
    assert env["GITSYNC_HTTP_BIND"] == ":2020"
    dags = {m["name"]: m for m in scheduler["volumeMounts"]}["dags"]
    assert dags["readOnly"] is True
    assert settings_env()["KETCH__CORE__DAGS_FOLDER"].startswith(dags["mountPath"])


def test_the_scheduler_probe_passes_only_with_a_current_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The readiness probe's command, run for real: fails until the schema is there, then passes,
    and fails again when the database is unreachable."""
    from click.testing import CliRunner

    from ketch.cli import cli
    from ketch.config import get_settings

    scheduler = deployment("ketch-scheduler")["spec"]["template"]["spec"]["containers"][0]
    command = scheduler["readinessProbe"]["exec"]["command"]
    assert command[0] == "ketch"
    runner = CliRunner()
    assert runner.invoke(cli, command[1:]).exit_code != 0  # no schema yet
    assert runner.invoke(cli, ["db", "migrate"]).exit_code == 0
    ok = runner.invoke(cli, command[1:])
    assert ok.exit_code == 0, ok.output
    monkeypatch.setenv("KETCH__DATABASE__SQL_ALCHEMY_CONN", "postgresql://probe@127.0.0.1:1/none")
    monkeypatch.setenv("KETCH__DATABASE__CONNECT_TIMEOUT", "2")
    get_settings.cache_clear()
    assert runner.invoke(cli, command[1:]).exit_code != 0


def test_web_two_replicas_probes_service_ingress_pdb() -> None:
    dep = deployment("ketch-web")
    assert dep["spec"]["replicas"] == 2
    web = web_container()
    assert web["readinessProbe"]["httpGet"] == {"path": "/api/v1/health", "port": "http"}
    assert "tcpSocket" in web["livenessProbe"]  # a database outage must not restart it
    # Two ports: the main one (UI, REST API) and the execution API's own ([api] execution_port).
    env = settings_env()
    assert web["ports"] == [
        {"name": "http", "containerPort": int(env["KETCH__API__PORT"])},
        {"name": "execution", "containerPort": int(env["KETCH__API__EXECUTION_PORT"])},
    ]
    assert env["KETCH__API__PORT"] != env["KETCH__API__EXECUTION_PORT"]
    assert web["args"][web["args"].index("--port") + 1] == env["KETCH__API__PORT"]
    service = one("Service", "ketch-web")
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["targetPort"] for name, p in service_ports.items()} == {
        "http": "http",
        "execution": "execution",
    }
    # The Ingress exposes the main port only: the execution API is not reachable from outside.
    ingress = one("Ingress", "ketch-web")
    backends = [
        (p["backend"]["service"]["name"], p["backend"]["service"]["port"])
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    ]
    assert backends == [("ketch-web", {"name": "http"})] and ingress["spec"]["tls"]
    pdb = one("PodDisruptionBudget", "ketch-web")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1
    # Tries (the pods, and the scheduler's default) reach the execution port of this Service.
    url = f"http://{service['metadata']['name']}:{service_ports['execution']['port']}/execution"
    assert env["KETCH__KUBERNETES__EXECUTION_API_SERVER_URL_FOR_PODS"] == url
    assert env["KETCH__CORE__EXECUTION_API_SERVER_URL"] == url


def test_the_web_serves_every_address_only_with_sign_in_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ketch web --host 0.0.0.0` starts only with an identity provider: the OAuth client id
    from the ConfigMap, its secret and the session key (shared by the replicas) from the
    Secret the ExternalSecret fills. Without the client secret it would refuse to start."""
    from ketch.auth.exposure import UnsafeExposure, check_exposure

    web = web_container()
    assert web["args"][0] == "web"
    assert web["args"][web["args"].index("--host") + 1] == "0.0.0.0"
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in web["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert from_secret["KETCH__AUTH__OIDC_CLIENT_SECRET"] == {
        "name": "ketch-secrets",
        "key": "oidc-client-secret",
    }
    assert from_secret["KETCH__AUTH__SESSION_SECRET"] == {
        "name": "ketch-secrets",
        "key": "session-secret",
    }
    env = {
        **settings_env(),
        **{e["name"]: e["value"] for e in web["env"] if "value" in e},
        **{name: f"from-the-secret:{ref['key']}" for name, ref in from_secret.items()},
    }
    # The database URL is checked as a URL: a stand-in of the right shape.
    env["KETCH__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql://ketch:from-the-secret@db/ketch"
    assert "KETCH__AUTH__MODE" not in env  # never "none" in the base
    settings = settings_from(env, monkeypatch)
    assert settings.auth.mode == "auto" and settings.auth.oidc_configured
    assert settings.auth.session_secret is not None
    assert settings.auth.allowed_domains == ["example.com"]
    check_exposure(settings, "0.0.0.0")
    monkeypatch.delenv("KETCH__AUTH__OIDC_CLIENT_SECRET")
    with pytest.raises(UnsafeExposure):
        check_exposure(Settings(), "0.0.0.0")
    # The sign-in secrets are the web server's alone.
    scheduler = deployment("ketch-scheduler")["spec"]["template"]["spec"]
    scheduler_keys = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for c in all_containers(scheduler)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert not scheduler_keys & {"oidc-client-secret", "session-secret"}


def _admits_task_pods(peer: dict[str, Any]) -> bool:
    """Whether a NetworkPolicy peer lets the worker pods in (selectors by matchLabels; an
    ipBlock may hold pod addresses, so it counts as letting them in)."""
    if "ipBlock" in peer:
        return True
    (ns,) = objects("Namespace")
    ns_labels = {**ns["metadata"]["labels"], "kubernetes.io/metadata.name": ns["metadata"]["name"]}
    ns_selector = peer.get("namespaceSelector")
    if (
        ns_selector is not None
        and not ns_selector.get("matchLabels", {}).items() <= ns_labels.items()
    ):
        return False
    pod_labels = worker_template()["metadata"]["labels"]
    return bool(peer.get("podSelector", {}).get("matchLabels", {}).items() <= pod_labels.items())


def test_network_policy_task_pods_reach_only_the_execution_port() -> None:
    deny = one("NetworkPolicy", "ketch-default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    web = one("NetworkPolicy", "ketch-web")
    assert (
        web["spec"]["podSelector"]["matchLabels"]
        == (deployment("ketch-web")["spec"]["selector"]["matchLabels"])
    )
    http = container_port(web_container(), "http")
    execution = container_port(web_container(), "execution")
    from_task_pods = [
        port
        for rule in web["spec"]["ingress"]
        if any(_admits_task_pods(peer) for peer in rule["from"])
        for port in rule["ports"]
    ]
    assert from_task_pods == [{"protocol": "TCP", "port": execution}]
    # The ingress controller reaches the main port only.
    (from_ingress,) = (
        rule
        for rule in web["spec"]["ingress"]
        if any("namespaceSelector" in peer for peer in rule["from"])
    )
    assert from_ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert from_ingress["ports"] == [{"protocol": "TCP", "port": http}]
    # Every rule names its ports: none admits a peer to every port of the web pods.
    assert all(rule.get("ports") for rule in web["spec"]["ingress"])


def test_images_are_pinned() -> None:
    # The task container takes its image from the settings (an image in the template would win).
    assert "image" not in worker_template()["spec"]["containers"][0]
    env = settings_env()
    tag = env["KETCH__KUBERNETES__WORKER_CONTAINER_TAG"]
    assert tag and tag != "latest"
    scheduler_image = deployment("ketch-scheduler")["spec"]["template"]["spec"]["containers"][0]
    assert (
        scheduler_image["image"] == f"{env['KETCH__KUBERNETES__WORKER_CONTAINER_REPOSITORY']}:{tag}"
    )
    for name, spec in pod_specs():
        for container in all_containers(spec):
            if name == "worker pod template" and container["name"] == "base":
                continue
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)


# --- the image ----------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_slim_non_root_with_ketch_as_entrypoint() -> None:
    steps = _dockerfile()
    froms = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    runtime = steps[froms[-1] :]
    assert runtime[0][1] == "python:3.11-slim"
    assert all(args.split()[0].startswith("python:3.11-slim") for op, args in steps if op == "FROM")
    users = [i for i, (op, _) in enumerate(runtime) if op == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    assert runtime[users[-1]][1] == "10001:10001"
    # Nothing runs as root after the switch, and the switch is the last word on the user.
    assert all(op != "RUN" for op, _ in runtime[users[-1] :])
    assert ("ENTRYPOINT", '["ketch"]') in runtime
    # The manifests run the image as the same UID (the pods set it explicitly).
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsUser"] == 10001, name
    # The image's KETCH_HOME is where the manifests mount a writable emptyDir.
    env = " ".join(args for op, args in runtime if op == "ENV")
    assert "KETCH_HOME=/var/lib/ketch" in env


def test_dockerignore_lets_through_exactly_what_the_build_copies() -> None:
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything is excluded unless re-included
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for op, args in _dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            copied.update(s.rstrip("/") for s in sources)
    assert copied == included
    for path in copied:
        assert (ROOT / path).exists(), path


# --- the executor builds valid pods from the shipped template ------------------------------------


def test_the_executor_builds_a_valid_restricted_pod_from_the_shipped_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler's settings (the ConfigMap) + pod_template.yaml + a task's executor_config,
    through the executor's own pod builder: a schema-valid Pod that keeps the template's
    security context, git-sync init container and labels (the NetworkPolicy selects them)."""
    from ketch.executors.base import LaunchRequest, TryKey
    from ketch.executors.kubernetes.pod import build_pod

    monkeypatch.setenv("KETCH_HOME", "/var/lib/ketch")  # the scheduler container's KETCH_HOME
    env = {**settings_env(), "KETCH__KUBERNETES__POD_TEMPLATE_FILE": str(POD_TEMPLATE)}
    settings = settings_from(env, monkeypatch)
    key = TryKey("etl_daily", "scheduled__2026-11-24T00:00:00+00:00", "load", 2)
    config = {
        "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}},
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/etl"},
        "env": [{"name": "WAREHOUSE", "value": "prod"}],
    }
    pod = build_pod(
        settings,
        LaunchRequest(key, 7, "try-token", "etl.py", "/dags/repo/etl.py", executor_config=config),
    )
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)

    template = worker_template()
    assert pod["metadata"]["namespace"] == settings_env()["KETCH__KUBERNETES__NAMESPACE"]
    assert pod["metadata"]["labels"].items() >= template["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"] == template["spec"]["securityContext"]
    assert pod["spec"]["initContainers"] == template["spec"]["initContainers"]
    assert pod["spec"]["serviceAccountName"] == "ketch-worker"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (base,) = pod["spec"]["containers"]
    assert base["name"] == "base"
    assert base["securityContext"] == template["spec"]["containers"][0]["securityContext"]
    env = settings_env()
    assert base["image"] == (
        f"{env['KETCH__KUBERNETES__WORKER_CONTAINER_REPOSITORY']}:"
        f"{env['KETCH__KUBERNETES__WORKER_CONTAINER_TAG']}"
    )
    assert base["args"][:3] == ["task", "run", "etl_daily"]
    # The try's log file is under KETCH_HOME, which the pod mounts writable (read-only root).
    log_file = base["args"][base["args"].index("--log-file") + 1]
    home = next(m for m in base["volumeMounts"] if m["name"] == "ketch-home")["mountPath"]
    assert log_file.startswith(home + "/")
    pod_env = {e["name"]: e.get("value") for e in base["env"]}
    assert pod_env["KETCH_DAGS_FOLDER"] == "/dags/repo"
    assert pod_env["KETCH_EXECUTION_API_URL"] == "http://ketch-web:8081/execution"
    assert pod_env["KETCH_HOME"] == "/var/lib/ketch" and pod_env["WAREHOUSE"] == "prod"
    assert base["resources"]["limits"]["memory"] == "2Gi"


def test_the_overlay_example_of_the_guide_renders_and_changes_what_it_says(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "kubernetes.md").read_text()
    match = re.search(r"```yaml\n(apiVersion: kustomize.*?)```", guide, re.S)
    assert match, "docs/kubernetes.md lost its overlay example"
    # kustomize takes only relative paths to another kustomization
    overlay = match.group(1).replace("- ../base", f"- {os.path.relpath(BASE, tmp_path)}")
    (tmp_path / "kustomization.yaml").write_text(overlay)
    out = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["name"] in ("scheduler", "web")
    }
    assert images == {"123456789012.dkr.ecr.eu-west-1.amazonaws.com/ketch:0.1.0"}
    settings = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("ketch-config")
    )["data"]
    assert settings["KETCH__API__BASE_URL"] == "https://ketch.data.example.org"
    assert settings["KETCH__KUBERNETES__WORKER_CONTAINER_REPOSITORY"].startswith("123456789012.")
    assert settings["KETCH__CORE__EXECUTOR"] == "kubernetes"  # merged, not replaced
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "ketch.data.example.org"
    git_sync = next(d for d in docs if d["metadata"]["name"] == "ketch-git-sync")["data"]
    assert git_sync["GITSYNC_REPO"] == "https://github.com/my-org/dags.git"
    for doc in docs:
        if doc["apiVersion"].startswith("external-secrets.io"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
