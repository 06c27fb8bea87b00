"""A gzip-compressed cpio "newc" archive writer: the initramfs format the kernel unpacks.

Written in Python rather than shelling out to ``cpio -H newc`` so the image build needs no
cpio package, and so the archive is reproducible: entries are sorted, owned by root and
stamped with mtime 0, which keeps the initrd's bytes (and so its hash) a pure function of
the inputs.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` without a leading slash; ``data`` is file content or symlink target."""

    path: str
    mode: int
    data: bytes = b""


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def _header(ino: int, entry: Entry, nlink: int) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
    head = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name
    return head + b"\0" * (-len(head) % 4)


def archive(entries: list[Entry]) -> bytes:
    """The uncompressed newc archive of ``entries`` (parents must be listed by the caller)."""
    out = bytearray()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        out += _header(ino, entry, nlink) + entry.data + b"\0" * (-len(entry.data) % 4)
    out += _header(0, Entry(TRAILER, 0), 1)
    return bytes(out)


def write_gzip(entries: list[Entry], dest: Path) -> None:
    """Write the gzip'd archive to ``dest`` (mtime 0 in the gzip header: reproducible bytes)."""
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(archive(entries))
    tmp.replace(dest)
