"""End-to-end DSCMR training, as in the paper: the image backbone's last blocks are fine-tuned (at a lower learning
rate, on augmented raw images) together with the text branch and the DSCMR heads, instead of training on cached
backbone features.

Inputs are a prepared-data folder (token ids / sentence vectors, labels, splits, ids) and its corpus (image paths).
The epoch with the best validation mAP is kept; with `run_dir` a checkpoint is written every `checkpoint_every`
epochs and resumed. The augmentation of item r in epoch e is seeded by (seed, e, r) and the epoch order by
(seed, e), so a resumed run, or one with another number of loader workers, sees exactly the same batches.

The saved model carries the fine-tuned backbone: its feature spec says {"kind": "backbone", ..., "finetuned": true}
and the unfrozen blocks' tensors sit in the model's weights file under `FINETUNED_BACKBONE_PREFIX`, so the content
hash covers them and `model.encoder` (index build, the service) loads them over the pretrained backbone.
Meant for GPU hosts (AMP, pinned-memory loader workers); it runs on CPU, slowly, for small corpora and tests.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from model.config import to_dict
from model.corpus import load_corpus
from model.image_backbones import FINETUNED_BACKBONE_PREFIX, ImageBackbone, ImagePreprocess, build_image_backbone
from model.image_io import ImageDecodeError, load_image
from model.losses import dscmr_loss
from model.network import DSCMRNet
from training.augment import AugmentConfig, augment_image
from training.config import DSCMRConfig, preset, with_dims
from training.evaluation import CrossModalScores, cross_modal_map_torch
from training.prepare import PreparedData, load_prepared
from training.train import (
    MAP_ACTIVITY_TEXTS,
    METRICS_LOG,
    _amp_context,
    _atomic_torch_save,
    _to_tensor,
    amp_mode,
    backward_and_step,
    build_model,
    check_device,
    make_adam,
    record_epoch,
    resolve_device,
    seed_everything,
    text_map_fields,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "finetune_checkpoint.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    """The DSCMR run (network / loss / optimiser settings) plus what is fine-tuned in the backbone and how."""

    dscmr: DSCMRConfig = field(default_factory=lambda: preset("wiki-tuned", epochs=30))
    unfreeze_blocks: int = 2
    backbone_lr_scale: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    workers: int = 2
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.unfreeze_blocks < 0:
            raise ValueError(f"unfreeze_blocks must be >= 0, got {self.unfreeze_blocks}")
        if not self.backbone_lr_scale > 0:
            raise ValueError(f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale}")
        if self.dscmr.loss.classifier_update != "gradient":
            raise ValueError(
                "fine-tuning trains the classifier by gradient; the ridge closed form is for cached-feature training"
            )


@dataclass
class FinetuneResult:
    """The selected network and fine-tuned backbone, and how they were selected."""

    model: DSCMRNet
    backbone: ImageBackbone
    config: DSCMRConfig
    best_epoch: int
    best_val: CrossModalScores
    history: list[dict[str, Any]]
    wall_s: float
    epochs_run: int
    amp: str
    skipped_images: list[str] = field(default_factory=list)


class _ImageRows(Dataset):
    """Decoded, preprocessed images of one split, addressed by (epoch, row): augmented when `augment` is set."""

    def __init__(self, paths: list[str], preprocess: ImagePreprocess, augment: AugmentConfig | None, seed: int) -> None:
        self.paths = paths
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.resample = Image.Resampling[preprocess.resample.upper()]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]):
        epoch, row = key
        try:
            image = load_image(self.paths[row], draft_size=self.preprocess.resize)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping image %s in this batch: %s", self.paths[row], exc)
            return None
        if self.augment is None:
            pixels = self.preprocess.resize_and_crop(image)
        else:
            pixels = augment_image(
                image, self.preprocess.crop, self.augment, np.random.default_rng([self.seed, epoch, row]), self.resample
            )
        return row, self.preprocess.normalise([pixels])[0]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, images) of the decodable items of a batch; None when none was."""
    good = [b for b in batch if b is not None]
    if not good:
        return None
    return torch.tensor([row for row, _ in good], dtype=torch.long), torch.stack([img for _, img in good])


