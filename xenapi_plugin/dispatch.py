"""xapi's plugin calling convention: argv[1] is an XML-RPC methodCall, stdout a methodResponse.

dom0 ships ``XenAPIPlugin`` (``Failure`` and ``dispatch``); the PyPI ``xenapi`` package does not.
Off dom0 (tests, a lab host) this module is the compatible stand-in, byte-for-byte the same
protocol: ``fn(session, args)`` for method FN with params ``[session_ref, args]``; a result is
printed as ``{"Status": "Success", "Value": result}``; a ``Failure`` as its code list; any other
exception as ``XENAPI_PLUGIN_FAILURE``; an unknown FN as ``UNKNOWN_XENAPI_PLUGIN_FUNCTION``.
The session handed to ``fn`` is bound to the caller's session ref, as on dom0.

Unlike dom0's, it never ends in a traceback (xapi would report a bare non-zero exit): a
methodCall that is not one (malformed, truncated, empty, not UTF-8, DOCTYPE/entities, not
``[session_ref, {str: str}]``) is ``VEIL_MALFORMED_CALL [reason]``, and every string of a
response is made XML-safe. The plugin uses it on dom0 too, with dom0's session.
"""

import sys
import xmlrpc.client
from typing import Any, Callable, Dict, Mapping, Sequence
from typing import TextIO

from hooks import safexml

PluginFn = Callable[[Any, Dict[str, str]], str]
SessionFactory = Callable[[], Any]

UNKNOWN_FUNCTION = "UNKNOWN_XENAPI_PLUGIN_FUNCTION"
PLUGIN_FAILURE = "XENAPI_PLUGIN_FAILURE"
MALFORMED_CALL = "VEIL_MALFORMED_CALL"
MAX_CALL_BYTES = 1 << 20  # xapi's own calls are a few hundred bytes


class Failure(Exception):
    """A plugin failure with an xapi error code; same shape as dom0's ``XenAPIPlugin.Failure``."""

    def __init__(self, code: str, params: "Sequence[str]") -> None:
        super().__init__(code, *params)
        self.params = [code, *[str(p) for p in params]]

    def __str__(self) -> str:
        return str(self.params)


def _xml_char(c: str) -> bool:
    return c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"


def xml_safe(text: str) -> str:
    """``text`` with what XML 1.0 cannot carry (control characters, lone surrogates) escaped."""
    if all(map(_xml_char, text)):
        return text
    return "".join(c if _xml_char(c) else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def success_message(result: str) -> str:
    return xmlrpc.client.dumps(({"Status": "Success", "Value": xml_safe(result)},), "", True)


def failure_message(description: "Sequence[str]") -> str:
    safe = [xml_safe(str(d)) for d in description]
    return xmlrpc.client.dumps(({"Status": "Failure", "ErrorDescription": safe},), "", True)


def parse_call(call: "str | bytes") -> "tuple[str, str, Any]":
    """(method, session ref, args) of a methodCall; ``VEIL_MALFORMED_CALL [reason]`` otherwise."""
    if isinstance(call, str):
        try:
            call = call.encode("utf-8")
        except UnicodeEncodeError as exc:  # argv bytes that were not UTF-8 (surrogate-escaped)
            raise Failure(MALFORMED_CALL, [f"the methodCall is not UTF-8 (at character {exc.start})"]) from None
    try:
        safexml.parse(call, limit=MAX_CALL_BYTES, what="methodCall")
    except safexml.XmlError as exc:
        raise Failure(MALFORMED_CALL, [str(exc)]) from None
    try:
        params, method = xmlrpc.client.loads(call)
    except Exception as exc:  # noqa: BLE001 - xmlrpc's unmarshaller raises anything on odd input
        raise Failure(MALFORMED_CALL, [f"not an XML-RPC methodCall: {type(exc).__name__}: {exc}"]) from None
    if not isinstance(method, str) or not method:
        raise Failure(MALFORMED_CALL, ["no <methodName>"])
    if len(params) != 2 or not isinstance(params[0], str):
        raise Failure(MALFORMED_CALL, [f"params must be [session_ref, args], got {len(params)} value(s)"])
    return method, params[0], params[1]


def respond(
    fn_table: "Mapping[str, PluginFn]",
    call: "str | bytes",
    session_factory: "SessionFactory",
) -> str:
    """The methodResponse for one methodCall (pure apart from what the called function does)."""
    try:
        methodname, session_ref, args = parse_call(call)
    except Failure as exc:
        return failure_message(exc.params)
    if methodname not in fn_table:
        return failure_message([UNKNOWN_FUNCTION, methodname])
    try:
        session = session_factory()
        session._session = session_ref
        return success_message(fn_table[methodname](session, args))
    except Failure as exc:
        return failure_message(exc.params)
    except SystemExit:
        raise
    except Exception as exc:  # the protocol reports every other error as XENAPI_PLUGIN_FAILURE
        return failure_message([PLUGIN_FAILURE, methodname, type(exc).__name__, str(exc)])


def dispatch(
    fn_table: "Mapping[str, PluginFn]",
    session_factory: "SessionFactory",
    argv: "Sequence[str] | None" = None,
    out: "TextIO | None" = None,
) -> None:
    """What ``XenAPIPlugin.dispatch`` does, with the session factory and streams injectable."""
    args = list(sys.argv if argv is None else argv)
    if len(args) != 2:
        reply = failure_message([MALFORMED_CALL, f"expected exactly one argument (a methodCall), got {len(args) - 1}"])
    else:
        reply = respond(fn_table, args[1], session_factory)
    print(reply, file=out or sys.stdout)
