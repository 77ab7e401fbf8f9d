"""A loopback Kubernetes API simulator for tests (see docs/kube-simulator.md).

>>> from ketch.testing.kube_sim import KubeSimulator, Faults
>>> sim = KubeSimulator(faults=Faults(latency_seconds=0.02)).start()
>>> sim.write_kubeconfig("/tmp/kubeconfig")  # doctest: +SKIP
>>> sim.stop()
"""

from ketch.testing.kube_sim.faults import Faults
from ketch.testing.kube_sim.simulator import KubeSimulator

__all__ = ["Faults", "KubeSimulator"]
