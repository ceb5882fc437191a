"""The DSCMR training loop: Adam, shuffled mini-batches, validation-selected best model, resumable checkpoints."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from model.config import to_dict
from model.losses import dscmr_loss, ridge_classifier
from model.network import DSCMRNet
from training.config import DSCMRConfig, TrainConfig, fit_to_labels, loss_terms
from training.distributed import all_gather_with_grad, all_reduce_sum, broadcast_flag, init_from_env
from training.evaluation import (
    CrossModalRecall,
    CrossModalScores,
    cross_modal_map_torch,
    cross_modal_recall,
    instance_groups,
    selection_score,
)
from training.features import FeatureSplits

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
MAP_ACTIVITY_TEXTS = 4096


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; any other value is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(requested: str, device: torch.device) -> None:
    """Refuse to run on another device type than the one asked for (e.g. --device cuda on a host without CUDA)."""
    if requested != "auto" and torch.device(requested).type != device.type:
        raise ValueError(
            f"device {requested!r} was requested but training would run on {device}: "
            f"{'CUDA is not available here' if not torch.cuda.is_available() else 'unsupported device'}; "
            "use --device auto or cpu"
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    """The selected model and how it was selected."""

    model: DSCMRNet
    best_epoch: int
    best_val: CrossModalScores
    history: list[dict[str, Any]]
    wall_s: float
    config: DSCMRConfig
    epochs_run: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    best_val_recall: CrossModalRecall | None = None
    best_score: float = float("nan")  # the selection criterion's value at the best epoch (config.train.select_on)


def _to_tensor(arr: np.ndarray, device: torch.device, token_ids: bool = False) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.long if token_ids else torch.float32)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _amp_context(device: torch.device, enabled: bool):
    """(autocast context factory, GradScaler or None): bf16 where supported, else fp16 with a scaler; CPU runs fp32."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    # Native bf16 only (compute capability >= 8): emulated bf16 on older GPUs is slower than fp16 with a scaler.
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


def amp_mode(device: torch.device, enabled: bool = True) -> str:
    """Which precision a training step runs in on `device`: 'bf16', 'fp16+scaler' or 'fp32'."""
    autocast, scaler = _amp_context(device, enabled)
    if autocast is contextlib.nullcontext:
        return "fp32"
    return "fp16+scaler" if scaler is not None else "bf16"


