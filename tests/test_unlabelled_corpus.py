"""Corpora without labels (issue 16): the manifest loader, its summary counts, splits, and bad input refused early."""

import json
import subprocess
import sys
import warnings
from collections import Counter

import pytest

from model.corpus import load_corpus
from tests.fixtures_data import REPO, write_caption_manifest, write_imagenet_sample
from training.datasets import CorpusInputError, LoadWarning, load_manifest


def load_quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        return load_manifest(path, **kwargs)


@pytest.mark.parametrize("labels, fmt", [("none", "jsonl"), ("empty", "jsonl"), ("none", "csv"), ("empty", "csv")])
def test_a_manifest_without_labels_loads_with_seeded_random_splits(tmp_path, labels, fmt):
    path = write_caption_manifest(tmp_path, per_class=5, labels=labels, fmt=fmt)
    corpus, report = load_quietly(path)
    assert len(corpus) == 60 and corpus.label_names == [] and not corpus.multilabel
    assert all(it.labels == () for it in corpus.items)
    assert report.summary() == "60 loaded (60 without labels), 0 skipped"
    assert report.as_dict()["counts"] == {"without labels": 60}
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 48, "val": 6, "test": 6}
    assert sorted(sum(corpus.splits.values(), [])) == sorted(it.id for it in corpus.items)
    again, _ = load_quietly(path)
    other, _ = load_quietly(path, seed=1)
    assert again.splits == corpus.splits and other.splits != corpus.splits
    # random, not in file order: the validation items come from several classes' rows
    assert len({it.image_path.rsplit("/", 1)[1].split("_")[0] for it in corpus.split_items("val")}) > 1


def test_a_mixed_corpus_is_accepted_counted_and_stratified_where_labels_exist(tmp_path):
    path = write_caption_manifest(tmp_path, per_class=10, labels="mixed", classes=3)
    corpus, report = load_quietly(path)
    assert report.summary() == "30 loaded (15 with labels, 15 without labels), 0 skipped"
    assert corpus.label_names == ["bird", "dog", "fish"]
    # stratified: each labelled class and the group of unlabelled items get at least one item of every split
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 22, "val": 4, "test": 4}
    for split in ("val", "test"):
        assert Counter(it.labels[0] if it.labels else "" for it in corpus.split_items(split)) == {
            "bird": 1,
            "dog": 1,
            "fish": 1,
            "": 1,
        }


def test_official_splits_without_labels_carve_validation_from_train(tmp_path):
    path = write_caption_manifest(tmp_path, per_class=5, labels="none", classes=4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 5 == 0 else "train"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus, report = load_quietly(path, val_fraction=0.2, seed=3)
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 13, "val": 3, "test": 4}
    assert set(corpus.splits["test"]) == {corpus.items[i].id for i in range(0, 20, 5)}
    assert report.summary() == "20 loaded (20 without labels), 0 skipped"


