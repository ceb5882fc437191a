"""The emoji demo's setting, chosen on its validation split: text option x labels x instance term.

    python bench/demo_setting.py                    # builds the demo corpus and prepared data under bench/out/demo-setting
    python bench/demo_setting.py --threads 2 --root /tmp/demo-bench

Each candidate trains on the train split with the demo's schedule (wiki-tuned, up to 60 epochs, early stopping after 15)
and keeps its best epoch on validation by the demo's criterion ('mean': average of the average mAP over the emoji groups
and the average R@10 of each item's own pair, both directions). The first row is the previous demo exactly (GloVe
sentence CNN, group labels, the paper's objective, its epoch chosen by mAP), the reference: the chosen setting is the one
with the best validation R@10 among those whose validation mAP is at most MAP_BUDGET below the reference's (the category
mAP a search user must not lose), and it is the demo's default (training/demo.py DemoConfig). Test figures are reported
beside, never used.
mAP always counts two items as relevant when they share a group (with group + subgroup labels, sharing a subgroup implies
sharing the group), so every row's mAP is the same measure as the demo's historical "category mAP".
Finished runs are cached under --root keyed by the setting, the prepared data and the code of model/ and training/.
Writes docs/results/demo-setting.json and docs/results-demo-setting.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import code_fingerprint, describe, detect_machine, git_commit  # noqa: E402
from training.datasets.emoji_demo import build_emoji_corpus  # noqa: E402
from training.demo import (  # noqa: E402
    DEMO_TEXT,
    DEMO_TEXT_MINILM,
    DemoConfig,
    demo_instance_weight,
    demo_text_option,
    demo_train_config,
)
from training.evaluation import cross_modal_map, cross_modal_recall, instance_groups, selection_score  # noqa: E402
from training.features import FeatureSplits, SplitArrays  # noqa: E402
from training.prepare import PrepareConfig, load_prepared, prepare_corpus  # noqa: E402
from training.train import _to_tensor, encode_split, train_dscmr  # noqa: E402

CRITERION = "mean"
MAP_BUDGET = 0.02
REFERENCE = "previous demo: glove, group, paper objective, epoch by mAP"
# (name, text, labels, instance weight, temperature, training views per text[, instance form]); the reference alone keeps
# its epoch by mAP
CANDIDATES = [
    (REFERENCE, "glove", "group", 0.0, 0.05, 1),
    ("glove, group+subgroup, instance 0.3", "glove", "both", 0.3, 0.05, 1),
    ("minilm, group, paper objective", "minilm", "group", 0.0, 0.05, 1),
    ("minilm, group+subgroup, paper objective", "minilm", "both", 0.0, 0.05, 1),
    ("minilm, group, instance 0.3", "minilm", "group", 0.3, 0.05, 1),
    ("minilm, group+subgroup, instance 0.3", "minilm", "both", 0.3, 0.05, 1),
    ("minilm, group+subgroup, instance 0.3, 5 views", "minilm", "both", 0.3, 0.05, 5),
    ("minilm, group, instance 0.5", "minilm", "group", 0.5, 0.05, 1),
    ("minilm, group, instance 1", "minilm", "group", 1.0, 0.05, 1),
    ("minilm, group, instance 0.5, 5 views", "minilm", "group", 0.5, 0.05, 5),
    ("minilm, group+subgroup, instance 0.5, 5 views", "minilm", "both", 0.5, 0.05, 5),
    ("minilm, group+subgroup, instance 1, 5 views", "minilm", "both", 1.0, 0.05, 5),
    ("minilm, group+subgroup, instance 0.5, T 0.1, 5 views", "minilm", "both", 0.5, 0.1, 5),
    # the other form of the instance term: J2's logistic likelihood with "same pair" as the relation (logits cos / 2T)
    ("minilm, group+subgroup, pair likelihood 0.5, T 0.1, 5 views", "minilm", "both", 0.5, 0.1, 5, "pair_likelihood"),
    ("minilm, group+subgroup, pair likelihood 3, T 0.1, 5 views", "minilm", "both", 3.0, 0.1, 5, "pair_likelihood"),
]


def prepare_both(root: Path, progress: bool) -> dict[str, Any]:
    """The demo corpus (labels of every level come from item.extra) and its prepared data for each text option."""
    corpus_dir = root / "corpus"
    corpora = {
        level: build_emoji_corpus(corpus_dir, image_size=DemoConfig.image_size, labels=level, progress=progress)[0]
        for level in ("group", "both")
    }
    from model.corpus import save_corpus

    save_corpus(corpora["group"], corpus_dir)
    prepared = {}
    for text, text_cfg, views in (("minilm", DEMO_TEXT_MINILM, 1), ("minilm", DEMO_TEXT_MINILM, 5), ("glove", DEMO_TEXT, 1)):
        out = root / f"prepared-{text}-views{views}"
        first = root / "prepared-minilm-views1" / "feature_cache"
        if out != first.parent and not (out / "feature_cache").exists() and first.exists():
            shutil.copytree(first, out / "feature_cache")  # same images, same backbone: extracted once
        prepare_corpus(corpus_dir, out, PrepareConfig(text=text_cfg, progress=progress, text_views=views))
        prepared[(text, views)] = load_prepared(out)
    return {"corpora": corpora, "prepared": prepared}


def feature_splits(prepared, corpus) -> tuple[FeatureSplits, dict[str, np.ndarray]]:
    """The prepared arrays with `corpus`'s labels, and the group labels (what mAP is measured on) per split."""
    base = prepared.feature_splits()
    by_id = {it.id: it for it in corpus.items}
    groups = sorted({it.extra["group"] for it in corpus.items})
    parts, group_labels = {}, {}
    for split in ("train", "val", "test"):
        arrays = base.split(split)
        items = [by_id[i] for i in arrays.ids]
        parts[split] = SplitArrays(
            arrays.image, arrays.text, corpus.label_matrix(items), arrays.ids, text_views=arrays.text_views
        )
        group_labels[split] = np.asarray([[1.0 if it.extra["group"] == g else 0.0 for g in groups] for it in items], np.float32)
    return FeatureSplits(
        **parts, label_names=list(corpus.label_names), name="emoji-demo", text_is_tokens=base.text_is_tokens
    ), group_labels


