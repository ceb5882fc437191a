"""DSCMR_WORKERS=2 against a real server: both worker processes serve, share the index vectors through one mapping of
the version's files, and each takes up a newly published version (hot reload in every worker)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from index.store import read_current
from index.update import delete_items
from tests.app_fixtures import copy_index_root, start_server, stop_server, wait_ready, wait_until


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def versions_by_worker(server, wanted: int = 2, attempts: int = 200) -> dict[int, str]:
    """{worker pid: index version it serves}, asking /readyz on a new connection each time until `wanted` workers
    answered (the kernel hands each connection to one worker)."""
    seen: dict[int, str] = {}
    for _ in range(attempts):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = client.get("/readyz").json()
        if body.get("ready"):
            seen[body["worker_pid"]] = body["index_version"]
        if len(seen) >= wanted:
            break
    return seen


@pytest.fixture(scope="module")
def two_workers(app_artefacts, tmp_path_factory):
    base = tmp_path_factory.mktemp("workers")
    root = copy_index_root(app_artefacts.index_root, base / "index")
    server = start_server(root, base / "server.log", workers="2", reload_poll_s="0.2")
    try:
        wait_ready(server)
        yield server, root, app_artefacts
    finally:
        stop_server(server)


def test_two_workers_share_the_mapped_index_and_each_reloads(two_workers):
    server, root, artefacts = two_workers
    first = read_current(root)
    workers = wait_until(server, lambda c: (w := versions_by_worker(server)) and len(w) == 2 and w, "both workers to answer")
    assert set(workers.values()) == {first}
    assert server.process.pid not in workers  # the supervisor serves nothing itself
    image_file = str((root / "versions" / first / "image.faiss").resolve())
    for pid in workers:
        assert image_file in _maps(pid), f"worker {pid} does not map {image_file}"
    item = artefacts.items[0]
    with server.client() as client:
        before = client.post("/search/text", json={"text": item.text, "k": 5, "target": "text"}).json()
    assert before["index_version"] == first and item.id in [h["id"] for h in before["results"]]

    new_version = delete_items(root, [item.id]).name  # publishes a new version and moves CURRENT

    def all_on_new(_client):
        seen = versions_by_worker(server)
        return len(seen) == 2 and set(seen) == set(workers) and set(seen.values()) == {new_version}

    wait_until(server, all_on_new, "both workers to serve the new version", timeout=90)
    new_file = str((root / "versions" / new_version / "image.faiss").resolve())
    for pid in workers:
        assert new_file in _maps(pid)
    # searches on new connections (either worker) all come from the new version, without the deleted item
    for _ in range(8):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = client.post("/search/text", json={"text": item.text, "k": 5, "target": "text"}).json()
        assert body["index_version"] == new_version and item.id not in [h["id"] for h in body["results"]]