class _EpochOrder(Sampler):
    """Keys (epoch, row) in a permutation seeded by (seed, epoch); `epoch` is set before each pass."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        return iter([(self.epoch, int(r)) for r in order])


def _loader(dataset: _ImageRows, sampler: _EpochOrder, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _image_paths(prepared: PreparedData, corpus_dir: str | Path | None) -> dict[str, str]:
    """Item id -> image path for every prepared item, from the corpus the data was prepared from (or `corpus_dir`)."""
    corpus_path = Path(corpus_dir) if corpus_dir is not None else Path(prepared.manifest["corpus_dir"])
    corpus = load_corpus(corpus_path)
    paths = {it.id: it.image_path for it in corpus.items if it.image_path}
    missing = [i for i in prepared.manifest["ids"] if i not in paths]
    if missing:
        raise ValueError(
            f"the corpus at {corpus_path} lacks (images of) items {missing[:5]} of the prepared data in "
            f"{prepared.directory}; pass the corpus it was prepared from (--corpus) or prepare again"
        )
    return paths


@torch.no_grad()
def _encode_images(
    model: DSCMRNet, backbone: ImageBackbone, loader: DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, common-space vectors) of a split's decodable images, centre-cropped, in eval mode and fp32."""
    was_training = model.training
    model.eval()
    rows, vectors = [], []
    for batch in loader:
        if batch is None:
            continue
        r, images = batch
        rows.append(r.to(device, non_blocking=True))
        vectors.append(model.encode_image(backbone(images.to(device, non_blocking=True))).float())
    model.train(was_training)
    if not rows:
        raise ValueError("no image of the split could be decoded; check the corpus image paths")
    return torch.cat(rows), torch.cat(vectors)


def _split_scores(model, backbone, loader, text: torch.Tensor, labels: torch.Tensor, device) -> CrossModalScores:
    rows, u = _encode_images(model, backbone, loader, device)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        v = torch.cat([model.encode_text(text[i : i + 1024]) for i in range(0, len(text), 1024)]).float()
        model.train(was_training)
    return cross_modal_map_torch(u, v[rows], labels[rows])


