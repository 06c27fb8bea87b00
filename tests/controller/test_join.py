"""`veil join` on a real OVS: idempotent, a re-join with other settings replaces them, and a
refused argument line writes nothing (issue 12)."""

from __future__ import annotations

import pytest

from controller import cli
from controller.lab.ovs import OvsInstance
from controller.northbound.store import Store, StoreServer
from tests.support import poll

pytestmark = pytest.mark.lab  # a real ovsdb-server and OVS


def join_argv(db: str, ovs: OvsInstance, *extra: str) -> list[str]:
    """Plaintext tcp: listeners (--insecure): this test is about the listeners, not TLS."""
    return ["join", "--controller", db, "--system-id", "h1", "--underlay-ip", "198.18.0.1",
            "--host-db", ovs.db_remote, "--host-guard", "off", "--insecure", *extra]


def listeners(ovs: OvsInstance) -> tuple[list[str], list[str]]:
    managers = ovs.vsctl("--columns=target", "--format=csv", "--no-headings", "list",
                         "Manager").split()
    controllers = ovs.vsctl("get-controller", "br-int").split()
    return sorted(m.strip('"') for m in managers), sorted(controllers)


def test_join_twice_is_idempotent_and_a_rejoin_replaces_the_settings(
        ovs: OvsInstance, store_server: StoreServer) -> None:
    db = store_server.remote
    first = join_argv(db, ovs, "--ovsdb", "tcp:127.0.0.1:16640", "--openflow",
                      "tcp:127.0.0.1:16653")
    assert cli.main(first) == 0
    assert cli.main(first) == 0  # before: a Manager constraint violation traceback
    assert listeners(ovs) == (["ptcp:16640:127.0.0.1"], ["ptcp:16653:127.0.0.1"])
    assert cli.main(join_argv(db, ovs, "--ovsdb", "tcp:127.0.0.1:16641", "--openflow",
                              "tcp:127.0.0.1:16654", "--tunnel-types", "vxlan")) == 0
    assert listeners(ovs) == (["ptcp:16641:127.0.0.1"], ["ptcp:16654:127.0.0.1"])
    store = Store(db)
    try:
        (rec,) = store.read().hosts
        assert (rec.ovsdb, rec.openflow, rec.host.tunnel_types) == (
            "tcp:127.0.0.1:16641", "tcp:127.0.0.1:16654", ("vxlan",))
    finally:
        store.close()
    # back to unix remotes: veil's listeners go, a Manager someone else made stays
    ovs.vsctl("--", "--id=@m", "create", "Manager", "target=ptcp\\:16999\\:127.0.0.1", "--",
              "add", "Open_vSwitch", ".", "manager_options", "@m")
    assert cli.main(join_argv(db, ovs, "--ovsdb", ovs.db_remote, "--openflow",
                              f"unix:{ovs.mgmt_sock('br-int')}")) == 0
    assert listeners(ovs) == (["ptcp:16999:127.0.0.1"], [])


def in_band_trace(ovs: OvsInstance) -> str:
    """Where an ARP request from the bridge's own port for the manager's address goes."""
    return ovs.appctl("ofproto/trace", "br-int", "in_port=LOCAL,arp,arp_spa=198.18.0.9,arp_op=1")


def test_join_turns_off_in_band_control_and_its_hidden_normal_flows(
        ovs: OvsInstance, store_server: StoreServer) -> None:
    ovs.vsctl("remove", "Bridge", "br-int", "other_config", "disable-in-band")  # OVS's default
    # an active manager someone else made (a join keeps it): OVS makes it an in-band remote
    ovs.vsctl("--", "--id=@m", "create", "Manager", "target=tcp\\:198.18.0.9\\:6640", "--",
              "add", "Open_vSwitch", ".", "manager_options", "@m")
    poll.until("OVS's hidden in-band flows",
               lambda: "priority=180006" in ovs.appctl("bridge/dump-flows", "br-int"), timeout=10)
    assert "NORMAL" in in_band_trace(ovs)  # above any flow veil installs, with secure mode
    assert cli.main(join_argv(db := store_server.remote, ovs, "--ovsdb", ovs.db_remote, "--openflow",
                              f"unix:{ovs.mgmt_sock('br-int')}")) == 0
    assert ovs.vsctl("get", "Bridge", "br-int", "other_config:disable-in-band") == '"true"'
    poll.until("the in-band flows gone",
               lambda: "priority=18000" not in ovs.appctl("bridge/dump-flows", "br-int"), timeout=10)
    trace = in_band_trace(ovs)
    assert "NORMAL" not in trace and "drop" in trace.lower()
    assert cli.main(join_argv(db, ovs, "--ovsdb", ovs.db_remote)) == 0  # a re-join keeps it
    assert ovs.vsctl("get", "Bridge", "br-int", "other_config:disable-in-band") == '"true"'
