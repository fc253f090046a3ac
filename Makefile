# The test command is `make test`: unit tests on Python 3.11 and 3.6, vermin, then the kernel lab
# on every lab kernel (6.1, 5.10, EL7's 3.10).
SHELL := /bin/bash
PYTHON ?= python3
PY36 ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)/versions/3.6.15/bin/python3
VENV := .venv
VENV36 := .venv36
PYTEST_ARGS ?=

.PHONY: venv venv36 unit unit311 unit36 vermin test

venv: $(VENV)/.stamp
$(VENV)/.stamp: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]' vermin
	touch $@

# CentOS 7's python3 is 3.6: its pip must first become 21.3.1 (pip 18.1 finds nothing).
# A regular (not editable) install: legacy editable installs cannot map package_dir.
venv36: $(VENV36)/.stamp
$(VENV36)/.stamp: setup.cfg pyproject.toml
	test -x $(PY36) || { echo "Python 3.6 not found at $(PY36): set PY36=/path/to/python3.6" >&2; exit 1; }
	$(PY36) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q pip==21.3.1
	$(VENV36)/bin/python -m pip install -q '.[test]'
	touch $@

# The console-script pytest does not put the checkout on sys.path, so tests import
# the installed package (backends/ is only importable as legacytrace.backends).
unit311: venv
	$(VENV)/bin/pytest -q --ignore=tests/lab $(PYTEST_ARGS) tests

unit36: venv36
	$(VENV36)/bin/python -m pip install -q --no-deps --force-reinstall .
	$(VENV36)/bin/pytest -q -p no:cacheprovider --ignore=tests/lab $(PYTEST_ARGS) tests

vermin: venv
	$(VENV)/bin/vermin -q -t=3.6- --no-tips --violations --eval-annotations legacytrace backends

unit: unit311 unit36 vermin

# lab-setup first: it installs the tools (bpftrace, pahole, stap) that live unit tests use too.
test: LAB_KERNEL = all
test: lab-setup unit lab

# --- kernel lab (tests/lab/README.md): boots real kernels under QEMU, runs tests/lab in them ---
# make lab                                   the 6.1 lab kernel
# make lab LAB_KERNEL=el7 LAB_ARGS='-k ftrace'   one kernel (6.1, 5.10, el7) and pytest arguments
# make lab LAB_KERNEL=all                    every lab kernel, one boot each (as `make test` does)
LAB_KERNEL ?= 6.1
LAB_ARGS ?=
LABCTL = $(VENV)/bin/python tests/lab/labctl.py --kernel $(LAB_KERNEL)

.PHONY: lab lab-setup lab-capture lab-shell

lab: venv
	$(LABCTL) run $(LAB_ARGS)

lab-setup: venv
	$(LABCTL) setup

lab-capture: venv
	$(LABCTL) capture

lab-shell: venv
	$(LABCTL) shell

# --- benchmarks (BENCHMARKS.md): each prints its method, machine and figures; none asserts ---
# make bench BENCH_ARGS='-b bpf --lines 200000 --stages'
BENCH_ARGS ?=

.PHONY: bench

bench: venv
	$(VENV)/bin/python bench/ingest.py $(BENCH_ARGS)

# The highest UDP rate each backend traces on this machine without loss (root; tracepoints here).
# make bench-flood BENCH_FLOOD_ARGS='-b ftrace --rates 30000 50000'
BENCH_FLOOD_ARGS ?=
.PHONY: bench-flood
bench-flood: venv
	$(VENV)/bin/python bench/flood.py $(BENCH_FLOOD_ARGS)

# The lab benchmarks (attach/detach, per-event cost, filtering): one boot, not part of `make test`.
# make bench-lab BENCH_LAB_ARGS='--cpus 1 --icount -- -b ftrace --count 1000'
BENCH_LAB_ARGS ?= --cpus 1 --icount

.PHONY: bench-lab

bench-lab: venv
	$(LABCTL) bench $(BENCH_LAB_ARGS)
