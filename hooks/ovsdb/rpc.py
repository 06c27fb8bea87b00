"""The qemu hook's registrar: OVSDB ``transact`` over JSON-RPC on one socket, nothing else.

ovsdbapp (and the ``ovs`` IDL under it) must fetch the schema and download a monitor of the
tables before the first write: too slow for a hook that runs synchronously inside every VM
start (budget: p99 <= 15 ms per invocation, see docs/kvm.md). This client speaks RFC 7047
directly: ONE write transaction per usual plug (an optional read before it otherwise), guarded by
``wait`` operations so a concurrent change makes it fail cleanly instead of writing on stale
assumptions. It has the same interface and the same resulting rows as ``hooks.registrar``
(tests run both against a real ovsdb-server). It imports only C modules and light veil ones.
"""

import _socket
import codecs
import time

from hooks import contract, jsonlite
from hooks.errors import PlugRejected, RegistrarError
from hooks.plugspec import (
    DEACTIVATE_DROP_KEYS,
    TAKEOVER_DROP_KEYS,
    claim,
    deactivate_external_ids,
    device_gone,
    plug_external_ids,
    ports_to_unplug,
    update_external_ids,
    vifs_from_rows,
)
from hooks.vif import Vif

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hooks.jsonlite import Json

DB = "Open_vSwitch"
_MAX_REPLY = 16 << 20


class _TxnFailed(Exception):
    """An operation of a transaction failed: ``index`` says which, ``error`` what."""

    def __init__(self, index: int, error: str, details: str) -> None:
        super().__init__(f"op {index}: {error}: {details}")
        self.index = index
        self.error = error
        self.details = details


