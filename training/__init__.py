"""Offline training, evaluation and the retraining job (CLI: dscmr-train, python -m training).

    from training import prepare_corpus, PrepareConfig, train_and_save, preset, run_retrain

    training.prepare     prepare_corpus / load_prepared: features, token ids, splits of a corpus for training
    training.train       train_dscmr: the DSCMR training loop;  training.config  DSCMRConfig, TrainConfig, preset
    training.pipeline    train_and_save (train + save the model artefact), evaluate_model_dir
    training.evaluation  cross-modal mAP and precision;  training.features  FeatureSplits on disk
    training.demo        build_demo: the emoji demo end to end;  training.retrain  the retraining job
    training.finetune    end-to-end training with the image backbone's last blocks

The names below are importable from the package itself; each is loaded on first use. The retraining job and the
fine-tuning run are exported as `run_retrain` and `run_finetune`: `training.retrain` and `training.finetune` are their
modules, and a package attribute named like a submodule is replaced by the module once that is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> (the module that defines it, its name there)
_EXPORTS = {
    "train_dscmr": ("training.train", "train_dscmr"),
    "TrainResult": ("training.train", "TrainResult"),
    "DSCMRConfig": ("training.config", "DSCMRConfig"),
    "TrainConfig": ("training.config", "TrainConfig"),
    "preset": ("training.config", "preset"),
    "prepare_corpus": ("training.prepare", "prepare_corpus"),
    "PrepareConfig": ("training.prepare", "PrepareConfig"),
    "load_prepared": ("training.prepare", "load_prepared"),
    "PreparedData": ("training.prepare", "PreparedData"),
    "FeatureSplits": ("training.features", "FeatureSplits"),
    "load_feature_splits": ("training.features", "load_feature_splits"),
    "save_feature_splits": ("training.features", "save_feature_splits"),
    "train_and_save": ("training.pipeline", "train_and_save"),
    "evaluate_model_dir": ("training.pipeline", "evaluate_model_dir"),
    "cross_modal_map": ("training.evaluation", "cross_modal_map"),
    "mean_average_precision": ("training.evaluation", "mean_average_precision"),
    "build_demo": ("training.demo", "build_demo"),
    "DemoConfig": ("training.demo", "DemoConfig"),
    "run_retrain": ("training.retrain", "retrain"),
    "RetrainConfig": ("training.retrain", "RetrainConfig"),
    "rollback": ("training.retrain", "rollback"),
    "run_finetune": ("training.finetune", "finetune"),
    "FinetuneConfig": ("training.finetune", "FinetuneConfig"),
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from training.config import DSCMRConfig, TrainConfig, preset
    from training.demo import DemoConfig, build_demo
    from training.evaluation import cross_modal_map, mean_average_precision
    from training.features import FeatureSplits, load_feature_splits, save_feature_splits
    from training.finetune import FinetuneConfig
    from training.finetune import finetune as run_finetune
    from training.pipeline import evaluate_model_dir, train_and_save
    from training.prepare import PrepareConfig, PreparedData, load_prepared, prepare_corpus
    from training.retrain import RetrainConfig, rollback
    from training.retrain import retrain as run_retrain
    from training.train import TrainResult, train_dscmr


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    found = _EXPORTS.get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(found[0]), found[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
