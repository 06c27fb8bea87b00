"""The framing between the installed sh hook and veil-hostd's hook service (libvirt_hooks/service.py).

Request (what the sh hook writes with builtins and ``cat``, then sends with socat)::

    veil-hook/1 ARGC\\n
    CONFIG_PATH \\0 REQUEST_FILE \\0 REPLY_FILE \\0
    ARG1 \\0 ... ARGn \\0                     (argv cannot hold a NUL: no escaping needed)
    STDIN BYTES ... until the client's EOF     (binary, passed through unchanged)

Reply::

    veil-hook-reply/1 STATUS STDERR_LEN STDOUT_LEN end\\n
    STDERR BYTES  STDOUT BYTES                 (exactly those lengths, nothing after)

The two file names are the sh hook's own copies of the request (its fallback's stdin) and of the
reply; it holds both open, and the service unlinks them once it has read the whole request
(the sh hook then needs no ``rm`` process; a service that did not is covered by the hook).
The sh hook checks the header (magic, numbers, the ``end`` word, a newline) and the total size
before it replays anything; any doubt and it runs the Python hook itself (the fallback), so a
reply is used whole or not at all. This module imports nothing: the fallback path loads it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

MAGIC = b"veil-hook/1"
REPLY_MAGIC = b"veil-hook-reply/1"
MAX_HEADER = 64  # the first line
MAX_ARGS_BYTES = 1 << 16  # config path + argv (libvirt passes 4 short words and the domain name)
MAX_ARGC = 64


class WireError(ValueError):
    """A request that does not follow the framing (one line, says what)."""


def parse_header(line: bytes) -> int:
    """ARGC from the request's first line (with its newline)."""
    if not line.endswith(b"\n") or len(line) > MAX_HEADER:
        raise WireError("request header: no newline within the first 64 bytes")
    magic, _, count = line[:-1].partition(b" ")
    if magic != MAGIC or not count.isdigit() or not 0 <= int(count) <= MAX_ARGC:
        raise WireError(f"request header: expected '{MAGIC.decode()} ARGC' (ARGC <= {MAX_ARGC}), got {line[:40]!r}")
    return int(count)


def read_fields(stream: BinaryIO, count: int) -> list[bytes]:
    """``count`` NUL-terminated fields from ``stream`` (at most MAX_ARGS_BYTES in all)."""
    fields: list[bytes] = []
    budget = MAX_ARGS_BYTES
    current = bytearray()
    while len(fields) < count:
        byte = stream.read(1)
        if not byte:
            raise WireError(f"request ended inside its argument list ({len(fields)} of {count} fields)")
        if byte == b"\0":
            fields.append(bytes(current))
            current.clear()
            continue
        budget -= 1
        if budget < 0:
            raise WireError(f"request arguments longer than {MAX_ARGS_BYTES} bytes")
        current += byte
    return fields


FIELDS_BEFORE_ARGV = 3  # config path, request file, reply file


def skip_request_header(stream: BinaryIO) -> None:
    """Position ``stream`` (a request file) at its stdin bytes: the sh hook's fallback path."""
    read_fields(stream, parse_header(stream.readline(MAX_HEADER + 1)) + FIELDS_BEFORE_ARGV)


def reply(status: int, out: bytes, err: bytes) -> bytes:
    return b"%s %d %d %d end\n%s%s" % (REPLY_MAGIC, status, len(err), len(out), err, out)
