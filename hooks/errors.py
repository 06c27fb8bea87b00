"""Errors shared by the hook core. Import-light: the qemu hook imports this on every call.

The split matters to callers: a ``RegistrarError`` is transient (spool the event and retry),
a ``VifError`` or ``PlugRejected`` is permanent (log it; retrying the same event cannot help).
"""


class VifError(ValueError):
    """A VIF description is invalid (bad MAC, empty id, bad port name...)."""


class RegistrarError(RuntimeError):
    """OVSDB is unreachable, timed out, or not ready (no integration bridge): retry later."""


class PlugRejected(RuntimeError):
    """OVSDB refused the change for a reason a retry cannot fix (e.g. no such port to update)."""


class SpoolError(RuntimeError):
    """The spool directory is unusable (permissions, disk full...): an operator must act."""


class OvsdbUnreachable(RegistrarError):
    """No OVSDB server answered at ``remote`` (transient: retry later)."""

    def __init__(self, remote: str, why: str) -> None:
        super().__init__(f"cannot reach OVSDB at {remote}: {why}")
        self.remote = remote
        self.why = why


def one_line(text: str) -> str:
    """``text`` as one printable line: newlines, other control characters and lone surrogates
    (quoted from untrusted input) escaped as in repr, so a message never spans or forges lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
