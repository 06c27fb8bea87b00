"""Talking to the hosts: host OVSDB views, OpenFlow wire encoding, sessions, the dialer."""
