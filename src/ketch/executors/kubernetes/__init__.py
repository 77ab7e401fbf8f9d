"""The Kubernetes executor: one temporary pod per task try.

Modules: ``pod`` (building a try's pod from template + defaults + executor_config),
``client`` (API client setup, QPS/burst limiter, retries), ``watch`` (label-selector
watch with resourceVersion resume and relist on 410), ``reasons`` (pod status -> why a
try ended), ``finished_pods`` (a finished pod's log capture, then its deletion),
``executor`` (:class:`KubernetesExecutor`).
"""

from ketch.executors.kubernetes.executor import KubernetesExecutor
from ketch.executors.kubernetes.pod import PodConfigError, build_pod, pod_name

__all__ = ["KubernetesExecutor", "PodConfigError", "build_pod", "pod_name"]
