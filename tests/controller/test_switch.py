"""The runtime against a real ovs-vswitchd: flows sent by the real sender, checked by
ofproto/trace; reconnects without flush; atomic bundles; the whole controller on one host.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import cli
from controller.southbound import ofp
from controller.pipeline.compute import compute_flows
from controller.pipeline.diff import diff_flows
from controller.pipeline.flows import Flow, Match
from controller.southbound.hostdb import HOST_PROBE_MS, VEIL_IPS
from controller.lab.ovs import OvsInstance
from controller.core.model import Binding, Host, Network, State, Tenant
from controller.southbound.session import OfSession, OpenFlowError
from controller.service import Controller
from controller.lab import netns
from controller.northbound.store import HostRecord, Store, StoreServer, sync
from hooks import contract
from tests.support.poll import until

pytestmark = pytest.mark.lab
ip = ipaddress.ip_address
MAC = {1: "52:54:00:00:00:01", 2: "52:54:00:00:00:02", 3: "52:54:00:00:00:03"}


def add_ports(ovs: OvsInstance, n: int) -> None:
    for i in range(1, n + 1):
        ovs.vsctl("add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}",
                  "type=internal", f"ofport_request={i}")


def one_host_state() -> State:
    """a (port 1) and b (port 2) in tenant A's network; c (port 3) in tenant B's, same IP as b."""
    return State.build(
        [Tenant("A"), Tenant("B")], [Network("na", "A", 10), Network("nb", "B", 20)],
        [Host("h1", ip("198.18.0.1"))],
        [Binding("a", "h1", MAC[1], "na", 1, (ip("198.19.0.1"),)),
         Binding("b", "h1", MAC[2], "na", 2, (ip("198.19.0.2"),)),
         Binding("c", "h1", MAC[3], "nb", 3, (ip("198.19.0.2"),))],
    )


def trace(ovs: OvsInstance, flow: str) -> str:
    out = ovs.appctl("ofproto/trace", "br-int", flow)
    return out.split("Datapath actions:")[-1].strip().splitlines()[0]


def dp_port(ovs: OvsInstance, name: str) -> str:
    """The datapath port number trace prints for an interface."""
    out = ovs.appctl("dpif/show")
    for line in out.splitlines():
        if line.strip().startswith(f"{name} "):
            return line.split("/")[1].split()[0].rstrip(":")
    raise AssertionError(f"{name} not in {out}")


@pytest.fixture
def session(ovs: OvsInstance) -> Iterator[OfSession]:
    s = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None)
    try:
        yield s
    finally:
        s.close()


def test_sent_flows_forward_isolate_and_answer_arp(ovs: OvsInstance, session: OfSession) -> None:
    add_ports(ovs, 3)
    session.apply(diff_flows(compute_flows(one_host_state(), "h1"), session.installed()))
    p2, p3 = dp_port(ovs, "p2"), dp_port(ovs, "p3")
    to_b = f"in_port=1,ip,dl_src={MAC[1]},dl_dst={MAC[2]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
    assert trace(ovs, to_b) == p2
    # tenant B's VM has the same IP but another network: its MAC is unknown in A's network, so
    # the packet is flooded there (to b) and never reaches c
    to_c = f"in_port=1,ip,dl_src={MAC[1]},dl_dst={MAC[3]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
    assert trace(ovs, to_c) == p2 != p3
    # broadcast from c floods to nothing else (alone in its network); from a only to b
    bcast = "ip,dl_dst=ff:ff:ff:ff:ff:ff,nw_dst=198.19.0.255"
    assert trace(ovs, f"in_port=1,{bcast},dl_src={MAC[1]},nw_src=198.19.0.1") == p2
    assert trace(ovs, f"in_port=3,{bcast},dl_src={MAC[3]},nw_src=198.19.0.2") == "drop"
    # spoofing: wrong source MAC, wrong source IP, ARP with a foreign sender IP
    assert trace(ovs, to_b.replace(f"dl_src={MAC[1]}", "dl_src=52:54:00:ee:ee:ee")) == "drop"
    assert trace(ovs, to_b.replace("nw_src=198.19.0.1", "nw_src=198.19.0.2")) == "drop"
    arp = (f"in_port=1,arp,dl_src={MAC[1]},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
           f"arp_sha={MAC[1]},arp_tpa=198.19.0.2")
    assert trace(ovs, arp + ",arp_spa=198.19.1.1") == "drop"
    # IPv6 neighbour advertisements: for a's own link-local address pass, for b's die
    na = (f"in_port=1,icmp6,icmpv6_type=136,dl_src={MAC[1]},dl_dst=33:33:00:00:00:01,"
          "ipv6_src=fe80::5054:ff:fe00:1,nd_target=")
    assert trace(ovs, na + "fe80::5054:ff:fe00:1") == p2
    assert trace(ovs, na + "fe80::5054:ff:fe00:2") == "drop"
    assert trace(ovs, na + f"fe80::5054:ff:fe00:1,nd_tll={MAC[2]}") == "drop"
    ns = (f"in_port=1,icmp6,icmpv6_type=135,dl_src={MAC[1]},dl_dst=33:33:ff:00:00:02,"
          "ipv6_src=fe80::5054:ff:fe00:1,nd_target=fe80::5054:ff:fe00:2,nd_sll=")
    assert trace(ovs, ns + MAC[1]) == p2
    assert trace(ovs, ns + MAC[2]) == "drop"  # would poison b's neighbour cache
    # ARP for b's IP is answered on the spot, with b's MAC, back to a
    answer = trace(ovs, arp + ",arp_spa=198.19.0.1")
    assert f"sha={MAC[2]}" in answer and "op=2" in answer
    assert answer.endswith("," + dp_port(ovs, "p1"))


def test_session_sets_nx_match_fragments_so_port_security_sees_first_fragments(
        ovs: OvsInstance) -> None:
    """OVS's default fragment handling ("normal") reads every fragment's L4 ports as 0, so a
    fragmented DHCP OFFER passed port security. A veil session puts the switch in nx-match
    (OFPC_FRAG_NX_MATCH on connect): the OFFER's first fragment is dropped; its later
    fragments (no L4 header), a big datagram's fragments and an ICMPv4 echo's pass; every
    ICMPv6 first fragment is dropped."""
    add_ports(ovs, 3)
    assert ovs.ofctl("get-frags").strip() == "normal"  # OVS's default, before any session
    session = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None)
    try:
        assert ovs.ofctl("get-frags").strip() == "nx-match"
        session.apply(diff_flows(compute_flows(one_host_state(), "h1"), session.installed()))
    finally:
        session.close()
    assert ovs.ofctl("get-frags").strip() == "nx-match"  # the switch's, not the session's
    p2 = dp_port(ovs, "p2")
    udp = (f"in_port=1,udp,dl_src={MAC[1]},dl_dst=ff:ff:ff:ff:ff:ff,nw_src=198.19.0.1,"
           "nw_dst=255.255.255.255")
    assert trace(ovs, f"{udp},nw_frag=first,udp_src=67,udp_dst=68") == "drop"
    assert trace(ovs, f"{udp},nw_frag=no,udp_src=67,udp_dst=68") == "drop"
    assert trace(ovs, f"{udp},nw_frag=later") == p2  # opaque: useless without its first
    assert trace(ovs, f"{udp},nw_frag=first,udp_src=4000,udp_dst=4000") == p2  # controls
    icmp = f"in_port=1,icmp,dl_src={MAC[1]},dl_dst={MAC[2]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
    assert trace(ovs, f"{icmp},nw_frag=first,icmp_type=5") == "drop"  # a fragmented redirect
    assert trace(ovs, f"{icmp},nw_frag=first,icmp_type=8") == p2
    assert trace(ovs, f"{icmp},nw_frag=later") == p2
    echo6 = (f"in_port=1,icmp6,dl_src={MAC[1]},dl_dst={MAC[2]},ipv6_src=fe80::5054:ff:fe00:1,"
             "ipv6_dst=fe80::5054:ff:fe00:2,icmpv6_type=128")
    assert trace(ovs, echo6) == p2
    assert trace(ovs, f"{echo6},nw_frag=first") == "drop"


def test_reconnect_reconciles_without_flushing(ovs: OvsInstance, session: OfSession) -> None:
    add_ports(ovs, 3)
    ovs.ofctl("add-flow", "cookie=0x1,table=5,priority=1,actions=drop")  # someone else's flow
    state = one_host_state()
    desired = compute_flows(state, "h1")
    session.apply(diff_flows(desired, session.installed()))
    session.close()
    again = OfSession(f"unix:{ovs.mgmt_sock('br-int')}", lambda m: None, lambda: None)
    try:
        installed = again.installed()
        assert installed == frozenset(f.ident for f in desired)
        assert not diff_flows(desired, installed)  # nothing to send: no flush, no re-add
        # b leaves: only b's flows go, the rest (with their counters) stay
        gone = State.build(state.tenants.values(), state.networks.values(),
                           state.hosts.values(), [x for x in state.bindings if x.iface_id != "b"])
        before = {line.split("cookie=")[1].split(",")[0]: line
                  for line in ovs.ofctl("dump-flows").splitlines() if "cookie=" in line}
        d = diff_flows(compute_flows(gone, "h1"), installed)
        again.apply(d)
        after = ovs.ofctl("dump-flows")
        assert MAC[2] not in after
        assert "cookie=0x1," in after
        kept = [c for c in before if int(c, 16) not in {i.cookie for i in d.delete}]
        assert all(f"cookie={c}," in after for c in kept)
    finally:
        again.close()


def test_bundle_is_all_or_nothing(ovs: OvsInstance, session: OfSession) -> None:
    add_ports(ovs, 3)
    desired = compute_flows(one_host_state(), "h1")
    session.apply(diff_flows(desired, session.installed()))
    dp = session.dp
    good_delete = ofp.to_delete(dp, next(iter(desired)).ident)
    bad = ofp.to_flow_mod(dp, Flow(10, 5, Match.of(in_port=1), goto=20))
    bad.table_id = 255  # OFPTT_ALL is not a table one can add to
    with pytest.raises(OpenFlowError):
        session.send_bundle([good_delete, bad])
    assert session.installed() == frozenset(f.ident for f in desired)


def plug_two_vifs(ovs: OvsInstance) -> None:
    """VIFs vif1/vif2 of network "na" on ports p1/p2 (ofport 1/2), as a hook registers them."""
    for i in (1, 2):
        ovs.vsctl("add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}",
                  "type=internal", f"ofport_request={i}",
                  f"external_ids:{contract.IFACE_ID}=vif{i}",
                  f'external_ids:{contract.ATTACHED_MAC}="{MAC[i]}"',
                  f"external_ids:{contract.VEIL_NETWORK}=na",
                  f"external_ids:{VEIL_IPS}=198.19.0.{i}")


def test_controller_programs_a_joined_host(ovs: OvsInstance, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture,
                                          store_server: StoreServer) -> None:
    server = store_server
    ctl: Controller | None = None
    store: Store | None = None
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(16)
    try:
        cfg = tmp_path / "veil.yaml"
        cfg.write_text("tenants:\n  - name: A\n    networks:\n      - {name: na, vni: 10}\n")
        sid = ovs.vsctl("get", "Open_vSwitch", ".", "external_ids:system-id").strip('"')
        assert cli.main(["join", "--controller", server.remote, "--system-id", sid,
                         "--underlay-ip", "198.18.0.1", "--host-db",
                         ovs.db_remote, "--ovsdb", ovs.db_remote, "--openflow",
                         f"unix:{ovs.mgmt_sock('br-int')}"]) == 0
        # a joined host whose OVSDB and OpenFlow endpoints accept but never answer must not
        # hold up the others
        store = Store(server.remote)
        store.join(HostRecord(Host("silent", ip("198.18.0.99")),
                              f"unix:{tmp_path / 'silent.sock'}",
                              f"unix:{tmp_path / 'silent.sock'}"))
        ctl = Controller(server.remote, cfg, resync_every=1.0, startup_grace=2.0)
        ctl.start()
        ctl.kick()
        plug_two_vifs(ovs)
        to_2 = f"in_port=1,ip,dl_src={MAC[1]},dl_dst={MAC[2]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
        p2 = dp_port(ovs, "p2")
        # waits for the host only: "silent" is never programmed (the controller programs the
        # others once its 2 s startup grace for unread hosts is over)
        sync(store, [sid])
        assert trace(ovs, to_2) == p2  # a -> b forwarding
        # a config edit that names a bad field changes nothing (a sync request re-reads it)
        cfg.write_text("tenants:\n  - name: A\n    networks:\n      - {name: na, vni: 0}\n")
        sync(store, [sid])
        assert "networks[0].vni: 0 is not a VNI" in caplog.text
        assert trace(ovs, to_2) == p2
        # a good edit is picked up without a restart: a new network, and a VIF in it
        cfg.write_text("tenants:\n  - name: A\n    networks:\n      - {name: na, vni: 10}\n"
                       "      - {name: nb, vni: 20}\n")
        ovs.vsctl("add-port", "br-int", "p3", "--", "set", "Interface", "p3", "type=internal",
                  "ofport_request=3", f"external_ids:{contract.IFACE_ID}=vif3",
                  f'external_ids:{contract.ATTACHED_MAC}="{MAC[3]}"',
                  f"external_ids:{contract.VEIL_NETWORK}=nb")
        sync(store, [sid])
        assert f"dl_dst={MAC[3]}" in ovs.ofctl("dump-flows")  # a VIF of the new network
        # flows someone else deletes are put back by the next quiet-period audit: a poll, as
        # a flow deleted behind the controller's back is no change it sees (no number for it)
        ovs.ofctl("del-flows", "table=30")
        until("deleted flows restored", lambda: trace(ovs, to_2) == p2)
        # the VM stops: its port goes, and so do its flows
        ovs.vsctl("del-port", "br-int", "p2")
        sync(store, [sid])
        assert MAC[2] not in ovs.ofctl("dump-flows")
    finally:
        if ctl is not None:
            ctl.stop()
        if store is not None:
            store.close()
        silent.close()


def rich_state() -> State:
    """Every kind of flow: local and remote VIFs, tunnels, IPv6, a standby (migrating) VIF."""
    from controller.core.model import TunnelPort

    return State.build(
        [Tenant("A")], [Network("na", "A", 10)],
        [Host("h1", ip("198.18.0.1")), Host("h2", ip("198.18.0.2"))],
        [Binding("a", "h1", MAC[1], "na", 1, (ip("198.19.0.1"), ip("2001:db8::1")), since=1),
         Binding("b", "h2", MAC[2], "na", 1, (ip("198.19.0.2"),), since=1),
         Binding("b", "h1", MAC[2], "na", 2, (ip("198.19.0.2"),), since=2),
         Binding("c", "h1", MAC[3], "na", 3)],
        [TunnelPort("h1", "h2", 9), TunnelPort("h2", "h1", 9)],
    )


def test_ofctl_rendering_and_os_ken_encoding_agree(ovs: OvsInstance, session: OfSession) -> None:
    """The debugging syntax and the wire messages describe the same flows, as OVS reads them."""
    desired = compute_flows(rich_state(), "h1")
    session.apply(diff_flows(desired, session.installed()))
    ovs.vsctl("add-br", "br-x", "--", "set", "Bridge", "br-x", "datapath_type=netdev",
              "fail_mode=secure")
    from controller.pipeline.flows import to_ofctl

    flows_file = ovs.rundir / "flows.txt"
    flows_file.write_text("\n".join(to_ofctl(f) for f in desired) + "\n")
    ovs.ofctl("add-flows", str(flows_file), bridge="br-x")

    def dump(bridge: str) -> list[str]:
        lines = ovs.ofctl("dump-flows", "--no-stats", bridge=bridge).splitlines()
        return sorted(line.strip() for line in lines if "cookie=" in line)

    via_os_ken = dump("br-int")
    assert len(via_os_ken) == len(desired)
    assert via_os_ken == dump("br-x")


def test_join_opens_passive_listeners_the_controller_dials(ovs: OvsInstance,
                                                           store_server: StoreServer) -> None:
    """Default deployment: the host listens (OVSDB manager and br-int controller `ptcp:`),
    the controller dials; the join is recorded in the veil database."""
    ovsdb_remote, of_remote = "tcp:127.0.0.1:16640", "tcp:127.0.0.1:16653"
    assert cli.main(["join", "--controller", store_server.remote, "--system-id", "h9",
                     "--underlay-ip", "198.18.0.9", "--tunnel-types", "vxlan,geneve",
                     "--host-db", ovs.db_remote, "--ovsdb", ovsdb_remote,
                     "--openflow", of_remote, "--insecure"]) == 0
    got = netns.run(["ovs-vsctl", f"--db={ovsdb_remote}", "get", "Open_vSwitch", ".",
                     "external_ids"], ns=ovs.ns).stdout
    assert 'veil-underlay-ip="198.18.0.9"' in got and 'veil-tunnel-types="vxlan,geneve"' in got
    assert "system-id=h9" in got
    hello = netns.run(["ovs-ofctl", "-O", "OpenFlow14", "show", of_remote], ns=ovs.ns).stdout
    assert "OFPT_FEATURES_REPLY" in hello
    # both listeners probe an idle controller every HOST_PROBE_MS, not every 5 s
    for table in ("Manager", "Controller"):
        probes = netns.run(["ovs-vsctl", f"--db={ovsdb_remote}", "--bare", "--columns=inactivity_probe",
                            "list", table], ns=ovs.ns).stdout.split()
        assert probes == [str(HOST_PROBE_MS)], (table, probes)
    store = Store(store_server.remote)
    try:
        (rec,) = store.read().hosts
    finally:
        store.close()
    assert (rec.host.system_id, str(rec.host.underlay_ip), rec.host.tunnel_types, rec.ovsdb,
            rec.openflow) == ("h9", "198.18.0.9", ("vxlan", "geneve"), ovsdb_remote, of_remote)


def test_veil_flows_prints_what_a_host_needs(ovs: OvsInstance, store_server: StoreServer,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`veil flows HOST` computes from the live databases; its output, loaded with ovs-ofctl,
    forwards like the controller would."""
    store = Store(store_server.remote)
    try:
        store.add_tenant("A")
        store.add_network("na", "A", 10)
    finally:
        store.close()
    assert cli.main(["join", "--controller", store_server.remote, "--system-id", "h1",
                     "--underlay-ip", "198.18.0.1", "--host-db", ovs.db_remote,
                     "--ovsdb", ovs.db_remote, "--openflow",
                     f"unix:{ovs.mgmt_sock('br-int')}"]) == 0
    plug_two_vifs(ovs)
    capsys.readouterr()
    assert cli.main(["flows", "h1", "--db", store_server.remote]) == 0
    printed = capsys.readouterr().out
    assert any(f"dl_dst={MAC[2]}," in line and line.endswith("actions=output:2")
               for line in printed.splitlines())
    flows_file = ovs.rundir / "cli-flows.txt"
    flows_file.write_text(printed)
    ovs.ofctl("add-flows", str(flows_file))
    to_2 = f"in_port=1,ip,dl_src={MAC[1]},dl_dst={MAC[2]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
    assert trace(ovs, to_2) == dp_port(ovs, "p2")
    assert cli.main(["flows", "nope", "--db", store_server.remote]) == 2
    assert "host 'nope' has not joined" in capsys.readouterr().err


