"""The systemd units veil ships: each passes `systemd-analyze verify` as the installers write
it (with this veil's command directory), restarts, orders itself after what it needs, and
the installers write and remove them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hooks import units

BINDIR = Path(sys.executable).parent
NEEDS = {  # unit -> (After= must name, Wants= must name)
    "veil-controller": ({"network-online.target"}, {"network-online.target"}),
    "veil-hostd": ({"openvswitch-switch.service"}, {"openvswitch-switch.service"}),
    "veil-libvirt-agent": ({"libvirtd.service", "openvswitch-switch.service"},
                           {"libvirtd.service", "openvswitch-switch.service"}),
    "veil-xapi-sync": ({"xapi.service", "openvswitch.service"}, {"openvswitch.service"}),
}


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze is missing: apt-get install systemd (deps.sh installs it)"
    return exe


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze(), "verify", str(path)], capture_output=True, text=True,
                          timeout=60)


def directive(text: str, key: str) -> set[str]:
    return {w for line in text.splitlines() if line.startswith(f"{key}=")
            for w in line.split("=", 1)[1].split()}


@pytest.mark.parametrize("name", units.UNITS)
def test_every_unit_verifies_and_restarts(tmp_path: Path, name: str) -> None:
    [path] = units.install_units([name], tmp_path, BINDIR)
    got = verify(path)
    assert got.returncode == 0 and name not in got.stderr, got.stderr
    text = path.read_text()
    assert directive(text, "Restart") & {"always", "on-failure"}
    after, wants = NEEDS[name]
    assert after <= directive(text, "After") and wants <= directive(text, "Wants")
    assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text
    assert f"ExecStart={BINDIR}/{name} " in text or f"ExecStart={BINDIR}/{name}\n" in text


def test_verify_does_fail_on_a_broken_unit(tmp_path: Path) -> None:
    [path] = units.install_units(["veil-hostd"], tmp_path, tmp_path / "no-such-bin")
    got = verify(path)
    assert got.returncode != 0 and "veil-hostd" in got.stderr


def test_the_hardening_exposure_is_measured(tmp_path: Path) -> None:
    [path] = units.install_units(["veil-controller"], tmp_path, BINDIR)
    out = subprocess.run([analyze(), "security", "--offline=yes", str(path)],
                         capture_output=True, text=True, timeout=60).stdout
    level = re.search(r"Overall exposure level for veil-controller.service: ([0-9.]+)", out)
    assert level, out[-500:]
    assert float(level.group(1)) < 5.0  # "OK" in systemd's words (10 is unhardened)


def test_installers_write_and_remove_their_units(tmp_path: Path, test_netns: str) -> None:
    # in a private namespace: the installers also set up the host guard (iptables)
    def run(module: str, *args: str) -> str:
        got = subprocess.run(["ip", "netns", "exec", test_netns, sys.executable, "-m", module,
                              *args], capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        return got.stdout
    kvm = tmp_path / "units"
    (tmp_path / "libvirt").mkdir()
    out = run("libvirt_hooks.install", "--root", str(tmp_path / "libvirt"), "--layout",
              "qemu.d", "--systemd-dir", str(kvm), "--host-guard", "off")
    assert {p.name for p in kvm.iterdir()} == {"veil-hostd.service",
                                               "veil-libvirt-agent.service"}
    assert f"wrote {kvm}/veil-hostd.service" in out
    run("libvirt_hooks.install", "--root", str(tmp_path / "libvirt"), "--systemd-dir",
        str(kvm), "--uninstall")
    assert not list(kvm.iterdir())
    xen = tmp_path / "dom0"
    run("xenapi_plugin.install", "--root", str(xen), "--host-guard", "off")
    unit_dir = xen / "etc" / "systemd" / "system"
    assert {p.name for p in unit_dir.iterdir()} == {"veil-xapi-sync.service"}
    assert verify(unit_dir / "veil-xapi-sync.service").returncode == 0
    run("xenapi_plugin.install", "--root", str(xen), "--uninstall")
    assert not list(unit_dir.iterdir())


def test_a_foreign_unit_file_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "veil-hostd.service").write_text("[Service]\nExecStart=/bin/true\n")
    with pytest.raises(units.UnitError, match="exists and is not veil's"):
        units.install_units(["veil-hostd"], tmp_path, BINDIR)
