"""Silence the one dependency warning every veil command would print, and only that one.

The ``ovs`` Python library (under ovsdbapp) tries ``from eventlet import patcher`` at import
time, only to ask whether eventlet monkey-patched ``select``; eventlet is installed because
os-ken depends on it, and importing it warns (EventletDeprecationWarning, six lines on
stderr) although veil never uses eventlet. The filter matches that warning's message and the
importing module exactly; every other warning still shows. Installed by the controller
package and the daemons' modules (veil-hostd, veil-libvirt-agent, veil-xapi-sync), never on
the hooks' own path: compiling the filter loads ``re``, which the qemu hook must not import.
"""

from __future__ import annotations

import warnings

EVENTLET_MESSAGE = r"\s*Eventlet is deprecated"
EVENTLET_IMPORTER = r"ovs\.poller"


def install() -> None:
    """Idempotent: ``warnings.filterwarnings`` replaces an equal filter."""
    warnings.filterwarnings("ignore", message=EVENTLET_MESSAGE, module=EVENTLET_IMPORTER)