def evaluate(model, data: FeatureSplits, group_labels: dict[str, np.ndarray], split: str) -> dict[str, Any]:
    """Group mAP and own-pair recall of a trained network on one split."""
    arrays = data.split(split)
    device = next(model.parameters()).device
    u, v = encode_split(model, _to_tensor(arrays.image, device), _to_tensor(arrays.text, device, data.text_is_tokens))
    u, v = u.cpu().numpy(), v.cpu().numpy()
    scores = cross_modal_map(u, v, group_labels[split])
    recall = cross_modal_recall(u, v, instance_groups(arrays.text))
    return {
        "i2t": scores.i2t,
        "t2i": scores.t2i,
        "avg": scores.avg,
        "recall": recall.as_dict(),
        "score": selection_score(scores, recall, CRITERION),
    }


def run_candidate(
    name, text, labels, weight, temperature, views, built, cache_dir: Path, code: str | None, form: str = "infonce"
) -> dict[str, Any]:
    """Train one candidate (or read its cached result) and evaluate it on validation and test."""
    prepared = built["prepared"][(text, views)]
    data, group_labels = feature_splits(prepared, built["corpora"][labels])
    demo = DemoConfig(
        text=text,
        labels=labels,
        instance_weight=weight,
        instance_temperature=temperature,
        progress=False,
        select_on="map" if name == REFERENCE else CRITERION,
        text_views=views,
    )
    cfg = demo_train_config(prepared, demo)
    cfg = dataclasses.replace(
        cfg,
        network=dataclasses.replace(cfg.network, num_classes=len(data.label_names)),
        loss=dataclasses.replace(cfg.loss, instance_form=form),
    )
    setting = {
        "text": text,
        "labels": labels,
        "instance_weight": weight,
        "instance_temperature": temperature,
        "text_views": views,
        "config": dataclasses.asdict(cfg),
    }
    key = hashlib.sha256(json.dumps([setting, prepared.content_hash, code], sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]
    cached = cache_dir / f"{key}.json"
    if code is not None and cached.is_file():
        return json.loads(cached.read_text())
    started = time.perf_counter()
    result = train_dscmr(data, cfg, text_encoder=prepared.build_text_encoder())
    row = {
        "name": name,
        "setting": {k: v for k, v in setting.items() if k != "config"},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "wall_s": round(time.perf_counter() - started, 1),
        "val": evaluate(result.model, data, group_labels, "val"),
        "test": evaluate(result.model, data, group_labels, "test"),
        "classes": len(data.label_names),
        "cache_key": key,
        "instance_form": form,
    }
    if code is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(row, indent=1))
    return row


