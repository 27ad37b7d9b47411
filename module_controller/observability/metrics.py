"""The operator's Prometheus metrics, all named `module_controller_*`.

A `Metrics` object owns its own CollectorRegistry instead of prometheus_client's global
one: the operator makes one at start-up and hands it to the parts that record, the
metrics server exposes that registry, and each test makes a fresh one, so no test sees
another's counts.

Label values come from small closed vocabularies (the Literal types below). That keeps
the number of series bounded — a label fed from a pod or base name would grow without
limit — and lets mypy catch a misspelt reason. Every known label value is created at
zero up front, so `rate()` and "absent means zero" queries work from the first scrape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

PREFIX = "module_controller"

# Without this every counter and histogram series gets a `<name>_created` twin in the text
# format, doubling what Prometheus stores for a timestamp nobody queries. The switch is
# process-wide in prometheus_client; the operator's process has no other metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

NodeCondition = Literal["ready", "not_ready"]
"""What the operator last reported for a virtual node's Ready condition."""

ModulePodState = Literal["pending", "installing", "ready", "not_ready", "failed", "uninstalling"]
"""Where a module pod stands: not yet sent, install sent, module up (pod Ready), module
present but not serving, install failed, uninstall sent."""

OperationResult = Literal["success", "failure", "timeout"]
"""How an install or uninstall ended: the base's reply said so, or none came in time."""

MqttReceivedKind = Literal[
    "heart",
    "query_baseline",
    "health",
    "simple_biz",
    "biz",
    "biz_operation",
    "batch_install_biz_response",
]
"""Which base topic a received message came on (the `BaseTopic` names, snake_cased)."""

MqttPublishedKind = Literal["baseline", "command"]
"""What the operator published: a baseline answer, or an Arklet command (install,
uninstall, queries)."""

MqttDropReason = Literal[
    "oversized",
    "unknown_topic",
    "bad_identity",
    "malformed",
    "stale",
    "identity_mismatch",
    "failed_reply",
    "client_queue_full",
]
"""Why an incoming message was thrown away: too large, on a topic we do not handle, an
identity we refuse, not parseable, older than the freshness window, a heartbeat claiming
another base's identity, a base's reply that reports its own failure, or the MQTT client's
bounded incoming queue overflowing while the operator's event queue held it back."""

ApiResource = Literal[
    "nodes", "nodes/status", "leases", "pods", "pods/status", "events", "deployments"
]
"""The Kubernetes resources the operator writes or reads (the same list as its RBAC)."""

