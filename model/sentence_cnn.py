"""Kim (2014) sentence CNN as used by DSCMR for text, and the typed config that rebuilds a text encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model.text_tokenize import PAD_ID, TokenizerConfig
from model.tfidf import TfidfConfig

TextEncoderKind = Literal["features", "sentence_cnn", "minilm", "muse", "tfidf", "tfidf+muse"]
TEXT_ENCODER_KINDS = ("features", "sentence_cnn", "minilm", "muse", "tfidf", "tfidf+muse")
MapActivation = Literal["relu", "leaky_relu", "elu"]
MAP_ACTIVATIONS = ("relu", "leaky_relu", "elu")
LEAKY_SLOPE = 0.01
# Vector sources that are not a file path.
NAMED_WORD_VECTORS = ("word2vec", "glove-6b-50d", "random")
GLOVE_6B_50D_DIM = 50
MINILM_DIM = 384
MUSE_DIM = 512


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder a model uses and how to rebuild it.

    kind: "features" (precomputed text vectors go straight into the text branch), "sentence_cnn" (token ids
    through `SentenceCNN`, trained end to end), "minilm" (frozen all-MiniLM-L6-v2 sentence vectors, 384-d, English), "muse"
    (frozen multilingual Universal Sentence Encoder v3 vectors, 512-d, 16 languages; see model.text.MultilingualUSEEncoder), "tfidf"
    (TF-IDF over word and/or character n-grams reduced by SVD, fitted on the training texts: any language; see
    `tfidf` and model/tfidf.py), "tfidf+muse" (both: the tf-idf vector beside the multilingual USE vector, each of unit
    length: the corpus's own words and n-grams with pretrained sentence meaning; model.text.TfidfMuseFeatures).
    word_vectors: "word2vec" (trained on the training texts), "glove-6b-50d" (pretrained primary, with
    corpus word2vec for the words GloVe lacks), "random" (Kim's CNN-rand), or a path to a vector file
    (word2vec .bin/.txt, GloVe text, gensim KeyedVectors) used as primary with corpus word2vec as fallback.
    pretrained_vocab: also put the N most frequent words of the pretrained vectors into the vocabulary (after the
    training words), so that words the training texts never use -- in a query, or a test text -- keep their
    pretrained meaning instead of becoming OOV (0: the training words only; ignored without pretrained vectors).
    word_dropout: in training, each token is blanked (a zero vector) with this probability, so that the network
    cannot lean on a few rare words of a small training set (beyond Kim 2014; 0 = off).
    mean_vector: append the mean word vector of the text to the pooled features (beyond Kim 2014): the topic of a
    short text that no single window captures.
    activation: what follows max-over-time pooling: "elu" (the default, beyond the paper), "relu" (Kim 2014 and the
    paper) or "leaky_relu" (slope 0.01 below zero). With ReLU a feature map whose maximum is negative for every text
    gets no gradient and never fires again (on a 2,193-text corpus about 45% of the maps died, most in the first
    epoch), and a text on which no map fires gets an all-zero feature, the same for all such texts. ELU passes a
    gradient below zero, so a map that stops firing can come back: every map fired at the end of the same runs, at
    the same validation mAP (docs/results-sentence-cnn-maps.md). Configs saved before this field existed were ReLU.
    pool_norm: batch-normalise each map's pooled maximum before the activation (beyond the paper), which keeps every
    map firing for part of each batch.
    """

    kind: TextEncoderKind = "sentence_cnn"
    embed_dim: int = 300
    widths: tuple[int, ...] = (3, 4, 5)
    maps: int = 100
    dropout: float = 0.5
    word_dropout: float = 0.0
    mean_vector: bool = False
    freeze_embeddings: bool = False
    max_len: int = 128
    min_count: int = 2
    max_vocab: int | None = None
    pretrained_vocab: int = 0
    word_vectors: str = "word2vec"
    word2vec_epochs: int = 5
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    activation: MapActivation = "elu"
    pool_norm: bool = False
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)

    SAVED_BEFORE_DEFAULTS: ClassVar[dict[str, object]] = {"activation": "relu"}  # see model.config.from_dict

    def __post_init__(self) -> None:
        if self.kind not in TEXT_ENCODER_KINDS:
            raise ValueError(f"TextEncoderConfig.kind must be one of {TEXT_ENCODER_KINDS}, got {self.kind!r}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive kernel widths, got {self.widths}")
        if self.embed_dim < 1 or self.maps < 1 or self.max_len < 1 or self.min_count < 1:
            raise ValueError("embed_dim, maps, max_len and min_count must all be >= 1")
        if self.pretrained_vocab < 0:
            raise ValueError(f"pretrained_vocab must be >= 0 (0 = training words only), got {self.pretrained_vocab}")
        if self.pretrained_vocab and self.word_vectors in ("word2vec", "random"):
            raise ValueError(
                f"pretrained_vocab needs pretrained word vectors, but word_vectors={self.word_vectors!r} has none: "
                "use glove-6b-50d or a vector file, or leave pretrained_vocab at 0"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"word_dropout must be in [0, 1), got {self.word_dropout}")
        if not self.word_vectors:
            raise ValueError(f"word_vectors must be one of {NAMED_WORD_VECTORS} or a file path")
        if self.activation not in MAP_ACTIVATIONS:
            raise ValueError(f"activation must be one of {MAP_ACTIVATIONS}, got {self.activation!r}")
        if self.word_vectors == "glove-6b-50d" and self.embed_dim != GLOVE_6B_50D_DIM:
            raise ValueError(f"word_vectors='glove-6b-50d' gives 50-d vectors but embed_dim={self.embed_dim}; set embed_dim=50")

    @property
    def output_dim(self) -> int | None:
        """Size of the text feature this encoder produces (None for 'features', 'tfidf' and 'tfidf+muse': the data decides)."""
        if self.kind == "sentence_cnn":
            return self.maps * len(self.widths) + (self.embed_dim if self.mean_vector else 0)
        if self.kind == "minilm":
            return MINILM_DIM
        if self.kind == "muse":
            return MUSE_DIM
        return None


