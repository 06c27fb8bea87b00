"""`veil graph`: the fabric as a picture: sites (data centers), hosts, tunnels (BFD up or down),
VMs coloured by tenant on the host they run on. One self-contained HTML page (inline SVG, no
external resource) and the SVG alone; ``serve`` keeps it live from the controller.

Pure up to ``serve``: ``picture`` turns a status document (controller/status.py, what the
control socket answers) into a ``Picture``; ``svg``/``html`` draw it. A site is what the caller
says (the lab knows its DCs); without one, hosts are grouped by their underlay /24.
"""

from __future__ import annotations

import html as htmllib
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOG = logging.getLogger("veil.graph")
# colour-blind-safe (Okabe-Ito), one per tenant in name order
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#999999")
BFD_COLOUR = {"up": "#2e7d32", "down": "#c62828", "unknown": "#9e9e9e"}
HOST_W, HOST_H, VM_H, GAP, SITE_PAD, SITE_GAP, TOP = 210, 44, 22, 26, 18, 70, 70


@dataclass(frozen=True)
class Vm:
    name: str
    iface_id: str
    tenant: str
    network: str
    ip: str


@dataclass(frozen=True)
class HostBox:
    name: str
    underlay_ip: str
    site: str
    connected: bool
    vms: tuple[Vm, ...]


@dataclass(frozen=True)
class Tunnel:
    a: str
    b: str
    bfd: str  # the worse of both ends: down < unknown < up


@dataclass(frozen=True)
class Picture:
    sites: tuple[str, ...]
    hosts: tuple[HostBox, ...]
    tunnels: tuple[Tunnel, ...]
    tenants: tuple[str, ...]
    problems: tuple[str, ...]


def _site_of(ip: str) -> str:
    try:
        return str(ipaddress.ip_network(f"{ip}/24", strict=False))
    except ValueError:
        return "?"


def picture(doc: Mapping[str, Any], vm_names: Mapping[str, str] | None = None,
            sites: Mapping[str, str] | None = None) -> Picture:
    """The picture of status ``doc``; ``vm_names``: iface-id -> VM name; ``sites``: host ->
    its site (data center)."""
    names = vm_names or {}
    where = {h["system_id"]: (sites or {}).get(h["system_id"]) or _site_of(h["underlay_ip"])
             for h in doc["hosts"]}
    vms: dict[str, list[Vm]] = {}
    tenants = set()
    for net in doc["networks"]:
        tenants.add(net["tenant"])
        for v in net["vifs"]:
            vms.setdefault(v["host"], []).append(Vm(
                names.get(v["iface_id"], v["iface_id"][:8]), v["iface_id"], net["tenant"],
                net["name"], ",".join(v["ips"])))
    hosts = tuple(HostBox(h["system_id"], h["underlay_ip"], where[h["system_id"]],
                          h["ovsdb_connected"] and h["openflow_connected"],
                          tuple(sorted(vms.get(h["system_id"], []), key=lambda v: v.name)))
                  for h in sorted(doc["hosts"], key=lambda h: (where[h["system_id"]],
                                                               h["system_id"])))
    rank = {"down": 0, "unknown": 1, "up": 2}
    ends: dict[tuple[str, str], str] = {}
    for h in doc["hosts"]:
        for t in h["tunnels"]:
            key = tuple(sorted((h["system_id"], t["remote_host"])))
            pair = (key[0], key[1])
            before = ends.get(pair)
            ends[pair] = t["bfd"] if before is None or rank[t["bfd"]] < rank[before] else before
    tunnels = tuple(Tunnel(a, b, bfd) for (a, b), bfd in sorted(ends.items()))
    return Picture(tuple(sorted(set(where.values()))), hosts, tunnels,
                   tuple(sorted(tenants)), tuple(doc.get("problems", ())))


def _e(text: object) -> str:
    return htmllib.escape(str(text), quote=True)