# Module installs download and start a jar: from under a second to minutes.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """Every metric the operator exports, with one typed method per thing it records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._bases = Gauge(
            f"{PREFIX}_bases",
            "Bases currently alive (heartbeating) and known to the operator.",
            registry=self.registry,
        )
        self._nodes = Gauge(
            f"{PREFIX}_nodes",
            "Virtual nodes managed by the operator, by the Ready condition it last set.",
            ["condition"],
            registry=self.registry,
        )
        self._module_pods = Gauge(
            f"{PREFIX}_module_pods",
            "Module pods on virtual nodes, by state.",
            ["state"],
            registry=self.registry,
        )
        self._install_seconds = Histogram(
            f"{PREFIX}_module_install_duration_seconds",
            "Time from sending a module install to its outcome, by result.",
            ["result"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        self._uninstall_seconds = Histogram(
            f"{PREFIX}_module_uninstall_duration_seconds",
            "Time from sending a module uninstall to its outcome, by result.",
            ["result"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        # prometheus_client appends `_total` to counter names in the exposition.
        self._mqtt_received = Counter(
            f"{PREFIX}_mqtt_messages_received",
            "MQTT messages received from bases, by the base topic they came on.",
            ["kind"],
            registry=self.registry,
        )
        self._mqtt_published = Counter(
            f"{PREFIX}_mqtt_messages_published",
            "MQTT messages published by the operator, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self._mqtt_dropped = Counter(
            f"{PREFIX}_mqtt_messages_dropped",
            "Incoming MQTT messages thrown away, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._broker_reconnects = Counter(
            f"{PREFIX}_mqtt_reconnects",
            "Times the connection to the MQTT broker was lost and made again.",
            registry=self.registry,
        )
        self._api_errors = Counter(
            f"{PREFIX}_kubernetes_api_errors",
            "Failed Kubernetes API calls, by resource and HTTP status "
            "(`connection` when no response came).",
            ["resource", "status"],
            registry=self.registry,
        )
        self._broker_delivering = Gauge(
            f"{PREFIX}_mqtt_broker_delivering",
            "1 while the operator's own probe comes back through the broker in time, 0 while "
            "the broker is suspect (base liveness clocks are stopped then).",
            registry=self.registry,
        )
        self._broker_suspect = Counter(
            f"{PREFIX}_mqtt_broker_suspect",
            "Times the broker stopped delivering the operator's probe in time.",
            registry=self.registry,
        )
        self._intake_lag = Gauge(
            f"{PREFIX}_mqtt_intake_lag_seconds",
            "How late the operator's own probe comes back through the broker, so how late "
            "base messages reach it. Base liveness pauses from half the shorter of "
            "BROKER_SUSPECT_SECONDS and MESSAGE_MAX_AGE_SECONDS.",
            registry=self.registry,
        )
        self._mass_silence = Gauge(
            f"{PREFIX}_mass_silence",
            "1 while a mass silence of bases holds back node deletions, else 0.",
            registry=self.registry,
        )
        self._pod_status_writes = Counter(
            f"{PREFIX}_pod_status_writes",
            "Status patches sent for module pods (none at rest).",
            registry=self.registry,
        )
        self._install_commands = Counter(
            f"{PREFIX}_module_install_commands",
            "installBiz commands sent to bases (retries included).",
            registry=self.registry,
        )
        self._event_queue_full = Counter(
            f"{PREFIX}_event_queue_full",
            "Times an event (a base's message, a pod change, a tick) waited because the "
            "operator's event queue was full; it is delivered late, never dropped.",
            registry=self.registry,
        )
        self._event_queue_depth = Gauge(
            f"{PREFIX}_event_queue_depth",
            "Events waiting for the dispatcher.",
            registry=self.registry,
        )
        self._arklet_http_calls = Counter(
            f"{PREFIX}_arklet_http_calls",
            "Arklet HTTP calls to HTTP-tunnel bases, by command and outcome (answered; "
            "undelivered: the base never got it; delivered_no_answer: timed out or not an "
            "Arklet answer).",
            ["command", "outcome"],
            registry=self.registry,
        )
        self._http_tunnel_requests = Counter(
            f"{PREFIX}_http_tunnel_requests",
            "Requests of bases to the HTTP tunnel, by endpoint and outcome (accepted, or the "
            "HTTP status of the refusal).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self._bases_owned = Gauge(
            f"{PREFIX}_bases_owned",
            "Bases this replica owns (holds the node Lease of) and acts on.",
            registry=self.registry,
        )
        self._delivering = False
        self._create_known_series()

    def _create_known_series(self) -> None:
        for condition in get_args(NodeCondition):
            self._nodes.labels(condition=condition)
        for state in get_args(ModulePodState):
            self._module_pods.labels(state=state)
        for result in get_args(OperationResult):
            self._install_seconds.labels(result=result)
            self._uninstall_seconds.labels(result=result)
        for kind in get_args(MqttReceivedKind):
            self._mqtt_received.labels(kind=kind)
        for kind in get_args(MqttPublishedKind):
            self._mqtt_published.labels(kind=kind)
        for reason in get_args(MqttDropReason):
            self._mqtt_dropped.labels(reason=reason)

    # Gauges are set from the registry's own counts (the source of truth), never
    # incremented and decremented, so they cannot drift from what the operator holds.

    def set_bases(self, alive: int) -> None:
        self._bases.set(alive)

    def set_bases_owned(self, owned: int) -> None:
        self._bases_owned.set(owned)

    def set_nodes(self, by_condition: Mapping[NodeCondition, int]) -> None:
        """Set every condition's count; a condition missing from the mapping counts zero."""
        for condition in get_args(NodeCondition):
            self._nodes.labels(condition=condition).set(by_condition.get(condition, 0))

    def set_module_pods(self, by_state: Mapping[ModulePodState, int]) -> None:
        """Set every state's count; a state missing from the mapping counts zero."""
        for state in get_args(ModulePodState):
            self._module_pods.labels(state=state).set(by_state.get(state, 0))

    def observe_install(self, seconds: float, result: OperationResult) -> None:
        self._install_seconds.labels(result=result).observe(seconds)

    def observe_uninstall(self, seconds: float, result: OperationResult) -> None:
        self._uninstall_seconds.labels(result=result).observe(seconds)

    def record_mqtt_received(self, kind: MqttReceivedKind) -> None:
        """Count a message on a base topic, whether or not it is dropped afterwards (a
        message on a topic we do not know is only counted as dropped, `unknown_topic`)."""
        self._mqtt_received.labels(kind=kind).inc()

    def record_mqtt_published(self, kind: MqttPublishedKind) -> None:
        self._mqtt_published.labels(kind=kind).inc()

    def record_mqtt_dropped(self, reason: MqttDropReason) -> None:
        self._mqtt_dropped.labels(reason=reason).inc()

    def record_arklet_http_call(self, command: str, outcome: str) -> None:
        self._arklet_http_calls.labels(command=command, outcome=outcome).inc()

    def record_http_tunnel_request(self, endpoint: str, outcome: str) -> None:
        self._http_tunnel_requests.labels(endpoint=endpoint, outcome=outcome).inc()

    def record_broker_reconnect(self) -> None:
        self._broker_reconnects.inc()

    def record_api_error(self, resource: ApiResource, status: int | None) -> None:
        """Count a failed API call; `status` is the HTTP status, None when none came back."""
        self._api_errors.labels(
            resource=resource, status="connection" if status is None else str(status)
        ).inc()

    def set_broker_delivering(self, delivering: bool) -> None:
        if not delivering and self._delivering:
            self._broker_suspect.inc()
        self._delivering = delivering
        self._broker_delivering.set(1 if delivering else 0)

    def set_intake_lag(self, seconds: float) -> None:
        self._intake_lag.set(seconds)

    def set_mass_silence(self, holding: bool) -> None:
        self._mass_silence.set(1 if holding else 0)

    def record_pod_status_write(self) -> None:
        self._pod_status_writes.inc()

    def record_install_command(self) -> None:
        self._install_commands.inc()

    def record_event_queue_full(self) -> None:
        self._event_queue_full.inc()

    def set_event_queue_depth(self, depth: int) -> None:
        self._event_queue_depth.set(depth)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry as `/metrics` serves it, and its content type.

        `accept` is the scraper's Accept header: OpenMetrics when it asks for that,
        Prometheus' text format otherwise.
        """
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
