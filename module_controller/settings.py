"""The operator's settings, read from the environment.

Every variable of the Go Module Controller V2 is accepted: those listed in
`go_compat.GO_NAMES_WITH_MEANING` are settings here with the Go meaning, the others are
accepted and ignored (`go_compat.IGNORED_GO_SETTINGS`, with the reasons). The rest are ours,
for the timings and limits that the Go controller hard-codes. Booleans read as Go reads them
(`go_compat.GoBool`). A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyAddress, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from module_controller.go_compat import GoBool, own_namespace
from module_controller.kubelet_proxy import tls as kubelet_proxy_tls

SEED_MODULE_LABEL = "module-controller.koupleless.io/component"
GO_CONTROLLER_MODULE_LABEL = "virtual-kubelet.koupleless.io/component"


# Settings naming a file: empty means unset, and the file must be readable at start.
_FILE_SETTINGS = (
    "mqtt_ca_path",
    "mqtt_client_crt_path",
    "mqtt_client_key_path",
    "kubelet_proxy_tls_crt_path",
    "kubelet_proxy_tls_key_path",
    "kubelet_proxy_client_ca_path",
)


class SettingsError(ValueError):
    """Settings that cannot work; the message names each bad environment variable."""


class Settings(BaseSettings):
    """Every setting, its environment variable (the field name upper-cased) and default."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    # --- the Go controller's names ------------------------------------------------------
    env: str = Field(
        default="dev",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Environment of the bases: MQTT topics are koupleless_<ENV>/..., node "
        "label virtual-kubelet.koupleless.io/env. Must equal the bases' runtime env.",
    )
    mqtt_broker: str = Field(default="test-broker", description="MQTT broker host name.")
    mqtt_port: int = Field(default=1883, ge=1, le=65535, description="MQTT broker port.")
    mqtt_username: str = Field(default="test-username", description="MQTT user name.")
    mqtt_password: str = Field(default="", description="MQTT password.")
    mqtt_client_prefix: str = Field(
        default="koupleless",
        description="MQTT client id prefix; the client id is <prefix>@@@<CLIENT_ID>.",
    )
    mqtt_ca_path: Path | None = Field(
        default=None,
        description="CA certificate file; when set the broker is reached over TLS, and its "
        "certificate must be signed by this CA and name MQTT_BROKER (the Go controller "
        "checks neither).",
    )
    mqtt_client_crt_path: Path | None = Field(
        default=None, description="Client certificate file for mutual TLS (with the key)."
    )
    mqtt_client_key_path: Path | None = Field(
        default=None, description="Client private key file for mutual TLS (with the certificate)."
    )
    client_id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        description="This controller instance's identity (MQTT client id, Lease holder). "
        "A new UUID per start when unset.",
    )

    # --- tunnels, peer deployments, kubelet proxy (the Go controller's names) --------------
    enable_mqtt_tunnel: GoBool = Field(
        default=True,
        description="Talk to bases over MQTT. The default keeps a Go manifest's meaning: "
        "one that enables only the HTTP tunnel runs only it. At least one tunnel must be on.",
    )
    enable_http_tunnel: GoBool = Field(
        default=False,
        description="Serve /heartbeat and /queryBaseline on HTTP_TUNNEL_LISTEN_PORT and drive "
        "bases that beat there through their Arklet HTTP API. Both tunnels may run at once "
        "(the Go controller then uses only MQTT); each base stays on the tunnel it spoke "
        "first.",
    )
    http_tunnel_listen_port: int = Field(
        default=7777, ge=0, le=65535, description="Port of the HTTP tunnel (0: any free port)."
    )
    arklet_http_timeout_seconds: float = Field(
        default=5,
        gt=0,
        description="Timeout of an Arklet HTTP health or inventory call (installs and "
        "uninstalls wait up to INSTALL_TIMEOUT_SECONDS).",
    )
    arklet_http_max_calls: int = Field(
        default=64, ge=1, description="Most Arklet HTTP calls in flight, over all bases."
    )
    arklet_http_max_calls_per_base: int = Field(
        default=4, ge=1, description="Most Arklet HTTP calls in flight to one base."
    )
    enable_module_replicas_sync_with_base: GoBool = Field(
        default=False,
        description="Keep spec.replicas of Deployments labelled "
        "virtual-kubelet.koupleless.io/strategy=peer equal to the number of Ready nodes of "
        "their base cluster (label virtual-kubelet.koupleless.io/replicas-control=true opts "
        "out).",
    )
    peer_replicas_debounce_seconds: float = Field(
        default=10,
        ge=0,
        description="A peer Deployment is rescaled only after its base count held this long, "
        "so a flapping base does not scale it up and down.",
    )
    kubelet_proxy_enabled: GoBool = Field(
        default=False,
        description="Serve the kubelet log API (kubectl logs) for module pods on "
        "KUBELET_PROXY_PORT, streaming the logs of the base's own pod.",
    )
    kubelet_proxy_port: int = Field(
        default=10250,
        ge=0,
        le=65535,
        description="TLS port of the kubelet proxy, which nodes advertise as their kubelet's.",
    )
    kubelet_proxy_address: IPvAnyAddress | None = Field(
        default=None,
        description="The IP where the API server reaches the kubelet proxy, every node's only "
        "address (InternalIP). Unset: the ClusterIP of the Service labelled "
        "virtual-kubelet.koupleless.io/kubelet-proxy-service=true in NAMESPACE, looked up at "
        "start (as the Go controller does).",
    )
    namespace: str = Field(
        default_factory=own_namespace,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Namespace of the kubelet proxy's Service (see KUBELET_PROXY_ADDRESS).",
    )
    kubelet_proxy_tls_crt_path: Path | None = Field(
        default=None,
        description="Serving certificate of the kubelet proxy (the Go controller reads "
        "/etc/virtual-kubelet/tls/tls.crt, always); a self-signed one is made at start when "
        "unset. Set with KUBELET_PROXY_TLS_KEY_PATH.",
    )
    kubelet_proxy_tls_key_path: Path | None = Field(
        default=None,
        description="Private key of KUBELET_PROXY_TLS_CRT_PATH (the Go controller's "
        "/etc/virtual-kubelet/tls/tls.key).",
    )
    kubelet_proxy_client_ca_path: Path | None = Field(
        default=None,
        description="Serve only callers with a client certificate this CA signed, as the API "
        "server's --kubelet-client-certificate (signed by the cluster CA). Unset: anyone.",
    )

    # --- replicas (bases sharded over the live replicas on Leases) ------------------------
    replica_lease_seconds: float = Field(
        default=15,
        gt=0,
        description="Duration of each replica's membership Lease in NAMESPACE: a replica "
        "not heard of for this long is gone and its bases are taken over.",
    )
    replica_renew_deadline_seconds: float = Field(
        default=10,
        gt=0,
        description="A replica that could not renew its membership for this long stops "
        "acting on every base at once (before anyone may take them over).",
    )
    replica_retry_seconds: float = Field(
        default=2, gt=0, description="How often membership is renewed and ownership checked."
    )
    # --- nodes ------------------------------------------------------------------------------
    node_name_template: str = Field(
        default="virtual-node-{identity}",
        description="Name of a base's Node; {identity} and {env} are replaced. "
        "vnode.{identity}.{env} gives the Go controller's names.",
    )
    node_env_taint: GoBool = Field(
        default=False,
        description="Also taint nodes schedule.koupleless.io/node-env=<ENV>:NoExecute, as the Go "
        "controller does (the seed's sample does not tolerate it).",
    )
    node_cpu: str = Field(default="1000", description="CPU capacity a node reports.")
    node_memory: str = Field(
        default="1Ti", description="Memory a node reports until its base reports metaspace."
    )
    node_pods: str = Field(default="65535", description="Pods a node accepts.")
    max_bases: int = Field(
        default=5000, ge=1, description="Most bases accepted; heartbeats of more are refused."
    )

    # --- timings (seconds) --------------------------------------------------------------
    base_not_ready_seconds: float = Field(
        default=25, gt=0, description="Without a heartbeat this long, a base's node is NotReady."
    )
    base_dead_seconds: float = Field(
        default=60, gt=0, description="Without a heartbeat this long, a base's node is deleted."
    )
    health_poll_seconds: float = Field(
        default=10, gt=0, description="How often each base is asked for its health."
    )
    lease_duration_seconds: int = Field(
        default=40, ge=1, description="Duration written into each node's Lease."
    )
    lease_renew_seconds: float = Field(
        default=10, gt=0, description="How often node Leases are renewed."
    )
    message_max_age_seconds: float = Field(
        default=10,
        gt=0,
        description="Heartbeat, health and inventory messages older than this are dropped.",
    )
    max_message_bytes: int = Field(
        default=1 << 20, ge=1024, description="MQTT messages larger than this are dropped."
    )
    mqtt_reconnect_max_seconds: float = Field(
        default=10, gt=0, description="Longest wait between two broker connection attempts."
    )
    mqtt_keepalive_seconds: int = Field(
        default=15,
        ge=5,
        description="MQTT keepalive: a broker that stops answering pings is dropped after "
        "about twice this (the Go controller uses 60).",
    )
    broker_probe_seconds: float = Field(
        default=3,
        gt=0,
        description="How often the operator sends itself a probe message through the broker, "
        "to prove the broker still delivers.",
    )
    broker_suspect_seconds: float = Field(
        default=10,
        gt=0,
        description="With no message through the broker for this long (not even the "
        "operator's own probe), the broker is suspect: base liveness clocks stop and /readyz "
        "fails. With the probe half this late (or half MESSAGE_MAX_AGE_SECONDS, if shorter) "
        "while messages still come, the operator reads them late: base liveness clocks stop "
        "too, until it is back under a quarter.",
    )
    mass_silence_share: float = Field(
        default=0.55,
        gt=0,
        le=1,
        description="When more than this share of bases go silent within one heartbeat period, "
        "it is taken for a broker or network fault: nodes may go NotReady but none is deleted.",
    )
    mass_silence_max_seconds: float = Field(
        default=600,
        gt=0,
        description="How long a mass silence may keep silent bases' nodes from being deleted.",
    )
    base_heartbeat_seconds: float = Field(
        default=10,
        gt=0,
        description="The bases' heartbeat period (a real base beats every 10 s), the window "
        "in which silences count as one mass silence.",
    )

    # --- module pods ----------------------------------------------------------------------
    module_label: Literal[
        "module-controller.koupleless.io/component", "virtual-kubelet.koupleless.io/component"
    ] = Field(
        default="module-controller.koupleless.io/component",
        description="Label key (value 'module') that marks module pods: the seed's key, or the "
        "Go controller's virtual-kubelet.koupleless.io/component.",
    )

    event_queue_size: int = Field(
        default=10_000,
        ge=10,
        description="Events (base messages, pod changes) that may wait for the dispatcher, "
        "and messages the MQTT client may hold. When full, the reader waits and stops "
        "acknowledging, so the broker holds the bases' answers (QoS 1); what the client "
        "still cannot hold (heartbeats come at QoS 0) is dropped, counted "
        "(client_queue_full) and logged.",
    )
    inventory_poll_seconds: float = Field(
        default=15, gt=0, description="How often each base is asked for its full module list."
    )
    install_timeout_seconds: float = Field(
        default=120,
        gt=0,
        description="An install with no answer for this long is sent again.",
    )
    install_retry_seconds: float = Field(
        default=5,
        gt=0,
        description="First wait before a failed install is sent again (doubling each failure, "
        "up to INSTALL_RETRY_MAX_SECONDS; a change of the pod's spec starts over).",
    )
    install_retry_max_seconds: float = Field(
        default=300, gt=0, description="Longest wait between two tries of a failing install."
    )
    uninstall_retry_seconds: float = Field(
        default=5,
        gt=0,
        description="First wait before a failed uninstall is retried (doubling, up to 60 s).",
    )
    uninstall_give_up_seconds: float = Field(
        default=120,
        gt=0,
        description="A deleted module pod whose modules cannot be uninstalled is removed after "
        "this long anyway; the leftover module is logged and reported as an Event.",
    )
    uninstall_orphans: GoBool = Field(
        default=True,
        description="Uninstall modules that no pod on their base wants "
        "(after ORPHAN_GRACE_SECONDS).",
    )
    orphan_grace_seconds: float = Field(
        default=60,
        ge=0,
        description="How long a module nobody wants may stay before it is uninstalled (a "
        "restarted base reinstalls its baseline before its pods come back).",
    )

    # --- serving --------------------------------------------------------------------------
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Port of /metrics.")
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="Port of /healthz and /readyz."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as sentences (text) or one JSON object per line."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )

    @field_validator("node_name_template")
    @classmethod
    def _template_names_the_identity(cls, value: str) -> str:
        if "{identity}" not in value:
            raise ValueError("must contain {identity}")
        try:
            value.format(identity="x", env="y")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"only {{identity}} and {{env}} may be used ({error})") from error
        return value

    @field_validator("mqtt_broker")
    @classmethod
    def _broker_is_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name the broker's host (it is empty)")
        return value.strip()

    @field_validator(*_FILE_SETTINGS, "kubelet_proxy_address", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # `MQTT_CA_PATH=` in a manifest means no TLS, as in the Go controller, not the file ".".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*_FILE_SETTINGS)
    @classmethod
    def _file_is_readable(cls, value: Path | None) -> Path | None:
        # Checked here so that a wrong path stops start-up naming it, before anything runs.
        if value is None:
            return None
        try:
            with value.open("rb"):
                pass
        except OSError as error:
            raise ValueError(f"cannot read {value}: {error.strerror or error}") from None
        return value

    @model_validator(mode="after")
    def _tls_files_load(self) -> Settings:
        """The CAs and the certificates are usable, not only present."""
        kubelet_proxy_tls.check_files(
            self.kubelet_proxy_tls_crt_path,
            self.kubelet_proxy_tls_key_path,
            self.kubelet_proxy_client_ca_path,
        )
        if self.mqtt_ca_path is None:
            return self
        try:
            context = ssl.create_default_context(cafile=str(self.mqtt_ca_path))
        except ssl.SSLError as error:
            raise ValueError(
                f"MQTT_CA_PATH {self.mqtt_ca_path} is not a PEM CA certificate ({error.reason})"
            ) from None
        if self.mqtt_client_crt_path is not None and self.mqtt_client_key_path is not None:
            try:
                context.load_cert_chain(
                    str(self.mqtt_client_crt_path), str(self.mqtt_client_key_path)
                )
            except ssl.SSLError as error:
                raise ValueError(
                    f"MQTT_CLIENT_CRT_PATH {self.mqtt_client_crt_path} and MQTT_CLIENT_KEY_PATH "
                    f"{self.mqtt_client_key_path} are not a certificate and its key "
                    f"({error.reason})"
                ) from None
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.base_dead_seconds <= self.base_not_ready_seconds:
            raise ValueError("BASE_DEAD_SECONDS must be longer than BASE_NOT_READY_SECONDS")
        if self.lease_renew_seconds >= self.lease_duration_seconds:
            raise ValueError("LEASE_RENEW_SECONDS must be shorter than LEASE_DURATION_SECONDS")
        if self.replica_renew_deadline_seconds >= self.replica_lease_seconds:
            raise ValueError(
                "REPLICA_RENEW_DEADLINE_SECONDS must be shorter than REPLICA_LEASE_SECONDS: a "
                "replica must stop acting before others may take its bases over"
            )
        if self.replica_retry_seconds >= self.replica_renew_deadline_seconds:
            raise ValueError(
                "REPLICA_RETRY_SECONDS must be shorter than REPLICA_RENEW_DEADLINE_SECONDS"
            )
        if self.install_retry_max_seconds < self.install_retry_seconds:
            raise ValueError(
                "INSTALL_RETRY_MAX_SECONDS must not be shorter than INSTALL_RETRY_SECONDS"
            )
        if (self.mqtt_client_crt_path is None) != (self.mqtt_client_key_path is None):
            raise ValueError("MQTT_CLIENT_CRT_PATH and MQTT_CLIENT_KEY_PATH go together")
        if (self.kubelet_proxy_tls_crt_path is None) != (self.kubelet_proxy_tls_key_path is None):
            raise ValueError(
                "KUBELET_PROXY_TLS_CRT_PATH and KUBELET_PROXY_TLS_KEY_PATH go together"
            )
        return self

    @model_validator(mode="after")
    def _tunnels(self) -> Settings:
        """At least one tunnel, and the Go meaning of a manifest that enables only HTTP."""
        # Our MQTT tunnel is on by default (the seed's bases speak MQTT), the Go controller's
        # is off; a Go manifest that sets only ENABLE_HTTP_TUNNEL=true means HTTP alone, and
        # an MQTT tunnel to its unset broker would keep /readyz failing.
        if self.enable_http_tunnel and "enable_mqtt_tunnel" not in self.model_fields_set:
            self.enable_mqtt_tunnel = False
        if not (self.enable_mqtt_tunnel or self.enable_http_tunnel):
            raise ValueError(
                "ENABLE_MQTT_TUNNEL and ENABLE_HTTP_TUNNEL are both false: set at least one "
                "to true (the bases speak MQTT or HTTP)"
            )
        if not self.enable_mqtt_tunnel:
            return self  # no broker to suspect
        if self.broker_suspect_seconds >= self.base_not_ready_seconds:
            raise ValueError(
                "BROKER_SUSPECT_SECONDS must be shorter than BASE_NOT_READY_SECONDS, or a frozen "
                "broker turns every node NotReady before it is suspected"
            )
        if self.broker_suspect_seconds <= self.broker_probe_seconds:
            raise ValueError("BROKER_SUSPECT_SECONDS must be longer than BROKER_PROBE_SECONDS")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        """Two servers on one port would stop start-up with "address in use"; say which."""
        servers = {"METRICS_PORT": self.metrics_port, "HEALTH_PORT": self.health_port}
        if self.enable_http_tunnel:
            servers["HTTP_TUNNEL_LISTEN_PORT"] = self.http_tunnel_listen_port
        if self.kubelet_proxy_enabled:
            if self.kubelet_proxy_port == 0:
                raise ValueError(
                    "KUBELET_PROXY_PORT=0 with KUBELET_PROXY_ENABLED=true: nodes advertise this "
                    "port to the API server, so it must be a fixed one (default 10250)"
                )
            servers["KUBELET_PROXY_PORT"] = self.kubelet_proxy_port
        owner: dict[int, str] = {}
        for name, port in servers.items():
            # 0 is any free port; /metrics and /healthz may share one listener on purpose.
            if port == 0 or (owner.get(port) == "METRICS_PORT" and name == "HEALTH_PORT"):
                continue
            if port in owner:
                raise ValueError(f"{name} and {owner[port]} are both {port}: use two ports")
            owner[port] = name
        return self

    @property
    def module_selector(self) -> str:
        return f"{self.module_label}=module"


def load_settings() -> Settings:
    """Read the settings from the environment, or raise SettingsError naming what is wrong."""
    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for item in error.errors():
            # pydantic prefixes our own messages with "Value error, "; it says nothing.
            message = item["msg"].removeprefix("Value error, ")
            where = "_".join(str(part) for part in item["loc"]).upper()
            # A check across fields has no place; its message names the variables itself.
            problems.append(f"{where}: {message}" if where else message)
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
