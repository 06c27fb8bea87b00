"""Which accelerator the lab's guests use: KVM only where a KVM guest really boots.

/dev/kvm existing proves nothing here: on this machine a KVM guest hangs after SeaBIOS
"Booting from ROM" and ``-cpu host`` aborts on an MSR. So the verdict comes from a probe boot
of the real test guest under ``-accel kvm`` (direct kernel boot, no network backend, console
to a file), waiting for /init's ready marker with a timeout; the QEMU process is then killed
by its PID. The verdict is cached per machine, keyed by host kernel release + QEMU version
+ CPU model, since those are what decide whether KVM works; a missing or unopenable /dev/kvm
gives "tcg" without a probe.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.lab.guest import console
from controller.lab.guest.image import GuestImage

QEMU = "qemu-system-x86_64"
DEFAULT_CACHE = Path(os.environ.get("VEIL_ACCEL_CACHE", "/var/cache/veil/accel"))
PROBE_TIMEOUT = 10.0
PROBE_MAC = "52:54:00:c6:12:01"


@dataclass(frozen=True)
class Verdict:
    """``accel`` is "kvm" or "tcg"; ``domain_type`` is what libvirt's <domain type=...> wants."""

    accel: str
    reason: str
    key: str
    probed_seconds: float  # how long the probe took (0 when decided without a boot)
    cached: bool = False

    @property
    def domain_type(self) -> str:
        return "kvm" if self.accel == "kvm" else "qemu"


def qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    return out.splitlines()[0].strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_key() -> str:
    doc = {"kernel": platform.release(), "qemu": qemu_version(), "cpu": cpu_model()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def qemu_argv(image: GuestImage, *, accel: str, log: Path, exec_socket: Path | None = None,
              memory_mib: int = 128, name: str = "probe") -> list[str]:
    """Direct-boot QEMU argv for the test guest (the probe's; the lab uses libvirt instead).

    The NIC sits on an internal hub with nothing else on it: /init finds its NIC and gets
    ready, and no frame can leave QEMU."""
    argv = [
        QEMU, "-machine", f"q35,accel={accel}", "-m", str(memory_mib), "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 panic=-1 loglevel=4 veil.name={name} veil.mac={PROBE_MAC}",
        "-serial", f"file:{log}",
        "-netdev", "hubport,id=n0,hubid=0", "-device", f"virtio-net-pci,netdev=n0,mac={PROBE_MAC}",
    ]
    if exec_socket is not None:
        argv += ["-device", "virtio-serial-pci",
                 "-chardev", f"socket,id=ex,path={exec_socket},server=on,wait=off",
                 "-device", "virtserialport,chardev=ex,name=org.veil.exec"]
    return argv


def boot_check(image: GuestImage, accel: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str, float]:
    """Boot the guest under ``accel``: (reached ready, why, seconds). QEMU is killed by PID."""
    with tempfile.TemporaryDirectory(prefix="veil-accel-") as tmp:
        log = Path(tmp) / "console.log"
        began = time.monotonic()
        proc = subprocess.Popen(qemu_argv(image, accel=accel, log=log), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=(Path(tmp) / "qemu.err").open("wb"))
        try:
            ready = console.wait_ready(log, name="probe", timeout=timeout, alive=lambda: proc.poll() is None)
            return True, f"{accel} guest ready after {ready.seen_after:.1f}s (guest uptime {ready.guest_uptime}s)", \
                time.monotonic() - began
        except console.GuestNotReady as exc:
            err = " / ".join((Path(tmp) / "qemu.err").read_text(errors="replace").split("\n"))[-300:].strip(" /")
            last = [ln for ln in console.tail(log, 400).splitlines() if ln.strip()][-1:] or ["(empty console)"]
            why = str(exc).splitlines()[0]
            return False, f"{accel}: {why}; last console line: {last[0]!r}" + (f"; qemu: {err}" if err else ""), \
                time.monotonic() - began
        finally:
            proc.kill()  # by this PID only
            proc.wait(timeout=30)


def probe(image: GuestImage, cache: Path = DEFAULT_CACHE, *, refresh: bool = False,
          timeout: float = PROBE_TIMEOUT) -> Verdict:
    """The cached verdict for this machine, probing (one KVM boot, <= ``timeout`` s) if none."""
    key = machine_key()
    path = cache / f"{key}.json"
    if not refresh and path.exists():
        doc = json.loads(path.read_text())
        return Verdict(str(doc["accel"]), str(doc["reason"]), key, float(doc["probed_seconds"]), cached=True)
    if shutil.which(QEMU) is None:
        raise RuntimeError(f"{QEMU} is not installed: run controller/lab/scripts/deps.sh --libvirt")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        verdict = Verdict("tcg", "/dev/kvm missing or not usable by this user", key, 0.0)
    else:
        ok, why, seconds = boot_check(image, "kvm", timeout)
        verdict = Verdict("kvm" if ok else "tcg", why, key, round(seconds, 2))
    cache.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return verdict