@dataclass(frozen=True)
class MapActivity:
    """How many feature maps of a sentence CNN fire on a set of texts (a map fires on a text when its pooled maximum
    is positive), and how many texts get no firing map at all (an all-zero CNN feature with ReLU)."""

    maps: int
    live: int  # maps that fire on at least one text
    texts: int
    silent_texts: int  # texts on which no map fires

    @property
    def live_fraction(self) -> float:
        return self.live / self.maps if self.maps else 0.0

    @property
    def silent_text_fraction(self) -> float:
        return self.silent_texts / self.texts if self.texts else 0.0


class SentenceCNN(nn.Module):
    """Word embeddings -> parallel 1-D convolutions -> max over time -> activation -> concatenation -> dropout.

    Input: right-padded token ids (N x L, PAD id 0). Only windows that lie inside the real tokens take part
    in the max, so the output does not depend on how much padding follows; a text shorter than a kernel
    is padded (with the zero PAD vector) up to the kernel width and uses that single window.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 300,
        widths: tuple[int, ...] = (3, 4, 5),
        maps: int = 100,
        dropout: float = 0.5,
        pretrained: np.ndarray | None = None,
        freeze_embeddings: bool = False,
        word_dropout: float = 0.0,
        mean_vector: bool = False,
        activation: MapActivation = "elu",
        pool_norm: bool = False,
    ) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (PAD and OOV), got {vocab_size}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be positive kernel widths, got {widths}")
        self.vocab_size, self.embed_dim, self.widths, self.maps = vocab_size, embed_dim, tuple(widths), maps
        self.mean_vector = mean_vector
        self.output_dim = maps * len(self.widths) + (embed_dim if mean_vector else 0)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        if pretrained is not None:
            pretrained = np.asarray(pretrained)
            if pretrained.shape != (vocab_size, embed_dim):
                raise ValueError(
                    f"pretrained embeddings have shape {pretrained.shape}, expected "
                    f"({vocab_size}, {embed_dim}) = (vocab size, embed_dim)"
                )
            if not np.isfinite(pretrained).all():
                raise ValueError("pretrained embeddings contain NaN or inf")
            with torch.no_grad():
                self.embedding.weight.copy_(torch.from_numpy(pretrained.astype(np.float32)))
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()  # padding windows must see exactly zero input
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, maps, kernel_size=w) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.word_dropout = word_dropout
        if activation not in MAP_ACTIVATIONS:
            raise ValueError(f"activation must be one of {MAP_ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        # affine=False: a learned shift could drive a map below zero for every text again
        self.pool_norm = nn.BatchNorm1d(maps * len(self.widths), affine=False) if pool_norm else None

    @classmethod
    def from_config(cls, cfg: TextEncoderConfig, vocab_size: int, pretrained: np.ndarray | None = None) -> SentenceCNN:
        """The SentenceCNN `cfg` describes (weights random or `pretrained`; load a state dict to restore one)."""
        if cfg.kind != "sentence_cnn":
            raise ValueError(f"TextEncoderConfig.kind is {cfg.kind!r}; only 'sentence_cnn' builds a SentenceCNN")
        return cls(
            vocab_size,
            cfg.embed_dim,
            cfg.widths,
            cfg.maps,
            cfg.dropout,
            pretrained,
            cfg.freeze_embeddings,
            cfg.word_dropout,
            cfg.mean_vector,
            cfg.activation,
            cfg.pool_norm,
        )

    @property
    def freeze_embeddings(self) -> bool:
        """Whether the word embeddings are fixed (Kim's CNN-static) or fine-tuned (CNN-non-static)."""
        return not self.embedding.weight.requires_grad

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """N x L token ids -> N x output_dim sentence features."""
        pooled, mean = self._pooled(token_ids)
        if self.pool_norm is not None:
            pooled = self.pool_norm(pooled)
        if self.activation == "relu":
            pooled = F.relu(pooled)
        elif self.activation == "leaky_relu":
            pooled = F.leaky_relu(pooled, LEAKY_SLOPE)
        else:
            pooled = F.elu(pooled)
        return self.dropout(torch.cat([pooled, mean], 1) if mean is not None else pooled)

    def silent_features(self, features: torch.Tensor, tolerance: float = 1e-6) -> torch.Tensor:
        """Per row of `forward`'s output (eval mode): True when every map sits at the activation's floor (0 for ReLU,
        -1 for ELU; leaky ReLU has none) and the mean word vector, if any, is zero: the feature then says nothing of
        the text, and every such text gets the same one."""
        maps = self.maps * len(self.widths)
        if self.activation == "relu":
            at_floor = (features[:, :maps] == 0).all(1)
        elif self.activation == "elu":
            at_floor = ((features[:, :maps] + 1).abs() <= tolerance).all(1)
        else:
            return torch.zeros(len(features), dtype=torch.bool, device=features.device)
        return at_floor & (features[:, maps:] == 0).all(1)

    @torch.no_grad()
    def map_activity(self, token_ids: torch.Tensor, batch_size: int = 1024) -> MapActivity:
        """Which maps fire (a positive activation after pooling and normalisation) on the texts `token_ids`, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            fired = torch.zeros(self.maps * len(self.widths), dtype=torch.bool, device=token_ids.device)
            silent = 0
            for i in range(0, len(token_ids), batch_size):
                pooled, _ = self._pooled(token_ids[i : i + batch_size])
                if self.pool_norm is not None:
                    pooled = self.pool_norm(pooled)
                positive = pooled > 0
                fired |= positive.any(0)
                silent += int((~positive.any(1)).sum())
        finally:
            self.train(was_training)
        return MapActivity(maps=len(fired), live=int(fired.sum()), texts=len(token_ids), silent_texts=silent)

    def _pooled(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(max-over-time pooled maps before the activation, N x maps*widths; mean word vector or None)."""
        if token_ids.dim() != 2 or token_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"SentenceCNN expects an integer tensor N x L of token ids, got {tuple(token_ids.shape)} {token_ids.dtype}"
            )
        # Checked here because an out-of-range id on CUDA surfaces only as an opaque device-side assert.
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}); got range "
                f"[{int(token_ids.min())}, {int(token_ids.max())}] — was the text encoded with this "
                "model's vocabulary?"
            )
        positions = torch.arange(1, token_ids.shape[1] + 1, device=token_ids.device)
        # Length = last non-pad position, so a stray inner pad is just a zero vector, not the end of the text.
        lengths = torch.where(token_ids != PAD_ID, positions, torch.zeros_like(positions)).amax(1)
        if self.training and self.word_dropout > 0:
            # blanked tokens become inner pads (zero vectors); the text keeps its length
            blank = torch.rand(token_ids.shape, device=token_ids.device) < self.word_dropout
            token_ids = token_ids.masked_fill(blank, PAD_ID)
        # Pads are zeroed here rather than trusted to the PAD row (zero only while padding_idx guards it in training),
        # so that a text's vector never depends on how much padding its batch needed.
        x = self.embedding(token_ids.long()).masked_fill((token_ids == PAD_ID)[..., None], 0.0)
        shortfall = max(self.widths) - x.shape[1]
        if shortfall > 0:
            x = F.pad(x, (0, 0, 0, shortfall))
        x = x.transpose(1, 2)  # N x E x L for Conv1d
        pooled = []
        for width, conv in zip(self.widths, self.convs):
            feature_map = conv(x)  # N x maps x (L - width + 1)
            last_start = (lengths - width).clamp_min(0)
            starts = torch.arange(feature_map.shape[2], device=x.device)
            outside = starts[None, :] > last_start[:, None]
            feature_map = feature_map.masked_fill(outside[:, None, :], float("-inf"))
            pooled.append(feature_map.amax(2))  # the (monotone) activation commutes with max: applied after pooling
        mean = None
        if self.mean_vector:
            # Pads are zero, so the sum over all positions is the sum over the tokens; dividing by the tokens left
            # after word dropout keeps training and evaluation on the same scale
            kept = (token_ids != PAD_ID).sum(1).clamp_min(1).to(x.dtype)
            mean = x.sum(2) / kept[:, None]
        return torch.cat(pooled, 1), mean


def sentence_cnn_from_config(cfg: TextEncoderConfig, vocab_size: int, pretrained: np.ndarray | None = None) -> SentenceCNN:
    """Function form of `SentenceCNN.from_config`."""
    return SentenceCNN.from_config(cfg, vocab_size, pretrained)
