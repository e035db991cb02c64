# `make demo` and `make test` each create or refresh .venv and install what they need.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-gpu codecs clean

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

# Every GPU benchmark, ~10 min on one H100 -> benchmarks/results/gpu-DATE.{md,json} (benchmarks/README.md).
# No venv step: a GPU machine has no network; it uses its own python3 (or this checkout's .venv when there is one).
bench-gpu:
	$(if $(wildcard $(VPY)),$(VPY),$(PY)) benchmarks/gpu.py

# Retrain and install the three shipped operating points (and their -msssim variants) with the GPU recipe,
# one after the other (two trainings on one GPU run 8x slower each). Earlier codecs stay loadable as NAME@K.
# Like bench-gpu, no venv step: run it where the GPU and the packages are (see benchmarks/README.md).
codecs:
	$(if $(wildcard $(VPY)),$(VPY),$(PY)) -m latentstore.cli train codec --all --family both --recipe gpu \
		--out runs/codecs --install

clean:
	rm -rf $(VENV) build *.egg-info
