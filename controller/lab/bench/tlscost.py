"""What TLS costs the controller's OpenFlow channel: flow-mods/s, connect and small-bundle
latency over a unix socket, plaintext TCP and TLS (CN-pinned, as veil dials hosts).

One private OVS (netdev br-int, secure) in its own namespace with the three listeners:
``punix`` (br-int.mgmt), ``ptcp:16653:127.0.0.1`` and ``pssl:16654:127.0.0.1`` using a host
certificate from a throwaway veil PKI (the SSL row, as ``veil join`` writes it). The process
enters the namespace (setns) so 127.0.0.1 is the switch's. Same method as figure 5
(flowmods.py): n L2-lookup flows as one bundle into an empty br-int, then del-flows.

    python -m controller.lab.bench.tlscost [--flows 20000] [--reps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from controller.lab import netns
from controller.lab.lab import new_prefix
from controller.lab.bench.flowmods import in_netns_child, l2_flows
from controller.lab.ovs import OvsInstance
from controller.northbound import pki as P
from controller.pipeline.diff import FlowDiff
from controller.southbound import tls
from controller.southbound.session import OfSession


def _count(ovs: OvsInstance) -> int:
    return sum(1 for line in ovs.ofctl("dump-flows").splitlines() if "actions=" in line)


def measure(n: int, reps: int, small: int = 12, small_reps: int = 200) -> dict[str, object]:
    now = datetime.now(P.UTC)
    work = Path(tempfile.mkdtemp(prefix="veil-tlscost-"))
    ns = f"{new_prefix()}tc"  # random per run: two benches (or a test) never share it
    netns.add_netns(ns)
    ovs = OvsInstance(work / "ovs", ns=ns)
    out: dict[str, object] = {}
    try:
        pki = P.Pki.open(work / "pki", now)
        key = P.new_key()
        cert = pki.enroll(pki.add_host("bench", now), P.make_csr(key, "bench"), now)
        P.write_private(work / "host-key.pem", P.key_pem(key))
        P.write_file(work / "host-cert.pem", P.cert_pem(cert))
        ovs.start(system_id="bench")
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
                  "fail_mode=secure", "other_config:disable-in-band=true")
        ovs.vsctl("set-ssl", str(work / "host-key.pem"), str(work / "host-cert.pem"),
                  str(pki.controller_ca.cert_path))
        ovs.vsctl("set-controller", "br-int", "ptcp:16653:127.0.0.1", "pssl:16654:127.0.0.1")
        ident = pki.controller_identity(now)
        tls.configure(tls.ClientTls(ident.key, ident.cert, pki.host_ca.cert_path,
                                    pki.host_ca.crl_path), allow_plaintext=True)
        got = in_netns_child(ns, lambda: _run(ovs, n, reps, small, small_reps))
        out = got if isinstance(got, dict) else {}
    finally:
        ovs.stop()
        netns.delete_netns(ns)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _run(ovs: OvsInstance, n: int, reps: int, small: int, small_reps: int) -> dict[str, object]:
    out: dict[str, object] = {}
    time.sleep(0.5)  # the listeners come up with the bridge reconfiguration
    targets = {"unix": f"unix:{ovs.mgmt_sock('br-int')}", "tcp": "tcp:127.0.0.1:16653",
               "tls": tls.pin("ssl:127.0.0.1:16654", "bench")}
    flows = l2_flows(n)
    few = l2_flows(small, vni=200)
    for name, target in targets.items():
        connect = []
        for _ in range(20):
            t = time.perf_counter()
            s = OfSession(target, lambda m: None, lambda: None, timeout=60)
            connect.append(time.perf_counter() - t)
            s.close()
        s = OfSession(target, lambda m: None, lambda: None, timeout=120)
        rates, lat = [], []
        try:
            for _ in range(reps):
                t = time.perf_counter()
                s.apply(FlowDiff(flows, ()))
                rates.append(n / (time.perf_counter() - t))
                if _count(ovs) != n:
                    raise RuntimeError(f"{name}: {_count(ovs)} flows, not {n}")
                ovs.ofctl("del-flows")
            for _ in range(small_reps):
                t = time.perf_counter()
                s.apply(FlowDiff(few, ()))
                s.apply(FlowDiff((), tuple(f.ident for f in few)))
                lat.append((time.perf_counter() - t) / 2)
        finally:
            s.close()
        lat.sort()
        out[name] = {
            "flow-mods/s median": round(statistics.median(rates)),
            "flow-mods/s all": [round(r) for r in rates],
            "connect+handshake ms median": round(statistics.median(connect) * 1000, 2),
            f"{small}-flow bundle ms median": round(lat[len(lat) // 2] * 1000, 3),
            f"{small}-flow bundle ms p95": round(lat[int(len(lat) * 0.95)] * 1000, 3),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tlscost")
    p.add_argument("--flows", type=int, default=20000)
    p.add_argument("--reps", type=int, default=4)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.flows, a.reps), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
