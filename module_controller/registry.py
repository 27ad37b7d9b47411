"""The base registry: the one owner of what the operator knows about bases.

Tunnel events and clock ticks change it; it answers, for every node name, what that Node
should look like right now (or that it should not exist). It does no I/O: the node syncer
makes the cluster agree with it, so every decision here is a plain, testable function of
events and time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from module_controller import naming
from module_controller.late_intake import LateIntake, Verdict
from module_controller.lograte import RateLimitedLog
from module_controller.mass_silence import MassSilence
from module_controller.protocol import BaseStatus, HealthData
from module_controller.protocol.arklet import ARKLET_DEFAULT_PORT
from module_controller.protocol.states import BizState
from module_controller.settings import Settings
from module_controller.tunnels.events import TunnelKind

log = logging.getLogger(__name__)


@dataclass
class BaseRecord:
    """One base as last heard of. Times are monotonic seconds."""

    identity: str
    status: BaseStatus
    node_name: str
    last_seen: float
    not_ready_reason: str | None = None
    memory_capacity_bytes: int | None = None
    memory_allocatable_bytes: int | None = None
    heard_since_start: bool = True
    # The tunnel the base spoke first; it keeps it (a restarted operator reads it back).
    tunnel: TunnelKind = "mqtt"
    # HTTP bases: since when, and why, their Arklet API has not answered (None: it answers).
    arklet_failing_since: float | None = None
    arklet_error: str = ""

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def ip(self) -> str:
        """The base's IP; 127.0.0.1 (the Go controller's fallback) when it sent none or junk."""
        return naming.ip_address(self.status.local_ip) or "127.0.0.1"


def _invalid_metadata(status: BaseStatus) -> str | None:
    """Why a heartbeat's metadata is refused (too long, not Unicode), or None."""
    metadata = status.base_metadata
    for what, value in (
        ("name", metadata.name),
        ("version", metadata.version),
        ("clusterName", metadata.cluster_name),
        ("localIP", status.local_ip),
        ("localHostName", status.local_host_name),
    ):
        reason = naming.invalid_metadata_reason(value)
        if reason is not None:
            return f"its {what} is refused: {reason}"
    return None


