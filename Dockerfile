# One image for the search service (`python -m app`) and its jobs (`python -m training demo|train|retrain`,
# `python -m index ...`); docker-compose.yml runs them and docs/docker.md explains the options.
#
#   docker build -t dscmr-search:cpu .                           CPU build of torch (default)
#   docker build --build-arg VARIANT=gpu -t dscmr-search:gpu .   CUDA build of torch + the `gpu` extra (NVIDIA hosts)
#
# Layers go from least to most often changed: system packages, then the Python dependencies (read from pyproject.toml
# alone), then the code. Editing the code reinstalls nothing; editing pyproject.toml reinstalls the dependencies.

# Debian release pinned: the demo corpus is built from this release's emoji font, CLDR and Unicode data packages.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The demo's source data (emoji font, CLDR keywords, emoji-test.txt; of CLDR only the emoji annotations of every locale,
# about 90 MB, so that DSCMR_DEMO_LOCALE can pick the demo's language, not its other 140 MB), libfribidi0 (Pillow's wheels load it at run time for libraqm, which renders multi-code-point emoji such as
# family and flag sequences), and a user without privileges that owns /data, so that a new named volume mounted there
# is writable by it. Versions are not pinned: Debian's archive drops superseded ones, and the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-noto-color-emoji unicode-cldr-core unicode-data libfribidi0 \
    && rm -rf /var/lib/apt/lists/* \
    && find /usr/share/unicode/cldr -type f ! -path '*/common/annotations/*.xml' \
        ! -path '*/common/annotationsDerived/*.xml' -delete \
    && groupadd --system --gid 10001 dscmr \
    && useradd --no-log-init --uid 10001 --gid dscmr --create-home --home-dir /home/dscmr --shell /usr/sbin/nologin dscmr \
    && install -d -o dscmr -g dscmr /data

# Build arguments are declared here, after the system layer, so that their values (which differ between the CPU and
# GPU images and between builders) never invalidate that layer.
# cpu: torch's CPU build from TORCH_CPU_INDEX_URL + the package's `cpu` extra (faiss-cpu). gpu: torch from PyPI (a CUDA
# build) + the `gpu` extra (faiss-gpu-cu12), the same extras as `pip install .[cpu]` / `.[gpu]` outside Docker.
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra index for the GPU torch build; empty takes PyPI's (CUDA 13 for torch 2.13). The FAISS GPU wheels on PyPI are
# CUDA 12 builds: both bring their own CUDA libraries (different sonames), so any driver for CUDA 13 serves both.
ARG TORCH_GPU_INDEX_URL=
# Runtime extras besides FAISS's, which VARIANT names.
ARG EXTRAS=sentence,multilingual,cjk
# pip's own settings, unset by default. scripts/verify_docker.sh --offline points them at a local wheelhouse for
# machines that cannot reach the package index from inside a build.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

# Dependencies only: pyproject.toml's [project] dependencies and the runtime extras, torch pinned in the same pip
# command so that nothing pulls a second torch build.
WORKDIR /tmp/dscmr-build
COPY pyproject.toml scripts/pyproject_requirements.py ./
RUN set -eu; \
    python -m venv "$VIRTUAL_ENV"; \
    case "$VARIANT" in \
      cpu) torch_index="$TORCH_CPU_INDEX_URL" ;; \
      gpu) torch_index="$TORCH_GPU_INDEX_URL" ;; \
      *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python pyproject_requirements.py pyproject.toml --extras "$EXTRAS,$VARIANT" > requirements.txt; \
    pip install ${torch_index:+--extra-index-url "$torch_index"} "torch==$TORCH_VERSION" "setuptools>=68" wheel \
        -r requirements.txt; \
    python -c "import sys, torch; cuda = torch.version.cuda; print('torch', torch.__version__, 'CUDA', cuda); \
sys.exit(f'the {sys.argv[1]} image got torch {torch.__version__} (CUDA {cuda})' if (cuda is None) != (sys.argv[1] == 'cpu') else 0)" \
        "$VARIANT"; \
    rm -f requirements.txt pyproject.toml pyproject_requirements.py

# The code: a regular (non-editable) install of the package, without touching the dependencies installed above.
COPY pyproject.toml /tmp/dscmr-src/
COPY model /tmp/dscmr-src/model
COPY training /tmp/dscmr-src/training
COPY index /tmp/dscmr-src/index
COPY app /tmp/dscmr-src/app
RUN pip install --no-deps --no-build-isolation /tmp/dscmr-src \
    && rm -rf /tmp/dscmr-src \
    && python -c "import app.main, index.build, training.demo, model.network" \
    && dscmr-serve --help >/dev/null && dscmr-index --help >/dev/null && dscmr-train --help >/dev/null

# Artefacts live on the /data volume; the service binds every interface inside the container.
# DSCMR_DEMO_LOCALE: the CLDR locale of the demo's texts (`python -m training demo --locale`), English by default.
ENV DSCMR_ARTIFACTS=/data \
    DSCMR_INDEX_ROOT=/data/index \
    DSCMR_DEMO_LOCALE=en \
    DSCMR_HOST=0.0.0.0 \
    DSCMR_PORT=8000 \
    OMP_WAIT_POLICY=PASSIVE
USER 10001:10001
WORKDIR /home/dscmr
EXPOSE 8000
# Healthy = the model and the index are loaded (/readyz answers 200); urllib raises on any other status.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DSCMR_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "app"]
