"""A durable, ordered spool of VIF events for when OVSDB cannot take them now.

Layout of a spool directory::

    .seq            last sequence number handed out (flock'ed while appending)
    .apply.lock     held by whoever applies events: the hook's direct write or a drain
    00000000000000000042.json   one event, named by its sequence number
    rejected/       events that can never apply, each with a ``.reason`` file beside it

Every event is written to a temp file, fsync'd, renamed into place and the directory fsync'd,
so a crash leaves either the whole event or nothing. Events are full desired states
(``plug`` this VIF / ``unplug`` this port), so applying one twice gives the same rows:
a crash between apply and delete is harmless.

Order is kept by one rule: nobody writes a VIF registration while older events are pending,
and everything that writes holds ``.apply.lock``. The short-lived hooks (``submit``) spool
their events behind the pending ones; veil-hostd (``drain``) applies them; every other writer
(the XenServer sync daemon and dom0 plugin, which write the newest intent straight through)
writes inside ``in_order``, which applies the pending events first under the same lock. So a
spooled plug of a port can never land after a newer direct unplug of it.

Import-light on purpose (no pathlib/json/typing, not even ``os``: its import, with
``_collections_abc`` for ``posix.environ``, costs the hook ~2 ms of CPU; ``posix`` is what ``os``
re-exports and is loaded with the interpreter): the qemu hook imports it on every call.
"""

import fcntl
import posix
import time

from hooks import jsonlite
from hooks.errors import PlugRejected, RegistrarError, SpoolError, VifError
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol, TypeAlias  # novm: type checking only

    AnyEvent: "TypeAlias" = "PlugEvent | UnplugEvent | UnplugVmEvent"

    class VifStore(Protocol):
        """What applies events: hooks.registrar.Registrar or hooks.ovsdb.rpc.RpcRegistrar."""

        def plug(self, vif: "Vif", *, add_port: bool) -> None: ...

        def unplug(self, port: str, *, delete_port: bool) -> None: ...

        def unplug_vm(self, vm_id: str) -> None: ...


__all__ = ["Spool", "SpoolError", "PlugEvent", "UnplugEvent", "UnplugVmEvent", "submit", "drain", "in_order",
           "apply_event", "HOOK_LOCK_WAIT"]
SUFFIX = ".json"
# Seconds a hook (qemu hook, vif-hotplug) waits for the apply lock before spooling behind its
# holder: another hook or the host daemon's pass holds it for its own OVSDB writes, a few
# milliseconds; spooling behind that would leave the VIF unregistered until veil-hostd drains.
HOOK_LOCK_WAIT = 0.5
MAX_EVENT_BYTES = 1 << 20


class CorruptEvent(ValueError):
    """An event file cannot be parsed: it is moved to rejected/, never silently dropped."""


class PlugEvent:
    """Register ``vif``; ``add_port`` when veil adds the port itself (tap/ethernet case)."""

    __slots__ = ("vif", "add_port")

    def __init__(self, vif: "Vif", add_port: bool) -> None:
        self.vif = vif
        self.add_port = add_port

    def record(self) -> "dict[str, object]":
        return {"op": "plug", "add_port": self.add_port, "vif": self.vif.to_record()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlugEvent) and (self.vif, self.add_port) == (other.vif, other.add_port)

    def __repr__(self) -> str:
        return f"PlugEvent({self.vif!r}, add_port={self.add_port})"


class UnplugEvent:
    """Remove ``port`` (``delete_port``) or deactivate it (libvirt removes the port itself)."""

    __slots__ = ("port", "delete_port")

    def __init__(self, port: str, delete_port: bool) -> None:
        self.port = port
        self.delete_port = delete_port

    def record(self) -> "dict[str, object]":
        return {"op": "unplug", "port": self.port, "delete_port": self.delete_port}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnplugEvent) and (self.port, self.delete_port) == (other.port, other.delete_port)

    def __repr__(self) -> str:
        return f"UnplugEvent({self.port!r}, delete_port={self.delete_port})"



