"""Point a test's ketch processes at the Kubernetes API simulator (KETCH__CORE__EXECUTOR=kubernetes).

The pod template's ``base`` container runs this interpreter's ``ketch``, so the
simulator's fake kubelet runs each try as a real process, as a pod would.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import yaml

from ketch.testing.kube_sim import KubeSimulator
from tests.support.ketch_process import KetchEnv

_namespaces = itertools.count()


def use_kubernetes(env: KetchEnv, sim: KubeSimulator, folder: Path) -> str:
    """Switch ``env`` to the Kubernetes executor against ``sim``; return its namespace."""
    namespace = f"e2e-{next(_namespaces)}"
    passed_env = [
        {"name": name, "value": value}
        for name, value in env.extra.items()
        if not name.startswith("KETCH__")
    ]
    if os.environ.get("PYTHONPATH") and "PYTHONPATH" not in env.extra:
        # The pod runs the ketch under test (a source checkout on PYTHONPATH), as a local try.
        paths = [os.path.abspath(p) for p in os.environ["PYTHONPATH"].split(os.pathsep) if p]
        passed_env.append({"name": "PYTHONPATH", "value": os.pathsep.join(paths)})
    template = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/component": "worker"}},
        "spec": {
            "containers": [
                {
                    "name": "base",
                    "image": "ketch:test",
                    "command": [sys.executable, "-m", "ketch"],
                    "env": passed_env,
                }
            ]
        },
    }
    template_file = folder / "pod_template.yaml"
    template_file.write_text(yaml.safe_dump(template))
    kubeconfig = sim.write_kubeconfig(folder / "kubeconfig", namespace=namespace)
    env.extra.update(
        {
            "KETCH__CORE__EXECUTOR": "kubernetes",
            "KETCH__KUBERNETES__NAMESPACE": namespace,
            "KETCH__KUBERNETES__CONFIG_FILE": str(kubeconfig),
            "KETCH__KUBERNETES__POD_TEMPLATE_FILE": str(template_file),
        }
    )
    return namespace