def finetune(
    prepared_dir: str | Path,
    cfg: FinetuneConfig = FinetuneConfig(),
    run_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneResult:
    """Fine-tune backbone + text branch + DSCMR heads on a prepared corpus; keep the best validation epoch."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("finetune runs in a single process (one GPU); run it without torchrun")
    prepared = load_prepared(prepared_dir)
    data = prepared.feature_splits()
    data.validate()
    image_spec = prepared.manifest["image"]
    tc = cfg.dscmr.train
    device = resolve_device(tc.device)
    check_device(tc.device, device)
    seed_everything(tc.seed)

    backbone = build_image_backbone(image_spec["name"], weights_path=image_spec.get("weights_path"))
    if backbone.weights_sha256 != image_spec["weights_sha256"]:
        raise ValueError(
            f"the {backbone.name} weights here (sha256 {backbone.weights_sha256[:12]}...) differ from those "
            f"{prepared.directory} was prepared with ({image_spec['weights_sha256'][:12]}...); prepare again"
        )
    backbone_params = backbone.unfreeze_last_blocks(cfg.unfreeze_blocks)
    backbone.to_device(device)
    text_dim = prepared.text_config.output_dim if data.text_is_tokens else data.train.text.shape[1]
    dscmr_cfg = with_dims(cfg.dscmr, backbone.output_dim, text_dim, len(data.label_names))
    model = build_model(dscmr_cfg, prepared.build_text_encoder()).to(device)
    # The cached features are the stock backbone's centre-crop features: the starting point of fine-tuning.
    model.fit_input_norm(
        torch.from_numpy(data.train.image).to(device),
        None if data.text_is_tokens else torch.from_numpy(data.train.text).to(device),
    )
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": tc.lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": tc.lr * cfg.backbone_lr_scale})
    optimizer = make_adam(groups, tc)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs) if tc.lr_schedule == "cosine" else None
    autocast, scaler = _amp_context(device, tc.amp)

    paths = _image_paths(prepared, corpus_dir)
    train_sampler = _EpochOrder(len(data.train), tc.seed, shuffle=True)
    train_loader = _loader(
        _ImageRows([paths[i] for i in data.train.ids], backbone.preprocess, cfg.augment, tc.seed),
        train_sampler,
        tc.batch_size,
        cfg.workers,
        device,
    )
    val_loader = _loader(
        _ImageRows([paths[i] for i in data.val.ids], backbone.preprocess, None, tc.seed),
        _EpochOrder(len(data.val), tc.seed, shuffle=False),
        cfg.eval_batch_size,
        cfg.workers,
        device,
    )
    tr_txt, tr_lab = _to_tensor(data.train.text, device, data.text_is_tokens), _to_tensor(data.train.labels, device)
    va_txt, va_lab = _to_tensor(data.val.text, device, data.text_is_tokens), _to_tensor(data.val.labels, device)
    activity_sample = (
        tr_txt[torch.linspace(0, len(tr_txt) - 1, min(len(tr_txt), MAP_ACTIVITY_TEXTS), device=device).long()]
        if data.text_is_tokens and len(tr_txt)
        else None
    )

    config_record = {"finetune": to_dict(cfg), "dscmr": to_dict(dscmr_cfg), "prepared_hash": prepared.content_hash}
    state: dict[str, Any] = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "best_val": None,
        "best_model": None,
        "best_backbone": None,
        "history": [],
        "stale": 0,
        "wall_s": 0.0,
    }
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        ckpt_path = run_path / CHECKPOINT_FILE
        if ckpt_path.is_file():
            # RNG states must stay CPU tensors; load_state_dict copies the rest onto its device.
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if ckpt["config"] != config_record:
                raise ValueError(
                    f"{ckpt_path} was written by a run with another configuration or other prepared data; "
                    "use a new run directory or delete it"
                )
            model.load_state_dict(ckpt["model"])
            if ckpt["backbone"]:
                backbone.load_finetuned_state(ckpt["backbone"], str(ckpt_path))
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["torch_rng"])
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            state = ckpt["state"]
        (run_path / METRICS_LOG).write_text("".join(json.dumps(h) + "\n" for h in state["history"]))

    bar = tqdm(
        range(state["epoch"], tc.epochs),
        initial=state["epoch"],
        total=tc.epochs,
        desc="finetune",
        unit="epoch",
        disable=not tc.progress,
    )
    t_start = time.perf_counter() - state["wall_s"]
    for epoch in bar:
        model.train()
        train_sampler.epoch = epoch
        sums = torch.zeros(4, device=device)
        seen = 0
        for batch in train_loader:
            if batch is None:
                continue
            rows, images = batch
            rows = rows.to(device, non_blocking=True)
            images = images.to(device, non_blocking=True)
            with autocast():
                u, v, pu, pv = model(backbone(images), tr_txt[rows])
            # The objective runs in fp32: its norms, cosines and softplus lose too much in fp16.
            terms = dscmr_loss(u.float(), v.float(), pu.float(), pv.float(), tr_lab[rows], dscmr_cfg.loss)
            backward_and_step(terms.total, optimizer, scaler)
            # Loss sums stay on the device; they are read once per epoch.
            sums += torch.stack([terms.total.detach(), terms.j1.detach(), terms.j2.detach(), terms.j3.detach()]).float() * len(
                rows
            )
            seen += len(rows)
        if scheduler is not None:
            scheduler.step()
        loss, j1, j2, j3 = (sums / max(seen, 1)).tolist()
        val = _split_scores(model, backbone, val_loader, va_txt, va_lab, device)
        record = {
            "epoch": epoch + 1,
            "loss": loss,
            "j1": j1,
            "j2": j2,
            "j3": j3,
            "val_i2t": val.i2t,
            "val_t2i": val.t2i,
            "val_avg": val.avg,
            "lr": optimizer.param_groups[0]["lr"],
            "images": seen,
            **text_map_fields(model, activity_sample),
        }
        stop = record_epoch(
            state,
            record,
            val,
            lambda: {
                "best_model": {k: t.detach().clone() for k, t in model.state_dict().items()},
                "best_backbone": {k: t.clone() for k, t in backbone.finetuned_state().items()},
            },
            bar,
            run_path,
            on_epoch_end,
            tc.early_stopping_patience,
        )
        state["epoch"] = epoch + 1
        state["wall_s"] = time.perf_counter() - t_start
        if run_path is not None and ((epoch + 1) % tc.checkpoint_every == 0 or stop or epoch + 1 == tc.epochs):
            _atomic_torch_save(
                {
                    "config": config_record,
                    "model": model.state_dict(),
                    "backbone": backbone.finetuned_state(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "state": state,
                },
                run_path / CHECKPOINT_FILE,
            )
        if stop:
            break
    bar.close()
    best = copy.deepcopy(model)
    if state["best_model"] is not None:
        best.load_state_dict(state["best_model"])
        if state["best_backbone"]:
            backbone.load_finetuned_state(state["best_backbone"])
    best.eval()
    backbone.requires_grad_(False)
    i2t, t2i = state["best_val"] if state["best_val"] is not None else (float("nan"), float("nan"))
    return FinetuneResult(
        model=best,
        backbone=backbone,
        config=dscmr_cfg,
        best_epoch=state["best_epoch"],
        best_val=CrossModalScores(i2t, t2i),
        history=state["history"],
        wall_s=state["wall_s"],
        epochs_run=state["epoch"],
        amp=amp_mode(device, tc.amp),
    )


def evaluate_finetuned(
    result: FinetuneResult,
    prepared: PreparedData,
    split: str,
    corpus_dir: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
) -> CrossModalScores:
    """mAP of a fine-tuning result on one split, from the corpus images (centre crops) and the prepared text."""
    data = prepared.feature_splits().split(split)
    device = next(result.model.parameters()).device
    paths = _image_paths(prepared, corpus_dir)
    loader = _loader(
        _ImageRows([paths[i] for i in data.ids], result.backbone.preprocess, None, 0),
        _EpochOrder(len(data), 0, shuffle=False),
        batch_size,
        workers,
        device,
    )
    text = _to_tensor(data.text, device, prepared.manifest["text"]["kind"] == "sentence_cnn")
    return _split_scores(result.model, result.backbone, loader, text, _to_tensor(data.labels, device), device)


def finetuned_feature_spec(prepared: PreparedData, backbone: ImageBackbone) -> dict[str, Any]:
    """The prepared data's feature spec, with the image entry marking the backbone as fine-tuned and what was trained."""
    spec = prepared.feature_spec()
    if backbone.unfrozen_blocks == 0:  # nothing in the backbone was trained: the stock backbone serves as it is
        return spec
    names = backbone.block_names()
    spec["image"] = {
        **spec["image"],
        "finetuned": True,
        "unfrozen_blocks": backbone.unfrozen_blocks,
        "blocks": names[len(names) - backbone.unfrozen_blocks :],
        "state_prefix": FINETUNED_BACKBONE_PREFIX,
    }
    return spec


def save_finetuned_model(
    result: FinetuneResult, prepared: PreparedData, out_dir: str | Path, metrics: dict[str, Any] | None = None
) -> str:
    """Write the network plus the fine-tuned backbone tensors as one model directory; returns its content hash."""
    from model.artefact import ModelArtefact, save_model

    state = dict(result.model.state_dict())
    state.update({FINETUNED_BACKBONE_PREFIX + k: v for k, v in result.backbone.finetuned_state().items()})
    all_metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": result.wall_s,
        "amp": result.amp,
        "val": {"i2t": result.best_val.i2t, "t2i": result.best_val.t2i, "avg": result.best_val.avg, "split": "val"},
        "prepared_hash": prepared.content_hash,
    }
    all_metrics.update(metrics or {})
    artefact = ModelArtefact(
        state_dict=state,
        config=to_dict(result.config),
        label_names=list(prepared.manifest["label_names"]),
        feature_spec=finetuned_feature_spec(prepared, result.backbone),
        metrics=all_metrics,
        vocab=prepared.vocab_dict(),
    )
    return save_model(artefact, out_dir)


