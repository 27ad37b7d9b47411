"""The running operator: builds the parts, wires the data paths, starts and stops the tasks.

Two data paths, one direction each (README, "Architecture"):

    MQTT tunnel ──┐                                  ┌─> NodeSyncer ─> Nodes, Leases
    watches ──────┼─> Inbox ─> Dispatcher ─> registry ┤
    the clock ────┘            (one match)  + module ─┼─> ModuleSync (per base) ─> planner
                                              state   │     ─> commands (tunnel), status patches
                                                      └─> BaselineAnswers ─> tunnel

Nothing downstream holds a reference back to what feeds it. The tasks are operator-level
asyncio tasks, never per-object Kopf timers or daemons, so nothing is written onto objects
the operator does not own. A task that dies is fatal: /healthz fails and, when a stop flag
is given (`module-controller run`), Kopf stops and the process exits 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, cast

from kubernetes_asyncio import client

from module_controller.dispatcher import Dispatcher
from module_controller.inbox import Inbox, ModulePodChanged, NodeDeleted, OwnershipChanged, Tick
from module_controller.k8s_events import EventRecorder
from module_controller.kube_watch import ListWatch
from module_controller.kubelet_proxy.address import resolve_proxy_address
from module_controller.kubelet_proxy.server import KubeletProxy
from module_controller.modules.baseline import BaselineAnswers, deployment_lister
from module_controller.modules.peer import PeerReplicas, deployment_patcher, node_lister
from module_controller.modules.state import ModuleState
from module_controller.modules.sync import ModuleSync, RecordedPodEvents
from module_controller.observability.metrics import Metrics, MqttDropReason
from module_controller.observability.server import HealthChecks
from module_controller.registry import BaseRegistry
from module_controller.settings import Settings
from module_controller.shards.membership import Membership
from module_controller.shards.ownership import Ownership, node_lease_selector
from module_controller.tasks import cancel_and_wait, run_every
from module_controller.tunnels.arklet_http import ArkletHttpClient
from module_controller.tunnels.events import TunnelUnavailable
from module_controller.tunnels.http_server import HttpTunnelServer
from module_controller.tunnels.mqtt import MqttTunnel
from module_controller.tunnels.mqtt_answers import AnswersRefused
from module_controller.tunnels.router import TunnelRouter
from module_controller.vnode_manifest import LEASE_NAMESPACE, memory_of, node_selector
from module_controller.vnodes import NodeSyncer

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


def health_check_names(settings: Settings) -> list[str]:
    """/readyz lists the API server and each tunnel that is on."""
    names = ["kubernetes"]
    if settings.enable_mqtt_tunnel:
        names.append("mqtt")
    if settings.enable_http_tunnel:
        names.append("http")
    return names


class Runtime:
    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        metrics: Metrics | None = None,
        health: HealthChecks | None = None,
        stop_flag: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics or Metrics()
        self.health = health or HealthChecks(health_check_names(settings))
        self._stop_flag = stop_flag
        self.inbox = Inbox(settings.event_queue_size, self.metrics)
        self.registry = BaseRegistry(settings)
        self.module_state = ModuleState()
        # Bases sharded over the live replicas: each writes and sends only for its own.
        self.membership = Membership(settings, api)
        inbox = self.inbox  # the callback below feeds it, not the runtime
        self.ownership = Ownership(
            settings,
            self.membership,
            api,
            changed=lambda names: inbox.put(OwnershipChanged(tuple(names))),
            settle=self._settle,
        )
        # Who holds each node Lease: a plain JSON watch, not Kopf's (kube_watch.py says why).
        self.node_leases = ListWatch(
            api,
            client.CoordinationV1Api(api).list_namespaced_lease,
            LEASE_NAMESPACE,
            label_selector=node_lease_selector(settings.env),
            seen=self.ownership.lease_seen,
            gone=self.ownership.lease_gone,
            what="node Leases",
        )
        # Module pods, the same way: into the inbox, and to whoever listens (the rollouts).
        self.pod_listeners: list[Callable[[Mapping[str, Any]], None]] = []
        self.module_pods = ListWatch(
            api,
            client.CoreV1Api(api).list_pod_for_all_namespaces,
            label_selector=settings.module_selector,
            seen=lambda body: self._module_pod("MODIFIED", body),
            gone=lambda body: self._module_pod("DELETED", body),
            what="module pods",
        )
        # Our virtual nodes: one deleted by hand is put back, and peer Deployments follow
        # their readiness. Every replica hears every node's status writes, hence plain JSON.
        self.vnode_watch = ListWatch(
            api,
            client.CoreV1Api(api).list_node,
            label_selector=node_selector(settings),
            seen=self._vnode_seen,
            gone=self._vnode_gone,
            what="virtual nodes",
        )
        self.nodes = NodeSyncer(settings, self.registry, api, owner=self.ownership)
        metrics = self.metrics  # the callbacks below count into it, not into the runtime
        self.nodes.api_errors = lambda status: metrics.record_api_error("nodes", status)
        self.mqtt: MqttTunnel | None = None
        if settings.enable_mqtt_tunnel:
            self.mqtt = MqttTunnel(
                settings,
                self.inbox.put,
                on_drop=lambda reason: metrics.record_mqtt_dropped(cast(MqttDropReason, reason)),
                on_reconnect=metrics.record_broker_reconnect,
                on_published=lambda command: metrics.record_mqtt_published(
                    "baseline" if command == "baseline" else "command"
                ),
                not_ours=self._owned_by_another,
            )
        self.arklet_http: ArkletHttpClient | None = None
        self.tunnel = TunnelRouter(self.registry, self.mqtt, None)
        if settings.enable_http_tunnel:
            self.arklet_http = ArkletHttpClient(
                settings,
                self.inbox.put,
                self.tunnel.address_of,
                on_call=metrics.record_arklet_http_call,
            )
            self.tunnel = TunnelRouter(self.registry, self.mqtt, self.arklet_http)
        self.events = EventRecorder(api, instance=settings.client_id, metrics=self.metrics)
        self.module_sync = ModuleSync(
            settings,
            self.registry,
            self.module_state,
            self.tunnel,
            api,
            self.metrics,
            RecordedPodEvents(self.events),
            owner=self.ownership,
        )
        self.baseline = BaselineAnswers(settings, deployment_lister(api), self.tunnel.send_baseline)
        # Peer Deployments follow the Ready bases of their cluster (fed by handlers/peer.py).
        self.peers: PeerReplicas | None = None
        if settings.enable_module_replicas_sync_with_base:
            self.peers = PeerReplicas(
                debounce_seconds=settings.peer_replicas_debounce_seconds,
                patch=deployment_patcher(api),
                list_nodes=node_lister(api, node_selector(settings)),
                record=self.events.record,
                api_errors=lambda status: metrics.record_api_error("deployments", status),
            )
        self.http_server: HttpTunnelServer | None = None
        if settings.enable_http_tunnel:
            self.http_server = HttpTunnelServer(
                settings,
                self.inbox.put,
                self.baseline.modules_for,
                on_request=metrics.record_http_tunnel_request,
            )
        self.dispatcher = Dispatcher(
            settings,
            self.registry,
            self.module_state,
            self.nodes,
            self.module_sync,
            self.baseline,
            self.events,
            self.health,
            self.metrics,
            owner=self.ownership,
        )
        # kubectl logs for module pods: a kubelet log API serving the base pod's log.
        self.kubelet_proxy: KubeletProxy | None = None
        if settings.kubelet_proxy_enabled:
            self.kubelet_proxy = KubeletProxy(
                api,
                settings.env,
                settings.kubelet_proxy_port,
                tls_crt=settings.kubelet_proxy_tls_crt_path,
                tls_key=settings.kubelet_proxy_tls_key_path,
                client_ca=settings.kubelet_proxy_client_ca_path,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._http_crowded = False

    async def start(self) -> None:
        if self.kubelet_proxy is not None:
            # Resolved before any node is written: every node advertises this address, which
            # the node syncer reads from the settings it shares (KUBELET_PROXY_ADDRESS, else
            # the labelled Service's ClusterIP; a missing or ambiguous Service fails the start).
            address = await resolve_proxy_address(self.api, self.settings)
            self.settings.kubelet_proxy_address = address
            await self.kubelet_proxy.start()  # first: a port in use fails the start at once
        await self.nodes.adopt_existing()
        # A member, and the node Leases read, before anything is done.
        await self._membership()
        await self._ownership()
        self.health.set("kubernetes", True, "listed this operator's nodes")
        self.nodes.start()
        self.events.start()
        await self._list_module_pods()
        self.module_sync.start()
        self._spawn(self.dispatcher.run(self.inbox), "dispatcher")
        self._spawn(self.node_leases.run(), "node-leases")
        self._spawn(self.module_pods.run(), "module-pods")
        self._spawn(self.vnode_watch.run(), "virtual-nodes")
        if self.mqtt is not None:
            self._spawn(self.mqtt.run(), "mqtt-tunnel")
        if self.peers is not None:
            self._spawn(self.peers.run(), "peer-replicas")
        if self.arklet_http is not None:
            await self.arklet_http.start()
        if self.http_server is not None:
            await self.http_server.start()
            self.health.set("http", True, f"listening on port {self.http_server.port}")
        self._spawn(run_every(TICK_SECONDS, self._tick), "liveness")
        # Membership renewals in a task of their own: a long round of claims must not delay
        # them past the renew deadline (the replica would fence itself).
        retry = self.settings.replica_retry_seconds
        self._spawn(run_every(retry, self._membership), "membership")
        self._spawn(run_every(retry, self._ownership), "ownership")
        self._spawn(
            run_every(self.settings.inventory_poll_seconds, self._poll_inventories),
            "inventories",
        )
        self._spawn(run_every(self.settings.lease_renew_seconds, self.nodes.renew_leases), "leases")
        self._spawn(run_every(self.settings.health_poll_seconds, self._poll_health), "health")

    async def stop(self) -> None:
        """Stop the feeds first, then what they feed, so nothing is left half-done."""
        if self.kubelet_proxy is not None:
            await self.kubelet_proxy.stop()  # log readers are a feed too: no new ones
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self.http_server is not None:
            await self.http_server.stop()
        await self.dispatcher.stop()
        await self.baseline.stop()
        await self.module_sync.stop()
        if self.arklet_http is not None:
            await self.arklet_http.stop()  # after the module sync: it sends the calls
        await self.nodes.stop()
        try:
            # Hand the bases on at once: the next owner claims them without waiting for
            # this replica's Leases to run out.
            await self.ownership.release_all()
            await self.membership.leave()
        except Exception as error:  # the others take over when the Leases run out
            log.warning("Could not give this replica's Leases up: %s", error)
        await self.events.stop()

    async def _module_pod(self, type: str, body: Mapping[str, Any]) -> None:
        await self.inbox.put(ModulePodChanged(type, dict(body)))
        for listener in self.pod_listeners:
            listener(body)

    async def _vnode_seen(self, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        if self.ownership.held_by_another(name):
            self.registry.memory_shown(name, memory_of(body, self.settings))
        if self.peers is not None:
            self.peers.node_seen(name, body)

    async def _vnode_gone(self, body: Mapping[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        await self.inbox.put(NodeDeleted(name))
        if self.peers is not None:
            self.peers.node_gone(name)

    async def _list_module_pods(self) -> None:
        """Know every module pod before judging any module an orphan: the pod watch's first
        list, put straight into the module state (the dispatcher is not running yet)."""
        now = self.module_sync.clock()

        async def adopt(pod: Mapping[str, Any]) -> None:
            self.module_state.upsert_pod(dict(pod), now)

        listed = await self.module_pods.list_first(adopt)
        self.module_state.listed = True
        log.info("Listed %d module pod(s).", listed)

    # --- supervision ------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(self._supervised(work, name), name=name))

    async def _supervised(self, work: Awaitable[None], name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            # A background task must never die silently, nor leave a half-alive operator:
            # /healthz fails (the liveness probe restarts the pod) and, under
            # `module-controller run`, Kopf stops and the process exits 1.
            log.critical("The %s task failed; the operator stops.", name, exc_info=True)
            check = "mqtt" if name == "mqtt-tunnel" else "kubernetes"
            self.health.operator_failed(check, f"the {name} task failed: {error!r}")
            if self._stop_flag is not None:
                self._stop_flag.set()
            raise

    # --- the periodic work ------------------------------------------------------------------

    async def _tick(self) -> None:
        """The liveness clock is an event like the others, judged by the dispatcher."""
        self.metrics.set_event_queue_depth(len(self.inbox))
        self.metrics.set_bases_owned(len(self.ownership.held()))
        if self.mqtt is None:
            await self.inbox.put(Tick(None, False, self.registry.clock()))  # no broker
        else:
            mqtt = self.mqtt
            await self.inbox.put(
                Tick(
                    mqtt.delivery_silence(),
                    mqtt.probe_returned,
                    self.registry.clock(),
                    mqtt.intake_lag(),
                )
            )

    async def _membership(self) -> None:
        await self.membership.round()
        if self.http_server is None:
            return
        # A base's HTTP heartbeats reach one replica, which may not own it: its owner would
        # hear it only now and then, and its node would flap. Said, not fatal.
        crowded = len(self.membership.members) > 1
        if crowded and not self._http_crowded:
            reason = (
                f"the HTTP tunnel needs one replica; {len(self.membership.members)} are live "
                f"for env {self.settings.env}"
            )
            log.error("%s: run one replica, or the bases on MQTT.", reason)
            self.health.set("http", False, reason)
        elif self._http_crowded and not crowded:
            self.health.set("http", True, f"listening on port {self.http_server.port}")
        self._http_crowded = crowded

    def _owned_by_another(self, identity: str) -> bool:
        record = self.registry.bases.get(identity)
        return record is not None and self.ownership.held_by_another(record.node_name)

    async def _settle(self, node_name: str, identity: str) -> None:
        """Wait for the base's steps in progress: a hand-over waits for them."""
        await self.module_sync.settled(identity, node_name)
        await self.nodes.queue.settled(node_name)

    async def _ownership(self) -> None:
        """Claim and hand over bases (shards/)."""
        bases = {record.node_name: record.identity for record in self.registry.live_bases()}
        await self.ownership.round(bases)

    def _owned_identities(self) -> list[str]:
        return [r.identity for r in self.registry.live_bases() if self.ownership.holds(r.node_name)]

    async def _poll_inventories(self) -> None:
        """Ask every live base for its full module list (spread a little over time)."""
        if self.mqtt is not None:  # and stop hearing the answers of bases that left
            self.mqtt.forget_answers(lambda identity: identity not in self.registry.bases)
        for number, identity in enumerate(self._owned_identities()):
            try:
                await self.tunnel.query_all_biz(identity)
            except AnswersRefused:
                continue  # this base's answers only: the others may be allowed
            except TunnelUnavailable:
                return  # asked again at the next poll
            if number % 100 == 99:
                await asyncio.sleep(0)

    async def _poll_health(self) -> None:
        for identity in self._owned_identities():
            try:
                await self.tunnel.query_health(identity)
            except AnswersRefused:
                continue
            except TunnelUnavailable:
                return
