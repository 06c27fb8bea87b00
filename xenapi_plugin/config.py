"""Settings of the dom0 plugin and the vif-hotplug hook.

Neither is started by veil: xapi runs the plugin, xenopsd's vif script runs the hook, both with
an environment veil does not control. So settings live in a file, ``/etc/veil/xen.conf``
(``KEY=value`` lines, ``#`` comments), and an environment variable of the same name wins (what
tests use). ``VEIL_XEN_CONF`` points at another file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hooks import contract
from hooks.ovsdb import DEFAULT_DB

DEFAULT_FILE = "/etc/veil/xen.conf"
LOCAL_XAPI = "unix:/var/lib/xcp/xapi"
KEYS = ("VEIL_OVSDB", "VEIL_BRIDGE", "VEIL_XAPI", "VEIL_HOST_UUID", "VEIL_SPOOL", "VEIL_HOOK_MODE")
HOOK_MODES = ("default", "strict")


class ConfigError(ValueError):
    """The configuration file has a line or value veil does not understand."""


@dataclass(frozen=True)
class XenConfig:
    ovsdb: str = DEFAULT_DB
    bridge: str = contract.INTEGRATION_BRIDGE
    xapi: str = LOCAL_XAPI
    host_uuid: str | None = None
    spool: str = "/var/spool/veil"
    hook_mode: str = "default"

    @property
    def strict(self) -> bool:
        return self.hook_mode == "strict"


def parse(text: str, source: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise ConfigError(f"{source}:{number}: expected one of {', '.join(KEYS)} as KEY=value, got {raw!r}")
        values[key] = value.strip().strip("'\"")
    return values


def build(values: Mapping[str, str]) -> XenConfig:
    mode = values.get("VEIL_HOOK_MODE", "default") or "default"
    if mode not in HOOK_MODES:
        raise ConfigError(f"VEIL_HOOK_MODE={mode!r}: expected one of {', '.join(HOOK_MODES)}")
    d = XenConfig()
    return XenConfig(
        ovsdb=values.get("VEIL_OVSDB") or d.ovsdb,
        bridge=values.get("VEIL_BRIDGE") or d.bridge,
        xapi=values.get("VEIL_XAPI") or d.xapi,
        host_uuid=values.get("VEIL_HOST_UUID") or None,
        spool=values.get("VEIL_SPOOL") or d.spool,
        hook_mode=mode,
    )


def load(environ: Mapping[str, str] | None = None) -> XenConfig:
    """The file's settings overlaid with the environment's."""
    env = os.environ if environ is None else environ
    path = env.get("VEIL_XEN_CONF", DEFAULT_FILE)
    try:
        with open(path) as fh:
            values = parse(fh.read(), path)
    except FileNotFoundError:
        values = {}
    values.update({k: env[k] for k in KEYS if env.get(k)})
    return build(values)
