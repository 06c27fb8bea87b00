"""One host's Open vSwitch database as the controller sees it, and the tunnel ports it owns.

Reads: every br-int Interface carrying the hooks' external_ids (iface-id, attached-mac,
iface-status, veil-network, veil-tenant, veil-ips) becomes a ``Binding``; every port veil created for a tunnel
(external_ids veil-remote) a ``TunnelPort`` with its BFD state. Writes: the tunnel ports, all
changes of one host in one transaction.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from hooks.ovsdb import connect as ovsdb
from controller.pipeline.compute import TunnelSpec
from controller.core.model import Binding, InvalidState, TunnelPort, check_mac
from controller.core.seen import SeenKey
from hooks import contract

LOG = logging.getLogger(__name__)
VEIL_IPS: Final = contract.VEIL_IPS
VEIL_REMOTE: Final = "veil-remote"  # Interface: the remote system-id of a veil tunnel port
BRIDGE: Final = contract.INTEGRATION_BRIDGE
# Every veil tunnel's BFD configuration. check_tnl_key: OVS's BFD takes only packets with
# tunnel key 0 as its own control messages (its own sessions send key 0; veil never uses
# VNI 0). Without it, a tenant VM's UDP to port 3784 inside the tunnel (any VNI) is eaten by
# the receiving host's BFD and, well formed (TTL 255, your_disc 0, state Down), drives that
# tunnel's session down: docs/isolation.md, "What the hosts' OVS interprets".
TUNNEL_BFD: Final[Mapping[str, str]] = {"enable": "true", "check_tnl_key": "true"}

# The only columns the controller mirrors of a host's database: what ``view`` reads and what
# ``set_tunnels`` writes (ovsdbapp's add_port/del_port go through Bridge.ports and
# Port.interfaces). Not statistics, link state, next_cfg/cur_cfg or anything else ovs-vswitchd
# refreshes on its own: an idle fabric must not wake the controller (every interface's statistics
# change every 5 s, so mirroring them cost ~1.4 wake-ups per host per second, issue 14).
WATCHED: Final[Mapping[str, tuple[str, ...]]] = {
    "Open_vSwitch": ("external_ids",),
    "Bridge": ("name", "ports"),
    "Port": ("name", "interfaces"),
    "Interface": ("name", "type", "options", "bfd", "bfd_status", "external_ids", "ofport"),
}

# How long a read waits for the IDL lock. ovsdbapp's connection thread holds that lock for a
# whole transaction and python-ovs waits for the answer without a deadline: a hung
# (SIGSTOPped) ovsdb-server whose unix socket stays open keeps it forever (issue 12).
LOCK_WAIT: Final = 1.0


class HostDbStuck(RuntimeError):
    """The host's OVSDB has a transaction in flight that it does not answer (hung server)."""


@dataclass(frozen=True)
class HostView:
    system_id: str | None
    has_bridge: bool
    bindings: tuple[Binding, ...]
    tunnels: tuple[TunnelPort, ...]
    tunnel_names: frozenset[str]
    rejected: tuple[tuple[str, str], ...]  # interface name, why
    # veil tunnel interfaces whose bfd column is not TUNNEL_BFD (made by an older veil, or
    # changed behind its back): rewritten by set_tunnels
    stale_bfd: frozenset[str] = frozenset()


def _ofport(row: Any) -> int:
    return int(row.ofport[0]) if row.ofport else -1


def binding_from_row(host: str, name: str, ids: dict[str, str], ofport: int,
                     since: float) -> Binding:
    """A VIF from an Interface row's external_ids; InvalidState names the bad key."""
    where = f"{host} Interface {name} external_ids"
    mac = check_mac(ids.get(contract.ATTACHED_MAC), f"{where}:{contract.ATTACHED_MAC}")
    network = ids.get(contract.VEIL_NETWORK)
    if not network:
        raise InvalidState(f"{where}:{contract.VEIL_NETWORK}: missing")
    ips = []
    for raw in filter(None, (s.strip() for s in ids.get(VEIL_IPS, "").split(","))):
        try:
            ips.append(ipaddress.ip_interface(raw).ip)
        except ValueError as exc:
            raise InvalidState(f"{where}:{VEIL_IPS}: {raw!r}: {exc}") from exc
    status = ids.get(contract.IFACE_STATUS, contract.STATUS_ACTIVE)
    return Binding(ids[contract.IFACE_ID], host, mac, network, ofport, tuple(ips),
                   active=status == contract.STATUS_ACTIVE, since=since,
                   tenant=ids.get(contract.VEIL_TENANT) or None)


# The inactivity probe on every controller <-> host connection (OVSDB both ways, OpenFlow from
# the switch: controller/join.py sets the host's side). An idle connection costs its two ends
# a probe and its answer per interval; at 5 s (the OVS default) those were most of an idle
# controller's CPU, growing with the hosts. A silently dead peer is dropped after twice this.
HOST_PROBE_MS: Final = 30_000


