"""Join lab hosts over TLS, each from inside its own namespace: the lab's `veil join --token`.

Why a helper process that forks: each host must reach the controller over the underlay from
its own network namespace, as a real hypervisor would, and python-ovs' SSL identity is
process-global, so each join needs a process of its own. Importing veil costs ~0.5 s of CPU;
one helper imports once and forks a child per host, which enters the host's namespace
(``setns``; single-threaded after the fork) and calls the typed function behind `veil join
--token` (``controller.hosttls.join_with_tls``), not the CLI's argv. The helper starts with
the controller and each child waits for the controller's listeners, so imports overlap.

    python -m controller.lab.hostjoin '[{"ns": ..., "controller": ..., "token": ...}, ...]'
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.hosttls import join_with_tls
from controller.join import host_record

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class JoinSpec:
    ns: str  # the host's network namespace
    controller: str  # ssl:CTL:6641
    enroll: str  # https://CTL:6645
    token: str
    system_id: str
    underlay_ip: str
    tunnel_types: str
    host_db: str  # the host's own OVSDB (unix socket)
    pki_dir: str


def argv(python: str, specs: Sequence[JoinSpec]) -> list[str]:
    return [python, "-m", "controller.lab.hostjoin", json.dumps([asdict(s) for s in specs])]


def enter_netns(name: str) -> None:
    """setns(2) into ``/run/netns/NAME`` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def wait_listening(addresses: Sequence[tuple[str, int]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for address in addresses:
        while True:
            try:
                socket.create_connection(address, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"controller {address} not listening in {timeout:g}s")
                time.sleep(0.02)


def join_one(spec: JoinSpec, timeout: float) -> None:
    enter_netns(spec.ns)
    relay = spec.controller.split(":")
    enroll = spec.enroll.removeprefix("https://").split(":")
    wait_listening([(enroll[0], int(enroll[1])), (relay[1], int(relay[2]))], timeout)
    ip = spec.underlay_ip
    rec = host_record(spec.system_id, ip, spec.tunnel_types, f"ssl:{ip}:6640", f"ssl:{ip}:6653")
    # no host guard: the lab guards each VM port itself (Lab.plug_vm)
    join_with_tls(spec.controller, rec, spec.host_db, Path(spec.pki_dir), spec.token,
                  spec.enroll, host_guard=None)


def main(args: Sequence[str] | None = None, timeout: float = 30.0) -> int:
    specs = [JoinSpec(**d) for d in json.loads(list(sys.argv[1:] if args is None else args)[0])]
    children: dict[int, str] = {}
    for spec in specs:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                join_one(spec, timeout)
            except BaseException:
                sys.stderr.write(f"{spec.system_id}: {traceback.format_exc()}")
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        children[pid] = spec.system_id
    failed = []
    for pid, name in children.items():
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(name)
    if failed:
        sys.stderr.write(f"join failed: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