class RpcRegistrar:
    """Registers VIFs in the OVSDB at ``db_remote`` (``unix:PATH`` or ``tcp:IP:PORT``)."""

    def __init__(self, db_remote: str, bridge: str = contract.INTEGRATION_BRIDGE, timeout: float = 5.0) -> None:
        self.db_remote = db_remote
        self.bridge = bridge
        self.timeout = timeout
        self._sock: "_socket.socket | None" = None
        self._buf = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._next_id = 0
        self._deadline = 0.0
        self.took_over: "list[str]" = []  # one note per stale row a plug took over (the hook logs them)

    # -- public API (same as hooks.registrar.Registrar) ----------------------------------------
    def plug(self, vif: "Vif", *, add_port: bool) -> None:
        """Write ``vif`` into its Interface row in one transaction (creating the port if asked).

        An existing row is read first and the write is guarded by a ``wait`` that its
        external_ids are still exactly what was read: the check that the row is not another
        VM's (``plugspec.claim``: refused while that VM is plausibly alive, a stale row taken
        over, noted in ``took_over``) therefore holds when the write lands. The usual cases
        first try ONE transaction without the read (``_plug_in_one``)."""
        ids = plug_external_ids(vif, add_port=add_port)
        with self._session():
            if self._plug_in_one(vif, ids, add_port=add_port):
                return
            for _attempt in range(3):
                rows = self._select("Interface", [["name", "==", vif.port]],
                                    ["external_ids", "ofport", "error", "link_state"])
                if not rows:
                    if not add_port:
                        raise PlugRejected(f"no Interface {vif.port!r} in OVSDB to register VIF {vif.iface_id}")
                    try:
                        self._transact(self._insert_ops(vif.port, ids))
                        return
                    except _TxnFailed as exc:
                        if exc.index == 0 and exc.error == "timed out":
                            raise RegistrarError(
                                f"bridge {self.bridge!r} does not exist in {self.db_remote}"
                            ) from None
                        if exc.index == 1 and exc.error == "timed out":
                            continue  # the port appeared meanwhile: update it instead
                        raise PlugRejected(f"adding port {vif.port!r} failed: {exc}") from None
                row = rows[0] if isinstance(rows[0], dict) else {}
                current = map_of(row.get("external_ids"))
                why, took_over = claim(vif, current, device_gone(
                    scalar(row.get("ofport")), scalar(row.get("error")), scalar(row.get("link_state"))))
                if why:
                    raise PlugRejected(why)
                drop = TAKEOVER_DROP_KEYS if took_over else ()
                guard: "Json" = {
                    "op": "wait", "timeout": 0, "table": "Interface", "where": [["name", "==", vif.port]],
                    "columns": ["external_ids"], "until": "==", "rows": [{"external_ids": ovs_map(current)}],
                }
                try:
                    self._transact([guard, *self._set_keys_ops(vif.port, update_external_ids(ids, current), drop=drop)])
                except _TxnFailed as exc:
                    if exc.index == 0 and exc.error == "timed out":
                        continue  # changed (or deleted) since our read: decide again
                    raise PlugRejected(f"updating {vif.port!r} failed: {exc}") from None
                if took_over:
                    self.took_over.append(took_over)
                return
            raise RegistrarError(f"port {vif.port!r} kept changing under us; gave up after 3 attempts")

    def _plug_in_one(self, vif: "Vif", ids: "dict[str, str]", *, add_port: bool) -> bool:
        """The common plugs in one round trip, or False to take the read-then-write path.

        A tap veil adds: the insert, guarded by its waits (bridge there, no such port yet).
        libvirt's openvswitch row: the update, guarded by a ``wait`` that the row carries this
        VIF's own vm-id, which is enough for ``foreign_owner`` to let it through; the keys are
        then the ones ``update_external_ids`` gives whatever else the row holds (no
        veil-owns-port is set on a row veil did not add). Any other row (another VM's, one
        without vm-id, a port that exists already) fails a wait and gets the careful path."""
        if add_port:
            try:
                self._transact(self._insert_ops(vif.port, ids))
                return True
            except _TxnFailed as exc:
                if exc.index == 0 and exc.error == "timed out":
                    raise RegistrarError(f"bridge {self.bridge!r} does not exist in {self.db_remote}") from None
                return False  # the port (or an Interface of that name) exists: read it first
        if not vif.vm_id:
            return False
        guard: "Json" = {
            "op": "wait", "timeout": 0, "table": "Interface",
            "where": [["name", "==", vif.port], ["external_ids", "includes", ovs_map({contract.VM_ID: vif.vm_id})]],
            "columns": ["name"], "until": "==", "rows": [{"name": vif.port}],
        }
        try:
            self._transact([guard, *self._set_keys_ops(vif.port, update_external_ids(ids, {}), drop=())])
        except _TxnFailed as exc:
            if exc.index == 0 and exc.error == "timed out":
                return False
            raise PlugRejected(f"updating {vif.port!r} failed: {exc}") from None
        return True

    def unplug(self, port: str, *, delete_port: bool) -> None:
        """Remove the port, or mark its Interface inactive and drop veil's keys. Idempotent."""
        with self._session():
            self._unplug_ports([port] if delete_port else [], [] if delete_port else [port])

    def unplug_vm(self, vm_id: str) -> None:
        """Unplug every port veil registered for ``vm_id``: delete the ones veil added, deactivate
        the others (libvirt deletes those itself). One write transaction for the whole VM."""
        with self._session():
            rows = self._select(
                "Interface", [["external_ids", "includes", ovs_map({contract.VM_ID: vm_id})]],
                ["name", "external_ids"],
            )
            delete, deactivate = ports_to_unplug(
                (str(r.get("name")), map_of(r.get("external_ids"))) for r in rows if isinstance(r, dict)
            )
            self._unplug_ports(delete, deactivate)

    def _unplug_ports(self, delete: "list[str]", deactivate: "list[str]") -> None:
        ops: "list[Json]" = []
        if delete:
            selects: "list[Json]" = [
                {"op": "select", "table": "Port", "where": [["name", "==", p]], "columns": ["_uuid"]} for p in delete
            ]
            for result in self._transact(selects):
                rows = result.get("rows")
                for row in rows if isinstance(rows, list) else []:
                    uuid = _uuid_of(row)
                    ops.append({
                        "op": "mutate", "table": "Bridge", "where": [["ports", "includes", ["uuid", uuid]]],
                        "mutations": [["ports", "delete", ["set", [["uuid", uuid]]]]],
                    })
        for port in deactivate:
            ops.extend(self._set_keys_ops(port, deactivate_external_ids(), drop=DEACTIVATE_DROP_KEYS))
        if ops:
            ops.append({"op": "comment", "comment": f"veil: unplug {' '.join(delete + deactivate)}"})
            self._transact_ok(ops, f"unplugging {', '.join(delete + deactivate)}")

    def registered(self) -> "list[Vif]":
        """The VIFs veil registered on this host (Interface rows carrying veil-network)."""
        with self._session():
            rows = self._select("Interface", [], ["name", "external_ids"])
        pairs = []
        for row in rows:
            if isinstance(row, dict):
                pairs.append((str(row.get("name")), map_of(row.get("external_ids"))))
        return vifs_from_rows(pairs)[0]

    def system_id(self) -> "str | None":
        """This host's ``external_ids:system-id`` (the VIF's host in the contract), if set."""
        with self._session():
            rows = self._select("Open_vSwitch", [], ["external_ids"])
        ids = map_of(rows[0].get("external_ids")) if rows and isinstance(rows[0], dict) else {}
        return ids.get(contract.SYSTEM_ID)

    def select(self, table: str, columns: "list[str]", where: "list[Json] | None" = None) -> "list[dict[str, Json]]":
        """The rows of ``table`` (only ``columns``) matching ``where``: one read transaction."""
        with self._session():
            rows = self._select(table, list(where or []), list(columns))
        return [r for r in rows if isinstance(r, dict)]

    def transact(self, ops: "list[Json]", what: str) -> None:
        """Run ``ops`` as one transaction; an operation that fails is PlugRejected naming ``what``."""
        with self._session():
            self._transact_ok(ops, what)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = ""
            self._utf8.reset()

    # -- operations ------------------------------------------------------------------------------
    def _insert_ops(self, port: str, ids: "dict[str, str]") -> "list[Json]":
        br = self.bridge
        return [
            {"op": "wait", "timeout": 0, "table": "Bridge", "where": [["name", "==", br]],
             "columns": ["name"], "until": "==", "rows": [{"name": br}]},
            {"op": "wait", "timeout": 0, "table": "Port", "where": [["name", "==", port]],
             "columns": ["name"], "until": "==", "rows": []},
            {"op": "insert", "table": "Interface", "uuid-name": "veil_iface",
             "row": {"name": port, "external_ids": ovs_map(ids)}},
            {"op": "insert", "table": "Port", "uuid-name": "veil_port",
             "row": {"name": port, "interfaces": ["named-uuid", "veil_iface"]}},
            {"op": "mutate", "table": "Bridge", "where": [["name", "==", br]],
             "mutations": [["ports", "insert", ["set", [["named-uuid", "veil_port"]]]]]},
            {"op": "comment", "comment": f"veil: add-port {br} {port}"},
        ]

    @staticmethod
    def _set_keys_ops(port: str, ids: "dict[str, str]", drop: "tuple[str, ...]") -> "list[Json]":
        """Replace exactly these keys (mutate delete + insert): every other key survives."""
        where: "Json" = [["name", "==", port]]
        keys: "list[Json]" = [*sorted(set(ids) | set(drop))]
        return [
            {"op": "comment", "comment": f"veil: set external_ids on {port}"},
            {"op": "mutate", "table": "Interface", "where": where,
             "mutations": [["external_ids", "delete", ["set", keys]]]},
            {"op": "mutate", "table": "Interface", "where": where,
             "mutations": [["external_ids", "insert", ovs_map(ids)]]},
        ]

    def _select(self, table: str, where: "list[Json]", columns: "list[Json]") -> "list[Json]":
        result = self._transact([{"op": "select", "table": table, "where": where, "columns": columns}])
        rows = result[0]["rows"] if isinstance(result[0], dict) else None
        if not isinstance(rows, list):
            raise RegistrarError(f"malformed select reply from {self.db_remote}: {result!r}"[:300])
        return rows

    def _transact_ok(self, ops: "list[Json]", what: str) -> "list[int]":
        """Run ``ops``; return each op's ``count`` (0 for ops without one)."""
        try:
            result = self._transact(ops)
        except _TxnFailed as exc:
            raise PlugRejected(f"{what} failed: {exc}") from None
        return [r.get("count", 0) if isinstance(r, dict) else 0 for r in result]  # type: ignore[misc]

    def _transact(self, ops: "list[Json]") -> "list[dict[str, Json]]":
        reply = self._call("transact", [DB, *ops])
        if not isinstance(reply, list):
            raise RegistrarError(f"malformed transact reply from {self.db_remote}")
        results: "list[dict[str, Json]]" = [r if isinstance(r, dict) else {} for r in reply]
        for index, r in enumerate(results):
            error = r.get("error")
            if error is not None:
                if error == "not owner" or error == "I/O error" or error == "resources exhausted":
                    raise RegistrarError(f"ovsdb-server: {error}: {r.get('details', '')}")
                raise _TxnFailed(index, str(error), str(r.get("details", "")))
        return results

    # -- wire ------------------------------------------------------------------------------------
    def _session(self) -> "_Session":
        return _Session(self)

    def _connect(self) -> None:
        if self._sock is not None:
            return
        kind, _, where = self.db_remote.partition(":")
        try:
            if kind == "unix":
                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                address: "str | tuple[str, int]" = where
            elif kind == "tcp":
                host, _, port = where.rpartition(":")
                sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
                address = (host, int(port))
            else:
                raise RegistrarError(f"unsupported OVSDB remote {self.db_remote!r} (use unix: or tcp:)")
            sock.settimeout(self._remaining())
            sock.connect(address)
        except (OSError, ValueError) as exc:
            raise RegistrarError(f"cannot connect to OVSDB at {self.db_remote}: {exc}") from None
        self._sock = sock

    def _remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise RegistrarError(f"OVSDB at {self.db_remote} did not answer within {self.timeout}s")
        return left

    def _call(self, method: str, params: "list[Json]") -> "Json":
        self._connect()
        assert self._sock is not None
        self._next_id += 1
        call_id = self._next_id
        self._send({"method": method, "params": params, "id": call_id})
        while True:
            msg = self._receive()
            if msg.get("method") == "echo":  # the server's keepalive: answer it
                self._send({"result": msg.get("params"), "error": None, "id": msg.get("id")})
                continue
            if msg.get("id") != call_id:
                continue  # notifications (we never monitor) or stale replies
            if msg.get("error") is not None:
                raise RegistrarError(f"OVSDB {method} failed: {msg['error']}")
            return msg.get("result")

    def _send(self, msg: "Json") -> None:
        assert self._sock is not None
        try:
            self._sock.settimeout(self._remaining())
            self._sock.sendall(jsonlite.dumps(msg).encode())
        except OSError as exc:
            self.close()
            raise RegistrarError(f"lost OVSDB connection {self.db_remote}: {exc}") from None

    def _receive(self) -> "dict[str, Json]":
        assert self._sock is not None
        while True:
            if self._buf.strip():
                try:
                    msg, end = jsonlite.decode_prefix(self._buf, 0)
                except jsonlite.IncompleteJson:
                    pass
                except jsonlite.JsonLiteError as exc:
                    self.close()
                    raise RegistrarError(f"garbled reply from {self.db_remote}: {exc}") from None
                else:
                    self._buf = self._buf[end:]
                    if not isinstance(msg, dict):
                        raise RegistrarError(f"unexpected reply from {self.db_remote}: {msg!r}"[:200])
                    return msg
            if len(self._buf) > _MAX_REPLY:
                self.close()
                raise RegistrarError(f"reply from {self.db_remote} exceeds {_MAX_REPLY} bytes")
            try:
                self._sock.settimeout(self._remaining())
                chunk = self._sock.recv(65536)
            except OSError as exc:
                self.close()
                raise RegistrarError(f"lost OVSDB connection {self.db_remote}: {exc}") from None
            if not chunk:
                self.close()
                raise RegistrarError(f"OVSDB {self.db_remote} closed the connection")
            self._buf += self._utf8.decode(chunk)


