"""Plausible JVM/CPU numbers for a simulated base's health reply (spec §1.6)."""

from __future__ import annotations

import time

from module_controller.protocol.health import CpuInfo, JvmInfo, PluginInfo

_MIB = 1024 * 1024
MAX_METASPACE_BYTES = 512 * _MIB  # finite, so the controller can compute capacity


def jvm_info(started_monotonic: float, module_count: int) -> JvmInfo:
    # Metaspace grows with installed modules, as class loading does on a real base.
    used_metaspace = (90 + 10 * module_count) * _MIB
    return JvmInfo(
        java_version="1.8.0_392",
        java_home="/usr/lib/jvm/java-8-openjdk/jre",
        total_memory_m=1024.0,
        max_memory_m=3641.0,
        free_memory_m=512.0,
        init_heap_memory_m=256.0,
        used_heap_memory_m=211.4,
        committed_heap_memory_m=1024.0,
        max_heap_memory_m=3641.0,
        init_non_heap_memory_m=2.4375,
        used_non_heap_memory_m=120.5,
        committed_non_heap_memory_m=130.0,
        max_non_heap_memory_m=-1.0,
        loaded_class_count=15_234 + 800 * module_count,
        unload_class_count=0,
        total_class_count=15_234 + 800 * module_count,
        run_time_s=round(time.monotonic() - started_monotonic, 3),
        java_used_metaspace=used_metaspace,
        java_committed_metaspace=used_metaspace + 2 * _MIB,
        java_max_metaspace=MAX_METASPACE_BYTES,
    )


def cpu_info() -> CpuInfo:
    return CpuInfo(
        count=2,
        type="Simulated CPU",
        total_used=1234.0,
        user_used=3.2,
        system_used=1.1,
        free=95.7,
    )


def plugins() -> list[PluginInfo]:
    return [
        PluginInfo(
            plugin_name="koupleless-base-plugin",
            plugin_version="1.4.2",
            group_id="com.alipay.sofa.koupleless",
            artifact_id="koupleless-base-plugin",
            plugin_activator="com.alipay.sofa.koupleless.plugin.ServerlessRuntimeActivator",
            plugin_url="file:/simulated/koupleless-base-plugin-1.4.2.jar",
        )
    ]
