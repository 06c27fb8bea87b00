#!/usr/bin/env bash
# Turns a node into the router between the data centers' underlay subnets (netns lab and Vagrant).
set -euo pipefail
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.ipv4.conf.all.rp_filter=0
