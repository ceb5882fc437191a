# Everyday commands: `make up` is `docker compose up` with either Compose version, `make demo` serves the built-in emoji
# demo at http://127.0.0.1:8000 without Docker, `make test` runs the test suite, `make bench-wikipedia` the Wikipedia
# benchmark, `make lint` checks formatting and lint (ruff), `make docker-verify` checks the Docker image and compose stack.
# `make install` chooses torch's build and the FAISS extra by whether the machine has an NVIDIA driver (nvidia-smi);
# override with TORCH_INDEX=... and FAISS=cpu|gpu (see the README, "Install").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACTS ?= artifacts
DEMO_HOST ?= 127.0.0.1
DEMO_PORT ?= 8000
# scripts/verify_docker.sh options; --offline builds the base image and a wheelhouse locally (no registry reachable).
DOCKER_VERIFY_FLAGS ?=
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install up demo test lint bench-wikipedia docker-verify clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

TORCH_VERSION ?= 2.13.0
HAS_NVIDIA_DRIVER := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
# On Linux, PyPI's torch is a CUDA build (several GB of CUDA libraries): right on a GPU host, a waste on a CPU one. Without
# an NVIDIA driver pip also searches PyTorch's CPU index and takes its "+cpu" build of the same version (a higher
# version to pip than PyPI's). TORCH_INDEX= (empty) uses only the indexes pip is configured with, for a mirror or a
# local wheel folder that already holds the build you want (CI does that: PyTorch's index is unreachable there, and pip
# would retry it for every package); TORCH_INDEX=URL names another index, e.g. https://download.pytorch.org/whl/cu128.
TORCH_INDEX ?= $(if $(HAS_NVIDIA_DRIVER),,https://download.pytorch.org/whl/cpu)
# FAISS from the package's `gpu` extra (faiss-gpu-cu12) with an NVIDIA driver, else from `cpu` (faiss-cpu); never both.
FAISS ?= $(if $(HAS_NVIDIA_DRIVER),gpu,cpu)

# torch is pinned in the same pip command as everything that depends on it, so pip never pulls a second (CUDA) build.
install: $(PY)
	$(PY) -m pip install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)" \
		-e ".[test,sentence,multilingual,cjk,$(FAISS)]"

# The README's first command, `docker compose up`, run by Compose v2 or else v1's `docker-compose` (scripts/compose.sh
# says how to install one when neither is there). `make up UP_FLAGS=-d` runs it in the background.
UP_FLAGS ?=
up:
	scripts/compose.sh up $(UP_FLAGS)

# The emoji demo without Docker: build it under $(ARTIFACTS) (corpus -> prepared -> model -> index; stages already done
# are skipped, so a second `make demo` starts serving at once), then serve it until Ctrl-C.
# Needs Debian's fonts-noto-color-emoji, unicode-cldr-core and unicode-data (and libfribidi0 for multi-code-point emoji).
demo: install
	$(VENV)/bin/dscmr-train demo --root $(ARTIFACTS)
	DSCMR_ARTIFACTS=$(ARTIFACTS) DSCMR_INDEX_ROOT=$(ARTIFACTS)/index DSCMR_HOST=$(DEMO_HOST) DSCMR_PORT=$(DEMO_PORT) \
		$(VENV)/bin/dscmr-serve

test: install
	$(PY) -m pytest -q

# Formatting and lint (ruff, configured in pyproject.toml); CI runs it before the tests. `ruff format .` fixes the first.
lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

bench-wikipedia: install
	$(PY) bench/wikipedia.py

# Build the image, `docker compose up` the demo, query it, tear it down (see docs/docker.md).
docker-verify:
	scripts/verify_docker.sh $(DOCKER_VERIFY_FLAGS)

clean:
	rm -rf $(ARTIFACTS) bench/out .pytest_cache
