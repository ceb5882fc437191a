# Everyday commands: `make up` is `docker compose up` with either Compose version, `make demo` serves the built-in emoji
# demo at http://127.0.0.1:8000 without Docker, `make test` runs the test suite, `make bench-wikipedia` the Wikipedia
# benchmark, `make docker-verify` checks the Docker image and compose stack.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000
# scripts/verify_docker.sh options; --offline builds the base image and a wheelhouse locally (no registry reachable).
DOCKER_VERIFY_FLAGS ?=
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install up demo test bench-wikipedia docker-verify clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# torch is pinned in the same pip command as everything that depends on it, so pip never pulls a second (CUDA) build.
install: $(PY)
	$(PY) -m pip install "torch==2.13.0" -e ".[test,sentence,cjk]"

# The README's first command, `docker compose up`, run by Compose v2 or else v1's `docker-compose` (scripts/compose.sh
# says how to install one when neither is there). `make up UP_FLAGS=-d` runs it in the background.
UP_FLAGS ?=
up:
	scripts/compose.sh up $(UP_FLAGS)

# The emoji demo without Docker: build it under $(ARTIFACTS) (corpus -> prepared -> model -> index; stages already done
# are skipped, so a second `make demo` starts serving at once), then serve it until Ctrl-C.
# Needs Debian's fonts-noto-color-emoji, unicode-cldr-core and unicode-data (and libfribidi0 for multi-code-point emoji).
demo: install
	$(PY) -m training demo --root $(ARTIFACTS)
	DSCMR_ARTIFACTS=$(ARTIFACTS) DSCMR_INDEX_ROOT=$(ARTIFACTS)/index DSCMR_HOST=$(DEMO_HOST) DSCMR_PORT=$(DEMO_PORT) \
		$(PY) -m app

test: install
	$(PY) -m pytest -q

bench-wikipedia: install
	$(PY) bench/wikipedia.py

# Build the image, `docker compose up` the demo, query it, tear it down (see docs/docker.md).
docker-verify:
	scripts/verify_docker.sh $(DOCKER_VERIFY_FLAGS)

clean:
	rm -rf $(ARTIFACTS) bench/out .pytest_cache
