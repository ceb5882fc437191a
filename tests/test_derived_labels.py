"""Labels derived from the texts of a corpus without labels (issue 16, item 2b, clusters): k-means over the prepared text
features, seeded, k chosen on validation or given, stored with the prepared data and named by their top terms."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.fixtures_data import REPO, write_caption_manifest
from training.datasets import CorpusInputError
from training.derived_labels import derive_cluster_labels, label_names_from_terms, mean_word_vectors, top_terms

TEXT_OPTIONS = ["--word-vectors", "word2vec", "--embed-dim", "16", "--min-count", "1", "--max-len", "32", "--no-progress"]


def blobs(seed: int = 0):
    """Three well-separated groups of 'text features' whose texts share a distinctive word per group."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3] * 5
    words = ["apple orchard", "sailing boat", "storm cloud"]
    features, texts = [], []
    for i in range(60):
        g = i % 3
        features.append(centres[g] + rng.normal(0, 0.3, 8))
        texts.append(f"a picture of the {words[g]} number {i} seen today")
    return np.asarray(features), texts


def test_k_is_chosen_on_validation_and_the_clusters_are_named_by_their_top_terms():
    features, texts = blobs()
    train, val = np.arange(0, 45), np.arange(45, 60)
    derived = derive_cluster_labels(features, texts, train, val, seed=0, grid=(2, 3, 4, 6))
    assert derived.k == 3 and derived.chosen == "val silhouette" and set(derived.grid) == {"2", "3", "4", "6"}
    assert max(derived.grid.values()) == derived.grid["3"]
    assert sorted(derived.names) == ["apple / orchard", "boat / sailing", "cloud / storm"]
    # every item gets the cluster of its group; the same seed gives the same labels, the one-hot matrix matches
    groups = np.arange(60) % 3
    assert all(len(set(derived.assignment[groups == g].tolist())) == 1 for g in range(3))
    again = derive_cluster_labels(features, texts, train, val, seed=0, grid=(2, 3, 4, 6))
    assert np.array_equal(again.assignment, derived.assignment) and again.names == derived.names
    assert derived.one_hot().shape == (60, 3) and (derived.one_hot().sum(1) == 1).all()
    stored = derived.to_dict()
    assert {"method", "k", "seed", "features", "names", "top_terms", "chosen", "grid", "sizes"} <= set(stored)
    assert "assignment" not in stored and sum(stored["sizes"]) == 45
    json.dumps(stored)


def test_a_given_k_is_used_and_too_few_items_are_refused():
    features, texts = blobs()
    derived = derive_cluster_labels(features, texts, np.arange(45), np.arange(45, 60), k=5, seed=1)
    assert derived.k == 5 and derived.chosen == "given" and derived.grid == {} and len(derived.names) == 5
    with pytest.raises(CorpusInputError, match="50 clusters need at least 50 training items; the train split has 45"):
        derive_cluster_labels(features, texts, np.arange(45), np.arange(45, 60), k=50)
    with pytest.raises(CorpusInputError, match="fewer than the smallest k of the grid"):
        derive_cluster_labels(features[:6], texts[:6], np.arange(3), np.arange(3, 6))


def test_top_terms_and_names():
    texts = ["红色的苹果在桌子上", "红色的苹果很甜", "蓝色的大海", "蓝色的大海和天空"]
    terms = top_terms(texts, np.array([0, 0, 1, 1]), 2, count=2)
    assert all(terms) and all(not t.isascii() for words in terms for t in words)  # CJK text segmented without spaces
    assert label_names_from_terms([["red", "apple"], [], ["red", "apple"]]) == ["red / apple", "cluster 2", "red / apple #2"]
    ids = np.array([[2, 3, 0], [1, 0, 0]])
    vectors = mean_word_vectors(ids, np.arange(8, dtype=float).reshape(4, 2), (0, 1))
    np.testing.assert_allclose(vectors, [[5.0, 6.0], [0.0, 0.0]])


def test_prepare_derives_and_stores_cluster_labels_and_train_uses_j1_j2(tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", per_class=4, labels="none")
    prepared = tmp_path / "prepared"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "prepare",
            "--dataset",
            "manifest",
            str(manifest),
            "--out",
            str(prepared),
            "--derive-labels",
            "clusters",
            "--clusters",
            "6",
            *TEXT_OPTIONS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((prepared / "prepared.json").read_text())
    derived = meta["derived_labels"]
    assert (derived["method"], derived["k"], derived["seed"], derived["chosen"]) == ("clusters", 6, 0, "given")
    assert (
        derived["features"] == "mean word vectors" and meta["label_names"] == derived["names"] and len(set(derived["names"])) == 6
    )
    assert meta["config"]["derive_labels"] == "clusters" and meta["config"]["clusters"] == 6
    labels = np.load(prepared / "labels.npy")
    assert labels.shape == (48, 6) and (labels.sum(1) == 1).all()
    train_rows = [meta["ids"].index(i) for i in meta["splits"]["train"]]
    assert (labels[train_rows].sum(0) > 0).all()  # every derived label has training items
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "train",
            "--prepared",
            str(prepared),
            "--out",
            str(tmp_path / "model"),
            "--epochs",
            "3",
            "--device",
            "cpu",
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "loss: data with labels: loss terms J1 + J2 + J3" in trained.stderr
    assert json.loads((tmp_path / "model" / "labels.json").read_text()) == derived["names"]
    # the derived corpus carries the labels to the index: label names and filters by them
    from index.build import BuildConfig, build_index
    from index.search import SearchIndex
    from model.corpus import load_corpus
    from model.encoder import load_encoder

    assert derived["corpus"] == "corpus-derived"
    relabelled = load_corpus(prepared / "corpus-derived")
    assert relabelled.label_names == derived["names"] and relabelled.splits == meta["splits"]
    by_row = {i: derived["names"][int(np.argmax(labels[r]))] for r, i in enumerate(meta["ids"])}
    assert all(it.labels == (by_row[it.id],) for it in relabelled.items)
    version = build_index(
        tmp_path / "model",
        prepared / "corpus-derived",
        tmp_path / "index",
        BuildConfig(show_progress=False, feature_cache=str(prepared / "feature_cache")),
    )
    index = SearchIndex.load(version)
    index.attach_encoder(load_encoder(tmp_path / "model", device="cpu"))
    assert index.label_names == sorted(derived["names"])
    name = derived["names"][0]
    hits = index.search_text(relabelled.items[0].text, k=48, target="image", labels=[name])
    assert hits and all(h.labels == (name,) or list(h.labels) == [name] for h in hits)
    assert len(hits) == sum(1 for it in relabelled.items if it.labels == (name,))


def test_more_clusters_than_train_items_fails_before_anything_is_written(tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", per_class=1, labels="none", classes=4)  # 4 items: 2 to train
    for extra in (["--clusters", "20"], []):
        out = tmp_path / f"prepared{len(extra)}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "prepare",
                "--dataset",
                "manifest",
                str(manifest),
                "--out",
                str(out),
                "--derive-labels",
                "clusters",
                *extra,
                *TEXT_OPTIONS,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 2 and not out.exists(), done.stderr[-2000:]
        assert ("fewer than 20 clusters" if extra else "fewer than the smallest k of the grid (4)") in done.stderr