class UnplugVmEvent:
    """Unplug every port veil registered for VM ``vm_id`` (a stopped domain's XML names no taps)."""

    __slots__ = ("vm_id",)

    def __init__(self, vm_id: str) -> None:
        self.vm_id = vm_id

    def record(self) -> "dict[str, object]":
        return {"op": "unplug_vm", "vm_id": self.vm_id}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnplugVmEvent) and self.vm_id == other.vm_id

    def __repr__(self) -> str:
        return f"UnplugVmEvent({self.vm_id!r})"


def event_from_record(record: object) -> "AnyEvent":
    """Parse a spooled record; CorruptEvent says what is wrong with it."""
    if not isinstance(record, dict):
        raise CorruptEvent(f"event is not an object: {record!r}"[:200])
    op = record.get("op")
    try:
        if op == "plug" and isinstance(record.get("add_port"), bool) and isinstance(record.get("vif"), dict):
            return PlugEvent(Vif.from_record(record["vif"]), record["add_port"])
        if op == "unplug" and isinstance(record.get("port"), str) and isinstance(record.get("delete_port"), bool):
            return UnplugEvent(record["port"], record["delete_port"])
        if op == "unplug_vm" and isinstance(record.get("vm_id"), str) and record["vm_id"]:
            return UnplugVmEvent(record["vm_id"])
    except (VifError, TypeError) as exc:
        raise CorruptEvent(f"invalid {op} event: {exc}") from None
    raise CorruptEvent(f"unknown or incomplete event {record!r}"[:200])


def apply_event(store: "VifStore", event: "AnyEvent") -> None:
    """Apply one event; errors of the store propagate unchanged."""
    if isinstance(event, PlugEvent):
        store.plug(event.vif, add_port=event.add_port)
    elif isinstance(event, UnplugEvent):
        store.unplug(event.port, delete_port=event.delete_port)
    else:
        store.unplug_vm(event.vm_id)


class Spool:
    """One spool directory (created 0700 on first use)."""

    def __init__(self, directory: str) -> None:
        self.directory = _abspath(str(directory))
        self.rejected_dir = _join(self.directory, "rejected")

    def ensure(self) -> None:
        try:
            ensure_dir(self.rejected_dir, 0o700)
        except OSError as exc:
            raise SpoolError(f"cannot create spool {self.directory}: {exc}") from None

    # -- writing -------------------------------------------------------------------------------
    def append(self, event: "AnyEvent") -> str:
        """Durably add ``event`` after all pending ones; returns its file path."""
        self.ensure()
        data = jsonlite.dumps(event.record()).encode()  # type: ignore[arg-type]
        try:
            with _Locked(_join(self.directory, ".seq"), blocking=True) as seq_lock:
                fd = seq_lock.fd
                raw = posix.pread(fd, 64, 0).strip()
                # Never below a number in use, even if the counter file was lost or reset.
                seq = max(int(raw) if raw.isdigit() else 0, self._highest_in_use()) + 1
                # The counter is made durable first: a crash then only leaves a gap, never
                # a reused number that would overwrite an event. Fixed width: rewritten in place.
                posix.pwrite(fd, f"{seq:020d}".encode(), 0)
                posix.fsync(fd)
                name = f"{seq:020d}{SUFFIX}"
                tmp = _join(self.directory, f".tmp-{name}-{posix.getpid()}")
                _write_durably(tmp, data)
                final = _join(self.directory, name)
                posix.rename(tmp, final)
                _fsync_dir(self.directory)
        except OSError as exc:
            raise SpoolError(f"cannot write to spool {self.directory}: {exc}") from None
        return final

    def _highest_in_use(self) -> int:
        names = [_basename(p) for p in self.pending() + self.rejected()]
        return max((int(n[: -len(SUFFIX)]) for n in names), default=0)

    # -- reading -------------------------------------------------------------------------------
    def pending(self) -> "list[str]":
        """Paths of the pending events, oldest first."""
        try:
            names = posix.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [
            _join(self.directory, n)
            for n in sorted(n for n in names if n.endswith(SUFFIX) and n[: -len(SUFFIX)].isdigit())
        ]

    def load(self, path: str) -> "AnyEvent":
        with open(path, "rb") as f:
            data = f.read(MAX_EVENT_BYTES + 1)
        if len(data) > MAX_EVENT_BYTES:
            raise CorruptEvent(f"{path}: larger than {MAX_EVENT_BYTES} bytes")
        try:
            record = jsonlite.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, jsonlite.JsonLiteError) as exc:
            raise CorruptEvent(f"{path}: not JSON: {exc}") from None
        return event_from_record(record)

    def remove(self, path: str) -> None:
        posix.unlink(path)
        _fsync_dir(self.directory)

    def reject(self, path: str, reason: str) -> str:
        """Move an event that can never apply to rejected/ with its reason; returns the new path."""
        self.ensure()
        target = _join(self.rejected_dir, _basename(path))
        _write_durably(target + ".reason", (reason.rstrip() + "\n").encode())
        posix.rename(path, target)
        _fsync_dir(self.rejected_dir)
        _fsync_dir(self.directory)
        return target

    def rejected(self) -> "list[str]":
        try:
            return sorted(
                _join(self.rejected_dir, n) for n in posix.listdir(self.rejected_dir) if n.endswith(SUFFIX)
            )
        except FileNotFoundError:
            return []

    # -- locking ---------------------------------------------------------------------------------
    def apply_lock(self, *, blocking: bool = True, wait: float = 0.0) -> "_Locked":
        """The lock every applier holds; with ``blocking=False`` check ``.held`` after entering
        (taken if it comes free within ``wait`` seconds)."""
        self.ensure()
        return _Locked(_join(self.directory, ".apply.lock"), blocking=blocking, wait=wait)


