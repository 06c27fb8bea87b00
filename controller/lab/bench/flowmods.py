"""Figure 5: flow-mods per second pushed into one real ovs-vswitchd.

veil's own sender (``OfSession.apply``: os-ken encoding, one atomic OpenFlow 1.4 bundle) against
the reference ``ovs-ofctl --bundle add-flows`` of the same flows, and veil's sender again over
TLS to the switch's ``pssl:`` listener (the channel veil uses in production: CN-pinned, host
certificate from a throwaway veil PKI written as ``veil join`` does). The switch is a private
OVS in its own namespace ``<prefix>-f5``, br-int netdev in secure mode like every veil host;
the TLS sender runs in a forked child that entered the namespace (its 127.0.0.1 is the
switch's).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from controller.southbound import ofp
from controller.pipeline import tables as P
from controller.pipeline.diff import FlowDiff
from controller.pipeline.flows import Flow, Match, Output, to_ofctl
from controller.lab import netns
from controller.lab.bench.results import Goal, Result
from controller.lab.hostjoin import enter_netns
from controller.lab.ovs import OvsInstance
from controller.northbound import pki as K
from controller.southbound import tls
from controller.southbound.session import OfSession

Clock = Callable[[], float]
FIG5 = "5"
TITLE = "flow-mods per second into one switch"
TLS = "veil-tls"  # the figure's row for veil's sender over TLS
TLS_PORT = 16654
SYSTEM_ID = "f5"


def l2_flows(n: int, vni: int = 100) -> tuple[Flow, ...]:
    """``n`` distinct, pipeline-valid L2 lookup flows (one per remote MAC, as a big network has)."""
    return tuple(
        P.check_flow(Flow(P.L2_LOOKUP, 100, Match.of(metadata=vni, eth_dst=f"52:54:00:{i >> 16 & 255:02x}:"
                                                     f"{i >> 8 & 255:02x}:{i & 255:02x}"), (Output(1),)))
        for i in range(n)
    )


def _count(ovs: OvsInstance) -> int:
    return sum(1 for line in ovs.ofctl("dump-flows").splitlines() if "actions=" in line)


def in_netns_child(ns: str, body: Callable[[], object]) -> object:
    """Run ``body`` in a forked child inside ``ns`` (deleting a namespace kills every process
    in it, so the measuring process must not be one of them); its result comes back as JSON,
    an exception as ``RuntimeError``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            enter_netns(ns)
            data = json.dumps({"ok": body()}).encode()
        except BaseException as e:
            data, code = json.dumps({"error": repr(e)}).encode(), 1
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data) if data else {"error": "the child died without a word"}
    if "error" in result:
        raise RuntimeError(f"in {ns}: {result['error']}")
    return result["ok"]


def listen_tls(ovs: OvsInstance, work: Path) -> tls.ClientTls:
    """Give ``ovs`` a host certificate from a throwaway veil PKI in ``work`` (``set-ssl``, as
    ``veil join`` writes the SSL row) and a ``pssl:`` OpenFlow listener on 127.0.0.1; returns
    the controller's identity that dials it."""
    now = datetime.now(K.UTC)
    pki = K.Pki.open(work / "pki", now)
    key = K.new_key()
    cert = pki.enroll(pki.add_host(SYSTEM_ID, now), K.make_csr(key, SYSTEM_ID), now)
    K.write_private(work / "host-key.pem", K.key_pem(key))
    K.write_file(work / "host-cert.pem", K.cert_pem(cert))
    ovs.vsctl("set-ssl", str(work / "host-key.pem"), str(work / "host-cert.pem"),
              str(pki.controller_ca.cert_path))
    ovs.vsctl("set-controller", "br-int", f"pssl:{TLS_PORT}:127.0.0.1")
    ident = pki.controller_identity(now)
    return tls.ClientTls(ident.key, ident.cert, pki.host_ca.cert_path, pki.host_ca.crl_path)


