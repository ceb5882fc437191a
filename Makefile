# Everyday commands. `make demo` serves the built-in demo corpus; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts

.PHONY: install test demo demo-build serve bench-wikipedia clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch is pinned in the same pip command as everything that depends on it, so pip never pulls a second (CUDA) build.
install: $(PY)
	$(PY) -m pip install "torch==2.13.0" -e ".[test,sentence]"

test: install
	$(PY) -m pytest -q

demo-build: install
	$(PY) -m training demo --artifacts $(ARTIFACTS)

demo: demo-build
	DSCMR_ARTIFACTS=$(ARTIFACTS) $(PY) -m uvicorn app.main:create_app --factory --host 0.0.0.0 --port 8000

bench-wikipedia: install
	$(PY) bench/wikipedia.py

clean:
	rm -rf $(ARTIFACTS) bench/out .pytest_cache
