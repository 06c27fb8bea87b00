"""veil's central controller: desired state, OpenFlow pipeline, tunnel mesh, and the lab."""

from hooks import quiet as _quiet

_quiet.install()  # before anything imports ovs (hooks/quiet.py)
