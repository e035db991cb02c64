# `make demo` and `make test` each create or refresh .venv and install what they need.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# torch pinned first: here 2.13.0 resolves to a local CPU wheel; unpinned it pulls GBs of CUDA wheels.
	$(VPY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# foolbox only for its 20 ImageNet sample JPEGs (the demo's dataset): no deps, none of its code is used
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latentstore demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(VPY) -m pytest -q -x --durations=15 tests

bench: $(STAMP)
	$(VPY) benchmarks/kernels.py

clean:
	rm -rf $(VENV) build *.egg-info
