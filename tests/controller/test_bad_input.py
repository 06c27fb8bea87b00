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
