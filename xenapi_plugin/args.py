"""Validation of plugin arguments (xapi passes a map of strings to strings).

Every rejection is a ``Failure`` whose code says what is wrong and whose params name the key and
value, so ``xe host-call-plugin`` prints something the operator can act on. Nothing is changed
before all arguments of a call have been checked.
"""

import re
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from hooks import contract
from xenapi_plugin.dispatch import Failure

MISSING_ARGUMENT = "VEIL_MISSING_ARGUMENT"
UNKNOWN_ARGUMENT = "VEIL_UNKNOWN_ARGUMENT"
INVALID_ARGUMENT = "VEIL_INVALID_ARGUMENT"
CONFLICTING_ARGUMENTS = "VEIL_CONFLICTING_ARGUMENTS"

_PORT_NAME = re.compile(r"^(vif|tap)[0-9]+\.[0-9]+$")
_BOOL = {"true": True, "false": False}


def check_map(args: "Any", *, required: "Collection[str]" = (), optional: "Collection[str]" = ()) -> "dict[str, str]":
    """The argument map, checked for type, unknown keys and missing keys."""
    if not isinstance(args, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
        raise Failure(INVALID_ARGUMENT, ["args", repr(args), "expected a map of strings to strings"])
    allowed = set(required) | set(optional)
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise Failure(UNKNOWN_ARGUMENT, [unknown[0], "allowed: " + ", ".join(sorted(allowed))])
    missing = [k for k in required if not args.get(k)]
    if missing:
        raise Failure(MISSING_ARGUMENT, [missing[0]])
    return dict(args)


def uuid_arg(args: "Mapping[str, str]", key: str) -> str:
    value = args[key]
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise Failure(INVALID_ARGUMENT, [key, value, "not a UUID"]) from None
    if str(parsed) != value.lower():
        raise Failure(INVALID_ARGUMENT, [key, value, "not a UUID in canonical 8-4-4-4-12 form"])
    return value.lower()


def network_arg(args: "Mapping[str, str]", key: str) -> str:
    value = args[key]
    if not contract.is_network_name(value):
        raise Failure(INVALID_ARGUMENT, [key, value, f"a veil network name is {contract.NAME_RULE}"])
    return value


def port_arg(args: "Mapping[str, str]", key: str) -> str:
    value = args[key]
    if not _PORT_NAME.match(value):
        raise Failure(INVALID_ARGUMENT, [key, value, "expected a XenServer port name vifD.N or tapD.N"])
    return value


def bool_arg(args: "Mapping[str, str]", key: str, default: bool) -> bool:
    if key not in args:
        return default
    try:
        return _BOOL[args[key].lower()]
    except KeyError:
        raise Failure(INVALID_ARGUMENT, [key, args[key], "expected true or false"]) from None


def exactly_one(args: "Mapping[str, str]", *keys: str) -> str:
    """The one of ``keys`` present in ``args``; a failure when none or several are."""
    present = [k for k in keys if args.get(k)]
    if len(present) != 1:
        code = MISSING_ARGUMENT if not present else CONFLICTING_ARGUMENTS
        raise Failure(code, ["exactly one of: " + ", ".join(keys)])
    return present[0]
