"""Builds the lab's test guest: Debian's cloud kernel plus a busybox initramfs, cached.

Everything comes from Debian packages fetched with ``apt-get download`` (the only registry
this machine reaches): the kernel named by ``linux-image-cloud-amd64``'s dependency (one
package at one version: a glob would fetch every version) and ``busybox-static``. The
initramfs holds busybox, the virtio-net and virtio-console module chains (resolved from the
modules' own ``depends=``), veil's /init and a small static echo responder compiled here with
Debian's gcc (busybox-static has no UDP netcat and no udpsvd). Beside them goes ``qemu-tcg``,
the emulator wrapper a TCG guest's domain names (files/qemu-tcg.sh: it works around QEMU 7.2's
lost guest stores during live migration, docs/kvm.md "Known problem").

The result lives in ``<cache>/<key>/`` where ``key`` hashes every input (package versions,
the init script, the responder source, the emulator wrapper, the compiler version, the module
list and BUILDER_VERSION): unchanged inputs are a cache hit, any change builds a new directory.
Downloaded .deb files are kept in ``<cache>/debs/`` by exact version, so a rebuild after an
init-script change does not download again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from controller.lab.guest import newc
from controller.lab.guest.kmod import ModuleTree

BUILDER_VERSION = "1"
DEFAULT_CACHE = Path(os.environ.get("VEIL_GUEST_CACHE", "/var/cache/veil/guest"))
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# Roots of the module chains /init loads; dependencies are added from modinfo.
MODULES = ("virtio_pci", "virtio_net", "virtio_console")


class BuildError(RuntimeError):
    """A step of the image build failed; the message names the step and its output."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel and initrd paths, and what it was built from."""

    kernel: Path
    initrd: Path
    emulator: Path  # qemu-tcg: the <emulator> of a TCG guest
    release: str
    key: str
    packages: tuple[Package, ...]
    modules: tuple[str, ...]
    cached: bool  # True when this call found it already built

    def describe(self) -> str:
        return f"kernel {self.kernel}\ninitrd {self.initrd}\nrelease {self.release} key {self.key}" + (
            " (cached)" if self.cached else " (built)")


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 300.0) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed (needed for: {' '.join(argv)})") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"timed out after {timeout}s: {' '.join(argv)}") from None
    if proc.returncode != 0:
        raise BuildError(f"exit {proc.returncode}: {' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def _policy_versions(names: tuple[str, ...]) -> dict[str, str]:
    """name -> the version apt would install (the installed one if any), from one local
    ``apt-cache policy`` call (each apt-cache run costs ~0.8 s here: no call per package)."""
    out = _run(["apt-cache", "policy", *names])
    found: dict[str, str] = {}
    for block in re.split(r"^(?=\S)", out, flags=re.M):
        head = re.match(r"(\S+):\s*$", block.split("\n", 1)[0])
        if head is None:
            continue
        installed = re.search(r"^\s*Installed:\s*(\S+)", block, re.M)
        cand = re.search(r"^\s*Candidate:\s*(\S+)", block, re.M)
        for m in (installed, cand):
            if m and m.group(1) != "(none)":
                found[head.group(1)] = m.group(1)
                break
    return found


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    found = _policy_versions(names)
    if len(found) < len(names):  # package lists never fetched on this machine: once, then again
        _run(["apt-get", "update", "-q"], timeout=600)
        found = _policy_versions(names)
    missing = [n for n in names if n not in found]
    if missing:
        raise BuildError(f"apt knows no version of {', '.join(missing)} (even after apt-get update)")
    return found


def resolve_packages() -> tuple[Package, Package]:
    """The kernel package (the meta package's one linux-image-* dependency) and busybox-static."""
    versions = _versions((KERNEL_META, BUSYBOX))
    meta = versions[KERNEL_META]
    show = _run(["apt-cache", "show", f"{KERNEL_META}={meta}"])
    dep = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,(]*-cloud-amd64)\s*\(=\s*([^)\s]+)\)", show, re.M)
    if dep is None:
        raise BuildError(f"no linux-image-*-cloud-amd64 dependency in {KERNEL_META}={meta}:\n{show[:1000]}")
    return Package(dep.group(1), dep.group(2)), Package(BUSYBOX, versions[BUSYBOX])


def fetch_deb(pkg: Package, debs: Path) -> Path:
    """The .deb of ``pkg`` from the download cache, else ``apt-get download`` of exactly it."""
    debs.mkdir(parents=True, exist_ok=True)
    dest = debs / f"{pkg.name}_{pkg.version.replace(':', '%3a')}.deb"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user must be able to write there (else a warning only)
        _run(["apt-get", "download", "-q", pkg.spec], cwd=Path(tmp), timeout=600)
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise BuildError(f"apt-get download {pkg.spec} gave {[p.name for p in got]}, expected one .deb")
        got[0].replace(dest)
    return dest


def _data(name: str) -> bytes:
    return resources.files("controller.lab.guest").joinpath("files", name).read_bytes()


def compiler_version() -> str:
    return _run(["gcc", "-dumpfullversion"]).strip()