class SubmitResult:
    """What ``submit`` did: how many events it applied and spooled, and permanent failures."""

    __slots__ = ("applied", "spooled", "rejected", "spool_reason")

    def __init__(self) -> None:
        self.applied = 0
        self.spooled = 0
        self.rejected: "list[str]" = []
        self.spool_reason = ""


def submit(spool: "Spool", store: "VifStore", events: "Sequence[AnyEvent]", *, lock_wait: float = 0.0) -> "SubmitResult":
    """Apply ``events`` now, in order, or spool them behind older pending ones.

    Transient failures (RegistrarError) spool the failed event and all later ones; permanent
    ones (PlugRejected/VifError) are reported in ``rejected`` and the rest still applies. The
    apply lock is waited for up to ``lock_wait`` seconds: another hook holds it for a few
    milliseconds (its own OVSDB write), and spooling behind it would cost three fsyncs and
    leave the VIF unregistered until veil-hostd runs; only a lock held longer spools.
    """
    result = SubmitResult()
    with spool.apply_lock(blocking=False, wait=lock_wait) as lock:
        if not lock.held:
            result.spool_reason = "another writer (veil-hostd or a hook) held the spool's apply lock"
        elif spool.pending():
            result.spool_reason = "older events are still spooled"
        for index, event in enumerate(events):
            if result.spool_reason:
                for later in events[index:]:
                    spool.append(later)
                    result.spooled += 1
                break
            try:
                apply_event(store, event)
                result.applied += 1
            except RegistrarError as exc:
                result.spool_reason = str(exc)
                spool.append(event)
                result.spooled += 1
                for later in events[index + 1:]:
                    spool.append(later)
                    result.spooled += 1
                break
            except (PlugRejected, VifError) as exc:
                result.rejected.append(f"{event!r}: {exc}")
    return result


class DrainResult:
    """What ``drain`` did; ``blocked`` is the transient error that stopped it, if any."""

    __slots__ = ("applied", "rejected", "blocked")

    def __init__(self) -> None:
        self.applied = 0
        self.rejected: "list[str]" = []
        self.blocked = ""

    def __repr__(self) -> str:
        return f"DrainResult(applied={self.applied}, rejected={self.rejected}, blocked={self.blocked!r})"


