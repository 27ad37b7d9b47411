"""Unit tests are quick and clean up after themselves: a short timeout each, and a test
that leaves an asyncio task running fails (the loop is shared by the whole session, so a
leaked task would run on into other tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from module_controller.tunnels.events import BrokerConnected
from tests.local_server import serving
from tests.unit.kube_watch_support import FakeApi
from tests.unit.shards_support import FakeLeases, ShardedWired
from tests.unit.wiring_support import Wired

UNIT_TEST_TIMEOUT_SECONDS = 10  # the slowest takes under 2 s; room for a loaded CI machine
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TEST_TIMEOUT_SECONDS))


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    for _ in range(5):  # let tasks that were told to stop finish stopping
        await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [
        task for task in asyncio.all_tasks() - before if task is not current and not task.done()
    ]
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    if leaked:
        names = ", ".join(sorted(task.get_name() for task in leaked))
        pytest.fail(f"the test left {len(leaked)} task(s) running: {names}")


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    """The runtime's wiring with fakes at the seams, started, the broker connected."""
    async with client.ApiClient() as api:
        made = Wired(api, deployments=[])
        made.start()
        await made.say(BrokerConnected())
        try:
            yield made
        finally:
            await made.stop()


# The shards tests' fake Leases and one replica's wiring on them (tests/unit/shards_support.py).
@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient() as made:
        yield made


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
async def sharded(api: client.ApiClient, leases: FakeLeases) -> AsyncIterator[ShardedWired]:
    made = ShardedWired(api, leases)
    made.wired.start()
    await made.wired.say(BrokerConnected())
    try:
        yield made
    finally:
        await made.wired.stop()


# The ListWatch tests' stand-in API server, and a client of it (tests/unit/kube_watch_support.py).
@pytest.fixture
async def watch_server() -> AsyncIterator[tuple[FakeApi, client.ApiClient]]:
    fake = FakeApi()
    async with serving(fake.app()) as url:
        api = client.ApiClient(client.Configuration(host=url))
        try:
            yield fake, api
        finally:
            fake.close()
            await api.close()
