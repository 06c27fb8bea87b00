"""Declared state: the config file's validation, VNI allocation, and the veil database
(a real ovsdb-server) written by the CLI and by config sync."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from controller import cli
from controller.core.config import parse_config, resolve_networks
from controller.core.model import InvalidState, Network
from controller.northbound.store import Store, StoreServer
from tests.support.poll import until


@pytest.mark.parametrize(("text", "error"), [
    ("tenants: [{name: a, networks: [{name: n, vni: 0}]}]",
     r"tenants\[0\]\.networks\[0\]\.vni: 0 is not a VNI in 1\.\.16777215"),
    ("tenants: [{name: a, networks: [{name: n, vni: 5}, {name: m, vni: 5}]}]",
     r"tenants\[0\]\.networks\[1\]\.vni: 5 is also tenants\[0\]\.networks\[0\]"),
    ("tenants: [{name: a, networks: [{name: n, subnet: 198.19.0.0/33}]}]",
     r"tenants\[0\]\.networks\[0\]\.subnet: "),
    ("tenants: [{name: a, networks: [{name: n, vlan: 3}]}]",
     r"tenants\[0\]\.networks\[0\]\.vlan: unknown key"),
    ("tenants: [{networks: []}]", r"tenants\[0\]\.name: missing"),
    ("tenants: [{name: 'a b'}]", r"tenants\[0\]\.name: 'a b' is not a valid name"),
    ("tenants: [{name: a}, {name: a}]", r"tenants\[1\]\.name: tenant 'a' is declared twice"),
    ("tenants: [{name: a, networks: [{name: n}]}, {name: b, networks: [{name: n}]}]",
     r"tenants\[1\]\.networks\[0\]\.name: network 'n' is also tenants\[0\]\.networks\[0\]"),
    ("tenant: []", r"config\.tenant: unknown key"),
    ("tenants: [", r"config:1:11: not valid YAML: expected the node content"),
    ("", r"config: expected a mapping"),
    ("# nothing yet\n", r"config: expected a mapping"),
    ("other: 1", r"config\.other: unknown key"),
    ("{}", r"config\.tenants: missing"),
    ("tenants: [{name: a, networks: [{name: n, dhcp_servers: vm1}]}]",
     r"tenants\[0\]\.networks\[0\]\.dhcp_servers: expected a list of iface-ids"),
    ("tenants: [{name: a, networks: [{name: n, mode: lazy}]}]",
     r"tenants\[0\]\.networks\[0\]\.mode: 'lazy' is not a mode \(proactive or reactive\)"),
])
def test_config_errors_name_the_field(text: str, error: str) -> None:
    with pytest.raises(InvalidState, match=error):
        parse_config(text)


def test_vnis_are_kept_across_reloads_and_allocated_smallest_free() -> None:
    cfg = parse_config("tenants: [{name: a, networks: [{name: n}, {name: m, vni: 1}]}]")
    first = {n.name: n.vni for n in resolve_networks(cfg, [])}
    assert first == {"n": 2, "m": 1}
    existing = [Network("n", "a", 7), Network("cli-net", "a", 3)]
    again = {n.name: n.vni for n in resolve_networks(cfg, existing)}
    assert again == {"n": 7, "m": 1}  # n keeps its VNI; 3 stays the CLI network's


def test_dhcp_servers_are_read_per_network_and_default_to_none() -> None:
    cfg = parse_config("tenants: [{name: a, networks: [{name: n, dhcp_servers: [dhcp1]}, "
                       "{name: m}]}]")
    got = {n.name: n.dhcp_servers for n in resolve_networks(cfg, [])}
    assert got == {"n": frozenset({"dhcp1"}), "m": frozenset()}


def test_mode_is_read_per_network_and_defaults_to_proactive() -> None:
    cfg = parse_config("tenants: [{name: a, networks: [{name: n, mode: reactive}, "
                       "{name: m}, {name: p, mode: proactive}]}]")
    got = {n.name: n.mode for n in resolve_networks(cfg, [])}
    assert got == {"n": "reactive", "m": "proactive", "p": "proactive"}


@pytest.mark.lab  # a real ovsdb-server
def test_cli_declares_networks_in_the_veil_database(
        store_server: StoreServer, capsys: pytest.CaptureFixture[str]) -> None:
    db = store_server.remote
    assert cli.main(["tenant", "add", "acme", "--db", db]) == 0
    assert cli.main(["network", "add", "web", "--tenant", "acme", "--db", db]) == 0
    assert "VNI 1" in capsys.readouterr().out
    assert cli.main(["network", "add", "db", "--tenant", "acme", "--vni", "1", "--db", db]) == 2
    assert "network db.vni: 1 is already used by network web" in capsys.readouterr().err
    assert cli.main(["network", "add", "x", "--tenant", "nobody", "--db", db]) == 2
    assert "network x.tenant: unknown tenant 'nobody'" in capsys.readouterr().err
    assert cli.main(["show", "--db", db]) == 0
    assert "network web tenant=acme vni=1" in capsys.readouterr().out
    assert cli.main(["network", "add", "lan", "--tenant", "acme", "--dhcp-server", "dhcp1",
                     "--db", db]) == 0
    assert cli.main(["show", "--db", db]) == 0
    assert "network lan tenant=acme vni=2 subnet=None dhcp_servers=dhcp1" in \
        capsys.readouterr().out
    assert cli.main(["network", "add", "rx", "--tenant", "acme", "--mode", "reactive",
                     "--db", db]) == 0
    assert cli.main(["show", "--db", db]) == 0
    assert "network rx tenant=acme vni=3 subnet=None mode=reactive" in capsys.readouterr().out


@pytest.mark.lab  # a real ovsdb-server
def test_config_sync_owns_only_its_rows(store_server: StoreServer) -> None:
    store = Store(store_server.remote)
    try:
        store.add_tenant("acme")
        store.add_network("by-hand", "acme", 3)
        cfg = parse_config("tenants: [{name: acme, networks: [{name: a}, {name: b, vni: 9}]}]")
        store.sync_config(cfg.tenants, resolve_networks(cfg, store.read().networks))
        assert {(n.name, n.vni) for n in store.read().networks} == {
            ("by-hand", 3), ("a", 1), ("b", 9)}
        cfg = parse_config("tenants: [{name: acme, networks: [{name: a}]}]")
        store.sync_config(cfg.tenants, resolve_networks(cfg, store.read().networks))
        assert {(n.name, n.vni) for n in store.read().networks} == {("by-hand", 3), ("a", 1)}
        cfg = parse_config("tenants: [{name: acme, networks: [{name: a, dhcp_servers: [d]}]}]")
        store.sync_config(cfg.tenants, resolve_networks(cfg, store.read().networks))
        assert {(n.name, n.dhcp_servers) for n in store.read().networks} == {
            ("by-hand", frozenset()), ("a", frozenset({"d"}))}
        for mode in ("reactive", "proactive"):  # the mode column follows the file both ways
            cfg = parse_config(f"tenants: [{{name: acme, networks: [{{name: a, mode: {mode}}}]}}]")
            store.sync_config(cfg.tenants, resolve_networks(cfg, store.read().networks))
            assert {(n.name, n.mode) for n in store.read().networks} == {
                ("by-hand", "proactive"), ("a", mode)}
    finally:
        store.close()


@pytest.mark.lab  # a real ovsdb-server
def test_veil_controller_runs_its_embedded_database(tmp_path: Path) -> None:
    """`veil-controller --rundir` starts the veil ovsdb-server (which outlives a controller
    crash), serves the CLI through it, and exits 0 on SIGTERM."""
    import signal
    import subprocess
    import sys

    rundir = Path(tempfile.mkdtemp(prefix="vlc-ctl-", dir="/tmp"))
    server = StoreServer(rundir)
    proc = subprocess.Popen([sys.executable, "-m", "controller.daemon", "--rundir", str(rundir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until("the veil database's socket", server.sock.exists, timeout=20)
        assert cli.main(["tenant", "add", "acme", "--db", server.remote]) == 0
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        store = Store(server.remote)  # the database is still there, with the tenant
        try:
            assert [t.name for t in store.read().tenants] == ["acme"]
        finally:
            store.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
        shutil.rmtree(rundir, ignore_errors=True)
