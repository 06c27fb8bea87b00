"""Host-wide guard: keep the host's own IP stack off VM taps (userspace / netdev datapath).

With ``datapath_type=netdev`` ovs-vswitchd reads a VM's tap through an AF_PACKET socket and the
kernel ALSO hands every frame to the host's IP stack, bypassing br-int's isolation flows: a VM
could reach host services or have a forwarding host route forged tunnel packets. OVS's packet
socket sees frames before netfilter, so a raw-table DROP on the tap name patterns (and an
arptables INPUT drop, so the host does not answer ARP there either) closes that path without
touching br-int. The rules use interface wildcards (``vnet+``, ``tap+``, ``vif+``)
and are installed ONCE per host (``veil join``, the installers, ``veil-host-guard``): the hooks
pay nothing per VIF. Every rule carries the comment ``veil-host-guard``; ``off`` removes
exactly those.

Shape: read what is installed -> pure diff against the wanted rules -> one place runs the
iptables/ip6tables commands.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Mapping, Sequence
from typing import NamedTuple, Tuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final  # novm: type checking only (3.8+; dom0 runs 3.6)

from hooks.ovsdb import DEFAULT_DB

COMMENT: "Final" = "veil-host-guard"
TAP_PATTERNS: "Final" = ("vnet+", "tap+", "vif+")  # libvirt, generic/Xen HVM emulated, Xen PV
TOOLS: "Final" = ("iptables", "ip6tables")
ARP_TOOL: "Final" = "arptables"
ARP_CHAIN: "Final" = COMMENT
TABLE: "Final" = "raw"
CHAIN: "Final" = "PREROUTING"
MODES: "Final" = ("auto", "on", "off")


class HostGuardError(RuntimeError):
    """The guard cannot be decided or applied; the message says what to do."""


class Rule(NamedTuple):
    """One raw-table DROP for an interface pattern, in one address family's tool."""

    tool: str
    iface: str

    def spec(self) -> "list[str]":
        return ["-i", self.iface, "-m", "comment", "--comment", COMMENT, "-j", "DROP"]


class Installed(NamedTuple):
    """A veil-tagged rule as listed by ``-S``: ``args`` deletes exactly it."""

    rule: Rule
    args: Tuple[str, ...]


def wanted_rules(enabled: bool, patterns: "Sequence[str]" = TAP_PATTERNS) -> "frozenset[Rule]":
    return frozenset(Rule(t, p) for t in TOOLS for p in patterns) if enabled else frozenset()


def decide(mode: str, datapaths: "Mapping[str, str]", local_links: "frozenset[str]") -> bool:
    """Whether the guard should be on.

    ``auto`` guards when a bridge with the userspace datapath lives in THIS network namespace
    (its internal port is one of ``local_links``): netfilter rules are per namespace, and the
    kernel datapath never hands port frames to the host stack.
    """
    if mode not in MODES:
        raise HostGuardError(f"--host-guard {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "on"
    return any(dp == "netdev" and br in local_links for br, dp in datapaths.items())


def parse_listing(tool: str, listing: str) -> "list[Installed]":
    """veil's rules in ``TOOL -t raw -S PREROUTING`` output (other rules are not ours)."""
    found = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] != ["-A", CHAIN] or COMMENT not in _after(words, "--comment"):
            continue
        found.append(Installed(Rule(tool, _after(words, "-i")), tuple(words[1:])))
    return found


def _after(words: "list[str]", flag: str) -> str:
    return words[words.index(flag) + 1] if flag in words[:-1] else ""


def plan(wanted: "frozenset[Rule]", installed: "Sequence[Installed]") -> "list[list[str]]":
    """argv lists that turn ``installed`` into ``wanted``: deletions first, then inserts.

    A duplicate of a wanted rule (two installers racing) is deleted too, so the end state holds
    each rule exactly once.
    """
    cmds: "list[list[str]]" = []
    kept: "set[Rule]" = set()
    for inst in installed:
        if inst.rule in wanted and inst.rule not in kept:
            kept.add(inst.rule)
        else:
            cmds.append([inst.rule.tool, "-w", "-t", TABLE, "-D", *inst.args])
    for rule in sorted(wanted - kept, key=lambda r: (r.tool, r.iface)):
        cmds.append([rule.tool, "-w", "-t", TABLE, "-I", CHAIN, *rule.spec()])
    return cmds


Runner = Callable[[Sequence[str]], str]


def run_checked(argv: "Sequence[str]") -> str:
    """Run one iptables command; a missing tool or a failure raises with its stderr."""
    if shutil.which(argv[0]) is None:
        raise HostGuardError(
            f"{argv[0]} not found: install the iptables package (its iptables, ip6tables and "
            "arptables drop VM-tap traffic to the host stack) or pass --host-guard off")
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise HostGuardError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def installed_rules(run: "Runner" = run_checked, tools: "Sequence[str]" = TOOLS) -> "list[Installed]":
    return [r for tool in tools
            for r in parse_listing(tool, run([tool, "-w", "-t", TABLE, "-S", CHAIN]))]


