"""Evaluation benchmark: wall time and peak extra memory of cross-modal mAP (training.evaluation) at 1,000 x 1,000 and
20,000 x 20,000.

    python bench/bench_evaluation.py --doc docs/evaluation-benchmark.md    # the recorded run (1 BLAS thread)
    python bench/bench_evaluation.py --doc docs/evaluation-benchmark.md --from-json   # re-render the page only
    python bench/bench_evaluation.py --sizes 1000 --out /tmp/eval.json      # a quick look

Data: n random 1,024-d image vectors and n text vectors (standard normal, float32; the metric normalises them, so
they are random unit vectors), paired by row, with labels over 10 classes: "single" = one class per pair drawn
uniformly; "multi" = that class plus each other class with probability 0.1 (relevance = at least one shared label).
Wall time (perf_counter) is what a user waits on this shared machine; CPU time (process_time, all threads of the
process) is what the computation itself costs, and equals the wall time on an idle machine with one BLAS thread.
Each case runs mean_average_precision in both directions (Image->Text: images query all texts; Text->Image) in its own
subprocess, so that its memory figures are its own:

- peak_tracemalloc_bytes: the peak of memory traced by tracemalloc during the two calls, above what was traced when
  they started (numpy reports its array buffers to tracemalloc, so this is the metric's working memory: unit-normalised
  float64 copies of the inputs plus the per-chunk workspace);
- peak_rss_delta_bytes: the process's peak resident set (getrusage ru_maxrss) minus its resident set just before the
  calls (after the inputs were made), a cross-check that includes allocator slack and anything tracemalloc misses.

Cases up to --check-max are also checked against a plain, unchunked reference (full similarity matrix, np.round to
TIE_DECIMALS, stable argsort, cumulative hits) to 1e-9.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import finish_record, load_note, provenance_line, run_record, write_section  # noqa: E402

DIM = 1024
CLASSES = 10


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_case(n: int, labels: str, seed: int):
    """(image vectors, text vectors, labels) of one case, float32 vectors and a (n, CLASSES) 0/1 label matrix."""
    import numpy as np

    rng = np.random.default_rng([seed, n, labels == "multi"])
    images = rng.standard_normal((n, DIM), dtype=np.float32)
    texts = rng.standard_normal((n, DIM), dtype=np.float32)
    y = np.zeros((n, CLASSES), dtype=np.float32)
    y[np.arange(n), rng.integers(0, CLASSES, n)] = 1
    if labels == "multi":
        y = np.maximum(y, rng.random((n, CLASSES)) < 0.1).astype(np.float32)
    return images, texts, y


def reference_map(queries, retrieval, query_labels, retrieval_labels) -> float:
    """Unchunked mAP, written the obvious way (whole similarity matrix, stable argsort); small n only."""
    import numpy as np

    from training.evaluation import TIE_DECIMALS

    q = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    r = retrieval / np.linalg.norm(retrieval.astype(np.float64), axis=1, keepdims=True)
    order = np.argsort(-np.round(q @ r.T, TIE_DECIMALS), axis=1, kind="stable")
    rel = np.take_along_axis((query_labels.astype(np.float64) @ retrieval_labels.T) > 0, order, axis=1)
    hits = np.cumsum(rel, axis=1)
    ap = (rel * hits / np.arange(1, rel.shape[1] + 1)).sum(axis=1) / np.maximum(hits[:, -1], 1)
    return float(ap.mean())


def run_case(n: int, labels: str, seed: int, threads: int, check_max: int) -> dict:
    """Time and measure both directions of one case (in this process)."""
    from threadpoolctl import threadpool_limits

    from training.evaluation import chunk_rows, mean_average_precision

    images, texts, y = make_case(n, labels, seed)
    result = {
        "n": n,
        "dim": DIM,
        "labels": labels,
        "classes": CLASSES,
        "input_bytes": int(images.nbytes + texts.nbytes + y.nbytes),
        "chunk_rows": chunk_rows(n, n),
    }
    with threadpool_limits(threads):
        rss_before = _rss_bytes()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        c0, t0 = time.process_time(), time.perf_counter()
        i2t = mean_average_precision(images, texts, y, y)
        t1 = time.perf_counter()
        t2i = mean_average_precision(texts, images, y, y)
        c2, t2 = time.process_time(), time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result.update(
            {
                "i2t": i2t,
                "t2i": t2i,
                "avg": (i2t + t2i) / 2,
                "wall_s_i2t": round(t1 - t0, 3),
                "wall_s_t2i": round(t2 - t1, 3),
                "wall_s_both": round(t2 - t0, 3),
                "cpu_s_both": round(c2 - c0, 3),
                "peak_tracemalloc_bytes": int(peak - base),
                "peak_rss_delta_bytes": int(peak_rss - rss_before),
            }
        )
        # after the timed calls, so that it cannot raise the peak RSS: share of pairs that are relevant (sampled rows)
        sample = y[:: max(1, n // 1000)]
        result["relevant_fraction"] = round(float(((sample @ y.T) > 0).mean()), 4)
        if n <= check_max:
            ref = (reference_map(images, texts, y, y), reference_map(texts, images, y, y))
            diff = max(abs(ref[0] - i2t), abs(ref[1] - t2i))
            if diff > 1e-9:
                raise AssertionError(f"n={n} {labels}: chunked mAP differs from the unchunked reference by {diff:.3g}")
            result["reference_max_abs_diff"] = diff
    return result


PAGE_SECTION = "evaluation-benchmark"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def render(report: dict) -> str:
    """The benchmark section of docs/evaluation-benchmark.md, from the JSON alone (figures and conclusions)."""
    cases = report["cases"]
    lines = [
        provenance_line(report),
        "",
        f"{load_note(report)} BLAS threads: {report['blas_threads']}; numpy "
        f"{report['numpy']}; seed {report['seed']}; whole run {report['total_s']:.0f} s.",
        "",
        "| n x n | labels | relevant pairs | I->T | T->I | wall time, both directions | CPU time, both directions "
        "| chunk (queries) | inputs | peak extra memory, traced | peak extra RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cases:
        lines.append(
            f"| {r['n']:,} x {r['n']:,} | {r['labels']} | {r['relevant_fraction']:.1%} | {r['i2t']:.4f} | {r['t2i']:.4f} "
            f"| {r['wall_s_both']:.2f} s | {r['cpu_s_both']:.2f} s | {r['chunk_rows']:,} | {_mib(r['input_bytes'])} "
            f"| {_mib(r['peak_tracemalloc_bytes'])} | {_mib(r['peak_rss_delta_bytes'])} |"
        )
    checked = [r for r in cases if "reference_max_abs_diff" in r]
    if checked:
        lines += [
            "",
            f"Cases up to n = {max(r['n'] for r in checked):,} were checked against the unchunked reference: "
            f"largest difference {max(r['reference_max_abs_diff'] for r in checked):.1g}.",
        ]
    by_n = sorted(cases, key=lambda r: (r["n"], r["labels"]))
    small, large = by_n[0], [r for r in by_n if r["labels"] == by_n[0]["labels"]][-1]
    if large["n"] > small["n"]:
        items = large["n"] / small["n"]
        grown = large["peak_tracemalloc_bytes"] / small["peak_tracemalloc_bytes"]
        unit_copy = large["n"] * large["dim"] * 8
        workspace = large["peak_tracemalloc_bytes"] - unit_copy
        shape = (
            "no faster than the number of items, not with the number of pairs"
            if grown <= 1.1 * items
            else "faster than the number of items"
        )
        lines += [
            "",
            f"From {small['n']:,} to {large['n']:,} items per side ({items:g} times the items, {items**2:g} times the "
            f"pairs, {small['labels']} labels) the peak traced memory grew {grown:.1f} times, {shape}: at "
            f"{large['n']:,} it is the float64 unit copy of the retrieval set ({_mib(unit_copy)}) plus "
            f"{_mib(workspace)} of chunk workspace ({large['chunk_rows']:,} query rows x {large['n']:,} items).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every case in its own subprocess, print a table and write the JSON (and, with --doc, the page's section)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,20000", help="comma-separated n (image and text vectors each)")
    p.add_argument("--labels", default="single,multi", help="label kinds: single, multi")
    p.add_argument(
        "--threads", type=int, default=1, help="BLAS threads (1 leaves the other cores to other work and times the work itself)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-max", type=int, default=2000, help="check cases up to this n against the unchunked reference")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "evaluation.json")
    p.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"write the '{PAGE_SECTION}' section of this page (docs/evaluation-benchmark.md) from the JSON",
    )
    p.add_argument("--from-json", action="store_true", help="with --doc: render from --out without running the benchmark")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.case:  # child: "n,labels"
        n, labels = args.case.split(",")
        print(json.dumps(run_case(int(n), labels, args.seed, args.threads, args.check_max)))
        return 0
    if args.from_json:
        if args.doc is None:
            p.error("--from-json needs --doc")
        write_section(args.doc, PAGE_SECTION, "bench_evaluation.py", render(json.loads(args.out.read_text())))
        print(f"written {args.doc} from {args.out}")
        return 0

    import numpy as np

    report = run_record("bench_evaluation.py", argv)
    started = time.perf_counter()
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        for labels in args.labels.split(","):
            print(f"n={n:,} {labels}-label ...", flush=True)
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--case",
                    f"{n},{labels}",
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(args.seed),
                    "--check-max",
                    str(args.check_max),
                ],
                check=True,
                env=env,
                capture_output=True,
                text=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report.update(
        {
            "benchmark": "cross-modal mAP (training.evaluation.mean_average_precision, both directions) on random unit vectors",
            "numpy": np.__version__,
            "blas_threads": args.threads,
            "memory_method": "peak_tracemalloc_bytes: tracemalloc peak during the two calls above the traced memory at their start "
            "(numpy array buffers); peak_rss_delta_bytes: getrusage ru_maxrss minus the RSS just before the calls",
            "seed": args.seed,
            "cases": results,
            "total_s": round(time.perf_counter() - started, 1),
        }
    )
    finish_record(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"\n{'n':>7} {'labels':7} {'relevant':>8} {'I2T':>7} {'T2I':>7} {'I2T s':>8} {'T2I s':>8} {'both s':>8} {'CPU s':>8} "
        f"{'chunk':>6} {'inputs MiB':>10} {'peak traced MiB':>15} {'peak RSS+ MiB':>13}"
    )
    for r in results:
        print(
            f"{r['n']:>7,} {r['labels']:7} {r['relevant_fraction']:>8.3f} {r['i2t']:>7.4f} {r['t2i']:>7.4f} {r['wall_s_i2t']:>8.2f} "
            f"{r['wall_s_t2i']:>8.2f} {r['wall_s_both']:>8.2f} {r['cpu_s_both']:>8.2f} {r['chunk_rows']:>6} {r['input_bytes'] / 2**20:>10.1f} "
            f"{r['peak_tracemalloc_bytes'] / 2**20:>15.1f} {r['peak_rss_delta_bytes'] / 2**20:>13.1f}"
        )
    print(f"\nBLAS threads: {args.threads}; written {args.out} ({report['total_s']:.0f} s)")
    if args.doc is not None:
        write_section(args.doc, PAGE_SECTION, "bench_evaluation.py", render(report))
        print(f"written {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
