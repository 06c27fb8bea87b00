"""xapi's plugin calling convention: argv[1] is an XML-RPC methodCall, stdout a methodResponse.

dom0 ships ``XenAPIPlugin`` (``Failure`` and ``dispatch``); the PyPI ``xenapi`` package does not.
Off dom0 (tests, a lab host) this module is the compatible stand-in, byte-for-byte the same
protocol: ``fn(session, args)`` for method FN with params ``[session_ref, args]``; a result is
printed as ``{"Status": "Success", "Value": result}``; a ``Failure`` as its code list; any other
exception as ``XENAPI_PLUGIN_FAILURE``; an unknown FN as ``UNKNOWN_XENAPI_PLUGIN_FUNCTION``.
The session handed to ``fn`` is bound to the caller's session ref, as on dom0.
"""

from __future__ import annotations

import sys
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

PluginFn = Callable[[Any, dict[str, str]], str]
SessionFactory = Callable[[], Any]

UNKNOWN_FUNCTION = "UNKNOWN_XENAPI_PLUGIN_FUNCTION"
PLUGIN_FAILURE = "XENAPI_PLUGIN_FAILURE"


class Failure(Exception):
    """A plugin failure with an xapi error code; same shape as dom0's ``XenAPIPlugin.Failure``."""

    def __init__(self, code: str, params: Sequence[str]) -> None:
        super().__init__(code, *params)
        self.params = [code, *[str(p) for p in params]]

    def __str__(self) -> str:
        return str(self.params)


def success_message(result: str) -> str:
    return xmlrpc.client.dumps(({"Status": "Success", "Value": result},), "", True)


def failure_message(description: Sequence[str]) -> str:
    return xmlrpc.client.dumps(({"Status": "Failure", "ErrorDescription": list(description)},), "", True)


def respond(
    fn_table: Mapping[str, PluginFn],
    call: str,
    session_factory: SessionFactory,
) -> str:
    """The methodResponse for one methodCall (pure apart from what the called function does)."""
    params, methodname = xmlrpc.client.loads(call)
    if methodname is None or methodname not in fn_table:
        return failure_message([UNKNOWN_FUNCTION, str(methodname)])
    args: Any = params[1] if len(params) > 1 else {}
    try:
        session = session_factory()
        session._session = params[0]
        return success_message(fn_table[methodname](session, args))
    except Failure as exc:
        return failure_message(exc.params)
    except SystemExit:
        raise
    except Exception as exc:  # the protocol reports every other error as XENAPI_PLUGIN_FAILURE
        return failure_message([PLUGIN_FAILURE, methodname, type(exc).__name__, str(exc)])


def dispatch(
    fn_table: Mapping[str, PluginFn],
    session_factory: SessionFactory,
    argv: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> None:
    """What ``XenAPIPlugin.dispatch`` does, with the session factory and streams injectable."""
    args = list(sys.argv if argv is None else argv)
    if len(args) != 2:
        raise SystemExit(f"{args[0] if args else 'plugin'}: expects exactly one argument, an XML-RPC methodCall")
    print(respond(fn_table, args[1], session_factory), file=out or sys.stdout)