class ArpState(NamedTuple):
    """veil's part of ``arptables -S``: its chain, the INPUT jumps to it, the patterns in it."""

    chain: bool = False
    jumps: int = 0
    ifaces: Tuple[str, ...] = ()


def parse_arp_listing(listing: str) -> "ArpState":
    chain, jumps, ifaces = False, 0, []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words == ["-N", ARP_CHAIN]:
            chain = True
        elif words[:2] == ["-A", "INPUT"] and _after(words, "-j") == ARP_CHAIN:
            jumps += 1
        elif words[:2] == ["-A", ARP_CHAIN]:
            ifaces.append(_after(words, "-i"))
    return ArpState(chain, jumps, tuple(ifaces))


def plan_arp(enabled: bool, state: "ArpState", patterns: "Sequence[str]" = TAP_PATTERNS) -> "list[list[str]]":
    """arptables commands turning ``state`` into the wanted one (ARP never reaches iptables).

    arptables has no comment match: veil's ARP drops live in a chain of their own, named like
    the comment, which INPUT jumps to once; ``off`` removes the jump and the chain.
    """
    tool = ARP_TOOL
    if not enabled:
        cmds = [[tool, "-D", "INPUT", "-j", ARP_CHAIN]] * state.jumps
        return cmds + ([[tool, "-F", ARP_CHAIN], [tool, "-X", ARP_CHAIN]] if state.chain else [])
    cmds = [] if state.chain else [[tool, "-N", ARP_CHAIN]]
    if state.ifaces != tuple(patterns):
        cmds += [[tool, "-F", ARP_CHAIN]] if state.ifaces else []
        cmds += [[tool, "-A", ARP_CHAIN, "-i", p, "-j", "DROP"] for p in patterns]
    if state.jumps == 0:
        cmds.append([tool, "-I", "INPUT", "-j", ARP_CHAIN])
    cmds += [[tool, "-D", "INPUT", "-j", ARP_CHAIN]] * max(state.jumps - 1, 0)
    return cmds


def apply(enabled: bool, run: "Runner" = run_checked) -> "list[list[str]]":
    """Make the host's rules match ``enabled``; returns the commands run (empty: nothing to do)."""
    # Without the tool nothing of ours can be installed: turning the guard off needs no tool.
    tools = TOOLS if enabled else tuple(t for t in TOOLS if shutil.which(t))
    cmds = plan(wanted_rules(enabled), installed_rules(run, tools))
    if enabled or shutil.which(ARP_TOOL):
        cmds += plan_arp(enabled, parse_arp_listing(run([ARP_TOOL, "-S"])))
    for argv in cmds:
        run(argv)
    return cmds


def local_links() -> "frozenset[str]":
    """Network interfaces of this process's network namespace."""
    return frozenset(os.listdir("/sys/class/net"))


def bridge_datapaths(db_remote: str, timeout: float = 10.0) -> "dict[str, str]":
    """{bridge: datapath_type} read from an OVSDB (one JSON-RPC select: this runs in XenServer's
    dom0 too, which has no ovsdbapp)."""
    from hooks.errors import RegistrarError
    from hooks.ovsdb.rpc import RpcRegistrar

    client = RpcRegistrar(db_remote, timeout=timeout)
    try:
        rows = client.select("Bridge", ["name", "datapath_type"])
    except RegistrarError as exc:
        raise HostGuardError(f"cannot read the bridges' datapath types: {exc}: "
                             "start Open vSwitch, or pass --host-guard on|off") from None
    finally:
        client.close()
    return {str(r.get("name")): str(r.get("datapath_type")) for r in rows}


def datapaths_via(api: object) -> "dict[str, str]":
    """{bridge: datapath_type} through an already open ovsdbapp Open_vSwitch API."""
    rows = api.db_list("Bridge", columns=["name", "datapath_type"]).execute(  # type: ignore[attr-defined]
        check_error=True)
    return {str(r["name"]): str(r["datapath_type"]) for r in rows}


def ensure(mode: str, datapaths: "Callable[[], Mapping[str, str]]") -> str:
    """Decide and apply; returns a one-line report. ``datapaths`` is read only for ``auto``."""
    enabled = decide(mode, datapaths() if mode == "auto" else {}, local_links())
    cmds = apply(enabled)
    state = "on" if enabled else "off"
    return f"host guard {state} ({mode}): {len(cmds)} rule change(s)"


def add_argument(p: "argparse.ArgumentParser") -> None:
    p.add_argument("--host-guard", choices=MODES, default="auto",
                   help="drop VM-tap (vnet+, tap+, vif+) traffic to the host's IP stack in the "
                        "raw table: auto = when a local bridge uses datapath_type=netdev; "
                        "off removes veil's rules (default auto)")


def main(argv: "Sequence[str] | None" = None) -> int:
    p = argparse.ArgumentParser(prog="veil-host-guard", description=__doc__.splitlines()[0] if __doc__ else None)
    add_argument(p)
    p.add_argument("--db", default=DEFAULT_DB, help="OVSDB to read datapath types from (auto)")
    a = p.parse_args(argv)
    try:
        print(ensure(a.host_guard, lambda: bridge_datapaths(a.db)))
    except HostGuardError as exc:
        print(f"veil-host-guard: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
