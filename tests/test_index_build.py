"""The indexing job end to end on photos and texts, with a real (small) DSCMR model trained here.

The model: EfficientNet-Lite0 image features + MiniLM sentence features, DSCMR trained for a few seconds on 3 items per
coarse class of an imagenet-sample-wordnet folder: the generated one (12 classes, Pillow-drawn photos, WordNet-style
glosses; every clone) and the real ImageNet sample in ../shared/data (22 classes, 66 photos; where it is present). The
tests build an index with it and query it by text and by image.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from index.build import BuildConfig, build_index, embed_shard, merge_shards
from index.errors import ShardError
from index.search import SearchIndex
from index.store import load_manifest, read_current
from model.corpus import Corpus, Item, load_corpus, save_corpus
from tests.fixtures_data import IMAGENET_SAMPLE, needs_real_imagenet, write_imagenet_sample
from tests.test_index_fixtures import single_thread_faiss  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 3
CONFIG = BuildConfig(batch_size=16, show_progress=False)


@pytest.fixture(scope="module", params=["generated", pytest.param("real", marks=needs_real_imagenet)])
def trained(request, tmp_path_factory):
    """(model_dir, corpus_dir, corpus, encoder, spare items): a DSCMR model trained on PER_CLASS items of each class,
    saved as a model dir; the spare items are four more, for the add tests."""
    import torch

    from model.encoder import load_encoder
    from model.image_backbones import build_image_backbone
    from model.image_io import load_image
    from model.text import MiniLMSentenceEncoder
    from training.config import preset, with_dims
    from training.datasets.imagenet_sample import load_imagenet_sample
    from training.features import FeatureSplits, SplitArrays
    from training.train import save_trained_model, train_dscmr

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp(request.param)
    folder = (
        IMAGENET_SAMPLE if request.param == "real" else write_imagenet_sample(base / "imagenet-sample", per_class=PER_CLASS + 1)
    )
    full, _ = load_imagenet_sample(folder, verify_images=False)
    taken: dict[str, int] = {}
    items, spare = [], []
    for it in full.items:
        if taken.get(it.labels[0], 0) < PER_CLASS:
            taken[it.labels[0]] = taken.get(it.labels[0], 0) + 1
            items.append(it)
        elif len(spare) < 4:
            spare.append(it)
    corpus = Corpus(
        items=items, label_names=full.label_names, splits={"test": [it.id for it in items]}, name=f"imagenet-{len(items)}"
    )
    corpus_dir = save_corpus(corpus, base / "corpus")

    image_features = (
        build_image_backbone("efficientnet-lite0").extract_images([load_image(it.image_path) for it in items]).numpy()
    )
    text_features = MiniLMSentenceEncoder().encode([it.text for it in items])
    labels = np.zeros((len(items), len(corpus.label_names)), np.float32)
    for i, it in enumerate(items):
        labels[i, corpus.label_names.index(it.labels[0])] = 1
    split = SplitArrays(image_features.astype(np.float32), text_features.astype(np.float32), labels, [it.id for it in items])
    data = FeatureSplits(split, split, split, corpus.label_names, corpus.name)
    cfg = with_dims(
        preset("paper", epochs=80, batch_size=32, lr=1e-3, device="cpu", progress=False, amp=False, checkpoint_every=10**6),
        image_features.shape[1],
        text_features.shape[1],
        len(corpus.label_names),
    )
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, hidden_dim=256, common_dim=64))
    result = train_dscmr(data, cfg)
    spec = {"image": {"kind": "backbone", "name": "efficientnet-lite0"}, "text": {"kind": "minilm"}}
    model_dir = base / "model"
    save_trained_model(result, model_dir, corpus.label_names, spec)
    return model_dir, corpus_dir, corpus, load_encoder(model_dir, device="cpu"), spare


@pytest.fixture(scope="module")
def built(trained, tmp_path_factory):
    model_dir, corpus_dir, corpus, encoder, _ = trained
    root = tmp_path_factory.mktemp("index")
    version = build_index(model_dir, corpus_dir, root, CONFIG, encoder=encoder)
    return root, version


def test_text_query_finds_its_paired_image(trained, built):
    model_dir, _, corpus, encoder, _ = trained
    root, version = built
    index = SearchIndex.load(root, encoder=encoder)
    assert index.version == version.name and index.dim == 64
    assert (index.count("image"), index.count("text")) == (len(corpus), len(corpus))
    rows = index.search_texts([it.text for it in corpus.items], k=5, target="image")
    found = [it.id in {h.id for h in row} for it, row in zip(corpus.items, rows)]
    assert np.mean(found) >= 0.95, f"paired image in the top 5 for only {np.mean(found):.0%} of the texts"
    # the top hits are pictures of the query's class
    assert np.mean([row[0].labels[0] == it.labels[0] for it, row in zip(corpus.items, rows)]) >= 0.9
    one = index.search_text(corpus.items[0].text, k=5)
    assert [h.id for h in one] == [h.id for h in rows[0]]
    assert one[0].image_path and Path(one[0].image_path).is_file() and one[0].modality == "image"


def test_image_query_finds_its_paired_text(trained, built):
    from model.image_io import load_image

    _, _, corpus, encoder, _ = trained
    index = SearchIndex.load(built[0], encoder=encoder)
    picks = corpus.items[::11]
    rows = index.search_images([load_image(it.image_path) for it in picks], k=5, target="text")
    assert all(it.id in {h.id for h in row} for it, row in zip(picks, rows))
    assert all(h.modality == "text" and h.text for row in rows for h in row)


def test_index_answers_equal_brute_force_over_the_encoder(trained, built):
    from model.image_io import load_image

    _, _, corpus, encoder, _ = trained
    index = SearchIndex.load(built[0], encoder=encoder)
    images = encoder.encode_images([load_image(it.image_path) for it in corpus.items])
    queries = encoder.encode_texts([it.text for it in corpus.items[:10]])
    expected = np.argsort(-(queries @ images.T), axis=1, kind="stable")[:, :5]
    rows = index.search_vectors(queries, k=5, target="image")
    assert [[h.id for h in r] for r in rows] == [[corpus.items[j].id for j in e] for e in expected]


def test_label_filter(trained, built):
    _, _, corpus, encoder, _ = trained
    index = SearchIndex.load(built[0], encoder=encoder)
    hits = index.search_text("a small fish in a river", k=5, labels=["bird"])
    assert len(hits) == PER_CLASS and all("bird" in h.labels for h in hits)  # only 3 birds exist: all of them
    hits = index.search_text("a small fish in a river", k=4, target="both", labels=["bird", "fish"])
    assert len(hits) == 4 and all({"bird", "fish"} & set(h.labels) for h in hits)


def test_manifest_stamps_the_model(trained, built):
    from model.artefact import read_model_hash

    model_dir, corpus_dir, *_ = trained
    manifest = load_manifest(built[1])
    assert manifest["model"]["content_hash"] == read_model_hash(model_dir)
    assert manifest["model"]["dim"] == 64 and manifest["skipped"]["count"] == 0
    assert (
        manifest["corpus"]["n_items"] == len(load_corpus(corpus_dir))
        and manifest["corpus"]["label_names"] == load_corpus(corpus_dir).label_names
    )


def test_corrupt_and_missing_images_are_skipped_and_counted(trained, tmp_path):
    model_dir, _, corpus, encoder, _ = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    extra = [
        Item("broken", str(broken), "a broken picture of a fish", ("fish",), {}),
        Item("missing", str(tmp_path / "gone.jpg"), "a picture that went away", ("fish",), {}),
    ]
    corpus_dir = save_corpus(
        Corpus(items=corpus.items[:10] + extra, label_names=corpus.label_names, name="with-broken"), tmp_path / "c"
    )
    version = build_index(model_dir, corpus_dir, tmp_path / "index", CONFIG, encoder=encoder)
    manifest = load_manifest(version)
    assert manifest["counts"] == {"image": 10, "text": 12}  # their texts are still indexed
    assert manifest["skipped"]["count"] == 2
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]["items"]}
    assert set(reasons) == {"broken", "missing"} and "ImageDecodeError" in reasons["broken"]


def test_too_elongated_images_are_skipped_and_counted(trained, tmp_path):
    from PIL import Image

    model_dir, _, corpus, encoder, _ = trained
    sliver, strip = tmp_path / "sliver.png", tmp_path / "strip.png"
    Image.new("L", (1, 8_400_000), 128).save(sliver)  # overflowed the backbone resize and stopped the build
    Image.new("L", (30, 1), 128).save(strip)
    extra = [
        Item("sliver", str(sliver), "a very tall picture", ("fish",), {}),
        Item("strip", str(strip), "a very wide picture", ("fish",), {}),
    ]
    corpus_dir = save_corpus(
        Corpus(items=corpus.items[:10] + extra, label_names=corpus.label_names, name="with-thin"), tmp_path / "c"
    )
    manifest = load_manifest(build_index(model_dir, corpus_dir, tmp_path / "index", CONFIG, encoder=encoder))
    assert manifest["counts"] == {"image": 10, "text": 12}
    reasons = {s["id"]: s["reason"] for s in manifest["skipped"]["items"]}
    assert set(reasons) == {"sliver", "strip"}
    assert all(r.startswith("ImageAspectRatioError") and "limit of 20:1" in r for r in reasons.values())


def test_shards_merge_into_the_same_index(trained, built, tmp_path):
    model_dir, corpus_dir, corpus, encoder, _ = trained
    for i in range(2):
        embed_shard(model_dir, corpus_dir, tmp_path, (i, 2), CONFIG, encoder=encoder)
    with pytest.raises(ShardError, match="missing"):
        merge_shards(model_dir, corpus_dir, tmp_path, CONFIG, shard_dirs=sorted((tmp_path / "shards").glob("*/shard-0000*")))
    merged = SearchIndex.load(merge_shards(model_dir, corpus_dir, tmp_path, CONFIG))
    single = SearchIndex.load(built[1])
    queries = encoder.encode_texts([it.text for it in corpus.items[:8]])
    for target in ("image", "text"):
        a, b = merged.search_vectors(queries, k=5, target=target), single.search_vectors(queries, k=5, target=target)
        assert [[h.id for h in r] for r in a] == [[h.id for h in r] for r in b]
        np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in b], atol=1e-5)


def test_add_new_items_with_the_encoder(trained, tmp_path):
    from index.update import add_items

    model_dir, corpus_dir, corpus, encoder, spare = trained
    root = tmp_path / "index"
    build_index(model_dir, corpus_dir, root, CONFIG, encoder=encoder)
    add_items(root, spare, encoder, config=CONFIG)
    index = SearchIndex.load(root, encoder=encoder)
    assert index.count("image") == len(corpus) + len(spare)
    found = [it.id in {h.id for h in index.search_text(it.text, k=10, target="text")} for it in spare]
    assert all(found)


def test_cli_build_killed_mid_way_keeps_previous_version_then_resumes(trained, tmp_path):
    model_dir, corpus_dir, corpus, encoder, _ = trained
    root = tmp_path / "index"
    first = build_index(model_dir, corpus_dir, root, CONFIG, encoder=encoder)
    expected = SearchIndex.load(root).search_vectors(encoder.encode_texts([corpus.items[0].text]), k=5)
    cmd = [
        sys.executable,
        "-m",
        "index",
        "build",
        "--model",
        str(model_dir),
        "--corpus",
        str(corpus_dir),
        "--root",
        str(root),
        "--batch-size",
        "8",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--pause-per-step", "0.1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    killed = threading.Event()

    def watch() -> None:
        for line in proc.stderr:
            if line.strip() == "checkpoint embed:image:3":
                proc.send_signal(signal.SIGKILL)
                killed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    proc.wait(timeout=300)
    reader.join(timeout=10)
    assert killed.is_set() and proc.returncode == -signal.SIGKILL
    assert read_current(root) == first.name
    assert SearchIndex.load(root).search_vectors(encoder.encode_texts([corpus.items[0].text]), k=5) == expected

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed image: 4 of {math.ceil(len(corpus) / 8)} batches were already embedded" in done.stderr
    assert read_current(root) != first.name
    again = SearchIndex.load(root, encoder=encoder)
    assert [h.id for h in again.search_text(corpus.items[0].text, k=5)] == [h.id for h in expected[0]]


def test_cli_add_items_from_a_corpus(trained, tmp_path):
    model_dir, corpus_dir, corpus, encoder, spare = trained
    root = tmp_path / "index"
    build_index(model_dir, corpus_dir, root, CONFIG, encoder=encoder)
    new_dir = save_corpus(Corpus(items=spare, label_names=corpus.label_names, name="new"), tmp_path / "new")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "index",
            "add",
            "--root",
            str(root),
            "--model",
            str(model_dir),
            "--corpus",
            str(new_dir),
            "--ids",
            spare[0].id,
            spare[1].id,
            "--no-progress",
            "--device",
            "cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["counts"] == {"image": len(corpus) + 2, "text": len(corpus) + 2}
    index = SearchIndex.load(root, encoder=encoder)
    assert spare[0].id in {h.id for h in index.search_text(spare[0].text, k=5, target="text")}
