"""bizUrl handling: validate it as a real base does, optionally fetch the jar and read its
manifest; and :func:`write_module_jar`, which makes a jar a base accepts (for tests).

A real base parses bizUrl with ``java.net.URL`` (a scheme is required, a bare path fails with
``MalformedURLException: no protocol``) and downloads it; a failed download fails the install.
It then registers the biz under the ``Ark-Biz-Name`` / ``Ark-Biz-Version`` of the jar's
manifest, whatever the request said. The simulator only fetches when asked to, and never
leaves loopback.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import re
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from module_controller.simulator.ark import JavaException

# Schemes java.net.URL knows out of the box.
KNOWN_SCHEMES = frozenset({"http", "https", "file", "ftp", "jar"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_JAR_NAME = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^/]*?)(?:-ark-biz)?\.jar$")

MANIFEST_PATH = "META-INF/MANIFEST.MF"
ARK_BIZ_NAME = "Ark-Biz-Name"
ARK_BIZ_VERSION = "Ark-Biz-Version"
# The entry SOFAArk's BizFactoryService.isArkBiz looks for in every ark-biz jar.
ARK_BIZ_MARK_ENTRY = "com/alipay/sofa/ark/biz/mark"
_MANIFEST_LINE_BYTES = 72  # java.util.jar.Manifest wraps longer lines


def validate_url(url: str) -> None:
    """Raise the base's exception for a bizUrl that ``java.net.URL`` would refuse."""
    match = _SCHEME.match(url)
    if match is None or len(match.group(1)) == 1:  # "C:\..." is a path, not a scheme
        raise JavaException(f"java.net.MalformedURLException: no protocol: {url}")
    if match.group(1).lower() not in KNOWN_SCHEMES:
        raise JavaException(
            f"java.net.MalformedURLException: unknown protocol: {match.group(1).lower()}"
        )


def name_version_from_url(url: str) -> tuple[str, str] | None:
    """Guess ``(name, version)`` from ``<name>-<version>[-ark-biz].jar``.

    A real base reads them from the jar manifest when the request omits both; without the
    jar, the conventional file name is the best the simulator can do.
    """
    file_name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    match = _JAR_NAME.match(file_name)
    return (match.group("name"), match.group("version")) if match else None


async def fetch(url: str, timeout_s: float = 30.0) -> bytes:
    """Download the jar (file:// or loopback http/https); returns its bytes.

    Failures raise the :class:`JavaException` a real base reports for them.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = Path(unquote(parts.path))
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise JavaException(f"java.io.FileNotFoundException: {path} ({exc.strerror})") from exc
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        if not _is_loopback(host):
            # Never contact the outside world: behave as an unresolvable host.
            raise JavaException(f"java.net.UnknownHostException: {host}")
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                if response.status >= 400:
                    raise JavaException(f"java.io.FileNotFoundException: {url}")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JavaException(f"java.net.ConnectException: {url} ({exc})") from exc
    raise JavaException(f"java.net.MalformedURLException: unsupported protocol: {scheme}")


def manifest_name_version(jar: bytes) -> tuple[str, str] | None:
    """``(Ark-Biz-Name, Ark-Biz-Version)`` from the jar's manifest; None when it has none.

    None for anything that is not a zip, has no ``META-INF/MANIFEST.MF``, or lacks either
    attribute; the caller then keeps the request's name and version. A real base is stricter:
    SOFAArk's ``createBiz`` asserts "Archive must be a ark biz!" when the jar lacks the mark
    entry, and takes name and version from the manifest only. The simulator stays lenient so
    tests can install any file.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(jar)) as archive:
            text = archive.read(MANIFEST_PATH).decode("utf-8", "replace")
    # Not a zip, no manifest, truncated, encrypted, unknown compression: all "no manifest".
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, RuntimeError, NotImplementedError):
        return None
    attributes = _main_attributes(text)
    name = attributes.get(ARK_BIZ_NAME, "")
    version = attributes.get(ARK_BIZ_VERSION, "")
    return (name, version) if name and version else None


def write_module_jar(path: Path, name: str, version: str) -> Path:
    """Write a minimal ark-biz jar declaring ``name:version`` in its manifest; returns ``path``.

    For tests that install ``file://`` jars on bases started with ``fetch_jars``.
    """
    headers = (("Manifest-Version", "1.0"), (ARK_BIZ_NAME, name), (ARK_BIZ_VERSION, version))
    manifest = b"".join(_manifest_line(key, value) for key, value in headers) + b"\r\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # The manifest first, as the jar tool writes it (JarInputStream only finds it there).
        archive.writestr(MANIFEST_PATH, manifest)
        archive.writestr(ARK_BIZ_MARK_ENTRY, b"")
    return path


def _manifest_line(key: str, value: str) -> bytes:
    """One ``Key: value`` header, wrapped at 72 bytes as java.util.jar.Manifest does.

    Continuation lines start with a space; a line never ends inside a UTF-8 character.
    """
    lines: list[bytes] = []
    current = b""
    for char in f"{key}: {value}":
        encoded = char.encode()
        if len(current) + len(encoded) > _MANIFEST_LINE_BYTES:
            lines.append(current)
            current = b" "
        current += encoded
    lines.append(current)
    return b"".join(line + b"\r\n" for line in lines)


def _main_attributes(text: str) -> dict[str, str]:
    """The main section of a manifest: headers up to the first blank line, joined."""
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            break
        if line.startswith(" ") and lines:
            lines[-1] += line[1:]  # continuation line
        else:
            lines.append(line)
    attributes: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            attributes[key.strip()] = value.strip()
    return attributes


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
