"""The move-soak harness's domain XML edits (controller/lab/bench/movesoak.py): each series of
docs/kvm.md's "Known problem" changes one thing of the guest, and the edited domain must still
be one libvirt accepts (its own RelaxNG schema, virt-xml-validate)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from controller.lab import guests, netns
from controller.lab.bench.movesoak import dying_signs, soak_topology, xml_editor
from controller.lab.guest.domxml import GuestNic, GuestSpec, domain_xml, guest_cmdline


def _spec(tmp_path: Path) -> GuestSpec:
    return GuestSpec(name="vlg-soak", kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd.img"),
                     emulator=Path("/k/qemu-tcg"),
                     nics=(GuestNic(mac="52:54:00:c6:14:21", network="blue", tenant="acme", ips="198.19.14.21"),),
                     console_log=tmp_path / "c.log", exec_socket=tmp_path / "e.sock",
                     cmdline=guest_cmdline("s1", ip4="198.19.14.21/24"),
                     extra_devices=("<controller type='pci' index='1' model='pcie-root-port'/>",))


def _valid(tmp_path: Path, text: str, name: str) -> ET.Element:
    path = tmp_path / f"{name}.xml"
    path.write_text(text)
    netns.run(["virt-xml-validate", str(path), "domain"])
    return ET.fromstring(text)


def test_each_edit_changes_one_thing_and_libvirt_accepts_the_result(tmp_path: Path) -> None:
    assert shutil.which("virt-xml-validate"), "libvirt-clients missing"
    base = domain_xml(_spec(tmp_path))
    plain = _valid(tmp_path, xml_editor(["emulator="])(base), "plain")
    assert plain.find("devices/emulator") is None  # libvirt's own QEMU: the guest before the fix
    nic = _valid(tmp_path, xml_editor(["model=e1000"])(base), "e1000").find("devices/interface")
    assert nic is not None and nic.find("model").get("type") == "e1000"  # type: ignore[union-attr]
    assert nic.find("driver") is None  # the virtio-only offload switches go with virtio
    drv = _valid(tmp_path, xml_editor(["driver.event_idx=off", "driver.rx_queue_size=1024"])(base), "drv")
    assert drv.find("devices/interface/driver").attrib == {  # type: ignore[union-attr]
        "name": "qemu", "event_idx": "off", "rx_queue_size": "1024"}
    pc = _valid(tmp_path, xml_editor(["machine=pc"])(base), "pc")
    assert pc.find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    assert [c for c in pc.iter("controller") if c.get("model") == "pcie-root-port"] == []
    other = _valid(tmp_path, xml_editor(["emulator=/k/other", "cmdline+=nohz=off"])(base), "other")
    assert [e.text for e in other.iter("emulator")] == ["/k/other"]
    assert other.find("os/cmdline").text.endswith(" nohz=off")  # type: ignore[union-attr]


def test_a_dying_guests_console_is_recognised() -> None:
    console = ("[   35.6] BUG: unable to handle page fault for address: 0000001000000000\n"
               "[   35.7] veil-guest ready name=a1\n"
               "[   88.1] general protection fault, probably for non-canonical address 0xa65\n")
    assert len(dying_signs(console)) == 2 and dying_signs("veil-guest ready name=a1 dev=eth0\n") == []


def test_the_soak_lab_is_a1_and_a2_on_three_hosts_or_the_demos_lab() -> None:
    small = soak_topology()
    assert [h.name for h in small.hosts] == ["dc1-h1", "dc2-h1", "dc2-h2"]
    assert sorted(v.name for v in small.vms) == ["a1", "a2"] and {v.kind for v in small.vms} == {"libvirt"}
    assert len(soak_topology(full=True).vms) == 6
    assert guests.MEMORY_MIB == 128  # the RAM the docs' series ran with
