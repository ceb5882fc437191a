"""Retrain and switch while the real service is under load: every request answers 200, and the new model takes over."""

from __future__ import annotations

import shutil
import threading
from collections import Counter

import httpx

from index.store import read_current
from tests.app_fixtures import start_server, stop_server, wait_ready, wait_until
from training.retrain import RetrainConfig, retrain


def test_retrain_promotes_and_the_running_service_switches_with_zero_failed_requests(app_artefacts, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(app_artefacts.root, root, ignore=shutil.ignore_patterns(".lock", ".staging", "shards", "runs"))
    server = start_server(root / "index", tmp_path / "server.log", reload_poll_s="0.2")
    statuses: Counter = Counter()
    hashes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with server.client(timeout=60) as client:
            while not stop.is_set():
                try:
                    response = client.post("/search/text", json={"text": "a smiling face", "k": 5})
                except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    hashes.append(response.json()["model_hash"])

    try:
        before = wait_ready(server)
        workers = [threading.Thread(target=hammer) for _ in range(2)]
        for w in workers:
            w.start()
        # tolerance 1.0: promotion is what this test is about (the decision rule is tested in test_retrain.py)
        report = retrain(
            root, RetrainConfig(epochs=3, early_stopping=None, tolerance=1.0, reprepare=False, progress=False, keep=5)
        )
        assert report["decision"] == "promoted", report["reason"]
        new_hash = report["candidate"]["content_hash"]
        wait_until(
            server, lambda c: c.get("/readyz").json().get("model_hash") == new_hash, "the service to serve the new model", 120
        )
        with server.client() as client:  # a few requests answered entirely by the new model
            for _ in range(5):
                assert client.post("/search/text", json={"text": "a smiling face", "k": 5}).json()["model_hash"] == new_hash
        stop.set()
        for w in workers:
            w.join(timeout=60)
    finally:
        stop.set()
        stop_server(server)
    assert set(statuses) == {200}, f"failed requests during the switch: {statuses}"
    assert statuses[200] >= 10
    assert before["model_hash"] in hashes and new_hash in hashes
    first_new = hashes.index(new_hash)
    assert before["model_hash"] not in hashes[first_new + len(workers) :]  # no flip-flopping back once switched
    assert read_current(root / "index") == report["serving_after"]["index_version"]
