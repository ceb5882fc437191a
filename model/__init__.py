"""Networks, encoders, corpora and the saved-model format, for training/, index/ and app/ (it imports none of them).

    from model import load_encoder, load_model, load_corpus

    model.encoder   load_encoder / CrossModalEncoder: a saved model as an image and text encoder (index build, service)
    model.artefact  the saved-model format: save_model / load_model / read_model_hash, ModelArtefact
    model.corpus    Corpus / Item: a prepared corpus on disk (load_corpus / save_corpus)
    model.network   DSCMRNet;  model.config  NetworkConfig, LossConfig;  model.losses  the DSCMR losses

The names below are importable from the package itself; each is loaded on first use, so importing a light module
(model.corpus, model.config) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "load_encoder": "model.encoder",
    "CrossModalEncoder": "model.encoder",
    "load_model": "model.artefact",
    "save_model": "model.artefact",
    "read_model_hash": "model.artefact",
    "ModelArtefact": "model.artefact",
    "ModelArtefactError": "model.artefact",
    "Corpus": "model.corpus",
    "Item": "model.corpus",
    "load_corpus": "model.corpus",
    "save_corpus": "model.corpus",
    "DSCMRNet": "model.network",
    "NetworkConfig": "model.config",
    "LossConfig": "model.config",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from model.artefact import ModelArtefact, ModelArtefactError, load_model, read_model_hash, save_model
    from model.config import LossConfig, NetworkConfig
    from model.corpus import Corpus, Item, load_corpus, save_corpus
    from model.encoder import CrossModalEncoder, load_encoder
    from model.network import DSCMRNet


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
