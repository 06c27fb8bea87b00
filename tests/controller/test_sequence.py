"""Sequence numbers ("programmed up to", controller/northbound/store.py): the number a round
takes, the database upgrade, and the real controller on the two-DC lab advancing every host
after a VIF plug, a stopped host that does not advance, and `veil show`."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import cli
from controller.lab.lab import Lab
from controller.core.model import Host
from controller.lab.run import LabController
from controller.northbound.store import (
    SCHEMA,
    HostRecord,
    NotProgrammed,
    Numbers,
    Store,
    StoreServer,
    round_number,
    sync,
    wait_programmed,
)
from tests.support.labs import programmed_lab
from tests.support.poll import until


def test_a_round_takes_a_pending_request_else_a_new_number_for_a_change() -> None:
    assert round_number(Numbers(next=7, cur=5), changed=False) == (7, False)
    assert round_number(Numbers(next=7, cur=5), changed=True) == (7, False)
    assert round_number(Numbers(next=5, cur=5), changed=True) == (6, True)
    assert round_number(Numbers(next=5, cur=5), changed=False) == (5, False)


@pytest.mark.lab  # a real ovsdb-server
def test_a_database_of_the_previous_schema_is_converted_and_numbered(tmp_path: Path) -> None:
    """A veil.db made with schema 1.2.0 (no Veil_Global, no Host.programmed_seq) keeps its
    rows and gets numbers when StoreServer starts on it (ovsdb-tool convert)."""
    old = json.loads(SCHEMA.read_text())
    old["version"] = "1.2.0"
    del old["tables"]["Veil_Global"]
    del old["tables"]["Host"]["columns"]["programmed_seq"]
    old_schema = tmp_path / "old.ovsschema"
    old_schema.write_text(json.dumps(old))
    rundir = Path(tempfile.mkdtemp(prefix="vlc-seq-", dir="/tmp"))
    db = rundir / "veil.db"
    subprocess.run(["ovsdb-tool", "create", str(db), str(old_schema)], check=True)
    subprocess.run(["ovsdb-tool", "transact", str(db), json.dumps([
        "Veil", {"op": "insert", "table": "Host", "row": {
            "system_id": "h1", "underlay_ip": "198.18.0.1", "tunnel_types": "geneve",
            "ovsdb": "unix:/nowhere", "openflow": "unix:/nowhere"}}])],
        check=True, capture_output=True)
    server = StoreServer(rundir)
    try:
        server.start()
        store = Store(server.remote)
        try:
            assert [r.host.system_id for r in store.read().hosts] == ["h1"]
            assert store.programmed() == {"h1": 0} and store.sequence() == 0
            assert store.request_sync() == 1 and store.request_sync() == 2
            assert store.numbers() == Numbers(next=2, cur=0)
            with pytest.raises(NotProgrammed, match=r"up to 2 within 0\.2s: h1 at 0, h9 at "
                                                    r"\(not joined\)") as err:
                wait_programmed(store, ["h1", "h9"], 2, timeout=0.2)
            assert err.value.behind == {"h1": 0, "h9": None}
        finally:
            store.close()
    finally:
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.mark.lab  # a real ovsdb-server, hung
def test_the_numbers_answer_while_a_transaction_waits_for_a_hung_database(
        store_server: StoreServer) -> None:
    """ovsdbapp commits holding the IDL's lock, so a transaction waiting for a hung (or gone)
    database holds every reader up to its timeout; `veil status` (``programmed(wait=...)``)
    answers the numbers last read instead (CI saw `veil status` time out so, test_ha case 4)."""
    store = Store(store_server.remote)
    pid = store_server.pid()
    assert pid is not None
    try:
        store.join(HostRecord(Host("h1", ipaddress.ip_address("198.18.0.1")), "unix:/nowhere", "unix:/nowhere"))
        n = store.request_sync()
        store.write_programmed(n, ["h1"])
        until("h1 programmed", lambda: store.programmed() == {"h1": n})
        os.kill(pid, signal.SIGSTOP)
        writer = threading.Thread(target=store.request_sync, daemon=True)  # (waits, then fails)
        writer.start()
        lock = store.api.ovsdb_connection.lock  # (an RLock: no .locked())

        def held() -> bool:
            if lock.acquire(blocking=False):
                lock.release()
                return False
            return True
        until("the writer's transaction holds the IDL lock", held, timeout=5)
        got: list[dict[str, int]] = []
        reader = threading.Thread(target=lambda: got.append(store.programmed(wait=0.2)),
                                  daemon=True)
        reader.start()
        reader.join(timeout=5)
        assert got == [{"h1": n}], "programmed(wait=) waited behind the hung transaction"
        assert held() and writer.is_alive(), "(the transaction was still waiting)"
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, LabController]]:
    with programmed_lab("q") as running:
        yield running


def flows(lab: Lab, host: str) -> str:
    return lab.hosts[host].ovs.ofctl("dump-flows", "table=30")


def test_a_vif_plug_advances_every_host(lab: tuple[Lab, LabController]) -> None:
    """After sync() returns, every host holds the flows of a change made before it: a3 leaves
    dc1-h2 and comes up on dc2-h2 (which had no acme VM): the acme hosts point a3's MAC at
    dc2-h2 at once, no sleep. Hosts outside the network advance too (they reflect the state);
    a change nobody waits for is numbered as well."""
    lab_, ctl = lab
    hosts = sorted(lab_.hosts)
    store = Store(ctl.server.remote)
    try:
        n0 = sync(store, hosts)
        mac = lab_.vms["a3"].mac
        lab_.unplug_vm("a3")
        n1 = sync(store, hosts)
        assert n1 > n0
        assert all(mac not in flows(lab_, h) for h in hosts)
        before = store.sequence()
        lab_.plug_vm("a3", "dc2-h2")
        # nobody asked: the controller numbers the change itself and every host gets there
        assert min(wait_programmed(store, hosts, before + 1).values()) > before
        n2 = store.request_sync()
        at = wait_programmed(store, hosts, n2)
        assert n2 > n1 and all(at[h] >= n2 for h in hosts)
        for h in ("dc1-h1", "dc2-h1"):  # acme's other hosts: a3 is reached through a tunnel
            assert any(f"dl_dst={mac}" in line and "set_field" in line
                       for line in flows(lab_, h).splitlines()), flows(lab_, h)
        assert any(f"dl_dst={mac}" in line and "output:" in line
                   for line in flows(lab_, "dc2-h2").splitlines())
        assert mac not in flows(lab_, "dc1-h2")
        assert lab_.ping("a3", "a1", count=3) and lab_.ping("a2", "a3", count=3)
    finally:
        store.close()


def test_veil_show_prints_the_numbers(lab: tuple[Lab, LabController],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _, ctl = lab
    store = Store(ctl.server.remote)
    try:
        n = sync(store)
    finally:
        store.close()
    capsys.readouterr()
    assert cli.main(["show", "--db", ctl.server.remote]) == 0
    out = capsys.readouterr().out
    seq = re.search(r"^sequence (\d+) \(controller at (\d+)\)$", out, re.M)
    assert seq and int(seq[1]) >= int(seq[2]) >= n, out
    printed = dict(re.findall(r"^host (\S+) .* programmed=(\d+)$", out, re.M))
    assert sorted(printed) == sorted(lab[0].hosts) and all(int(v) >= n for v in
                                                           printed.values()), out


def test_a_stopped_host_does_not_advance_and_is_named(lab: tuple[Lab, LabController]) -> None:
    """(Last in this module: it stops dc2-h2's OVSDB.) The others reach the number;
    waiting for dc2-h2 times out with its name and the number it is stuck at."""
    lab_, ctl = lab
    store = Store(ctl.server.remote)
    try:
        stuck = sync(store)
        # its OVSDB only: the controller reaches it over the underlay, and killing
        # ovs-vswitchd would also take down the host's underlay port (br-phy), so no FIN
        # would ever leave: a partition, which a host needing no change may not notice
        # in time (docs/controller.md, limits)
        lab_.hosts["dc2-h2"].ovs.stop_ovsdb()
        n = store.request_sync()
        others = [h for h in lab_.hosts if h != "dc2-h2"]
        assert min(wait_programmed(store, others, n).values()) >= n
        with pytest.raises(NotProgrammed, match=rf"up to {n} within 3s: dc2-h2 at {stuck}$"):
            wait_programmed(store, lab_.hosts, n, timeout=3)
    finally:
        store.close()
