"""Micro-batching (DSCMR_BATCHING=on) against real servers: concurrent queries share encoder forwards, and every
request gets the answer the unbatched session server gives it (same ids in the same order, same scores up to the
float32 rounding of a batched forward), broken uploads fail alone, and batching is off on the CPU by default."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from app.main import batching_enabled
from app.settings import ServiceSettings
from tests.app_fixtures import serving, start_server, stop_server, wait_ready

# A batched forward sums in another order than one row at a time: the vectors differ in the last float32 bits
# (~1e-7), the scores (rounded to 6 decimals in the response) by at most a unit in their last place.
SCORE_TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def batched_server(app_artefacts, tmp_path_factory):
    # a long wait, so that the concurrent requests below surely share batches on a busy machine
    server = start_server(
        app_artefacts.index_root,
        tmp_path_factory.mktemp("batched") / "server.log",
        reload_poll_s="0",
        batching="on",
        batch_wait_ms="200",
        batch_max_size="8",
        inline_text_max_ms="0",
    )  # every text query through the batcher
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


def _batch_counts(metrics: str, endpoint: str) -> tuple[float, float]:
    """(forward passes, queries in them) of `endpoint` from dscmr_batch_size."""
    count = re.search(rf'^dscmr_batch_size_count\{{endpoint="{re.escape(endpoint)}"\}} (\S+)$', metrics, re.M)
    total = re.search(rf'^dscmr_batch_size_sum\{{endpoint="{re.escape(endpoint)}"\}} (\S+)$', metrics, re.M)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)


def _requests(artefacts) -> list[tuple[str, dict]]:
    """A mix of text and image searches with different k, targets and label filters."""
    items = [it for it in artefacts.items if it.image_path][:12]
    label = items[0].labels[0]
    out: list[tuple[str, dict]] = []
    for i, item in enumerate(items):
        options = {"k": 3 + i % 5, "target": ("image", "text", "both")[i % 3]}
        if i % 4 == 3:
            options["labels"] = [label]
        out.append(("/search/text", {"json": {"text": item.text, **options}}))
        jpeg = io.BytesIO()
        Image.open(item.image_path).convert("RGB").save(jpeg, format="JPEG")
        form = {"k": str(options["k"]), "target": options["target"]}
        if "labels" in options:
            form["labels"] = options["labels"]
        data = jpeg.getvalue() if i % 2 else Path(item.image_path).read_bytes()
        out.append(("/search/image", {"files": {"file": ("q.jpg", data)}, "data": form}))
    return out


def _send_all(server, requests: list[tuple[str, dict]], clients: int = 16) -> list:
    def one(request):
        path, kwargs = request
        with server.client() as client:
            return client.post(path, **kwargs)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, requests))


def _same_answer(batched: dict, unbatched: dict) -> None:
    assert [h["id"] for h in batched["results"]] == [h["id"] for h in unbatched["results"]]
    for mine, theirs in zip(batched["results"], unbatched["results"]):
        assert mine["score"] == pytest.approx(theirs["score"], abs=SCORE_TOLERANCE)
        if theirs["relevance"] is not None:
            assert mine["relevance"] == pytest.approx(theirs["relevance"], abs=SCORE_TOLERANCE)
        assert {k: v for k, v in mine.items() if k not in ("score", "relevance")} == {
            k: v for k, v in theirs.items() if k not in ("score", "relevance")
        }
    for key in ("index_version", "model_hash", "k", "target", "unknown_words"):
        assert batched[key] == unbatched[key]


def test_concurrent_batched_answers_equal_the_unbatched_ones(batched_server, app_server, app_artefacts):
    requests = _requests(app_artefacts)
    with batched_server.client() as client:
        before = {e: _batch_counts(client.get("/metrics").text, e) for e in ("/search/text", "/search/image")}
    batched = _send_all(batched_server, requests)
    unbatched = _send_all(app_server, requests, clients=2)
    for response in batched + unbatched:
        assert response.status_code == 200, response.text
    for mine, theirs in zip(batched, unbatched):
        _same_answer(mine.json(), theirs.json())
    with batched_server.client() as client:
        metrics = client.get("/metrics").text
    for endpoint in ("/search/text", "/search/image"):
        passes, queries = (a - b for a, b in zip(_batch_counts(metrics, endpoint), before[endpoint]))
        assert queries == len(requests) // 2
        assert passes < queries, f"{endpoint}: {queries:.0f} queries in {passes:.0f} forward passes: nothing was batched"
    # the unbatched server never batches (and reports no batch sizes)
    with app_server.client() as client:
        assert _batch_counts(client.get("/metrics").text, "/search/text") == (0.0, 0.0)


def test_a_broken_upload_fails_alone_in_its_batch(batched_server, app_server, app_artefacts):
    requests = _requests(app_artefacts)[1:8:2]  # image searches
    broken = ("/search/image", {"files": {"file": ("q.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200)}, "data": {"k": "3"}})
    not_an_image = ("/search/image", {"files": {"file": ("q.txt", b"hello, not a picture")}, "data": {"k": "3"}})
    answers = _send_all(batched_server, [requests[0], broken, requests[1], not_an_image, requests[2], requests[3]])
    reference = _send_all(app_server, [requests[0], broken, requests[1], not_an_image, requests[2], requests[3]], clients=1)
    assert [r.status_code for r in answers] == [r.status_code for r in reference]
    assert [r.status_code for r in answers] == [200, answers[1].status_code, 200, 415, 200, 200]
    assert answers[1].status_code in (415, 422) and answers[1].json() == reference[1].json()
    for mine, theirs in zip(answers, reference):
        if theirs.status_code == 200:
            _same_answer(mine.json(), theirs.json())


def test_batching_is_off_on_the_cpu_and_on_with_cuda_by_default():
    assert batching_enabled(ServiceSettings(device="cpu")) is False
    assert batching_enabled(ServiceSettings(device="cuda:0")) is True
    assert batching_enabled(ServiceSettings(device="cpu", batching="on")) is True
    assert batching_enabled(ServiceSettings(device="cuda", batching="off")) is False
    import torch

    assert batching_enabled(ServiceSettings(device="auto")) is torch.cuda.is_available()


def test_micro_batcher_groups_waits_and_fails_per_query():
    """The batcher alone: submissions within the wait share a batch, a full batch leaves at once, a per-query
    exception reaches only its submitter, an exception of the whole batch reaches every one of them."""
    import asyncio

    import anyio

    from app.batching import MicroBatcher

    batches: list[list[int]] = []

    def process(payloads):
        batches.append(list(payloads))
        if -1 in payloads:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad {p}") if p == 13 else p * 10 for p in payloads]

    async def scenario():
        batcher = MicroBatcher(process, anyio.CapacityLimiter(1), max_size=4, wait_s=0.05)
        results = await asyncio.gather(*(batcher.submit(p) for p in (1, 2, 13)), return_exceptions=True)
        assert [r[0] if isinstance(r, tuple) else str(r) for r in results] == [10, 20, "bad 13"]
        assert all(r[1] >= 0 for r in results if isinstance(r, tuple))
        full = await asyncio.gather(*(batcher.submit(p) for p in range(4, 9)))
        assert [r[0] for r in full] == [40, 50, 60, 70, 80]
        failed = await asyncio.gather(batcher.submit(5), batcher.submit(-1), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in failed)
        assert batcher.pending() == 0

    asyncio.run(scenario())
    assert batches[0] == [1, 2, 13]  # one batch: all three arrived within the wait
    assert batches[1] == [4, 5, 6, 7] and batches[2] == [8]  # a full batch left at once, the fifth went next
    assert batches[3] == [5, -1]


def test_a_lone_text_search_runs_on_the_event_loop_with_the_same_answer(app_artefacts, app_server, tmp_path):
    """DSCMR_INLINE_TEXT_MAX_MS: once the mean text search is known to fit the limit (here: any), a search arriving
    while nothing else runs skips the worker thread (its queue stage is 0) and answers exactly as the thread does."""
    server = start_server(app_artefacts.index_root, tmp_path / "server.log", reload_poll_s="0", inline_text_max_ms="1000000")
    try:
        wait_ready(server)
        item = app_artefacts.items[3]
        with server.client() as client:
            answers = [client.post("/search/text", json={"text": item.text, "k": 6, "target": "both"}).json() for _ in range(4)]
        with app_server.client() as client:
            threaded = client.post("/search/text", json={"text": item.text, "k": 6, "target": "both"}).json()
    finally:
        stop_server(server)
    assert answers[0]["stages_ms"]["queue"] > 0  # nothing measured yet: the first one goes to a thread
    assert [a["stages_ms"]["queue"] for a in answers[1:]] == [0.0, 0.0, 0.0]
    for answer in answers:
        assert [(h["id"], h["score"], h["relevance"]) for h in answer["results"]] == [
            (h["id"], h["score"], h["relevance"]) for h in threaded["results"]
        ]


def test_concurrent_text_searches_leave_the_event_loop_even_when_cheap_enough_to_run_on_it(app_artefacts, tmp_path):
    """A search run on the event loop blocks it, so the requests arriving meanwhile only reach their handlers once it is
    done, each finding no other search started yet. Without a look first, each of them then ran on the loop too: under
    load every text search was served one at a time on one core, never batched (MiniLM on a 2-core machine: 124 req/s
    at 32 clients, batching on or off, against ~450 batched). Sequential searches still run on the loop."""
    texts = [item.text for item in app_artefacts.items[:24]]
    settings = {"reload_poll_s": "0", "batching": "on", "batch_wait_ms": "20", "inline_text_max_ms": "1000000"}
    with serving(app_artefacts.index_root, tmp_path / "server.log", **settings) as server:
        with server.client() as client:
            sequential = [client.post("/search/text", json={"text": t, "k": 5}).json() for t in texts[:4]]
            before = _batch_counts(client.get("/metrics").text, "/search/text")  # the first search: nothing measured yet

        def search(text: str) -> dict:
            with server.client() as client:
                return client.post("/search/text", json={"text": text, "k": 5}).json()

        for _ in range(3):
            with ThreadPoolExecutor(len(texts)) as pool:
                concurrent = list(pool.map(search, texts))
            assert all(len(answer["results"]) == 5 for answer in concurrent)
        with server.client() as client:
            after = _batch_counts(client.get("/metrics").text, "/search/text")
    assert [a["stages_ms"]["queue"] for a in sequential[1:]] == [0.0, 0.0, 0.0]  # alone: on the loop
    forwards, queries = after[0] - before[0], after[1] - before[1]
    assert forwards >= 1 and queries > forwards, f"{queries:g} queries in {forwards:g} forwards: none shared a batch"
