"""Stage functions behind the CLI: train-and-save and evaluate a model directory."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.artefact import load_model
from model.calibration import CALIBRATION_KEY
from model.encoder import build_network
from training.config import DSCMRConfig
from training.distributed import is_main_process
from training.evaluation import instance_groups, precision_at_k, precision_recall_curve
from training.features import FeatureSplits
from training.train import (
    MAP_UNDEFINED_NOTE,
    _to_tensor,
    encode_split,
    evaluate_split,
    features_spec,
    finite_or_none,
    resolve_device,
    save_trained_model,
    train_dscmr,
)

log = logging.getLogger(__name__)
# Below this fraction of live sentence-CNN maps the trained model's metrics come with a warning.
LIVE_MAPS_WARNING = 0.5


def selected_map_activity(model, data: FeatureSplits) -> dict[str, Any] | None:
    """The selected model's sentence-CNN feature maps on the training texts (None without token input or maps), with a
    warning when most maps never fire: their texts' features then rest on a few maps, and texts on which none fires
    share one all-zero feature."""
    encoder = model.text_encoder
    if not data.text_is_tokens or encoder is None or not hasattr(encoder, "map_activity"):
        return None
    device = next(model.parameters()).device
    activity = encoder.map_activity(_to_tensor(data.train.text, device, True))
    record = {
        "split": "train",
        "maps": activity.maps,
        "live": activity.live,
        "live_fraction": round(activity.live_fraction, 4),
        "texts": activity.texts,
        "silent_texts": activity.silent_texts,
    }
    if activity.live_fraction < LIVE_MAPS_WARNING:
        log.warning(
            "only %d of %d text feature maps fire on any training text (%d texts get no firing map)%s",
            activity.live,
            activity.maps,
            activity.silent_texts,
            "" if encoder.activation == "elu" else f" with {encoder.activation}: consider --map-activation elu",
        )
    return record


def train_and_save(
    data: FeatureSplits, cfg: DSCMRConfig, out_dir: str | Path, run_dir: str | Path | None = None, prepared=None
) -> dict[str, Any]:
    """Train on `data` (validation-selected), evaluate on val and test, and write the model directory."""
    text_encoder = prepared.build_text_encoder() if prepared is not None else None
    result = train_dscmr(data, cfg, run_dir=run_dir, text_encoder=text_encoder)
    if not is_main_process():
        return {"rank": int(os.environ.get("RANK", "0")), "note": "non-zero rank: rank 0 saves the model"}
    test, test_recall = evaluate_split(result.model, data, "test")
    metrics = {
        "test": {
            "i2t": finite_or_none(test.i2t),
            "t2i": finite_or_none(test.t2i),
            "avg": finite_or_none(test.avg),
            "recall": test_recall.as_dict(),
            "split": "test",
            "selected_on": "val",
            **({} if data.has_labels else {"map_note": MAP_UNDEFINED_NOTE}),
        },
        "dataset": data.name,
        # results depend on the thread count (float sums in another order): recorded with every saved model
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": str(next(result.model.parameters()).device),
        },
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
    }
    maps = selected_map_activity(result.model, data)
    if maps is not None:
        metrics["text_maps"] = maps
    calibration = validation_calibration(result.model, data, cfg.train.seed)
    if calibration is not None:
        metrics[CALIBRATION_KEY] = calibration.to_dict()
    if prepared is not None:
        spec, vocab = prepared.feature_spec(), prepared.vocab_dict()
        metrics["prepared_hash"] = prepared.content_hash
    else:
        spec, vocab = features_spec(data.train.image.shape[1], data.train.text.shape[1]), None
    digest = save_trained_model(result, out_dir, data.label_names, spec, vocab=vocab, metrics=metrics)
    return {
        "model_dir": str(out_dir),
        "content_hash": digest,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": round(result.wall_s, 2),
        "val": {
            "i2t": finite_or_none(result.best_val.i2t),
            "t2i": finite_or_none(result.best_val.t2i),
            "avg": finite_or_none(result.best_val.avg),
            "recall": result.best_val_recall.as_dict() if result.best_val_recall is not None else None,
        },
        "selection": {"criterion": result.config.train.select_on, "score": result.best_score},
        "test": metrics["test"],
        "loss_terms": result.extra.get("loss_terms"),
    }


REFIT_NOTE = (
    "refit on every item (train + val + test) for the epoch count chosen on validation; val / test / selection / "
    "calibration are the figures of its held-out twin, the same setting trained on the train split"
)


def refit_and_save(
    data: FeatureSplits,
    cfg: DSCMRConfig,
    out_dir: str | Path,
    heldout_dir: str | Path,
    run_dir: str | Path | None = None,
    prepared=None,
) -> dict[str, Any]:
    """Train `cfg` again on every item for the held-out twin's best epoch count and save it; returns the report.

    The served model then knows every pair it indexes (without this, the items of the validation and test splits are
    pairs the model never saw). Nothing is held out from it, so it carries its twin's held-out figures and calibration.
    """
    twin = load_model(heldout_dir)
    epochs = int(twin.metrics["best_epoch"])
    refit_cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, epochs=max(1, epochs), early_stopping_patience=None, keep="last")
    )
    text_encoder = prepared.build_text_encoder() if prepared is not None else None
    everything = data.with_every_item_in_train()
    result = train_dscmr(everything, refit_cfg, run_dir=run_dir, text_encoder=text_encoder)
    if not is_main_process():
        return {"rank": int(os.environ.get("RANK", "0")), "note": "non-zero rank: rank 0 saves the model"}
    inherited = {
        k: twin.metrics[k] for k in ("val", "test", "selection", CALIBRATION_KEY, "dataset", "prepared_hash") if k in twin.metrics
    }
    metrics = {
        **inherited,
        "n_train": len(everything.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "refit": {
            "items": len(everything.train),
            "epochs": refit_cfg.train.epochs,
            "heldout_model": twin.content_hash,
            "note": REFIT_NOTE,
        },
    }
    if prepared is not None:
        spec, vocab = prepared.feature_spec(), prepared.vocab_dict()
    else:
        spec, vocab = features_spec(data.train.image.shape[1], data.train.text.shape[1]), None
    digest = save_trained_model(result, out_dir, data.label_names, spec, vocab=vocab, metrics=metrics)
    return {
        "model_dir": str(out_dir),
        "content_hash": digest,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": round(result.wall_s, 2),
        "refit": metrics["refit"],
        "val": inherited.get("val"),
        "test": inherited.get("test"),
    }


def validation_calibration(model, data: FeatureSplits, seed: int = 0):
    """The per-direction score calibration (model/calibration.py) of `model`, fitted on the validation split.

    Data without labels gets the cross-modal directions only, fitted on the pairs (training/calibration.py:
    fit_pair_calibration)."""
    from training.calibration import fit_pair_calibration, fit_score_calibration

    if not data.has_labels:
        dev = next(model.parameters()).device
        s = data.split("val")
        u, v = encode_split(model, _to_tensor(s.image, dev), _to_tensor(s.text, dev, data.text_is_tokens))
        return fit_pair_calibration(u.cpu().numpy(), v.cpu().numpy(), instance_groups(s.text), seed=seed)

    dev = next(model.parameters()).device
    encoded = {}
    for split in ("val", "train"):
        s = data.split(split)
        u, v = encode_split(model, _to_tensor(s.image, dev), _to_tensor(s.text, dev, data.text_is_tokens))
        known = s.labels.sum(1) > 0  # with labels on some items only, relevance is known among those
        encoded[split] = (u.cpu().numpy()[known], v.cpu().numpy()[known], s.labels[known])
        calibration = fit_score_calibration(
            *(np.concatenate([part[i] for part in encoded.values()]) for i in range(3)), seed=seed
        )
        if calibration is not None:
            # a validation split too small to hold relevant pairs in every direction borrows the training items (whose
            # scores run a little high: the fit says so in fitted_on)
            return dataclasses.replace(calibration, fitted_on="+".join(encoded))
    return None


def evaluate_model_dir(model_dir: str | Path, data: FeatureSplits, split: str, device: str = "auto") -> dict[str, Any]:
    """mAP both ways, precision@k and the PR curve of a saved model on one split of `data`."""
    artefact = load_model(model_dir)
    if list(artefact.label_names) != list(data.label_names):
        raise ValueError(f"the model's classes {artefact.label_names} differ from the data's {data.label_names}")
    net = build_network(artefact).to(resolve_device(device))
    scores, recall = evaluate_split(net, data, split)
    s = data.split(split)
    dev = next(net.parameters()).device
    with torch.no_grad():
        u, v = encode_split(net, _to_tensor(s.image, dev), _to_tensor(s.text, dev, data.text_is_tokens))
    u, v = u.cpu().numpy(), v.cpu().numpy()
    common = {
        "split": split,
        "n_queries": len(s),
        "recall": recall.as_dict(),
        "instances": int(len(set(instance_groups(s.text).tolist()))),
        "model_hash": artefact.content_hash,
    }
    if not data.has_labels:
        # nothing is relevant to anything by label: mAP, precision@k and the PR curve are undefined, recall is the measure
        return {
            "i2t": None,
            "t2i": None,
            "avg": None,
            "map_note": MAP_UNDEFINED_NOTE,
            **common,
            "precision_at_k": None,
            "precision_at_k_t2i": None,
            "pr_curve_i2t": None,
            "pr_curve_t2i": None,
        }
    labels = s.labels
    if not (labels.sum(1) > 0).all():
        known = labels.sum(1) > 0  # precision and the PR curve over the items that have a label, like mAP
        u, v, labels = u[known], v[known], labels[known]
        common["map_over"] = f"{int(known.sum())} labelled items of {len(known)}"
    p_i2t = precision_at_k(u, v, labels, labels)
    return {
        "i2t": scores.i2t,
        "t2i": scores.t2i,
        "avg": scores.avg,
        **common,
        "precision_at_k": {str(k): val for k, val in p_i2t.items()},
        "precision_at_k_t2i": {str(k): val for k, val in precision_at_k(v, u, labels, labels).items()},
        "pr_curve_i2t": precision_recall_curve(u, v, labels, labels),
        "pr_curve_t2i": precision_recall_curve(v, u, labels, labels),
    }
