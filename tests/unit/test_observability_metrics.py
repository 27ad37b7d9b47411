"""The operator's Prometheus metrics: names, labels, and what each helper moves."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from module_controller.observability.metrics import Metrics

# The names the issue promises, as a scraper sees them (`_total` on counters).
EXPECTED_FAMILIES = {
    "module_controller_bases": "gauge",
    "module_controller_nodes": "gauge",
    "module_controller_module_pods": "gauge",
    "module_controller_module_install_duration_seconds": "histogram",
    "module_controller_module_uninstall_duration_seconds": "histogram",
    "module_controller_mqtt_messages_received": "counter",
    "module_controller_mqtt_messages_published": "counter",
    "module_controller_mqtt_messages_dropped": "counter",
    "module_controller_mqtt_reconnects": "counter",
    "module_controller_kubernetes_api_errors": "counter",
    "module_controller_mqtt_broker_delivering": "gauge",
    "module_controller_mqtt_intake_lag_seconds": "gauge",
    "module_controller_mqtt_broker_suspect": "counter",
    "module_controller_mass_silence": "gauge",
    "module_controller_pod_status_writes": "counter",
    "module_controller_module_install_commands": "counter",
    "module_controller_event_queue_full": "counter",
    "module_controller_event_queue_depth": "gauge",
    "module_controller_arklet_http_calls": "counter",
    "module_controller_http_tunnel_requests": "counter",
    "module_controller_bases_owned": "gauge",
}


def _samples(metrics: Metrics) -> list[Sample]:
    text = metrics.exposition()[0].decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` with exactly these labels, or None."""
    found = [s.value for s in _samples(metrics) if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"{name}{labels} appears {len(found)} times"
    return found[0] if found else None


def test_exposition_has_every_family_with_its_type_and_prefix() -> None:
    body, content_type = Metrics().exposition()
    assert content_type.startswith("text/plain")
    text = body.decode()
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families == EXPECTED_FAMILIES
    assert "module_controller_mqtt_messages_dropped_total" in text


def test_labelled_series_exist_at_zero_before_anything_happens() -> None:
    metrics = Metrics()
    assert _value(metrics, "module_controller_mqtt_messages_dropped_total", reason="stale") == 0
    assert _value(metrics, "module_controller_nodes", condition="not_ready") == 0
    assert _value(metrics, "module_controller_module_pods", state="failed") == 0
    assert (
        _value(metrics, "module_controller_module_install_duration_seconds_count", result="timeout")
        == 0
    )


def test_counters_count_per_label() -> None:
    metrics = Metrics()
    metrics.record_mqtt_dropped("malformed")
    metrics.record_mqtt_dropped("malformed")
    metrics.record_mqtt_dropped("bad_identity")
    metrics.record_mqtt_received("heart")
    metrics.record_mqtt_published("command")
    metrics.record_broker_reconnect()
    metrics.record_api_error("pods/status", 409)
    metrics.record_api_error("leases", None)

    dropped = "module_controller_mqtt_messages_dropped_total"
    assert _value(metrics, dropped, reason="malformed") == 2
    assert _value(metrics, dropped, reason="bad_identity") == 1
    assert _value(metrics, dropped, reason="stale") == 0
    assert _value(metrics, "module_controller_mqtt_messages_received_total", kind="heart") == 1
    assert _value(metrics, "module_controller_mqtt_messages_received_total", kind="biz") == 0
    assert _value(metrics, "module_controller_mqtt_messages_published_total", kind="command") == 1
    assert _value(metrics, "module_controller_mqtt_reconnects_total") == 1
    errors = "module_controller_kubernetes_api_errors_total"
    assert _value(metrics, errors, resource="pods/status", status="409") == 1
    assert _value(metrics, errors, resource="leases", status="connection") == 1


def test_gauges_are_set_whole_and_missing_labels_go_to_zero() -> None:
    metrics = Metrics()
    metrics.set_bases(3)
    metrics.set_nodes({"ready": 2, "not_ready": 1})
    metrics.set_module_pods({"ready": 4, "installing": 1})
    # A later count without not_ready means none is NotReady any more.
    metrics.set_nodes({"ready": 3})
    metrics.set_module_pods({"ready": 5})

    assert _value(metrics, "module_controller_bases") == 3
    assert _value(metrics, "module_controller_nodes", condition="ready") == 3
    assert _value(metrics, "module_controller_nodes", condition="not_ready") == 0
    assert _value(metrics, "module_controller_module_pods", state="ready") == 5
    assert _value(metrics, "module_controller_module_pods", state="installing") == 0


def test_install_and_uninstall_latencies_land_in_their_own_histograms() -> None:
    metrics = Metrics()
    metrics.observe_install(0.7, "success")
    metrics.observe_install(42.0, "success")
    metrics.observe_install(300.0, "timeout")
    metrics.observe_uninstall(1.5, "failure")

    install = "module_controller_module_install_duration_seconds"
    assert _value(metrics, f"{install}_count", result="success") == 2
    assert _value(metrics, f"{install}_sum", result="success") == 42.7
    assert _value(metrics, f"{install}_bucket", result="success", le="1.0") == 1
    assert _value(metrics, f"{install}_bucket", result="success", le="60.0") == 2
    assert _value(metrics, f"{install}_count", result="timeout") == 1
    uninstall = "module_controller_module_uninstall_duration_seconds"
    assert _value(metrics, f"{uninstall}_count", result="failure") == 1
    assert _value(metrics, f"{uninstall}_count", result="success") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.record_broker_reconnect()
    first.set_bases(7)
    assert _value(second, "module_controller_mqtt_reconnects_total") == 0
    assert _value(second, "module_controller_bases") == 0


def test_openmetrics_is_served_to_scrapers_that_ask_for_it() -> None:
    body, content_type = Metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert "module_controller_bases" in body.decode()


def test_the_broker_suspect_counter_counts_each_loss_of_delivery_once() -> None:
    metrics = Metrics()
    metrics.set_broker_delivering(True)
    metrics.set_broker_delivering(False)
    metrics.set_broker_delivering(False)
    assert _value(metrics, "module_controller_mqtt_broker_delivering") == 0
    assert _value(metrics, "module_controller_mqtt_broker_suspect_total") == 1
    metrics.set_broker_delivering(True)
    assert _value(metrics, "module_controller_mqtt_broker_delivering") == 1
