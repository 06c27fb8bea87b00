"""The installed qemu hook run exactly as libvirt runs it, against a real ovsdb-server.

No libvirtd here: these feed the hook XML libvirt would never produce (malformed, hostile,
huge) and check exit status per mode, the one-line stderr, and that OVSDB stays untouched.
Every case runs twice (the ``hook`` fixture's two params): with the hook service answering
(the fast path: the sh hook forwards to it) and without it (the sh hook runs the Python hook).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.lab.ovs import OvsInstance
from hooks.spool import Spool
from libvirt_hooks.domxml import VEIL_XMLNS
from libvirt_hooks.install import HOOK_NAME, InstallError, choose_layout, fallback_code, install, uninstall
from libvirt_hooks.qemu_hook import HANDLED, HookConfig
from tests.support.domains import BAD_INPUTS, BILLION_LAUGHS, HOOK_UUID as UUID, hook_xml as xml
from tests.support.hookservice import hook_service, processes_mentioning
from tests.support.rows import bridge_ports, iface_ids, live_device, wait_gone, wait_live

pytestmark = pytest.mark.lab


@dataclass
class Hook:
    path: Path
    root: Path
    cfg: HookConfig
    ovs: OvsInstance
    socket: Path
    forwarded: int = 0  # calls the sh hook forwards (the operations the hook acts on)

    def set_mode(self, mode: str) -> None:
        self.cfg.mode = mode
        install(self.root, self.cfg, layout="qemu.d", socket_path=str(self.socket))

    def __call__(self, op: str, sub: str, xml: bytes) -> subprocess.CompletedProcess[bytes]:
        self.forwarded += f"{op} {sub}" in HANDLED
        return subprocess.run(
            [str(self.path), "vm1", op, sub, "-"], input=xml, capture_output=True, timeout=30,
            env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
        )


@pytest.fixture(params=["service", "python"])
def hook(request: pytest.FixtureRequest, ovs: OvsInstance, tmp_path: Path) -> Iterator[Hook]:
    """The installed hook; "service": the hook service answers on its socket (fast path),
    "python": nobody does (no socket file: the sh hook runs the Python hook)."""
    cfg = HookConfig()
    cfg.db, cfg.spool, cfg.log = ovs.db_remote, str(tmp_path / "spool"), str(tmp_path / "hook.log")
    (tmp_path / "networks").write_text("blue\nred\n")
    cfg.networks_file = str(tmp_path / "networks")
    socket = tmp_path / "run" / "hook.sock"
    install(tmp_path / "etc", cfg, layout="qemu.d", socket_path=str(socket))
    h = Hook(tmp_path / "etc" / "hooks" / "qemu.d" / HOOK_NAME, tmp_path / "etc", cfg, ovs, socket)
    if request.param == "python":
        yield h
    else:
        with hook_service(socket, tmp_path / "service.log"):
            yield h
        # The fast path answered every call (none fell back to the Python hook).
        served = (tmp_path / "service.log").read_text()
        assert "falls back" not in served and "internal error" not in served
        assert int(served.rsplit("stopped: ", 1)[1].split()[0]) >= h.forwarded, served
    assert processes_mentioning(str(tmp_path)) == []
    assert sorted(p.name for p in socket.parent.glob(".hook.*")) == []  # request/reply files removed




@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_xml_default_mode_logs_and_exits_zero(hook: Hook, name: str) -> None:
    proc = hook("start", "begin", BAD_INPUTS[name])
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("veil: ") and "not blocking" in err and "Traceback" not in err
    assert bridge_ports(hook.ovs) == []
    assert "ERROR" in Path(hook.cfg.log).read_text()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_xml_strict_mode_fails_with_one_line(hook: Hook, name: str) -> None:
    hook.set_mode("strict")
    proc = hook("prepare", "begin", BAD_INPUTS[name])
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("veil: ") and "Traceback" not in err
    assert bridge_ports(hook.ovs) == []


def test_hostile_xml_messages_say_what_is_wrong(hook: Hook) -> None:
    assert b"DOCTYPE/entity declarations are refused" in hook("start", "begin", BILLION_LAUGHS).stderr
    assert b"limit" in hook("start", "begin", BAD_INPUTS["huge"]).stderr
    assert b"nests deeper" in hook("start", "begin", BAD_INPUTS["deep"]).stderr


def test_unknown_network_strict_refuses_default_skips(hook: Hook) -> None:
    assert hook("start", "begin", xml(network="green")).returncode == 0
    assert bridge_ports(hook.ovs) == []
    hook.set_mode("strict")
    proc = hook("start", "begin", xml(network="green"))
    assert proc.returncode == 1 and b"unknown veil network 'green'" in proc.stderr
    assert bridge_ports(hook.ovs) == []


def test_missing_metadata_for_a_br_int_port(hook: Hook) -> None:
    hook.set_mode("strict")
    proc = hook("prepare", "begin", xml(kind="bridge", target=None, meta=False))
    assert proc.returncode == 1 and b"no <veil:port>" in proc.stderr
    # Not a veil VM at all (no metadata, no br-int port): silently fine, even in strict mode.
    plain = f"<domain><name>vm1</name><uuid>{UUID}</uuid><devices/></domain>".encode()
    assert hook("prepare", "begin", plain).returncode == 0 and hook("prepare", "begin", plain).stderr == b""


def test_start_then_stopped_on_a_tap(hook: Hook) -> None:
    proc = hook("start", "begin", xml())
    assert (proc.returncode, proc.stderr) == (0, b"")
    ids = iface_ids(hook.ovs, "tapc1")
    assert ids is not None and ids["veil-network"] == "blue" and ids["vm-id"] == UUID and ids["veil-ips"] == "198.19.0.5"
    # stopped: libvirt has already removed <target dev> from the XML; the hook finds the port by vm-id.
    assert hook("stopped", "end", xml(target=None)).returncode == 0
    assert bridge_ports(hook.ovs) == []


def test_migrate_and_restore_echo_the_xml_unchanged(hook: Hook) -> None:
    doc = xml(target=None) + b"\n<!-- trailing -->\n"
    for op in ("migrate", "restore"):
        proc = hook(op, "begin", doc)
        assert (proc.returncode, proc.stdout) == (0, doc)
    hook.set_mode("strict")
    proc = hook("migrate", "begin", xml(network="green", target=None))
    assert proc.returncode == 1 and b"green" in proc.stderr  # cancels the incoming migration


def test_migration_destination_announces_the_vif_before_the_guest_runs(hook: Hook) -> None:
    """migrate begin -> prepare -> start (libvirt created the port, same iface-id) -> started."""
    doc = xml(kind="bridge", target="vnet5")
    hook.ovs.vsctl("add-port", "br-int", "vnet5", "--", "set", "Interface", "vnet5",
                   "external-ids:iface-id=ifc-1", "external-ids:attached-mac=52:54:00:0c:00:01",
                   f"external-ids:vm-id={UUID}", "external-ids:iface-status=active")
    for op in ("migrate", "prepare", "start"):
        assert hook(op, "begin", xml(kind="bridge", target=None) if op != "start" else doc).returncode == 0
    ids = iface_ids(hook.ovs, "vnet5")
    assert ids is not None and ids["iface-status"] == "active" and ids["veil-network"] == "blue"
    assert ids["iface-id"] == "ifc-1"  # the same iface-id the source host still has active
    assert hook("started", "begin", doc).returncode == 0
    assert iface_ids(hook.ovs, "vnet5") == ids


def test_ovsdb_down_default_spools_and_hostd_applies(hook: Hook) -> None:
    hook.ovs.stop_ovsdb()
    proc = hook("start", "begin", xml())
    assert proc.returncode == 0 and b"spooled" in proc.stderr
    assert len(Spool(hook.cfg.spool).pending()) == 1
    hook.ovs.start_ovsdb()
    done = subprocess.run(
        [sys.executable, "-m", "hooks.hostd", "--once", "--spool", hook.cfg.spool, "--db", hook.ovs.db_remote],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Spool(hook.cfg.spool).pending() == []
    ids = iface_ids(hook.ovs, "tapc1")
    assert ids is not None and ids["veil-network"] == "blue"


def test_ovsdb_down_strict_blocks_the_start(hook: Hook) -> None:
    hook.set_mode("strict")
    hook.ovs.stop_ovsdb()
    proc = hook("start", "begin", xml())
    assert proc.returncode == 1 and b"spooled" in proc.stderr and proc.stderr.count(b"\n") == 1


def test_uninstall_removes_only_veils_files(hook: Hook) -> None:
    other = hook.root / "hooks" / "qemu.d" / "10-other"
    other.write_text("#!/bin/sh\n")
    removed = uninstall(hook.root)
    assert hook.path in removed and other.exists() and not hook.path.exists()


def test_shim_layout_for_libvirt_without_qemu_d(hook: Hook) -> None:
    install(hook.root, hook.cfg, layout="shim", socket_path=str(hook.socket))
    shim = hook.root / "hooks" / "qemu"
    proc = subprocess.run([str(shim), "vm1", "start", "begin", "-"], input=xml(), capture_output=True, timeout=30,
                          env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"})
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert bridge_ports(hook.ovs) == ["tapc1"]
    uninstall(hook.root)
    shim.write_text("#!/bin/sh\n# the operator's own hook\n")
    with pytest.raises(InstallError, match="not veil's"):
        install(hook.root, hook.cfg, layout="shim", socket_path=str(hook.socket))
    assert "operator's own hook" in shim.read_text()


def test_the_hook_process_never_loads_libvirt_or_heavy_modules(hook: Hook) -> None:
    """The hook must never call libvirt (deadlock) and must start fast: check what its Python
    path imports (the fallback of the sh hook, and what the hook service runs)."""
    code = fallback_code(str(Path(__file__).resolve().parents[2]), hook.root / "hooks" / "veil-hook.conf")
    code = code.replace("sys.exit(main(", "rc = (main(")
    code += "bad = sorted({'libvirt', 'ovsdbapp', 'ovs', 'json', 're', 'typing', 'dataclasses', 'logging'} & set(sys.modules))\n"
    code += "sys.stderr.write(repr(bad))\nsys.exit(rc)\n"
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, "vm1", "start", "begin", "-"], input=xml(),
                          capture_output=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, b"[]")
    assert bridge_ports(hook.ovs) == ["tapc1"]


def test_the_installed_hook_is_sh_forwarding_to_the_service(hook: Hook) -> None:
    text = hook.path.read_text()
    assert text.startswith("#!/bin/sh\n") and f"SOCK={hook.socket}" in text and "nc.openbsd -N -U" in text
    proc = hook("started", "begin", xml())  # nothing to do: neither forwarded nor Python
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


@pytest.mark.parametrize(("version", "layout"), [((9, 0), "qemu.d"), ((6, 5), "qemu.d"), ((6, 4), "shim"), (None, "qemu.d")])
def test_auto_layout_follows_the_libvirt_version(version: tuple[int, int] | None, layout: str) -> None:
    assert choose_layout("auto", version) == layout
    assert choose_layout("shim", (9, 0)) == "shim"


# -- a config the hook cannot read (issue 12) ------------------------------------------------------
def append_to_config(hook: Hook, data: bytes) -> Path:
    conf = hook.root / "hooks" / "veil-hook.conf"
    with conf.open("ab") as f:
        f.write(data)
    return conf


def test_non_utf8_config_default_mode_lets_the_vm_start(hook: Hook) -> None:
    conf = append_to_config(hook, b"# caf\xe9\n")
    proc = hook("start", "begin", xml())
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err and "not blocking" in err
    assert f"{conf}:{len(conf.read_bytes().splitlines())}: byte 0xe9" in err and "not UTF-8" in err
    assert bridge_ports(hook.ovs) == []  # skipped: the settings cannot be trusted
    assert "not UTF-8" in Path(hook.cfg.log).read_text()  # the log line of the file's log= setting


def test_non_utf8_config_strict_mode_refuses_with_the_reason(hook: Hook) -> None:
    hook.set_mode("strict")
    append_to_config(hook, b"db=unix:/run/caf\xe9.sock\n")
    proc = hook("start", "begin", xml())
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("veil: ") and "byte 0xe9" in err
    assert bridge_ports(hook.ovs) == []
    # Not at reconnect: libvirt would kill the running guest.
    assert hook("reconnect", "begin", xml()).returncode == 0


def test_non_utf8_networks_file_is_a_clear_error_not_an_internal_one(hook: Hook) -> None:
    Path(hook.cfg.networks_file).write_bytes(b"blue\nr\xe9d\n")
    proc = hook("start", "begin", xml())
    assert proc.returncode == 0 and b"is not UTF-8" in proc.stderr and b"internal error" not in proc.stderr
    hook.set_mode("strict")
    Path(hook.cfg.networks_file).write_bytes(b"blue\nr\xe9d\n")
    proc = hook("start", "begin", xml())
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1 and b"networks file" in proc.stderr
    assert bridge_ports(hook.ovs) == []



# -- what one domain's XML may claim (issue 12) -------------------------------------------------------
OTHER_UUID = "3e1f9a6c-7d2b-4f0e-8a5c-000000000c22"
BAD_VIFS: dict[str, dict[str, Any]] = {
    "multicast-mac": {"mac": "01:00:5e:00:00:01"},
    "broadcast-mac": {"mac": "ff:ff:ff:ff:ff:ff"},
    "zero-mac": {"mac": "00:00:00:00:00:00"},
    "mac-with-spaces": {"mac": " 52:54:00:0c:00:01"},
    "shell-in-ips": {"ips": "not-an-ip; rm -rf /"},
    "20000-ips": {"ips": ",".join(f"198.19.{i // 256}.{i % 256}" for i in range(20_000))},
}


@pytest.mark.parametrize("name", sorted(BAD_VIFS))
def test_an_invalid_vif_is_refused_in_strict_mode_and_never_registered(hook: Hook, name: str) -> None:
    doc = xml(**BAD_VIFS[name])
    proc = hook("start", "begin", doc)
    assert proc.returncode == 0 and proc.stderr.count(b"\n") == 1 and b"not blocking" in proc.stderr
    assert bridge_ports(hook.ovs) == []
    hook.set_mode("strict")
    proc = hook("start", "begin", doc)
    assert proc.returncode == 1 and proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
    assert bridge_ports(hook.ovs) == []


def test_a_domain_cannot_take_over_another_vms_port(hook: Hook) -> None:
    """vm1's <target dev> names vnet5, the port libvirt made for another VM: refused, and that
    port's registration is left exactly as it was (not rewritten, not marked veil-owned). The
    other VM is plausibly alive: its tap is open in OVS, with carrier."""
    live_device(hook.ovs, "vnet5")
    hook.ovs.vsctl("add-port", "br-int", "vnet5", "--", "set", "Interface", "vnet5",
                   "external-ids:iface-id=other-ifc", "external-ids:attached-mac=52:54:00:0c:00:99",
                   f"external-ids:vm-id={OTHER_UUID}", "external-ids:iface-status=active")
    wait_live(hook.ovs, "vnet5")
    before = iface_ids(hook.ovs, "vnet5")
    for kind in ("ethernet", "bridge"):
        proc = hook("start", "begin", xml(kind=kind, target="vnet5"))
        assert proc.returncode == 0 and b"belongs to VM " + OTHER_UUID.encode() in proc.stderr, proc.stderr
        assert iface_ids(hook.ovs, "vnet5") == before
    hook.set_mode("strict")
    proc = hook("start", "begin", xml(target="vnet5"))
    assert proc.returncode == 1 and b"belongs to VM" in proc.stderr and proc.stderr.count(b"\n") == 1
    assert iface_ids(hook.ovs, "vnet5") == before
    # The owner itself still registers it.
    assert hook("start", "begin", xml(kind="bridge", target="vnet5", uuid=OTHER_UUID,
                                      mac="52:54:00:0c:00:99")).returncode == 0


def test_a_stale_row_of_a_vm_that_is_gone_is_taken_over_with_one_log_line(hook: Hook) -> None:
    """libvirt reuses tap names: a row a lost unplug left on vnet6 (its VM gone, its tap gone:
    OVS reports ofport -1) must not make the next VM given vnet6 go dark. Taken over, in
    strict mode too, one hook log line naming the old owner."""
    hook.ovs.vsctl("add-port", "br-int", "vnet6", "--", "set", "Interface", "vnet6",
                   "external-ids:iface-id=other-ifc", "external-ids:attached-mac=52:54:00:0c:00:99",
                   f"external-ids:vm-id={OTHER_UUID}", "external-ids:iface-status=active",
                   "external-ids:veil-network=red", "external-ids:veil-ips=198.19.0.99",
                   "external-ids:veil-owns-port=true")
    wait_gone(hook.ovs, "vnet6")
    hook.set_mode("strict")
    proc = hook("start", "begin", xml(target="vnet6"))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    ids = iface_ids(hook.ovs, "vnet6")
    assert ids is not None and ids["vm-id"] == UUID and ids["veil-network"] == "blue"
    assert ids["attached-mac"] == "52:54:00:0c:00:01" and ids["veil-ips"] == "198.19.0.5"
    took = [line for line in Path(hook.cfg.log).read_text().splitlines() if "took over" in line]
    assert len(took) == 1 and f"took over port 'vnet6' from VM {OTHER_UUID} for VM {UUID}" in took[0], took
    # the VM stops: veil added that port, so it goes
    assert hook("stopped", "end", xml(target="vnet6")).returncode == 0
    assert "vnet6" not in bridge_ports(hook.ovs)


# -- what stop leaves, and whose NICs strict mode judges (issue 12) ----------------------------------
def test_stopped_on_a_bridge_port_drops_every_veil_key_and_keeps_libvirts(hook: Hook) -> None:
    hook.ovs.vsctl("add-port", "br-int", "vnet6", "--", "set", "Interface", "vnet6",
                   "external-ids:iface-id=ifc-1", "external-ids:attached-mac=52:54:00:0c:00:01",
                   f"external-ids:vm-id={UUID}", "external-ids:iface-status=active")
    assert hook("start", "begin", xml(kind="bridge", target="vnet6")).returncode == 0
    ids = iface_ids(hook.ovs, "vnet6")
    assert ids is not None and ids["veil-ips"] == "198.19.0.5" and ids["veil-network"] == "blue"
    assert hook("stopped", "end", xml(kind="bridge", target=None)).returncode == 0
    assert iface_ids(hook.ovs, "vnet6") == {"iface-id": "ifc-1", "attached-mac": "52:54:00:0c:00:01",
                                            "vm-id": UUID, "iface-status": "inactive"}


def test_strict_mode_can_be_scoped_off_a_bridge_another_controller_shares(hook: Hook) -> None:
    """An OVN-served NIC (openvswitch, br-int, no veil metadata): strict refuses it by default;
    with strict_bridges= (empty) strict judges only NICs carrying veil metadata."""
    untagged = xml(kind="bridge", target=None, meta=False)
    hook.set_mode("strict")
    assert hook("prepare", "begin", untagged).returncode == 1
    conf = hook.root / "hooks" / "veil-hook.conf"
    conf.write_text(conf.read_text() + "strict_bridges=\n")
    proc = hook("prepare", "begin", untagged)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert "not veil's: no <veil:port>" in Path(hook.cfg.log).read_text()  # still logged, as a note
    assert hook("prepare", "begin", xml(network="green", target=None)).returncode == 1  # veil's NIC: strict


def test_strict_refusal_writes_nothing_even_for_the_valid_nics(hook: Hook) -> None:
    """Strict mode refuses the start when one NIC is bad: libvirt aborts it, so registering the
    domain's other, valid NIC would leave an active VIF for a VM that never ran."""
    good = xml()
    bad_iface = "<interface type='ethernet'><mac address='52:54:00:0c:00:02'/><target dev='tapc2'/></interface>"
    bad_meta = "<veil:port mac='52:54:00:0c:00:02' network='green'/>"
    doc = good.replace(b"</devices>", bad_iface.encode() + b"</devices>").replace(
        b"</veil:ports>", bad_meta.encode() + b"</veil:ports>")
    hook.set_mode("strict")
    proc = hook("start", "begin", doc)
    assert proc.returncode == 1 and b"unknown veil network 'green'" in proc.stderr
    assert bridge_ports(hook.ovs) == []
    hook.set_mode("default")
    assert hook("start", "begin", doc).returncode == 0
    assert bridge_ports(hook.ovs) == ["tapc1"]  # the default mode registers what it can


def test_a_message_quoting_a_newline_stays_one_line(hook: Hook) -> None:
    """Found by test_fuzz_hook: an attribute holding &#10; was quoted verbatim, so the one
    stderr line libvirt shows (and the log line) split in two, the second one forgeable."""
    doc = xml(ips="&#10;veil: forged").replace(b"network='blue'", b"network=''")
    proc = hook("start", "begin", doc)
    assert proc.returncode == 0 and proc.stderr.count(b"\n") == 1 and b"\\nveil: forged" in proc.stderr
    assert all(line.startswith("20") for line in Path(hook.cfg.log).read_text().splitlines())
