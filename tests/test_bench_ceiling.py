"""The imagenet-sample benchmark's ceiling diagnostics: TF-IDF text from training texts only, the linear probe,
and semantic matching with the true labels as the text side."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from model.corpus import Corpus, Item
from training.baselines import run_semantic_matching
from training.features import FeatureSplits, SplitArrays

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _load_bench_script(filename: str):
    """A bench/ script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{filename.removesuffix('.py')}", BENCH_DIR / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench_script("imagenet_sample.py")


WORDS = {"fish": ["fins scales water", "river water fins"], "dog": ["barks fur tail", "fur paws barks"]}


def _toy(image_noise: float, seed: int = 0) -> tuple[FeatureSplits, Corpus]:
    """Two classes, 20 items per split; class c's image feature is one-hot(c) plus noise, its text uses c's words."""
    rng = np.random.default_rng(seed)
    items, parts = [], {}
    for split in ("train", "val", "test"):
        ids, images, labels = [], [], []
        for k in range(20):
            c = k % 2
            name = list(WORDS)[c]
            item_id = f"{split}-{k}"
            text = WORDS[name][k % 4 // 2] if split != "test" or k != 0 else "unseen zebra words"
            items.append(Item(id=item_id, image_path=None, text=text, labels=(name,)))
            ids.append(item_id)
            images.append(np.eye(2)[c] + image_noise * rng.standard_normal(2))
            labels.append(np.eye(2)[c])
        parts[split] = SplitArrays(np.array(images, np.float32), np.zeros((20, 1), np.float32), np.array(labels, np.float32), ids)
    corpus = Corpus(items=items, label_names=list(WORDS), splits={s: parts[s].ids for s in parts})
    return FeatureSplits(**parts, label_names=list(WORDS)), corpus


def test_tfidf_text_learns_its_vocabulary_from_training_texts_only(bench):
    data, corpus = _toy(0.1)
    tfidf = bench.tfidf_text(data, corpus)
    assert tfidf.train.text.shape[1] == tfidf.test.text.shape[1] > 0
    # test-0's words never occur in a training text: its vector is all zeros; every other text has a unit vector.
    assert not tfidf.test.text[0].any()
    np.testing.assert_allclose(np.linalg.norm(tfidf.test.text[1:], axis=1), 1.0, rtol=1e-5)
    assert tfidf.test.ids == data.test.ids and tfidf.test.image is data.test.image


def test_linear_probe_accuracy_separates_clean_features_and_not_noise(bench):
    clean, _ = _toy(0.05)
    assert bench.linear_probe_accuracy(clean, "image") == 1.0
    noise, _ = _toy(50.0)
    assert bench.linear_probe_accuracy(noise, "image") < 0.8
    multilabel = dataclasses.replace(clean, test=dataclasses.replace(clean.test, labels=np.ones_like(clean.test.labels)))
    with pytest.raises(ValueError, match="single-label"):
        bench.linear_probe_accuracy(multilabel, "image")


def test_true_labels_as_text_side_bounds_semantic_matching(bench):
    data, corpus = _toy(0.05)
    perfect = bench.with_text(data, lambda s: data.split(s).labels.astype(np.float32))
    assert run_semantic_matching(perfect).test.avg == pytest.approx(1.0)
    noisy, _ = _toy(1.0)
    noisy_perfect_text = bench.with_text(noisy, lambda s: noisy.split(s).labels.astype(np.float32))
    ceiling = run_semantic_matching(noisy_perfect_text).test.avg
    assert ceiling < 1.0
    # On this toy data (clean, well-separated texts) the true labels are the better text side. That is not a theorem:
    # an imperfect text side can beat them when its errors happen to match the image side's.
    tfidf = bench.tfidf_text(noisy, corpus)
    assert run_semantic_matching(tfidf).test.avg <= ceiling + 1e-9


@pytest.fixture(scope="module")
def image_features_bench():
    return _load_bench_script("imagenet_image_features.py")


def test_image_feature_variants_match_the_library_path(image_features_bench, tmp_path):
    """The study's default variant is exactly what prepare extracts; the mirrored variant averages both crops."""
    from PIL import Image, ImageOps
    from sklearn.datasets import load_sample_image

    from model.image_backbones import build_image_backbone

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    paths = []
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    study = image_features_bench.extract
    default = study(paths, "efficientnet-lite0", None, False)
    backbone = build_image_backbone("efficientnet-lite0")
    np.testing.assert_allclose(default, backbone.extract_images(photos).numpy(), rtol=1e-4, atol=1e-5)
    crops = [backbone.preprocess.resize_and_crop(p) for p in photos]
    mirrored_only = backbone.extract(backbone.preprocess.normalise([ImageOps.mirror(c) for c in crops])).numpy()
    np.testing.assert_allclose(
        study(paths, "efficientnet-lite0", None, True), (default + mirrored_only) / 2, rtol=1e-4, atol=1e-5
    )
    larger = study(paths, "efficientnet-lite0", 288, False)
    assert larger.shape == default.shape == (2, 1280) and not np.allclose(larger, default)


def test_loss_weight_selection_keeps_released_run_keys_and_marks_the_choice(bench):
    # Runs with the released weights keep their old cache keys; other pairs get their own.
    assert bench.loss_weights_suffix(bench.RELEASED_LOSS_WEIGHTS) == ""
    assert bench.loss_weights_suffix((1.0, 0.0)) == "-lam1-eta0"
    assert bench.RELEASED_LOSS_WEIGHTS in bench.LOSS_WEIGHTS and len(set(bench.LOSS_WEIGHTS)) == len(bench.LOSS_WEIGHTS)
    selection = {
        "minilm": {
            "text": "minilm",
            "chosen": {"lambda_j2": 1.0, "eta_j3": 0.0},
            "fold0_val_avg": [
                {"lambda_j2": 1e-3, "eta_j3": 0.1, "val_avg": 0.5667},
                {"lambda_j2": 1.0, "eta_j3": 0.0, "val_avg": 0.619},
            ],
        }
    }
    lines = bench._loss_weight_lines(selection)
    header = next(line for line in lines if line.startswith("| row"))
    assert "lambda 0.001, eta 0.1" in header and "lambda 1, eta 0" in header
    assert "| minilm | 0.5667 | **0.6190** |" in lines
