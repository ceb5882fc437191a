"""The paper's figures from a training run: the loss curve (Fig. 2) and a t-SNE of the common space (Fig. 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.features import FeatureSplits

LOSS_FIGURE = "loss_curve.png"
TSNE_FIGURE = "tsne_common_space.png"


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the figures need matplotlib: `pip install matplotlib`") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(metrics_path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run's metrics.jsonl (a damaged last line, from an interrupted run, is ignored)."""
    path = Path(metrics_path)
    if path.suffix != ".jsonl":
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the --run-dir of a `python -m training train --run-dir RUN` run")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not records:
        raise ValueError(f"{path} holds no epoch records; train for at least one epoch first")
    return records


def plot_loss_curve(records: list[dict[str, Any]], out_path: str | Path, title: str = "DSCMR training loss") -> Path:
    """Fig. 2: J and its terms J1, J2, J3 per epoch (log scale), with the validation mAP on a second panel."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    for key, label in (("loss", "J (total)"), ("j1", "J1 label space"), ("j2", "J2 common space"), ("j3", "J3 invariance")):
        values = [r.get(key, float("nan")) for r in records]
        if np.nanmax(np.abs(values)) > 0:  # a term switched off by an ablation stays at 0 and is left out
            ax_loss.plot(epochs, values, label=label, linewidth=1.4)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (per item)")
    ax_loss.set_title(title, fontsize=10)
    ax_loss.legend(fontsize=8)
    for key, label in (("val_i2t", "image->text"), ("val_t2i", "text->image"), ("val_avg", "average")):
        if key in records[0]:
            ax_map.plot(epochs, [r[key] for r in records], label=label, linewidth=1.4)
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("validation mAP")
    ax_map.set_title("validation mAP", fontsize=10)
    ax_map.legend(fontsize=8)
    return _save_figure(fig, out_path)


def common_space_vectors(model, data: FeatureSplits, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image vectors, text vectors, labels) of one split in the model's common space."""
    import torch

    from training.train import _to_tensor, encode_split

    device = next(model.parameters()).device
    part = data.split(split)
    with torch.no_grad():
        u, v = encode_split(model, _to_tensor(part.image, device), _to_tensor(part.text, device, data.text_is_tokens))
    return u.cpu().numpy(), v.cpu().numpy(), part.labels


def plot_tsne(
    image_vecs: np.ndarray,
    text_vecs: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    out_path: str | Path,
    seed: int = 0,
    title: str = "t-SNE of the common space",
) -> Path:
    """Fig. 3: 2-D t-SNE of unit image and text vectors together; colour = (first) class, o = image, ^ = text."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    plt = _pyplot()
    both = np.concatenate([image_vecs, text_vecs]).astype(np.float64)
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    n = len(both)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 2 items of the split, got {len(image_vecs)}")
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    # One thread: a few hundred points need no more, and OpenMP threads spinning on a busy machine made it ~100x slower.
    with threadpool_limits(limits=1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(both)
    classes = labels.argmax(1)
    colours = _class_colours(len(label_names))
    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=100)
    m = len(image_vecs)
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        ax.scatter(xy[rows, 0], xy[rows, 1], s=22, marker="o", color=colours[c], edgecolors="none", alpha=0.85)
        ax.scatter(xy[m + rows, 0], xy[m + rows, 1], s=26, marker="^", facecolors="none", edgecolors=[colours[c]], linewidths=1.0)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[c], label=label_names[c]) for c in np.unique(classes)]
    handles += [
        plt.Line2D([], [], marker="o", linestyle="", color="grey", label="image"),
        plt.Line2D([], [], marker="^", linestyle="", markerfacecolor="none", color="grey", label="text"),
    ]
    ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return _save_figure(fig, out_path)


def _save_figure(fig, out_path: str | Path) -> Path:
    """Lay out, write and close a figure; returns where it went."""
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    _pyplot().close(fig)
    return out_path


def _class_colours(n: int) -> list:
    import matplotlib

    base = list(matplotlib.colormaps["tab20"].colors) + list(matplotlib.colormaps["tab20b"].colors)
    if n <= len(base):
        return base[:n]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def make_figures(
    run_dir: str | Path,
    model_dir: str | Path,
    data: FeatureSplits,
    out_dir: str | Path,
    split: str = "test",
    prefix: str = "",
    seed: int = 0,
) -> dict[str, str]:
    """Write the loss curve of `run_dir` and the t-SNE of `model_dir`'s common space on `split` of `data` into `out_dir`."""
    from model.artefact import load_model
    from model.encoder import build_network

    out_dir = Path(out_dir)
    loss_png = plot_loss_curve(read_metrics(run_dir), out_dir / f"{prefix}{LOSS_FIGURE}")
    artefact = load_model(model_dir)
    if list(artefact.label_names) != list(data.label_names):
        raise ValueError(
            f"the model's classes {artefact.label_names} differ from the data's {data.label_names}; "
            "pass the data the model was trained on"
        )
    image_vecs, text_vecs, labels = common_space_vectors(build_network(artefact), data, split)
    tsne_png = plot_tsne(
        image_vecs,
        text_vecs,
        labels,
        data.label_names,
        out_dir / f"{prefix}{TSNE_FIGURE}",
        seed=seed,
        title=f"t-SNE of the common space ({split} split, {len(labels)} items)",
    )
    return {"loss_curve": str(loss_png), "tsne": str(tsne_png)}
