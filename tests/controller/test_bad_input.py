"""Issue 12: a bad byte, a bad row or a bad argument costs only itself; the controller keeps
running with what it had (config file, veil database rows, CLI arguments)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from controller import cli
from controller.core.config import load_config
from controller.core.model import InvalidState
from controller.lab.ovs import OvsInstance
from controller.northbound.store import Store, StoreServer, decode_rows, sync
from controller.service import Controller
from tests.support.poll import until

GOOD = "tenants:\n  - name: acme\n    networks:\n      - {name: acme-net, vni: 10}\n"


def test_a_non_utf8_byte_is_refused_naming_file_line_and_byte(tmp_path: Path) -> None:
    cfg = tmp_path / "veil.yaml"
    cfg.write_bytes(b"tenants:\n  - name: acme\n    networks: [{name: caf\xe9}]\n")
    with pytest.raises(InvalidState) as err:
        load_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{cfg}:3:")
    assert "not UTF-8" in msg and "0xe9" in msg


def test_an_unreadable_config_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidState, match=r"^.*/missing\.yaml: cannot read: .*No such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(InvalidState, match=r"^.*veil\.yaml:\d+:\d+: not valid YAML: ") as err:
        (tmp_path / "veil.yaml").write_text("tenants:\n  - {name: [\n")
        load_config(tmp_path / "veil.yaml")
    assert "\n" not in str(err.value)


@pytest.mark.lab  # a real ovsdb-server
def test_controller_keeps_running_on_an_undecodable_config_and_rereads_it(
        store_server: StoreServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "veil.controller")
    cfg = tmp_path / "veil.yaml"
    cfg.write_bytes(GOOD.replace("acme-net", "acme-n\xe9t").encode("latin-1"))
    ctl = Controller(store_server.remote, cfg, resync_every=0.5, startup_grace=0.0)
    ctl.start()
    store = Store(store_server.remote)
    try:
        until("the refusal logged", lambda: "not UTF-8" in caplog.text)
        assert ctl.alive()
        assert store.read().networks == ()
        cfg.write_text(GOOD)  # fixed: re-read on change
        until("the fixed file applied", lambda: [n.name for n in store.read().networks]
              == ["acme-net"])
        cfg.write_bytes(b"\xff\xfe")  # broken again: the last good config stays
        until("the second refusal", lambda: caplog.text.count("not UTF-8") >= 2)
        assert ctl.alive() and [n.name for n in store.read().networks] == ["acme-net"]
    finally:
        store.close()
        ctl.stop()


TWO = ("tenants:\n"
       "  - name: acme\n    networks:\n      - {name: acme-net}\n"
       "  - name: beta\n    networks:\n      - {name: beta-net}\n")


def _config_round(ctl: Controller, cfg: Path, text: str) -> list[str]:
    """Write ``text`` and apply it as the controller's round does; the networks after."""
    cfg.write_text(text)
    ctl._apply_config()
    assert ctl.store is not None
    return sorted(n.name for n in ctl.store.read().networks)


