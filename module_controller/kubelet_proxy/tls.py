"""The kubelet proxy's serving certificate: the one configured, or a self-signed one.

kube-apiserver verifies kubelet serving certificates only when started with
`--kubelet-certificate-authority` (not the default): without it a self-signed certificate,
made here with openssl at each start and kept only in memory, is accepted. With it, give a
certificate signed by that CA (KUBELET_PROXY_TLS_CRT_PATH / KUBELET_PROXY_TLS_KEY_PATH, as
the Go controller's /etc/virtual-kubelet/tls/tls.{crt,key}, e.g. from cert-manager). The
files are read once at start: a renewed certificate takes effect at the next start.

Callers are not authenticated unless a client CA is given (KUBELET_PROXY_CLIENT_CA_PATH):
then only clients with a certificate it signed are served, which is what kube-apiserver
presents with `--kubelet-client-certificate` / `--kubelet-client-key` (kubeadm: signed by
the cluster CA, the `ca.crt` every pod's ServiceAccount volume holds). Any certificate that
CA signed passes, not only the API server's: the real kubelet would then ask the API server
whether that user may read the log (a SubjectAccessReview); this proxy does not.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

SELF_SIGNED_SUBJECT = "/CN=module-controller-kubelet-proxy"
SELF_SIGNED_DAYS = 3650  # remade at each start; nothing checks it unless a CA is configured


class TlsSetupError(RuntimeError):
    """The serving certificate cannot be had; the message says which setting to look at."""


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key (ECDSA P-256: fast to make), in `directory`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsSetupError(
            "the kubelet proxy needs a serving certificate: set KUBELET_PROXY_TLS_CRT_PATH and "
            "KUBELET_PROXY_TLS_KEY_PATH, or install openssl to have a self-signed one made"
        )
    crt, key = directory / "tls.crt", directory / "tls.key"
    command = [
        openssl, "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", str(SELF_SIGNED_DAYS), "-subj", SELF_SIGNED_SUBJECT,
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(crt),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise TlsSetupError(f"openssl could not make a self-signed certificate: {done.stderr}")
    return crt, key


def check_files(crt: Path | None, key: Path | None, client_ca: Path | None) -> None:
    """Raise ValueError naming the setting when the configured files are not a certificate
    and its key, or hold no CA certificate: the settings call this, so that a wrong file
    stops start-up at once (exit 2) rather than when the proxy starts."""
    if crt is not None and key is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(crt), str(key))
        except ssl.SSLError as error:
            raise ValueError(
                f"KUBELET_PROXY_TLS_CRT_PATH {crt} and KUBELET_PROXY_TLS_KEY_PATH {key} "
                f"are not a certificate and its key ({error.reason})"
            ) from None
    if client_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as error:
            raise ValueError(
                f"KUBELET_PROXY_CLIENT_CA_PATH {client_ca} is not a PEM CA certificate "
                f"({error.reason})"
            ) from None


def server_context(
    crt: Path | None, key: Path | None, client_ca: Path | None = None
) -> ssl.SSLContext:
    """A TLS server context with the given certificate, or a self-signed one when none is.

    Blocking (files, openssl): call it from a thread in the operator.
    """
    if (crt is None) != (key is None):
        raise TlsSetupError(
            "KUBELET_PROXY_TLS_CRT_PATH and KUBELET_PROXY_TLS_KEY_PATH go together: "
            "set both, or neither for a self-signed certificate"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if crt is None or key is None:
        # The key never outlives this call on disk: the context holds what it needs.
        with tempfile.TemporaryDirectory(prefix="kubelet-proxy-tls-") as directory:
            made_crt, made_key = make_self_signed(Path(directory))
            context.load_cert_chain(made_crt, made_key)
    else:
        try:
            context.load_cert_chain(crt, key)
        except (OSError, ssl.SSLError) as error:
            raise TlsSetupError(
                f"cannot load the kubelet proxy's certificate {crt} with key {key}: {error}"
            ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            raise TlsSetupError(f"cannot load the client CA {client_ca}: {error}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
