"""Startup without an index, hot reload of new index versions and models, and rollback, against a real server.

One server runs for the whole module on a private index root (the session server's index is never changed). It starts
before any version exists, so /readyz must say 503 until the first version is published; then every test publishes or
switches versions and checks what the server serves, while requests are in flight.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import torch

from index.build import BuildConfig, build_index
from index.store import list_versions, read_current, set_current
from index.update import delete_items
from model.artefact import load_model, save_model
from tests.app_fixtures import ADMIN_KEY, start_server, stop_server, wait_ready, wait_until


@pytest.fixture(scope="module")
def reload_env(app_artefacts, tmp_path_factory):
    """(server, its index root, the session's artefact root); the server starts with an empty index root."""
    base = tmp_path_factory.mktemp("reload")
    root = base / "index"
    root.mkdir()
    server = start_server(root, base / "server.log", reload_poll_s="0.2")
    try:
        yield server, root, app_artefacts
    finally:
        stop_server(server)


def assert_no_server_path(detail: str, root: Path) -> None:
    """`detail` (a public message) names no absolute path of the server: neither the index root nor any /a/b path."""
    assert str(root) not in detail and not re.search(r"/\w[^\s]*/", detail), detail


def served_version(client: httpx.Client) -> str | None:
    """The index version /readyz reports (None while not ready)."""
    body = client.get("/readyz").json()
    return body.get("index_version") if body.get("ready") else None


def publish_copy_of(source_root: Path, target_root: Path) -> str:
    """Copy the CURRENT version of source_root into target_root and point target_root's CURRENT at it."""
    name = read_current(source_root)
    shutil.copytree(source_root / "versions" / name, target_root / "versions" / name)
    set_current(target_root, name)
    return name


def test_not_ready_until_a_version_is_published(reload_env):
    server, root, artefacts = reload_env
    # the process is alive at once but has nothing to serve
    wait_until(server, lambda c: c.get("/healthz").status_code == 200, "GET /healthz = 200")
    with server.client() as client:
        wait_until(server, lambda c: "no index" in (c.get("/readyz").json()["detail"] or ""), "the first load attempt")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "no index" in ready.json()["detail"]
        search = client.post("/search/text", json={"text": "cat"})
        assert search.status_code == 503 and search.json()["error"] == "not_ready"
        assert search.headers["retry-after"]
        # nobody learns where the server keeps its files; the admin key (and the log) have the full reason
        for public in (ready.json()["detail"], search.json()["detail"]):
            assert_no_server_path(public, root)
        assert str(root) in client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).json()["detail"]
        assert str(root) not in client.get("/readyz", headers={"X-API-Key": "wrong"}).json()["detail"]
        assert str(root) in server.log()
    name = publish_copy_of(artefacts.index_root, root)
    assert wait_ready(server, timeout=60)["index_version"] == name


def _hammer(server, stop: threading.Event, text: str, image: bytes, outcomes: list) -> None:
    """Send text and image searches back to back until `stop`; record (status, index version, model hash, result ids)."""
    with server.client() as client:
        i = 0
        while not stop.is_set():
            if i % 3:
                response = client.post("/search/text", json={"text": text, "k": 5, "target": "text"})
            else:
                response = client.post("/search/image", files={"file": ("q.png", image)}, data={"k": "50", "target": "both"})
            body = response.json()
            outcomes.append(
                (
                    response.status_code,
                    body.get("index_version"),
                    body.get("model_hash"),
                    {h["id"] for h in body.get("results", [])},
                )
            )
            i += 1


