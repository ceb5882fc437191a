"""Caption match (index/captions.py, SearchIndex.search_fused): the mixed ranking equals a slow reference, updates keep
the caption vectors in step with the texts, and the real MiniLM ranks an item by its own text."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from index import faiss_index as fi
from index.build import IndexConfig, publish_version
from index.captions import CAPTION_KEYS_FILE, attach_captions
from index.errors import IndexStoreError
from index.search import SearchIndex
from index.shards import ArraySource
from index.store import list_versions, load_manifest
from index.update import add_embedded, delete_items
from model.corpus import Item
from tests.test_index_fixtures import single_thread_faiss  # noqa: F401

DIM = 16
WORDS = ["red", "green", "blue", "apple", "car", "dog", "cat", "house", "tree", "boat", "small", "big"]


class WordHashCaptions:
    """A deterministic stand-in for MiniLM: a unit bag-of-words vector per text (a word's own direction)."""

    dim = 24

    def spec(self) -> dict:
        return {"kind": "minilm", "dim": self.dim}

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


def _corpus(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[Item], list[Item]]:
    """(image vectors, text vectors, image items, text items): every 5th item has no text, every 7th no image."""
    rng = np.random.default_rng(seed)
    items = [
        Item(
            f"item{i}",
            f"/img/{i}.png",
            None if i % 5 == 4 else " ".join(rng.choice(WORDS, size=3)),
            (f"label{i % 3}",),
            {},
        )
        for i in range(n)
    ]
    with_image = [it for i, it in enumerate(items) if i % 7 != 6]
    with_text = [it for it in items if it.text]
    image_vectors = rng.standard_normal((len(with_image), DIM)).astype(np.float32)
    text_vectors = rng.standard_normal((len(with_text), DIM)).astype(np.float32)
    return image_vectors, text_vectors, with_image, with_text


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_fused(queries, caption_queries, candidates, text_items, captions, weight, labels=None):
    """The mixed ranking by brute force over every candidate (item, vector), written out plainly: [(id, score), ...] per query."""
    caption_of = {it.id: v for it, v in zip(text_items, captions.encode([it.text for it in text_items]))}
    if labels is not None:
        candidates = [(it, v) for it, v in candidates if set(it.labels) & set(labels)]
    out = []
    for q, qc in zip(_unit(queries), _unit(caption_queries)):
        cross = [float(_unit(v) @ q) for _, v in candidates]
        caption = [float(caption_of[it.id] @ qc) if it.id in caption_of else None for it, _ in candidates]
        floor = min(c for c in caption if c is not None)
        scored = [
            (it.id, (1 - weight) * x + weight * (floor if c is None else c)) for (it, _), x, c in zip(candidates, cross, caption)
        ]
        out.append(sorted(scored, key=lambda pair: -pair[1]))
    return out


@pytest.fixture()
def captioned(tmp_path):
    """An index root whose CURRENT version has caption vectors of WordHashCaptions (weight 0.6)."""
    image_vectors, text_vectors, image_items, text_items = _corpus(120)
    source = ArraySource({"image": (image_vectors, image_items), "text": (text_vectors, text_items)}, DIM)
    publish_version(tmp_path, source, "m" * 64, IndexConfig(index_type="flat"))
    attach_captions(tmp_path, 0.6, encoder=WordHashCaptions())
    return tmp_path, image_vectors, text_vectors, image_items, text_items


@pytest.mark.parametrize("target", ["image", "text"])
@pytest.mark.parametrize("weight", [0.3, 0.6, 1.0])
def test_fused_ranking_equals_the_slow_reference(captioned, target, weight):
    root, image_vectors, text_vectors, image_items, text_items = captioned
    index = SearchIndex.load(root)
    assert index.has_captions and index.caption_weight == 0.6
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((6, DIM)).astype(np.float32)
    texts = [" ".join(rng.choice(WORDS, size=2)) for _ in range(6)]
    caption_queries = WordHashCaptions().encode(texts)
    # a pool as large as the corpus makes the candidate step exhaustive, so the ranking must equal the reference
    scores, keys = index.search_fused(queries, caption_queries, k=15, target=target, weight=weight, pool=200)
    candidates = list(zip(image_items, image_vectors)) if target == "image" else list(zip(text_items, text_vectors))
    expected = reference_fused(queries, caption_queries, candidates, text_items, WordHashCaptions(), weight)
    for row, ref in enumerate(expected):
        ids = [h.id for h in index._hits(scores[row : row + 1], keys[row : row + 1])[0]]
        np.testing.assert_allclose(scores[row], [s for _, s in ref[:15]], atol=1e-5)
        # same scores; ids agree wherever the reference's scores are not tied
        tied = {i for i, (_, s) in enumerate(ref[:16]) if any(abs(s - t) < 1e-6 for j, (_, t) in enumerate(ref[:16]) if j != i)}
        assert [x for i, x in enumerate(ids) if i not in tied] == [r[0] for i, r in enumerate(ref[:15]) if i not in tied]


def test_a_small_pool_and_a_label_filter_still_match_the_reference_at_the_top(captioned):
    root, image_vectors, text_vectors, image_items, text_items = captioned
    index = SearchIndex.load(root)
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    caption_queries = WordHashCaptions().encode(["red apple", "big dog", "blue boat", "small house", "green tree"])
    scores, keys = index.search_fused(queries, caption_queries, k=3, target="image", weight=0.6, labels=["label1"], pool=40)
    candidates = list(zip(image_items, image_vectors))
    expected = reference_fused(queries, caption_queries, candidates, text_items, WordHashCaptions(), 0.6, labels=["label1"])
    for row, ref in enumerate(expected):
        hits = index._hits(scores[row : row + 1], keys[row : row + 1])[0]
        assert all(h.labels == ("label1",) for h in hits)
        assert hits[0].score == pytest.approx(ref[0][1], abs=1e-5)


def test_weight_zero_is_the_cross_modal_search_and_bad_arguments_are_refused(captioned):
    root, *_ = captioned
    index = SearchIndex.load(root)
    queries = np.random.default_rng(3).standard_normal((3, DIM)).astype(np.float32)
    caption_queries = WordHashCaptions().encode(["red", "dog", "boat"])
    fused = index.search_fused(queries, caption_queries, k=10, target="image", weight=0.0)
    plain = index.search_keys(queries, k=10, target="image")
    np.testing.assert_array_equal(fused[1], plain[1])
    with pytest.raises(ValueError, match="between 0 and 1"):
        index.search_fused(queries, caption_queries, weight=1.5)
    with pytest.raises(ValueError, match="target must be 'image' or 'text'"):
        index.search_fused(queries, caption_queries, target="both")
    with pytest.raises(ValueError, match="caption vectors"):
        index.search_fused(queries, caption_queries[:, :5])


def test_a_version_without_captions_says_how_to_add_them(tmp_path):
    image_vectors, text_vectors, image_items, text_items = _corpus(20)
    publish_version(tmp_path, ArraySource({"image": (image_vectors, image_items)}, DIM), "m" * 64)
    index = SearchIndex.load(tmp_path)
    assert not index.has_captions and index.caption_weight == 0.0
    with pytest.raises(IndexStoreError, match="python -m index captions"):
        index.search_fused(image_vectors[:1], np.ones((1, 24), np.float32))
    with pytest.raises(IndexStoreError, match="no text entries"):
        attach_captions(tmp_path, 0.5, encoder=WordHashCaptions())


def test_adds_and_deletes_keep_the_captions_in_step_with_the_texts(tmp_path):
    """With the real MiniLM: updates embed new texts, drop deleted ones, and a new item is found by its own text."""
    from model.caption import MiniLMCaptionEncoder

    rng = np.random.default_rng(4)
    names = ["a red apple", "a blue car", "a sleeping dog", "a tall tree", "a sailing boat", "a cup of coffee"]
    items = [Item(f"i{i}", f"/img/{i}.png", text, ("x",), {}) for i, text in enumerate(names)]
    vectors = rng.standard_normal((len(items), DIM)).astype(np.float32)
    publish_version(tmp_path, ArraySource({"image": (vectors, items), "text": (vectors, items)}, DIM), "m" * 64)
    encoder = MiniLMCaptionEncoder()
    attach_captions(tmp_path, 0.8, encoder=encoder)

    new = [Item("new", "/img/new.png", "a bowl of ramen noodles", ("x",), {})]
    new_vector = rng.standard_normal((1, DIM)).astype(np.float32)
    add_embedded(tmp_path, {"image": (new_vector, new), "text": (new_vector, new)}, "m" * 64)
    delete_items(tmp_path, ["i1"])
    index = SearchIndex.load(tmp_path)
    manifest = load_manifest(index.path)
    assert manifest["captions"]["count"] == index.count("text") == 6
    assert sorted(np.load(index.path / CAPTION_KEYS_FILE).tolist()) == sorted(index.metadata.all_keys("text").tolist())
    assert manifest["operation"]["captions"] == {"added": 0, "removed": 1}
    assert len(list_versions(tmp_path)) == 4  # build, captions, add, delete

    # a query vector that points away from every image still finds the item its own text names
    query = -vectors.mean(0, keepdims=True)
    caption_queries = encoder.encode(["noodle soup", "coffee", "a car"])
    hits = index.search_vectors_fused(np.repeat(query, 3, axis=0), caption_queries, k=3, target="image", weight=0.8)
    assert [row[0].id for row in hits[:2]] == ["new", "i5"]
    assert "i1" not in {h.id for row in hits for h in row}  # deleted: not found through its caption either
    stored = fi.reconstruct_keys(index._captions.index, index.metadata.all_keys("text"))
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_a_build_can_publish_its_caption_vectors_in_the_same_version(tmp_path):
    image_vectors, text_vectors, image_items, text_items = _corpus(40)
    source = ArraySource({"image": (image_vectors, image_items), "text": (text_vectors, text_items)}, DIM)
    version = publish_version(tmp_path, source, "m" * 64, caption_weight=0.4, caption_encoder=WordHashCaptions())
    assert list_versions(tmp_path) == [version.name]
    index = SearchIndex.load(tmp_path)  # checks every file's sha256, the caption files included
    assert index.caption_weight == 0.4 and index.manifest["captions"]["count"] == len(text_items)
    assert {"captions.faiss", CAPTION_KEYS_FILE} <= set(load_manifest(version)["files"])


def test_the_cli_adds_captions_and_refuses_a_weight_outside_0_to_1(tmp_path):
    import json
    import subprocess
    import sys

    names = ["a red apple", "a blue car", "a sleeping dog"]
    items = [Item(f"i{i}", None, text, (), {}) for i, text in enumerate(names)]
    vectors = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
    publish_version(tmp_path, ArraySource({"text": (vectors, items)}, DIM), "m" * 64)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "index", "captions", "--root", str(tmp_path), "--no-progress", *args],
        capture_output=True,
        text=True,
    )
    bad = run("--weight", "1.5")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr
    good = run("--weight", "0.5")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout.strip().splitlines()[-1])["caption_weight"] == 0.5
    assert SearchIndex.load(tmp_path).manifest["captions"]["encoder"] == {"kind": "minilm", "dim": 384}


