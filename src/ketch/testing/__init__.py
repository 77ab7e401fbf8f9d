"""Test support shipped with ketch.

``ketch.testing.kube_sim`` is a loopback Kubernetes API simulator (see docs/kube-simulator.md).
Nothing here is imported by ketch itself; it has no dependency on ketch's web or database stack.
"""
