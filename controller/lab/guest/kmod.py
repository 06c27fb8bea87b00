"""Kernel module dependencies read from the modules themselves (no modules.dep needed).

Debian's kernel package ships no modules.dep (postinst runs depmod), and running depmod would
need kmod on the build host. Every ``.ko`` carries its own ``depends=`` list in its ELF
``.modinfo`` section, which is all the load order needs: dependencies first, each once.
Modules listed in ``modules.builtin`` are part of the kernel image and are not loaded.
"""

from __future__ import annotations

import lzma
import struct
from pathlib import Path


class ModuleError(RuntimeError):
    """A wanted module is neither a .ko file nor built in, or a .ko cannot be read."""


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike (as modprobe does)."""
    return name.replace("-", "_")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ko.xz", ".ko"):
        if name.endswith(suffix):
            return canonical(name[: -len(suffix)])
    return canonical(name)


def read_ko(path: Path) -> bytes:
    """The ELF bytes of a module (Debian later compresses them with xz: handle both)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modinfo(elf: bytes) -> dict[str, str]:
    """The key=value strings of the ELF64 little-endian ``.modinfo`` section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ModuleError("not an ELF64 little-endian kernel module")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name:end] == b".modinfo":
            info: dict[str, str] = {}
            for item in elf[off:off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep and key not in info:
                    info[key] = value
            return info
    raise ModuleError("module has no .modinfo section")


class ModuleTree:
    """The modules of one extracted kernel: ``root`` is /lib/modules/<release>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = {_stem(p): p for p in root.rglob("*.ko*") if p.is_file()}
        builtin = root / "modules.builtin"
        self.builtin = {_stem(Path(line.strip())) for line in builtin.read_text().splitlines()} if builtin.exists() else set()

    def load_order(self, wanted: list[str]) -> list[Path]:
        """The .ko files to insmod, in order, for ``wanted`` and their dependencies."""
        order: list[Path] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            name = canonical(name)
            if name in seen:
                return
            if name in chain:
                raise ModuleError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
            if name in self.builtin and name not in self.files:
                seen.add(name)
                return
            path = self.files.get(name)
            if path is None:
                raise ModuleError(f"module {name} is neither in {self.root} nor built into the kernel")
            deps = modinfo(read_ko(path)).get("depends", "")
            for dep in filter(None, deps.split(",")):
                visit(dep, chain + (name,))
            seen.add(name)
            order.append(path)

        for name in wanted:
            visit(name, ())
        return order
