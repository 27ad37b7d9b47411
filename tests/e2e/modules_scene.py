"""The module tests' scene: one test's operator, bases and namespace, with a diagnosis for
every wait (tests/e2e/test_modules.py, tests/e2e/test_module_recovery.py). The `scene`
fixture (conftest.py) starts it."""

from __future__ import annotations

import time
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.simulator.base import SimulatedBase
from module_controller.testbed.kube_reads import is_ready, is_ready_and_untainted
from module_controller.testbed.operator_process import OperatorProcess
from tests.e2e.modules_support import modules_of, wait_inventory_polls, wait_pods
from tests.waiting import wait_for

# The scene's operator: modules nobody asks for are removed 5 s after being seen; each base
# is asked what it runs every 3 s.
ORPHAN_GRACE_SECONDS = 5
INVENTORY_POLL_SECONDS = 3


class Scene:
    """One test's operator, bases and namespace, with diagnoses for every wait."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        operator: OperatorProcess,
        bases: list[SimulatedBase],
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.operator = operator
        self.bases = bases

    def node_of(self, base: SimulatedBase) -> str:
        return f"virtual-node-{base.identity}"

    def base_on(self, node: str | None) -> SimulatedBase:
        return next(b for b in self.bases if self.node_of(b) == node)

    async def describe(self) -> str:
        lines = [f"base {self.node_of(b)} {b.config.ip}: {modules_of(b)}" for b in self.bases]
        lines.append(self.operator.tail(40))
        return "\n".join(lines)

    async def nodes_ready(self) -> None:
        async def ready() -> bool:
            for base in self.bases:
                try:
                    node = await self.core.read_node(self.node_of(base))
                except ApiException:
                    return False
                if not is_ready_and_untainted(node):
                    return False
            return True

        await wait_for(ready, timeout=40, what="every base's node Ready", diagnose=self.describe)

    async def pods(
        self, selector: str, check: Any, what: str, timeout: float = 60
    ) -> list[client.V1Pod]:
        return await wait_pods(
            self.core, self.namespace, selector, check, what, timeout, self.describe
        )

    async def polled(self, *, after: float, polls: int) -> None:
        """Every base was asked for its modules `polls` times since `after` (time.time(),
        possibly still to come)."""
        # Until `after`, then the polls, with room for a slow machine.
        timeout = max(0.0, after - time.time()) + polls * INVENTORY_POLL_SECONDS + 15
        await wait_inventory_polls(
            self.bases, after=after, polls=polls, timeout=timeout, diagnose=self.describe
        )

    async def modules_everywhere(self, expected: dict[str, dict[str, str]]) -> None:
        """Wait until each named base holds exactly the expected modules."""

        async def matches() -> bool:
            return all(
                modules_of(base) == expected.get(self.node_of(base), {}) for base in self.bases
            )

        await wait_for(matches, timeout=40, what=f"modules {expected}", diagnose=self.describe)


def all_ready(count: int) -> Any:
    def check(pods: list[client.V1Pod]) -> bool:
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return len(pods) == count and all(is_ready(p) for p in live)

    return check
