"""Settings of the dom0 plugin and the vif-hotplug hook.

Neither is started by veil: xapi runs the plugin, xenopsd's vif script runs the hook, both with
an environment veil does not control. So settings live in a file, ``/etc/veil/xen.conf``
(``KEY=value`` lines, ``#`` comments), and an environment variable of the same name wins (what
tests use). ``VEIL_XEN_CONF`` points at another file.
"""

import os
from typing import Mapping, NamedTuple, Optional

from hooks import contract
from hooks.ovsdb import DEFAULT_DB

DEFAULT_FILE = "/etc/veil/xen.conf"
LOCAL_XAPI = "unix:/var/lib/xcp/xapi"
KEYS = ("VEIL_OVSDB", "VEIL_BRIDGE", "VEIL_XAPI", "VEIL_HOST_UUID", "VEIL_SPOOL", "VEIL_HOOK_MODE")
HOOK_MODES = ("default", "strict")


class ConfigError(ValueError):
    """The configuration file (or an environment override) has a line or value veil does not
    understand: ``source`` is the file (or "environment"), ``reason`` what is wrong and where.
    ``strict`` says whether the settings that were valid asked for strict mode."""

    def __init__(self, source: str, reason: str, strict: bool = False) -> None:
        super().__init__(f"{source}:{reason[5:]}" if reason.startswith("line ") else f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.strict = strict


class XenConfig(NamedTuple):
    ovsdb: str = DEFAULT_DB
    bridge: str = contract.INTEGRATION_BRIDGE
    xapi: str = LOCAL_XAPI
    host_uuid: Optional[str] = None
    spool: str = "/var/spool/veil"
    hook_mode: str = "default"

    @property
    def strict(self) -> bool:
        return self.hook_mode == "strict"


MAX_FILE_BYTES = 65536


def parse(data: bytes, source: str) -> "dict[str, str]":
    """The KEY=value settings of a config file's bytes; ConfigError names the first bad line
    (all lines are read first, so ``strict`` reflects a valid VEIL_HOOK_MODE line anywhere)."""
    values: "dict[str, str]" = {}
    first = ""
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            first = first or f"line {number}: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} is not UTF-8"
            continue
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip().strip("'\"")
        if not sep or key not in KEYS:
            first = first or f"line {number}: expected one of {', '.join(KEYS)} as KEY=value, got {line[:80]!r}"
        elif not value.isprintable():
            first = first or f"line {number}: {key}: the value contains a control character"
        else:
            values[key] = value
    if first:
        raise ConfigError(source, first, strict=values.get("VEIL_HOOK_MODE") == "strict")
    return values


def build(values: "Mapping[str, str]", source: str = "settings") -> "XenConfig":
    mode = values.get("VEIL_HOOK_MODE", "default") or "default"
    if mode not in HOOK_MODES:
        raise ConfigError(source, f"VEIL_HOOK_MODE={mode!r}: expected one of {', '.join(HOOK_MODES)}")
    d = XenConfig()
    return XenConfig(
        ovsdb=values.get("VEIL_OVSDB") or d.ovsdb,
        bridge=values.get("VEIL_BRIDGE") or d.bridge,
        xapi=values.get("VEIL_XAPI") or d.xapi,
        host_uuid=values.get("VEIL_HOST_UUID") or None,
        spool=values.get("VEIL_SPOOL") or d.spool,
        hook_mode=mode,
    )


def load(environ: "Mapping[str, str] | None" = None) -> "XenConfig":
    """The file's settings overlaid with the environment's."""
    env = os.environ if environ is None else environ
    path = env.get("VEIL_XEN_CONF", DEFAULT_FILE)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        data = b""
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"cannot read it: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, f"larger than {MAX_FILE_BYTES} bytes: not a veil config")
    values = parse(data, path)
    overrides = {k: env[k] for k in KEYS if env.get(k)}
    values.update(overrides)
    return build(values, f"{path} + environment" if overrides else path)
