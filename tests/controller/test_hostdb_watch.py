"""The controller's mirror of a host database holds only what it reads: a change to any other
column (ovs-vswitchd's statistics, an operator's other_config) reaches it as no message and
wakes no round, while a change the engine reads wakes it (issue 14: an idle fabric's
statistics updates woke the controller ~1.4 times per host per second)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from controller.lab.ovs import OvsInstance
from controller.southbound.hostdb import WATCHED, HostDb
from controller.pipeline.compute import TunnelSpec
from hooks import contract
from tests.support.poll import until

pytestmark = pytest.mark.lab


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1

    def read(self) -> int:
        with self.lock:
            return self.count


def test_only_watched_columns_wake(ovs: OvsInstance) -> None:
    ovs.vsctl("add-port", "br-int", "vif1", "--", "set", "Interface", "vif1", "type=internal",
              f"external_ids:{contract.IFACE_ID}=a1", f"external_ids:{contract.ATTACHED_MAC}=52:54:00:00:00:01",
              f"external_ids:{contract.VEIL_NETWORK}=blue")
    wakes = Wakes()
    db = HostDb("h1", ovs.db_remote, wakes)
    try:
        mirrored = {name: set(table.columns) for name, table in db.api.tables.items()}
        assert mirrored == {t: set(c) for t, c in WATCHED.items()}
        until("vif1's binding in the view", lambda: db.view(0.0).bindings or None)
        base = wakes.read()
        # Unwatched columns, written by a client: the server sends nothing, so nothing wakes.
        ovs.vsctl("set", "Interface", "vif1", "statistics:rx_packets=99", "other_config:x=1",
                  "--", "set", "Port", "vif1", "other_config:y=2",
                  "--", "set", "Bridge", "br-int", "other_config:z=3")
        # A watched column after them: its update comes on the same ordered stream, so once it
        # has woken the mirror, the earlier transaction's update (had there been one) is in too.
        ovs.vsctl("set", "Interface", "vif1", f"external_ids:{contract.IFACE_STATUS}=inactive")
        until("the iface-status change seen", lambda: not db.view(0.0).bindings[0].active or None)
        assert wakes.read() == base + 1
    finally:
        db.close()


def test_tunnel_ports_written_through_the_narrow_mirror(ovs: OvsInstance) -> None:
    """set_tunnels (add_port/del_port/db_set) needs no column beyond WATCHED."""
    db = HostDb("h1", ovs.db_remote, lambda: None)
    try:
        spec = TunnelSpec(name="vt-h2", remote="h2", remote_ip="198.18.77.2", kind="geneve")
        assert db.set_tunnels([spec], frozenset())
        view = until("the tunnel port in the view", lambda: db.view(0.0).tunnel_names or None)
        assert view == frozenset({"vt-h2"})
        assert ovs.vsctl("get", "Interface", "vt-h2", "type").strip() == "geneve"
        assert db.set_tunnels([], view)
        until("the tunnel port gone", lambda: not db.view(0.0).tunnel_names or None)
        assert "vt-h2" not in ovs.vsctl("list-ports", "br-int").split()
    finally:
        db.close()


def test_tunnel_write_does_not_wait_for_vswitchd(ovs: OvsInstance) -> None:
    """A hung ovs-vswitchd holds no tunnel write: the transaction ends at ovsdb-server's commit
    (an acked one would sit in ovsdbapp's wait for cur_cfg until its 10 s timeout)."""
    db = HostDb("h1", ovs.db_remote, lambda: None)
    pid = ovs.pid("ovs-vswitchd")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        spec = TunnelSpec(name="vt-h3", remote="h3", remote_ip="198.18.77.3", kind="geneve")
        writer = threading.Thread(target=db.set_tunnels, args=([spec], frozenset()), daemon=True)
        writer.start()
        writer.join(timeout=5.0)
        assert not writer.is_alive(), "set_tunnels waited for the stopped ovs-vswitchd"
        assert "vt-h3" in ovs.vsctl("--no-wait", "list-ports", "br-int").split()
    finally:
        os.kill(pid, signal.SIGCONT)
        db.close()
