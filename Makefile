# Everyday commands: `make test` runs the test suite, `make bench-wikipedia` the Wikipedia benchmark.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test bench-wikipedia clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch is pinned in the same pip command as everything that depends on it, so pip never pulls a second (CUDA) build.
install: $(PY)
	$(PY) -m pip install "torch==2.13.0" -e ".[test,sentence,cjk]"

test: install
	$(PY) -m pytest -q

bench-wikipedia: install
	$(PY) bench/wikipedia.py

clean:
	rm -rf $(ARTIFACTS) bench/out .pytest_cache