def test_controller_dials_a_host_over_tcp(ovs: OvsInstance, store_server: StoreServer,
                                          tmp_path: Path) -> None:
    """The default deployment end to end: `veil join` with TCP remotes, the controller (in the
    host's namespace here, as on a management network) dials OVSDB and OpenFlow over TCP."""
    import subprocess
    import sys

    assert cli.main(["join", "--controller", store_server.remote, "--system-id", "h1",
                     "--underlay-ip", "198.18.0.1", "--host-db", ovs.db_remote,
                     "--ovsdb", "tcp:127.0.0.1:16640", "--openflow", "tcp:127.0.0.1:16653",
                     "--insecure"]) == 0
    cfg = tmp_path / "veil.yaml"
    cfg.write_text("tenants: [{name: A, networks: [{name: na, vni: 10}]}]\n")
    for i in (1, 2):
        ovs.vsctl("add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}",
                  "type=internal", f"ofport_request={i}",
                  f"external_ids:{contract.IFACE_ID}=vif{i}",
                  f'external_ids:{contract.ATTACHED_MAC}="{MAC[i]}"',
                  f"external_ids:{contract.VEIL_NETWORK}=na")
    assert ovs.ns is not None
    log = (tmp_path / "controller.log").open("w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ovs.ns, sys.executable, "-m", "controller.daemon", "--db",
         store_server.remote, "--config", str(cfg), "--insecure", "--control", str(tmp_path / "ctl.sock")], stdout=log,
        stderr=subprocess.STDOUT)
    try:
        to_2 = f"in_port=1,ip,dl_src={MAC[1]},dl_dst={MAC[2]},nw_src=198.19.0.1,nw_dst=198.19.0.2"
        p2 = dp_port(ovs, "p2")
        store = Store(store_server.remote)
        try:
            sync(store, ["h1"], timeout=30)
        finally:
            store.close()
        assert trace(ovs, to_2) == p2  # forwarding programmed over TCP
        assert "OpenFlow tcp:127.0.0.1:16653 connected" in (tmp_path / "controller.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
