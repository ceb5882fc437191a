"""Loaders on small fixture trees in each real layout, with the real-world mess: missing/corrupt files, whitespace, empty texts."""

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from model.corpus import load_corpus, save_corpus
from training.datasets import (
    LoadWarning,
    dataset_kinds,
    load_dataset,
    load_manifest,
    load_pascal_sentence,
    load_wikipedia,
)


def write_image(path: Path, colour=(200, 30, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 this is not really a JPEG")
    return path


def loaded_quietly(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus, report = fn(*args, **kwargs)
    return corpus, report, [w for w in caught if issubclass(w.category, LoadWarning)]


# ----------------------------------------------------------------------------------------------- manifest


def _manifest_tree(tmp_path: Path) -> Path:
    rows = []
    for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 250, 0)), ("fox", (0, 0, 250))):
        for i in range(10):
            write_image(tmp_path / "images" / f"{cls}{i}.jpg", colour)
            rows.append(
                {"id": f"{cls}{i}", "image": f"images/{cls}{i}.jpg", "text": f"a photo of a {cls} number {i}", "labels": [cls]}
            )
    rows[0]["labels"] = ["cat", "dog"]  # one multi-label item
    write_image(tmp_path / "images" / "pngs" / "p.png")
    rows.append({"id": "png", "image": "  images/pngs/p.png ", "text": "a png with stray spaces in its path", "labels": ["fox"]})
    rows.append({"id": "gone", "image": "images/missing.jpg", "text": "file is missing", "labels": ["cat"]})
    write_corrupt(tmp_path / "images" / "broken.jpg")
    rows.append({"id": "broken", "image": "images/broken.jpg", "text": "corrupt image", "labels": ["dog"]})
    write_image(tmp_path / "images" / "quiet.jpg")
    rows.append({"id": "quiet", "image": "images/quiet.jpg", "text": "   ", "labels": ["dog"]})
    lines = [json.dumps(r) for r in rows] + ["", "{not json"]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "manifest.jsonl"


def test_manifest_jsonl_loads_skips_and_reports(tmp_path):
    manifest = _manifest_tree(tmp_path)
    corpus, report, caught = loaded_quietly(load_manifest, manifest)
    assert len(corpus) == 31 and report.loaded == 31
    assert report.skip_counts() == {"missing image": 1, "corrupt image": 1, "empty text": 1, "bad row": 1}
    assert report.note_counts() == {"stray whitespace in name": 1}
    assert (
        report.summary()
        == "31 loaded, 4 skipped: 1 missing image, 1 corrupt image, 1 empty text, 1 bad row; notes: 1 stray whitespace in name"
    )
    assert len(caught) == 1 and "4 skipped" in str(caught[0].message)
    assert corpus.label_names == ["cat", "dog", "fox"] and corpus.multilabel
    png = corpus.items[corpus.position("png")]
    assert Path(png.image_path) == (tmp_path / "images" / "pngs" / "p.png").resolve() and png.labels == ("fox",)
    assert corpus.items[corpus.position("cat0")].labels == ("cat", "dog")
    assert corpus.items[corpus.position("dog3")].text == "a photo of a dog number 3"
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 25, "val": 3, "test": 3}
    for split in ("val", "test"):
        assert sorted(Counter(it.labels[0] for it in corpus.split_items(split)).values()) == [1, 1, 1]
    # the folder form finds manifest.jsonl, and the corpus round-trips through the shared on-disk format
    again, _, _ = loaded_quietly(load_manifest, tmp_path)
    assert again.splits == corpus.splits
    save_corpus(corpus, tmp_path / "prepared")
    assert load_corpus(tmp_path / "prepared").splits == corpus.splits


