"""Test helpers of the hook/libvirt tests: Interface rows read back from a real ovsdb-server."""

from __future__ import annotations

import json

from controller.lab.ovs import OvsInstance


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
