# veil: the two commands of the README are `make demo` and `make test`.
# Both install what is missing (Debian packages, the Python venv) first; run them as root.
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := controller/lab/scripts/deps.sh
# Keep the demo lab up afterwards with: make demo KEEP=1
KEEP ?= 0

.PHONY: all deps deps-test deps-demo demo test lint unit clean-labs bench xen-rpm test-migration \
	vagrant-box vagrant-demo vagrant-up vagrant-down test-vagrant test-fabric

all: test

deps:
	bash $(DEPS) --venv $(VENV)

deps-test:
	bash $(DEPS) --venv $(VENV) --libvirt --vagrant --ovn --browser

# The demo's VMs are real libvirt guests (libvirtd + qemu per lab host): libvirt's packages too.
deps-demo:
	bash $(DEPS) --venv $(VENV) --libvirt

demo: deps-demo
	$(VENV)/bin/veil-lab demo $(if $(filter 1,$(KEEP)),--keep,)

lint: deps-test
	$(PY) -m mypy -p hooks -p controller -p xenapi_plugin -p libvirt_hooks

test: deps-test lint
	$(PY) -m pytest -q -m "not vagrant" tests

# Only the live migrations of real TCG guests (also part of `make test`; ~2 min).
test-migration: deps-test
	$(PY) -m pytest -q -m guest_migration tests

unit: deps
	$(PY) -m pytest -q tests -m "not lab and not libvirt"

# Removes every lab this machine still has (each by its own state file: names and pids).
clean-labs: deps
	$(VENV)/bin/veil-lab down --all

# The benchmark, veil side by side with OVN 23.03 on the same lab (docs/benchmarks.md).
# Installs OVN (a benchmark peer only, never a veil dependency); ~23 minutes on 2 cores.
bench: deps-test
	$(VENV)/bin/veil-lab bench

# The noarch RPM for XenServer / XCP-ng dom0 (docs/xenserver.md): dist/veil-xen-*.noarch.rpm.
xen-rpm: deps
	$(PY) -m xenapi_plugin.packaging --out dist

# The Vagrant lab (vagrant/Vagrantfile, controller/lab/vagrant.py): a Debian 12 box built offline
# from Debian packages, six VMs (controller, router, four hosts) on a private libvirtd, tenant
# guests nested in the hosts (TCG). vagrant-up leaves it running (vagrant-down removes it).
vagrant-box: deps-test
	bash vagrant/build-box.sh

vagrant-demo: deps-test
	$(PY) -m controller.lab.vagrant demo

vagrant-up: deps-test
	$(PY) -m controller.lab.vagrant up --keep

vagrant-down: deps-test
	$(PY) -m controller.lab.vagrant down

# Boots the Vagrant lab (the one-host-per-DC variant; VEIL_VAGRANT_TOPOLOGY for all six VMs), checks pings
# and isolation, moves a guest live to the other DC and back, destroys it: ~14 min here; .ci/run
# runs it after `make test`.
test-vagrant: deps-test
	$(PY) -m pytest -q -m vagrant tests

# The 3x3 OpenFlow fabric lab (docs/fabric.md) alone (`make test` runs it too).
test-fabric: deps-test
	$(PY) -m pytest -q -m fabric_lab tests