def test_manifest_csv_with_official_train_test_split(tmp_path):
    with (tmp_path / "data.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([" Image ", "TEXT", "labels", "split"])
        for i in range(40):
            write_image(tmp_path / f"img{i}.png")
            labels = "red|round" if i % 2 else "blue; square"
            writer.writerow([f"img{i}.png", f"item {i}", labels, "test" if i >= 30 else "train"])
    corpus, report, caught = loaded_quietly(load_manifest, tmp_path / "data.csv", val_fraction=0.1, seed=5)
    assert report.summary() == "40 loaded, 0 skipped" and not caught
    assert corpus.label_names == ["blue", "red", "round", "square"]
    assert corpus.items[1].labels == ("red", "round") and corpus.items[0].labels == ("blue", "square")
    assert corpus.items[0].id == "img0.png"  # no id column: the image path is the id
    assert len(corpus.splits["test"]) == 10
    assert len(corpus.splits["val"]) == 3 and len(corpus.splits["train"]) == 27
    assert set(corpus.splits["val"]) <= {f"img{i}.png" for i in range(30)}


def test_manifest_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("image,caption\na.jpg,hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]; found \['caption', 'image'\]"):
        load_manifest(tmp_path / "m.csv")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_manifest(tmp_path / "empty-folder")


# ----------------------------------------------------------------------------------------------- wikipedia

_XML = """<?xml version="1.0" encoding="UTF-8"?>
<document>
<title>{title}</title>
<text>
{body}
</text>
</document>
"""


def _wikipedia_tree(tmp_path: Path) -> Path:
    root = tmp_path / "wikipedia_dataset"
    categories = ["art", "biology", "history"]
    (root / "texts").mkdir(parents=True)
    root.joinpath("categories.list").write_text("\n".join(categories) + "\n", encoding="utf-8")
    lines = {"train": [], "test": []}
    for c, cat in enumerate(categories, 1):
        for i in range(14):
            txt, img = f"t{cat}{i}", f"i{cat}{i}"
            write_image(root / "images" / cat / f"{img}.jpg", (60 * c, 15 * i, 100))  # each image different
            (root / "texts" / f"{txt}.xml").write_text(
                _XML.format(title=txt, body=f"About {cat} number {i}.\n  Second paragraph."), encoding="utf-8"
            )
            lines["train" if i < 10 else "test"].append(f"{txt}\t{img}\t{c}")
    # the mess: malformed XML (bare '&'), a plain .txt text, a missing image, a corrupt image, an empty text,
    # stray whitespace around the ids, a category out of range
    (root / "texts" / "tart0.xml").write_text(_XML.format(title="x", body="Arts & crafts <b>bold</b> here."), encoding="utf-8")
    (root / "texts" / "tart1.xml").unlink()
    (root / "texts" / "tart1.txt").write_text("Plain text article.\n", encoding="utf-8")
    (root / "images" / "biology" / "ibiology0.jpg").unlink()
    write_corrupt(root / "images" / "biology" / "ibiology1.jpg")
    (root / "texts" / "thistory0.xml").write_text(_XML.format(title="empty", body="   "), encoding="utf-8")
    lines["train"][5] = " tart5 \tiart5 \t1"
    lines["test"].append("tnew\tinew\t11")
    for split, name in (("train", "trainset_txt_img_cat.list"), ("test", "testset_txt_img_cat.list")):
        root.joinpath(name).write_text("\n".join(lines[split]) + "\n", encoding="utf-8")
    return tmp_path


def test_wikipedia_raw_layout(tmp_path):
    corpus, report, caught = loaded_quietly(load_wikipedia, _wikipedia_tree(tmp_path), val_fraction=0.25, seed=0)
    assert report.skip_counts() == {"missing image": 1, "corrupt image": 1, "empty text": 1, "bad label": 1}
    assert report.note_counts() == {"malformed XML": 1, "stray whitespace in name": 1}
    assert report.loaded == len(corpus) == 43 - 4 and len(caught) == 1  # 43 listed pairs
    assert corpus.label_names == ["art", "biology", "history"]
    assert len(corpus.splits["test"]) == 12
    assert len(corpus.splits["train"]) + len(corpus.splits["val"]) == 27
    assert len(corpus.splits["val"]) == 7  # round(27 * 0.25)
    assert Counter(corpus.items[corpus.position(i)].labels[0] for i in corpus.splits["val"]) == {
        "art": 3,
        "biology": 2,
        "history": 2,
    }

    def item(item_id):
        return corpus.items[corpus.position(item_id)]

    assert item("tbiology5").text == "About biology number 5.\nSecond paragraph."
    assert item("tart0").text == "Arts & crafts bold here."
    assert item("tart1").text == "Plain text article."
    assert item("tart5").extra == {"img_id": "iart5", "official_split": "train"}
    assert Path(item("thistory3").image_path).parent.name == "history"
    assert set(report.skipped_items("missing image")) == {"trainset_txt_img_cat.list:11 (tbiology0)"}


def test_wikipedia_reports_stray_file_names_and_identical_images_without_changing_the_splits(tmp_path):
    root = _wikipedia_tree(tmp_path) / "wikipedia_dataset"
    clean, clean_report, _ = loaded_quietly(load_wikipedia, root.parent, val_fraction=0.25, seed=0)
    assert clean_report.duplicates == [] and "byte-identical" not in clean_report.summary()
    images = root / "images"
    # files whose names carry a space (the real dataset has three): matched by the stripped stem, and reported
    (images / "art" / "iart3.jpg").rename(images / "art" / "iart3 .jpg")
    (images / "history" / "ihistory4.jpg").rename(images / "history" / "ihistory4.jpg ")
    (root / "texts" / "tart2.xml").rename(root / "texts" / "tart2 .xml")
    # byte-identical images: a pair inside train, a pair across train/test, a triple with two pairs across
    for source, copies in (
        ("art/iart6", ["art/iart7"]),
        ("art/iart2", ["biology/ibiology12"]),
        ("history/ihistory5", ["history/ihistory6", "history/ihistory11"]),
    ):
        for copy in copies:
            (images / f"{copy}.jpg").write_bytes((images / f"{source}.jpg").read_bytes())
    corpus, report, caught = loaded_quietly(load_wikipedia, root.parent, val_fraction=0.25, seed=0)

    assert len(caught) == 1 and "3 across official splits" in str(caught[0].message)
    assert corpus.splits == clean.splits and [it.id for it in corpus.items] == [it.id for it in clean.items]
    assert Path(corpus.items[corpus.position("tart3")].image_path).name == "iart3 .jpg"
    assert report.note_counts() == {
        "malformed XML": 1,
        "stray whitespace in name": 1,
        "image file name with stray whitespace": 2,
        "text file name with stray whitespace": 1,
    }
    assert {i.item for i in report.issues if i.reason == "image file name with stray whitespace"} == {
        "trainset_txt_img_cat.list:4 (tart3)",
        "trainset_txt_img_cat.list:25 (thistory4)",
    }
    assert report.duplicates == [
        {"ids": ["tart2", "tbiology12"], "splits": ["train", "test"], "across_splits": True},
        {"ids": ["tart6", "tart7"], "splits": ["train", "train"], "across_splits": False},
        {"ids": ["thistory5", "thistory6", "thistory11"], "splits": ["train", "train", "test"], "across_splits": True},
    ]
    across = [("tart2", "tbiology12"), ("thistory5", "thistory11"), ("thistory6", "thistory11")]
    assert report.duplicate_pairs(across_splits=True) == across and len(report.duplicate_pairs()) == 5
    assert (
        "; 5 byte-identical image pairs, 3 across official splits: tart2=tbiology12, thistory5=thistory11, "
        "thistory6=thistory11" in report.summary()
    )
    record = json.loads(json.dumps(report.as_dict()))
    assert record["duplicate_image_pairs"] == 5 and record["duplicate_image_pairs_across_splits"] == [list(p) for p in across]


def test_wikipedia_reports_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="categories.list"):
        load_wikipedia(tmp_path)


