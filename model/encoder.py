"""A trained model as serving and indexing use it: raw images / texts (or features) in, unit common-space vectors out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from model.artefact import ModelArtefact, ModelArtefactError, load_model, read_model_hash
from model.calibration import CALIBRATION_KEY, ScoreCalibration
from model.config import NetworkConfig, from_dict
from model.network import DSCMRNet

__all__ = ["CrossModalEncoder", "load_encoder", "read_model_hash", "build_network"]


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_text_encoder(text_spec: dict[str, Any], vocab: dict[str, Any] | None) -> nn.Module | None:
    """The learned text encoder a feature spec names (a sentence CNN), or None when the text input is a feature vector."""
    kind = text_spec.get("kind", "features")
    if kind == "sentence_cnn":
        from model.text import SentenceCNN, TextEncoderConfig

        cfg = from_dict(TextEncoderConfig, text_spec["config"])
        if vocab is None:
            raise ModelArtefactError("the model uses a sentence CNN but its directory has no vocab.json")
        return SentenceCNN.from_config(cfg, vocab_size=len(vocab["tokens"]))
    if kind in ("features", "minilm", "muse", "tfidf", "tfidf+muse"):
        return None
    raise ModelArtefactError(f"unknown text encoder kind {kind!r} in the model's feature spec")


def build_network(artefact: ModelArtefact) -> DSCMRNet:
    """Rebuild the DSCMR network of a loaded artefact, with its weights.

    The network's tensors are the artefact's own (assign=True), which safetensors maps from weights.safetensors
    copy-on-write: processes serving one model (uvicorn workers, the indexing job beside the service) share its pages
    instead of each holding a copy, and a network trained further writes private copies of the pages it changes."""
    net_cfg = from_dict(NetworkConfig, artefact.config["network"])
    net = DSCMRNet(net_cfg, text_encoder=build_text_encoder(artefact.feature_spec.get("text", {}), artefact.vocab))
    prefix = _finetuned_prefix(artefact.feature_spec)
    own = net.state_dict()
    state = {
        # assign=True keeps a tensor's dtype, where copying into the module's tensor would cast it
        k: v if k not in own or v.dtype == own[k].dtype else v.to(own[k].dtype)
        for k, v in artefact.state_dict.items()
        if not (prefix and k.startswith(prefix))
    }
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelArtefactError(
            f"model weights do not fit the configured network: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval()


def _finetuned_prefix(feature_spec: dict[str, Any]) -> str | None:
    """Key prefix of the fine-tuned backbone tensors in the weights, or None for a model on a stock backbone."""
    image_spec = feature_spec.get("image", {})
    if not image_spec.get("finetuned"):
        return None
    from model.image_backbones import FINETUNED_BACKBONE_PREFIX

    return image_spec.get("state_prefix", FINETUNED_BACKBONE_PREFIX)


def build_image_backbone_of(artefact: ModelArtefact):
    """The image backbone a model reads raw images with: the pretrained one, with fine-tuned blocks loaded over it."""
    from model.image_backbones import build_image_backbone

    image_spec = artefact.feature_spec.get("image", {})
    backbone = build_image_backbone(image_spec["name"], weights_path=image_spec.get("weights_path"))
    prefix = _finetuned_prefix(artefact.feature_spec)
    if prefix is None:
        return backbone
    expected = image_spec.get("weights_sha256")
    if expected and backbone.weights_sha256 != expected:
        raise ModelArtefactError(
            f"the model fine-tuned {image_spec['name']} weights with sha256 {expected[:12]}..., but the weights found here have "
            f"{backbone.weights_sha256[:12]}...; install the same backbone weights (or set weights_path) or retrain the model"
        )
    tuned = {k[len(prefix) :]: v for k, v in artefact.state_dict.items() if k.startswith(prefix)}
    if not tuned:
        raise ModelArtefactError(
            f"the model says its backbone is fine-tuned but its weights hold no '{prefix}*' tensors; retrain it"
        )
    try:
        backbone.load_finetuned_state(tuned, "the model's weights file")
    except ValueError as exc:
        raise ModelArtefactError(str(exc)) from exc
    return backbone


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=1).cpu().numpy().astype(np.float32)


class CrossModalEncoder:
    """Maps images and texts into the model's common space (L2-normalised float32 rows)."""

    def __init__(self, artefact: ModelArtefact, device: str | None = None, batch_size: int = 64) -> None:
        self.device = _pick_device(device)
        self.content_hash = artefact.content_hash
        self.label_names = list(artefact.label_names)
        self.feature_spec = artefact.feature_spec
        self.metrics = artefact.metrics
        self.calibration = ScoreCalibration.from_dict(artefact.metrics.get(CALIBRATION_KEY))
        self.network = build_network(artefact).to(self.device)
        self.dim = self.network.cfg.common_dim
        self.batch_size = batch_size
        image_spec, text_spec = artefact.feature_spec.get("image", {}), artefact.feature_spec.get("text", {})
        self._backbone = None
        if image_spec.get("kind") == "backbone":
            self._backbone = build_image_backbone_of(artefact).to(self.device)
        self._text_kind = text_spec.get("kind", "features")
        self._tokenize = None
        self._vocab = None
        self._sentence_encoder = None
        self._tfidf = None
        self._tfidf_muse = None
        if self._text_kind == "sentence_cnn":
            from model.text import TextEncoderConfig, Vocabulary

            text_cfg = from_dict(TextEncoderConfig, text_spec["config"])
            vocab = self._vocab = Vocabulary.from_dict(artefact.vocab)
            self._tokenize = lambda texts: vocab.encode(texts, max_len=text_cfg.max_len)
        elif self._text_kind == "minilm":
            from model.text import MiniLMSentenceEncoder

            self._sentence_encoder = MiniLMSentenceEncoder(device=str(self.device))
        elif self._text_kind == "muse":
            from model.text import MultilingualUSEEncoder

            self._sentence_encoder = MultilingualUSEEncoder()
        elif self._text_kind in ("tfidf", "tfidf+muse"):
            from model.tfidf import TfidfTextModel

            if artefact.vocab is None:
                raise ModelArtefactError(
                    "the model uses tf-idf text features but its directory has no vocab.json (the fitted model)"
                )
            self._tfidf = TfidfTextModel.from_dict(artefact.vocab)
            if self._text_kind == "tfidf+muse":
                from model.text import TfidfMuseFeatures

                self._tfidf_muse = TfidfMuseFeatures(self._tfidf)

    @property
    def can_encode_images(self) -> bool:
        """True when the model carries an image backbone (raw pictures can be encoded)."""
        return self._backbone is not None

    @property
    def image_decode_size(self) -> int | None:
        """The draft size JPEGs are decoded at for this model (as `training prepare` decodes them), or None without a backbone.

        Decoding queries and indexed pictures the way the training features were decoded keeps one picture's vector the
        same at training, indexing and query time (a large JPEG drafted at 1/2 to 1/8 scale differs slightly otherwise)."""
        return self._backbone.preprocess.resize if self._backbone is not None else None

    @property
    def image_feature_fingerprint(self) -> str | None:
        """The feature-cache fingerprint of this model's image backbone, or None when cached features cannot stand in for it
        (no backbone, or a fine-tuned one, whose features differ from the pretrained backbone's that a cache holds)."""
        if self._backbone is None or _finetuned_prefix(self.feature_spec) is not None:
            return None
        from model.feature_cache import backbone_fingerprint

        return backbone_fingerprint(self._backbone)

    @property
    def sentence_encoder(self) -> Any:
        """The MiniLM sentence encoder that makes this model's text input (None for other text encoders): the caption
        match reuses it, as its caption vectors are MiniLM's."""
        return self._sentence_encoder if self._text_kind == "minilm" else None

    @property
    def can_encode_texts(self) -> bool:
        """True when the model carries a text encoder (raw sentences can be encoded)."""
        return self._text_kind in ("sentence_cnn", "minilm", "muse", "tfidf", "tfidf+muse")

    @torch.inference_mode()
    def _encode_rows(self, encode, features: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
        if not len(x):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([_unit(encode(x[i : i + 4096])) for i in range(0, len(x), 4096)])

    def encode_image_features(self, features: np.ndarray) -> np.ndarray:
        """Common-space vectors of precomputed backbone features."""
        return self._encode_rows(self.network.encode_image, features)

    def encode_text_features(self, features: np.ndarray) -> np.ndarray:
        """Common-space vectors of precomputed text features (models trained on text feature vectors)."""
        return self._encode_rows(self.network.encode_text, features)

    @torch.inference_mode()
    def image_backbone_features(self, images: Sequence[Any]) -> np.ndarray:
        """Backbone features of decoded RGB images (what `training prepare` caches)."""
        if self._backbone is None:
            raise ModelArtefactError(
                "this model was trained on precomputed image features and has no image backbone; it cannot encode pictures"
            )
        return self._backbone.extract_images(list(images), self.device).float().to(self.device).cpu().numpy()

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Common-space vectors of decoded RGB PIL images."""
        out = []
        for i in range(0, len(images), self.batch_size):
            feats = self._backbone_tensor(images[i : i + self.batch_size])
            out.append(_unit(self.network.encode_image(feats)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def _backbone_tensor(self, images: Sequence[Any]) -> torch.Tensor:
        if self._backbone is None:
            raise ModelArtefactError(
                "this model was trained on precomputed image features and has no image backbone; it cannot encode pictures"
            )
        return self._backbone.extract_images(list(images), self.device).float().to(self.device)

    def warm_up(self) -> None:
        """Load now what the first query would otherwise load: the Chinese segmenter's dictionary when the vocabulary or
        the tf-idf model segments with jieba (seconds, on the first Chinese text otherwise)."""
        from model.text_tokenize import load_segmenter

        if self._vocab is not None:
            load_segmenter(self._vocab.tokenizer)
        if self._tfidf is not None:  # its word n-grams and its unknown-word list both go through the tokenizer
            load_segmenter(self._tfidf.cfg.tokenizer)

    def unknown_words(self, text: str) -> list[str] | None:
        """Words of `text` that the model's vocabulary lacks, in order, once each (None for text encoders without one)."""
        if self._tfidf_muse is not None:
            return self._tfidf_muse.unknown_words(text)
        if self._tfidf is not None:
            return self._tfidf.unknown_words(text)
        if self._vocab is None:
            return None
        # Punctuation tokens are left out: a user reads this list as "words the model did not understand".
        return list(
            dict.fromkeys(
                token for token in self._vocab.tokenize(text) if token not in self._vocab and any(ch.isalnum() for ch in token)
            )
        )

    @torch.inference_mode()
    def encode_text_queries(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        """Common-space vectors of raw texts, each with what makes it unfit to rank by (None when nothing does).

        "no_known_words": the vocabulary knows no token of the text, so the model sees only the unknown-word token (or
        nothing) and its vector says nothing about the text (with MiniLM or the multilingual USE: every piece is unknown;
        with tfidf+muse: both halves know nothing of it). "degenerate_vector": every sentence-CNN map sits at the
        activation's floor on the text (with ReLU: no map fires, an all-zero feature; with ELU: every map far below
        zero), a vector every such text shares, which would rank items by nothing the text says, all with one score. The vectors are returned either way.
        """
        texts = list(texts)
        if self._tfidf_muse is not None:
            readable = self._tfidf_muse.readable(texts)
            return self.encode_texts(texts), [None if r else "no_known_words" for r in readable]
        if self._tfidf is not None:
            known = self._tfidf.known_features(texts)
            return self.encode_texts(texts), [None if k else "no_known_words" for k in known]
        if self._sentence_encoder is not None:
            known = self._sentence_encoder.knows_any_piece(texts)
            return self.encode_texts(texts), [None if k else "no_known_words" for k in known]
        if self._tokenize is None:
            return self.encode_texts(texts), [None] * len(texts)
        from model.text_tokenize import OOV_ID

        ids = self._tokenize(texts).to(self.device)
        vectors, problems = [], []
        for i in range(0, len(ids), 1024):
            chunk = ids[i : i + 1024]
            h = self.network.text_feature(chunk)
            vectors.append(_unit(self.network.encode_text_feature(h)))
            known = (chunk > OOV_ID).any(1).tolist()
            silent = self.network.text_encoder.silent_features(h).tolist()
            problems += [
                None if k and not z else ("no_known_words" if not k else "degenerate_vector") for k, z in zip(known, silent)
            ]
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32), problems

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Common-space vectors of raw texts."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._tokenize is not None:
            ids = self._tokenize(texts).to(self.device)
            return np.concatenate([_unit(self.network.encode_text(ids[i : i + 1024])) for i in range(0, len(ids), 1024)])
        if self._sentence_encoder is not None:
            return self.encode_text_features(self._sentence_encoder.encode(texts))
        if self._tfidf_muse is not None:
            return self.encode_text_features(self._tfidf_muse.transform(texts))
        if self._tfidf is not None:
            return self.encode_text_features(self._tfidf.transform(texts))
        raise ModelArtefactError(
            "this model was trained on precomputed text features and has no text encoder; it cannot encode sentences"
        )


def load_encoder(model_dir: str | Path, device: str | None = None) -> CrossModalEncoder:
    """Load a model directory (verifying its checksums) as a ready-to-use encoder."""
    return CrossModalEncoder(load_model(model_dir), device=device)
