"""Certificates for the testbed broker's TLS listener, made with openssl at `testbed up`.

A CA of the testbed's own signs the broker's certificate (for 127.0.0.1) and one client
certificate, which the operator and the simulated bases share (the broker requires one).
A second CA, which signed nothing the broker knows, makes the "wrong CA" and "unknown
client certificate" cases; a client certificate of the right CA that expired in 2021 makes
the "expired certificate" case.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pydantic import BaseModel

from module_controller.testbed import process

DAYS = 30


class TlsFiles(BaseModel):
    """Paths of the PEM files: what MQTT_CA_PATH, MQTT_CLIENT_CRT_PATH, ... point at."""

    ca: str
    server_crt: str
    server_key: str
    client_crt: str
    client_key: str
    # Signed by a CA the broker does not trust; and that CA, which the broker's
    # certificate does not chain to.
    stranger_crt: str
    stranger_key: str
    other_ca: str
    expired_crt: str
    expired_key: str


def _openssl(*args: str, cwd: Path | None = None) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise process.ComponentFailed("openssl is not installed: apt-get install -y openssl")
    done = subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise process.ComponentFailed(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(DAYS),
        "-subj", f"/CN=module-controller testbed {name}",
        "-keyout", str(key), "-out", str(crt),
    )  # fmt: skip
    return crt, key


def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    crt, key, request = (directory / f"{name}.{kind}" for kind in ("crt", "key", "csr"))
    extensions_file = directory / f"{name}.ext"
    extensions_file.write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", str(DAYS), "-extfile", str(extensions_file),
        "-out", str(crt),
    )  # fmt: skip
    key.chmod(0o600)
    return crt, key


# `openssl ca` is the one openssl command that sets any validity dates, past ones included.
_CA_CONFIG = """[ca]
default_ca = testbed
[testbed]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
"""


def _expired(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    work = directory / "expired-ca"
    work.mkdir(exist_ok=True)
    (work / "index.txt").write_text("")
    (work / "serial").write_text("1000\n")
    (work / "ca.cnf").write_text(_CA_CONFIG)
    crt, key, request = (directory / f"expired-client.{kind}" for kind in ("crt", "key", "csr"))
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=expired-client",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    _openssl(
        "ca", "-batch", "-config", "ca.cnf", "-cert", str(ca[0]), "-keyfile", str(ca[1]),
        "-in", str(request), "-out", str(crt), "-notext",
        "-startdate", "20200101000000Z", "-enddate", "20210101000000Z",
        cwd=work,  # the config's paths are relative to it
    )  # fmt: skip
    key.chmod(0o600)
    return crt, key


def make_certificates(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    other_ca = _ca(directory, "other-ca")
    server = _signed(
        directory, "broker", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n",
    )  # fmt: skip
    client = _signed(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _signed(directory, "stranger", other_ca, "extendedKeyUsage=clientAuth\n")
    expired = _expired(directory, ca)
    return TlsFiles(
        ca=str(ca[0]),
        server_crt=str(server[0]),
        server_key=str(server[1]),
        client_crt=str(client[0]),
        client_key=str(client[1]),
        stranger_crt=str(stranger[0]),
        stranger_key=str(stranger[1]),
        other_ca=str(other_ca[0]),
        expired_crt=str(expired[0]),
        expired_key=str(expired[1]),
    )