# ----------------------------------------------------------------------------------------------- pascal sentence


def _sentences(cls: str, i: int) -> str:
    return "".join(f"Sentence {k} about {cls} {i}.\n" for k in range(5))


def _pascal_tree(tmp_path: Path, layout: str) -> Path:
    root = tmp_path / layout
    for cls in ("bird", "boat", "cow"):
        for i in range(13):
            stem = f"2008_{cls}_{i:02d}"
            image_dir = root / ("dataset" if layout == "split" else "") / cls
            text_dir = root / ("sentence" if layout == "split" else "") / cls
            write_image(image_dir / f"{stem}.jpg")
            text_dir.mkdir(parents=True, exist_ok=True)
            (text_dir / f"{stem}.txt").write_text(_sentences(cls, i), encoding="utf-8")
    image_dir = root / ("dataset" if layout == "split" else "")
    text_dir = root / ("sentence" if layout == "split" else "")
    (text_dir / "bird" / "2008_bird_00.txt").unlink()  # image without sentences
    write_corrupt(image_dir / "boat" / "2008_boat_00.jpg")  # corrupt image
    (text_dir / "cow" / "2008_cow_00.txt").write_text("\n \n", encoding="utf-8")  # empty text
    (image_dir / "cow" / "2008_cow_01.jpg").rename(image_dir / "cow" / "2008_cow_01 .jpg")  # whitespace in a name
    (image_dir / "cow" / "2008_cow_02.jpg").unlink()  # sentences without image
    return root