def test_one_image_with_several_captions_gives_several_pairs_counted_in_the_summary(tmp_path):
    path = write_caption_manifest(tmp_path, per_class=4, labels="none", classes=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows += [
        {"image": rows[0]["image"], "text": "the same fish seen by a second annotator"},
        {"image": rows[0]["image"], "text": "and by a third"},
        {"image": rows[1]["image"], "text": "another caption of the second photo"},
        {"image": rows[1]["image"], "text": rows[1]["text"]},
    ]  # a repeated row: same image, same text
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus, report = load_quietly(path)
    assert len(corpus) == 11
    first = rows[0]["image"]
    assert [it.id for it in corpus.items if it.id.startswith(first)] == [first, f"{first}#2", f"{first}#3"]
    assert len({corpus.items[corpus.position(i)].image_path for i in (first, f"{first}#2", f"{first}#3")}) == 1
    assert report.skip_counts() == {"duplicate pair": 1}
    assert report.summary() == (
        "11 loaded (11 without labels, 5 pairs sharing an image, 2 images with several captions), 1 skipped: 1 duplicate pair"
    )


def _rewrite_texts(path, texts):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, text in zip(rows, texts):
        row["text"] = text
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cli_prepare(manifest, out):
    return subprocess.run(
        [sys.executable, "-m", "training.datasets", "prepare", "manifest", str(manifest), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("all empty", "every text is empty (8 item(s) with an empty text)"),
        ("all identical", "all 8 texts are identical ('a photo'); nothing tells the items apart"),
        ("too few", "only 2 usable item(s); at least 3 are needed"),
    ],
)
def test_bad_input_fails_early_with_a_clear_message_and_writes_nothing(tmp_path, case, message):
    path = write_caption_manifest(tmp_path / "data", per_class=4, labels="none", classes=2)
    if case == "all empty":
        _rewrite_texts(path, ["   "] * 8)
    elif case == "all identical":
        _rewrite_texts(path, ["a photo", " a  photo ", "A photo"] + ["a photo"] * 5)
    else:
        _rewrite_texts(path, ["one", "two"] + [""] * 6)
    with pytest.raises(CorpusInputError) as caught:
        load_quietly(path)
    assert message in str(caught.value)
    out = tmp_path / "corpus"
    done = _cli_prepare(path, out)
    assert done.returncode == 2 and message in done.stderr and not out.exists()


def test_the_cli_writes_a_label_free_corpus_and_says_so(tmp_path):
    path = write_caption_manifest(tmp_path / "data", per_class=3, labels="none", classes=4)
    done = _cli_prepare(path, tmp_path / "corpus")
    assert done.returncode == 0, done.stderr
    assert "12 loaded (12 without labels), 0 skipped" in done.stdout and "(no labels; train" in done.stdout
    corpus = load_corpus(tmp_path / "corpus")
    assert corpus.label_names == [] and len(corpus) == 12
    saved = json.loads((tmp_path / "corpus" / "load_report.json").read_text())
    assert saved["counts"] == {"without labels": 12}


def test_labelled_loaders_are_unchanged(tmp_path):
    # the imagenet-sample layout has labels on every item: no counts in its summary
    from training.datasets import load_imagenet_sample

    corpus, report = load_imagenet_sample(write_imagenet_sample(tmp_path, per_class=2))
    assert report.counts == {} and "(" not in report.summary() and corpus.label_names


def _corpus_with_texts(directory, texts, labels=None):
    from model.corpus import Corpus, Item, save_corpus
    from tests.fixtures_data import synthetic_photo

    (directory / "images").mkdir(parents=True)
    items = []
    for i, text in enumerate(texts):
        path = directory / "images" / f"{i}.png"
        synthetic_photo(i % 12, i, (48, 40)).save(path)
        items.append(Item(f"item{i}", str(path), text, tuple(labels[i]) if labels else ()))
    names = sorted({lab for labs in (labels or []) for lab in labs})
    save_corpus(Corpus(items=items, label_names=names, name="t"), directory)
    return directory


@pytest.mark.parametrize(
    "texts, message",
    [
        (["   "] * 6, "every text is empty (6 item(s) with an empty text)"),
        (["same caption"] * 6, "all 6 texts are identical"),
        (["one", "two"], "only 2 usable item(s)"),
    ],
)
def test_prepare_refuses_an_untrainable_corpus_before_writing(tmp_path, texts, message):
    from training.prepare import PrepareConfig, prepare_corpus

    corpus_dir = _corpus_with_texts(tmp_path / "corpus", texts)
    with pytest.raises(CorpusInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prepare_corpus(corpus_dir, tmp_path / "prepared", PrepareConfig(progress=False))
    assert not (tmp_path / "prepared").exists()


def test_training_prepare_from_a_bad_manifest_exits_2_and_writes_nothing(tmp_path):
    path = write_caption_manifest(tmp_path / "data", per_class=2, labels="none", classes=3)
    _rewrite_texts(path, ["the same"] * 6)
    done = subprocess.run(
        [sys.executable, "-m", "training", "prepare", "--dataset", "manifest", str(path), "--out", str(tmp_path / "prepared")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "all 6 texts are identical" in done.stderr and not (tmp_path / "prepared").exists()


def test_prepare_keeps_every_item_with_an_image_and_a_text(tmp_path):
    from model.corpus import Corpus, Item
    from training.prepare import usable_items

    items = [
        Item("a", "/x/a.png", "a red thing", ("red",)),
        Item("b", "/x/b.png", "a blue thing", ()),
        Item("c", None, "no image", ()),
        Item("d", "/x/d.png", "  ", ("red",)),
    ]
    usable, dropped = usable_items(Corpus(items=items, label_names=["red"]))
    assert [it.id for it in usable] == ["a", "b"]
    assert dropped == [{"id": "c", "reason": "no image or no text"}, {"id": "d", "reason": "no image or no text"}]
