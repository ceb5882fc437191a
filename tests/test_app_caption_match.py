"""The caption match over a real server: an index version with caption vectors (python -m index captions) mixes each
text search's scores with the match between the query and each result's own text, by the request's weight, the
service's DSCMR_CAPTION_WEIGHT or the version's own; weight 0 gives the model's own answer exactly."""

from __future__ import annotations

import pytest

from index.captions import attach_captions
from tests.app_fixtures import copy_index_root, start_server, stop_server, wait_ready


@pytest.fixture(scope="module")
def captioned_server(app_artefacts, tmp_path_factory):
    """A server over a copy of the session's index root with MiniLM caption vectors at weight 0.7."""
    root = copy_index_root(app_artefacts.index_root, tmp_path_factory.mktemp("captioned") / "index")
    attach_captions(root, 0.7)
    server = start_server(root, root.parent / "server.log", reload_poll_s="0")
    try:
        wait_ready(server)
        yield server
    finally:
        stop_server(server)


def _search(client, **body):
    response = client.post("/search/text", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_items_own_text_finds_it_first_with_the_caption_match(captioned_server, app_artefacts):
    items = [it for it in app_artefacts.items if it.text and it.image_path][:12]
    with captioned_server.client() as client:
        assert client.get("/readyz").json()["caption_weight"] == 0.7
        for item in items:
            answer = _search(client, text=item.text, k=5, target="image")
            assert answer["caption_weight"] == 0.7
            assert answer["results"][0]["id"] == item.id, (item.text, [r["caption"] for r in answer["results"]])
            # the calibration describes cross-modal scores only, so mixed scores carry no relevance
            assert all(r["relevance"] is None for r in answer["results"])
            scores = [r["score"] for r in answer["results"]]
            assert scores == sorted(scores, reverse=True)


def test_weight_zero_answers_what_a_server_without_captions_answers(captioned_server, api, app_artefacts):
    with captioned_server.client() as client:
        for item in app_artefacts.items[:5]:
            for target in ("image", "text", "both"):
                plain = _search(api, text=item.text, k=8, target=target)
                zero = _search(client, text=item.text, k=8, target=target, caption_weight=0)
                assert zero["caption_weight"] is None
                assert [(r["id"], r["modality"]) for r in zero["results"]] == [(r["id"], r["modality"]) for r in plain["results"]]
                assert [r["score"] for r in zero["results"]] == pytest.approx([r["score"] for r in plain["results"]], abs=1e-5)
        # target "both" is never mixed: its modalities are merged by calibrated relevance
        assert _search(client, text=item.text, k=8, target="both")["caption_weight"] is None


@pytest.mark.parametrize("weight", [1.5, -0.1, "0.5", True, None])
def test_a_bad_caption_weight_is_a_422_that_names_the_field(captioned_server, weight):
    with captioned_server.client() as client:
        body = {"text": "a red circle", "caption_weight": weight}
        response = client.post("/search/text", json=body)
        if weight is None:  # null: the default weight
            assert response.status_code == 200 and response.json()["caption_weight"] == 0.7
            return
        assert response.status_code == 422
        assert "caption_weight" in response.text


def test_the_service_setting_overrides_the_versions_weight(captioned_server, tmp_path):
    from pathlib import Path

    root = Path(captioned_server.env["DSCMR_INDEX_ROOT"])
    server = start_server(root, tmp_path / "server.log", reload_poll_s="0", caption_weight="0")
    try:
        wait_ready(server)
        with server.client() as client:
            assert client.get("/readyz").json()["caption_weight"] == 0.0
            assert _search(client, text="a red circle")["caption_weight"] is None
            assert _search(client, text="a red circle", caption_weight=0.5)["caption_weight"] == 0.5
    finally:
        stop_server(server)


class _UnknownCaptionEncoder:
    """Caption vectors from an encoder this code cannot load again (a newer release's kind, a missing package)."""

    dim = 8

    def spec(self) -> dict:
        return {"kind": "no-such-encoder", "dim": self.dim}

    def encode(self, texts):
        import numpy as np

        return np.eye(self.dim, dtype=np.float32)[[len(t) % self.dim for t in texts]]


def test_caption_vectors_whose_encoder_cannot_load_leave_the_cross_modal_search(app_artefacts, tmp_path):
    from app.settings import ServiceSettings
    from app.state import load_serving_state

    root = copy_index_root(app_artefacts.index_root, tmp_path / "index")
    attach_captions(root, 0.5, encoder=_UnknownCaptionEncoder())
    state = load_serving_state(ServiceSettings(index_root=root, artifacts=app_artefacts.root, device="cpu"))
    assert state.index.has_captions and state.captions is None
    hits = state.index.search_texts([app_artefacts.items[0].text], k=3)[0]
    assert len(hits) == 3