def svg(pic: Picture) -> str:
    """The picture as one SVG document (hosts in a column per site, tunnels as arcs)."""
    colour = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(pic.tenants)}
    pos: dict[str, tuple[int, int, int]] = {}  # host -> x, y, height
    parts: list[str] = []
    width = SITE_PAD + len(pic.sites) * (HOST_W + 2 * SITE_PAD + SITE_GAP)
    height = TOP
    for i, site in enumerate(pic.sites):
        x = SITE_GAP // 2 + i * (HOST_W + 2 * SITE_PAD + SITE_GAP)
        y = TOP
        boxes = []
        for h in (h for h in pic.hosts if h.site == site):
            hh = HOST_H + max(1, len(h.vms)) * VM_H + 8
            pos[h.name] = (x + SITE_PAD, y + SITE_PAD + 18, hh)
            boxes.append(h)
            y += hh + GAP
        site_h = y - TOP + SITE_PAD + 18
        height = max(height, TOP + site_h + 20)
        parts.append(f'<g class="site" data-site="{_e(site)}"><rect x="{x}" y="{TOP}" '
                     f'width="{HOST_W + 2 * SITE_PAD}" height="{site_h}" rx="12" '
                     f'fill="#f5f7fa" stroke="#b0bec5"/><text x="{x + 12}" y="{TOP + 20}" '
                     f'class="site-name">{_e(site)}</text></g>')
    legend_y = height + 10
    height = legend_y + 30
    for t in pic.tunnels:
        if t.a not in pos or t.b not in pos:
            continue
        (xa, ya, ha), (xb, yb, hb) = pos[t.a], pos[t.b]
        if xa == xb:  # same site: an arc on the column's outer side
            first = xa == min(x for x, _, _ in pos.values())
            side, bulge = (xa, -40) if first else (xa + HOST_W, 40)
            path = f"M{side},{ya + ha / 2} C{side + bulge},{ya + ha / 2} {side + bulge}," \
                   f"{yb + hb / 2} {side},{yb + hb / 2}"
        else:  # across sites: from the facing sides
            if xa > xb:
                (xa, ya, ha), (xb, yb, hb) = (xb, yb, hb), (xa, ya, ha)
            ax, ay, bx, by = xa + HOST_W, ya + ha / 2, xb, yb + hb / 2
            mid = (ax + bx) / 2
            path = f"M{ax},{ay} C{mid},{ay} {mid},{by} {bx},{by}"
        dash = ' stroke-dasharray="6 4"' if t.bfd != "up" else ""
        parts.append(f'<path class="tunnel" data-a="{_e(t.a)}" data-b="{_e(t.b)}" '
                     f'data-bfd="{_e(t.bfd)}" d="{path}" fill="none" '
                     f'stroke="{BFD_COLOUR[t.bfd]}" stroke-width="2.5"{dash}>'
                     f'<title>tunnel {_e(t.a)} - {_e(t.b)}: BFD {_e(t.bfd)}</title></path>')
    for h in pic.hosts:
        x, y, hh = pos[h.name]
        stroke = "#37474f" if h.connected else "#c62828"
        parts.append(f'<g class="host" data-host="{_e(h.name)}" data-connected='
                     f'"{str(h.connected).lower()}"><rect x="{x}" y="{y}" width="{HOST_W}" '
                     f'height="{hh}" rx="8" fill="#ffffff" stroke="{stroke}" stroke-width="2"/>'
                     f'<text x="{x + 10}" y="{y + 18}" class="host-name">{_e(h.name)}</text>'
                     f'<text x="{x + 10}" y="{y + 34}" class="host-ip">{_e(h.underlay_ip)}'
                     f'{"" if h.connected else " (not connected)"}</text>')
        for j, vm in enumerate(h.vms):
            vy = y + HOST_H + j * VM_H
            parts.append(f'<g class="vm" data-vm="{_e(vm.name)}" data-tenant="{_e(vm.tenant)}">'
                         f'<rect x="{x + 10}" y="{vy}" width="{HOST_W - 20}" height="{VM_H - 4}"'
                         f' rx="9" fill="{colour[vm.tenant]}"/><text x="{x + 20}" '
                         f'y="{vy + 13}" class="vm-name">{_e(vm.name)}  {_e(vm.ip)}</text>'
                         f'<title>VM {_e(vm.name)} ({_e(vm.iface_id)}): tenant {_e(vm.tenant)},'
                         f' network {_e(vm.network)}, on {_e(h.name)}</title></g>')
        if not h.vms:
            parts.append(f'<text x="{x + 10}" y="{y + HOST_H + 12}" class="host-ip">no VMs'
                         f'</text>')
        parts.append("</g>")
    lx = SITE_GAP // 2
    for tenant in pic.tenants:
        parts.append(f'<g class="legend" data-tenant="{_e(tenant)}"><rect x="{lx}" '
                     f'y="{legend_y}" width="14" height="14" rx="3" fill="{colour[tenant]}"/>'
                     f'<text x="{lx + 20}" y="{legend_y + 12}">tenant {_e(tenant)}</text></g>')
        lx += 140
    for bfd_state, c in BFD_COLOUR.items():
        parts.append(f'<line x1="{lx}" y1="{legend_y + 7}" x2="{lx + 24}" y2="{legend_y + 7}" '
                     f'stroke="{c}" stroke-width="2.5"/><text x="{lx + 30}" '
                     f'y="{legend_y + 12}">BFD {bfd_state}</text>')
        lx += 110
    style = ("text{font-family:sans-serif;font-size:12px;fill:#263238}"
             ".site-name{font-weight:bold;font-size:14px}.host-name{font-weight:bold}"
             ".host-ip{fill:#607d8b;font-size:11px}.vm-name{fill:#ffffff;font-size:11px}")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="veil-graph" width="{max(width, lx)}"'
            f' height="{height}" viewBox="0 0 {max(width, lx)} {height}"><style>{style}'
            f'</style>{"".join(parts)}</svg>')


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>veil: {title}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:sans-serif;margin:16px;color:#263238}}#problems li{{color:#c62828}}
#when{{color:#607d8b;font-size:12px}}</style></head>
<body><h1>veil: {title}</h1><div id="when">{when}</div><div id="graph">{svg}</div>
<ul id="problems">{problems}</ul>
<script>
"use strict";
const LIVE = {live};
async function refresh() {{
  try {{
    const reply = await fetch("graph.json", {{cache: "no-store"}});
    if (!reply.ok) {{ document.getElementById("when").textContent = "controller: " + reply.status; return; }}
    const doc = await reply.json();
    document.getElementById("graph").innerHTML = doc.svg;
    const list = document.getElementById("problems");
    list.replaceChildren(...doc.problems.map(p => {{ const li = document.createElement("li"); li.textContent = p; return li; }}));
    document.getElementById("when").textContent = "live: " + new Date().toLocaleTimeString();
  }} catch (err) {{
    document.getElementById("when").textContent = "controller not reachable: " + err;
  }}
}}
if (LIVE) {{ refresh(); setInterval(refresh, 2000); }}
</script></body></html>
"""


def html(pic: Picture, title: str, when: str, live: bool = False) -> str:
    """The page: the SVG inline; ``live``: it re-fetches ``graph.json`` every 2 s."""
    problems = "".join(f"<li>{_e(p)}</li>" for p in pic.problems)
    return PAGE.format(title=_e(title), when=_e(when), svg=svg(pic), problems=problems,
                       live="true" if live else "false")


def serve(listen: str, get: Callable[[], Picture], title: str) -> ThreadingHTTPServer:
    """Serve the live page on ``listen`` (IP:PORT) until ``shutdown()``: ``/`` the page,
    ``/graph.json`` the current SVG and problems, ``/graph.svg`` the SVG."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            try:
                pic = get()
            except Exception as exc:  # the controller away: say it, keep serving
                self._send(503, "text/plain; charset=utf-8", f"{exc}\n")
                return
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", html(pic, title, "", live=True))
            elif path == "/graph.json":
                self._send(200, "application/json", json.dumps(
                    {"svg": svg(pic), "problems": list(pic.problems)}))
            elif path == "/graph.svg":
                self._send(200, "image/svg+xml", svg(pic))
            elif path == "/favicon.ico":
                self._send(204, "image/x-icon", "")
            else:
                self._send(404, "text/plain; charset=utf-8", "not found\n")

        def _send(self, code: int, kind: str, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug(format, *args)

    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="veil-graph", daemon=True).start()
    return server


def write(pic: Picture, html_path: Path, title: str, when: str) -> tuple[Path, Path]:
    """Write the static page and, next to it, the SVG alone (same name, .svg)."""
    svg_path = html_path.with_suffix(".svg")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(html(pic, title, when))
    svg_path.write_text(svg(pic))
    return html_path, svg_path