class HostDb:
    """ovsdbapp connection to one host; ``on_change`` fires (on its thread) after any change."""

    def __init__(self, system_id: str, remote: str, on_change: Callable[[], None]) -> None:
        self.system_id = system_id
        self.remote = remote
        # Unacked: a tunnel write must not hold the round until ovs-vswitchd has made the port
        # (~80 ms per host); the port's ofport arrives as a row update and wakes the next one.
        self.api = ovsdb.open_vswitch(remote, on_change, tables=WATCHED, acked=False,
                                      probe_ms=HOST_PROBE_MS)
        self._first_seen: dict[tuple[str, int], float] = {}

    def close(self) -> None:
        ovsdb.stop(self.api)

    def connected(self) -> bool:
        """Whether the IDL is connected now (else its rows may be stale)."""
        return ovsdb.is_connected(self.api)

    def view(self, now: float, recorded: Mapping[SeenKey, float] | None = None) -> HostView:
        """Everything the controller needs from this host, read in one go under the IDL lock.

        A port is first seen ``now``, or when the durable ``recorded`` times say (a restarted
        controller: see controller/core/seen.py)."""
        recorded = recorded or {}
        bindings: list[Binding] = []
        tunnels: list[TunnelPort] = []
        names: set[str] = set()
        stale: set[str] = set()
        rejected: list[tuple[str, str]] = []
        seen: set[tuple[str, int]] = set()
        lock = self.api.ovsdb_connection.lock
        if not lock.acquire(timeout=LOCK_WAIT):
            raise HostDbStuck(f"{self.remote}: a transaction has not been answered")
        try:
            tables = self.api.tables
            ovs_rows = list(tables["Open_vSwitch"].rows.values())
            sid = ovs_rows[0].external_ids.get(contract.SYSTEM_ID) if ovs_rows else None
            bridge = next((b for b in tables["Bridge"].rows.values() if b.name == BRIDGE), None)
            ifaces = [i for p in (bridge.ports if bridge else ()) for i in p.interfaces]
            for row in ifaces:
                ids = dict(row.external_ids)
                if VEIL_REMOTE in ids:
                    names.add(row.name)
                    if dict(row.bfd) != TUNNEL_BFD:
                        stale.add(row.name)
                    bfd = dict(row.bfd_status).get("state")
                    tunnels.append(TunnelPort(self.system_id, ids[VEIL_REMOTE], _ofport(row),
                                              None if bfd is None else bfd == "up"))
                elif contract.IFACE_ID in ids:
                    key = (ids[contract.IFACE_ID], _ofport(row))
                    seen.add(key)
                    since = self._first_seen.setdefault(
                        key, recorded.get((self.system_id, *key), now))
                    try:
                        bindings.append(binding_from_row(self.system_id, row.name, ids,
                                                         _ofport(row), since))
                    except InvalidState as exc:
                        rejected.append((row.name, str(exc)))
        finally:
            lock.release()
        for key in set(self._first_seen) - seen:
            del self._first_seen[key]
        return HostView(sid, bridge is not None, tuple(bindings), tuple(tunnels),
                        frozenset(names), tuple(rejected), frozenset(stale))

    def set_tunnels(self, want: Iterable[TunnelSpec], have: frozenset[str],
                    stale_bfd: frozenset[str] = frozenset()) -> bool:
        """Create/delete veil tunnel ports so exactly ``want`` exist, and give every kept one
        whose BFD configuration is ``stale_bfd`` TUNNEL_BFD; one transaction.

        Returns whether anything was changed.
        """
        want_by_name = {s.name: s for s in want}
        add = [s for n, s in sorted(want_by_name.items()) if n not in have]
        delete = sorted(have - want_by_name.keys())
        fix = sorted((stale_bfd & have) & want_by_name.keys())
        if not add and not delete and not fix:
            return False
        with self.api.transaction(check_error=True) as txn:
            for name in fix:
                txn.add(self.api.db_set("Interface", name, ("bfd", dict(TUNNEL_BFD))))
            for name in delete:
                txn.add(self.api.del_port(name, bridge=BRIDGE, if_exists=True))
            for s in add:
                txn.add(self.api.add_port(BRIDGE, s.name, may_exist=True))
                txn.add(self.api.db_set(
                    "Interface", s.name,
                    ("type", s.kind),
                    ("options", {"remote_ip": s.remote_ip, "key": "flow"}),
                    ("bfd", dict(TUNNEL_BFD)),
                    ("external_ids", {VEIL_REMOTE: s.remote}),
                ))
        LOG.info("%s: tunnels +%s -%s", self.system_id, [s.name for s in add], delete)
        if fix:
            LOG.info("%s: tunnel BFD set to %s on %s", self.system_id, dict(TUNNEL_BFD), fix)
        return True
