"""The qemu hook's config file: every bad value is refused by key and value (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from libvirt_hooks.qemu_hook import ConfigError, load_config


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("timeout=-1", "timeout=-1: must be a number of seconds in (0, 60]"),
        ("timeout=nan", "timeout=nan: must be a number of seconds in (0, 60]"),
        ("timeout=inf", "timeout=inf: must be"),
        ("timeout=0", "timeout=0: must be"),
        ("timeout=1e9", "timeout=1e9: must be"),
        ("max_xml_bytes=-5", "max_xml_bytes=-5: must be a whole number of bytes in [4096, 67108864]"),
        ("max_xml_bytes=0", "max_xml_bytes=0: must be"),
        ("max_xml_bytes=99999999999", "max_xml_bytes=99999999999: must be"),
        ("db=/run/openvswitch/db.sock", "db='/run/openvswitch/db.sock': expected unix:PATH or tcp:IP:PORT"),
        ("db=tcp:198.18.0.1:99999", "db='tcp:198.18.0.1:99999': expected unix:PATH or tcp:IP:PORT"),
        ("bridge=", "bridge='': "),
        ("bridge=a-bridge-name-too-long", "bridge='a-bridge-name-too-long': "),
        ("spool=relative/dir", "spool='relative/dir': must be an absolute path"),
        ("log=", "log='': must be an absolute path"),
        ("networks_file=networks", "networks_file='networks': must be an absolute path"),
    ],
)
def test_out_of_range_values_are_refused_naming_key_and_value(tmp_path: Path, line: str, message: str) -> None:
    conf = tmp_path / "veil-hook.conf"
    conf.write_text(f"mode=strict\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert str(info.value).startswith(f"{conf}:2: ") and message in str(info.value)
    assert info.value.cfg.strict  # the valid line still counts: strict mode refuses


def test_valid_values_load(tmp_path: Path) -> None:
    conf = tmp_path / "veil-hook.conf"
    conf.write_text("timeout=0.5\nmax_xml_bytes=65536\ndb=tcp:198.18.0.1:6640\nbridge=br-veil\nnetworks_file=\n")
    cfg = load_config(str(conf))
    assert (cfg.timeout, cfg.max_xml_bytes, cfg.db, cfg.bridge, cfg.networks_file) == (
        0.5, 65536, "tcp:198.18.0.1:6640", "br-veil", "")
