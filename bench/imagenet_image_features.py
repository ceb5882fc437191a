"""Image-feature study on imagenet-sample-wordnet: how well each shipped backbone and preprocessing predicts the
22 coarse classes on its own, to tell whether a stronger image side is available for the DSCMR benchmark.

Linear probe (L2-normalised features, logistic regression; the best of a few C values) scored by stratified 5-fold
cross-validation on fold 0's train + validation items. The test split takes no part. Features are extracted once
and kept under WORK/. The JSON records the command, date, git commit and the machine as detected before and after;
the page is rendered from the JSON alone.

    python bench/imagenet_image_features.py            # writes docs/results/imagenet-image-features.json + .md
    python bench/imagenet_image_features.py --from-json   # re-renders docs/results-imagenet-image-features.md only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ImageOps
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import finish_record, provenance_line, run_record  # noqa: E402
from model.image_backbones import build_image_backbone  # noqa: E402
from model.image_io import load_image  # noqa: E402
from training.datasets import load_dataset  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenet-sample-wordnet"
DEFAULT_WORK = REPO / "bench" / "out" / "imagenet-image-features"
# name: (backbone, centre-crop size or None for the backbone's own, average with the mirrored crop)
VARIANTS: dict[str, tuple[str, int | None, bool]] = {
    "efficientnet-lite0, 224 crop (the benchmark's features)": ("efficientnet-lite0", None, False),
    "efficientnet-lite0, 224 crop + mirrored crop averaged": ("efficientnet-lite0", None, True),
    "efficientnet-lite0, 288 crop": ("efficientnet-lite0", 288, False),
    "efficientnet-lite2, 260 crop": ("efficientnet-lite2", None, False),
}
CONCATENATED = ("efficientnet-lite0, 224 crop (the benchmark's features)", "efficientnet-lite2, 260 crop")
PROBE_CS = (1.0, 10.0, 100.0)


def extract(paths: list[str], backbone_name: str, crop: int | None, mirrored: bool, batch_size: int = 32) -> np.ndarray:
    """Pooled features of every image under one preprocessing (optionally averaged with the mirrored crop's)."""
    backbone = build_image_backbone(backbone_name)
    if crop is not None:
        # Keep the backbone's resize-to-crop ratio at the new crop size; the backbone then expects that input size.
        own = backbone.preprocess
        backbone.preprocess = dataclasses.replace(own, crop=crop, resize=round(crop * own.resize / own.crop))
    preprocess = backbone.preprocess
    chunks = []
    for start in tqdm(
        range(0, len(paths), batch_size), desc=f"{backbone_name} {preprocess.crop}{' mirrored' if mirrored else ''}", unit="batch"
    ):
        crops = [
            preprocess.resize_and_crop(load_image(p, draft_size=preprocess.resize)) for p in paths[start : start + batch_size]
        ]
        features = backbone.extract(preprocess.normalise(crops))
        if mirrored:
            features = (features + backbone.extract(preprocess.normalise([ImageOps.mirror(c) for c in crops]))) / 2
        chunks.append(features.numpy())
    return np.concatenate(chunks)


def probe(features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Cross-validated accuracy of a logistic-regression probe for each C; the best C's figures first."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import normalize

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = {c: cross_val_score(LogisticRegression(C=c, max_iter=3000), normalize(features), labels, cv=folds) for c in PROBE_CS}
    best = max(scores, key=lambda c: scores[c].mean())
    return {
        "accuracy": float(scores[best].mean()),
        "std_over_cv_folds": float(scores[best].std(ddof=1)),
        "C": best,
        "accuracy_per_C": {str(c): float(s.mean()) for c, s in scores.items()},
    }


def render(report: dict[str, Any]) -> str:
    """docs/results-imagenet-image-features.md from the JSON alone."""
    meta, rows = report, report["results"]
    origin = provenance_line(report)
    lines = [
        "# Image features on imagenet-sample-wordnet: linear-probe accuracy",
        "",
        f"{meta['probe']} on {meta['items']} items ({meta['split']}). {origin} The probe table in "
        "results-imagenet-sample.md scores differently (standardised features, C chosen on each fold's validation "
        "split, test accuracy), so the two agree only roughly for the same features.",
        "",
        "| features | dim | accuracy (22 coarse classes) | C |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['dim']} | {r['accuracy']:.3f} ± {r['std_over_cv_folds']:.3f} | {r['C']:g} |" for name, r in rows.items()
    ]
    best = max(rows, key=lambda n: rows[n]["accuracy"])
    base = next(iter(rows))
    spread = max(r["std_over_cv_folds"] for r in rows.values())
    gain = rows[best]["accuracy"] - rows[base]["accuracy"]
    lines += [
        "",
        f"Best: {best}, {gain:+.3f} over the first row; the largest standard deviation over the probe's folds is "
        f"{spread:.3f}, so the gain is {'within' if gain <= spread else 'beyond'} one standard deviation.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Extract (or reuse) each variant's features, probe them, write the JSON and Markdown results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--from-json", action="store_true", help="re-render the page from OUT/results/imagenet-image-features.json")
    args = ap.parse_args(argv)
    json_path, page = args.out / "results" / "imagenet-image-features.json", args.out / "results-imagenet-image-features.md"
    if args.from_json:
        page.write_text(render(json.loads(json_path.read_text())))
        print(f"wrote {page} from {json_path}")
        return 0
    if not (args.data / "metadata.json").is_file():
        print(f"error: {args.data} is not imagenet-sample-wordnet (no metadata.json); pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    record = run_record("imagenet_image_features.py", argv)
    corpus, _ = load_dataset("imagenet-sample", args.data)
    by_id = {it.id: it for it in corpus.items}
    ids = corpus.splits["train"] + corpus.splits["val"]
    paths = [by_id[i].image_path for i in ids]
    labels = np.array([corpus.label_names.index(by_id[i].labels[0]) for i in ids])
    args.work.mkdir(parents=True, exist_ok=True)
    features: dict[str, np.ndarray] = {}
    for name, (backbone_name, crop, mirrored) in VARIANTS.items():
        cache = args.work / (f"{backbone_name}-{crop or 'default'}{'-mirrored' if mirrored else ''}.npz")
        if cache.is_file() and list(np.load(cache)["ids"]) == ids:
            features[name] = np.load(cache)["features"]
            continue
        t0 = time.perf_counter()
        features[name] = extract(paths, backbone_name, crop, mirrored)
        np.savez(cache, features=features[name], ids=np.array(ids))
        print(f"  {name}: {len(ids)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    normalised = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in (features[n] for n in CONCATENATED)]
    features[" + ".join(n.split(",")[0] for n in CONCATENATED) + " (concatenated, each L2-normalised)"] = np.hstack(normalised)
    results = {name: {**probe(x, labels), "dim": x.shape[1]} for name, x in features.items()}
    report = finish_record(
        {
            **record,
            "items": len(ids),
            "split": "fold 0 (split seed 0) train + val; the test split is not used",
            "probe": f"L2-normalised features, logistic regression, best C of {list(PROBE_CS)}, stratified 5-fold CV",
            "data": str(args.data),
            "torch_threads": args.threads,
            "results": results,
        }
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    page.write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
