"""The DSCMR network: two modality branches, one shared common-space layer and a linear classifier."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from model.config import NetworkConfig


class InputNormalizer(nn.Module):
    """Per-dimension standardisation or L2 normalisation of raw input features, stored with the model."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("none", "l2", "standardize"):
            raise ValueError(f"input_norm must be 'none', 'l2' or 'standardize', got {mode!r}")
        self.mode = mode
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Set the standardisation statistics from training features (rows = items)."""
        if self.mode != "standardize":  # only standardisation uses the statistics
            return
        features = features.float()
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return x
        if self.mode == "l2":
            return F.normalize(x, dim=1) * (x.shape[1] ** 0.5)
        return (x - self.mean) / self.std


def _branch(input_dim: int, cfg: NetworkConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Dropout(cfg.input_dropout),
        nn.Linear(input_dim, cfg.hidden_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(cfg.hidden_dropout),
    )


class DSCMRNet(nn.Module):
    """Image branch and text branch FC(d -> 2048)+ReLU, a single shared FC(2048 -> 1024), classifier 1024 -> c.

    `text_encoder`, when given, maps raw text input (for example token ids through a sentence CNN)
    to the text feature h_txt of size `cfg.text_input_dim`; without it the text input is already h_txt.
    """

    def __init__(self, cfg: NetworkConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_norm = InputNormalizer(cfg.image_input_dim, cfg.input_norm)
        # A learned text encoder produces its own scale; normalising its output would fight it.
        self.text_norm = InputNormalizer(cfg.text_input_dim, "none" if text_encoder is not None else cfg.input_norm)
        self.text_encoder = text_encoder
        self.image_branch = _branch(cfg.image_input_dim, cfg)
        self.text_branch = _branch(cfg.text_input_dim, cfg)
        self.shared = nn.Linear(cfg.hidden_dim, cfg.common_dim)
        with warnings.catch_warnings():  # a corpus without labels has no classes: an empty classifier, never used
            warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
            self.classifier = nn.Linear(cfg.common_dim, cfg.num_classes)

    def encode_image(self, image_features: torch.Tensor) -> torch.Tensor:
        """Common-space representation u of backbone image features."""
        return self.shared(self.image_branch(self.image_norm(image_features)))

    def encode_text(self, text_input: torch.Tensor) -> torch.Tensor:
        """Common-space representation v of a text feature (or token ids when a text encoder is set)."""
        return self.encode_text_feature(self.text_feature(text_input))

    def text_feature(self, text_input: torch.Tensor) -> torch.Tensor:
        """h_txt: the text encoder's output for token ids, or the text feature itself when there is no text encoder."""
        return self.text_encoder(text_input) if self.text_encoder is not None else text_input

    def encode_text_feature(self, h: torch.Tensor) -> torch.Tensor:
        """Common-space representation v of a text feature h_txt."""
        return self.shared(self.text_branch(self.text_norm(h)))

    def forward(self, image_features: torch.Tensor, text_input: torch.Tensor):
        """Return (u, v, P^T u, P^T v)."""
        u = self.encode_image(image_features)
        v = self.encode_text(text_input)
        return u, v, self.classifier(u), self.classifier(v)

    def fit_input_norm(self, image_features: torch.Tensor, text_features: torch.Tensor | None) -> None:
        """Fit the input standardisation on training features (no-op for input_norm='none')."""
        if self.cfg.input_norm == "none":
            return
        self.image_norm.fit(image_features)
        if self.text_encoder is None and text_features is not None:
            self.text_norm.fit(text_features)
