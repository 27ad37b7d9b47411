"""Health data (spec §1.6): the ``health`` command's reply, over HTTP and MQTT.

JVM and CPU keys contain spaces and parentheses, exactly as arklet writes them. Integer
fields are ``int`` so they are written without a decimal point: the Go controller fails to
decode the whole message if ``"loaded class count"`` or the metaspace sizes are floats.
"""

from __future__ import annotations

from module_controller.protocol.codec import WireModel, wire_key
from module_controller.protocol.states import OptionalStyledBizState


class JvmInfo(WireModel):
    java_version: str | None = wire_key("java version")
    java_home: str | None = wire_key("java home")
    total_memory_m: float | None = wire_key("total memory(M)")
    max_memory_m: float | None = wire_key("max memory(M)")
    free_memory_m: float | None = wire_key("free memory(M)")
    init_heap_memory_m: float | None = wire_key("init heap memory(M)")
    used_heap_memory_m: float | None = wire_key("used heap memory(M)")
    committed_heap_memory_m: float | None = wire_key("committed heap memory(M)")
    max_heap_memory_m: float | None = wire_key("max heap memory(M)")
    init_non_heap_memory_m: float | None = wire_key("init non heap memory(M)")
    used_non_heap_memory_m: float | None = wire_key("used non heap memory(M)")
    committed_non_heap_memory_m: float | None = wire_key("committed non heap memory(M)")
    max_non_heap_memory_m: float | None = wire_key("max non heap memory(M)")
    loaded_class_count: int | None = wire_key("loaded class count")
    unload_class_count: int | None = wire_key("unload class count")
    total_class_count: int | None = wire_key("total class count")
    run_time_s: float | None = wire_key("run time(s)")
    # Bytes; -1 when unbounded or unknown (the controller then skips capacity).
    java_used_metaspace: int | None = wire_key("java used metaspace")
    java_committed_metaspace: int | None = wire_key("java committed metaspace")
    java_max_metaspace: int | None = wire_key("java max metaspace")


class CpuInfo(WireModel):
    count: int | None = None
    type: str | None = None
    total_used: float | None = wire_key("total used (%)")
    user_used: float | None = wire_key("user used (%)")
    system_used: float | None = wire_key("system used (%)")
    free: float | None = wire_key("free (%)")


class HealthBizInfo(WireModel):
    """``masterBizInfo`` and ``bizListInfo`` entries."""

    biz_name: str
    biz_version: str
    biz_state: OptionalStyledBizState = None
    web_context_path: str | None = None


class PluginInfo(WireModel):
    plugin_name: str
    plugin_version: str | None = None
    group_id: str | None = None
    artifact_id: str | None = None
    plugin_activator: str | None = None
    plugin_url: str | None = None


class HealthData(WireModel):
    """What a ``{}`` health request returns; typed requests return a subset."""

    jvm: JvmInfo | None = None
    cpu: CpuInfo | None = None
    master_biz_info: HealthBizInfo | None = None
    biz_list_info: list[HealthBizInfo] | None = None
    plugin_list_info: list[PluginInfo] | None = None


class Health(WireModel):
    """``data`` of the health reply: ``{"healthData": {...}}``."""

    health_data: HealthData


class HealthRequest(WireModel):
    """The health command body: ``{}`` or a typed query."""

    type: str | None = None
    biz_name: str | None = None
    biz_version: str | None = None
    metrics: list[str] | None = None
