"""Soak test for issue 11's "Known problem": move a real TCG guest back and forth with
``virsh migrate --live`` under a 1 ms probe until it dies, and count the moves.

The smallest lab that shows it: three hypervisors (dc1-h1, dc2-h1, dc2-h2), a1 on dc1-h1 moving
dc1-h1 <-> dc2-h2, a2 on dc2-h1 pinging it every 1 ms from the other DC (lab.probed_migration),
veil's controller programming the hosts. After each move the harness waits ``--after``
seconds, then asks a1 for its hostname over its exec channel and reads its console: a panic,
an oops, a "not a head!" or a guest that no longer answers ends the series. The console logs
of the guest on both hosts are copied to ``--keep`` so the panic can be read afterwards.

``--edit`` changes the guest's domain XML for one series (one variable at a time), e.g.
``model=e1000``, ``driver.event_idx=off``, ``machine=pc``, ``cmdline+=nohz=off``,
``emulator=/path/to/wrapper`` (``emulator=``: libvirt's own QEMU, without the lab's qemu-tcg
wrapper, i.e. the guest as it was before the fix). The edits apply to the domain as defined; the migratable XML
carries them to the destination.

    python -m controller.lab.bench.movesoak --prefix k5a --moves 30 [--edit KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from controller.lab import topology
from controller.lab.lab import Lab
from controller.lab.run import run_for_lab

MOVER, PINGER = "a1", "a2"
HOSTS = ("dc1-h1", "dc2-h2")
KEEP_HOSTS = ("dc1-h1", "dc2-h1", "dc2-h2")  # the small lab
# What a dying guest's console shows (kernel messages at loglevel 4 and below).
SIGNS = ("Kernel panic", "BUG:", "Oops", "list_del corruption", "list_add corruption", "is not a head",
         "general protection fault", "WARNING:", "Call Trace")


def soak_topology(full: bool = False) -> topology.Topology:
    """The default two-DC topology cut to three hosts and the guests a1 and a2 (``full``: all
    four hosts and six guests, as the demo runs: more load, longer migrations)."""
    topo = topology.with_kind(topology.load(), "libvirt")
    if full:
        return topo
    return dataclasses.replace(topo, hosts=tuple(h for h in topo.hosts if h.name in KEEP_HOSTS),
                               vms=tuple(v for v in topo.vms if v.name in (MOVER, PINGER)))


def xml_editor(edits: list[str]) -> Callable[[str], str]:
    """A function that applies ``edits`` (KEY=VALUE) to a domain XML text."""
    def edit(text: str) -> str:
        dom = ET.fromstring(text)
        devices = dom.find("devices")
        assert devices is not None
        for item in edits:
            key, _, value = item.partition("=")
            if key == "model":
                for iface in devices.findall("interface"):
                    model = iface.find("model")
                    assert model is not None
                    model.set("type", value)
                    if value != "virtio":  # host/guest offload options are virtio-only
                        drv = iface.find("driver")
                        if drv is not None:
                            iface.remove(drv)
            elif key.startswith("driver."):
                for iface in devices.findall("interface"):
                    drv = iface.find("driver")
                    if drv is None:
                        drv = ET.SubElement(iface, "driver", name="qemu")
                    drv.set(key.split(".", 1)[1], value)
            elif key.startswith("host.") or key.startswith("guest."):
                part, attr = key.split(".", 1)
                for iface in devices.findall("interface"):
                    el = iface.find(f"driver/{part}")
                    assert el is not None
                    el.set(attr, value)
            elif key == "machine":
                ostype = dom.find("os/type")
                assert ostype is not None
                ostype.set("machine", value)
                if not value.startswith("q35") and "q35" not in value:  # pcie root ports are q35's
                    for ctl in devices.findall("controller"):
                        if ctl.get("model") == "pcie-root-port":
                            devices.remove(ctl)
            elif key == "cmdline+":
                cmd = dom.find("os/cmdline")
                assert cmd is not None
                cmd.text = f"{cmd.text} {value}"
            elif key == "emulator":  # empty: libvirt's default QEMU (no lab wrapper)
                for old in devices.findall("emulator"):
                    devices.remove(old)
                if value:
                    em = ET.Element("emulator")
                    em.text = value
                    devices.insert(0, em)
            elif key == "memory_kib":
                mem = dom.find("memory")
                assert mem is not None
                mem.set("unit", "KiB")
                mem.text = value
            else:
                raise SystemExit(f"unknown edit {item!r}")
        return ET.tostring(dom, encoding="unicode")
    return edit


def dying_signs(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(s in line for s in SIGNS)]


def answers(lab: Lab, patience: float = 40.0) -> tuple[bool, str]:
    """Whether a1 answers over its exec channel within ``patience`` seconds (a loaded two-core
    machine can take a while to reconnect the channel after a move), and the last error."""
    deadline = time.monotonic() + patience
    why = ""
    while time.monotonic() < deadline:
        try:
            if lab.guest_exec(MOVER, "hostname", timeout=10).output.strip() == MOVER:
                return True, ""
        except Exception as exc:  # noqa: BLE001 - a dead guest's exec channel fails in many ways
            why = f"{type(exc).__name__}: {exc}"
        log = lab.hypervisor_of(MOVER).console_log(MOVER)
        if log.exists() and dying_signs(log.read_text(errors="replace")):
            return False, "console shows a panic"
        time.sleep(1.0)
    return False, why or "no answer"


def soak(prefix: str, moves: int, edits: list[str], keep: Path, after: float, probe_seconds: float,
         say: Callable[[str], None], full: bool = False) -> dict[str, object]:
    lab = Lab(soak_topology(full), prefix=prefix)
    lab.domain_edit = xml_editor(edits) if edits else None
    ctl = None
    done = 0
    record: list[dict[str, object]] = []
    verdict = "survived"
    keep.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    try:
        lab.up()
        ctl = run_for_lab(lab)
        ctl.sync()
        deadline = time.monotonic() + 30
        while not lab.ping(PINGER, MOVER):
            if time.monotonic() > deadline:
                raise RuntimeError("a2 never reached a1")
        say(f"lab {prefix} up in {time.monotonic() - began:.0f}s; edits {edits or ['(none)']}")
        for i in range(1, moves + 1):
            src = lab.placement(MOVER)
            dst = HOSTS[1] if src == HOSTS[0] else HOSTS[0]
            try:
                move, probe = lab.probed_migration(MOVER, dst, PINGER, seconds=probe_seconds)
            except Exception as exc:  # noqa: BLE001 - a failed move ends the series, reported
                verdict = f"move {i} failed: {exc}"
                break
            time.sleep(after)
            log = lab.hypervisors[dst].console_log(MOVER)
            text = log.read_text(errors="replace") if log.exists() else ""
            signs = dying_signs(text)
            alive, why = answers(lab)
            text = log.read_text(errors="replace") if log.exists() else ""
            signs = dying_signs(text)
            row = {"move": i, "dst": dst, "seconds": move.seconds, "downtime_ms": move.downtime_ms,
                   "outage_ms": probe.outage_ms, "lost": probe.sent - probe.received, "sent": probe.sent,
                   "alive": alive, "why": why, "signs": signs[:3]}
            record.append(row)
            say(f"move {i} -> {dst}: {move.seconds:.1f}s, downtime {move.downtime_ms} ms, outage "
                f"{probe.outage_ms} ms, lost {probe.sent - probe.received}/{probe.sent}, alive {alive}"
                + (f" ({why})" if not alive else "") + (f", console: {signs[0]}" if signs else ""))
            done = i
            if signs or not alive:
                verdict = f"died after move {i}"
                time.sleep(10.0)  # the rest of the oops reaches the console
                break
    finally:
        for host, hv in lab.hypervisors.items():  # every host: a1's last two consoles
            for f in (hv.console_log(MOVER), hv.dir / "libvirt" / "log" / "qemu" / f"{lab.domain_name(MOVER)}.log"):
                if f.exists():
                    shutil.copyfile(f, keep / f"{host}-{f.name}")
        if ctl is not None:
            ctl.stop()
        lab.down()
    result: dict[str, object] = {"prefix": prefix, "edits": edits, "full": full, "moves_ok": done, "verdict": verdict,
                                 "wall_s": round(time.monotonic() - began), "moves": record}
    (keep / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.lab.bench.movesoak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefix", required=True)
    p.add_argument("--moves", type=int, default=30)
    p.add_argument("--edit", action="append", default=[], help="KEY=VALUE domain XML edit (repeatable)")
    p.add_argument("--keep", type=Path, help="where the consoles and result.json go (default /tmp/soak-PREFIX)")
    p.add_argument("--after", type=float, default=3.0, help="seconds to wait after each move before checking")
    p.add_argument("--probe-seconds", type=float, default=8.0)
    p.add_argument("--full", action="store_true", help="all six guests on four hosts (the demo's lab)")
    args = p.parse_args(argv)
    keep = args.keep or Path(f"/tmp/soak-{args.prefix}")
    res = soak(args.prefix, args.moves, args.edit, keep, args.after, args.probe_seconds,
               lambda m: print(m, flush=True), full=args.full)
    print(f"RESULT {args.prefix} edits={args.edit} moves_ok={res['moves_ok']} verdict={res['verdict']} "
          f"wall={res['wall_s']}s (consoles in {keep})", flush=True)
    return 0 if res["verdict"] == "survived" else 1


if __name__ == "__main__":
    sys.exit(main())