def finetune_and_save(
    prepared_dir: str | Path,
    out_dir: str | Path,
    cfg: FinetuneConfig = FinetuneConfig(),
    run_dir: str | Path | None = None,
    corpus_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune (validation-selected), evaluate on val and test, and write the model directory; returns a report."""
    result = finetune(prepared_dir, cfg, run_dir=run_dir, corpus_dir=corpus_dir)
    prepared = load_prepared(prepared_dir)
    test = evaluate_finetuned(result, prepared, "test", corpus_dir)
    data = prepared.feature_splits()
    metrics = {
        "test": {"i2t": test.i2t, "t2i": test.t2i, "avg": test.avg, "split": "test", "selected_on": "val"},
        "dataset": data.name,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "finetune": {
            "unfreeze_blocks": cfg.unfreeze_blocks,
            "backbone_lr_scale": cfg.backbone_lr_scale,
            "augment": dataclasses.asdict(cfg.augment),
        },
    }
    digest = save_finetuned_model(result, prepared, out_dir, metrics)
    return {
        "model_dir": str(out_dir),
        "content_hash": digest,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": round(result.wall_s, 2),
        "amp": result.amp,
        "val": {"i2t": result.best_val.i2t, "t2i": result.best_val.t2i, "avg": result.best_val.avg},
        "test": metrics["test"],
    }
