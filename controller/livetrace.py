"""`veil trace --live`: the traced packet through the real switches, held against the model.

For every hop of a trace (controller/trace.py) the same packet, entering the same port, goes
through that host's ``ovs-appctl ofproto/trace br-int`` (the destination host's hop enters
from its tunnel port with the VNI the sender set, so the tunnel's far side is traced too). The
rules that decided (by veil's content cookie, which names the exact flow) and the ports the
switch output to must be the model's; any difference is reported as a veil bug: the switch
does not hold what the controller computes, or OVS reads a flow otherwise than veil means it.

How a host's ``ofproto/trace`` is reached is the caller's (``Appctl``): a lab runs it in the
host's namespace, `veil trace --live` on the hypervisor it runs on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.pipeline.fields import FIELDS
from controller.pipeline.flows import COOKIE_TAG, COOKIE_TAG_MASK

CONTROLLER_PORT = -1
Appctl = Callable[[str, Sequence[str]], str]  # (host, ofproto/trace arguments) -> its output

_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)')
_TABLE = re.compile(r"^\s?(\d+)\. .*?(?:cookie (0x[0-9a-f]+))?$")
_OUTPUT = re.compile(r"^\s+output:(\d+)\s*$")
_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")


@dataclass(frozen=True)
class SwitchTrace:
    """What ``ofproto/trace`` says br-int did: veil's rules by (table, cookie), outputs."""

    rules: tuple[tuple[int, int], ...]
    outputs: frozenset[int]


def flow_spec(in_port: int, packet: Mapping[str, Any]) -> str:
    """The packet in ``ofproto/trace`` flow syntax (ovs-ofctl field names)."""
    parts = [f"in_port={in_port}"]
    for name, value in packet.items():
        if name in ("in_port", "metadata") or (name in ("ip_frag", "vlan_vid") and
                                               value in (0, "0")):
            continue  # (untagged and not a fragment: ofproto/trace's defaults)
        parts.append(f"{FIELDS[name].ofctl}={value}")
    return ",".join(parts)


def parse(text: str, in_port: int) -> SwitchTrace:
    """The br-int part of an ``ofproto/trace`` output (the nested tunnel bridges skipped)."""
    rules: list[tuple[int, int]] = []
    outputs: set[int] = set()
    bridge = "br-int"
    for line in text.splitlines():
        if m := _BRIDGE.match(line):
            bridge = m.group(1)
            continue
        if line.startswith(("Final flow:", "Megaflow:", "Datapath actions:")):
            bridge = ""
        if bridge != "br-int":
            continue
        if m := _TABLE.match(line):
            cookie = int(m.group(2), 16) if m.group(2) else 0
            if cookie & COOKIE_TAG_MASK == COOKIE_TAG:
                rules.append((int(m.group(1)), cookie))
        elif (m := _OUTPUT.match(line)) and int(m.group(1)) != in_port:
            outputs.add(int(m.group(1)))  # (OVS skips an output to the input port)
        elif line.strip() == "IN_PORT":
            outputs.add(in_port)
        elif line.strip().startswith("controller("):
            outputs.add(CONTROLLER_PORT)
    return SwitchTrace(tuple(rules), frozenset(outputs))


def model_of(hop: Mapping[str, Any]) -> SwitchTrace:
    """What the model says the same hop does (from the trace's JSON)."""
    rules = []
    for d in hop["decisions"]:
        if m := _COOKIE.search(d["rule"]):
            rules.append((int(d["table"]), int(m.group(1), 16)))
    return SwitchTrace(tuple(rules), frozenset(int(p) for p in hop["outputs"]))


@dataclass(frozen=True)
class HopCheck:
    host: str
    agrees: bool | None  # None: not traced (``why`` says so)
    why: str


def check(doc: Mapping[str, Any], appctl: Appctl, can_trace: Callable[[str], bool]
          ) -> list[HopCheck]:
    """Each hop of trace ``doc`` through its host's real switch, against the model."""
    out = []
    for hop in doc["hops"]:
        host = hop["host"]
        if not can_trace(host):
            out.append(HopCheck(host, None, f"not traced live from here (run `veil trace "
                                f"--live` on {host})"))
            continue
        spec = flow_spec(int(hop["in_port"]), hop["packet"])
        try:
            text = appctl(host, ["ofproto/trace", "br-int", spec])
        except (OSError, RuntimeError) as exc:
            out.append(HopCheck(host, None, f"ofproto/trace failed: {exc}"))
            continue
        live, model = parse(text, int(hop["in_port"])), model_of(hop)
        if live == model:
            out.append(HopCheck(host, True, f"the switch agrees: {len(live.rules)} rules, "
                                f"output to {sorted(live.outputs) or 'nothing (dropped)'}"))
            continue
        diffs = []
        if live.rules != model.rules:
            diffs.append(f"rules (table, cookie): switch {_rules(live)}, model {_rules(model)}")
        if live.outputs != model.outputs:
            diffs.append(f"outputs: switch {sorted(live.outputs)}, model {sorted(model.outputs)}")
        out.append(HopCheck(host, False, "MISMATCH (a veil bug: please report it with this "
                            f"trace): {'; '.join(diffs)}; ofproto/trace {spec}"))
    return out


def _rules(t: SwitchTrace) -> str:
    return "[" + ", ".join(f"({table}, {cookie:#x})" for table, cookie in t.rules) + "]"
