"""Training configuration and named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from model.config import LossConfig, NetworkConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, selection and run-control settings (the released code's values by default)."""

    epochs: int = 500
    batch_size: int = 100
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    early_stopping_patience: int | None = None
    checkpoint_every: int = 10
    device: str = "auto"
    amp: bool = True
    progress: bool = True
    # Under torchrun: "global" compares each process's items with the whole all-gathered batch in J2 (the same
    # objective as one process with that batch; default), "local" only with the process's own share (cheaper).
    j2_scope: Literal["global", "local"] = "global"
    # What "best epoch" means on validation: average mAP over labels (the paper's metric), average R@10 of each query's
    # own pair (what a search user feels), or the mean of the two.
    select_on: Literal["map", "r10", "mean"] = "map"
    # "best": the epoch the criterion prefers on validation; "last": the final epoch (a refit on every item, whose
    # epoch count was chosen on validation beforehand, has no held-out data left to choose on).
    keep: Literal["best", "last"] = "best"
    # Learning rate of a trained text encoder (the sentence CNN and its word vectors) relative to `lr`. Adam moves every
    # weight by about lr a step whatever its gradient's size, which for the CNN's small convolution weights (±0.03 at
    # initialisation) is large: with 1.0 and ReLU many feature maps stop firing for good within the first epoch. 0.3
    # kept more of them live (0.668 against 0.548), ELU all of them, so ELU is the default remedy and this stays 1.0
    # (docs/results-sentence-cnn-maps.md).
    text_lr_scale: float = 1.0


@dataclass(frozen=True)
class DSCMRConfig:
    """Everything that defines a DSCMR training run."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _preset_paper() -> DSCMRConfig:
    return DSCMRConfig()


def _preset_wiki_tuned() -> DSCMRConfig:
    # Chosen on the Wikipedia validation split only (sweep of input norm, dropout, lr schedule, loss weights):
    # a 10x learning rate with cosine decay over 150 epochs gave the best validation mAP (0.281 vs 0.262 standardised).
    return DSCMRConfig(
        network=NetworkConfig(input_norm="none", input_dropout=0.0, hidden_dropout=0.0),
        loss=LossConfig(),
        train=TrainConfig(epochs=150, lr=1e-3, lr_schedule="cosine"),
    )


PRESETS = {"paper": _preset_paper, "wiki-tuned": _preset_wiki_tuned}


def preset(name: str, **train_overrides) -> DSCMRConfig:
    """A named configuration ('paper' = the paper's / released code's defaults), with optional TrainConfig overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train_overrides)) if train_overrides else cfg


def with_dims(cfg: DSCMRConfig, image_dim: int, text_dim: int, num_classes: int) -> DSCMRConfig:
    """`cfg` with the input sizes and class count of a dataset filled in."""
    net = dataclasses.replace(cfg.network, image_input_dim=image_dim, text_input_dim=text_dim, num_classes=num_classes)
    return dataclasses.replace(cfg, network=net)


# Instance-term weight of a run on data without labels when the configuration sets none (the emoji demo's default weight).
LABEL_FREE_INSTANCE_WEIGHT = 1.0


def loss_terms(cfg: DSCMRConfig) -> dict[str, object]:
    """Which terms of the objective a configuration trains, and their weights (for logs and saved reports)."""
    loss = cfg.loss
    return {
        "j1": loss.use_j1,
        "j2": loss.use_j2,
        "j3": loss.use_j3,
        "lambda_j2": loss.lambda_j2,
        "eta_j3": loss.eta_j3,
        "instance": loss.instance_weight > 0,
        "instance_weight": loss.instance_weight,
        "select_on": cfg.train.select_on,
    }


def fit_to_labels(cfg: DSCMRConfig, has_labels: bool, partial: bool = False) -> tuple[DSCMRConfig, str]:
    """`cfg` with the loss terms and the selection criterion the data supports, and one line saying which.

    With labels nothing changes. Without labels J1 (label space) and J2 (label relevance) have nothing to learn from, so
    they are switched off; J3 and the instance term (each image nearer its own text than the batch's other texts) train
    on the pairs alone, the instance term at LABEL_FREE_INSTANCE_WEIGHT when the configuration sets no weight; and the
    kept epoch is chosen on validation R@10 of each query's own pair (ties broken by its mean reciprocal rank), since mAP
    over labels is undefined.

    With labels on some items only (`partial`), J1 and J2 count the labelled items, J3 and the instance term (at
    LABEL_FREE_INSTANCE_WEIGHT when none is set) train every pair, and mAP is measured over the labelled items.
    """
    if has_labels and partial:
        weight = cfg.loss.instance_weight if cfg.loss.instance_weight > 0 else LABEL_FREE_INSTANCE_WEIGHT
        fitted = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, instance_weight=weight))
        t = loss_terms(fitted)
        on = [name for name, key in (("J1", "j1"), ("J2", "j2")) if t[key]]
        rest = (["J3"] if t["j3"] else []) + [f"instance term (weight {weight:g})"]
        return fitted, (
            f"data with labels on some items: loss terms {' + '.join(on) or 'none'} over the labelled items, "
            f"{' + '.join(rest)} over every pair; kept epoch chosen on validation {cfg.train.select_on} (mAP over "
            "the labelled items)" + ("" if cfg.loss.instance_weight > 0 else f" [instance weight {weight:g} (none was set)]")
        )
    if has_labels:
        t = loss_terms(cfg)
        on = [name for name, key in (("J1", "j1"), ("J2", "j2"), ("J3", "j3"), ("instance term", "instance")) if t[key]]
        return (
            cfg,
            f"data with labels: loss terms {' + '.join(on) or 'none'}; kept epoch chosen on validation {cfg.train.select_on}",
        )
    weight = cfg.loss.instance_weight if cfg.loss.instance_weight > 0 else LABEL_FREE_INSTANCE_WEIGHT
    loss = dataclasses.replace(cfg.loss, use_j1=False, use_j2=False, instance_weight=weight)
    fitted = dataclasses.replace(cfg, loss=loss, train=dataclasses.replace(cfg.train, select_on="r10"))
    terms = " + ".join(["J3"] if loss.use_j3 else []) + (" + " if loss.use_j3 else "") + f"instance term (weight {weight:g})"
    changed = []
    if cfg.loss.use_j1 or cfg.loss.use_j2:
        changed.append("J1 and J2 off (they need labels)")
    if cfg.loss.instance_weight <= 0:
        changed.append(f"instance weight {weight:g} (none was set)")
    if cfg.train.select_on != "r10":
        changed.append(f"selection on r10 instead of {cfg.train.select_on} (mAP needs labels)")
    return fitted, (
        f"data without labels: loss terms {terms}; kept epoch chosen on validation R@10 (ties: MRR)"
        + (f" [{'; '.join(changed)}]" if changed else "")
    )
