"""Configuration of a simulated base and of its broker connection."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.protocol.heartbeat import HTTP_HEARTBEAT_PERIOD_S, MQTT_HEARTBEAT_PERIOD_S


class IdentityStyle(StrEnum):
    UUID = "uuid"  # a new UUID per start, as the seed describes (runtime 1.3.0-1.3.2)
    IP = "ip"  # the base's IP, as runtime >= 1.3.3's default hook does


@dataclass(frozen=True)
class MqttSettings:
    """Where and how a base reaches the broker (the runtime's koupleless.arklet.mqtt.*)."""

    host: str
    port: int = 1883
    username: str = ""
    password: str = ""
    client_prefix: str = "koupleless"
    ca_path: str | None = None  # TLS when set, as the runtime switches to ssl://
    client_crt_path: str | None = None
    client_key_path: str | None = None
    keepalive_s: int = 60  # Paho Java default


@dataclass
class BaseConfig:
    """Who a simulated base is and how it behaves (the JVM's -D properties, in effect)."""

    name: str = "base"
    version: str = "1.0.0"
    cluster_name: str = "default"
    env: str = "dev"
    ip: str = "127.0.0.2"  # loopback only: the Arklet HTTP API is served here
    host_name: str | None = None  # default: derived from name and ip
    identity: str | None = None  # default: chosen by identity_style at each start
    identity_style: IdentityStyle = IdentityStyle.UUID
    mqtt: MqttSettings | None = None  # None: no MQTT tunnel
    http_api: bool = True  # serve the Arklet HTTP API on ip:port
    port: int = ARKLET_DEFAULT_PORT  # first port tried; arklet scans 100 ports upwards
    http_heartbeat_endpoint: str | None = None  # e.g. http://127.0.0.1:7777 (HTTP tunnel)
    mqtt_heartbeat_period_s: float = MQTT_HEARTBEAT_PERIOD_S
    http_heartbeat_period_s: float = HTTP_HEARTBEAT_PERIOD_S
    # -Dactivate.new.module: a second version of a name is activated and the old one
    # deactivated (lossless update). Off: the new one starts DEACTIVATED.
    activate_new_module: bool = True
    # sofa.ark.auto.uninstall.when.failed.enable; the sample base image sets false, so a
    # BROKEN module stays listed with its stack trace.
    auto_uninstall_when_failed: bool = False
    # sofa.ark.remove.biz.instance.when.stop.failed.enable (default true).
    remove_biz_when_stop_failed: bool = True
    # Fetch file:// and loopback http(s):// jars and fail the install when that fails; a
    # fetched jar's Ark-Biz-Name / Ark-Biz-Version then name the biz, as on a real base.
    fetch_jars: bool = False
    master_web_context_path: str = "/"

    def resolve_identity(self) -> str:
        """The identity for one start: fixed, the IP, or a fresh UUID."""
        if self.identity:
            return self.identity
        if self.identity_style is IdentityStyle.IP:
            return self.ip
        return str(uuid.uuid4())

    @property
    def resolved_host_name(self) -> str:
        return self.host_name or f"{self.name}-{self.ip.replace('.', '-')}"
