"""The service's endpoints against a real uvicorn server and a real index (see tests/app_fixtures.py)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.metadata import MetadataStore
from index.store import load_manifest, resolve_version
from model.corpus import load_corpus
from tests.app_fixtures import REPO


@pytest.fixture(scope="module")
def served(app_artefacts):
    """(manifest, metadata store) of the version the session server serves."""
    version = resolve_version(app_artefacts.index_root)
    return load_manifest(version, verify_files=False), MetadataStore(version / "metadata.sqlite")


def item_with_unique_text(items):
    """An item whose text no other item shares (so an exact text search must rank it first)."""
    texts = [it.text for it in items]
    return next(it for it in items if texts.count(it.text) == 1)


def test_concurrent_requests_all_succeed_with_the_sequential_answers(app_server, app_artefacts):
    """A burst of mixed requests from many threads (the service runs them in a thread pool): every answer is the one a
    lone request gets."""
    ids = [it.id for it in app_artefacts.items[:12]]
    image = Path(app_artefacts.items[0].image_path).read_bytes()
    calls = (
        [("GET", f"/media/{i}?size=64", None) for i in ids]
        + [("GET", f"/items/{i}", None) for i in ids]
        + [("POST", "/search/text", {"json": {"text": it.text, "k": 5}}) for it in app_artefacts.items[:6]]
        + [("POST", "/search/image", {"files": {"file": ("q.png", image)}})] * 4
    )

    def call(spec):
        method, path, kwargs = spec
        with app_server.client() as client:
            response = client.request(method, path, **(kwargs or {}))
        body = (
            response.content
            if path.startswith("/media")
            else [(h["id"], h["score"]) for h in response.json().get("results", [])]
            if path.startswith("/search")
            else response.json()
        )
        return response.status_code, body

    with ThreadPoolExecutor(max_workers=16) as pool:
        concurrent = list(pool.map(call, calls))
    sequential = [call(spec) for spec in calls]
    assert [status for status, _ in concurrent] == [200] * len(calls)
    assert concurrent == sequential


def test_text_search_returns_images_with_versions_and_timing(api, served):
    manifest, _ = served
    response = api.post("/search/text", json={"text": "a smiling face", "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_hash"] == manifest["model"]["content_hash"]
    assert body["index_version"] == manifest["version"]
    assert body["took_ms"] > 0 and body["k"] == 7 and body["target"] == "image"
    assert set(body["stages_ms"]) == {"queue", "encode", "search"}
    hits = body["results"]
    assert len(hits) == 7
    assert all(h["modality"] == "image" and h["image_url"] == f"/media/{h['id']}" and h["text"] is None for h in hits)
    assert all(h["thumbnail_url"].startswith(h["image_url"] + "?size=") for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)


def test_exact_text_finds_its_own_item_first(api, app_artefacts):
    item = item_with_unique_text(app_artefacts.items)
    body = api.post("/search/text", json={"text": item.text, "k": 3, "target": "text"}).json()
    assert body["results"][0]["id"] == item.id
    assert body["results"][0]["text"] == item.text
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(h["modality"] == "text" and h["image_url"] is None for h in body["results"])


def test_target_both_merges_modalities_by_calibrated_relevance(api):
    query = {"text": "animal", "k": 100}
    both = api.post("/search/text", json={**query, "target": "both"}).json()["results"]
    # reference: the two single-modality searches merged by relevance (ties by score)
    separate = [
        h for target in ("image", "text") for h in api.post("/search/text", json={**query, "target": target}).json()["results"]
    ]
    merged = sorted(separate, key=lambda h: (-h["relevance"], -h["score"]))[:100]
    assert len(both) == 100
    assert [h["relevance"] for h in both] == pytest.approx([h["relevance"] for h in merged], abs=1e-6)
    assert {(h["id"], h["modality"]) for h in both} == {(h["id"], h["modality"]) for h in merged}


def test_label_filter_keeps_only_that_label(api, app_artefacts, served):
    label = app_artefacts.items[0].labels[0]
    expected = served[1].label_counts("image")[label]
    assert 0 < expected < 100
    body = api.post("/search/text", json={"text": "something", "k": 100, "labels": [label]}).json()
    assert len(body["results"]) == expected
    assert all(label in h["labels"] for h in body["results"])


def test_image_upload_and_base64_give_the_same_texts(api, app_artefacts):
    item = app_artefacts.items[3]
    data = Path(item.image_path).read_bytes()
    upload = api.post("/search/image", files={"file": ("query.png", data, "image/png")}, data={"k": "5"})
    assert upload.status_code == 200, upload.text
    inline = api.post("/search/image", json={"image_base64": base64.b64encode(data).decode(), "k": 5})
    data_url = api.post(
        "/search/image", json={"image_base64": "data:image/png;base64," + base64.b64encode(data).decode(), "k": 5}
    )
    assert inline.status_code == data_url.status_code == 200
    ranked = [(h["id"], h["score"]) for h in upload.json()["results"]]
    assert (
        ranked
        == [(h["id"], h["score"]) for h in inline.json()["results"]]
        == [(h["id"], h["score"]) for h in data_url.json()["results"]]
    )
    body = upload.json()
    assert len(body["results"]) == 5 and body["target"] == "text"
    assert all(h["modality"] == "text" and h["text"] for h in body["results"])
    assert set(body["stages_ms"]) == {"queue", "decode", "encode", "search"}


def test_image_search_finds_the_same_picture_first(api, app_artefacts):
    item = app_artefacts.items[5]
    data = Path(item.image_path).read_bytes()
    body = api.post("/search/image", files={"file": ("q.png", data)}, data={"k": "3", "target": "image"}).json()
    assert body["results"][0]["id"] == item.id
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_image_search_accepts_jpeg_and_a_label_filter(api, app_artefacts):
    item = app_artefacts.items[7]
    buffer = io.BytesIO()
    Image.open(item.image_path).convert("RGB").save(buffer, format="JPEG")
    label = item.labels[0]
    body = api.post(
        "/search/image",
        files={"file": ("q.jpg", buffer.getvalue(), "image/jpeg")},
        data={"k": "4", "labels": [label], "target": "both"},
    ).json()
    assert len(body["results"]) == 4 and all(label in h["labels"] for h in body["results"])


def test_item_endpoint_matches_the_corpus(api, app_artefacts):
    item = app_artefacts.items[2]
    body = api.get(f"/items/{item.id}").json()
    assert body["id"] == item.id and body["text"] == item.text and body["labels"] == list(item.labels)
    assert body["modalities"] == ["image", "text"] and body["image_url"] == f"/media/{item.id}"
    assert body["extra"] == json.loads(json.dumps(item.extra))


def test_media_serves_the_corpus_file_and_thumbnails(api, app_artefacts):
    item = app_artefacts.items[1]
    original = api.get(f"/media/{item.id}")
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content == Path(item.image_path).read_bytes()
    thumb = api.get(f"/media/{item.id}", params={"size": 32})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) == 32 and image.format == "JPEG"
        # the thumbnail shows the same picture: compare with a reference downscale of the original
        reference = Image.open(item.image_path).convert("RGBA")
        flat = Image.new("RGBA", reference.size, (255, 255, 255, 255))
        reference = Image.alpha_composite(flat, reference).convert("RGB").resize(image.size, Image.Resampling.BICUBIC)
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(reference, dtype=np.int16)).mean()
        assert diff < 20


def test_labels_list_counts_from_the_metadata(api, served):
    _, metadata = served
    body = api.get("/labels").json()
    images, texts = metadata.label_counts("image"), metadata.label_counts("text")
    assert {lab["name"]: (lab["images"], lab["texts"]) for lab in body["labels"]} == {
        name: (images.get(name, 0), texts.get(name, 0)) for name in set(images) | set(texts)
    }


def test_health_and_readiness(api, served):
    manifest, _ = served
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["ready"] is True and ready["index_version"] == manifest["version"]
    assert ready["model_hash"] == manifest["model"]["content_hash"]
    assert ready["counts"] == {m: info["count"] for m, info in manifest["modalities"].items()}


def test_metrics_count_requests_and_time_every_stage(api, app_artefacts):
    api.post("/search/text", json={"text": "metrics probe"})
    api.post("/search/image", files={"file": ("q.png", Path(app_artefacts.items[0].image_path).read_bytes())})
    api.post("/search/text", json={"text": ""})
    text = api.get("/metrics").text
    assert 'dscmr_http_requests_total{endpoint="/search/text",method="POST",status="200"}' in text
    assert 'dscmr_http_requests_total{endpoint="/search/text",method="POST",status="422"}' in text
    assert 'dscmr_http_request_duration_seconds_count{endpoint="/search/image",method="POST"}' in text
    for endpoint, stages in {
        "/search/text": ("queue", "encode", "search"),
        "/search/image": ("queue", "decode", "encode", "search"),
    }.items():
        for stage in stages:
            assert f'dscmr_stage_duration_seconds_count{{endpoint="{endpoint}",stage="{stage}"}}' in text
    assert "dscmr_ready 1.0" in text and "dscmr_index_info{" in text


def test_admin_reload_needs_the_key(api, served):
    manifest, _ = served
    assert api.post("/admin/reload").status_code == 401
    assert api.post("/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 401
    response = api.post("/admin/reload", headers={"X-API-Key": "test-admin-key"}, json={"force": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "loaded" and body["index_version"] == manifest["version"] and body["model_reloaded"] is False
    assert api.post("/admin/reload", headers={"X-API-Key": "test-admin-key"}).json()["status"] == "unchanged"


def test_openapi_documents_endpoints_with_examples(api):
    schema = api.get("/openapi.json").json()
    for path in (
        "/search/text",
        "/search/image",
        "/items/{item_id}",
        "/media/{item_id}",
        "/labels",
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/reload",
    ):
        assert path in schema["paths"], path
    image_body = schema["paths"]["/search/image"]["post"]["requestBody"]["content"]
    assert set(image_body) == {"multipart/form-data", "application/json"}
    assert schema["components"]["schemas"]["TextSearchRequest"]["examples"]
    assert schema["components"]["schemas"]["SearchResponse"]["examples"]
    assert "422" in schema["paths"]["/search/text"]["post"]["responses"]
    assert api.get("/docs").status_code == 200


def test_web_page_and_its_assets_are_served(api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('id="query"', 'id="file"', 'id="results"', 'name="viewport"', "/static/app.js"):
        assert needle in page.text
    assert "searchImage" in api.get("/static/app.js").text
    assert api.get("/static/app.css").status_code == 200


def test_cli_refuses_invalid_settings_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "DSCMR_PORT": "not-a-port"},
    )
    assert result.returncode == 2
    assert "DSCMR_PORT" in result.stderr


def test_text_search_names_the_words_the_model_does_not_know(api, app_artefacts):
    corpus = load_corpus(app_artefacts.corpus_dir)
    train_text = corpus.items[corpus.position(corpus.splits["train"][0])].text
    # The vocabulary holds every word of the training texts (min count 1).
    assert api.post("/search/text", json={"text": train_text, "k": 3}).json()["unknown_words"] == []
    body = api.post("/search/text", json={"text": f"{train_text} qzxv Qzxv blorptangle ?!", "k": 3}).json()
    assert body["unknown_words"] == ["qzxv", "blorptangle"] and len(body["results"]) == 3
    # The demo's vocabulary also holds GloVe's most frequent words, which no item text needs to use.
    assert not any("puppy" in it.text.lower() for it in corpus.items)
    assert api.post("/search/text", json={"text": "puppy", "k": 3}).json()["unknown_words"] == []


def test_a_text_query_without_known_words_gets_a_flag_instead_of_a_ranking(api, app_artefacts):
    body = api.post("/search/text", json={"text": "qzxv blorptangle", "k": 5, "target": "both"}).json()
    assert body["query_problem"] == "no_known_words" and body["results"] == []
    assert body["unknown_words"] == ["qzxv", "blorptangle"]
    corpus = load_corpus(app_artefacts.corpus_dir)
    known = api.post("/search/text", json={"text": corpus.items[0].text, "k": 5}).json()
    assert known["query_problem"] is None and len(known["results"]) == 5


def test_security_headers_on_the_page_the_api_and_errors(api, app_artefacts):
    item = app_artefacts.items[0]
    responses = [
        api.get("/"),
        api.get("/docs"),
        api.get("/static/app.js"),
        api.get("/docs/assets/swagger-ui.css"),
        api.get("/healthz"),
        api.get("/openapi.json"),
        api.get(f"/media/{item.id}"),
        api.get(f"/media/{item.id}", params={"size": 64}),
        api.post("/search/text", json={"text": "a cat"}),
        api.post("/search/text", json={"text": ""}),
        api.get("/no-such-page"),
        api.post("/search/image", files={"file": ("q.png", Path(item.image_path).read_bytes())}),
    ]
    for response in responses:
        where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
        headers = response.headers
        policy = {d.split()[0]: d.split()[1:] for d in headers.get("content-security-policy", "").split("; ") if d}
        assert policy.get("frame-ancestors") == ["'none'"] and policy.get("default-src") == ["'self'"], where
        assert policy.get("script-src") == ["'self'"] and policy.get("object-src") == ["'none'"], where
        assert headers.get("x-content-type-options") == "nosniff", where
        assert headers.get("referrer-policy") == "no-referrer", where
        assert headers.get("x-frame-options") == "DENY", where
        assert len(headers.get_list("x-content-type-options")) == 1, where  # /media sets it itself: not twice


def test_both_ranks_images_and_texts_on_one_calibrated_scale(api):
    """Raw cosines favour the query's own modality; target 'both' ranks by the calibrated relevance instead (how much it
    mixes depends on the model: the full demo's mix is measured by bench/demo_queries.py), while each modality keeps the
    order of its own search."""
    by_relevance = 0
    for query in ("a happy face", "an animal", "food and drink", "a red heart", "a car"):
        both = api.post("/search/text", json={"text": query, "k": 10, "target": "both"}).json()["results"]
        relevance = [hit["relevance"] for hit in both]
        assert all(r is not None and 0.0 <= r <= 1.0 for r in relevance)
        assert relevance == sorted(relevance, reverse=True)
        pooled = []
        for modality in ("image", "text"):
            alone = api.post("/search/text", json={"text": query, "k": 10, "target": modality}).json()["results"]
            ids = [hit["id"] for hit in both if hit["modality"] == modality]
            assert ids == [hit["id"] for hit in alone][: len(ids)]
            pooled += [(hit["score"], hit["modality"]) for hit in alone]
        raw_order = [m for _, m in sorted(pooled, key=lambda p: -p[0])[:10]]
        by_relevance += raw_order != [hit["modality"] for hit in both]
    assert by_relevance >= 1, "the mixed answers are exactly the raw-score merge: no calibration was applied"


def test_image_hits_carry_a_caption(api, app_artefacts):
    by_id = {it.id: it for it in app_artefacts.items}
    hits = api.post("/search/text", json={"text": "a happy face", "k": 5, "target": "image"}).json()["results"]
    for hit in hits:
        item = by_id[hit["id"]]
        assert hit["caption"] == (item.extra.get("name") or item.text)


def test_search_answers_have_exactly_the_documented_shape(api, app_artefacts):
    """Search answers are built as plain JSON (app.main.search_response): every one is a SearchResponse, field for
    field, with nothing more and nothing less, for text and image queries and every target."""
    from app.schemas import SearchResponse

    item = next(it for it in app_artefacts.items if it.image_path)
    image = Path(item.image_path).read_bytes()
    answers = [
        api.post("/search/text", json={"text": item.text, "k": 7, "target": target}) for target in ("image", "text", "both")
    ]
    answers += [
        api.post("/search/image", files={"file": ("q.png", image)}, data={"k": "7", "target": target})
        for target in ("image", "text", "both")
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert SearchResponse.model_validate(body).model_dump(mode="json") == body
        assert response.headers["content-type"] == "application/json"
    modalities = {hit["modality"] for response in answers for hit in response.json()["results"]}
    assert modalities == {"image", "text"}
