"""Thin, checked wrappers over iproute2 for namespaces and veth pairs.

Every command runs with an explicit argv (no shell) and fails with the command and its stderr,
so a broken lab step says exactly what broke.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence


class CommandError(RuntimeError):
    """A lab command exited non-zero; the message carries argv and stderr."""


def run(
    argv: Sequence[str],
    *,
    ns: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 30.0,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (inside network namespace ``ns`` when given) and capture its output."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    merged = dict(os.environ)
    if env:
        merged.update(env)
    try:
        proc = subprocess.run(
            full,
            capture_output=True,
            text=True,
            env=merged,
            timeout=timeout,
            input=input_text,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{argv[0]}: not installed ({exc.filename} not found)") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"timed out after {timeout}s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        raise CommandError(
            f"exit {proc.returncode}: {' '.join(full)}: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def list_netns() -> list[str]:
    """Names of all network namespaces on this machine."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "link", "set", "lo", "up"], ns=name)


def netns_pids(name: str) -> list[int]:
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.strip().isdigit()]


def kill_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM the given processes, then SIGKILL whatever is still alive after ``grace``."""
    alive = [p for p in pids if _signal(p, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _exists(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def delete_netns(name: str) -> None:
    """Kill every process inside namespace ``name``, then delete it (its veths go with it)."""
    if name not in list_netns():
        return
    kill_pids(netns_pids(name))
    run(["ip", "netns", "delete", name])


def add_veth(a_ns: str, a_name: str, b_ns: str, b_name: str, mtu: int = 1500) -> None:
    """Create a veth pair directly inside two namespaces (nothing touches the root namespace)."""
    run(
        ["ip", "link", "add", a_name, "netns", a_ns, "mtu", str(mtu), "type", "veth",
         "peer", "name", b_name, "netns", b_ns, "mtu", str(mtu)]
    )
    for ns, dev in ((a_ns, a_name), (b_ns, b_name)):
        # Checksum offload on a veth whose peer is an OVS userspace port breaks TCP.
        run(["ethtool", "-K", dev, "tx", "off"], ns=ns)
        run(["ip", "link", "set", dev, "up"], ns=ns)


def guard_host_stack(ns: str, dev: str) -> None:
    """Keep the host's own IP stack off a VM port (the netdev datapath needs this).

    With the userspace datapath OVS reads the VM's veth/tap through AF_PACKET, and the kernel
    ALSO hands every frame to the host's IP stack, bypassing br-int and its isolation flows:
    a VM could talk to host services or have the host route packets (even forged tunnel
    packets) for it. OVS's packet socket sees frames before netfilter, so dropping in the raw
    table keeps br-int working; IPv6 off and arp_ignore=8 keep the host silent on the port.
    """
    run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"], ns=ns)
    run(["sysctl", "-qw", f"net.ipv4.conf.{dev}.arp_ignore=8"], ns=ns)
    for tool in ("iptables", "ip6tables"):
        run([tool, "-w", "-t", "raw", "-I", "PREROUTING", "-i", dev, "-j", "DROP"], ns=ns)


def unguard_host_stack(ns: str, dev: str) -> None:
    """Remove the raw-table drops of :func:`guard_host_stack` (the port is going away)."""
    for tool in ("iptables", "ip6tables"):
        run([tool, "-w", "-t", "raw", "-D", "PREROUTING", "-i", dev, "-j", "DROP"], ns=ns, check=False)


def _exists(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
