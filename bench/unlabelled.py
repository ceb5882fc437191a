"""Corpora whose labels are known but hidden from training (issue 16, item 3): what training without labels costs.

For each corpus, every method trains on the train split, keeps its epoch on validation and is tested once; mAP is always
against the TRUE labels (hidden from every label-free row), R@1/5/10 of each query's own pair beside it.

- supervised DSCMR (true labels; the loss weights chosen for the corpus on its own page), and + instance term;
- the instance term alone (J3 + instance term, no labels; kept epoch by validation R@10 of the own pair);
- DSCMR on derived labels (training/derived_labels.py): k-means clusters of the texts (k from a grid, and k by
  validation silhouette as `prepare --derive-labels clusters` picks it) and keyword tags (vocabulary size grid), each
  with the instance term at a few weights; their epoch kept by validation mAP over the DERIVED labels;
- CCA on the pairs (ridge and components chosen by validation R@10: no label takes part);
- the text-only anchor where the corpus has text features to compare: text -> text mAP (the query's own text left out).

The label-free rows are chosen on validation two ways, both reported: without any label (best validation R@10 of the own
pair) and with the validation split's labels (best validation mAP), for a user who can label a validation split only.
Runs are cached under --work keyed by their settings and the code of model/ and training/.

    python bench/unlabelled.py --threads 2 --doc docs/results-unlabelled.md            # run, write JSON + page
    python bench/unlabelled.py --doc docs/results-unlabelled.md --from-json            # re-render the page only

Writes docs/results/unlabelled.json and the generated section of docs/results-unlabelled.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.machine import code_fingerprint  # noqa: E402
from bench.provenance import finish_record, load_note, provenance_line, run_record, write_section  # noqa: E402
from training.baselines import RegularisedCCA  # noqa: E402
from training.config import preset, with_dims  # noqa: E402
from training.derived_labels import KeywordConfig, derive_cluster_labels, derive_keyword_labels  # noqa: E402
from training.evaluation import average_precisions, cross_modal_recall, instance_groups  # noqa: E402
from training.features import FeatureSplits, SplitArrays  # noqa: E402
from training.train import evaluate_split, train_dscmr  # noqa: E402

SCRIPT = "unlabelled.py"
PAGE_SECTION = "unlabelled"
SHARED = REPO.parent / "shared" / "data"
DEFAULT_WORK = REPO / "bench" / "out" / "unlabelled"
SPLITS = ("train", "val", "test")
# keyed by the trainer and the run settings (not this script, whose page code changes often; its training part
# is the `what` of each run)
CODE = code_fingerprint("model", "training")
EPOCHS = 60
PATIENCE = 15
TEMPERATURE = 0.1
CLUSTER_KS = (4, 8, 16, 32, 64)
KEYWORD_COUNTS = (32, 64, 128)
DERIVED_INSTANCE_WEIGHTS = (0.1, 0.3)
KEYWORD_INSTANCE_WEIGHTS = (0.1, 0.3, 1.0)  # keyword rows always train an instance term (items without a keyword)
INSTANCE_ALONE_WEIGHT = 1.0
CCA_GRID = ((0.1, 1.0), (16, 32, 64, 128))  # ridges x components
TARGET_MAP_SHARE = 0.9


@dataclasses.dataclass
class Setting:
    """One corpus as the bench uses it: features with the true labels (one FeatureSplits per label view), the raw texts
    per split (None without raw text), the supervised loss weights and where they come from."""

    name: str
    views: dict[str, FeatureSplits]  # label view ("single", "multi") -> data with the true labels
    texts: dict[str, list[str]] | None
    weights: tuple[float, float]
    weights_source: str
    text_kind: str


def _hidden(data: FeatureSplits, labels: dict[str, np.ndarray] | None = None, names: list[str] | None = None) -> FeatureSplits:
    """`data` with its labels replaced: by `labels` per split (derived labels) or, by default, by none at all."""
    parts = {}
    for s in SPLITS:
        part = data.split(s)
        y = labels[s] if labels is not None else np.zeros((len(part.ids), 0), dtype=np.float32)
        parts[s] = SplitArrays(part.image, part.text, y, part.ids, text_views=part.text_views)
    return FeatureSplits(**parts, label_names=list(names or []), name=data.name, text_is_tokens=data.text_is_tokens)


def _by_split(data: FeatureSplits, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of a matrix over [train, val, test] (concatenated in that order) cut back into the splits."""
    out, start = {}, 0
    for s in SPLITS:
        n = len(data.split(s).ids)
        out[s] = rows[start : start + n]
        start += n
    return out


