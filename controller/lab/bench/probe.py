"""Tiny probes run inside a lab VM's namespace (``ip netns exec NS python -m ...probe``).

iputils ping cannot send faster than every ~16 ms here and slows down while replies are
missing (lab notes), so latency and outage figures use this probe instead: an ICMP echo every
``interval`` (1 ms by default) from a raw socket, reply times read from CLOCK_MONOTONIC, which
is shared by every namespace, so the harness can compare them with its own timestamps.
Standard library only: it starts in ~30 ms and prints ``ready`` before the first echo.

  first-reply DST [--timeout S]       print the time of the first echo reply, then exit
  gaps DST --duration S               print every reply time (JSON) after S seconds
  switch OLD NEW MAC [--at MS,...]    on a "go" line: NIC OLD down, NEW up (a migration's
                                      switch-over), then QEMU's self-announce RARPs from NEW
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ETH_P_RARP = 0x8035
QEMU_ANNOUNCE_MS = (0, 50, 150, 250, 350)  # QEMU's default self-announce schedule


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    payload = b"veilprob"
    head = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number if ``packet`` (IPv4 + ICMP) is an echo reply to us, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:ihl + 8]
    if len(icmp) < 8:
        return None
    kind, _, _, rid, seq = struct.unpack("!BBHHH", icmp)
    return seq if kind == ICMP_ECHO_REPLY and rid == ident else None


def rarp_frame(mac: str) -> bytes:
    """What QEMU sends to announce a migrated guest: a RARP 'request reverse' from its MAC."""
    hw = bytes(int(x, 16) for x in mac.split(":"))
    eth = b"\xff" * 6 + hw + struct.pack("!H", ETH_P_RARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + hw + b"\0" * 4 + hw + b"\0" * 4
    return eth + arp + b"\0" * (60 - len(eth) - len(arp))


def _pinger(dst: str, interval: float, until: float, stop_at_first: bool) -> tuple[list[float], int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    replies: list[float] = []
    seq = 0
    print("ready", flush=True)
    next_send = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= until:
            break
        if now >= next_send:
            try:
                sock.sendto(echo_request(ident, seq & 0xFFFF), (dst, 0))
            except OSError:
                pass  # no route while the VM's NIC is being swapped: keep probing
            seq += 1
            next_send += interval
            if next_send < now:
                next_send = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, until) - time.monotonic()))
        if ready:
            while True:
                try:
                    pkt = sock.recv(2048)
                except BlockingIOError:
                    break
                if parse_reply(pkt, ident) is not None:
                    replies.append(time.monotonic())
                    if stop_at_first:
                        return replies, seq
    return replies, seq


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the 24-byte union


def set_link(ctl: socket.socket, name: str, up: bool) -> None:
    """ip link set NAME up|down, as two ioctls (no process to start)."""
    _, flags = IFREQ.unpack(fcntl.ioctl(ctl, SIOCGIFFLAGS, IFREQ.pack(name.encode(), 0)))
    flags = flags | IFF_UP if up else flags & ~IFF_UP
    fcntl.ioctl(ctl, SIOCSIFFLAGS, IFREQ.pack(name.encode(), flags))


def switch(old: str, new: str, mac: str, at_ms: Sequence[int]) -> None:
    """On "go": take NIC ``old`` down, ``new`` up (already holding the VM's address and
    neighbours), then send QEMU's RARPs from ``new``. Started ahead of time, and done with
    ioctls and a packet socket made in advance, so the swap costs microseconds, not the ~15 ms
    an ``ip`` process plus a freshly bound packet socket took here. The packet socket has
    protocol 0 and is never bound: binding one registers a receive hook, which waits for an
    RCU grace period; ``sendto`` names the interface instead.
    """
    frame = rarp_frame(mac)
    ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("switch: expected 'go'")
    set_link(ctl, old, False)
    set_link(ctl, new, True)
    start = time.monotonic()
    for ms in at_ms:
        delay = start + ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(frame, (new, ETH_P_RARP))
        if ms == at_ms[0]:
            print(f"announce {time.monotonic():.6f}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    fr = sub.add_parser("first-reply")
    fr.add_argument("dst")
    fr.add_argument("--timeout", type=float, default=5.0)
    fr.add_argument("--interval", type=float, default=0.001)
    gp = sub.add_parser("gaps")
    gp.add_argument("dst")
    gp.add_argument("--duration", type=float, required=True)
    gp.add_argument("--interval", type=float, default=0.001)
    an = sub.add_parser("switch")
    an.add_argument("old")
    an.add_argument("new")
    an.add_argument("mac")
    an.add_argument("--at", default=",".join(map(str, QEMU_ANNOUNCE_MS)))
    args = p.parse_args(argv)
    if args.cmd == "first-reply":
        replies, sent = _pinger(args.dst, args.interval, time.monotonic() + args.timeout, True)
        print(f"reply {replies[0]:.6f}" if replies else f"timeout {sent}", flush=True)
        return 0 if replies else 1
    if args.cmd == "gaps":
        replies, sent = _pinger(args.dst, args.interval, time.monotonic() + args.duration, False)
        print(json.dumps({"sent": sent, "replies": replies}), flush=True)
        return 0
    switch(args.old, args.new, args.mac, [int(x) for x in args.at.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
