"""Test helpers of the hook/libvirt tests: Interface rows read back from a real ovsdb-server."""

from __future__ import annotations

import json

from controller.lab import netns
from controller.lab.ovs import OvsInstance
from tests.support.poll import until


def _decode(cell: object) -> object:
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "map":
        return {k: v for k, v in cell[1]}
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "set":
        return [_decode(x) for x in cell[1]]
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "uuid":
        return cell[1]
    return cell


def rows(ovs: OvsInstance, table: str) -> list[dict[str, object]]:
    out = json.loads(ovs.vsctl("--format=json", "list", table))
    return [dict(zip(out["headings"], (_decode(c) for c in row))) for row in out["data"]]


#: Columns ovs-vswitchd itself keeps up to date (counters, link state, kernel facts). A test that
#: asks "did this refused call change OVSDB?" must not count them: a live veth's IPv6 chatter
#: moves rx_packets between two reads.
VSWITCHD_WRITTEN = frozenset({
    "statistics", "status", "link_state", "link_resets", "link_speed", "duplex", "admin_state", "mac_in_use",
    "ifindex", "ofport", "error", "bfd_status", "cfm_fault", "cfm_fault_status", "cfm_flap_count", "cfm_health",
    "cfm_remote_mpids", "cfm_remote_opstate", "lacp_current", "rstp_status", "rstp_statistics", "datapath_id",
    "datapath_version",
})


def client_rows(ovs: OvsInstance, table: str) -> list[dict[str, object]]:
    """Rows of ``table`` without the columns ovs-vswitchd writes: what a client (a hook) could change."""
    return [{k: v for k, v in row.items() if k not in VSWITCHD_WRITTEN} for row in rows(ovs, table)]


def iface_ids(ovs: OvsInstance, name: str) -> dict[str, str] | None:
    """external_ids of Interface ``name``, or None when no such row exists."""
    for row in rows(ovs, "Interface"):
        if row["name"] == name:
            ids = row["external_ids"]
            assert isinstance(ids, dict)
            return ids
    return None


def bridge_ports(ovs: OvsInstance, bridge: str = "br-int") -> list[str]:
    return sorted(ovs.vsctl("list-ports", bridge).split())


def interface(ovs: OvsInstance, name: str) -> dict[str, object]:
    """The Interface row ``name`` (every column, decoded)."""
    (row,) = [r for r in rows(ovs, "Interface") if r["name"] == name]
    return row


def live_device(ovs: OvsInstance, name: str) -> None:
    """A device ``name`` with carrier in the host's namespace (a veth pair, both ends up), as
    a running VM's tap is: for a port row that is plausibly alive."""
    assert ovs.ns is not None
    netns.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], ns=ovs.ns)
    for dev in (name, f"{name}p"):
        netns.run(["ip", "link", "set", dev, "up"], ns=ovs.ns)


def wait_live(ovs: OvsInstance, name: str) -> None:
    """Until vswitchd has opened ``name``'s device: an ofport, no error, link up."""
    until(f"{name} is live in OVS", lambda: (lambda r: isinstance(r["ofport"], int) and r["ofport"] > 0
          and r["error"] == [] and r["link_state"] == "up")(interface(ovs, name)),
          detail=lambda: repr(interface(ovs, name)))


def wait_gone(ovs: OvsInstance, name: str) -> None:
    """Until vswitchd reports ``name``'s device missing (ofport -1, "could not open ...")."""
    until(f"{name}'s device reported missing", lambda: interface(ovs, name)["ofport"] == -1,
          detail=lambda: repr(interface(ovs, name)))