@pytest.mark.lab  # a real ovsdb-server
def test_config_removing_most_of_its_networks_needs_confirmation(
        store_server: StoreServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "veil.yaml"
    ctl = Controller(store_server.remote, cfg)
    ctl.store = Store(store_server.remote)
    caplog.set_level(logging.INFO, "veil.controller")
    try:
        assert _config_round(ctl, cfg, TWO) == ["acme-net", "beta-net"]
        for empty in ("tenants:\n", "tenants: []\n"):  # (the same refusal is logged once)
            assert _config_round(ctl, cfg, empty) == ["acme-net", "beta-net"]
            assert "would remove 2 of 2 config networks (acme-net, beta-net); nothing " \
                   "removed" in caplog.text
            assert "confirm_removal: [acme-net, beta-net]" in caplog.text
        # truncated at a line boundary: beta is gone from the file, not from the fabric
        truncated = TWO.split("  - name: beta")[0]
        assert _config_round(ctl, cfg, truncated) == ["acme-net", "beta-net"]
        assert "would remove 1 of 2 config networks (beta-net)" in caplog.text
        # confirmed: removed, loudly
        caplog.clear()
        assert _config_round(ctl, cfg, truncated + "confirm_removal: [beta-net]\n") == [
            "acme-net"]
        assert "removes network beta-net" in caplog.text
        # a small removal (1 of 3) needs no confirmation, but is logged
        three = TWO + "      - {name: beta-2}\n      - {name: beta-3}\n"
        assert _config_round(ctl, cfg, three) == ["acme-net", "beta-2", "beta-3", "beta-net"]
        caplog.clear()
        assert _config_round(ctl, cfg, three.replace("      - {name: beta-3}\n", "")) == [
            "acme-net", "beta-2", "beta-net"]
        assert "removes network beta-3" in caplog.text
    finally:
        ctl.store.close()


@pytest.mark.lab  # a real ovsdb-server
def test_a_config_network_named_like_a_cli_one_is_refused_not_applied(
        store_server: StoreServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "veil.yaml"
    ctl = Controller(store_server.remote, cfg)
    ctl.store = store = Store(store_server.remote)
    caplog.set_level(logging.INFO, "veil.controller")
    try:
        store.add_tenant("acme")
        store.add_network("web", "acme", 7)  # made with the CLI
        got = _config_round(ctl, cfg, "tenants:\n  - name: acme\n    networks:\n"
                                      "      - {name: web, vni: 9}\n      - {name: db}\n"
                                      "      - {name: cache, vni: 7}\n")
        assert got == ["db", "web"]
        assert [(n.name, n.vni) for n in store.read().networks if n.name == "web"] == [
            ("web", 7)]
        assert (f"{cfg}:4: tenants[0].networks[0] 'web' refused: a network 'web' made "
                "outside the config file exists") in caplog.text
        assert (f"{cfg}:6: tenants[0].networks[2] 'cache' refused: VNI 7 is network 'web' "
                "(made outside the config file)") in caplog.text
        assert "applied: 1 tenants, 1 networks (2 entries refused, 0 removals held)" in caplog.text
    finally:
        store.close()


def raw_insert(remote: str, table: str, row: dict[str, object]) -> None:
    """Insert a row as a buggy or hostile client would: ovsdb-client, no veil validation."""
    subprocess.run(["ovsdb-client", "transact", remote, json.dumps(
        ["Veil", {"op": "insert", "table": table, "row": row}])], check=True,
        capture_output=True, timeout=10)


def bad_host(sid: str, ip: str, **cols: object) -> dict[str, object]:
    return {"system_id": sid, "underlay_ip": ip, "tunnel_types": "geneve",
            "ovsdb": "unix:/nowhere", "openflow": "unix:/nowhere", **cols}


@pytest.mark.lab  # a real ovsdb-server and OVS
def test_a_bad_host_row_costs_that_row_never_the_fabric(
        ovs: OvsInstance, store_server: StoreServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, "veil.controller")
    db = store_server.remote
    cfg = tmp_path / "veil.yaml"
    cfg.write_text(GOOD)
    sid = ovs.vsctl("get", "Open_vSwitch", ".", "external_ids:system-id").strip('"')
    assert cli.main(["join", "--controller", db, "--system-id", sid, "--underlay-ip",
                     "198.18.0.1", "--host-db", ovs.db_remote, "--ovsdb", ovs.db_remote,
                     "--openflow", f"unix:{ovs.mgmt_sock('br-int')}",
                     "--host-guard", "off"]) == 0
    raw_insert(db, "Host", bad_host("bad-ip", "not-an-ip"))
    ctl = Controller(db, cfg, resync_every=1.0, startup_grace=2.0)
    ctl.start()
    store = Store(db)
    try:
        sync(store, [sid], timeout=20)  # the good host is programmed
        assert ctl.alive()
        assert "Host 'bad-ip' refused: underlay_ip: 'not-an-ip' is not an IP address" \
            in caplog.text
        flows = ovs.ofctl("dump-flows")
        assert "cookie=0x7e11" in flows
        # a second host claiming the programmed host's underlay IP: refused, the first goes on
        raw_insert(db, "Host", bad_host("copycat", "198.18.0.1"))
        sync(store, [sid], timeout=20)
        assert ("Host 'copycat' refused: underlay_ip: 198.18.0.1 is also host "
                f"{sid!r}") in caplog.text
        assert caplog.text.count("Host 'bad-ip' refused") == 1  # once per row version
        assert "changing nothing" not in caplog.text
        capsys.readouterr()
        assert cli.main(["show", "--db", db]) == 0
        out = capsys.readouterr().out
        assert f"host {sid} underlay=198.18.0.1" in out
        assert "refused Host 'bad-ip': underlay_ip: 'not-an-ip' is not an IP address" in out
        assert "refused Host 'copycat'" in out
    finally:
        store.close()
        ctl.stop()


GOOD_ROWS: dict[str, list[tuple[str, dict[str, object]]]] = {
    "Tenant": [("t1", {"name": "acme", "external_ids": {}})],
    "Network": [("n1", {"name": "web", "tenant": "acme", "vni": 5, "subnet": ["198.19.0.0/24"],
                        "external_ids": {"veil-source": "config"}})],
    "Host": [("h1", {"system_id": "h1", "underlay_ip": "198.18.0.1", "tunnel_types": "geneve",
                     "ovsdb": "tcp:198.18.0.1:6640", "openflow": "unix:/run/x.mgmt",
                     "external_ids": {}, "programmed_seq": 3})],
    "Claim": [("c1", {"iface_id": "vif1", "host": "h1"})],
    "FirstSeen": [("f1", {"host": "h1", "iface_id": "vif1", "ofport": 1, "since": 1.5})],
}


@pytest.mark.parametrize(("table", "row", "reason"), [
    ("Tenant", {"name": "a b"}, "name: 'a b' is not a valid name"),
    ("Network", {"name": "db", "tenant": "ghost", "vni": 6, "subnet": []},
     "tenant: 'ghost' is not a tenant"),
    ("Network", {"name": "db", "tenant": "acme", "vni": 0, "subnet": []},
     "vni: 0 is not a VNI"),
    ("Network", {"name": "db", "tenant": "acme", "vni": 6, "subnet": ["300.0.0.0/8"]},
     "subnet: "),
    ("Host", {"system_id": "h2", "underlay_ip": "not-an-ip", "tunnel_types": "geneve",
              "ovsdb": "unix:/x", "openflow": "unix:/x"},
     "underlay_ip: 'not-an-ip' is not an IP address"),
    ("Host", {"system_id": "h2", "underlay_ip": "198.18.0.1", "tunnel_types": "geneve",
              "ovsdb": "unix:/x", "openflow": "unix:/x", "programmed_seq": 0},
     "underlay_ip: 198.18.0.1 is also host 'h1'"),
    ("Host", {"system_id": "h2", "underlay_ip": "198.18.0.2", "tunnel_types": "ipsec",
              "ovsdb": "unix:/x", "openflow": "unix:/x"}, "tunnel_types: 'ipsec' is not one"),
    ("Host", {"system_id": "h2", "underlay_ip": "198.18.0.2", "tunnel_types": "geneve",
              "ovsdb": "tcp:nowhere", "openflow": "unix:/x"}, "ovsdb: 'tcp:nowhere' is not"),
    ("Claim", {"iface_id": "", "host": "h1"}, "iface_id: '' is not a non-empty string"),
    ("FirstSeen", {"host": "h1", "iface_id": "v", "ofport": 1, "since": float("nan")},
     "since: nan is not a finite time"),
])
def test_decode_rows_refuses_a_bad_row_and_keeps_the_rest(
        table: str, row: dict[str, object], reason: str) -> None:
    raw = {t: list(rows) for t, rows in GOOD_ROWS.items()}
    raw[table] = [*raw[table], ("zz-bad", row)]
    d = decode_rows(raw)
    assert [(r.table, r.uuid) for r in d.refused] == [(table, "zz-bad")]
    assert reason in d.refused[0].reason
    assert d == decode_rows(GOOD_ROWS).__class__(**{**decode_rows(GOOD_ROWS).__dict__,
                                                   "refused": d.refused})


def test_duplicates_the_indexes_forbid_are_all_refused() -> None:
    """(The server's indexes keep these out; the pure function still never picks one.)"""
    dup_net = ("n2", {"name": "db", "tenant": "acme", "vni": 5, "subnet": []})
    d = decode_rows({**GOOD_ROWS, "Network": [*GOOD_ROWS["Network"], dup_net]})
    assert d.networks == () and {r.reason for r in d.refused} == {
        "vni 5 is also Network row(s) 'db'", "vni 5 is also Network row(s) 'web'"}
    d = decode_rows({**GOOD_ROWS, "Tenant": [*GOOD_ROWS["Tenant"], ("t2", {"name": "acme"})]})
    assert d.tenants == () and d.networks == ()  # and so its networks: no tenant
    assert {r.table for r in d.refused} == {"Tenant", "Network"}


def test_two_unprogrammed_hosts_on_one_ip_are_both_refused() -> None:
    h = dict(GOOD_ROWS["Host"][0][1], programmed_seq=0)
    d = decode_rows({"Host": [("a", h), ("b", dict(h, system_id="h2"))]})
    assert d.hosts == () and len(d.refused) == 2
    assert "neither programmed further: both refused" in d.refused[0].reason


@pytest.mark.lab  # a real ovsdb-server
def test_rows_a_hostile_client_wrote_cost_only_themselves(store_server: StoreServer) -> None:
    db = store_server.remote
    store = Store(db)
    try:
        store.add_tenant("acme")
        store.add_network("web", "acme", 5)
        raw_insert(db, "Tenant", {"name": "bad tenant"})
        raw_insert(db, "Network", {"name": "orphan", "tenant": "ghost", "vni": 6})
        raw_insert(db, "Network", {"name": "badnet", "tenant": "acme", "vni": 7,
                                   "subnet": "198.19.0.1/24"})
        raw_insert(db, "Host", bad_host("h1", "198.18.0.1"))
        raw_insert(db, "Host", bad_host("h2", "198.18.0.2", tunnel_types="geneve,,"))
        raw_insert(db, "Host", bad_host("h3", "198.18.0.3", openflow="tcp:198.18.0.3:0"))
        raw_insert(db, "Claim", {"iface_id": "", "host": "h1"})
        raw_insert(db, "FirstSeen", {"host": "", "iface_id": "v", "ofport": 1, "since": 1.0})
        until("the rows in the IDL", lambda: len(store.read().refused) == 7)
        d = store.read()
        assert [n.name for n in d.networks] == ["web"]
        assert [h.host.system_id for h in d.hosts] == ["h1"]
        assert sorted(r.table for r in d.refused) == [
            "Claim", "FirstSeen", "Host", "Host", "Network", "Network", "Tenant"]
        # a refused row still holds its VNI in the database: the CLI says so
        with pytest.raises(InvalidState, match="7 is held by a refused Network row"):
            store.add_network("db", "acme", 7)
        assert store.add_network("db", "acme").vni == 1
    finally:
        store.close()