def _tls_pushes(ovs: OvsInstance, ident: tls.ClientTls, flows: tuple[Flow, ...], reps: int,
                clock: Clock) -> list[float]:
    """In the switch's namespace: ``reps`` pushes over TLS, each checked and deleted."""
    tls.configure(ident)  # this child's own process state
    target = tls.pin(f"ssl:127.0.0.1:{TLS_PORT}", SYSTEM_ID)
    deadline = time.monotonic() + 10  # the listener comes up with the bridge reconfiguration
    while True:
        try:
            session = OfSession(target, lambda m: None, lambda: None, timeout=120)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    rates = []
    try:
        for _ in range(reps):
            t = clock()
            session.apply(FlowDiff(flows, ()))
            rates.append(len(flows) / (clock() - t))
            if _count(ovs) != len(flows):
                raise RuntimeError(f"veil's bundle over TLS left {_count(ovs)} flows, not {len(flows)}")
            ovs.ofctl("del-flows")
    finally:
        session.close()
    return rates


def measure(prefix: str, rundir: Path, n: int, reps: int, goal: Goal, clock: Clock = time.perf_counter) -> list[Result]:
    """The three senders into one private switch; ``rundir`` (the switch's) is removed afterwards."""
    ns = f"{prefix}-f5"
    netns.add_netns(ns)
    ovs = OvsInstance(rundir, ns=ns)
    try:
        ovs.start(system_id="f5")
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
                  "other_config:disable-in-band=true")
        flows = l2_flows(n)
        text = rundir / "flows.txt"
        text.write_text("\n".join(to_ofctl(f) for f in flows) + "\n")
        veil: list[float] = []
        ofctl: list[float] = []
        encode: list[float] = []
        session = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None, timeout=120)
        try:
            for _ in range(reps):
                t = clock()
                session.apply(FlowDiff(flows, ()))
                veil.append(n / (clock() - t))
                t = clock()
                for item in ofp.diff_items(FlowDiff(flows, ())):  # what apply() encodes, alone
                    ofp.item_wire(item)
                encode.append(n / (clock() - t))
                if _count(ovs) != n:
                    raise RuntimeError(f"veil's bundle left {_count(ovs)} flows, not {n}")
                ovs.ofctl("del-flows")
                t = clock()
                netns.run(["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows",
                           f"unix:{ovs.mgmt_sock('br-int')}", str(text)], env=ovs.env(), timeout=300)
                ofctl.append(n / (clock() - t))
                if _count(ovs) != n:
                    raise RuntimeError(f"ovs-ofctl left {_count(ovs)} flows, not {n}")
                ovs.ofctl("del-flows")
        finally:
            session.close()
        ident = listen_tls(ovs, rundir)
        got = in_netns_child(ns, lambda: _tls_pushes(ovs, ident, flows, reps, clock))
        over_tls = [float(x) for x in got] if isinstance(got, list) else []
    finally:
        ovs.stop()
        netns.delete_netns(ns)
        shutil.rmtree(rundir, ignore_errors=True)
    how = f"{reps}x {n:,} L2-lookup flows as one atomic bundle into an empty br-int (netdev), then del-flows"
    return [
        Result(FIG5, TITLE, "veil", "flow-mods/s", tuple(veil), (goal,),
               method=f"veil's OfSession.apply (its encoder, streamed OpenFlow 1.4 bundle over the unix socket); {how}",
               notes=(f"encoding alone (ofp.item_wire, as apply does it): {sorted(encode)[len(encode) // 2]:,.0f} "
                      f"flow-mods/s; the first push (encoder caches cold): {veil[0]:,.0f} flow-mods/s"),
               extra={"encode-only flow-mods/s": sorted(encode)[len(encode) // 2]}),
        Result(FIG5, TITLE, "ovs-ofctl", "flow-mods/s", tuple(ofctl),
               method=f"ovs-ofctl -O OpenFlow14 --bundle add-flows of the same flows (reference); {how}"),
        Result(FIG5, TITLE, TLS, "flow-mods/s", tuple(over_tls), (goal,),
               method=(f"veil's OfSession.apply over TLS (TLS 1.2+, CN-pinned vssl: as veil dials a host) to the "
                       f"switch's pssl:{TLS_PORT}:127.0.0.1 listener with a host certificate from a throwaway veil "
                       f"PKI; after the unix rows, same switch and flows; {how}")),
    ]
