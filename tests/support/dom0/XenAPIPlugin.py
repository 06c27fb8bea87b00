"""Stand-in for dom0's XenAPIPlugin module, written from its documented behaviour (shared
reference xenapi-plugin.md), so tests can take the plugin's "running on dom0" path.
Python 3.6 like dom0 (the dom0 tests run it on the oldest interpreter here).

Deliberately independent of xenapi_plugin.dispatch: if veil's wrapper forgot to translate its
own failures into this module's Failure, they would come out as XENAPI_PLUGIN_FAILURE here.
"""

import sys
import xmlrpc.client
from typing import Callable, Mapping, Sequence
from typing import Any, Dict

import XenAPI


class Failure(Exception):
    def __init__(self, code: str, params: Sequence[str]) -> None:
        Exception.__init__(self)
        self.params = [code] + list(params)


def _print(rpcparams: Dict[str, Any]) -> None:
    print(xmlrpc.client.dumps((rpcparams,), "", True))


def dispatch(fn_table: Mapping[str, Callable[[Any, Any], str]]) -> None:
    params, methodname = xmlrpc.client.loads(sys.argv[1])
    if methodname is None or methodname not in fn_table:
        _print({"Status": "Failure", "ErrorDescription": ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", methodname]})
        return
    session = XenAPI.xapi_local()
    session._session = params[0]
    try:
        _print({"Status": "Success", "Value": fn_table[methodname](session, params[1])})
    except Failure as exc:
        _print({"Status": "Failure", "ErrorDescription": exc.params})
    except Exception as exc:
        _print({"Status": "Failure",
                "ErrorDescription": ["XENAPI_PLUGIN_FAILURE", methodname, type(exc).__name__, str(exc)]})
