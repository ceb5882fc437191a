"""End-to-end fine-tuning: backbone blocks train (others stay pretrained), the saved model carries them, index + encoder use them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from model.corpus import Corpus, Item, save_corpus
from model.encoder import load_encoder
from model.image_backbones import FINETUNED_BACKBONE_PREFIX, build_image_backbone
from model.image_io import load_image
from tests.test_prepare import COLOURS, SHAPES, TEXT, draw
from training.augment import AugmentConfig, augment_image, random_resized_crop_box
from training.config import preset
from training.finetune import FinetuneConfig, finetune, save_finetuned_model
from training.prepare import PrepareConfig, load_prepared, prepare_corpus, prepared_feature_cache

UNFREEZE = 2
# Small, CPU-sized run: 16 training images in batches of 8, two epochs, no loader processes.
CFG = FinetuneConfig(
    dscmr=preset("wiki-tuned", epochs=2, batch_size=8, progress=False, seed=0, checkpoint_every=1),
    unfreeze_blocks=UNFREEZE,
    backbone_lr_scale=0.1,
    augment=AugmentConfig(scale=(0.5, 1.0)),
    workers=0,
    eval_batch_size=16,
)


def make_small_corpus(directory: Path, n_per_class: int = 6) -> Path:
    """4 colours x 6 drawn shapes: 4 train, 1 val, 1 test per class."""
    images = directory / "images"
    images.mkdir(parents=True)
    items, splits = [], {"train": [], "val": [], "test": []}
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(n_per_class):
            shape = SHAPES[i % 3]
            path = images / f"{name}{i}.png"
            draw(path, rgb, shape, seed=c * 100 + i)
            items.append(
                Item(id=f"{name}{i}", image_path=str(path), text=f"a {name} {shape} on a pale background", labels=(name,))
            )
            splits["train" if i < n_per_class - 2 else "val" if i == n_per_class - 2 else "test"].append(f"{name}{i}")
    save_corpus(Corpus(items=items, label_names=list(COLOURS), splits=splits, name="shapes"), directory)
    return directory


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_small_corpus(tmp_path_factory.mktemp("ft-corpus"))


@pytest.fixture(scope="module")
def prepared_dir(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft-prepared")
    prepare_corpus(corpus_dir, out, PrepareConfig(text=TEXT, batch_size=8, progress=False))
    return out


@pytest.fixture(scope="module")
def finetuned(prepared_dir, tmp_path_factory):
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("ft-run")
    return finetune(prepared_dir, CFG, run_dir=run_dir), run_dir


def test_only_the_unfrozen_blocks_change(finetuned):
    result, run_dir = finetuned
    stock = build_image_backbone("efficientnet-lite0")
    tuned_keys = set(stock.block_state_keys(UNFREEZE))
    assert tuned_keys and all(
        k.startswith(("network.network._blocks.15.", "network.network._conv_head", "network.network._bn1")) for k in tuned_keys
    )
    stock_state, tuned_state = stock.state_dict(), result.backbone.state_dict()
    params = {name for name, _ in stock.named_parameters()}
    for key, value in stock_state.items():
        if key in tuned_keys and key in params:
            assert not torch.equal(value, tuned_state[key]), f"unfrozen parameter {key} did not train"
        else:  # frozen blocks, and BatchNorm statistics everywhere (the backbone stays in eval mode)
            assert torch.equal(value, tuned_state[key]), f"{key} changed but should be frozen"
    assert [h["epoch"] for h in result.history] == [1, 2] and result.epochs_run == 2
    assert result.best_val.avg == max(h["val_avg"] for h in result.history)
    assert result.amp == "fp32"  # CPU
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_interrupted_run_resumes_to_the_same_model(finetuned, prepared_dir, tmp_path):
    reference, _ = finetuned

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(prepared_dir, CFG, run_dir=tmp_path, on_epoch_end=stop_after_first_epoch)
    resumed = finetune(prepared_dir, CFG, run_dir=tmp_path)
    assert resumed.history == reference.history and resumed.best_epoch == reference.best_epoch
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in reference.backbone.finetuned_state().items():
        assert torch.equal(value, resumed.backbone.finetuned_state()[key]), key


def test_saved_model_carries_the_backbone_and_index_build_uses_it(finetuned, prepared_dir, corpus_dir, tmp_path):
    from index.build import BuildConfig, build_index
    from index.store import load_manifest

    result, _ = finetuned
    prepared = load_prepared(prepared_dir)
    model_dir = tmp_path / "model"
    digest = save_finetuned_model(result, prepared, model_dir)
    spec = json.loads((model_dir / "feature_spec.json").read_text())["image"]
    assert spec["finetuned"] is True and spec["unfrozen_blocks"] == UNFREEZE and spec["blocks"] == ["block15", "head"]
    weights = load_file(str(model_dir / "weights.safetensors"))
    saved = {k[len(FINETUNED_BACKBONE_PREFIX) :] for k in weights if k.startswith(FINETUNED_BACKBONE_PREFIX)}
    assert saved == set(result.backbone.block_state_keys(UNFREEZE))

    encoder = load_encoder(model_dir, device="cpu")
    assert encoder.content_hash == digest and encoder.can_encode_images
    images = [load_image(corpus_dir / "images" / f"{name}5.png") for name in COLOURS]
    served = encoder.encode_images(images)
    with torch.no_grad():
        stock = build_image_backbone("efficientnet-lite0")
        batch = stock.preprocess.to_tensor_batch(images)
        via_stock = torch.nn.functional.normalize(result.model.encode_image(stock.extract(batch)), dim=1).numpy()
        via_tuned = torch.nn.functional.normalize(result.model.encode_image(result.backbone.extract(batch)), dim=1).numpy()
    np.testing.assert_allclose(served, via_tuned, atol=1e-5)
    assert np.abs(served - via_stock).max() > 1e-3  # the service would not silently use the stock backbone

    # The content hash covers the backbone tensors: another fine-tuning state is another model.
    other = dataclasses.replace(result, backbone=build_image_backbone("efficientnet-lite0"))
    other.backbone.unfreeze_last_blocks(UNFREEZE)
    assert save_finetuned_model(other, prepared, tmp_path / "other") != digest

    # The prepared feature cache holds the stock backbone's features: a fine-tuned model must not take them.
    assert encoder.image_feature_fingerprint is None
    version = build_index(
        model_dir,
        corpus_dir,
        tmp_path / "index",
        BuildConfig(show_progress=False, feature_cache=prepared_feature_cache(prepared_dir)),
    )
    manifest = load_manifest(version)
    assert manifest["model"]["content_hash"] == digest
    assert manifest["embedding"]["image_features_reused"] == 0
    from index.search import SearchIndex

    index = SearchIndex.load(version, expected_model_hash=digest)
    # red5 is in the corpus, so its served vector finds itself: the index was embedded with the fine-tuned backbone.
    scores, keys = index.search_keys(served[:1], 1, target="image")
    assert keys[0, 0] >= 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_cli_fine_tunes_one_block(prepared_dir, tmp_path, capsys):
    from training.__main__ import main

    common = [
        "finetune",
        "--prepared",
        str(prepared_dir),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "m"), "--unfreeze-blocks", "1"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["epochs_run"] == 1 and report["amp"] == "fp32" and report["test"]["selected_on"] == "val"
    spec = json.loads((tmp_path / "m" / "feature_spec.json").read_text())["image"]
    assert spec["finetuned"] and spec["blocks"] == ["head"]
    assert main([*common, "--out", str(tmp_path / "x"), "--unfreeze-blocks", "99"]) == 2
    assert "cannot unfreeze 99" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_augmentation_crops_inside_the_image_flips_and_is_seeded():
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    for width, height in [(96, 80), (300, 40), (40, 300), (7, 7)]:
        for _ in range(50):
            left, top, w, h = random_resized_crop_box(width, height, cfg, rng)
            assert 0 <= left and 0 <= top and 0 < w and 0 < h and left + w <= width and top + h <= height
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :15] = 255  # white left half
    image = Image.fromarray(pixels)
    whole = AugmentConfig(scale=(1.0, 1.0), ratio=(1.5, 1.5), flip_prob=1.0)
    flipped = np.asarray(augment_image(image, 16, whole, np.random.default_rng(1)))
    assert flipped[:, :6].mean() < 30 and flipped[:, -6:].mean() > 225  # the whole image, mirrored
    a = augment_image(image, 16, cfg, np.random.default_rng([0, 3, 7]))
    b = augment_image(image, 16, cfg, np.random.default_rng([0, 3, 7]))
    assert a.size == (16, 16) and np.array_equal(np.asarray(a), np.asarray(b))
