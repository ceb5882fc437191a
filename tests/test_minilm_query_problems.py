"""A MiniLM model asked in a script its word pieces do not cover: the English MiniLM emoji demo, served by a real
uvicorn, answers a Chinese or emoji-only query with query_problem 'no_known_words' and no results (every word piece
is [UNK], so its vector says nothing about it) instead of a ranked list of arbitrary items, and still searches English."""

from __future__ import annotations

from typing import Iterator

import pytest

from model.caption import encode_text_queries_with_captions
from tests.app_fixtures import ServerHandle, serving
from training.datasets.emoji_demo import EmojiSources

# "篮球比赛" reaches MiniLM as [UNK] [UNK] 比 [UNK]: one piece it knows, so it is searched (the flag is for queries the
# model cannot read at all; a partly read one is the prepare-time warning's business, issue 19 item 9)
QUERIES = ["苹果", "篮球比赛", "a red apple", "😀😀", "apple 苹果"]
PROBLEMS = ["no_known_words", None, None, "no_known_words", None]


@pytest.fixture(scope="module")
def minilm_demo(tmp_path_factory):
    """The English emoji demo (MiniLM text, caption match on), small and trained for one epoch."""
    from training.demo import DemoConfig, artefact_paths, build_demo

    EmojiSources().check()
    root = tmp_path_factory.mktemp("demo-minilm")
    report = build_demo(root, DemoConfig(limit=27, epochs=1, text="minilm", progress=False))
    assert report["text"] == "minilm"
    return artefact_paths(root)


@pytest.fixture(scope="module")
def minilm_server(minilm_demo, tmp_path_factory) -> Iterator[ServerHandle]:
    with serving(minilm_demo["index"], tmp_path_factory.mktemp("server-minilm") / "server.log", reload_poll_s="0") as server:
        yield server


def test_the_encoder_flags_queries_of_unknown_word_pieces_only(minilm_demo):
    from model.caption import caption_encoder_from_spec
    from model.encoder import load_encoder

    model_dir = next(p for p in minilm_demo["models"].iterdir() if (p / "manifest.json").is_file())
    encoder = load_encoder(model_dir, device="cpu")
    assert encoder.sentence_encoder.knows_any_piece(QUERIES) == [p is None for p in PROBLEMS]
    vectors, problems = encoder.encode_text_queries(QUERIES)
    assert problems == PROBLEMS and vectors.shape[0] == len(QUERIES)
    # the caption match's shared path (one MiniLM pass for both vectors) says the same
    captions = caption_encoder_from_spec({"kind": "minilm"}, device="cpu", shared=encoder)
    _, shared_problems, _ = encode_text_queries_with_captions(encoder, captions, QUERIES)
    assert shared_problems == PROBLEMS


def test_the_service_answers_a_chinese_query_with_the_problem_not_arbitrary_items(minilm_server):
    with minilm_server.client() as api:
        for text, problem in zip(QUERIES, PROBLEMS):
            for target in ("image", "both"):
                body = api.post("/search/text", json={"text": text, "k": 5, "target": target}).json()
                assert body["query_problem"] == problem, (text, target, body)
                assert (body["results"] == []) == (problem is not None), (text, target)
        body = api.post("/search/text", json={"text": "a red apple", "k": 5}).json()
        assert body["results"] and body["query_problem"] is None
