"""Operating a running lab as an operator would: `veil status` and `veil trace` against the
lab's controller (its control socket in the lab's run directory), with the lab's VM names.

`veil trace` knows VIFs by iface-id, MAC or IP; a lab knows its VMs by name: ``vm_words``
swaps the names after ``from``/``to`` for their iface-ids. ``--live`` runs each hop's
``ofproto/trace`` in the hop's host namespace (controller/livetrace.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller import control, graph, livetrace
from controller.lab import netns
from controller.lab.lab import CONTROLLER_NODE, Lab
from controller.lab.run import METRICS_LISTEN
from controller.trace import parse_words


def control_socket(lab: Lab) -> Path:
    """The lab controller's control socket (controller/lab/run.py starts it there)."""
    return Path(lab.rundir) / "controller" / control.SOCKET_NAME


def vm_words(lab: Lab, words: Sequence[str]) -> list[str]:
    """``words`` with each lab VM name after from/to (and an optional VM) as its iface-id."""
    out = []
    after_from_to = False
    for word in words:
        if after_from_to and word.lower() in ("vm", "vif"):
            out.append(word)
            continue
        out.append(lab.vms[word].iface_id if after_from_to and word in lab.vms else word)
        after_from_to = word in ("from", "to")
    return out


def _appctl(lab: Lab, host: str, argv: Sequence[str]) -> str:
    return lab.hosts[host].ovs.appctl(*argv)


def trace(lab: Lab, words: Sequence[str], live: bool = False) -> dict[str, Any]:
    """The controller's trace of the packet ``words`` describe; ``live``: with a "live" list
    (each hop through the real switch of its host, against the model)."""
    req = parse_words(vm_words(lab, words))
    doc = control.ask(control_socket(lab), "trace " + json.dumps(req.to_json()))
    if live:
        checks = livetrace.check(doc, lambda host, argv: _appctl(lab, host, argv),
                                 lambda host: host in lab.hosts)
        doc["live"] = [c.__dict__ for c in checks]
    names = {vm.iface_id: name for name, vm in lab.vms.items()}
    doc["vm_names"] = names
    return doc


def named(doc: dict[str, Any], text: str) -> str:
    """``text`` with the lab's iface-ids replaced by VM names (for people)."""
    for iface_id, name in doc.get("vm_names", {}).items():
        text = text.replace(iface_id, f"{name}")
    return text


def metrics_text(lab: Lab) -> str:
    """A Prometheus scrape of the lab controller's metrics (served in its namespace)."""
    fetch = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
             f"'http://{METRICS_LISTEN}/metrics', timeout=10).read().decode())")
    return netns.run(["python3", "-c", fetch], ns=lab.ns_name(CONTROLLER_NODE)).stdout


def picture(lab: Lab) -> graph.Picture:
    """The lab's topology picture: its DCs as sites, its VMs by name."""
    doc = control.ask(control_socket(lab), "status")
    sites = {h.name: h.dc for h in lab.topo.hosts}
    return graph.picture(doc, {vm.iface_id: name for name, vm in lab.vms.items()}, sites)


def graph_page(lab: Lab, out: Path | None = None) -> tuple[Path, Path]:
    """Write the lab's topology page (default ``<rundir>/graph.html``) and its SVG."""
    import time
    return graph.write(picture(lab), out or Path(lab.rundir) / "graph.html",
                       f"lab {lab.prefix}", time.strftime("%Y-%m-%d %H:%M:%S"))
