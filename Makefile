# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
THREADS ?= 2

.PHONY: setup demo test bench clean distclean

setup: $(STAMP)

# Exact versions from the lock files; lava-dl goes in without its (stale) pins.
$(STAMP): requirements.lock requirements-nodeps.lock requirements-test.lock pyproject.toml
	@test -x $(PY) || "$$(scripts/find-python310.sh)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.lock -r requirements-test.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "import torch, lava.magma, lava.lib.dl.netx, nir, nirtorch, norse, h5py; import sdm.train.unet"
	$(VENV)/bin/ruff --version
	@touch $(STAMP)

demo: setup
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/sdm demo --threads $(THREADS)

test: setup
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=$(THREADS) $(PY) -m pytest -q

bench: setup
	$(PY) -m pip install --quiet --no-deps -r requirements-bench.lock
	OMP_NUM_THREADS=$(THREADS) $(PY) bench/train_throughput.py --threads $(THREADS)
	OMP_NUM_THREADS=$(THREADS) $(PY) bench/sd_throughput.py --threads $(THREADS)
	OMP_NUM_THREADS=$(THREADS) $(PY) bench/export_nir.py
	OMP_NUM_THREADS=$(THREADS) $(PY) bench/lava_step.py --threads $(THREADS)

clean:
	rm -rf demo_out .pytest_cache build *.egg-info

distclean: clean
	rm -rf $(VENV)
