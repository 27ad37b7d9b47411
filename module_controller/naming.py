"""Kubernetes-valid names and label values from whatever a base sends.

A base chooses its own identity, name and version; the API server accepts only DNS-1123
subdomains as node names and a narrow alphabet in label values. Values are sanitised, and
when sanitising changed them a short hash of the original is appended, so two identities
that differ only in forbidden characters still get two nodes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

MAX_NODE_NAME = 253
MAX_LABEL_VALUE = 63
MAX_IDENTITY = 128
# Longest name, version, cluster name, host name or IP a heartbeat may carry (a DNS name's
# limit): the whole heartbeat is kept in a node annotation, and the API server refuses an
# object whose annotations pass 256 KiB.
MAX_METADATA = 253

_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def _short_hash(value: str) -> str:
    # surrogatepass: JSON can carry lone surrogates (\ud800), which strict UTF-8 refuses.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def invalid_identity_reason(identity: str) -> str | None:
    """Why a base identity is refused, or None when it is acceptable.

    Identities are MQTT topic segments and the heart of node names: they must be short and
    plain (letters, digits, '.', '_', ':', '-'), which covers UUIDs, IPs and host names.
    """
    if not identity:
        return "it is empty"
    if len(identity) > MAX_IDENTITY:
        return f"it is {len(identity)} characters long (at most {MAX_IDENTITY})"
    if not _IDENTITY.fullmatch(identity):
        return "it may only hold letters, digits, '.', '_', ':' and '-', starting alphanumeric"
    return None


def invalid_metadata_reason(value: str) -> str | None:
    """Why a name, version, host name or IP from a heartbeat is refused, or None."""
    if len(value) > MAX_METADATA:
        return f"it is {len(value)} characters long (at most {MAX_METADATA})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    return None


def ip_address(value: str) -> str | None:
    """`value` in canonical form if it is a plain IPv4 or IPv6 address, else None.

    No zone (``%eth0``), prefix or padding, and no IPv4-mapped IPv6: what Kubernetes accepts
    as a pod IP, which module pods on the node get.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if "%" in value or (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped):
        return None
    return str(address)


def host_name(value: str) -> str | None:
    """`value` lower-cased if that is a valid DNS-1123 subdomain (as kubelets do), else None."""
    lowered = value.lower()
    return lowered if is_dns_subdomain(lowered) else None


def is_dns_subdomain(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NODE_NAME
        and bool(_DNS_SUBDOMAIN.fullmatch(name))
        and all(part and part[0].isalnum() and part[-1].isalnum() for part in name.split("."))
    )


def node_name(template: str, identity: str, env: str) -> str:
    """The Node name of a base: the template filled in, made a valid DNS-1123 subdomain."""
    wanted = template.format(identity=identity, env=env)
    name = _NOT_DNS.sub("-", wanted.lower())
    # Every dot-separated part must start and end alphanumeric.
    name = ".".join(part.strip("-") for part in name.split(".") if part.strip("-"))
    if name != wanted or not name:
        suffix = _short_hash(wanted)
        name = f"{name[: MAX_NODE_NAME - len(suffix) - 1]}-{suffix}".strip("-.")
    elif len(name) > MAX_NODE_NAME:
        suffix = _short_hash(wanted)
        name = f"{name[: MAX_NODE_NAME - len(suffix) - 1].rstrip('-.')}-{suffix}"
    return name


def label_value(value: str) -> str:
    """A valid label value: at most 63 characters of [A-Za-z0-9._-], alphanumeric at the ends."""
    if len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(value):
        return value
    cleaned = _NOT_LABEL.sub("-", value).strip("-._")
    suffix = _short_hash(value)
    cleaned = cleaned[: MAX_LABEL_VALUE - len(suffix) - 1].rstrip("-._")
    return f"{cleaned}-{suffix}" if cleaned else suffix
