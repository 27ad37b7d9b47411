"""This replica's membership: its own Lease in NAMESPACE, the live replicas, and fencing.

Each replica renews a Lease of its own every REPLICA_RETRY_SECONDS; the live replicas are
the holders of unexpired membership Leases of this env. A replica that could not renew for
REPLICA_RENEW_DEADLINE_SECONDS stops acting on every base (`acting` is False) — measured on
its own monotonic clock, so it stops before its Lease (REPLICA_LEASE_SECONDS) expires for
the others, and before any of them may take its bases over.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from module_controller.kube import call_for_json
from module_controller.settings import Settings
from module_controller.vnode_manifest import as_body, micro_timestamp, now_utc

log = logging.getLogger(__name__)

MEMBER_LABEL = "module-controller.koupleless.io/replica-of"


def member_lease_name(env: str, client_id: str) -> str:
    """A valid Lease name for any CLIENT_ID: lower case, DNS-safe, short, still unique."""
    readable = re.sub(r"[^a-z0-9.-]+", "-", f"{env}-{client_id}".lower()).strip("-.")
    digest = hashlib.sha256(f"{env}\0{client_id}".encode()).hexdigest()[:10]
    return f"module-controller-{readable[:200]}-{digest}"


def parse_time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def lease_expired(spec: dict[str, Any], now: datetime.datetime) -> bool:
    """Whether a Lease's holder has let it run out (no renew time: never held)."""
    renewed = parse_time(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 0
    return renewed is None or renewed + datetime.timedelta(seconds=duration) <= now


class Membership:
    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.me = settings.client_id
        self.name = member_lease_name(settings.env, settings.client_id)
        self.coordination = client.CoordinationV1Api(api)
        self._api = api
        self._clock = clock
        self._renewed_at: float | None = None
        self._was_acting = False
        self.members: tuple[str, ...] = ()
        # Bumped each time acting resumes after a lapse: what was learnt before may be stale.
        self.epoch = 0
        # Each member's last renewTime seen, and when (our clock): a member is live while its
        # renewals keep coming, whatever its wall clock says (client-go does the same).
        self._observed: dict[str, tuple[str, float]] = {}

    @property
    def acting(self) -> bool:
        """Renewed within the deadline: this replica may act on the bases it holds."""
        renewed = self._renewed_at
        return (
            renewed is not None
            and self._clock() - renewed < self.settings.replica_renew_deadline_seconds
        )

    async def round(self) -> None:
        """Renew our Lease, then read who is alive. Failures only cost `acting` in time."""
        started = self._clock()
        lapsed = not self.acting
        try:
            await self._renew()
        except (ApiException, OSError, TimeoutError) as error:
            log.warning("Renewing this replica's membership Lease %s failed: %s", self.name, error)
        else:
            self._renewed_at = started  # when the request left: the Lease is at least as new
            if lapsed:
                self.epoch += 1
        try:
            self.members = await self._live_members()
        except (ApiException, OSError, TimeoutError) as error:
            log.warning("Listing the replicas' membership Leases failed: %s", error)
        if self._was_acting and not self.acting:
            log.warning(
                "This replica could not renew its membership for %.0fs: it stops acting on "
                "every base until it can.",
                self.settings.replica_renew_deadline_seconds,
            )
        elif self.acting and not self._was_acting:
            log.info("This replica is a member (%d live): it acts on its bases.", len(self.members))
        self._was_acting = self.acting

    async def leave(self) -> None:
        """On a clean stop: give the Lease up, so the others take our bases over at once."""
        self._renewed_at = None
        try:
            await self.coordination.delete_namespaced_lease(self.name, self.settings.namespace)
        except ApiException as error:
            if error.status != 404:
                log.warning("Deleting the membership Lease %s failed: %s", self.name, error)

    async def _forget(self, lease: dict[str, Any]) -> None:
        """Delete a long-dead replica's Lease, unless it changed since it was read."""
        metadata = lease["metadata"]
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=metadata["resourceVersion"])
        )
        try:
            await self.coordination.delete_namespaced_lease(
                metadata["name"], self.settings.namespace, body=options
            )
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning(
                    "Deleting the dead replica Lease %s failed: %s", metadata["name"], error
                )
            return
        log.info("Deleted the Lease of replica %s, gone long ago.", lease["spec"]["holderIdentity"])

    def _body(self) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.settings.namespace,
                "labels": {MEMBER_LABEL: self.settings.env},
            },
            "spec": {
                "holderIdentity": self.me,
                "leaseDurationSeconds": int(self.settings.replica_lease_seconds),
                "renewTime": micro_timestamp(now_utc()),
            },
        }

    async def _renew(self) -> None:
        body = self._body()
        try:
            # Its answer as JSON, not the client's models: this runs every few seconds.
            await call_for_json(
                self._api,
                self.coordination.patch_namespaced_lease,
                self.name,
                self.settings.namespace,
                {"spec": body["spec"]},
            )
        except ApiException as error:
            if error.status != 404:
                raise
            await self.coordination.create_namespaced_lease(self.settings.namespace, as_body(body))

    async def _live_members(self) -> tuple[str, ...]:
        leases = await call_for_json(
            self._api,
            self.coordination.list_namespaced_lease,
            self.settings.namespace,
            label_selector=f"{MEMBER_LABEL}={self.settings.env}",
        )
        now = self._clock()
        wall = now_utc()
        live = set()
        seen = {}
        for lease in leases.get("items") or []:
            spec: dict[str, Any] = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            if not holder:
                continue
            renewed = str(spec.get("renewTime"))
            duration = float(spec.get("leaseDurationSeconds") or 0)
            before = self._observed.get(holder)
            if before is not None and before[0] == renewed:
                observed_at = before[1]
            elif before is not None or not lease_expired(spec, wall):
                observed_at = now  # seen renewing (or, at first sight, not run out)
            else:
                # First sight of a Lease already run out (a replica killed before we
                # started): not live until it is seen renewing.
                observed_at = now - duration
                if lease_expired(spec, wall - datetime.timedelta(seconds=3 * duration)):
                    await self._forget(lease)  # long dead: its Lease must not pile up
                    continue
            seen[holder] = (renewed, observed_at)
            if now - observed_at < duration:
                live.add(holder)
        self._observed = seen
        if self.acting:
            live.add(self.me)
        else:
            live.discard(self.me)  # we may not act: never count on ourselves
        return tuple(sorted(live))
