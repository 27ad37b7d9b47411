"""Distinct loopback IPs for simulated bases (127.x.y.z, never outside 127.0.0.0/8).

Linux routes all of 127.0.0.0/8 to ``lo``, so each base can bind its own address and report it
as its IP, and the controller can reach every base's Arklet over HTTP.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
DEFAULT_FIRST_IP = "127.0.1.1"


def require_loopback(ip: str) -> str:
    if ipaddress.IPv4Address(ip) not in LOOPBACK_NET:
        raise ValueError(f"{ip} is not a loopback address; simulated bases stay on 127.0.0.0/8")
    return ip


def loopback_ips(first: str = DEFAULT_FIRST_IP) -> Iterator[str]:
    """Loopback addresses from ``first`` upwards, skipping .0, .255 and 127.0.0.1."""
    address = ipaddress.IPv4Address(require_loopback(first))
    last = LOOPBACK_NET.broadcast_address
    while address < last:
        text = str(address)
        last_octet = int(text.rsplit(".", 1)[1])
        if text != "127.0.0.1" and last_octet not in (0, 255):
            yield text
        address += 1


def can_bind(ip: str) -> bool:
    """True when this host lets a socket bind ``ip`` (all of 127/8 on Linux)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((require_loopback(ip), 0))
        except OSError:
            return False
    return True
