"""The imagenet-sample-wordnet loader: on a folder generated in its layout (every clone) and on the real data in
../shared/data (where it is present)."""

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures_data import COARSE_CLASSES, IMAGENET_SAMPLE, needs_real_imagenet, write_imagenet_sample
from training.datasets import load_dataset, load_imagenet_sample


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """12 coarse classes x 10 photos (every 7th grayscale), small, in the real folder layout."""
    return write_imagenet_sample(tmp_path_factory.mktemp("imagenet-sample"), per_class=10, image_size=(24, 18), grayscale_every=7)


def test_generated_single_label_corpus_and_split(generated):
    corpus, report = load_imagenet_sample(generated, seed=0)
    assert report.summary() == "120 loaded, 0 skipped"
    assert len(corpus) == 120 and corpus.label_names == COARSE_CLASSES and not corpus.multilabel
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 96, "val": 12, "test": 12}
    assert sorted(i for ids in corpus.splits.values() for i in ids) == sorted(it.id for it in corpus.items)
    tench = corpus.items[corpus.position("n01440764")]
    assert tench.labels == ("fish",) and tench.extra["synset_words"] == ["tench", "Tinca tinca"]
    assert (
        tench.text
        == "tench, Tinca tinca: freshwater dace-like game fish of Europe and western Asia noted for surviving out of water"
    )
    assert Path(tench.image_path).is_file() and Path(tench.image_path).is_absolute()
    # stratified: 10 per class -> one of each class in val and in test
    for split in ("val", "test"):
        assert Counter(it.labels[0] for it in corpus.split_items(split)) == {c: 1 for c in COARSE_CLASSES}
    again, _ = load_imagenet_sample(generated, seed=0)
    other, _ = load_imagenet_sample(generated, seed=1)
    assert again.splits == corpus.splits and other.splits != corpus.splits


def test_generated_multilabel_option_keeps_the_same_split(generated):
    single, _ = load_imagenet_sample(generated, verify_images=False)
    multi, _ = load_dataset("imagenet-sample", generated, multilabel=True, verify_images=False)
    assert multi.multilabel and multi.splits == single.splits
    assert Counter(len(it.labels) for it in multi.items) == {1: 100, 2: 20}  # dogs and felines are mammals too
    assert all(m.labels[0] == s.labels[0] for m, s in zip(multi.items, single.items))
    assert int(multi.label_matrix().sum(axis=0)[multi.label_names.index("mammal_other")]) == 30
    assert multi.items[multi.position("n02099601")].labels == ("dog", "mammal_other")


def test_generated_folder_with_broken_entries_is_reported(generated, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(generated, root)
    meta = json.loads((root / "metadata.json").read_text())
    items = meta["items"]
    (root / items[0]["file"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / items[1]["file"]).unlink()
    items[2]["coarse_label"] = "no_such_class"
    items[3]["synset_words"], items[3]["gloss"] = [], " "
    items.append(dict(items[5]))  # the same wnid twice
    (root / "metadata.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus, report = load_imagenet_sample(root)
    assert report.skip_counts() == {"corrupt image": 1, "missing image": 1, "bad label": 1, "empty text": 1, "duplicate id": 1}
    assert len(corpus) == 116 and report.summary().startswith("116 loaded, 5 skipped")
    with pytest.raises(FileNotFoundError, match="not the imagenet-sample-wordnet folder"):
        load_imagenet_sample(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- the real data
@needs_real_imagenet
def test_real_single_label_corpus_and_split():
    corpus, report = load_imagenet_sample(IMAGENET_SAMPLE, seed=0)
    assert report.summary() == "1,000 loaded, 0 skipped"
    assert len(corpus) == 1000 and len(corpus.label_names) == 22 and not corpus.multilabel
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 800, "val": 100, "test": 100}
    assert sorted(i for ids in corpus.splits.values() for i in ids) == sorted(it.id for it in corpus.items)
    tench = corpus.items[corpus.position("n01440764")]
    assert tench.labels == ("fish",)
    assert (
        tench.text
        == "tench, Tinca tinca: freshwater dace-like game fish of Europe and western Asia noted for ability to survive outside water"
    )
    assert Path(tench.image_path).is_file()
    counts = Counter(it.labels[0] for it in corpus.items)
    assert counts["dog"] == 118 and counts["feline"] == 13
    # stratified: every class (all have >= 13 items) is in val and test, roughly 10% of it
    for split in ("val", "test"):
        per_class = Counter(it.labels[0] for it in corpus.split_items(split))
        assert set(per_class) == set(corpus.label_names)
        assert all(abs(per_class[c] - counts[c] / 10) <= 1 for c in counts)


@needs_real_imagenet
def test_real_multilabel_option_keeps_the_same_split():
    single, _ = load_imagenet_sample(IMAGENET_SAMPLE, verify_images=False)
    multi, _ = load_dataset("imagenet-sample", IMAGENET_SAMPLE, multilabel=True, verify_images=False)
    assert multi.multilabel and multi.splits == single.splits
    n_labels = Counter(len(it.labels) for it in multi.items)
    assert n_labels == {1: 668, 2: 281, 3: 50, 4: 1}
    assert all(m.labels[0] == s.labels[0] for m, s in zip(multi.items, single.items))
    assert int(multi.label_matrix().sum(axis=0)[multi.label_names.index("mammal_other")]) == 218