@pytest.mark.parametrize("layout", ["split", "combined"])
def test_pascal_sentence_layouts(tmp_path, layout):
    corpus, report, _ = loaded_quietly(load_pascal_sentence, _pascal_tree(tmp_path, layout), seed=0)
    assert report.skip_counts() == {"missing text": 1, "corrupt image": 1, "empty text": 1, "missing image": 1}
    assert report.note_counts() == {"stray whitespace in name": 1}
    assert len(corpus) == 39 - 4 and corpus.label_names == ["bird", "boat", "cow"]
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 5, "val": 15, "test": 15}
    for split in ("val", "test"):
        assert Counter(it.labels[0] for it in corpus.split_items(split)) == {"bird": 5, "boat": 5, "cow": 5}
    item = corpus.items[corpus.position("cow/2008_cow_05")]
    assert item.text == " ".join(f"Sentence {k} about cow 5." for k in range(5)) and item.labels == ("cow",)
    assert len(item.extra["sentences"]) == 5
    assert corpus.items[corpus.position("cow/2008_cow_01")].image_path.endswith("2008_cow_01 .jpg")
    again, _, _ = loaded_quietly(load_pascal_sentence, tmp_path / layout, seed=0)
    assert again.splits == corpus.splits


def test_pascal_sentence_common_protocol_sizes(tmp_path):
    # 4 classes x 50 images: exactly 40/5/5 per class, the 800/100/100 protocol at 1/5 scale
    root = tmp_path / "ps"
    for cls in ("a", "b", "c", "d"):
        for i in range(50):
            write_image(root / cls / f"{i}.jpg")
            (root / cls / f"{i}.txt").write_text(_sentences(cls, i), encoding="utf-8")
    corpus, report, _ = loaded_quietly(load_pascal_sentence, root, verify_images=False)
    assert report.summary() == "200 loaded, 0 skipped"
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 160, "val": 20, "test": 20}


# ----------------------------------------------------------------------------------------------- registry


def test_registry_dispatches_and_explains(tmp_path):
    assert dataset_kinds() == ["emoji-demo", "imagenet-sample", "manifest", "pascal-sentence", "wikipedia"]
    corpus, report, _ = loaded_quietly(load_dataset, "pascal_sentence", _pascal_tree(tmp_path, "split"), seed=0)
    assert len(corpus) == 35 and report.dataset == "pascal-sentence"
    corpus, _, _ = loaded_quietly(load_dataset, "wikipedia", _wikipedia_tree(tmp_path / "w"))
    assert len(corpus) == 39
    with pytest.raises(ValueError, match="unknown dataset kind 'coco'"):
        load_dataset("coco", tmp_path)
    with pytest.raises(TypeError, match="does not take option"):
        load_dataset("wikipedia", tmp_path / "w", colour="red")


def test_cli_prepare_writes_corpus_and_report(tmp_path, capsys):
    from training.datasets.__main__ import main

    root = _pascal_tree(tmp_path, "split")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["prepare", "pascal-sentence", str(root), "--out", str(tmp_path / "corpus"), "-o", "seed=3"]) == 0
    corpus = load_corpus(tmp_path / "corpus")
    assert len(corpus) == 35 and len(corpus.splits["test"]) == 15
    report = json.loads((tmp_path / "corpus" / "load_report.json").read_text(encoding="utf-8"))
    assert report["loaded"] == 35 and report["skip_counts"]["corrupt image"] == 1
    assert "35 loaded, 4 skipped" in capsys.readouterr().out