def render_page(report: dict[str, Any]) -> str:
    """The results page (markdown) from the report."""
    lines = [
        "# The emoji demo's setting, chosen on validation",
        "",
        f"Produced by `{report['command']}` on {report['date']}.",
        "",
        f"Machine: {describe(report['machine_before'], report['machine_after'])}.",
        "",
        "Each row trains on the demo's train split (1,496 emoji) and keeps its best epoch on validation (187 emoji) by the "
        "criterion 'mean' (average of the average mAP over the 9 emoji groups and the average R@10 of each item's own "
        "pair, both directions); the first row, the previous demo, keeps its epoch by mAP as it did. The chosen setting "
        f"(bold) has the best validation R@10 among the rows whose validation mAP is at least the previous demo's minus "
        f"{MAP_BUDGET} ({report['val_map_floor']:.4f}): the instance term may cost category mAP only within that budget. "
        "Test (187 emoji) is reported, never used. mAP counts items sharing a group as relevant in every row. R@K: share "
        "of queries whose own pair (image -> its text, text -> its image) is among the first K of the other modality's "
        "validation / test items.",
        "",
        "| setting | classes | epoch | val mAP | val R@1 | **val R@10** | val score | test mAP | test R@1 | test R@10 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["candidates"]:
        name = f"**{row['name']}**" if row["name"] == report["chosen"] else row["name"]
        v, t = row["val"], row["test"]
        lines.append(
            f"| {name} | {row['classes']} | {row['best_epoch']} | {v['avg']:.4f} | {v['recall']['avg']['r1']:.3f} | "
            f"{v['recall']['avg']['r10']:.3f} | {v['score']:.4f} | {t['avg']:.4f} | {t['recall']['avg']['r1']:.3f} | "
            f"{t['recall']['avg']['r10']:.3f} |"
        )
    chosen = next(r for r in report["candidates"] if r["name"] == report["chosen"])
    reference = next(r for r in report["candidates"] if r["name"] == report["reference"])
    change = chosen["test"]["avg"] - reference["test"]["avg"]
    lines += [
        "",
        f"Chosen: **{report['chosen']}** (validation mAP {chosen['val']['avg']:.4f}, R@10 "
        f"{chosen['val']['recall']['avg']['r10']:.3f}). `training/demo.py` DemoConfig defaults "
        f"{'match' if report['defaults_match'] else 'DO NOT match'} it"
        + (
            f" (checked by `{report['defaults_checked']['command']}` on {report['defaults_checked']['date']} at commit "
            f"{report['defaults_checked']['commit']})."
            if "defaults_checked" in report
            else "."
        ),
        f"On test, against the previous demo: category mAP {reference['test']['avg']:.4f} -> {chosen['test']['avg']:.4f} "
        f"({change:+.4f}; the budget is -{MAP_BUDGET}: {'kept' if change >= -MAP_BUDGET else 'EXCEEDED'}), R@10 of the own pair "
        f"{reference['test']['recall']['avg']['r10']:.3f} -> {chosen['test']['recall']['avg']['r10']:.3f}, R@1 "
        f"{reference['test']['recall']['avg']['r1']:.3f} -> {chosen['test']['recall']['avg']['r1']:.3f}.",
    ]
    lines += [
        "",
        "The served demo is this setting refit on every item for the chosen epoch count "
        "(`training.pipeline.refit_and_save`); the figures above are its held-out twin's. Everyday queries against the "
        "running demo: [demo-queries.md](demo-queries.md).",
        "",
    ]
    return "\n".join(lines)


def defaults_match(chosen: dict[str, Any]) -> bool:
    """Whether DemoConfig's defaults (what `dscmr-train demo` builds) are the chosen row's setting."""
    defaults = DemoConfig()
    setting = chosen["setting"]
    return (
        setting["text"],
        setting["labels"],
        setting["instance_weight"],
        setting["instance_temperature"],
        setting["text_views"],
        chosen.get("instance_form", "infonce"),
    ) == (
        demo_text_option(defaults),
        defaults.labels,
        demo_instance_weight(defaults),
        defaults.instance_temperature,
        defaults.text_views,
        "infonce",
    ) and defaults.select_on == CRITERION


def check_defaults(out: Path, page: Path) -> int:
    """Re-check a finished report against DemoConfig's current defaults (no training) and rewrite its page.

    The runs are keyed by the code of training/, so setting the defaults to the chosen row after a run would otherwise
    retrain every candidate; this step records when and at which commit the defaults were checked."""
    report = json.loads(out.read_text())
    chosen = next(r for r in report["candidates"] if r["name"] == report["chosen"])
    report["defaults_match"] = defaults_match(chosen)
    report["defaults_checked"] = {
        "command": "python bench/demo_setting.py --check-defaults",
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
    }
    out.write_text(json.dumps(report, indent=1))
    page.write_text(render_page(report))
    print(f"defaults {'match' if report['defaults_match'] else 'DO NOT match'} {report['chosen']!r}; wrote {out} and {page}")
    return 0 if report["defaults_match"] else 1


def main(argv: list[str] | None = None) -> int:
    """Run the grid, choose on validation, write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "bench" / "out" / "demo-setting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "demo-setting.json")
    parser.add_argument("--page", type=Path, default=REPO / "docs" / "results-demo-setting.md")
    parser.add_argument("--only", help="comma-separated candidate names (exploration; writes nothing under docs/)")
    parser.add_argument(
        "--check-defaults",
        action="store_true",
        help="re-check the written report against DemoConfig's defaults and rewrite the page (no training)",
    )
    args = parser.parse_args(argv)
    if args.check_defaults:
        return check_defaults(args.out, args.page)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine_before = detect_machine()
    built = prepare_both(args.root, progress=True)
    code = code_fingerprint("model", "training")
    candidates = [c for c in CANDIDATES if not args.only or c[0] in args.only.split(",")]
    rows = []
    for candidate in candidates:
        print(f"[demo_setting] {candidate[0]} ...", file=sys.stderr, flush=True)
        name, text, labels, weight, temperature, views, *form = candidate
        rows.append(run_candidate(name, text, labels, weight, temperature, views, built, args.root / "runs", code, *form))
        v = rows[-1]["val"]
        print(
            f"  val mAP {v['avg']:.4f} R@1 {v['recall']['avg']['r1']:.3f} R@10 {v['recall']['avg']['r10']:.3f} score {v['score']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    reference = next(r for r in rows if r["name"] == REFERENCE)
    floor = reference["val"]["avg"] - MAP_BUDGET
    within = [r for r in rows if r["val"]["avg"] >= floor]
    chosen = max(within, key=lambda r: (r["val"]["recall"]["avg"]["r10"], r["val"]["avg"]))
    match = defaults_match(chosen)
    report = {
        "command": "python bench/demo_setting.py" + (f" --threads {args.threads}" if args.threads else ""),
        "date": time.strftime("%Y-%m-%d"),
        "criterion": CRITERION,
        "candidates": rows,
        "chosen": chosen["name"],
        "rule": f"best validation R@10 with validation mAP >= the reference's - {MAP_BUDGET}",
        "reference": REFERENCE,
        "val_map_floor": floor,
        "defaults_match": match,
        "machine_before": machine_before,
        "machine_after": detect_machine(),
    }
    print(render_page(report))
    if args.only:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.page.write_text(render_page(report))
    print(f"wrote {args.out} and {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
