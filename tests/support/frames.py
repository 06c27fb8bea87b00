"""Raw frames VMs send in the lab tests (spoofing, announcements) and a capture of what a VM gets.

The isolation tests forge exactly the bytes an attacker would; building them here keeps one
copy of each frame layout for every lab test module.
"""

from __future__ import annotations

import signal
import subprocess
import time

from controller.lab.bench import reactive as reactive_bench
from controller.lab.lab import Lab

# Sends the hex frames argv[1:] from a VM's eth0 (run with python3 -c inside the VM namespace).
SEND_RAW = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
    "s.bind(('eth0',0))\n"
    "for h in sys.argv[1:]: s.send(bytes.fromhex(h))\n"
)

# Scans: sends UDP frames from eth0 to ever new unknown MACs (one copy, the reactive bench's).
SCAN = reactive_bench.SCAN


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ipv4_bytes(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, payload: bytes) -> str:
    udp = (4000).to_bytes(2, "big") + (4000).to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    ip = bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + b"\0\0\0\0\x40\x11\0\0" + \
        ipv4_bytes(src_ip) + ipv4_bytes(dst_ip)
    return (mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + ip + udp).hex()


def arp_frame(eth_src: str, op: int, sha: str, spa: str, tpa: str) -> str:
    body = b"\x00\x01\x08\x00\x06\x04" + op.to_bytes(2, "big") + mac_bytes(sha) + \
        ipv4_bytes(spa) + b"\0" * 6 + ipv4_bytes(tpa)
    return (b"\xff" * 6 + mac_bytes(eth_src) + b"\x08\x06" + body).hex()


def rarp_frame(mac: str) -> str:
    """QEMU's self-announce after a migration: RARP request, sender = target = the guest."""
    body = b"\x00\x01\x08\x00\x06\x04\x00\x03" + mac_bytes(mac) + b"\0" * 4 + \
        mac_bytes(mac) + b"\0" * 4
    return (b"\xff" * 6 + mac_bytes(mac) + b"\x80\x35" + body).hex()


class Capture:
    """tcpdump on one VM's eth0 for the duration of a ``with`` block (or on any node's ``dev``
    with ``node``: a host, the router)."""

    def __init__(self, lab: Lab, vm: str, bpf: str = "not ip6", *, node: bool = False,
                 dev: str = "eth0") -> None:
        ns = lab.node_ns(vm) if node else lab.vms[vm].ns
        self.argv = ["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-nn",
                     "-e", "-A", "-l", "-U", bpf]
        self.text = ""

    def __enter__(self) -> Capture:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # "listening on eth0 ...": capture is armed
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        self.text = out
