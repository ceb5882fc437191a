"""Everyday queries against the running emoji demo: does the item a user names come first?

    python bench/demo_queries.py                      # the demo under artifacts/ (built first when absent)
    python bench/demo_queries.py --root /tmp/demo     # another demo artefact root

Starts the real service (`python -m app`, uvicorn on 127.0.0.1) over the demo's index and sends every query of
bench/data/demo_queries.json (written the way people type, each with the emoji that count as a hit) to POST /search/text
with target "image" and with target "text" (k = 100, the API's maximum). In the same run, a text-only anchor ranks the
items by the MiniLM cosine between the query and each item's own text (no image involved: how well the texts alone
answer). Reports R@1, R@10 and MRR (the rank of the first hit; a hit beyond the first 100 counts 0 in MRR) per route,
and for target "both" (k = 10) how many answers hold both images and texts.
Each text route runs twice in the same service: with the caption match the demo's index was published with (the
served default: the cross-modal score mixed with the match between the query and each result's own text, see
index/captions.py) and with caption_weight 0 (the cross-modal score alone, DSCMR's common space).
Writes docs/results/demo-queries.json and docs/demo-queries.md.

    python bench/demo_queries.py --choose-weight      # choose the caption weight on the validation queries

--choose-weight sends bench/data/demo_queries_validation.json (other queries, naming other emoji than the benchmark's)
with target "image" at each caption weight of WEIGHT_GRID and keeps the smallest weight whose MRR is within
WEIGHT_MRR_SLACK of the best: the most the pictures can weigh at almost no cost to the user. Writes
docs/results/demo-caption-weight.json and docs/demo-caption-weight.md; training/demo.py's DEMO_CAPTION_WEIGHT must be
the weight it chose (`--check-default` says whether it is).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe, detect_machine  # noqa: E402

QUERIES_FILE = REPO / "bench" / "data" / "demo_queries.json"
VALIDATION_QUERIES_FILE = REPO / "bench" / "data" / "demo_queries_validation.json"
WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WEIGHT_MRR_SLACK = 0.01
# (route name, target, caption weight: None = the service's default)
ROUTES = (
    ("text -> image (service, caption match)", "image", None),
    ("text -> image (cross-modal only)", "image", 0.0),
    ("text -> text (service, caption match)", "text", None),
    ("text -> text (cross-modal only)", "text", 0.0),
)
ANCHOR = "text-only anchor (MiniLM, query vs item text)"
K = 100
VARIATION_SELECTOR_16 = "\ufe0f"
TARGETS = {"R@10": 0.9, "R@1": 0.6}  # what target "image" must reach (the instance-aware search issue)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(root: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`python -m app` over the demo root on a free port; returns once /readyz answers 200."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCMR_")}
    env.update(
        {
            "DSCMR_ARTIFACTS": str(root),
            "DSCMR_HOST": "127.0.0.1",
            "DSCMR_PORT": str(port),
            "DSCMR_ACCESS_LOG": "false",
            "DSCMR_RELOAD_POLL_S": "0",
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the service was not ready after 300 s: {log_path.read_text()[-3000:]}")


def first_hit_rank(ids: list[str], hits: set[str]) -> int | None:
    """1-based position of the first hit among `ids`, None when none is there."""
    return next((i + 1 for i, item_id in enumerate(ids) if item_id in hits), None)


def summarise(ranks: list[int | None]) -> dict[str, float]:
    """R@1, R@10, MRR and the share found at all, over first-hit ranks (None = not in the answer)."""
    n = len(ranks)
    return {
        "R@1": sum(r is not None and r <= 1 for r in ranks) / n,
        "R@10": sum(r is not None and r <= 10 for r in ranks) / n,
        "MRR": sum(1.0 / r for r in ranks if r is not None) / n,
        f"found in top {K}": sum(r is not None for r in ranks) / n,
    }


def anchor_ranks(queries: list[dict[str, Any]], items, hit_ids: list[set[str]]) -> list[int]:
    """Rank of the first hit when the items are ranked by MiniLM cosine between the query and each item's own text."""
    from model.text import MiniLMSentenceEncoder

    encoder = MiniLMSentenceEncoder()
    texts = encoder.encode([it.text for it in items])
    vectors = encoder.encode([q["query"] for q in queries])
    ids = np.asarray([it.id for it in items])
    ranks = []
    for row, hits in zip(vectors @ texts.T, hit_ids):
        is_hit = np.isin(ids, list(hits))
        best = row[is_hit].max()
        ranks.append(1 + int(((row >= best) & ~is_hit).sum()))  # ties count against the query
    return ranks


