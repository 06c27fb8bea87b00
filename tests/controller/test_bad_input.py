"""Issue 12: a bad byte, a bad row or a bad argument costs only itself; the controller keeps
running with what it had (config file, veil database rows, CLI arguments)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller.core.config import load_config
from controller.core.model import InvalidState
from controller.northbound.store import Store, StoreServer
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
