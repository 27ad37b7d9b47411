"""The TLS context of an MQTT connection, shared by the operator and the simulated bases."""

from __future__ import annotations

import ssl
from pathlib import Path


def mqtt_tls_context(
    ca_path: str | Path | None,
    client_crt_path: str | Path | None = None,
    client_key_path: str | Path | None = None,
) -> ssl.SSLContext | None:
    """None without a CA (plain TCP); else a context that trusts the CA, with the client
    certificate for mutual TLS when both its files are given. Files are read here, once:
    a bad path fails at start-up, not at the first reconnect."""
    if not ca_path:
        return None
    context = ssl.create_default_context(cafile=str(ca_path))
    if client_crt_path and client_key_path:
        context.load_cert_chain(str(client_crt_path), str(client_key_path))
    return context