def render_page(report: dict[str, Any]) -> str:
    """The docs page (markdown) from the report."""
    s = report["summary"]
    lines = [
        "# Everyday queries on the emoji demo",
        "",
        f"Produced by `{report['command']}` on {report['date']}; {len(report['queries'])} queries from "
        f"`bench/data/demo_queries.json`, sent to the running service (model `{report['model_hash'][:12]}`, index "
        f"`{report['index_version']}`, caption weight {report['caption_weight']} by default).",
        "",
        f"Machine: {describe(report['machine_before'], report['machine_after'])}.",
        "",
        "| route | R@1 | R@10 | MRR | found in top 100 | same group in top 10 |",
        "|---|---|---|---|---|---|",
    ]
    for name in [r[0] for r in ROUTES] + [ANCHOR]:
        row = s[name]
        group = f"{row['same group in top 10']:.3f}" if "same group in top 10" in row else "-"
        lines.append(
            f"| {name} | {row['R@1']:.3f} | {row['R@10']:.3f} | {row['MRR']:.3f} | {row[f'found in top {K}']:.3f} | {group} |"
        )
    image = s[ROUTES[0][0]]
    verdict = ", ".join(f"{k} {image[k]:.3f} {'>=' if image[k] >= v else '<'} {v}" for k, v in TARGETS.items())
    both = report["both"]
    lines += [
        "",
        f"Targets for text -> image as served: {verdict} ({'met' if report['targets_met'] else 'NOT met'}).",
        f'Target "both" (k = 10; not caption-matched): {both["mixed"]} of {both["answers"]} answers hold images and texts '
        f"(on average {both['images_per_answer']:.1f} images and {both['texts_per_answer']:.1f} texts).",
        "",
        "R@K: share of queries whose first hit (any emoji the query lists) is within the first K results. "
        "The served model is the demo's refit on every item (see [results-demo-setting.md](results-demo-setting.md)). "
        "*Caption match*: each result's score is (1 - w) x its cross-modal cosine + w x the MiniLM cosine between the "
        "query and the item's own text (index/captions.py), w as the demo's index was published with; "
        "*cross-modal only*: the same request with caption_weight 0, DSCMR's common space alone. "
        f"w was chosen on other queries ([demo-caption-weight.md](demo-caption-weight.md)); the {len(report['queries'])} "
        "queries here were written by hand as people type them and took no part in choosing any setting. "
        "The anchor ranks the items by their text alone, with no picture involved. *Same group in top 10*: the share "
        "of the first 10 results that carry an emoji group (the demo's label) of the emoji the query names, the "
        "category side of the ranking.",
        "",
        "| query | hits | rank (image, caption match) | rank (image, cross-modal) | rank (text, caption match) | "
        "rank (anchor) | first 3 images returned |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in report["queries"]:
        fmt = lambda r: "-" if r is None else str(r)  # noqa: E731
        lines.append(
            f"| {q['query']} | {''.join(q['hits'])} | {fmt(q['rank_image'])} | {fmt(q['rank_image_cross'])} | "
            f"{fmt(q['rank_text'])} | {q['rank_anchor']} | {''.join(q['top_images'])} |"
        )
    return "\n".join(lines) + "\n"


def choose_weight(mrr_by_weight: dict[float, float]) -> float:
    """The smallest weight whose MRR is within WEIGHT_MRR_SLACK of the best one's."""
    best = max(mrr_by_weight.values())
    return min(w for w, mrr in mrr_by_weight.items() if mrr >= best - WEIGHT_MRR_SLACK)


def render_weight_page(report: dict[str, Any]) -> str:
    """The docs page of the caption-weight choice."""
    lines = [
        "# Caption weight of the emoji demo, chosen on validation queries",
        "",
        f"Produced by `{report['command']}` on {report['date']}; {report['queries']} queries from "
        f"`bench/data/demo_queries_validation.json` (written apart from the benchmark's, naming none of its emoji), "
        f'sent with target "image" to the running service (model `{report["model_hash"][:12]}`, index '
        f"`{report['index_version']}`) at each caption weight.",
        "",
        f"Machine: {describe(report['machine_before'], report['machine_after'])}.",
        "",
        "| caption weight | R@1 | R@10 | MRR |",
        "|---|---|---|---|",
    ]
    for row in report["grid"]:
        mark = " (chosen)" if row["weight"] == report["chosen"] else ""
        lines.append(f"| {row['weight']}{mark} | {row['R@1']:.3f} | {row['R@10']:.3f} | {row['MRR']:.3f} |")
    lines += [
        "",
        f"Rule: the smallest weight whose MRR is within {WEIGHT_MRR_SLACK} of the best weight's, so that the picture keeps "
        "as much say as costs the user almost nothing. Weight 1 (the caption alone) is left out: it ranks an image by "
        "its text only, and an image without a text by nothing. "
        f"Chosen: **{report['chosen']}**; training/demo.py's DEMO_CAPTION_WEIGHT is {report['demo_default']} "
        f"({'the same' if report['chosen'] == report['demo_default'] else 'DIFFERENT: update it'}).",
        "",
        f"The same queries ranked by their text alone (MiniLM, the anchor): R@1 {report['anchor']['R@1']:.3f}, "
        f"R@10 {report['anchor']['R@10']:.3f}, MRR {report['anchor']['MRR']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def load_queries(path: Path, corpus) -> tuple[list[dict[str, Any]], list[set[str]]]:
    """The queries of `path` and, for each, the ids of the demo items that count as a hit."""
    by_emoji = {it.extra["emoji"].replace(VARIATION_SELECTOR_16, ""): it for it in corpus.items}
    data = json.loads(path.read_text(encoding="utf-8"))
    queries = data["queries"]
    hit_ids = []
    for q in queries:
        missing = [h for h in q["hits"] if h.replace(VARIATION_SELECTOR_16, "") not in by_emoji]
        if missing:
            raise SystemExit(f"query {q['query']!r} of {path.name} names emoji the demo corpus lacks: {missing}")
        hit_ids.append({by_emoji[h.replace(VARIATION_SELECTOR_16, "")].id for h in q["hits"]})
    return queries, hit_ids


def _search_ids(url: str, query: str, target: str, weight: float | None, k: int = K) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"text": query, "k": k, "target": target}
    if weight is not None:
        body["caption_weight"] = weight
    return _post(url + "/search/text", body)["results"]


def run_weight_choice(args: argparse.Namespace, corpus, machine_before: dict[str, Any]) -> int:
    """Send the validation queries at every weight of WEIGHT_GRID; write the choice's JSON and page."""
    from training.demo import DEMO_CAPTION_WEIGHT

    queries, hit_ids = load_queries(VALIDATION_QUERIES_FILE, corpus)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "demo-queries-service.log"
    process, url = start_service(args.root, log_path)
    try:
        ready = json.loads(urllib.request.urlopen(url + "/readyz", timeout=10).read())
        ranks: dict[float, list[int | None]] = {w: [] for w in WEIGHT_GRID}
        for q, hits in zip(queries, hit_ids):  # weights interleaved query by query
            for w in WEIGHT_GRID:
                ranks[w].append(first_hit_rank([r["id"] for r in _search_ids(url, q["query"], "image", w)], hits))
    finally:
        process.terminate()
        process.wait(timeout=30)
    grid = [{"weight": w, **summarise(ranks[w])} for w in WEIGHT_GRID]
    chosen = choose_weight({row["weight"]: row["MRR"] for row in grid})
    report = {
        "command": "python bench/demo_queries.py --choose-weight"
        + (f" --root {args.root}" if args.root != REPO / "artifacts" else ""),
        "date": time.strftime("%Y-%m-%d"),
        "model_hash": ready["model_hash"],
        "index_version": ready["index_version"],
        "queries": len(queries),
        "grid": grid,
        "rule": f"smallest weight with MRR >= best MRR - {WEIGHT_MRR_SLACK}",
        "chosen": chosen,
        "demo_default": DEMO_CAPTION_WEIGHT,
        "anchor": summarise(anchor_ranks(queries, corpus.items, hit_ids)),
        "machine_before": machine_before,
        "machine_after": detect_machine(),
    }
    out = args.out.parent / "demo-caption-weight.json"
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    page = args.page.parent / "demo-caption-weight.md"
    page.write_text(render_weight_page(report), encoding="utf-8")
    for row in grid:
        print(f"weight {row['weight']:<4} R@1 {row['R@1']:.3f}  R@10 {row['R@10']:.3f}  MRR {row['MRR']:.3f}")
    print(f"chosen {chosen} (DEMO_CAPTION_WEIGHT {DEMO_CAPTION_WEIGHT}); wrote {out} and {page}")
    return 0


def check_default(out_dir: Path) -> int:
    """0 when training/demo.py's DEMO_CAPTION_WEIGHT is the weight the committed choice made, else 1."""
    from training.demo import DEMO_CAPTION_WEIGHT

    chosen = json.loads((out_dir / "demo-caption-weight.json").read_text(encoding="utf-8"))["chosen"]
    print(f"chosen on validation: {chosen}; DEMO_CAPTION_WEIGHT: {DEMO_CAPTION_WEIGHT}")
    return 0 if chosen == DEMO_CAPTION_WEIGHT else 1


def main(argv: list[str] | None = None) -> int:
    """Build (if needed) and serve the demo, run the queries, write the JSON and the page."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "artifacts", help="demo artefact root (built when absent)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "demo-queries.json")
    parser.add_argument("--page", type=Path, default=REPO / "docs" / "demo-queries.md")
    parser.add_argument("--choose-weight", action="store_true", help="choose the caption weight on the validation queries")
    parser.add_argument("--check-default", action="store_true", help="is DEMO_CAPTION_WEIGHT the committed choice?")
    args = parser.parse_args(argv)
    if args.check_default:
        return check_default(args.out.parent)
    from model.corpus import load_corpus
    from training.demo import artefact_paths, build_demo

    machine_before = detect_machine()
    build_demo(args.root)  # a no-op on a built root
    corpus = load_corpus(artefact_paths(args.root)["corpus"])
    if args.choose_weight:
        return run_weight_choice(args, corpus, machine_before)
    queries, hit_ids = load_queries(QUERIES_FILE, corpus)
    emoji_of = {it.id: it.extra["emoji"] for it in corpus.items}
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "demo-queries-service.log"
    process, url = start_service(args.root, log_path)
    try:
        rows, ready = [], json.loads(urllib.request.urlopen(url + "/readyz", timeout=10).read())
        mixed, images_total, texts_total = 0, 0, 0
        for q, hits in zip(queries, hit_ids):
            answers = {name: _search_ids(url, q["query"], target, weight) for name, target, weight in ROUTES}
            both = _search_ids(url, q["query"], "both", None, k=10)
            modalities = [r["modality"] for r in both]
            mixed += len(set(modalities)) == 2
            images_total += modalities.count("image")
            texts_total += modalities.count("text")
            ranks = {name: first_hit_rank([r["id"] for r in answer], hits) for name, answer in answers.items()}
            groups = {lab for it in corpus.items if it.id in hits for lab in it.labels}
            same_group = {
                name: sum(bool(groups & set(r["labels"])) for r in answer[:10]) / max(1, len(answer[:10]))
                for name, answer in answers.items()
            }
            rows.append(
                {
                    "query": q["query"],
                    "hits": q["hits"],
                    "rank_image": ranks[ROUTES[0][0]],
                    "rank_image_cross": ranks[ROUTES[1][0]],
                    "rank_text": ranks[ROUTES[2][0]],
                    "rank_text_cross": ranks[ROUTES[3][0]],
                    "top_images": [emoji_of[r["id"]] for r in answers[ROUTES[0][0]][:3]],
                    "same_group_top10": same_group,
                }
            )
    finally:
        process.terminate()
        process.wait(timeout=30)
    for row, rank in zip(rows, anchor_ranks(queries, corpus.items, hit_ids)):
        row["rank_anchor"] = rank
    keys = ("rank_image", "rank_image_cross", "rank_text", "rank_text_cross")
    summary = {name: summarise([r[key] for r in rows]) for (name, _, _), key in zip(ROUTES, keys)}
    for name, _, _ in ROUTES:
        summary[name]["same group in top 10"] = sum(r["same_group_top10"][name] for r in rows) / len(rows)
    summary[ANCHOR] = summarise([r["rank_anchor"] for r in rows])
    image = summary[ROUTES[0][0]]
    report = {
        "command": "python bench/demo_queries.py" + (f" --root {args.root}" if args.root != REPO / "artifacts" else ""),
        "date": time.strftime("%Y-%m-%d"),
        "model_hash": ready["model_hash"],
        "index_version": ready["index_version"],
        "caption_weight": ready.get("caption_weight"),
        "summary": summary,
        "targets": TARGETS,
        "targets_met": all(image[k] >= v for k, v in TARGETS.items()),
        "both": {
            "answers": len(rows),
            "mixed": mixed,
            "images_per_answer": images_total / len(rows),
            "texts_per_answer": texts_total / len(rows),
        },
        "queries": rows,
        "machine_before": machine_before,
        "machine_after": detect_machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    args.page.write_text(render_page(report), encoding="utf-8")
    for name, row in summary.items():
        print(f"{name:<48} R@1 {row['R@1']:.3f}  R@10 {row['R@10']:.3f}  MRR {row['MRR']:.3f}")
    print(f"targets (text -> image as served): {'met' if report['targets_met'] else 'NOT met'}; wrote {args.out} and {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