def _all(data: FeatureSplits, attr: str) -> np.ndarray:
    return np.concatenate([getattr(data.split(s), attr) for s in SPLITS])


def _row_ranges(data: FeatureSplits) -> tuple[np.ndarray, np.ndarray]:
    n_train, n_val = len(data.train.ids), len(data.val.ids)
    return np.arange(n_train), np.arange(n_train, n_train + n_val)


def derive(setting: Setting, method: str, param: int) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """Derived labels per split (clusters: k = param, 0 = chosen by validation silhouette; keywords: N = param)."""
    data = next(iter(setting.views.values()))
    train_rows, val_rows = _row_ranges(data)
    texts = [t for s in SPLITS for t in setting.texts[s]] if setting.texts else None
    if method == "clusters":
        derived = derive_cluster_labels(
            _all(data, "text"),
            texts or [""] * len(_all(data, "text")),
            train_rows,
            val_rows,
            k=param or None,
            seed=0,
            feature_kind=setting.text_kind,
        )
    else:
        derived = derive_keyword_labels(texts, train_rows, KeywordConfig(count=param), seed=0)
    info = {k: v for k, v in derived.to_dict().items() if k in ("method", "k", "chosen", "grid", "without_label", "params")}
    return _by_split(data, derived.one_hot()), list(derived.names), info


def _scores(model, data: FeatureSplits, split: str) -> dict[str, Any]:
    scores, recall = evaluate_split(model, data, split)
    return {"i2t": scores.i2t, "t2i": scores.t2i, "avg": scores.avg, "recall": recall.as_dict()["avg"]}


def train_row(setting: Setting, train_data: FeatureSplits, loss: dict[str, float], epochs: int) -> dict[str, Any]:
    """Train on `train_data` (true, derived or no labels), then score val and test against every TRUE label view."""
    cfg = preset("wiki-tuned", epochs=epochs, progress=False)
    cfg = dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, **loss),
        train=dataclasses.replace(cfg.train, early_stopping_patience=PATIENCE),
    )
    cfg = with_dims(cfg, train_data.train.image.shape[1], train_data.train.text.shape[1], len(train_data.label_names))
    result = train_dscmr(train_data, cfg)
    return {
        "best_epoch": result.best_epoch,
        "epochs": result.epochs_run,
        "wall_s": round(result.wall_s, 1),
        "scores": {
            view: {split: _scores(result.model, data, split) for split in ("val", "test")} for view, data in setting.views.items()
        },
    }


