"""`veil-lab`'s help texts and examples, filled into its parser (controller/lab/cli.py) where
an argument or command has none: one table, so every command and option says what it does."""

from __future__ import annotations

import argparse

PREFIX = "the lab's name prefix (default: the only lab running; `veil-lab status` shows it)"
OPTIONS = {
    "--prefix": PREFIX, "--json": "print the result as JSON", "--count": "pings to send "
    "(default 1)", "node": "a lab node: host (dc1-h1), VM (a1), ToR or router",
    "argv": "the command, after --", "src": "the node pinging (a VM or host name)",
    "dst": "a VM, host or IP address to ping",
    "vm": "a libvirt guest of the lab (a1, b2 ...)", "host": "the lab host to move it to (dc2-h2)",
    "--probe-seconds": "how long the probe may run at most (default 15 s)",
}
EXAMPLES = {
    "veil-lab": ["veil-lab up && veil-lab status", "veil-lab ping a1 a2",
                 "veil-lab trace from a1 to a2 icmp --live", "veil-lab graph --serve "
                 "127.0.0.1:8477", "veil-lab down --prefix PREFIX", "veil-lab demo --keep"],
    "up": ["veil-lab up", "veil-lab up --kind netns   (namespaces for VMs: fast, no libvirt)",
           "veil-lab up --topology my-dcs.yaml --prefix vlmine1",
           "veil-lab up --no-controller   (the bare underlay: VMs plugged, tenants dark)"],
    "down": ["veil-lab down --prefix PREFIX", "veil-lab down --all   (every lab under --root)"],
    "status": ["veil-lab status --prefix PREFIX | jq .vms"],
    "exec": ["veil-lab exec dc1-h1 -- ovs-vsctl show", "veil-lab exec a1 -- ip addr"],
    "ping": ["veil-lab ping a1 a2", "veil-lab ping --count 3 b1 198.19.0.12"],
    "demo": ["veil-lab demo", "veil-lab demo --keep   (the lab stays up afterwards)",
             "veil-lab demo --kind netns   (namespaces instead of real guests: ~22 s)",
             "veil-lab demo --no-migrate   (step 8 without a1's live moves DC1 -> DC2 and back)",
             "veil-lab demo --topology fabric-3x3   (DC1 a 3x3 OpenFlow fabric: docs/fabric.md)"],
    "bench": ["veil-lab bench --quick", "veil-lab bench --only 2 --reps 5"],
    "trace": ["veil-lab trace from a1 to a2 icmp", "veil-lab trace --live from a1 broadcast",
              "veil-lab trace from b1 to b2 eth.src=02:00:00:00:00:99   (spoofed)"],
    "console": ["veil-lab console a1", "veil-lab console -f a1   (follow, like tail -f)"],
    "migrate": ["veil-lab migrate a1 dc2-h2", "veil-lab migrate a1 dc1-h1 --probe-from a2   "
                "(outage under a 1 ms probe, next to QEMU's downtime)"],
    "graph": ["veil-lab graph   (writes RUNDIR/graph.html and graph.svg)",
              "veil-lab graph --serve 127.0.0.1:8477   (live; open it in a browser)"],
}


def document(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``p`` with a help text on every option and an epilog of examples on every command."""
    p.description = ("veil-lab: bring a lab of veil (netns hosts, libvirt guests) up and down (default: the two-DC "
                     "lab), look at it, use it: ping, exec, trace, graph, demo, bench.")
    _fill(p, "veil-lab")
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _fill(sub, name)
    return p


def _fill(p: argparse.ArgumentParser, name: str) -> None:
    for action in p._actions:
        if action.help is None:
            key = action.option_strings[0] if action.option_strings else action.dest
            action.help = OPTIONS.get(key)
    if name in EXAMPLES and not p.epilog:
        p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        p.formatter_class = argparse.RawDescriptionHelpFormatter
