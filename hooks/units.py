"""veil's systemd units (hooks/systemd/*.service, package data) and how installers write them.

The unit files name veil's commands as ``@BINDIR@/COMMAND``; ``install_units`` writes them
with the directory the running veil's commands are in (a venv, /usr/local/bin ...), each
marked as veil's, atomically, then asks systemd to reload when it runs. Which installer
writes which: veil-libvirt-install the hostd and libvirt-agent units, veil-xen-install the
xapi-sync unit, `veil install-units` any of them (the controller's on the controller machine).
"""

# (no ``from __future__ import annotations``: dom0's Python 3.6 runs this through veil-xen-install;
# annotations are quoted instead)
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parent / "systemd"
SYSTEM_DIR = Path("/etc/systemd/system")
UNITS = ("veil-controller", "veil-hostd", "veil-libvirt-agent", "veil-xapi-sync")
MARKER = "# veil: installed by"


class UnitError(ValueError):
    """A unit name veil does not ship, or a unit file that is not veil's."""


def bindir() -> "Path":
    """Where this veil's commands are: next to the interpreter running it (venv or system)."""
    return Path(sys.executable).parent


def unit_text(name: str, commands: "Path | None" = None) -> str:
    """Unit ``name`` (e.g. ``veil-hostd``) with its commands' directory filled in."""
    if name not in UNITS:
        raise UnitError(f"no unit {name!r}; veil ships {', '.join(UNITS)}")
    text = (UNIT_DIR / f"{name}.service").read_text()
    return text.replace("@BINDIR@", str(commands or bindir()))


def install_units(names: "Iterable[str]", directory: "Path" = SYSTEM_DIR,
                  commands: "Path | None" = None) -> "list[Path]":
    """Write each unit into ``directory`` (a foreign file of that name is refused); returns
    the paths written. Reloads systemd when it is running and ``directory`` is its own."""
    written = []
    for name in names:
        text = unit_text(name, commands)
        path = directory / f"{name}.service"
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            raise UnitError(f"{path} exists and is not veil's: remove it or move it away")
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        written.append(path)
    if written and directory == SYSTEM_DIR and Path("/run/systemd/system").is_dir() and \
            shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return written


def uninstall_units(names: "Iterable[str]", directory: "Path" = SYSTEM_DIR) -> "list[Path]":
    """Remove the units of ``names`` that are veil's (carry the marker)."""
    removed = []
    for name in names:
        path = directory / f"{name}.service"
        if path.exists() and MARKER in path.read_text(errors="replace"):
            path.unlink()
            removed.append(path)
    return removed