@dataclass
class BaseRegistry:
    """Bases by identity, with the liveness rules of the user contract.

    Every mutating method returns the node names whose desired state changed, for the
    node syncer to act on. A broker outage pauses the clocks of MQTT bases only: HTTP
    bases are heard directly, so their silence always counts.
    """

    settings: Settings
    clock: Callable[[], float] = time.monotonic
    bases: dict[str, BaseRecord] = field(default_factory=dict)
    broker_connected: bool = False
    # False while the operator's own probe does not come back through the broker in time.
    broker_delivering: bool = True
    # Why each node removed since the caller last asked went (node name -> sentence).
    departures: dict[str, str] = field(default_factory=dict)
    # Paused from the start: nothing is judged before the broker is connected and delivers.
    _paused_since: float | None = field(init=False)
    # Whether the pause lost us the bases' messages (no broker), or only delayed them.
    _contact_lost: bool = True
    _by_node: dict[str, str] = field(default_factory=dict)
    _log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))
    _mass_silence: MassSilence = field(init=False)
    _late_intake: LateIntake = field(init=False)

    def __post_init__(self) -> None:
        # Without an MQTT tunnel there is no broker to wait for.
        self._paused_since = self.clock() if self.settings.enable_mqtt_tunnel else None
        self._late_intake = LateIntake.of(self.settings)
        self._mass_silence = MassSilence(
            share=self.settings.mass_silence_share,
            heartbeat_seconds=self.settings.base_heartbeat_seconds,
            max_seconds=self.settings.mass_silence_max_seconds,
        )

    @property
    def mass_silence(self) -> bool:
        """Whether a mass silence holds node deletions back now."""
        return self._mass_silence.active

    def base_of_node(self, node_name: str) -> BaseRecord | None:
        identity = self._by_node.get(node_name)
        return self.bases.get(identity) if identity is not None else None

    def live_bases(self) -> list[BaseRecord]:
        return list(self.bases.values())

    def node_name_for(self, identity: str) -> str:
        return naming.node_name(self.settings.node_name_template, identity, self.settings.env)

    # --- events ---------------------------------------------------------------------------

    def heartbeat(
        self, identity: str, status: BaseStatus, tunnel: TunnelKind = "mqtt"
    ) -> list[str]:
        """A base said it is alive (or, with a non-ACTIVATED state, that it is leaving)."""
        record = self.bases.get(identity)
        if record is not None and self._impostor(record, status, tunnel):
            return []
        if not status.is_activated:
            if record is None:
                return []
            log.info("Base %s reported %s: removing its node.", identity, status.state)
            return [self._forget(record, f"base {identity} reported {status.state}: it left")]
        bad = _invalid_metadata(status)
        if bad is not None:
            self._log.warning("bad_metadata", "Refused a heartbeat of base %s: %s.", identity, bad)
            return []
        now = self.clock()
        if record is None:
            if len(self.bases) >= self.settings.max_bases:
                self._log.warning(
                    "max_bases",
                    "Refused base %s: already %d bases, the most MAX_BASES allows.",
                    identity,
                    len(self.bases),
                )
                return []
            name = self.node_name_for(identity)
            if name in self._by_node:
                self._log.warning(
                    "name_clash",
                    "Refused base %s: its node name %s is taken by base %s.",
                    identity,
                    name,
                    self._by_node[name],
                )
                return []
            record = BaseRecord(
                identity=identity, status=status, node_name=name, last_seen=now, tunnel=tunnel
            )
            self.bases[identity] = record
            self._by_node[name] = identity
            log.info(
                "Base %s (%s %s, %s) is online as node %s.",
                identity,
                status.base_metadata.name,
                status.base_metadata.version,
                record.ip,
                name,
            )
            return [name]
        was_ready = record.ready
        changed = record.status != status or not record.heard_since_start or record.tunnel != tunnel
        record.status = status
        record.last_seen = now
        record.heard_since_start = True
        record.tunnel = tunnel
        unreachable = self._arklet_unreachable(record, now)
        if unreachable is None:
            if not was_ready:
                log.info("Base %s is heard again: node %s is Ready.", identity, record.node_name)
            record.not_ready_reason = None
        elif was_ready:
            record.not_ready_reason = unreachable
        # else: NotReady for its silent API already; the node says so, nothing to rewrite.
        changed = changed or was_ready != record.ready
        return [record.node_name] if changed else []

    def _impostor(self, record: BaseRecord, status: BaseStatus, tunnel: TunnelKind) -> bool:
        """A heartbeat that would take a known base's commands elsewhere: refused, logged.

        Commands go back on the tunnel a base spoke first (an adopted base's is on its node),
        and to an HTTP base's IP and port: a second voice claiming the same identity must not
        redirect them, say it left, or keep a dead base alive. A base that really moved is
        accepted once its old address has been silent for BASE_NOT_READY_SECONDS.
        """
        if record.tunnel != tunnel:
            self._log.warning(
                "other_tunnel",
                "Ignored a %s heartbeat of base %s: it speaks %s (the tunnel it used first).",
                tunnel.upper(),
                record.identity,
                record.tunnel.upper(),
            )
            return True
        if tunnel != "http" or not record.heard_since_start:
            return False
        moved = (status.local_ip, status.port) != (record.status.local_ip, record.status.port)
        fresh = self.clock() - record.last_seen < self.settings.base_not_ready_seconds
        if moved and fresh:
            self._log.warning(
                "moved_http_base",
                "Ignored a heartbeat of base %s from %s:%s: it beats from %s:%s (a base that "
                "moved is taken at its new address once the old one is silent for %.0fs).",
                record.identity,
                status.local_ip,
                status.port,
                record.status.local_ip,
                record.status.port,
                self.settings.base_not_ready_seconds,
            )
            return True
        return False

    def arklet_failed(self, identity: str, error: str) -> None:
        """An Arklet HTTP call to the base got no answer; the clock decides when it counts."""
        record = self.bases.get(identity)
        if record is None:
            return
        if record.arklet_failing_since is None:
            record.arklet_failing_since = self.clock()
        record.arklet_error = error

    def arklet_answered(self, identity: str) -> list[str]:
        """The base's Arklet HTTP API answered: a node NotReady for its silence is Ready."""
        record = self.bases.get(identity)
        if record is None or record.arklet_failing_since is None:
            return []
        record.arklet_failing_since = None
        record.arklet_error = ""
        if record.ready or self.clock() - record.last_seen >= self.settings.base_not_ready_seconds:
            return []
        log.info(
            "The Arklet API of base %s answers again: node %s is Ready.", identity, record.node_name
        )
        record.not_ready_reason = None
        return [record.node_name]

    def _arklet_unreachable(self, record: BaseRecord, now: float) -> str | None:
        """Why an HTTP base is NotReady although it beats: its API has not answered long."""
        since = record.arklet_failing_since
        if since is None or now - since < self.settings.base_not_ready_seconds:
            return None
        port = record.status.port or ARKLET_DEFAULT_PORT
        return (
            f"the Arklet HTTP API of base {record.identity} at {record.ip}:{port} has not "
            f"answered for {now - since:.0f}s: {record.arklet_error}"
        )

    def health(self, identity: str, health: HealthData) -> list[str]:
        """A health reply: memory for the node, and a master biz that stopped means gone."""
        record = self.bases.get(identity)
        if record is None:
            return []
        master = health.master_biz_info
        if master is not None and master.biz_state not in (None, BizState.ACTIVATED):
            log.info(
                "Base %s reports its master biz %s: removing its node.", identity, master.biz_state
            )
            return [
                self._forget(record, f"base {identity} reports its master biz {master.biz_state}")
            ]
        jvm = health.jvm
        if jvm is None or jvm.java_max_metaspace is None or jvm.java_max_metaspace < 0:
            return []
        capacity = jvm.java_max_metaspace
        committed = jvm.java_committed_metaspace
        allocatable = capacity - committed if committed is not None and committed >= 0 else capacity
        if (capacity, allocatable) == (
            record.memory_capacity_bytes,
            record.memory_allocatable_bytes,
        ):
            return []
        record.memory_capacity_bytes = capacity
        record.memory_allocatable_bytes = max(allocatable, 0)
        return [record.node_name]

    def memory_shown(self, node_name: str, memory: tuple[int, int] | None) -> None:
        """The memory another replica's node shows for its base. Only a base's owner hears
        its health: a replica taking the base over starts from these figures, so its first
        write of the node keeps them instead of flapping them to the default."""
        record = self.base_of_node(node_name)
        if record is not None:
            capacity, allocatable = memory if memory is not None else (None, None)
            record.memory_capacity_bytes = capacity
            record.memory_allocatable_bytes = allocatable

    def broker_down(self) -> None:
        """Silence now means nothing: liveness clocks stop until the broker is back."""
        self.broker_connected = False
        self._pause(contact_lost=True)

    def broker_up(self) -> None:
        """Connected again; clocks run once the broker is also proven to deliver. The new
        connection's probes tell afresh how late messages come."""
        self.broker_connected = True
        self._late_intake.reset()
        self._resume_if_trusted()

    def broker_suspect(self) -> None:
        """Connected, but our own probe stopped coming back: the broker may be frozen."""
        self.broker_delivering = False
        self._pause(contact_lost=True)

    def broker_delivers(self) -> None:
        self.broker_delivering = True
        self._resume_if_trusted()

    def intake_lag(self, lag: float, at: float) -> Verdict | None:
        """How late messages reach us now (late_intake.py): while late, silence may be
        ours, so liveness clocks stop. Says what changed, if anything."""
        verdict = self._late_intake.judge(lag, at)
        if verdict is Verdict.PAUSE:
            self._pause(contact_lost=False)
        elif verdict is not None:
            self._resume_if_trusted()
        return verdict

    @property
    def intake_current(self) -> bool:
        """False while messages reach the operator late (its probe comes back late)."""
        return self._late_intake.behind_since is None

    @property
    def liveness_paused(self) -> bool:
        return self._paused_since is not None

    def _pause(self, *, contact_lost: bool) -> None:
        self._contact_lost = self._contact_lost or contact_lost
        if self._paused_since is None:
            self._paused_since = self.clock()

    def _resume_if_trusted(self) -> None:
        """Every Ready base gets a fresh grace period after a broker outage: we could not
        hear it while away. After a late intake the clocks only stopped: we heard the bases
        all along, late, and a fresh grace each time would keep a dead base's node for good
        when the operator falls behind more often than BASE_NOT_READY_SECONDS.

        A broker outage says nothing about the bases, so it is never a reason to delete a
        node, however long it lasts: /readyz, the metrics and Events say the broker is out.
        """
        trusted = self.broker_connected and self.broker_delivering and self.intake_current
        if not trusted or self._paused_since is None:
            return
        paused = self.clock() - self._paused_since
        self._paused_since = None
        fresh_grace = self._contact_lost
        self._contact_lost = False
        now = self.clock()
        for record in self.bases.values():
            if record.tunnel != "mqtt":
                continue  # heard directly: its clock never stopped
            if record.ready and fresh_grace:
                record.last_seen = max(record.last_seen, now)
            else:
                # Silent while the broker was trusted: its clock only stopped. A fresh grace
                # here would let a flapping broker keep a dead base's node forever. (Heard
                # during the pause: now, as its clock stopped from then.)
                record.last_seen = min(now, record.last_seen + paused)
        if self.bases and fresh_grace:
            log.info(
                "Base liveness resumes after %.0fs without a trusted broker: every Ready base "
                "gets a fresh grace period, silent ones keep their stopped clocks.",
                paused,
            )
        elif self.bases:
            log.info("Base liveness resumes after %.0fs: the clocks only stopped.", paused)

    def adopt(
        self,
        identity: str,
        status: BaseStatus,
        node_name: str,
        memory: tuple[int, int] | None = None,
        tunnel: TunnelKind = "mqtt",
    ) -> None:
        """A node that existed before this operator started: keep it, on probation.

        Its base gets a full grace period from now, as if just heard; if it stays silent
        past the dead time its node goes, exactly like a base that went silent. `memory`
        (capacity, allocatable bytes) is what the node showed, kept until the base reports.
        """
        if identity in self.bases or node_name in self._by_node:
            return
        capacity, allocatable = memory if memory is not None else (None, None)
        record = BaseRecord(
            identity=identity,
            status=status,
            node_name=node_name,
            last_seen=self.clock(),
            memory_capacity_bytes=capacity,
            memory_allocatable_bytes=allocatable,
            heard_since_start=False,
            tunnel=tunnel,
        )
        self.bases[identity] = record
        self._by_node[node_name] = identity

    def tick(self, at: float | None = None) -> list[str]:
        """Apply the liveness rules as of `at` (now by default; never later); returns the
        nodes to resync."""
        judged = [
            r for r in self.bases.values() if self._paused_since is None or r.tunnel != "mqtt"
        ]
        if not judged:
            return []
        now = self.clock() if at is None else min(at, self.clock())
        not_ready_after = self.settings.base_not_ready_seconds
        silent_last_seen = [r.last_seen for r in judged if now - r.last_seen >= not_ready_after]
        hold = self._mass_silence.holds_deletions(silent_last_seen, len(judged), now)
        if self._mass_silence.ended_by_recovery:
            # Bases come back over one heartbeat period: the ones not heard yet keep their
            # nodes (NotReady) for one more dead-time window instead of going this tick.
            for record in judged:
                if now - record.last_seen >= not_ready_after:
                    record.last_seen = max(record.last_seen, now - not_ready_after)
        changed = []
        for record in judged:
            unreachable = self._arklet_unreachable(record, now)
            if unreachable is not None and record.ready:
                record.not_ready_reason = unreachable
                log.warning("%s: node %s is NotReady.", unreachable, record.node_name)
                changed.append(record.node_name)
                continue
            silent = now - record.last_seen
            if silent >= self.settings.base_dead_seconds and not hold:
                log.info(
                    "Base %s has been silent for %.0fs: deleting node %s.",
                    record.identity,
                    silent,
                    record.node_name,
                )
                reason = f"base {record.identity} has been silent for {silent:.0f}s"
                changed.append(self._forget(record, reason))
            elif silent >= not_ready_after and record.ready:
                record.not_ready_reason = (
                    f"no heartbeat from base {record.identity} for {silent:.0f}s"
                )
                log.info(
                    "Base %s is silent: node %s is NotReady.", record.identity, record.node_name
                )
                changed.append(record.node_name)
        return changed

    def _forget(self, record: BaseRecord, reason: str) -> str:
        self.bases.pop(record.identity, None)
        self._by_node.pop(record.node_name, None)
        self.departures[record.node_name] = reason
        return record.node_name

    def identities(self) -> Iterable[str]:
        return self.bases.keys()
