# Two commands a new user runs on a fresh clone: `make demo` and `make test`.
# Each installs into ./.venv when needed (torch==2.13.0 first: an unpinned torch would pull CUDA wheels).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data)
export APPROXGNN_DATA ?= $(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),$(HOME)/.approxgnn/data)

.PHONY: install demo test bench peer clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/approxgnn demo

test: $(STAMP)
	$(PY) -m pytest tests

# Optional: PyG for the peer columns of the benchmarks. torch-scatter and torch-sparse (PyG's
# sampler backend) have no wheels on the index here: they come from the prebuilt wheels in
# ../shared/wheels when those are there, else they compile from source (several minutes each).
PEER_WHEELS := $(abspath ../shared/wheels)
peer: $(STAMP)
	$(PY) -m pip install -q torch_geometric
	if [ -d $(PEER_WHEELS) ] && $(PY) -m pip install -q --no-deps --no-index --find-links $(PEER_WHEELS) \
		torch-scatter torch-sparse; then :; \
	else $(PY) -m pip install -q --no-build-isolation torch-scatter torch-sparse; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