def test_new_version_is_taken_up_without_failing_requests_in_flight(reload_env):
    server, root, artefacts = reload_env
    with server.client() as client:
        wait_ready(server)
        before = served_version(client)
        texts = [it.text for it in artefacts.items]
        doomed_item = next(it for it in artefacts.items if texts.count(it.text) == 1)
        doomed = doomed_item.id
        assert client.get(f"/items/{doomed}").status_code == 200
        stop, outcomes = threading.Event(), []
        image = Path(doomed_item.image_path).read_bytes()
        workers = [threading.Thread(target=_hammer, args=(server, stop, doomed_item.text, image, outcomes)) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            wait_until(server, lambda c: len(outcomes) >= 6, "requests before the update", timeout=60)
            new_version = delete_items(root, [doomed]).name  # publishes a new version and switches CURRENT
            wait_until(server, lambda c: served_version(c) == new_version, "the new version to be served", timeout=60)
            seen_after = len(outcomes)
            wait_until(server, lambda c: len(outcomes) >= seen_after + 6, "requests after the update", timeout=60)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        statuses = Counter(status for status, *_ in outcomes)
        assert statuses == {200: len(outcomes)}, statuses
        versions = [version for _, version, _, _ in outcomes]
        assert before in versions and new_version in versions
        # answers name the version that produced them: the deleted item (its own text and picture, so always the top
        # hit while it exists) comes from every old-version answer and from no new-version answer
        for _, version, _, ids in outcomes:
            assert (doomed in ids) == (version == before), (version, ids)
        assert client.get(f"/items/{doomed}").status_code == 404
        metrics = client.get("/metrics").text
        assert f'dscmr_index_info{{index_version="{new_version}"' in metrics


def test_a_new_model_is_loaded_with_its_index(reload_env, tmp_path):
    server, root, artefacts = reload_env
    # a second model: the same network with perturbed weights (another content hash), indexing the texts only
    artefact = load_model(artefacts.model_dir)
    generator = torch.Generator().manual_seed(1)
    artefact.state_dict = {
        k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in artefact.state_dict.items()
    }
    model_b = tmp_path / "model-b"
    new_hash = save_model(artefact, model_b)
    with server.client() as client:
        old_hash = client.get("/readyz").json()["model_hash"]
        assert new_hash != old_hash
        version = build_index(
            model_b, artefacts.corpus_dir, root, BuildConfig(modalities=("text",), show_progress=False, decode_workers=1)
        ).name
        ready = wait_until(
            server,
            lambda c: (b := c.get("/readyz").json()).get("index_version") == version and b,
            "the new model's index to be served",
            timeout=120,
        )
        assert ready["model_hash"] == new_hash and ready["counts"] == {"text": len(artefacts.items)}
        item = artefacts.items[0]
        body = client.post("/search/text", json={"text": item.text, "k": 1, "target": "text"}).json()
        assert body["model_hash"] == new_hash and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        # this index has no image vectors: asking for images is the client's mistake, said clearly
        response = client.post("/search/text", json={"text": "cat", "target": "image"})
        assert response.status_code == 422 and response.json()["error"] == "unsupported_target"


def test_rollback_through_the_admin_endpoint(reload_env):
    server, root, _ = reload_env
    with server.client() as client:
        oldest = list_versions(root)[0]
        set_current(root, oldest)
        response = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY})
        assert response.status_code == 200, response.text
        # whether the watcher or this call loaded it, the call returns once CURRENT's version is served
        assert served_version(client) == oldest == response.json()["index_version"]
        assert client.post("/search/text", json={"text": "cat"}).json()["index_version"] == oldest


def test_a_broken_version_is_refused_and_the_old_one_kept(reload_env):
    server, root, _ = reload_env
    with server.client() as client:
        good = wait_ready(server)["index_version"]
        broken = root / "versions" / "v99999999T000000000000Z-broken"
        shutil.copytree(root / "versions" / good, broken)
        (broken / "records.jsonl").write_bytes(b"damaged")
        set_current(root, broken.name)
        failed = client.post("/admin/reload", headers={"X-API-Key": ADMIN_KEY}, json={"force": True})
        assert failed.status_code == 409 and failed.json()["error"] == "reload_failed"
        assert good in failed.json()["detail"]
        time.sleep(0.6)  # a few watcher polls: it must not retry the same broken version in a loop, nor drop the good one
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["index_version"] == good
        # the public reason names the versions and the kind of failure, never a server path or file
        assert broken.name in ready["detail"] and good in ready["detail"] and "server log" in ready["detail"]
        assert_no_server_path(ready["detail"], root)
        assert "records.jsonl" not in ready["detail"]
        full = client.get("/readyz", headers={"X-API-Key": ADMIN_KEY}).json()["detail"]
        assert "records.jsonl" in full and str(root) in full
        assert "records.jsonl" in server.log()
        assert client.post("/search/text", json={"text": "cat"}).status_code == 200
        set_current(root, good)
        wait_until(server, lambda c: c.get("/readyz").json()["detail"] is None, "the error to clear", timeout=30)
        assert 'dscmr_reloads_total{result="failure"}' in client.get("/metrics").text
