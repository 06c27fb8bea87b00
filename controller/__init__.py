"""veil's central controller: desired state, OpenFlow pipeline, tunnel mesh, and the lab."""