@torch.no_grad()
def encode_split(
    model: DSCMRNet, image: torch.Tensor, text: torch.Tensor, batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Common-space vectors of a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    u = torch.cat([model.encode_image(image[i : i + batch]) for i in range(0, len(image), batch)]).float()
    v = torch.cat([model.encode_text(text[i : i + batch]) for i in range(0, len(text), batch)]).float()
    model.train(was_training)
    return u, v


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward pass and optimizer step, through the fp16 gradient scaler when one is in use."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def make_adam(params: Any, tc: TrainConfig) -> torch.optim.Adam:
    """Adam with the multi-tensor update on every device.

    PyTorch only defaults to it on CUDA; on CPU the per-parameter loop took about a third of each step of the paper
    preset, and the multi-tensor form computes the same weights bit for bit (tests/test_training.py checks it).
    """
    return torch.optim.Adam(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, foreach=True)


def parameter_groups(model: DSCMRNet, tc: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: the text encoder's at lr * text_lr_scale, the rest at lr."""
    if not tc.text_lr_scale > 0:
        raise ValueError(f"text_lr_scale must be > 0, got {tc.text_lr_scale}")
    text_ids = {id(p) for p in model.text_encoder.parameters()} if model.text_encoder is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in trainable if id(p) not in text_ids]
    text = [p for p in trainable if id(p) in text_ids]
    if not text or tc.text_lr_scale == 1.0:
        return [{"params": trainable}]
    return [{"params": rest}, {"params": text, "lr": tc.lr * tc.text_lr_scale}]


def build_model(cfg: DSCMRConfig, text_encoder: nn.Module | None = None) -> DSCMRNet:
    """A freshly initialised network for `cfg` (seeded by the caller)."""
    model = DSCMRNet(cfg.network, text_encoder=text_encoder)
    if cfg.loss.classifier_update == "ridge":
        model.classifier.requires_grad_(False)
        nn.init.zeros_(model.classifier.bias)
    return model


def text_map_fields(model: DSCMRNet, token_ids: torch.Tensor | None) -> dict[str, float]:
    """Metrics-log fields of the text encoder's feature maps on `token_ids`: the fraction of maps that fire on at least one
    text (`text_live_maps`) and of texts on which none fires (`text_silent`); empty for encoders without maps."""
    encoder = model.text_encoder
    if token_ids is None or encoder is None or not hasattr(encoder, "map_activity"):
        return {}
    activity = encoder.map_activity(token_ids)
    return {"text_live_maps": round(activity.live_fraction, 4), "text_silent": round(activity.silent_text_fraction, 4)}


UNDEFINED_MAP = CrossModalScores(float("nan"), float("nan"))


def finite_or_none(value: float | None) -> float | None:
    """`value`, or None where it is undefined (NaN: mAP of data without labels), for JSON."""
    return None if value is None or math.isnan(value) else value


def labelled_map_torch(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> CrossModalScores:
    """mAP both ways over labels, among the items that have a label; undefined (NaN) for data without labels."""
    if not labels.shape[1]:
        return UNDEFINED_MAP
    known = labels.sum(1) > 0
    if bool(known.all()):
        return cross_modal_map_torch(u, v, labels)
    return cross_modal_map_torch(u[known], v[known], labels[known]) if bool(known.any()) else UNDEFINED_MAP


def validation_record(
    u_val: torch.Tensor, v_val: torch.Tensor, labels: torch.Tensor, groups: np.ndarray, criterion: str
) -> tuple[CrossModalScores, CrossModalRecall, float, dict[str, float]]:
    """Validation mAP (None in the fields where the data has no labels), instance recall, the selection score and the
    metrics-log fields of one epoch."""
    val = labelled_map_torch(u_val, v_val, labels)
    recall = cross_modal_recall(u_val.cpu().numpy(), v_val.cpu().numpy(), groups)
    score = selection_score(val, recall, criterion)
    fields = {
        "val_i2t": finite_or_none(val.i2t),
        "val_t2i": finite_or_none(val.t2i),
        "val_avg": finite_or_none(val.avg),
        "val_r1": recall.average("r1"),
        "val_r5": recall.average("r5"),
        "val_r10": recall.r10,
        "val_medr": recall.average("median_rank"),
        "val_score": score,
    }
    return val, recall, score, fields


def record_epoch(
    state: dict[str, Any],
    record: dict[str, Any],
    val: Any,
    best_snapshot: Callable[[], dict[str, Any]],
    bar: Any,
    run_path: Path | None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
    patience: int | None,
    score: float | None = None,
    recall: CrossModalRecall | None = None,
    tiebreak: float | None = None,
) -> bool:
    """Book one finished epoch: history, best-so-far by `score` (default: validation average mAP; with `tiebreak`, an
    equal score with a higher tiebreak is better too), keeping `best_snapshot()`, progress bar, metrics log and callback;
    return whether early stopping says stop."""
    state["history"].append(record)
    score = val.avg if score is None else score
    best_tiebreak = state.get("best_tiebreak", -math.inf)
    if score > state["best_score"] or (tiebreak is not None and score == state["best_score"] and tiebreak > best_tiebreak):
        state.update(
            best_score=score,
            best_epoch=record["epoch"],
            best_val=(val.i2t, val.t2i),
            best_recall=recall,
            stale=0,
            best_tiebreak=-math.inf if tiebreak is None else tiebreak,
            **best_snapshot(),
        )
    else:
        state["stale"] += 1
    live = {"live_maps": f"{record['text_live_maps']:.2f}"} if "text_live_maps" in record else {}
    bar.set_postfix(
        loss=f"{record['loss']:.4f}", val=f"{score:.4f}", best=f"{state['best_score']:.4f}@{state['best_epoch']}", **live
    )
    if run_path is not None:
        with (run_path / METRICS_LOG).open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    if on_epoch_end is not None:
        on_epoch_end(record)
    return patience is not None and state["stale"] >= patience


def train_dscmr(
    data: FeatureSplits,
    cfg: DSCMRConfig,
    run_dir: str | Path | None = None,
    text_encoder: nn.Module | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train DSCMR on `data`, keeping the epoch with the best validation average mAP.

    With `run_dir`, a checkpoint is written every `checkpoint_every` epochs and an existing one is resumed,
    ending with the same model as an uninterrupted run of the same seed.
    """
    data.validate()
    # Data without labels trains J3 and the instance term and selects on R@10 (training/config.py: fit_to_labels).
    partial = data.partially_labelled
    cfg, terms_note = fit_to_labels(cfg, data.has_labels, partial=partial)
    log.info("%s", terms_note)
    tc = cfg.train
    ctx, device = init_from_env(tc.device)
    check_device(tc.device, device)
    if ctx.enabled and cfg.loss.classifier_update == "ridge":
        raise ValueError(
            "the ridge closed-form classifier is single-process only; use classifier_update='gradient' under torchrun"
        )
    seed_everything(tc.seed)
    model = build_model(cfg, text_encoder).to(device)
    model.fit_input_norm(
        torch.from_numpy(data.train.image).to(device),
        None if data.text_is_tokens else torch.from_numpy(data.train.text).to(device),
    )
    optimizer = make_adam(parameter_groups(model, tc), tc)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs) if tc.lr_schedule == "cosine" else None
    autocast, scaler = _amp_context(device, tc.amp)
    step_module: nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    shuffle_gen = torch.Generator(device="cpu").manual_seed(tc.seed)

    tr_img, tr_txt = _to_tensor(data.train.image, device), _to_tensor(data.train.text, device, data.text_is_tokens)
    # With text views, each batch reads one view per item (drawn from its own generator, so resuming reproduces them).
    tr_views = _to_tensor(data.train.text_views, device, data.text_is_tokens) if data.train.text_views is not None else None
    view_gen = torch.Generator(device="cpu").manual_seed(tc.seed + 1)
    tr_lab = _to_tensor(data.train.labels, device)
    va_img, va_txt = _to_tensor(data.val.image, device), _to_tensor(data.val.text, device, data.text_is_tokens)
    va_lab = _to_tensor(data.val.labels, device)
    n = len(tr_lab)
    # Pairs whose text input is identical are one instance: positives of each other in the instance term and hits of
    # each other in validation recall.
    use_instance = cfg.loss.instance_weight > 0
    tr_groups = torch.from_numpy(instance_groups(data.train.text)).to(device) if use_instance else None
    va_groups = instance_groups(data.val.text)
    # The training texts (evenly spaced, at most MAP_ACTIVITY_TEXTS) on which each epoch counts the live feature maps.
    activity_sample = (
        tr_txt[torch.linspace(0, n - 1, min(n, MAP_ACTIVITY_TEXTS), device=device).long()] if data.text_is_tokens else None
    )

    state: dict[str, Any] = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "best_val": None,
        "best_recall": None,
        "best_state": None,
        "history": [],
        "stale": 0,
        "wall_s": 0.0,
    }
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        if ctx.is_main:
            run_path.mkdir(parents=True, exist_ok=True)
        ckpt_path = run_path / CHECKPOINT_FILE
        if ckpt_path.is_file():
            # RNG states must stay CPU tensors; load_state_dict copies weights and optimiser state onto their device.
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if ckpt["config"] != to_dict(cfg):
                raise ValueError(
                    f"{ckpt_path} was written by a run with another configuration; use a new run directory or delete it"
                )
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            shuffle_gen.set_state(ckpt["shuffle_rng"])
            if ckpt.get("view_rng") is not None:
                view_gen.set_state(ckpt["view_rng"])
            torch.set_rng_state(ckpt["torch_rng"])
            if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
            state = ckpt["state"]
        # The metrics log is rewritten from the checkpointed history so a resumed run has no duplicate epochs.
        if ctx.is_main:
            (run_path / METRICS_LOG).write_text("".join(json.dumps(h) + "\n" for h in state["history"]))

    start_epoch = state["epoch"]
    bar = tqdm(
        range(start_epoch, tc.epochs),
        initial=start_epoch,
        total=tc.epochs,
        desc="train",
        disable=not (tc.progress and ctx.is_main),
        unit="epoch",
    )
    global_j2 = ctx.enabled and cfg.loss.use_j2 and tc.j2_scope == "global"
    global_instance = ctx.enabled and use_instance
    t_start = time.perf_counter() - state["wall_s"]
    ridge = cfg.loss.classifier_update == "ridge"
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        sums = torch.zeros(5, device=device)
        for start in range(0, n, tc.batch_size):
            idx = perm[start : start + tc.batch_size]
            if ctx.enabled:
                if len(idx) < ctx.world_size:  # every process needs at least one item for the collective ops
                    continue
                # Each process takes an interleaved share of the same global batch.
                idx = idx[ctx.rank :: ctx.world_size]
            img, lab = tr_img[idx], tr_lab[idx]
            if tr_views is None:
                txt = tr_txt[idx]
            else:
                pick = torch.randint(tr_views.shape[1], (len(idx),), generator=view_gen).to(device)
                txt = tr_views[idx, pick]
            with autocast():
                if ridge:
                    u, v = model.encode_image(img), model.encode_text(txt)
                    known = lab.sum(1) > 0 if partial else slice(None)  # the closed form fits the labelled rows
                    model.classifier.weight.data.copy_(
                        ridge_classifier(u.detach().float()[known], v.detach().float()[known], lab[known], cfg.loss.ridge)
                    )
                    pu, pv = model.classifier(u), model.classifier(v)
                else:
                    u, v, pu, pv = step_module(img, txt)
            # The objective runs in fp32 (a no-op on CPU): its norms, cosines and softplus lose too much in fp16.
            u, v, pu, pv = u.float(), v.float(), pu.float(), pv.float()
            # Global J2: this process's rows against the whole global batch, so the summed gradient over
            # processes equals the single-process gradient of the same batch.
            u_all = all_gather_with_grad(u) if (global_j2 or global_instance) else None
            v_all = all_gather_with_grad(v) if (global_j2 or global_instance) else None
            columns = (u_all, v_all, all_gather_with_grad(lab)) if global_j2 else None
            ids = tr_groups[idx] if use_instance else None
            # The instance term, like global J2, compares this process's pairs with the whole all-gathered batch.
            inst_columns = (u_all, v_all, all_gather_with_grad(ids)) if global_instance else None
            terms = dscmr_loss(
                u,
                v,
                pu,
                pv,
                lab,
                cfg.loss,
                j2_columns=columns,
                instance_ids=ids,
                instance_columns=inst_columns,
                partial_labels=partial,
            )
            backward_and_step(terms.total, optimizer, scaler)
            sums += torch.stack(
                [terms.total.detach(), terms.j1.detach(), terms.j2.detach(), terms.j3.detach(), terms.inst.detach()]
            ).float() * len(idx)
        if scheduler is not None:
            scheduler.step()
        loss, j1, j2, j3, inst = (all_reduce_sum(sums) / n).tolist()
        stop = False
        if ctx.is_main:
            u_val, v_val = encode_split(model, va_img, va_txt)
            val, recall, score, val_fields = validation_record(u_val, v_val, va_lab, va_groups, tc.select_on)
            record = {
                "epoch": epoch + 1,
                "loss": loss,
                "j1": j1,
                "j2": j2,
                "j3": j3,
                "inst": inst,
                **val_fields,
                "lr": optimizer.param_groups[0]["lr"],
                **text_map_fields(model, activity_sample),
            }
            # Without labels, R@10 on a small validation split ties often (every pair in the top 10): the mean reciprocal
            # rank of the own pair breaks ties.
            tiebreak = None if data.has_labels else recall.average("mrr")
            stop = record_epoch(
                state,
                record,
                val,
                lambda: {"best_state": {k: t.detach().clone() for k, t in model.state_dict().items()}},
                bar,
                run_path,
                on_epoch_end,
                tc.early_stopping_patience,
                score=score,
                recall=recall,
                tiebreak=tiebreak,
            )
        stop = broadcast_flag(stop, device)
        state["epoch"] = epoch + 1
        state["wall_s"] = time.perf_counter() - t_start
        if ctx.is_main and run_path is not None and ((epoch + 1) % tc.checkpoint_every == 0 or stop or epoch + 1 == tc.epochs):
            _atomic_torch_save(
                {
                    "config": to_dict(cfg),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "shuffle_rng": shuffle_gen.get_state(),
                    "view_rng": view_gen.get_state(),
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
    if tc.keep == "last":
        last = state["history"][-1] if state["history"] else None
        undefined = float("nan")
        state.update(
            best_epoch=state["epoch"],
            best_val=(_or(last["val_i2t"], undefined), _or(last["val_t2i"], undefined)) if last else None,
            best_score=last["val_score"] if last else float("nan"),
            best_recall=None,
        )
    elif state["best_state"] is not None:
        best.load_state_dict(state["best_state"])
    best.eval()
    i2t, t2i = state["best_val"] if state["best_val"] is not None else (float("nan"), float("nan"))
    return TrainResult(
        model=best,
        best_epoch=state["best_epoch"],
        best_val=CrossModalScores(i2t, t2i),
        history=state["history"],
        wall_s=state["wall_s"],
        config=cfg,
        epochs_run=state["epoch"],
        best_val_recall=state.get("best_recall"),
        best_score=state["best_score"],
        extra={"loss_terms": {**loss_terms(cfg), "note": terms_note}},
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def evaluate_model(model: DSCMRNet, data: FeatureSplits, split: str) -> CrossModalScores:
    """mAP of `model` on one split of `data` (both directions)."""
    return evaluate_split(model, data, split)[0]


def evaluate_split(model: DSCMRNet, data: FeatureSplits, split: str) -> tuple[CrossModalScores, CrossModalRecall]:
    """mAP and instance recall (R@K of each query's own pair) of `model` on one split of `data`, both directions."""
    device = next(model.parameters()).device
    s = data.split(split)
    u, v = encode_split(model, _to_tensor(s.image, device), _to_tensor(s.text, device, data.text_is_tokens))
    return labelled_map_torch(u, v, _to_tensor(s.labels, device)), cross_modal_recall(
        u.cpu().numpy(), v.cpu().numpy(), instance_groups(s.text)
    )


def save_trained_model(
    result: TrainResult,
    out_dir: str | Path,
    label_names: list[str],
    feature_spec: dict[str, Any],
    vocab: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> str:
    """Write the selected model as a model directory; returns its content hash."""
    from model.artefact import ModelArtefact, save_model

    val = {
        "i2t": finite_or_none(result.best_val.i2t),
        "t2i": finite_or_none(result.best_val.t2i),
        "avg": finite_or_none(result.best_val.avg),
        "split": "val",
    }
    if not label_names:
        val["map_note"] = MAP_UNDEFINED_NOTE
    if result.best_val_recall is not None:
        val["recall"] = result.best_val_recall.as_dict()
    all_metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": result.wall_s,
        "val": val,
        "selection": {"criterion": result.config.train.select_on, "score": result.best_score, "split": "val"},
    }
    if "loss_terms" in result.extra:
        all_metrics["loss_terms"] = result.extra["loss_terms"]
    all_metrics.update(metrics or {})
    artefact = ModelArtefact(
        state_dict={k: v for k, v in result.model.state_dict().items()},
        config=to_dict(result.config),
        label_names=list(label_names),
        feature_spec=feature_spec,
        metrics=all_metrics,
        vocab=vocab,
    )
    return save_model(artefact, out_dir)


MAP_UNDEFINED_NOTE = "mAP is undefined without labels (no item is relevant to another by label); see recall"


def features_spec(image_dim: int, text_dim: int) -> dict[str, Any]:
    """Feature spec of a model trained on precomputed image and text feature vectors."""
    return {"image": {"kind": "features", "dim": image_dim}, "text": {"kind": "features", "dim": text_dim}}
