"""Benchmark (not a test): CPU and memory of one process running 100 and 1,000 simulated bases.

Each base has its own MQTT connection, heartbeats every 10 s and serves its Arklet HTTP API
on its own loopback IP. With ``--controller-load`` a separate process polls every base as the
Go controller does (health every 10 s, queryAllBiz every 15 s), so the figure includes
answering. The broker comes from MQTT_BROKER, MQTT_PORT, MQTT_USERNAME and MQTT_PASSWORD (it
needs room for 1,000+ connections).

    MQTT_BROKER=127.0.0.1 MQTT_PORT=1883 MQTT_USERNAME=u MQTT_PASSWORD=p \
        .venv/bin/python benchmarks/simulator_scale.py [--counts 100 1000] [--window 30] \
        [--controller-load]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sys
import time

import aiomqtt

from module_controller.protocol.arklet import ArkletCommand
from module_controller.protocol.topics import command_topic
from module_controller.simulator.cli import mqtt_from_environment
from module_controller.simulator.config import BaseConfig
from module_controller.simulator.fleet import Fleet


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def controller_load(env: str, identities: list[str]) -> None:
    """Runs in a child process: publish health every 10 s and queryAllBiz every 15 s per base."""
    settings = mqtt_from_environment()
    async with aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier="koupleless@@@bench-controller",
    ) as client:
        tick = 0
        while True:
            # Spread each round over its period, as per-node timers do.
            for index, identity in enumerate(identities):
                if tick % 10 == index % 10:
                    await client.publish(command_topic(env, identity, ArkletCommand.HEALTH), b"{}")
                if tick % 15 == index % 15:
                    topic = command_topic(env, identity, ArkletCommand.QUERY_ALL_BIZ)
                    await client.publish(topic, b"{}")
            tick += 1
            await asyncio.sleep(1)


async def start_load(identities: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load-worker", json.dumps(identities)
    )


async def measure(count: int, window_s: float, http_api: bool, first_ip: str, load: bool) -> None:
    template = BaseConfig(
        name="base", version="1.1.1", env="bench", mqtt=mqtt_from_environment(), http_api=http_api
    )
    fleet = Fleet(template, first_ip=first_ip)
    rss_before = rss_mib()
    started = time.monotonic()
    try:
        await fleet.start(count)
        await fleet.wait_connected(timeout=120)
        ready_s = time.monotonic() - started
        worker = await start_load([b.identity for b in fleet.bases]) if load else None
        await asyncio.sleep(2)  # let the start-up burst settle
        cpu_start, wall_start = cpu_seconds(), time.monotonic()
        await asyncio.sleep(window_s)
        cpu_used = cpu_seconds() - cpu_start
        wall = time.monotonic() - wall_start
        rss = rss_mib()
        if worker is not None:
            worker.terminate()
            await worker.wait()
        answered = sum(len(base.commands) for base in fleet.bases)
        print(
            f"{count:>5} bases (http_api={http_api}, controller_load={load}, "
            f"{answered} commands answered): all connected in {ready_s:5.1f}s; "
            f"steady CPU {100 * cpu_used / wall:5.1f}% of one core over {wall:.0f}s; "
            f"RSS {rss:6.1f} MiB (+{rss - rss_before:6.1f} MiB, "
            f"{1024 * (rss - rss_before) / count:5.0f} KiB/base)",
            flush=True,
        )
    finally:
        await fleet.stop()


async def main(counts: list[int], window_s: float, http_api: bool, load: bool) -> None:
    for index, count in enumerate(counts):
        # A separate address block per round, so sockets in TIME_WAIT never collide.
        await measure(count, window_s, http_api, f"127.{100 + index}.0.1", load)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--window", type=float, default=30.0, help="measurement window (s)")
    parser.add_argument("--no-http", action="store_true", help="bases without the HTTP API")
    parser.add_argument("--controller-load", action="store_true", help="poll like the Go MC")
    parser.add_argument("--load-worker", help=argparse.SUPPRESS)  # internal: the child process
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if options.load_worker:
        asyncio.run(controller_load("bench", json.loads(options.load_worker)))
    else:
        asyncio.run(
            main(options.counts, options.window, not options.no_http, options.controller_load)
        )