def test_the_demo_serves_the_caption_weight_chosen_on_queries_apart_from_the_benchmarks():
    import json
    from pathlib import Path

    from bench.demo_queries import QUERIES_FILE, VALIDATION_QUERIES_FILE, WEIGHT_GRID, choose_weight
    from training.demo import DEMO_CAPTION_WEIGHT

    record = json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / "demo-caption-weight.json").read_text())
    assert [row["weight"] for row in record["grid"]] == list(WEIGHT_GRID)
    assert choose_weight({row["weight"]: row["MRR"] for row in record["grid"]}) == record["chosen"] == DEMO_CAPTION_WEIGHT

    def emoji_and_texts(path):
        queries = json.loads(path.read_text(encoding="utf-8"))["queries"]
        return {h.replace("\ufe0f", "") for q in queries for h in q["hits"]}, {q["query"].lower() for q in queries}

    validation, benchmark = emoji_and_texts(VALIDATION_QUERIES_FILE), emoji_and_texts(QUERIES_FILE)
    assert len(validation[1]) >= 60 and not validation[0] & benchmark[0] and not validation[1] & benchmark[1]
    assert choose_weight({0.1: 0.80, 0.5: 0.905, 0.9: 0.91}) == 0.5  # the smallest within 0.01 of the best
