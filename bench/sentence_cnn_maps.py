"""Dying sentence-CNN feature maps: how many maps still fire after DSCMR training, how many texts get an all-zero text
feature, and the mAP, per choice of what follows max-over-time pooling (issue 19, item 7).

    .venv/bin/python bench/sentence_cnn_maps.py                              # the default setting (bench/out)
    .venv/bin/python bench/sentence_cnn_maps.py --epochs 5 --seeds 0 --out /tmp/maps.json   # a quick look
    .venv/bin/python bench/sentence_cnn_maps.py --embed-dim 300 --items 2193 --epochs 50 \
        --out docs/results/sentence-cnn-maps.json --doc docs/results-sentence-cnn-maps.md   # the published page
    .venv/bin/python bench/sentence_cnn_maps.py --from-json --out docs/results/sentence-cnn-maps.json \
        --doc docs/results-sentence-cnn-maps.md                              # the page again from its JSON

Data: a generated topic corpus (`tests.fixtures_data.topic_corpus`): `--items` pairs in 10 classes; each text draws its words from a
Zipf-distributed common vocabulary and, with probability 0.2 per word, from its class's 60 topic words; 5% of texts
are 1-3 words long (the rest 8-39). Image features are the class's random prototype plus Gaussian noise (`--noise`).
The split is 70/15/15 in item order. Text: the sentence CNN on word2vec trained on the training texts (as
`training prepare --text sentence_cnn` builds it). Training: the wiki-tuned preset (Adam lr 1e-3, cosine, no dropout:
the setting in which the defect was found), `--epochs`, selected on validation mAP.

Variants (VARIANT_NOTES): relu (Kim 2014 and the paper), leaky_relu, pool_norm, text_lr_0.3 and elu (the default
since this comparison). Per variant and seed: live maps (a positive pooled value on at least one training text) at
initialisation, at the selected epoch and at the last epoch; texts of all splits on which no map fires (all-zero
features with ReLU); validation and test average mAP of the selected model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Per variant: TextEncoderConfig fields, and under "train" TrainConfig fields.
VARIANTS: dict[str, dict[str, Any]] = {
    "relu": {"activation": "relu"},
    "leaky_relu": {"activation": "leaky_relu"},
    "pool_norm": {"activation": "relu", "pool_norm": True},
    "text_lr_0.3": {"activation": "relu", "train": {"text_lr_scale": 0.3}},
    "elu": {"activation": "elu"},
}
VARIANT_NOTES = {
    "relu": "ReLU after max-over-time pooling (Kim 2014 and the paper)",
    "leaky_relu": "leaky ReLU (slope 0.01 below zero)",
    "pool_norm": "batch norm of the pooled maps (no affine shift), then ReLU",
    "text_lr_0.3": "ReLU, with the sentence CNN and its word vectors at 0.3x the learning rate (TrainConfig.text_lr_scale)",
    "elu": "ELU after pooling (a gradient below zero too, so a map that stops firing can come back)",
}
# A variant "keeps the maps live" when at least this share fires at the kept epoch.
LIVE_TARGET = 0.99


def run_variant(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant on the corpus of `seed`; return its map and mAP figures."""
    import numpy as np
    import torch

    from model.sentence_cnn import TextEncoderConfig
    from model.text import build_sentence_cnn
    from tests.fixtures_data import topic_corpus
    from training.config import preset, with_dims
    from training.features import FeatureSplits, SplitArrays
    from training.train import evaluate_model, train_dscmr

    torch.set_num_threads(args.threads)
    texts, labels, images = topic_corpus(args.items, seed=seed, noise=args.noise)
    y = np.eye(labels.max() + 1, dtype=np.float32)[labels]
    n = len(texts)
    rows = np.arange(n)
    parts = {"train": rows[: int(0.7 * n)], "val": rows[int(0.7 * n) : int(0.85 * n)], "test": rows[int(0.85 * n) :]}
    text_cfg = TextEncoderConfig(
        kind="sentence_cnn",
        embed_dim=args.embed_dim,
        maps=args.maps,
        min_count=2,
        max_len=64,
        **{k: v for k, v in VARIANTS[variant].items() if k != "train"},
    )
    torch.manual_seed(seed)
    bundle = build_sentence_cnn(text_cfg, [texts[i] for i in parts["train"]], seed=seed)
    ids = bundle.vocab.encode(texts, max_len=text_cfg.max_len).numpy().astype(np.int64)
    splits = {k: SplitArrays(images[r], ids[r], y[r], [str(i) for i in r]) for k, r in parts.items()}
    data = FeatureSplits(**splits, label_names=[str(c) for c in range(y.shape[1])], name="topic-corpus", text_is_tokens=True)
    cfg = preset("wiki-tuned", epochs=args.epochs, progress=False, device="cpu", seed=seed, **VARIANTS[variant].get("train", {}))
    cfg = with_dims(cfg, images.shape[1], bundle.encoder.output_dim, y.shape[1])
    train_ids = torch.from_numpy(ids[parts["train"]])
    init = bundle.encoder.map_activity(train_ids)
    started = time.perf_counter()
    result = train_dscmr(data, cfg, text_encoder=bundle.encoder)
    wall = time.perf_counter() - started
    selected = result.model.text_encoder
    at_best = selected.map_activity(train_ids)
    everything = selected.map_activity(torch.from_numpy(ids))
    test = evaluate_model(result.model, data, "test")
    last = result.history[-1]
    return {
        "variant": variant,
        "seed": seed,
        "maps": init.maps,
        "live_init": init.live_fraction,
        "live_selected": at_best.live_fraction,
        "live_last": last.get("text_live_maps"),
        "silent_texts_selected": everything.silent_texts,
        "texts": everything.texts,
        "silent_last": last.get("text_silent"),
        "best_epoch": result.best_epoch,
        "val_map": result.best_val.avg,
        "test_map": test.avg,
        "train_wall_s": round(wall, 1),
        "live_per_epoch": [h.get("text_live_maps") for h in result.history],
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def render(report: dict[str, Any]) -> str:
    """The page, from the JSON alone."""
    from bench.provenance import load_note, provenance_line

    st = report["settings"]
    lines = [
        "# Sentence CNN: feature maps that stop firing",
        "",
        provenance_line(report) + " " + load_note(report),
        "",
        f"A generated topic corpus (`tests.fixtures_data.topic_corpus`): {st['items']:,} pairs in 10 classes, texts drawn "
        "from a Zipf-distributed common vocabulary and, with probability 0.2 per word, from their class's topic words; image "
        f"features are the class's prototype plus Gaussian noise ({st['noise']}). Split 70/15/15 in item order. The sentence "
        f"CNN reads word2vec ({st['embed_dim']}-d) trained on the training texts, {st['maps']} maps per kernel width 3, 4, "
        f"5; DSCMR trains with the wiki-tuned preset (Adam lr 1e-3, cosine, no dropout) for at most {st['epochs']} epochs "
        "and keeps the epoch with the best validation mAP. A map is *live* when its pooled maximum is positive on at least "
        "one training text; a *silent* text is one on which no map fires (an all-zero feature with ReLU). Variants:",
        "",
        *[f"- {v}: {VARIANT_NOTES.get(v, v)}" for v in dict.fromkeys(r["variant"] for r in report["rows"])],
        "",
        "| variant | seed | live at init | after epoch 1 | at the kept epoch | at the last epoch | silent texts | kept epoch "
        "| val mAP | test mAP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        first = r["live_per_epoch"][0] if r["live_per_epoch"] else None
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['live_init']:.3f} | {'-' if first is None else f'{first:.3f}'} | "
            f"{r['live_selected']:.3f} | {r['live_last']:.3f} | {r['silent_texts_selected']} of {r['texts']:,} | "
            f"{r['best_epoch']} | {r['val_map']:.4f} | {r['test_map']:.4f} |"
        )
    variants = list(dict.fromkeys(r["variant"] for r in report["rows"]))
    means = {
        v: {k: _mean([r[k] for r in report["rows"] if r["variant"] == v]) for k in ("live_selected", "val_map", "test_map")}
        for v in variants
    }
    lines += ["", "Means over seeds:", ""]
    lines += ["| variant | live at the kept epoch | val mAP | test mAP |", "|---|---|---|---|"]
    for v in variants:
        m = means[v]
        lines.append(f"| {v} | {m['live_selected']:.3f} | {m['val_map']:.4f} | {m['test_map']:.4f} |")
    if "relu" in means:
        base = means["relu"]
        notes = [
            f"{v}: {means[v]['live_selected'] - base['live_selected']:+.3f} live share, "
            f"{means[v]['val_map'] - base['val_map']:+.4f} val mAP, {means[v]['test_map'] - base['test_map']:+.4f} test mAP"
            for v in variants
            if v != "relu"
        ]
        if notes:
            lines += ["", "Against ReLU (the paper's): " + "; ".join(notes) + "."]
    all_live = [v for v in variants if means[v]["live_selected"] >= LIVE_TARGET]
    if all_live:
        chosen = max(all_live, key=lambda v: means[v]["val_map"])
        lines += [
            "",
            f"Choice, on validation only: of the variants that keep at least {LIVE_TARGET:.0%} of the maps live at the kept "
            f"epoch ({', '.join(all_live)}), the best mean validation mAP is **{chosen}** ({means[chosen]['val_map']:.4f}"
            + (
                f", against {means['relu']['val_map']:.4f} for ReLU, which keeps {means['relu']['live_selected']:.3f})."
                if "relu" in means
                else ")."
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--embed-dim", type=int, default=100)
    parser.add_argument("--maps", type=int, default=100, help="maps per kernel width (3 widths)")
    parser.add_argument("--noise", type=float, default=2.0, help="image-feature noise around the class prototype")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--jobs", type=int, default=2, help="cases trained at once (processes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "sentence_cnn_maps.json")
    parser.add_argument("--doc", type=Path, help="also write this page from the results (docs/results-sentence-cnn-maps.md)")
    parser.add_argument("--from-json", action="store_true", help="with --doc: render the page from --out, run nothing")
    args = parser.parse_args(argv)
    from bench.machine import describe
    from bench.provenance import finish_record, run_record

    if args.from_json:
        if args.doc is None:
            parser.error("--from-json needs --doc")
        args.doc.write_text(render(json.loads(args.out.read_text())))
        print(f"written {args.doc} from {args.out}")
        return 0
    record = run_record("sentence_cnn_maps.py", argv)
    cases = [(v, int(s)) for s in args.seeds.split(",") for v in args.variants.split(",")]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(run_variant, *zip(*cases), [args] * len(cases)))
    else:
        rows = [run_variant(v, s, args) for v, s in cases]
    finish_record(record)
    print(
        f"{'variant':<12}{'seed':>5}{'live init':>10}{'live sel':>10}{'live last':>10}{'silent':>8}{'best ep':>8}"
        f"{'val mAP':>9}{'test mAP':>9}"
    )
    for r in rows:
        print(
            f"{r['variant']:<12}{r['seed']:>5}{r['live_init']:>10.3f}{r['live_selected']:>10.3f}{r['live_last']:>10.3f}"
            f"{r['silent_texts_selected']:>8}{r['best_epoch']:>8}{r['val_map']:>9.4f}{r['test_map']:>9.4f}"
        )
    print(describe(record["machine_before"], record["machine_after"]))
    report = {
        **record,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    if args.doc is not None:
        args.doc.write_text(render(report))
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