class _Session:
    """Scope of one public call: sets the deadline all its round trips share."""

    def __init__(self, reg: "RpcRegistrar") -> None:
        self.reg = reg

    def __enter__(self) -> None:
        self.reg._deadline = time.monotonic() + self.reg.timeout

    def __exit__(self, *exc: object) -> None:
        self.reg._deadline = 0.0


def ovs_map(d: "dict[str, str]") -> "Json":
    return ["map", [[k, v] for k, v in sorted(d.items())]]


def map_of(value: "Json") -> "dict[str, str]":
    """An OVSDB ``["map", [[k, v], ...]]`` as a dict."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "map" and isinstance(value[1], list):
        return {str(p[0]): str(p[1]) for p in value[1] if isinstance(p, list) and len(p) == 2}
    return {}


def scalar(value: "Json") -> "Json":
    """An optional column's value: ``["set", []]`` is None, ``["set", [x]]`` is x."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set" and isinstance(value[1], list):
        return value[1][0] if len(value[1]) == 1 else None
    return value


def _uuid_of(row: "Json") -> str:
    if isinstance(row, dict):
        u = row.get("_uuid")
        if isinstance(u, list) and len(u) == 2 and u[0] == "uuid":
            return str(u[1])
    raise RegistrarError(f"malformed row without _uuid: {row!r}"[:200])
