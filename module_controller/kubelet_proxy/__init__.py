"""`kubectl logs` for module pods: a kubelet log API that serves the base pod's log.

`paths.py` reads requests (no I/O), `lookup.py` finds the base's pod, `address.py` finds the
address the virtual nodes advertise, `tls.py` makes the serving certificate, `server.py`
serves and streams (`server.KubeletProxy`). Nothing is imported here: the settings import
`tls.py`, which must not pull in the server (it imports the settings).
"""
