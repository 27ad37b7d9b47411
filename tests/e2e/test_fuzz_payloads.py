"""Hostile heartbeats and replies on the real broker: the operator stays up and writes only
valid objects.

Hypothesis generates the messages (heartbeats of the right shape with hostile values, health
and other replies, payloads that are not even JSON) and the test publishes them to a running
operator. The same messages go through the operator's own decoder and registry in the test
process, which says which nodes must exist afterwards; the cluster must converge to exactly
those, every one valid, with no API error in the operator's log, and a real base that comes
online afterwards still gets its Ready node.

Set FUZZ_SEED to replay a failed run; the messages of every run are kept in the test's
tmp_path as fuzz-messages.jsonl.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kubernetes_asyncio import client

from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.testbed.kube_reads import is_ready_and_untainted
from module_controller.testbed.mosquitto import BrokerInfo
from module_controller.testbed.operator_process import OperatorProcess
from module_controller.tunnels.decoder import MessageDecoder
from module_controller.tunnels.events import BaseHealthReport, BaseHeartbeat
from module_controller.tunnels.mqtt import SUBSCRIBED_KINDS
from tests.e2e.conftest import BaseFactory, OperatorFactory
from tests.e2e.test_node_scale import describe_node
from tests.e2e.test_nodes import Cluster, node_name
from tests.fuzzing import (
    broken_payloads,
    health_documents,
    heartbeat_documents,
    identities,
    is_dns_subdomain,
    is_ip,
    is_label_value,
    json_values,
    stamped,
    to_bytes,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("env_nodes_cleanup")

EXAMPLES = 150

# What the operator logs when the API server refuses a write, or when something breaks. A
# 409 Conflict on a node (a metadata patch raced the lifecycle controller) is retried by
# design and is no invalid object; but not more than twice.
TROUBLE = re.compile(
    r"Traceback \(most recent call last\)|--- Logging error ---|Unprocessable Entity"
    r"|Invalid value|\(422\)|task failed|Periodic task \S+ failed"
    r"|Renewing the lease of node \S+ failed"
    r"|node sync of \S+ failed \(attempt \d+\), retrying in \S+: (?!\(409\))"
    r"|node sync of \S+ failed \(attempt ([3-9]|\d\d+)\)"
)

Document = dict[str, Any]
# (identity, kind, document or raw bytes); documents get their timestamp when published.
Message = tuple[str, str, Document | bytes]


def publishable(identity: str) -> bool:
    """Whether a broker lets a client publish on a topic with this identity in it.

    Wildcards, NUL, control characters, lone surrogates and noncharacters get the publisher
    disconnected (MQTT 3.1.1 §1.5.3, as Mosquitto enforces it): no base can send them.
    """
    return not any(
        char in "/+#"
        or ord(char) < 0x20
        or 0x7F <= ord(char) <= 0x9F
        or 0xD800 <= ord(char) <= 0xDFFF
        or 0xFDD0 <= ord(char) <= 0xFDEF
        or (ord(char) & 0xFFFE) == 0xFFFE
        for char in identity
    )


def generate(count: int, fuzz_seed: int) -> list[Message]:
    """`count` examples of hostile traffic, each a heartbeat and a reply of one base."""
    examples: list[list[Message]] = []
    reply_kinds = [kind for kind in SUBSCRIBED_KINDS if kind != "heart"]

    @seed(fuzz_seed)
    @hypothesis_settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        identity=identities.filter(publishable), kind=st.sampled_from(reply_kinds), data=st.data()
    )
    def collect(identity: str, kind: str, data: st.DataObject) -> None:
        heartbeat = data.draw(heartbeat_documents(identity))
        messages: list[Message] = [(identity, "heart", heartbeat)]
        if kind == "health":
            reply: Document | bytes = data.draw(health_documents())
        else:
            reply = {"publishTimestamp": None, "data": data.draw(json_values)}
        messages.append((identity, kind, reply))
        if data.draw(st.integers(0, 3)) == 1:
            valid = to_bytes(stamped(heartbeat))
            broken_kind = data.draw(st.sampled_from(SUBSCRIBED_KINDS))
            messages.append((identity, broken_kind, data.draw(broken_payloads(valid))))
        examples.append(messages)

    collect()
    # Heartbeats first, so that replies find their bases.
    return [m for e in examples for m in e if m[1] == "heart"] + [
        m for e in examples for m in e if m[1] != "heart"
    ]


def payload(body: Document | bytes) -> bytes:
    return body if isinstance(body, bytes) else to_bytes(stamped(body))


def save(messages: list[Message], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for identity, kind, body in messages:
            shown = body.decode("latin-1") if isinstance(body, bytes) else body
            out.write(json.dumps([identity, kind, shown]) + "\n")


def node_problems(node: client.V1Node) -> list[str]:
    name = node.metadata.name
    problems = [] if is_dns_subdomain(name) else [f"{name!r} is not a DNS-1123 subdomain"]
    for key, value in (node.metadata.labels or {}).items():
        if not is_label_value(value):
            problems.append(f"{name}: label {key}={value!r} is not a valid label value")
    addresses = {a.type: a.address for a in node.status.addresses or []}
    if not is_ip(addresses.get("InternalIP", "")):
        problems.append(f"{name}: InternalIP {addresses.get('InternalIP')!r} is not an IP")
    if not is_dns_subdomain(addresses.get("Hostname", "")):
        problems.append(f"{name}: Hostname {addresses.get('Hostname')!r} is not a DNS name")
    return problems


async def first_commands(
    attacker: aiomqtt.Client, registry: BaseRegistry, operator: OperatorProcess, replay: str
) -> set[str]:
    """Wait for a command from the operator to every base the registry took."""
    awaited = set(registry.bases)
    commanded: set[str] = set()
    if not awaited:
        return {"(none)"}
    try:
        async with asyncio.timeout(45):
            async for message in attacker.messages:
                commanded.add(str(message.topic).split("/")[1])
                if awaited <= commanded:
                    return commanded
    except TimeoutError:
        pass
    missing = sorted(awaited - commanded)
    raise AssertionError(
        f"no command to {len(missing)} of {len(awaited)} bases in 45s, e.g. {missing[:5]} "
        f"{replay}\n{operator.tail()}"
    )


async def test_hostile_payloads_leave_the_operator_up_and_every_node_valid(
    k8s_api: client.ApiClient,
    run_operator: OperatorFactory,
    start_base: BaseFactory,
    mqtt_broker: BrokerInfo,
    test_env: str,
    tmp_path: Path,
) -> None:
    # Fuzzed bases never beat again: their nodes must outlive the test's look at them.
    operator = run_operator(BASE_NOT_READY_SECONDS="120", BASE_DEAD_SECONDS="240")
    cluster = Cluster(k8s_api, operator)
    before = await start_base(name="before")
    await cluster.wait_ready(node_name(before))  # the operator is listening

    fuzz_seed = int(os.environ.get("FUZZ_SEED") or random.getrandbits(32))
    replay = f"(replay with FUZZ_SEED={fuzz_seed}; messages in {tmp_path}/fuzz-messages.jsonl)"
    messages = [m for m in generate(EXAMPLES, fuzz_seed) if m[0] != before.identity]
    save(messages, tmp_path / "fuzz-messages.jsonl")

    # The operator's own decoder and registry, in this process, on the same messages.
    settings = Settings(env=test_env, max_bases=5000)
    decoder = MessageDecoder(settings)
    registry = BaseRegistry(settings)
    registry.broker_up()
    root = f"koupleless_{test_env}"
    commanded: set[str] = set()
    began = time.monotonic()
    async with aiomqtt.Client(
        mqtt_broker.host,
        mqtt_broker.port,
        username=mqtt_broker.username,
        password=mqtt_broker.password,
        timeout=30,
    ) as attacker:
        # The operator subscribes to a base's replies only before it first commands the
        # base: the replies go out once it has (its commands are seen here).
        await attacker.subscribe(f"{root}/+/+", qos=0)
        for identity, kind, body in messages:
            if kind != "heart" and not commanded:
                commanded = await first_commands(attacker, registry, operator, replay)
            topic = f"{root}/{identity}/base/{kind}"
            raw = payload(body)
            await attacker.publish(topic, raw, qos=1)
            event = decoder.decode(topic, raw)
            if isinstance(event, BaseHeartbeat):
                registry.heartbeat(event.identity, event.status)
            elif isinstance(event, BaseHealthReport):
                registry.health(event.identity, event.health)
    published_s = time.monotonic() - began
    fuzzed = {record.node_name for record in registry.live_bases()}

    # A real base after the storm is served as ever.
    after = await start_base(name="after")
    expected = fuzzed | {node_name(before), node_name(after)}
    selector = f"virtual-kubelet.koupleless.io/env={test_env}"

    async def nodes() -> dict[str, client.V1Node]:
        listed = await cluster.core.list_node(label_selector=selector)
        return {node.metadata.name: node for node in listed.items}

    async def converged() -> dict[str, client.V1Node] | None:
        seen = await nodes()
        ready = {name for name, node in seen.items() if is_ready_and_untainted(node)}
        return seen if set(seen) == expected and ready == expected else None

    async def diagnose() -> str:
        seen = await nodes()
        return "\n".join(
            [
                f"{len(messages)} messages published in {published_s:.1f}s {replay}",
                f"absent: {sorted(expected - set(seen))}",
                f"unexpected: {sorted(set(seen) - expected)}",
                *(describe_node(n) for n in seen.values() if not is_ready_and_untainted(n)),
                f"operator alive={operator.alive}",
                operator.tail(),
            ]
        )

    seen = await wait_for(
        converged,
        timeout=45,
        what=f"exactly the {len(expected)} expected nodes, all Ready",
        diagnose=diagnose,
        interval=1,
    )

    assert operator.alive, f"{replay}\n{operator.tail()}"
    problems = [problem for node in seen.values() for problem in node_problems(node)]
    assert problems == [], replay
    trouble = [
        line[:300]
        for line in operator.log.read_text(errors="replace").splitlines()
        if TROUBLE.search(line)
    ]
    assert trouble == [], f"{replay}\n" + "\n".join(trouble[:20])
    dropped = sum(decoder.dropped.values())
    assert dropped > 0 and fuzzed, f"the fuzz did not reach both paths {replay}"
    await cluster.wait_ready(node_name(before))
