"""`veil status` in words: the controller's status JSON (controller/status.py) as text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.status import problems


def _yes(ok: bool, word: str) -> str:
    return word if ok else f"NOT {word}"


def render(doc: Mapping[str, Any], now: float) -> list[str]:
    """The lines `veil status` prints for ``doc`` (``now``: to say how old it is)."""
    age = max(0.0, now - float(doc["updated"]))
    out = [f"controller: database {doc['database']}, sequence {doc['sequence']} "
           f"(last round {age:.1f} s ago)", "hosts:"]
    for h in doc["hosts"]:
        out.append(f"  {h['system_id']} {h['underlay_ip']}: ovsdb "
                   f"{_yes(h['ovsdb_connected'], 'connected')}, openflow "
                   f"{_yes(h['openflow_connected'], 'connected')}, programmed up to "
                   f"{h['programmed']}")
        if h["last_error"]:
            out.append(f"      last error: {h['last_error']}")
        for t in h["tunnels"]:
            towards = t["remote_host"] + (f" ({t['remote_ip']})" if t["remote_ip"] else "")
            out.append(f"      tunnel to {towards}: BFD {t['bfd']}")
    out.append("networks:")
    for n in doc["networks"]:
        out.append(f"  {n['name']} (tenant {n['tenant']}, VNI {n['vni']}): "
                   f"{len(n['vifs'])} VIF(s)")
        for v in n["vifs"]:
            ips = f" {','.join(v['ips'])}" if v["ips"] else ""
            out.append(f"      {v['iface_id']} on {v['host']} {v['mac']}{ips}")
    if doc["not_forwarded"]:
        out.append("not forwarded:")
        out += [f"  {v['iface_id']} on {v['host']}: {v['why']}" for v in doc["not_forwarded"]]
    wrong = problems(doc)
    out.append("problems: none" if not wrong else f"problems ({len(wrong)}):")
    out += [f"  - {p}" for p in wrong]
    return out
