"""veil's central controller: desired state, OpenFlow pipeline, tunnel mesh, and the lab."""

import hooks  # noqa: F401  (its import filters the eventlet warning of ovs, hooks/quiet.py)