def drain(spool: "Spool", store: "VifStore") -> "DrainResult":
    """Apply pending events oldest first, under the apply lock, deleting each once applied.

    Stops at the first transient failure (order matters more than progress); moves events
    that can never apply to rejected/ so they do not block the queue.
    """
    with spool.apply_lock(blocking=True):
        return _drain_held(spool, store)


def _drain_held(spool: "Spool", store: "VifStore") -> "DrainResult":
    result = DrainResult()
    for path in spool.pending():
        try:
            event = spool.load(path)
        except CorruptEvent as exc:
            spool.reject(path, str(exc))
            result.rejected.append(str(exc))
            continue
        try:
            apply_event(store, event)
        except RegistrarError as exc:
            result.blocked = str(exc)
            return result
        except (PlugRejected, VifError) as exc:
            spool.reject(path, str(exc))
            result.rejected.append(f"{event!r}: {exc}")
            continue
        spool.remove(path)
        result.applied += 1
    return result


def in_order(spool: "Spool", store: "VifStore") -> "_InOrder":
    """``with in_order(spool, store) as drained:`` the critical section of a direct writer."""
    return _InOrder(spool, store)


class _InOrder:
    """A direct writer's critical section: hold the apply lock, apply every pending event first.

    Entering blocks while someone else applies, then drains (``drained`` is that DrainResult:
    its ``rejected`` are worth logging). A pending event that cannot apply now raises
    RegistrarError with the lock released: writing past it would reorder. Not reentrant (a
    second flock on the same file from this process would wait for itself).
    """

    def __init__(self, spool: "Spool", store: "VifStore") -> None:
        self.spool = spool
        self.store = store
        self._lock: "_Locked | None" = None

    def __enter__(self) -> "DrainResult":
        lock = self.spool.apply_lock(blocking=True)
        lock.__enter__()
        try:
            result = _drain_held(self.spool, self.store)
        except BaseException:
            lock.__exit__()
            raise
        if result.blocked:
            lock.__exit__()
            raise RegistrarError(f"older spooled events cannot apply yet: {result.blocked}")
        self._lock = lock
        return result

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.__exit__()
            self._lock = None


class _Locked:
    """flock() on a file for the duration of a ``with`` block."""

    def __init__(self, path: str, *, blocking: bool, wait: float = 0.0) -> None:
        self.path = path
        self.blocking = blocking
        self.wait = wait
        self.fd = -1
        self.held = False

    def __enter__(self) -> "_Locked":
        self.fd = posix.open(self.path, posix.O_RDWR | posix.O_CREAT, 0o600)
        if self.blocking:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.held = True
            return self
        # Non-blocking, retried until ``wait`` runs out: flock has no timeout of its own.
        deadline = time.monotonic() + self.wait
        pause = 0.0002
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return self
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.held = False
                    return self
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.005)

    def __exit__(self, *exc: object) -> None:
        posix.close(self.fd)  # closing releases the flock
        self.held = False


def _write_durably(path: str, data: bytes) -> None:
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
        posix.fsync(fd)
    finally:
        posix.close(fd)


def _fsync_dir(path: str) -> None:
    fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


# -- path helpers without os.path (see the module docstring) -----------------------------------
def _join(*parts: str) -> str:
    return "/".join(parts)


def _basename(path: str) -> str:
    return path[path.rfind("/") + 1:]


def _abspath(path: str) -> str:
    if path.startswith("/") and "/." not in path and "//" not in path and not path.endswith("/"):
        return path  # already what os.path.abspath returns
    import os.path

    return os.path.abspath(path)


def ensure_dir(path: str, mode: int) -> None:
    """``os.makedirs(path, mode, exist_ok=True)``, with one syscall when ``path`` exists."""
    try:
        if posix.stat(path).st_mode & 0o170000 == 0o040000:
            return
    except FileNotFoundError:
        pass
    import os

    os.makedirs(path, mode=mode, exist_ok=True)
