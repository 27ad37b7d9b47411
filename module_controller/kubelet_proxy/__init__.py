"""`kubectl logs` for module pods: a kubelet log API that serves the base pod's log.

`paths.py` reads requests (no I/O), `lookup.py` finds the base's pod, `tls.py` makes the
serving certificate, `server.py` serves and streams.
"""

from module_controller.kubelet_proxy.server import KubeletProxy

__all__ = ["KubeletProxy"]