def cached(work: Path, key: str, what: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn` once per (key, what, code); its JSON result is kept under WORK/runs/ and reused by later runs."""
    digest = hashlib.sha256(json.dumps([key, what, CODE], sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = work / "runs" / f"{key}-{digest}.json"
    if CODE is not None and path.is_file():
        return json.loads(path.read_text())
    row = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    first = next(iter(row["scores"].values()))
    print(
        f"  {key}: val mAP {first['val']['avg']:.4f} R@10 {first['val']['recall']['r10']:.3f} | test mAP "
        f"{first['test']['avg']:.4f} R@10 {first['test']['recall']['r10']:.3f}  ({row.get('wall_s')} s)",
        flush=True,
    )
    return row


def cca_row(setting: Setting) -> dict[str, Any]:
    """CCA on the pairs, ridge and components chosen by validation R@10 of the own pair (no label used)."""
    data = next(iter(setting.views.values()))
    t0 = time.perf_counter()
    best = None
    max_k = min(data.train.image.shape[1], data.train.text.shape[1])
    for ridge in CCA_GRID[0]:
        for k in sorted({min(c, max_k) for c in CCA_GRID[1]}):
            cca = RegularisedCCA(k, ridge).fit(data.train.image.astype(np.float64), data.train.text.astype(np.float64))
            r10 = cross_modal_recall(*cca.transform(data.val.image, data.val.text), instance_groups(data.val.text)).r10
            if best is None or r10 > best[0]:
                best = (r10, cca, {"ridge": ridge, "n_components": k})
    _, cca, params = best
    from training.evaluation import cross_modal_map

    scores = {}
    for view, labelled in setting.views.items():
        scores[view] = {}
        for split in ("val", "test"):
            part = labelled.split(split)
            u, v = cca.transform(part.image, part.text)
            m = cross_modal_map(u, v, part.labels)
            recall = cross_modal_recall(u, v, instance_groups(part.text)).as_dict()["avg"]
            scores[view][split] = {"i2t": m.i2t, "t2i": m.t2i, "avg": m.avg, "recall": recall}
    return {"params": params, "wall_s": round(time.perf_counter() - t0, 1), "scores": scores}


def text_anchor(setting: Setting) -> dict[str, Any]:
    """Text -> text mAP with the corpus's text features (cosine; the query's own text left out of what it ranks)."""
    out = {}
    for view, data in setting.views.items():
        out[view] = {}
        for split in ("val", "test"):
            part = data.split(split)
            aps = []
            for i in range(len(part.ids)):
                others = np.delete(np.arange(len(part.ids)), i)
                ap = average_precisions(part.text[i : i + 1], part.text[others], part.labels[i : i + 1], part.labels[others])
                aps.append(float(ap[0]))
            out[view][split] = {"t2t": float(np.mean(aps))}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------------------------


def imagenet_sample(work: Path, data_root: Path) -> Setting:
    """imagenet-sample, split seed 0, Lite0 image features and MiniLM text (the reduced protocol of its page); labels:
    the coarse label (single) and the coarse multi-labels (multi) of the same items."""
    from bench.imagenet_sample import fold_corpus, prepare_fold
    from training.datasets import load_dataset
    from training.prepare import load_prepared

    corpus, _ = load_dataset("imagenet-sample", data_root)
    multi, _ = load_dataset("imagenet-sample", data_root, multilabel=True)
    prepared = load_prepared(prepare_fold(corpus, 0, "minilm", work / "imagenet-sample"))
    single = prepared.feature_splits()
    text_of = {it.id: it.text for it in corpus.items}
    by_id = {it.id: it for it in multi.items}
    labels = {s: multi.label_matrix([by_id[i] for i in single.split(s).ids]) for s in SPLITS}
    multi_data = _hidden(single, labels, list(multi.label_names))
    assert fold_corpus(corpus, 0).splits["test"] == single.test.ids
    return Setting(
        name="imagenet-sample",
        views={"single": single, "multi": multi_data},
        texts={s: [text_of[i] for i in single.split(s).ids] for s in SPLITS},
        weights=(1.0, 0.01),
        weights_source="chosen on validation for the MiniLM row of docs/results/imagenet-sample.json",
        text_kind="minilm sentence vectors",
    )


def wikipedia(work: Path, data_root: Path) -> Setting:
    """The Wikipedia features (128-d SIFT BoW, 10-d LDA text), official split with 10% of train as validation; no raw
    text, so no keyword labels."""
    from training.features import load_wiki_features

    data = load_wiki_features(data_root)
    return Setting(
        name="wikipedia",
        views={"single": data},
        texts=None,
        weights=(1e-3, 1e-1),
        weights_source="the wiki-tuned preset's (docs/results/wikipedia.json)",
        text_kind="LDA topic proportions",
    )


def emoji_demo(work: Path, data_root: Path) -> Setting:
    """The built-in emoji demo as `python -m training demo` builds it in English (every emoji, Unicode group labels,
    MiniLM text, the demo's seed-0 split and loss weights), from the Debian files it is rendered from (`data_root`)."""
    from model.corpus import CORPUS_FILE, load_corpus, save_corpus
    from training.datasets.emoji_demo import build_emoji_corpus
    from training.demo import DEMO_LOSS_WEIGHTS, DemoConfig, demo_text_config
    from training.prepare import PREPARED_FILE, PrepareConfig, load_prepared, prepare_corpus

    cfg = DemoConfig(progress=False)
    corpus_dir, prepared_dir = work / "emoji-demo" / "corpus", work / "emoji-demo" / "prepared"
    if not (corpus_dir / CORPUS_FILE).is_file():
        corpus, _ = build_emoji_corpus(
            corpus_dir, limit=cfg.limit, image_size=cfg.image_size, seed=cfg.seed, labels=cfg.labels, progress=False
        )
        save_corpus(corpus, corpus_dir)
    if not (prepared_dir / PREPARED_FILE).is_file():
        prepare_corpus(corpus_dir, prepared_dir, PrepareConfig(text=demo_text_config(cfg), seed=cfg.seed, progress=False))
    data = load_prepared(prepared_dir).feature_splits()
    text_of = {it.id: it.text for it in load_corpus(corpus_dir).items}
    return Setting(
        name="emoji-demo",
        views={"single": data},
        texts={s: [text_of[i] for i in data.split(s).ids] for s in SPLITS},
        weights=(DEMO_LOSS_WEIGHTS["lambda_j2"], DEMO_LOSS_WEIGHTS["eta_j3"]),
        weights_source="the demo's (training/demo.py DEMO_LOSS_WEIGHTS)",
        text_kind="minilm sentence vectors",
    )


def _emoji_font() -> Path:
    from training.datasets.emoji_demo import EmojiSources

    return Path(EmojiSources().font)


CORPORA: dict[str, tuple[Callable[[Path, Path], Setting], Callable[[], Path]]] = {
    "imagenet-sample": (imagenet_sample, lambda: SHARED / "imagenet-sample-wordnet"),
    "wikipedia": (wikipedia, lambda: SHARED / "wiki-rasiwasia-features" / "raw_features"),
    # the Debian font (fonts-noto-color-emoji) stands for the Debian files the demo is rendered from
    "emoji-demo": (emoji_demo, _emoji_font),
}


def run_corpus(setting: Setting, work: Path, epochs: int) -> dict[str, Any]:
    """Every row of one corpus (see the module docstring), with the derived labels' details and the two choices."""
    work = work / setting.name
    base = setting.views["single"]
    lam, eta = setting.weights
    loss = {"lambda_j2": lam, "eta_j3": eta}
    inst = lambda w: {**loss, "instance_weight": w, "instance_temperature": TEMPERATURE}  # noqa: E731
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, kind: str, key: str, train_data: FeatureSplits, loss_cfg: dict[str, float], **extra: Any) -> None:
        what = {"loss": loss_cfg, "epochs": epochs, "labels": train_data.label_names, "ids": base.test.ids[:5], **extra}
        row = cached(work, key, what, lambda: train_row(setting, train_data, loss_cfg, epochs))
        rows[name] = {"kind": kind, "loss": loss_cfg, **extra, **row}

    for view, data in setting.views.items():
        suffix = "" if len(setting.views) == 1 else f" ({view}-label)"
        add(f"supervised DSCMR{suffix}", "supervised", f"supervised-{view}", data, loss, view=view)
        add(
            f"supervised DSCMR + instance term 0.1{suffix}",
            "supervised",
            f"supervised-{view}-inst0.1",
            data,
            inst(0.1),
            view=view,
        )
    add(
        f"instance term alone (J3 + instance {INSTANCE_ALONE_WEIGHT:g}, no labels)",
        "label-free",
        "instance-alone",
        _hidden(base),
        inst(INSTANCE_ALONE_WEIGHT),
    )
    derived_info: dict[str, Any] = {}
    # k by validation silhouette (what `prepare --derive-labels clusters` picks) trains plain DSCMR; every k of the grid
    # (the silhouette's among them) trains with the instance term
    labels, names, info = derive(setting, "clusters", 0)
    tag = f"k {info['k']} by val silhouette"
    derived_info[f"clusters {tag}"] = info
    add(f"DSCMR on clusters ({tag})", "label-free", "clusters-silhouette", _hidden(base, labels, names), loss, derived=info)
    for k in CLUSTER_KS:
        labels, names, info = derive(setting, "clusters", k)
        derived_info[f"clusters k {k}"] = info
        data = _hidden(base, labels, names)
        for w in DERIVED_INSTANCE_WEIGHTS:
            add(
                f"DSCMR on clusters (k {k}) + instance {w:g}",
                "label-free",
                f"clusters-k{k}-inst{w:g}",
                data,
                inst(w),
                derived=info,
            )
    if setting.texts is not None:
        for n in KEYWORD_COUNTS:
            labels, names, info = derive(setting, "keywords", n)
            derived_info[f"keywords {n}"] = {**info, "names_head": names[:12]}
            data = _hidden(base, labels, names)
            for w in KEYWORD_INSTANCE_WEIGHTS:
                add(
                    f"DSCMR on keywords ({info['k']}) + instance {w:g}",
                    "label-free",
                    f"keywords-{n}-inst{w:g}",
                    data,
                    inst(w),
                    derived=info,
                )
    cca = cached(work, "cca", {"grid": CCA_GRID}, lambda: cca_row(setting))
    rows["CCA (pairs only; ridge, components by val R@10)"] = {"kind": "label-free", **cca}
    anchor = text_anchor(setting)
    label_free = [n for n, r in rows.items() if r["kind"] == "label-free"]
    choices = {}
    for view in setting.views:
        supervised = f"supervised DSCMR{'' if len(setting.views) == 1 else f' ({view}-label)'}"
        by_recall = max(
            label_free,
            key=lambda n: (rows[n]["scores"][view]["val"]["recall"]["r10"], rows[n]["scores"][view]["val"]["recall"]["mrr"]),
        )
        by_map = max(label_free, key=lambda n: rows[n]["scores"][view]["val"]["avg"])
        choices[view] = {"supervised": supervised, "without labels (val R@10)": by_recall, "with val labels (val mAP)": by_map}
    return {
        "rows": rows,
        "derived": derived_info,
        "text_anchor": anchor,
        "choices": choices,
        "weights": {"lambda_j2": lam, "eta_j3": eta, "source": setting.weights_source},
        "text_kind": setting.text_kind,
        "sizes": {s: len(base.split(s).ids) for s in SPLITS},
    }


# ----------------------------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The generated section of docs/results-unlabelled.md, from the JSON alone."""
    lines = [
        provenance_line(report),
        "",
        load_note(report),
        "",
        f"Corpora run: {', '.join(report['corpora_run'])}. Not run: "
        + (", ".join(f"{n} ({why})" for n, why in report["not_run"].items()) or "none")
        + ".",
        "",
        "mAP is against the true labels, which no label-free row saw; R@K is the share of queries whose own pair is among "
        "the first K of the other modality's test items (both directions averaged). Every row keeps its epoch on "
        "validation: supervised rows by validation mAP, the instance term alone by validation R@10, rows on derived "
        "labels by validation mAP over the derived labels. `share` = test mAP / the supervised row's. The text-only anchor "
        "is text -> text retrieval (another task, no image involved): how far the text features alone separate the "
        "classes; it takes no part in the choices.",
    ]
    for corpus in report["corpora_run"]:
        result = report["results"][corpus]
        lines += ["", f"## {corpus}", ""]
        sizes = result["sizes"]
        lines.append(
            f"{sizes['train']} / {sizes['val']} / {sizes['test']} train / val / test items; text: {result['text_kind']}; "
            f"loss weights lambda {result['weights']['lambda_j2']:g}, eta {result['weights']['eta_j3']:g} "
            f"({result['weights']['source']}); instance temperature {report['settings']['temperature']:g}; up to "
            f"{report['settings']['epochs']} epochs, early stopping after {report['settings']['patience']}."
        )
        for view, choice in result["choices"].items():
            sup = result["rows"][choice["supervised"]]["scores"][view]["test"]
            lines += [
                "",
                f"### {corpus}, {view}-label mAP" if len(result["choices"]) > 1 else f"### {corpus}",
                "",
                "| method | epoch | val mAP | val R@10 | test i2t | test t2i | **test mAP** | share | R@1 | R@5 | R@10 |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for name, row in result["rows"].items():
                if row.get("view", view) != view:
                    continue
                v, t = row["scores"][view]["val"], row["scores"][view]["test"]
                mark = " (chosen without labels)" if name == choice["without labels (val R@10)"] else ""
                mark += " (chosen with val labels)" if name == choice["with val labels (val mAP)"] else ""
                lines.append(
                    f"| {name}{mark} | {row.get('best_epoch', '-')} | {v['avg']:.4f} | {v['recall']['r10']:.3f} | "
                    f"{t['i2t']:.4f} | {t['t2i']:.4f} | {t['avg']:.4f} | {t['avg'] / sup['avg']:.0%} | {t['recall']['r1']:.3f} | "
                    f"{t['recall']['r5']:.3f} | {t['recall']['r10']:.3f} |"
                )
            anchor = result["text_anchor"][view]
            lines.append(
                f"| text-only anchor (text -> text, {result['text_kind']}) | - | {anchor['val']['t2t']:.4f} | - | - | - | "
                f"{anchor['test']['t2t']:.4f} | {anchor['test']['t2t'] / sup['avg']:.0%} | - | - | - |"
            )
            lines.append("")
            references = [choice["supervised"]] + [
                n
                for n, r in result["rows"].items()
                if r["kind"] == "supervised" and r.get("view", view) == view and "instance" in n
            ]
            for how in ("without labels (val R@10)", "with val labels (val mAP)"):
                best = result["rows"][choice[how]]["scores"][view]["test"]
                against = []
                for ref in references:
                    r = result["rows"][ref]["scores"][view]["test"]
                    share = best["avg"] / r["avg"]
                    against.append(
                        f"against {ref} ({r['avg']:.4f}, R@10 {r['recall']['r10']:.3f}): mAP {share:.1%} (target "
                        f"{TARGET_MAP_SHARE:.0%} {'met' if share >= TARGET_MAP_SHARE else 'NOT met'}), R@10 "
                        f"{'at least' if best['recall']['r10'] >= r['recall']['r10'] else 'BELOW'} its"
                    )
                lines.append(
                    f"- Label-free setting chosen {how}: **{choice[how]}**, test mAP {best['avg']:.4f}, R@10 "
                    f"{best['recall']['r10']:.3f}; " + "; ".join(against) + "."
                )
        lines += ["", "Derived labels:", ""]
        for name, info in result["derived"].items():
            detail = f"k {info['k']}"
            if info.get("grid"):
                detail += ", validation silhouette " + ", ".join(f"k {k}: {_fmt(s)}" for k, s in info["grid"].items())
            if info.get("without_label"):
                detail += f", train items without a keyword {info['without_label']['train']} of {sizes['train']}"
            if info.get("names_head"):
                detail += ", first keywords: " + ", ".join(info["names_head"])
            lines.append(f"- {name}: {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the corpora asked for (cached runs reused), write the JSON and, with --doc, the page's section."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default="imagenet-sample,wikipedia,emoji-demo", help=f"comma-separated, of {', '.join(CORPORA)}")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="prepared data and finished runs")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "unlabelled.json")
    p.add_argument("--doc", type=Path, help="write the generated section of this page (docs/results-unlabelled.md)")
    p.add_argument("--from-json", action="store_true", help="with --doc: render from --out without running anything")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    args = p.parse_args(argv)
    if args.from_json:
        if args.doc is None:
            p.error("--from-json needs --doc")
        write_section(args.doc, PAGE_SECTION, SCRIPT, render(json.loads(args.out.read_text())))
        print(f"written {args.doc} from {args.out}")
        return 0
    wanted = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CORPORA))
    if unknown:
        p.error(f"unknown corpora {unknown}; choose from {sorted(CORPORA)}")
    torch.set_num_threads(args.threads)
    report = run_record(SCRIPT, argv)
    report["settings"] = {"epochs": args.epochs, "patience": PATIENCE, "temperature": TEMPERATURE, "threads": args.threads}
    report["results"], report["corpora_run"], report["not_run"] = {}, [], {}
    for name in CORPORA:
        if name not in wanted:
            report["not_run"][name] = "not asked for (--corpora)"
            continue
        loader, root_of = CORPORA[name]
        root = root_of()
        if not root.exists():
            report["not_run"][name] = f"data absent ({root})"
            continue
        print(f"[unlabelled] {name}", flush=True)
        report["results"][name] = run_corpus(loader(args.work, root), args.work, args.epochs)
        report["corpora_run"].append(name)
    finish_record(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(render(report))
    if args.doc is not None:
        write_section(args.doc, PAGE_SECTION, SCRIPT, render(report))
        print(f"written {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
