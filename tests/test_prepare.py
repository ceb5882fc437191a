"""`training prepare`: cached backbone features with ids, resumable, incremental, sharded; then sentence-CNN training on them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from model.corpus import Corpus, Item, save_corpus
from model.encoder import load_encoder
from model.image_backbones import build_image_backbone
from model.image_io import load_image
from model.sentence_cnn import TextEncoderConfig
from training.config import preset, with_dims
from training.pipeline import train_and_save
from training.prepare import CACHE_DIR, PrepareConfig, PreparedDataError, load_prepared, prepare_corpus

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20)}
SHAPES = ["square", "circle", "triangle"]
REPO = Path(__file__).resolve().parents[1]
TEXT = TextEncoderConfig(
    kind="sentence_cnn", word_vectors="word2vec", embed_dim=16, maps=8, min_count=1, max_len=16, word2vec_epochs=3
)


def draw(path: Path, colour: tuple[int, int, int], shape: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(200, 255, (80, 96, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    box = [10 + seed % 7, 8, 70 + seed % 9, 70]
    {"square": d.rectangle, "circle": d.ellipse}.get(
        shape, lambda b, fill: d.polygon([(b[0], b[3]), (b[2], b[3]), (40, b[1])], fill=fill)
    )(box, fill=colour)
    img.save(path)


def make_corpus(directory: Path, n_per_class: int = 10) -> Path:
    images = directory / "images"
    images.mkdir(parents=True)
    items = []
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(n_per_class):
            shape = SHAPES[i % 3]
            path = images / f"{name}{i}.png"
            draw(path, rgb, shape, seed=c * 100 + i)
            items.append(
                Item(
                    id=f"{name}{i}",
                    image_path=str(path),
                    text=f"a {name} {shape} on a pale background, number {i}",
                    labels=(name,),
                )
            )
    ids = {name: [f"{name}{i}" for i in range(n_per_class)] for name in COLOURS}
    splits = {
        "train": [i for v in ids.values() for i in v[:6]],
        "val": [i for v in ids.values() for i in v[6:8]],
        "test": [i for v in ids.values() for i in v[8:]],
    }
    save_corpus(Corpus(items=items, label_names=list(COLOURS), splits=splits, name="shapes"), directory)
    return directory


def copy_corpus(source: Path, target: Path) -> Path:
    """A copy of a corpus folder whose items point at the copied images (so a test may change them)."""
    shutil.copytree(source, target)
    items = [json.loads(line) for line in (target / "items.jsonl").read_text().splitlines()]
    for it in items:
        it["image_path"] = str(target / "images" / Path(it["image_path"]).name)
    (target / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    return target


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare_corpus(corpus_dir, out, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    return out, summary


def test_features_equal_the_backbone_on_each_image_in_corpus_order(prepared, corpus_dir):
    out, summary = prepared
    assert summary["items"] == 40 and summary["extracted"] == 40 and summary["skipped"] == 0
    data = load_prepared(out)
    assert data.manifest["ids"][:3] == ["red0", "red1", "red2"]
    features = np.load(out / "image_features.npy")
    backbone = build_image_backbone("efficientnet-lite0")
    sample = [0, 17, 39]
    paths = [corpus_dir / "images" / f"{data.manifest['ids'][i]}.png" for i in sample]
    reference = backbone.extract_images([load_image(p) for p in paths]).numpy()
    np.testing.assert_allclose(features[sample], reference, rtol=1e-4, atol=1e-5)
    splits = data.feature_splits()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 8, 8)
    assert splits.text_is_tokens and splits.train.text.dtype == np.int64 and splits.train.text.shape[1] >= 5
    assert splits.val.ids == data.manifest["splits"]["val"]
    assert data.feature_spec()["image"] == {
        "kind": "backbone",
        "name": "efficientnet-lite0",
        "weights_path": None,
        "weights_sha256": backbone.weights_sha256,
        "dim": 1280,
    }


def test_rerun_is_a_cache_hit_and_a_changed_image_is_the_only_recomputation(prepared, corpus_dir, tmp_path):
    out, first = prepared
    work_corpus = copy_corpus(corpus_dir, tmp_path / "corpus")
    work_out = tmp_path / "prepared"
    shutil.copytree(out, work_out)
    again = prepare_corpus(work_corpus, work_out, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    assert again["extracted"] == 0 and again["content_hash"] == first["content_hash"]
    draw(work_corpus / "images" / "blue3.png", COLOURS["blue"], "circle", seed=999)
    changed = prepare_corpus(work_corpus, work_out, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    assert changed["extracted"] == 1 and changed["content_hash"] != first["content_hash"]
    row = load_prepared(work_out).manifest["ids"].index("blue3")
    old, new = np.load(out / "image_features.npy"), np.load(work_out / "image_features.npy")
    assert not np.allclose(old[row], new[row])
    np.testing.assert_array_equal(np.delete(old, row, 0), np.delete(new, row, 0))


def test_content_hash_covers_the_text_configuration(prepared, corpus_dir, tmp_path):
    """Settings that reach training through the prepared data change its hash even where no stored file changes;
    the same config (and a different extraction batch size, which cannot change the data) keeps it."""
    out, first = prepared
    work_out = tmp_path / "prepared"
    shutil.copytree(out, work_out)

    def hash_with(text: TextEncoderConfig, **extra) -> str:
        summary = prepare_corpus(corpus_dir, work_out, PrepareConfig(text=text, progress=False, **{"batch_size": 8, **extra}))
        assert summary["extracted"] == 0
        return summary["content_hash"]

    base = first["content_hash"]
    assert hash_with(TEXT) == base and hash_with(TEXT, batch_size=5) == base
    variants = {
        "word_dropout 0.3": dataclasses.replace(TEXT, word_dropout=0.3),
        "mean_vector": dataclasses.replace(TEXT, mean_vector=True),
        "maps 12": dataclasses.replace(TEXT, maps=12),
        "dropout 0.2": dataclasses.replace(TEXT, dropout=0.2),
        "frozen embeddings": dataclasses.replace(TEXT, freeze_embeddings=True),
    }
    hashes = {name: hash_with(text) for name, text in variants.items()}
    # word dropout alone leaves every stored file byte-identical: the hash is all that tells the runs apart
    assert (work_out / "text_input.npy").read_bytes() == (out / "text_input.npy").read_bytes()
    assert base not in hashes.values() and len(set(hashes.values())) == len(hashes), hashes
    assert hash_with(dataclasses.replace(TEXT, word_dropout=0.3)) == hashes["word_dropout 0.3"]
    assert hash_with(TEXT) == base


def test_interrupted_extraction_resumes_from_stored_chunks(prepared, corpus_dir, tmp_path):
    out, _ = prepared
    work_out = tmp_path / "prepared"
    shutil.copytree(out / CACHE_DIR, work_out / CACHE_DIR)
    chunks = sorted((work_out / CACHE_DIR).rglob("chunk-*.npz"))
    assert len(chunks) == 5  # 40 images in batches of 8
    for lost in chunks[2:]:  # as if killed after the second batch (a half-written chunk is only ever a *.tmp file)
        lost.unlink()
    (chunks[2].with_name("chunk-partial.npz.tmp")).write_bytes(b"\x00" * 100)
    resumed = prepare_corpus(corpus_dir, work_out, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    assert resumed["extracted"] == 24
    np.testing.assert_array_equal(np.load(work_out / "image_features.npy"), np.load(out / "image_features.npy"))


def test_sharded_extraction_merges_to_the_single_process_result(prepared, corpus_dir, tmp_path):
    out, _ = prepared
    cfg = PrepareConfig(text=TEXT, batch_size=8, progress=False)
    shards = [prepare_corpus(corpus_dir, tmp_path, cfg, shard=(i, 3)) for i in range(3)]
    assert sorted(s["extracted"] for s in shards) == [13, 13, 14]
    assert not (tmp_path / "prepared.json").exists()
    merged = prepare_corpus(corpus_dir, tmp_path, cfg)
    assert merged["extracted"] == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "image_features.npy"), np.load(out / "image_features.npy"), rtol=1e-5, atol=1e-6
    )


def test_corrupt_and_missing_images_are_reported_and_skipped(corpus_dir, tmp_path):
    work = copy_corpus(corpus_dir, tmp_path / "corpus")
    (work / "images" / "red1.png").write_bytes((work / "images" / "red1.png").read_bytes()[:200])
    (work / "images" / "green2.png").unlink()
    summary = prepare_corpus(work, tmp_path / "prepared", PrepareConfig(text=TEXT, batch_size=8, progress=False))
    assert summary["items"] == 38 and summary["skipped"] == 2
    manifest = load_prepared(tmp_path / "prepared").manifest
    assert {s["id"] for s in manifest["skipped"]} == {"red1", "green2"}
    assert "red1" not in manifest["splits"]["train"] and len(manifest["splits"]["train"]) == 22


def test_too_elongated_images_are_reported_and_skipped(corpus_dir, tmp_path):
    # A 1 x 8,400,000 px PNG overflowed the backbone resize (its shorter side scaled to 256 px) and stopped the run;
    # a 30:1 one cost a 7,680 px long intermediate. Both are refused from their header now, like a corrupt file.
    work = copy_corpus(corpus_dir, tmp_path / "corpus")
    Image.new("L", (1, 8_400_000), 128).save(work / "images" / "red1.png")
    Image.new("L", (30, 1), 128).save(work / "images" / "green2.png")
    summary = prepare_corpus(work, tmp_path / "prepared", PrepareConfig(text=TEXT, batch_size=8, progress=False))
    assert summary["items"] == 38 and summary["skipped"] == 2
    reasons = {s["id"]: s["reason"] for s in load_prepared(tmp_path / "prepared").manifest["skipped"]}
    assert set(reasons) == {"red1", "green2"}
    assert "1x8400000 px, an aspect ratio of 8,400,000:1" in reasons["red1"] and "30x1 px" in reasons["green2"]


def test_an_unprepared_or_incomplete_folder_is_refused_with_what_to_run(prepared, tmp_path):
    with pytest.raises(PreparedDataError, match="python -m training prepare"):
        load_prepared(tmp_path)
    out, _ = prepared
    shutil.copytree(out, tmp_path / "p")
    (tmp_path / "p" / "vocab.json").unlink()
    with pytest.raises(PreparedDataError, match="vocab.json"):
        load_prepared(tmp_path / "p")


def test_sentence_cnn_trains_end_to_end_and_the_saved_model_encodes_raw_inputs(prepared, corpus_dir, tmp_path):
    out, _ = prepared
    data = load_prepared(out)
    splits = data.feature_splits()
    cfg = preset("wiki-tuned", epochs=60, progress=False, seed=0)
    cfg = with_dims(cfg, 1280, TEXT.output_dim, 4)
    before = data.build_text_encoder().state_dict()
    report = train_and_save(splits, cfg, tmp_path / "model", prepared=data)
    assert report["val"]["avg"] > 0.9 and report["test"]["avg"] > 0.9, report  # colour names the class on both sides
    encoder = load_encoder(tmp_path / "model", device="cpu")
    assert encoder.can_encode_images and encoder.can_encode_texts
    # the thread count changes the figures in the last digits: every saved model records it
    assert encoder.metrics["environment"] == {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    trained = encoder.network.text_encoder.state_dict()
    assert not torch.equal(trained["convs.0.weight"], before["convs.0.weight"])  # the CNN was trained, not frozen
    texts = encoder.encode_texts(["a red circle on a pale background", "a blue square on a pale background"])
    images = encoder.encode_images(
        [load_image(corpus_dir / "images" / "red9.png"), load_image(corpus_dir / "images" / "blue9.png")]
    )
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    sims = images @ texts.T
    assert sims[0, 0] > sims[0, 1] and sims[1, 1] > sims[1, 0]
    # The saved model reproduces the training-time encoding of the test split.
    test_rows = [data.manifest["ids"].index(i) for i in splits.test.ids]
    from_cache = encoder.encode_image_features(np.load(out / "image_features.npy")[test_rows])
    from_pixels = encoder.encode_images([load_image(corpus_dir / "images" / f"{i}.png") for i in splits.test.ids])
    np.testing.assert_allclose(from_cache, from_pixels, atol=1e-4)


def test_minilm_text_is_prepared_as_sentence_vectors(corpus_dir, tmp_path):
    # MiniLM is the `sentence` extra, which `make install` installs: missing weights or package fail here, loudly.
    cfg = PrepareConfig(text=dataclasses.replace(TEXT, kind="minilm"), batch_size=8, progress=False)
    prepare_corpus(corpus_dir, tmp_path, cfg)
    data = load_prepared(tmp_path)
    splits = data.feature_splits()
    assert not splits.text_is_tokens and splits.train.text.shape == (24, 384)
    assert data.build_text_encoder() is None and data.feature_spec()["text"] == {"kind": "minilm", "dim": 384}


def _cli(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    proc = subprocess.run([*launcher, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_prepare_under_torchrun_splits_the_work_and_equals_one_process_then_trains(prepared, corpus_dir, tmp_path):
    out, _ = prepared
    common = [
        "--corpus",
        str(corpus_dir),
        "--min-count",
        "1",
        "--embed-dim",
        "16",
        "--max-len",
        "16",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    _cli(["prepare", *common, "--out", str(tmp_path / "ddp")], nproc=2)
    chunks = sorted((tmp_path / "ddp" / CACHE_DIR).rglob("chunk-*.npz"))
    assert {c.stem.rsplit("-", 1)[1] for c in chunks} == {"r0", "r1"}  # both ranks extracted their half
    # Same images, same weights; only the batch grouping and thread count differ, which moves float sums by ~1e-6.
    np.testing.assert_allclose(
        np.load(tmp_path / "ddp" / "image_features.npy"), np.load(out / "image_features.npy"), rtol=1e-4, atol=1e-5
    )
    assert load_prepared(tmp_path / "ddp").manifest["ids"] == load_prepared(out).manifest["ids"]
    _cli(
        [
            "train",
            "--prepared",
            str(tmp_path / "ddp"),
            "--preset",
            "wiki-tuned",
            "--epochs",
            "3",
            "--out",
            str(tmp_path / "model"),
            "--no-progress",
        ]
    )
    spec = json.loads((tmp_path / "model" / "feature_spec.json").read_text())
    assert spec["image"]["kind"] == "backbone" and spec["text"]["kind"] == "sentence_cnn"
