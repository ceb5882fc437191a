"""The imagenet-sample-wordnet loader on the real data in ../shared/data."""
from collections import Counter
from pathlib import Path

import pytest

from training.datasets import load_dataset, load_imagenet_sample

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample-wordnet"
pytestmark = pytest.mark.skipif(not (DATA / "metadata.json").is_file(), reason=f"real data absent: {DATA} (shared data folder not mounted)")


def test_single_label_corpus_and_split():
    corpus, report = load_imagenet_sample(DATA, seed=0)
    assert report.summary() == "1,000 loaded, 0 skipped"
    assert len(corpus) == 1000 and len(corpus.label_names) == 22 and not corpus.multilabel
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 800, "val": 100, "test": 100}
    assert sorted(i for ids in corpus.splits.values() for i in ids) == sorted(it.id for it in corpus.items)
    tench = corpus.items[corpus.position("n01440764")]
    assert tench.labels == ("fish",)
    assert tench.text == "tench, Tinca tinca: freshwater dace-like game fish of Europe and western Asia noted for ability to survive outside water"
    assert Path(tench.image_path).is_file()
    counts = Counter(it.labels[0] for it in corpus.items)
    assert counts["dog"] == 118 and counts["feline"] == 13
    # stratified: every class (all have >= 13 items) is in val and test, roughly 10% of it
    for split in ("val", "test"):
        per_class = Counter(it.labels[0] for it in corpus.split_items(split))
        assert set(per_class) == set(corpus.label_names)
        assert all(abs(per_class[c] - counts[c] / 10) <= 1 for c in counts)


def test_multilabel_option_keeps_the_same_split():
    single, _ = load_imagenet_sample(DATA, verify_images=False)
    multi, _ = load_dataset("imagenet-sample", DATA, multilabel=True, verify_images=False)
    assert multi.multilabel and multi.splits == single.splits
    n_labels = Counter(len(it.labels) for it in multi.items)
    assert n_labels == {1: 668, 2: 281, 3: 50, 4: 1}
    assert all(m.labels[0] == s.labels[0] for m, s in zip(multi.items, single.items))
    assert int(multi.label_matrix().sum(axis=0)[multi.label_names.index("mammal_other")]) == 218
