"""The indexing job reuses the backbone features `training prepare` cached, and gives the same index as running the backbone.

Real pipeline on 24 drawn PNG shapes: prepare (EfficientNet-Lite0 features into the cache) -> a briefly trained DSCMR
model -> index builds with and without the cache. The build without it is the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from index.build import BuildConfig, build_index
from index.search import SearchIndex
from index.store import load_manifest
from model.corpus import load_corpus
from model.encoder import load_encoder
from tests.test_finetune import make_small_corpus
from tests.test_prepare import TEXT, draw
from training.config import preset, with_dims
from training.pipeline import train_and_save
from training.prepare import PrepareConfig, load_prepared, prepare_corpus, prepared_feature_cache

CONFIG = BuildConfig(batch_size=8, show_progress=False, decode_workers=1)


def with_large_jpegs(corpus_dir: Path, every: int) -> Path:
    """Every `every`-th item's picture re-saved as a 1,280 x 960 JPEG, which prepare decodes in draft mode (at half scale)."""
    from PIL import Image

    from model.corpus import Corpus, Item, save_corpus

    corpus = load_corpus(corpus_dir)
    items = []
    for n, it in enumerate(corpus.items):
        if n % every == 0:
            path = Path(it.image_path).with_suffix(".jpg")
            Image.open(it.image_path).convert("RGB").resize((1280, 960), Image.Resampling.BICUBIC).save(path, quality=92)
            it = Item(it.id, str(path), it.text, it.labels)
        items.append(it)
    save_corpus(Corpus(items=items, label_names=corpus.label_names, splits=corpus.splits, name=corpus.name), corpus_dir)
    return corpus_dir


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(corpus dir, prepared dir, model dir) of a small real corpus, prepared and trained here."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("cache")
    corpus_dir = with_large_jpegs(make_small_corpus(base / "corpus"), every=3)
    prepared_dir = base / "prepared"
    prepare_corpus(corpus_dir, prepared_dir, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    prepared = load_prepared(prepared_dir)
    data = prepared.feature_splits()
    cfg = with_dims(
        preset("wiki-tuned", epochs=3, batch_size=8, progress=False),
        data.train.image.shape[1],
        prepared.text_config.output_dim,
        len(data.label_names),
    )
    train_and_save(data, cfg, base / "model", prepared=prepared)
    return corpus_dir, prepared_dir, base / "model"


def all_scores(version: Path, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image's score for every query in an index version (the whole image index, ranked)."""
    index = SearchIndex.load(version)
    return index.search_keys(queries, 1000, target="image")


def test_cached_features_give_the_reference_index(pipeline, tmp_path):
    corpus_dir, prepared_dir, model_dir = pipeline
    cache = prepared_feature_cache(prepared_dir)
    assert cache is not None
    reference = build_index(model_dir, corpus_dir, tmp_path / "reference", CONFIG)
    reused = build_index(model_dir, corpus_dir, tmp_path / "reused", dataclasses.replace(CONFIG, feature_cache=cache))

    n_images = len(load_corpus(corpus_dir).items)
    assert load_manifest(reference)["embedding"]["image_features_reused"] == 0
    assert load_manifest(reused)["embedding"]["image_features_reused"] == n_images
    queries = load_encoder(model_dir).encode_texts([it.text for it in load_corpus(corpus_dir).items])
    ref_scores, ref_keys = all_scores(reference, queries)
    got_scores, got_keys = all_scores(reused, queries)
    assert (ref_keys >= 0).sum() == n_images * len(queries)
    # The index build decodes JPEGs in draft mode as prepare did, so the vectors agree to float precision.
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5)
    assert (got_keys[:, 0] == ref_keys[:, 0]).all()


def test_a_large_jpeg_query_finds_its_own_indexed_picture_at_score_one(pipeline, tmp_path):
    from model.image_io import load_image

    corpus_dir, prepared_dir, model_dir = pipeline
    cached = dataclasses.replace(CONFIG, feature_cache=prepared_feature_cache(prepared_dir))
    version = build_index(model_dir, corpus_dir, tmp_path / "index", cached)
    encoder = load_encoder(model_dir)
    jpegs = [it for it in load_corpus(corpus_dir).items if it.image_path.endswith(".jpg")]
    assert len(jpegs) == 8 and encoder.image_decode_size == 256
    # Decoded the way the service decodes an upload (app.main.decode_image): drafted to the backbone's resize size.
    queries = encoder.encode_images([load_image(it.image_path, draft_size=encoder.image_decode_size) for it in jpegs])
    best = [hits[0] for hits in SearchIndex.load(version).search_vectors(queries, 1, "image")]
    assert [hit.id for hit in best] == [it.id for it in jpegs]
    assert [hit.score for hit in best] == pytest.approx([1.0] * len(jpegs), abs=1e-4)


def test_an_image_the_cache_lacks_goes_through_the_backbone(pipeline, tmp_path):
    corpus_dir, prepared_dir, model_dir = pipeline
    work = tmp_path / "corpus"
    shutil.copytree(corpus_dir, work)
    corpus = load_corpus(work)
    changed = corpus.items[5]  # mid-batch: cached features before and after it in the same batch
    # One item's picture is replaced by a new drawing, whose bytes the cache has never seen.
    from model.corpus import Corpus, Item, save_corpus

    new_path = work / "images" / "changed.png"
    draw(new_path, (250, 120, 0), "triangle", seed=999)
    items = [Item(it.id, str(new_path) if it.id == changed.id else it.image_path, it.text, it.labels) for it in corpus.items]
    save_corpus(Corpus(items=items, label_names=corpus.label_names, splits=corpus.splits, name=corpus.name), work)

    cache = prepared_feature_cache(prepared_dir)
    reused = build_index(model_dir, work, tmp_path / "reused", dataclasses.replace(CONFIG, feature_cache=cache))
    reference = build_index(model_dir, work, tmp_path / "reference", CONFIG)
    assert load_manifest(reused)["embedding"]["image_features_reused"] == len(items) - 1
    encoder = load_encoder(model_dir)
    queries = encoder.encode_texts([it.text for it in items])
    got, want = all_scores(reused, queries), all_scores(reference, queries)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    assert (got[1] == want[1]).all()  # each vector belongs to its own item, not just the same set of vectors


def test_a_cache_of_another_backbone_is_not_used_and_a_missing_one_is_an_error(pipeline, tmp_path, caplog):
    corpus_dir, prepared_dir, model_dir = pipeline
    other = tmp_path / "other-cache"
    # This corpus's very features, but filed under another backbone's fingerprint: they must not be taken.
    own = Path(prepared_feature_cache(prepared_dir)) / load_encoder(model_dir).image_feature_fingerprint
    shutil.copytree(own, other / "0123456789abcdef")
    with caplog.at_level(logging.WARNING, logger="index.build"):
        version = build_index(model_dir, corpus_dir, tmp_path / "index", dataclasses.replace(CONFIG, feature_cache=str(other)))
    assert load_manifest(version)["embedding"]["image_features_reused"] == 0
    assert "holds no features of this model's backbone" in caplog.text

    from index.__main__ import main

    missing = tmp_path / "nowhere"
    assert (
        main(
            [
                "build",
                "--model",
                str(model_dir),
                "--corpus",
                str(corpus_dir),
                "--root",
                str(tmp_path / "cli"),
                "--feature-cache",
                str(missing),
                "--no-progress",
            ]
        )
        == 2
    )


def test_index_add_takes_cached_features_too(pipeline, tmp_path):
    from index.update import add_items, delete_items

    corpus_dir, prepared_dir, model_dir = pipeline
    encoder = load_encoder(model_dir)
    items = load_corpus(corpus_dir).items
    reference = build_index(model_dir, corpus_dir, tmp_path / "index", CONFIG)
    queries = encoder.encode_texts([it.text for it in items])
    want = all_scores(reference, queries)
    readded = [it for it in items if it.image_path.endswith(".jpg")][:3]
    delete_items(tmp_path / "index", [it.id for it in readded])
    version = add_items(
        tmp_path / "index",
        readded,
        encoder,
        config=dataclasses.replace(CONFIG, feature_cache=prepared_feature_cache(prepared_dir)),
    )
    got = all_scores(version, queries)
    np.testing.assert_allclose(np.sort(got[0], axis=1), np.sort(want[0], axis=1), atol=1e-5)


def test_cached_features_read_back_exactly_within_a_memory_budget_and_survive_a_damaged_chunk(pipeline, tmp_path, caplog):
    from model.feature_cache import CachedFeatures, image_file_key

    corpus_dir, prepared_dir, model_dir = pipeline
    cache_root = tmp_path / "cache"
    shutil.copytree(prepared_feature_cache(prepared_dir), cache_root)
    fingerprint = load_encoder(model_dir).image_feature_fingerprint
    items = load_corpus(corpus_dir).items
    keys = [image_file_key(it.image_path) for it in items]
    # what prepare assembled for training, row by row in the order of its ids
    features = dict(zip(load_prepared(prepared_dir).manifest["ids"], np.load(prepared_dir / "image_features.npy")))

    roomy, tight = CachedFeatures(cache_root, fingerprint), CachedFeatures(cache_root, fingerprint, memory_budget_bytes=1)
    assert len(roomy) == len(items)
    a, b = roomy.read(keys), tight.read(keys)
    assert set(a) == set(b) == set(keys)
    for key in keys:
        np.testing.assert_array_equal(a[key], b[key])
    for it, key in zip(items, keys):
        np.testing.assert_array_equal(a[key], features[it.id])

    fresh = CachedFeatures(cache_root, fingerprint)
    damaged = sorted((cache_root / fingerprint).glob("chunk-*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated after the index was read
    with caplog.at_level(logging.WARNING, logger="model.feature_cache"):
        found = fresh.read(keys)
    assert 0 < len(found) < len(keys) and "cannot read feature-cache file" in caplog.text
    assert all(np.array_equal(found[k], a[k]) for k in found)
