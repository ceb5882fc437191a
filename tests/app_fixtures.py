"""Shared fixtures of the service tests: a real artefact root (corpus -> prepared -> model -> index) built once per session,
and real uvicorn servers (`python -m app`) on 127.0.0.1 serving it.

The artefact root is the emoji demo (`training.demo.build_demo`, small and briefly trained) where the Debian emoji files
are installed, else the same pipeline over a corpus of coloured shapes drawn here with Pillow.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DEMO_LIMIT = 90
DEMO_EPOCHS = 2
ADMIN_KEY = "test-admin-key"
# Small enough that the size-limit tests send little data, large enough for every corpus image.
MAX_UPLOAD_BYTES = 200_000
MAX_TEXT_CHARS = 300
SHAPE_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
}
SHAPES = ("circle", "square", "triangle")


@dataclass
class ArtefactRoot:
    """A built artefact root: where its parts are and what the index holds."""

    root: Path
    corpus_dir: Path
    index_root: Path
    model_dir: Path
    source: str  # "emoji-demo" or "shapes"
    items: list = field(default_factory=list)


@dataclass
class ServerHandle:
    """A running `python -m app` subprocess."""

    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    def client(self, **kwargs) -> httpx.Client:
        """An HTTP client for this server."""
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kwargs})

    def log(self) -> str:
        """The server's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shape_image(shape: str, rgb: tuple[int, int, int], margin: int) -> Image.Image:
    """A 96x96 white picture with one filled circle, square or triangle, `margin` pixels from the edges."""
    image = Image.new("RGB", (96, 96), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = (margin, margin, 96 - margin, 96 - margin)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(48, margin), (96 - margin, 96 - margin), (margin, 96 - margin)], fill=rgb)
    return image


def draw_shapes_corpus(directory: Path) -> None:
    """Write a small corpus of coloured shapes (images + 'a red circle ...' texts, labelled by shape)."""
    from model.corpus import Corpus, Item, save_corpus

    images = directory / "images"
    images.mkdir(parents=True, exist_ok=True)
    items = []
    for shape in SHAPES:
        for colour, rgb in SHAPE_COLOURS.items():
            for variant in range(4):
                image = shape_image(shape, rgb, margin=10 + 6 * variant)
                item_id = f"{colour}-{shape}-{variant}"
                path = images / f"{item_id}.png"
                image.save(path)
                size = ("large", "big", "medium", "small")[variant]
                items.append(Item(item_id, str(path.resolve()), f"a {size} {colour} {shape}", (shape,)))
    save_corpus(Corpus(items=items, label_names=list(SHAPES), name="shapes"), directory)


def emoji_sources_present() -> bool:
    """True when the Debian files the emoji demo is rendered from are installed."""
    from training.datasets.emoji_demo import EmojiSources

    try:
        EmojiSources().check()
    except FileNotFoundError:
        return False
    return True


def build_artefact_root(root: Path) -> ArtefactRoot:
    """Corpus -> prepared -> model -> index under `root` with the real pipeline (training.demo.build_demo)."""
    from index.store import load_manifest, resolve_version
    from model.corpus import load_corpus
    from training.demo import DemoConfig, artefact_paths, build_demo

    paths = artefact_paths(root)
    source = "emoji-demo"
    if not emoji_sources_present():
        draw_shapes_corpus(paths["corpus"])  # build_demo keeps a corpus that is already there
        source = "shapes"
    # The GloVe sentence CNN keeps the vocabulary path (unknown words) under test; MiniLM has its own tests.
    # No caption vectors: the shared server ranks by the model alone; tests/test_app_caption_match.py adds them to a copy.
    build_demo(
        root, DemoConfig(limit=DEMO_LIMIT, epochs=DEMO_EPOCHS, text="glove", progress=False, caption_weight=0.0)
    )  # a no-op on a built root
    corpus = load_corpus(paths["corpus"])
    manifest = load_manifest(resolve_version(paths["index"]), verify_files=False)
    return ArtefactRoot(
        root=root,
        corpus_dir=paths["corpus"],
        index_root=paths["index"],
        model_dir=Path(manifest["model"]["path"]),
        source=source,
        items=list(corpus.items),
    )


def start_server(index_root: Path, log_path: Path, **settings: str) -> ServerHandle:
    """Start `python -m app` on a free port of 127.0.0.1 (returns at once; see wait_ready)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCMR_")}
    env.update(
        {
            "DSCMR_INDEX_ROOT": str(index_root),
            "DSCMR_HOST": "127.0.0.1",
            "DSCMR_PORT": str(port),
            "DSCMR_ADMIN_API_KEY": ADMIN_KEY,
            "DSCMR_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            "DSCMR_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "DSCMR_ACCESS_LOG": "false",
            "DSCMR_CPU_WORKERS": "2",
            "DSCMR_DEVICE": "cpu",
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"DSCMR_{k.upper()}": str(v) for k, v in settings.items()})
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return ServerHandle(f"http://127.0.0.1:{port}", process, log_path, env)


def wait_until(server: ServerHandle, predicate, what: str, timeout: float = 120.0, interval: float = 0.2):
    """Poll `predicate(client)` until it returns something truthy; fail with the server log after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    with server.client(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(
                    f"the server exited with {server.process.returncode} while waiting for {what}:\n{server.log()[-4000:]}"
                )
            try:
                result = predicate(client)
                if result:
                    return result
            except httpx.HTTPError as exc:
                last_error = exc
            time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error}):\n{server.log()[-4000:]}")


def wait_ready(server: ServerHandle, timeout: float = 120.0) -> dict:
    """Wait for GET /readyz to answer 200; return its body."""

    def ready(client: httpx.Client):
        response = client.get("/readyz")
        return response.json() if response.status_code == 200 else None

    return wait_until(server, ready, "GET /readyz = 200", timeout)


def stop_server(server: ServerHandle) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 15 s)."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


@contextmanager
def serving(index_root: Path, log_path: Path, **settings: str) -> Iterator[ServerHandle]:
    """A started server, ready before the block runs and stopped after it (whatever the block raised)."""
    server = start_server(index_root, log_path, **settings)
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


def copy_index_root(source: Path, target: Path) -> Path:
    """A private copy of an index root (versions + CURRENT) that a test may change freely."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock", ".staging", "shards"))
    return target


@pytest.fixture(scope="session")
def app_artefacts(tmp_path_factory) -> ArtefactRoot:
    """The artefact root every service test serves (built once per test session).

    DSCMR_TEST_APP_ROOT=DIR keeps it in DIR across sessions (built there on first use), to iterate faster locally.
    """
    keep = os.environ.get("DSCMR_TEST_APP_ROOT")
    return build_artefact_root(Path(keep) if keep else tmp_path_factory.mktemp("app-artefacts"))


@pytest.fixture(scope="session")
def app_server(app_artefacts, tmp_path_factory) -> Iterator[ServerHandle]:
    """A uvicorn server over the session's artefact root; tests must not change its index (see reload tests)."""
    with serving(app_artefacts.index_root, tmp_path_factory.mktemp("app-server") / "server.log", reload_poll_s="0") as server:
        yield server


@pytest.fixture()
def api(app_server) -> Iterator[httpx.Client]:
    """An HTTP client of the session server."""
    with app_server.client() as client:
        yield client
