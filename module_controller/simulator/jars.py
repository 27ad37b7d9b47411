"""bizUrl handling: validate it as a real base does, optionally fetch the jar.

A real base parses bizUrl with ``java.net.URL`` (a scheme is required, a bare path fails with
``MalformedURLException: no protocol``) and downloads it; a failed download fails the install.
The simulator only fetches when asked to, and never leaves loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from module_controller.simulator.ark import JavaException

# Schemes java.net.URL knows out of the box.
KNOWN_SCHEMES = frozenset({"http", "https", "file", "ftp", "jar"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_JAR_NAME = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^/]*?)(?:-ark-biz)?\.jar$")


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


async def fetch(url: str, timeout_s: float = 30.0) -> int:
    """Download the jar (file:// or loopback http/https); returns its size in bytes.

    Failures raise the :class:`JavaException` a real base reports for them.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = Path(unquote(parts.path))
        try:
            return await asyncio.to_thread(lambda: len(path.read_bytes()))
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
                return len(await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JavaException(f"java.net.ConnectException: {url} ({exc})") from exc
    raise JavaException(f"java.net.MalformedURLException: unsupported protocol: {scheme}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