EMULATOR = "qemu-tcg"


def inputs_key(packages: tuple[Package, ...], init: bytes, echo_src: bytes, compiler: str,
               emulator: bytes = b"") -> str:
    """A hash of everything the image is built from: any change gives a new image directory."""
    doc = json.dumps({
        "builder": BUILDER_VERSION,
        "packages": [asdict(p) for p in packages],
        "init": hashlib.sha256(init).hexdigest(),
        "echo": hashlib.sha256(echo_src).hexdigest(),
        "emulator": hashlib.sha256(emulator).hexdigest(),
        "gcc": compiler,
        "modules": list(MODULES),
    }, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def build(cache: Path = DEFAULT_CACHE, *, init: bytes | None = None, debs: Path | None = None) -> GuestImage:
    """The guest image for the current inputs, building it unless ``cache`` already has it.

    ``init`` replaces the packaged /init script (tests use this to check the rebuild rule);
    ``debs`` is the .deb download cache (default ``cache/debs``: tests share the real one).
    """
    init = _data("init.sh") if init is None else init
    echo_src = _data("echo.c")
    kernel_pkg, busybox_pkg = resolve_packages()
    packages = (kernel_pkg, busybox_pkg)
    wrapper = _data("qemu-tcg.sh")
    key = inputs_key(packages, init, echo_src, compiler_version(), wrapper)
    out = cache / key
    manifest = out / "manifest.json"
    if manifest.exists():
        return _from_manifest(out, json.loads(manifest.read_text()), cached=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=cache) as tmp:
        work = Path(tmp)
        doc = _build_into(work, debs or cache / "debs", packages, init, echo_src)
        doc["key"] = key
        (work / "out" / EMULATOR).write_bytes(wrapper)
        os.chmod(work / "out" / EMULATOR, 0o755)
        (work / "out" / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
        try:
            (work / "out").rename(out)
        except OSError:
            if not manifest.exists():  # another build of the same key won the race: use it
                raise
    return _from_manifest(out, json.loads(manifest.read_text()), cached=False)


def _build_into(work: Path, debs: Path, packages: tuple[Package, Package], init: bytes,
                echo_src: bytes) -> dict[str, object]:
    began = time.monotonic()
    kernel_pkg, busybox_pkg = packages
    root = work / "x"
    for pkg in packages:
        _run(["dpkg-deb", "-x", str(fetch_deb(pkg, debs)), str(root)])
    (release,) = [p.name for p in (root / "lib" / "modules").iterdir()]
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    busybox = root / "bin" / "busybox"
    if not vmlinuz.exists() or not busybox.exists():
        raise BuildError(f"{vmlinuz} or {busybox} missing after extracting {[p.spec for p in packages]}")
    (work / "echo.c").write_bytes(echo_src)
    _run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", str(work / "veil-echo"), str(work / "echo.c")])
    order = ModuleTree(root / "lib" / "modules" / release).load_order(list(MODULES))
    entries = [newc.directory(d) for d in ("bin", "dev", "etc", "etc/veil", "lib", "lib/modules", "proc",
                                            "sys", "tmp", "run", "sbin", "usr", "usr/bin", "usr/sbin")]
    entries += [
        newc.regular("init", init, 0o755),
        newc.regular("bin/busybox", busybox.read_bytes(), 0o755),
        newc.symlink("bin/sh", "busybox"),
        newc.regular("bin/veil-echo", (work / "veil-echo").read_bytes(), 0o755),
        newc.regular("etc/veil/modules", "".join(f"{p.name}\n" for p in order).encode()),
    ]
    entries += [newc.regular(f"lib/modules/{p.name}", p.read_bytes()) for p in order]
    out = work / "out"
    out.mkdir()
    newc.write_gzip(entries, out / "initrd.img")
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    return {
        "release": release,
        "packages": [asdict(p) for p in packages],
        "modules": [p.name for p in order],
        "build_seconds": round(time.monotonic() - began, 2),
    }


def load(directory: Path) -> GuestImage:
    """A built image copied elsewhere (the Vagrant box carries one): its directory holds
    vmlinuz, initrd.img, the qemu-tcg wrapper and the manifest ``build`` wrote."""
    manifest = directory / "manifest.json"
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{manifest}: no guest image manifest here ({exc})") from exc
    if not isinstance(doc, dict) or not all(k in doc for k in ("packages", "modules", "release", "key")):
        raise BuildError(f"{manifest}: not a guest image manifest (packages, modules, release, key)")
    return _from_manifest(directory, doc, cached=True)


def _from_manifest(out: Path, doc: dict[str, object], *, cached: bool) -> GuestImage:
    pkgs = doc["packages"]
    mods = doc["modules"]
    assert isinstance(pkgs, list) and isinstance(mods, list)
    return GuestImage(
        kernel=out / "vmlinuz", initrd=out / "initrd.img", emulator=out / EMULATOR, release=str(doc["release"]), key=str(doc["key"]),
        packages=tuple(Package(str(p["name"]), str(p["version"])) for p in pkgs),
        modules=tuple(str(m) for m in mods), cached=cached,
    )
