"""Issue 17's "Done when", in the real two-DC lab: acme-net in reactive mode (globex-net stays
proactive), netns VMs, the real controller process.

Tests run in file order on one lab (move and stop come last: they change placement). acme's
hosts: a1 and a4 on dc1-h1, a3 on dc1-h2, a2 on dc2-h1; dc1-h2 has no proactive network, so
its tunnels exist only while a reactive path needs them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import subprocess
from collections.abc import Iterator

import pytest

from controller.lab.lab import Lab
from controller.lab.run import LabController
from controller.lab.topology import Topology, Vm
from controller.lab import netns
from tests.support.frames import SCAN, SEND_RAW, Capture, rarp_frame
from tests.support.labs import flows, programmed_lab, reactive_topology, standby_copy
from tests.support.poll import until

pytestmark = pytest.mark.lab
IDLE = 3  # seconds: the reactive entries' idle timeout in this lab
PORT_RATE = 100  # controller/reactive.py PORT_RATE, PORT_BURST: a VM port's punt meter
PORT_BURST = 20


def _topology() -> Topology:
    topo = reactive_topology("acme-net")
    a4 = Vm("a4", "acme-net", "dc1-h1", ipaddress.IPv4Interface("198.19.0.14/24"), "netns")
    return dataclasses.replace(topo, vms=(*topo.vms, a4))


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    # only globex (proactive) is pinged while waiting: acme's first contacts are the tests'
    with programmed_lab("r", _topology(), pairs=(("b1", "b2"), ("b3", "b1")),
                        reactive_idle=IDLE) as running:
        yield running


def entries(lab: Lab, host: str) -> dict[str, str]:
    """eth_dst -> actions of ``host``'s reactive entries (cookie tag 0x7e12)."""
    out = {}
    for line in flows(lab, host).splitlines():
        m = re.search(r"cookie=0x7e12.*dl_dst=([0-9a-f:]{17}) actions=(\S+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def tunnel_remotes(lab: Lab, host: str) -> set[str]:
    out = lab.hosts[host].ovs.vsctl("--bare", "--columns=options", "find", "Interface",
                                    "external_ids:veil-remote!=''")
    return set(re.findall(r"remote_ip=\"?([0-9.]+)", out))


def first_ping(lab: Lab, src: str, dst: str) -> bool:
    """Exactly one echo request: it and its reply must both get through."""
    return lab.ping(src, dst, count=1, wait=2)


def test_first_contact_sets_the_path_up_and_loses_no_packet(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    a2, a3 = lab_.vms["a2"], lab_.vms["a3"]
    ip = {h: lab_.hosts[h].underlay_ip for h in lab_.hosts}
    assert tunnel_remotes(lab_, "dc1-h2") == set()  # a3's host: no proactive network
    assert f"dl_dst={a2.mac}" not in flows(lab_, "dc1-h2")  # no L2 entry in advance
    assert f"dl_dst={a3.mac}" not in flows(lab_, "dc2-h1")
    assert "meter:" in flows(lab_, "dc1-h2")  # a3's punt, through its meter
    assert first_ping(lab_, "a3", "a2"), ctl.log_text()[-2000:]  # dc1 -> dc2, no tunnel yet
    until("the tunnel dc1-h2 <-> dc2-h1 exists (made on demand)",
          lambda: ip["dc2-h1"] in tunnel_remotes(lab_, "dc1-h2"))
    until("entries both ways", lambda: a2.mac in entries(lab_, "dc1-h2")
          and a3.mac in entries(lab_, "dc2-h1"), timeout=15)
    assert "idle_timeout=3" in flows(lab_, "dc1-h2")
    # other first contacts: over a tunnel globex already has (dc1-h1 -> dc2-h1), inside dc1
    for src, dst in (("a1", "a2"), ("a1", "a3"), ("a4", "a3")):
        assert first_ping(lab_, src, dst), f"{src} -> {dst}"
    # and the set-up path carries a stream without a loss
    assert ping_all(lab_, "a3", "a2", 100, 0.01)


def ping_all(lab: Lab, src: str, dst: str, count: int, interval: float) -> bool:
    out = lab.exec(src, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
                         lab.vms[dst].ip], timeout=count * interval + 10).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return m is not None and m.group(1) == m.group(2) == str(count)


def test_entries_time_out_and_come_back(lab: tuple[Lab, LabController]) -> None:
    lab_, _ = lab
    a2, a3 = lab_.vms["a2"], lab_.vms["a3"]
    ip = lab_.hosts["dc2-h1"].underlay_ip
    assert first_ping(lab_, "a3", "a2")
    until("the entries are in", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)
    # no traffic: the switches drop them after IDLE seconds (flow-removed tells the
    # controller), and the tunnel no path needs any more goes too
    until("the entries timed out", lambda: a2.mac not in entries(lab_, "dc1-h2")
          and a3.mac not in entries(lab_, "dc2-h1"), timeout=IDLE + 10)
    until("the on-demand tunnel is gone", lambda: ip not in tunnel_remotes(lab_, "dc1-h2"),
          timeout=15)
    assert first_ping(lab_, "a3", "a2")  # back on the next first packet
    until("the entries are back", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)


def test_a_controller_restart_loses_no_established_flows_packet(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    a2 = lab_.vms["a2"]
    assert first_ping(lab_, "a3", "a2")
    until("the path is set up", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", lab_.vms["a3"].ns, "ping", "-n", "-i", "0.01", "-c", "500",
         "-W", "1", a2.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert ping.stdout is not None
    head = [ping.stdout.readline(), ping.stdout.readline()]
    assert "bytes from" in head[1], head
    ctl.kill()
    ctl.start()
    ctl.sync()  # the new controller has read every switch (its reactive entries too)
    assert first_ping(lab_, "a1", "a2")  # and sets up paths as before
    rest, _ = ping.communicate(timeout=60)
    out = "".join(head) + rest
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None and m.group(1) == m.group(2) == "500", out[-500:]
    assert lab_.hosts["dc2-h1"].underlay_ip in tunnel_remotes(lab_, "dc1-h2")


def meter_stats(lab: Lab, host: str, meter: int) -> tuple[int, int]:
    """(packets into the meter, packets its drop band dropped)."""
    out = lab.hosts[host].ovs.ofctl("meter-stats", f"meter={meter}")
    into = re.search(r"packet_in_count:(\d+)", out)
    dropped = re.search(r"0: packet_count:(\d+)", out)
    assert into and dropped, out
    return int(into.group(1)), int(dropped.group(1))


def test_a_scanning_vm_is_held_to_its_rate_and_its_neighbour_still_sets_up(
        lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    a4, a2 = lab_.vms["a4"], lab_.vms["a2"]
    ofport = int(lab_.hosts["dc1-h1"].ovs.vsctl("get", "Interface", a4.port, "ofport"))
    until("a1's path to a2 timed out", lambda: a2.mac not in entries(lab_, "dc1-h1"),
          timeout=IDLE + 10)
    into0, dropped0 = meter_stats(lab_, "dc1-h1", ofport)
    seconds, rate = 4.0, 5000
    scan = subprocess.Popen(["ip", "netns", "exec", a4.ns, "python3", "-c", SCAN, a4.mac, a4.ip,
                             str(rate), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        until("the scan is punting", lambda: meter_stats(lab_, "dc1-h1", ofport)[1] > dropped0)
        # a1 (same host, same network) sets a new path up while a4 scans
        assert first_ping(lab_, "a1", "a2"), ctl.log_text()[-2000:]
        until("a1's entry to a2", lambda: a2.mac in entries(lab_, "dc1-h1"), timeout=10)
    finally:
        sent, _ = scan.communicate(timeout=seconds + 30)
    into, dropped = meter_stats(lab_, "dc1-h1", ofport)
    passed = (into - into0) - (dropped - dropped0)
    assert int(sent) > 5 * (PORT_RATE * seconds + PORT_BURST), sent  # it did scan hard ...
    # ... and at most its rate reached the controller (a little slack: the meter's bucket)
    assert passed <= 1.5 * (PORT_RATE * (seconds + 2) + PORT_BURST), (sent, into, dropped)


def test_a_live_migration_moves_the_paths_with_the_guests_announcement(
        lab: tuple[Lab, LabController]) -> None:
    """a2 live on dc2-h1 and (the migration's destination copy) on dc2-h2: a3's path stays
    with the source until the guest announces itself (RARP) on dc2-h2; then the entry towards
    dc2-h1 goes and the next first packet sets the path up to dc2-h2."""
    lab_, ctl = lab
    a2 = lab_.vms["a2"]
    src, dst = lab_.placement("a2"), "dc2-h2"
    src_ip = lab_.hosts[src].underlay_ip
    with standby_copy(lab_, "a2", dst) as ns:
        ctl.sync()
        assert first_ping(lab_, "a3", "a2")
        until("a3's path to the source", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)
        to_src = ofport_of_tunnel(lab_, "dc1-h2", src_ip)
        assert f"output:{to_src}" in entries(lab_, "dc1-h2")[a2.mac]
        netns.run(["python3", "-c", SEND_RAW, rarp_frame(a2.mac)], ns=ns)
        # a poll: the RARP is a packet-in no sequence number covers
        until("the entry towards the source is gone",
              lambda: f"output:{to_src}" not in entries(lab_, "dc1-h2").get(a2.mac, ""))
        with Capture(lab_, "a2", "icmp") as at_src:
            assert first_ping(lab_, "a3", "a2")  # answered by the copy on dc2-h2
        assert "ICMP echo request" not in at_src.text
        until("a3's path to the destination", lambda: a2.mac in entries(lab_, "dc1-h2"),
              timeout=15)
        lab_.unplug_vm("a2")  # the source goes: migration done
        ctl.sync()
        assert first_ping(lab_, "a3", "a2")
    ctl.sync()
    lab_.plug_vm("a2", src)  # (back where the next tests expect it)
    ctl.sync()
    until("a2 back on its host", lambda: first_ping(lab_, "a3", "a2"), timeout=15)


def test_a_moved_vm_is_never_forwarded_to_its_old_host(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    a2 = lab_.vms["a2"]
    old = lab_.hosts["dc2-h1"]
    assert first_ping(lab_, "a3", "a2")
    until("a3's path to a2", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)
    lab_.move_vm("a2", "dc2-h2")
    ctl.sync()  # the round after the move removed every entry towards the old host
    old_ports = {ofport_of_tunnel(lab_, h, old.underlay_ip) for h in ("dc1-h1", "dc1-h2")}
    for h in ("dc1-h1", "dc1-h2"):
        act = entries(lab_, h).get(a2.mac, "")
        assert not any(f"output:{p}" in act for p in old_ports if p), (h, act)
    assert first_ping(lab_, "a3", "a2")  # the new path, to dc2-h2


def ofport_of_tunnel(lab: Lab, host: str, remote_ip: str) -> int | None:
    out = lab.hosts[host].ovs.vsctl("--bare", "--columns=ofport", "find", "Interface",
                                    f"options:remote_ip=\"{remote_ip}\"")
    return int(out.split()[0]) if out.split() else None


def test_a_stopped_vm_has_no_entry_left(lab: tuple[Lab, LabController]) -> None:
    lab_, ctl = lab
    a2 = lab_.vms["a2"]
    assert first_ping(lab_, "a3", "a2")
    until("a3's path to a2", lambda: a2.mac in entries(lab_, "dc1-h2"), timeout=15)
    lab_.unplug_vm("a2")
    ctl.sync()
    assert all(a2.mac not in entries(lab_, h) for h in lab_.hosts)
    assert not lab_.ping("a3", "a2", count=2, wait=0.5)
    assert first_ping(lab_, "a3", "a1")
