"""Keyword labels for a corpus without labels (issue 16, item 2b, keywords): the content words of the captions within
document-frequency bounds, as multi-labels named by the word, stored with the prepared data, trained by J1/J2 over the
tagged items (an item without a keyword has an empty label row) and carried to the index as label chips and filters."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.config import LossConfig
from model.losses import dscmr_loss
from tests.fixtures_data import REPO, write_caption_manifest
from training.datasets import CorpusInputError
from training.derived_labels import KeywordConfig, derive_keyword_labels, select_keywords, text_keywords

TEXT_OPTIONS = ["--word-vectors", "word2vec", "--embed-dim", "16", "--min-count", "1", "--max-len", "32", "--no-progress"]
CAPTIONS = [
    "a red apple on a wooden table",
    "a red apple and a green pear",
    "a sailing boat on the blue sea",
    "the blue sea under a storm cloud",
    "a dog running on the grass",
    "the sailing boat near the harbour",
    "a photo",
    "a storm cloud over the harbour",
]


def test_keywords_are_the_frequent_content_words_within_the_bounds_and_tag_items_as_multi_labels():
    cfg = KeywordConfig(count=10, min_df=2, max_df=0.5)
    derived = derive_keyword_labels(CAPTIONS, np.arange(8), cfg, seed=3)
    # stop words and one-text words are out; every kept word is in 2 to 4 of the 8 texts
    assert derived.names == ["apple", "blue", "boat", "cloud", "harbour", "red", "sailing", "sea", "storm"]
    assert derived.names == [t[0] for t in derived.top_terms] and derived.sizes == [2] * 9
    assert (derived.method, derived.k, derived.seed, derived.multilabel) == ("keywords", 9, 3, True)
    labels = derived.item_labels()
    assert labels[0] == ("apple", "red") and labels[3] == ("blue", "cloud", "sea", "storm")
    assert labels[4] == () and labels[6] == ()  # no keyword: an empty label row
    matrix = derived.one_hot()
    assert matrix.shape == (8, 9) and matrix[4].sum() == 0 and matrix[3].sum() == 4
    assert derived.without_label == {"train": 2, "all": 2}
    stored = derived.to_dict()
    assert stored["params"] == {"count": 10, "min_df": 2, "max_df": 0.5, "max_words": 1} and "matrix" not in stored
    json.dumps(stored)
    # the vocabulary size keeps the most frequent first (ties alphabetical); max_df drops words most texts hold
    assert select_keywords(CAPTIONS, KeywordConfig(count=3, min_df=2, max_df=0.5))[0] == ["apple", "blue", "boat"]
    assert "blue" not in select_keywords(CAPTIONS[2:4] * 2, KeywordConfig(min_df=1, max_df=0.5))[0]
    # only the train texts choose the keywords; the others are tagged with them
    derived = derive_keyword_labels(CAPTIONS, np.arange(4), KeywordConfig(min_df=2, max_df=0.5))
    assert derived.names == ["apple", "blue", "red", "sea"] and derived.item_labels()[5] == ()


def test_phrases_and_scripts_without_spaces():
    assert "sailing boat" in text_keywords("a sailing boat on the sea", max_words=2)
    assert "sailing boat" not in text_keywords("a sailing boat on the sea", max_words=1)
    # Chinese is segmented into words (jieba), function words left out; phrases join without a space
    words = text_keywords("红色的苹果在桌子上", max_words=1)
    assert {"红色", "苹果", "桌子"} <= words and not words & {"的", "在", "上"}
    assert "苹果很甜" in text_keywords("红色的苹果很甜", max_words=2)
    texts = ["红色的苹果在桌子上", "红色的苹果很甜", "蓝色的大海", "蓝色的大海和天空", "一只小狗在草地上跑"]
    derived = derive_keyword_labels(texts, np.arange(5), KeywordConfig(min_df=2, max_df=0.5))
    assert derived.names == ["大海", "红色", "苹果", "蓝色"] and derived.item_labels()[4] == ()


def test_bad_keyword_settings_are_refused():
    with pytest.raises(CorpusInputError, match="no keyword of the 8 train texts is in at least 5 texts"):
        derive_keyword_labels(CAPTIONS, np.arange(8), KeywordConfig(min_df=5))
    for cfg, message in (
        (KeywordConfig(count=0), "--keywords must be at least 1"),
        (KeywordConfig(max_df=1.5), "--keyword-max-df is a share"),
        (KeywordConfig(min_df=0), "--keyword-min-df must be at least 1"),
        (KeywordConfig(max_words=3), "--keyword-words must be 1 or 2"),
    ):
        with pytest.raises(CorpusInputError, match=message):
            derive_keyword_labels(CAPTIONS, np.arange(8), cfg)


def test_j1_and_j2_ignore_the_rows_without_a_keyword():
    torch.manual_seed(0)
    u, v = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    pred = torch.randn(6, 3)
    labels = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.float32)
    cfg = LossConfig()
    full = dscmr_loss(u, v, pred, pred, labels, cfg, partial_labels=True)
    assert torch.isfinite(full.total) and full.j1 > 0 and full.j2 > 0
    # moving an untagged row changes J3 but neither J1 nor J2
    moved = u.detach().clone()
    moved[3] += 5.0
    again = dscmr_loss(moved, v, pred, pred, labels, cfg, partial_labels=True)
    assert torch.allclose(again.j1, full.j1) and torch.allclose(again.j2, full.j2) and not torch.allclose(again.j3, full.j3)
    full.total.backward()
    assert torch.isfinite(u.grad).all()
    # every row untagged: J1 and J2 are 0, not NaN
    none = dscmr_loss(u, v, pred, pred, torch.zeros(6, 3), cfg, partial_labels=True)
    assert none.j1.item() == 0.0 and none.j2.item() == 0.0 and torch.isfinite(none.total)


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_prepare_derives_keyword_labels_train_uses_them_and_the_index_filters_by_them(tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", per_class=4, labels="none")
    prepared = tmp_path / "prepared"
    options = ["--keywords", "12", "--keyword-min-df", "2", "--keyword-max-df", "0.3"]
    done = _run(
        "training", "prepare", "--dataset", "manifest", str(manifest), "--out", str(prepared),
        "--derive-labels", "keywords", *options, *TEXT_OPTIONS,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((prepared / "prepared.json").read_text())
    derived = meta["derived_labels"]
    assert (derived["method"], derived["k"], derived["seed"]) == ("keywords", 12, 0)
    assert derived["params"] == {"count": 12, "min_df": 2, "max_df": 0.3, "max_words": 1}
    assert meta["config"]["derive_labels"] == "keywords" and meta["config"]["keywords"] == derived["params"]
    assert meta["label_names"] == derived["names"] and meta["multilabel"] is True
    labels = np.load(prepared / "labels.npy")
    assert labels.shape == (48, 12) and labels.sum(1).max() >= 2  # several keywords on one item
    empty = int((labels.sum(1) == 0).sum())
    assert empty == derived["without_label"]["all"] and empty > 0  # some items have no keyword: an empty row
    train_rows = [meta["ids"].index(i) for i in meta["splits"]["train"]]
    assert (labels[train_rows].sum(0) == derived["sizes"]).all() and min(derived["sizes"]) >= 2
    model = tmp_path / "model"
    trained = _run(
        "training", "train", "--prepared", str(prepared), "--out", str(model), "--epochs", "3", "--device", "cpu", "--no-progress"
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "data with labels on some items: loss terms J1 + J2 over the labelled items" in trained.stderr
    assert json.loads((model / "labels.json").read_text()) == derived["names"]

    from index.build import BuildConfig, build_index
    from index.search import SearchIndex
    from model.corpus import load_corpus
    from model.encoder import load_encoder

    relabelled = load_corpus(prepared / "corpus-derived")
    assert relabelled.multilabel and relabelled.label_names == derived["names"]
    by_row = {i: tuple(derived["names"][j] for j in np.flatnonzero(labels[r])) for r, i in enumerate(meta["ids"])}
    assert all(it.labels == by_row[it.id] for it in relabelled.items)
    version = build_index(
        model, prepared / "corpus-derived", tmp_path / "index",
        BuildConfig(show_progress=False, feature_cache=str(prepared / "feature_cache")),
    )  # fmt: skip
    index = SearchIndex.load(version)
    index.attach_encoder(load_encoder(model, device="cpu"))
    assert index.label_names == sorted(derived["names"])
    name = derived["names"][0]
    hits = index.search_text(relabelled.items[0].text, k=48, target="image", labels=[name])
    assert hits and all(name in h.labels for h in hits)
    assert len(hits) == sum(1 for it in relabelled.items if name in it.labels)


def test_keyword_options_without_keyword_labels_and_empty_bounds_fail_before_anything_is_written(tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", per_class=2, labels="none", classes=4)
    for extra, message in (
        (["--derive-labels", "keywords", "--keyword-min-df", "50"], "no keyword of the"),
        (["--keywords", "5"], "need --derive-labels keywords"),
    ):
        out = tmp_path / f"prepared{len(extra)}"
        done = _run("training", "prepare", "--dataset", "manifest", str(manifest), "--out", str(out), *extra, *TEXT_OPTIONS)
        assert done.returncode != 0 and not out.exists(), done.stderr[-2000:]
        assert message in done.stderr
