"""Kubernetes-valid names and label values from whatever a base sends.

A base chooses its own identity, name and version; the API server accepts only DNS-1123
subdomains as node names and a narrow alphabet in label values. Values are sanitised, and
when sanitising changed them a short hash of the original is appended, so two identities
that differ only in forbidden characters still get two nodes.
"""

from __future__ import annotations

import hashlib
import re

MAX_NODE_NAME = 253
MAX_LABEL_VALUE = 63
MAX_IDENTITY = 128

_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def _short_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def invalid_identity_reason(identity: str) -> str | None:
    """Why a base identity is refused, or None when it is acceptable.

    Identities are MQTT topic segments and the heart of node names: they must be short and
    plain (letters, digits, '.', '_', ':', '-'), which covers UUIDs, IPs and host names.
    """
    if not identity:
        return "it is empty"
    if len(identity) > MAX_IDENTITY:
        return f"it is {len(identity)} characters long (at most {MAX_IDENTITY})"
    if not _IDENTITY.match(identity):
        return "it may only hold letters, digits, '.', '_', ':' and '-', starting alphanumeric"
    return None


def is_dns_subdomain(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NODE_NAME
        and bool(_DNS_SUBDOMAIN.match(name))
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
    if len(value) <= MAX_LABEL_VALUE and _LABEL_VALUE.match(value):
        return value
    cleaned = _NOT_LABEL.sub("-", value).strip("-._")
    suffix = _short_hash(value)
    cleaned = cleaned[: MAX_LABEL_VALUE - len(suffix) - 1].rstrip("-._")
    return f"{cleaned}-{suffix}" if cleaned else suffix
