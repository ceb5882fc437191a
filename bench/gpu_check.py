"""GPU check: the same work on the CPU and, where CUDA is present, on the GPU, for the three heavy stages.

    train    DSCMR training epochs/s on synthetic features sized like the paper's (4096-d image, 300-d text, 10 classes,
             batch 100), through training.train.train_dscmr (validation every epoch; AMP on the GPU: bf16 where native,
             else fp16 with a scaler)
    extract  EfficientNet-Lite0 feature extraction images/s on synthetic preprocessed 224x224 images, through
             ImageBackbone.extract (what `training prepare` runs; decoding/resizing excluded: it is CPU work either way)
    search   FAISS exact inner-product search queries/s (IndexFlatIP over unit vectors, k=10); the GPU side is a FAISS GPU
             index when this FAISS build has GPU support, else an exact torch matmul + top-k on the GPU (marked so)

Prints a table and writes JSON (default bench/out/gpu_check.json). Without a GPU it runs the CPU side only and says so.
`--quick` shrinks every size (for the test suite). `--doc PAGE` renders the page section from the JSON.

    bench/gpu_check.sh                 # full run
    bench/gpu_check.sh --quick --out /tmp/gpu_check.json
    bench/gpu_check.sh --out docs/results/gpu_check.json --doc docs/gpu-check.md          # the recorded run and its page
    bench/gpu_check.sh --out docs/results/gpu_check.json --doc docs/gpu-check.md --from-json   # re-render only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from bench.provenance import finish_record, load_note, provenance_line, run_record, write_section  # noqa: E402

SIZES = {
    # train: items / epochs; extract: images / batch; search: database vectors / queries
    "full": {"n_train": 2000, "n_val": 500, "epochs": 3, "images": 128, "image_batch": 64, "db": 200_000, "queries": 500},
    "quick": {"n_train": 100, "n_val": 20, "epochs": 1, "images": 4, "image_batch": 2, "db": 2_000, "queries": 20},
}
IMAGE_DIM, TEXT_DIM, CLASSES, SEARCH_DIM, TOP_K = 4096, 300, 10, 1024, 10


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result) of fn(), with the GPU synchronised around it."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def libraries() -> dict[str, Any]:
    """The torch / CUDA / FAISS builds that ran the check (the machine itself is bench.machine.detect_machine's)."""
    import faiss

    from index.faiss_index import gpu_available

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "faiss": getattr(faiss, "__version__", "?"),
        "faiss_gpu": gpu_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["compute_capability"] = f"{props.major}.{props.minor}"
    return info


def _synthetic_splits(n_train: int, n_val: int, seed: int = 0):
    """Class-structured random features (paper-sized) so that validation mAP is meaningful, not just noise."""
    from training.features import FeatureSplits, SplitArrays, one_hot

    rng = np.random.default_rng(seed)
    img_means, txt_means = rng.normal(size=(CLASSES, IMAGE_DIM)), rng.normal(size=(CLASSES, TEXT_DIM))

    def split(n: int, name: str) -> SplitArrays:
        cls = rng.integers(0, CLASSES, n)
        img = (img_means[cls] + 2.0 * rng.normal(size=(n, IMAGE_DIM))).astype(np.float32)
        txt = (txt_means[cls] + 2.0 * rng.normal(size=(n, TEXT_DIM))).astype(np.float32)
        return SplitArrays(img, txt, one_hot(cls, CLASSES), [f"{name}{i}" for i in range(n)])

    return FeatureSplits(
        split(n_train, "tr"), split(n_val, "va"), split(n_val, "te"), [f"c{j}" for j in range(CLASSES)], name="synthetic"
    )


def bench_train(device: str, sizes: dict[str, int]) -> dict[str, Any]:
    """DSCMR epochs/s (train + per-epoch validation) on `device`."""
    from training.config import preset, with_dims
    from training.train import amp_mode, train_dscmr

    data = _synthetic_splits(sizes["n_train"], sizes["n_val"])
    cfg = with_dims(preset("paper", epochs=sizes["epochs"], progress=False, device=device, seed=0), IMAGE_DIM, TEXT_DIM, CLASSES)
    # Warm-up on a small run: lazy imports, the CUDA context, cuBLAS/oneDNN handles and kernels are set up untimed.
    train_dscmr(_synthetic_splits(100, 20), dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)))
    _, cpu_s, result = _timed(lambda: train_dscmr(data, cfg), device)
    return {
        "rate": result.epochs_run / result.wall_s,
        "seconds": result.wall_s,
        "process_cpu_s": cpu_s,
        "val_avg_map": result.best_val.avg,
        "precision": amp_mode(torch.device(device), cfg.train.amp),
    }


def bench_extract(device: str, sizes: dict[str, int]) -> dict[str, Any]:
    """EfficientNet-Lite0 images/s on `device` (host batch in, host features out, as in `training prepare`)."""
    from model.image_backbones import build_image_backbone

    backbone = build_image_backbone("efficientnet-lite0").to_device(device)
    crop = backbone.preprocess.crop
    gen = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(min(sizes["image_batch"], sizes["images"] - i), 3, crop, crop, generator=gen)
        for i in range(0, sizes["images"], sizes["image_batch"])
    ]
    backbone.extract(batches[0][:1]).cpu()  # lazy init (oneDNN / cuDNN kernel selection) outside the timing
    if device.startswith("cuda"):
        backbone.extract(batches[0]).cpu()
    seconds, cpu_s, feats = _timed(lambda: [backbone.extract(b).cpu() for b in batches], device)
    return {
        "rate": sizes["images"] / seconds,
        "seconds": seconds,
        "process_cpu_s": cpu_s,
        "feature_dim": int(feats[0].shape[1]),
        "precision": "fp32",
    }


def _search_data(sizes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    rng = np.random.default_rng(0)
    db = rng.standard_normal((sizes["db"], SEARCH_DIM), dtype=np.float32)
    queries = rng.standard_normal((sizes["queries"], SEARCH_DIM), dtype=np.float32)
    faiss.normalize_L2(db)
    faiss.normalize_L2(queries)
    return db, queries


def bench_search(db: np.ndarray, queries: np.ndarray, use_gpu: bool) -> tuple[dict[str, Any], dict[str, Any] | None, str | None]:
    """(CPU result, GPU result or None, note) for flat inner-product top-k over `db`."""
    import faiss

    from index.faiss_index import GpuSearcher, gpu_available

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    seconds, cpu_s, (_, cpu_ids) = _timed(lambda: index.search(queries, TOP_K), "cpu")
    cpu = {"rate": len(queries) / seconds, "seconds": seconds, "process_cpu_s": cpu_s, "engine": "faiss IndexFlatIP"}
    if not use_gpu:
        return cpu, None, None
    if gpu_available():
        searcher = GpuSearcher(index)
        searcher.search(queries[:8], TOP_K)
        seconds, cpu_s, (_, gpu_ids) = _timed(
            lambda: searcher.search(queries, TOP_K), "cpu"
        )  # faiss GPU search returns host arrays
        engine, note = "faiss GPU IndexFlatIP", None
    else:
        db_gpu = torch.from_numpy(db).to("cuda")

        def torch_search():
            q = torch.from_numpy(queries).to("cuda")
            ids = torch.cat([torch.topk(q[i : i + 256] @ db_gpu.T, TOP_K, dim=1).indices for i in range(0, len(q), 256)])
            return None, ids.cpu().numpy()

        torch_search()
        seconds, cpu_s, (_, gpu_ids) = _timed(torch_search, "cuda")
        engine = "torch matmul + topk (fp32)"
        note = "this FAISS build has no GPU support (faiss-cpu); GPU search measured as an exact torch matmul + top-k"
    agree = float((gpu_ids[:, 0] == cpu_ids[:, 0]).mean())
    return (
        cpu,
        {
            "rate": len(queries) / seconds,
            "seconds": seconds,
            "process_cpu_s": cpu_s,
            "engine": engine,
            "top1_agreement_with_cpu": agree,
        },
        note,
    )


def run_check(quick: bool = False, cpu_only: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three measurements on the CPU and (when there is one and not cpu_only) the GPU; return the report, with
    the command, date, commit and the machine as detected before and after."""
    mode = "quick" if quick else "full"
    sizes = SIZES[mode]
    use_gpu = torch.cuda.is_available() and not cpu_only
    record = run_record("gpu_check.py", argv)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    work = {
        "train": {
            "unit": "epochs/s",
            "work": f"DSCMR {sizes['epochs']} epoch(s), {sizes['n_train']} train + {sizes['n_val']} val items, "
            f"{IMAGE_DIM}/{TEXT_DIM}-d, batch 100",
        },
        "extract": {
            "unit": "images/s",
            "work": f"EfficientNet-Lite0, {sizes['images']} images 224x224, batch {sizes['image_batch']}",
        },
        "search": {
            "unit": "queries/s",
            "work": f"flat IP top-{TOP_K}, {sizes['db']:,} x {SEARCH_DIM} vectors, {sizes['queries']} queries",
        },
    }
    for name, fn in (("train", bench_train), ("extract", bench_extract)):
        print(f"[gpu_check] {name} on cpu ...", file=sys.stderr, flush=True)
        entry = {**work[name], "cpu": fn("cpu", sizes), "gpu": None, "note": None}
        if use_gpu:
            print(f"[gpu_check] {name} on cuda ...", file=sys.stderr, flush=True)
            entry["gpu"] = fn("cuda", sizes)
        results[name] = entry
    print("[gpu_check] search ...", file=sys.stderr, flush=True)
    db, queries = _search_data(sizes)
    cpu, gpu, note = bench_search(db, queries, use_gpu)
    results["search"] = {**work["search"], "cpu": cpu, "gpu": gpu, "note": note}
    for entry in results.values():
        entry["speedup"] = entry["gpu"]["rate"] / entry["cpu"]["rate"] if entry["gpu"] else None
    if use_gpu:
        status = "GPU and CPU measured"
    elif torch.cuda.is_available():
        status = "CPU only: --cpu-only was given"
    else:
        status = "CPU only: no CUDA device (torch.cuda.is_available() is False); GPU columns are empty"
    record.update(
        {
            "mode": mode,
            "gpu_measured": use_gpu,
            "status": status,
            "libraries": libraries(),
            "results": results,
            "wall_s": round(time.perf_counter() - started, 2),
        }
    )
    return finish_record(record)


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table."""
    lines = [
        f"gpu_check ({report['mode']}): {report['status']}",
        f"{'task':<9}{'unit':<11}{'CPU':>12}{'GPU':>12}{'speedup':>9}  work",
    ]
    for name, entry in report["results"].items():
        gpu = f"{entry['gpu']['rate']:>12.2f}" if entry["gpu"] else f"{'-':>12}"
        speed = f"{entry['speedup']:>8.1f}x" if entry["speedup"] else f"{'-':>9}"
        lines.append(f"{name:<9}{entry['unit']:<11}{entry['cpu']['rate']:>12.2f}{gpu}{speed}  {entry['work']}")
        if entry.get("note"):
            lines.append(f"{'':<9}note: {entry['note']}")
    libs = report["libraries"]
    lines.append(
        f"machine: {describe(report['machine_before'], report.get('machine_after'))}; faiss {libs['faiss']} "
        f"(GPU support: {libs['faiss_gpu']}); total {report['wall_s']} s"
    )
    return "\n".join(lines)


PAGE_SECTION = "gpu-check"


def render(report: dict[str, Any]) -> str:
    """The recorded-run section of docs/gpu-check.md, from the JSON alone (figures and conclusions)."""
    lines = [provenance_line(report), "", load_note(report), "", "```", format_table(report), "```", ""]
    cpu_share = []
    for name, entry in report["results"].items():
        cpu = entry["cpu"]
        cpu_share.append(f"{name} {cpu['process_cpu_s']:.1f} CPU-s in {cpu['seconds']:.1f} s wall")
    cores = report["machine_before"].get("cores") or 1
    lines.append(f"CPU time of the process against wall time on the CPU side: {'; '.join(cpu_share)} ({cores} cores).")
    if report["gpu_measured"]:
        speedups = {name: entry["speedup"] for name, entry in report["results"].items() if entry["speedup"]}
        lines.append(
            "GPU speed-up over this machine's CPU: " + ", ".join(f"{name} {value:.1f}x" for name, value in speedups.items()) + "."
        )
        search = report["results"]["search"]["gpu"]
        lines.append(
            f"GPU search engine: {search['engine']}; top-1 ids agreeing with the CPU's: {search['top1_agreement_with_cpu']:.1%}."
        )
    else:
        lines.append(f"No GPU figure: {report['status']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the check, print the table, write the JSON (and, with --doc, the page's section)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests), not representative")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even when one is present")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu_check.json")
    parser.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"write the '{PAGE_SECTION}' section of this page (docs/gpu-check.md) from the JSON",
    )
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="with --doc: render from --out (e.g. a JSON brought back from a GPU host) without running",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        if args.doc is None:
            parser.error("--from-json needs --doc")
        write_section(args.doc, PAGE_SECTION, "gpu_check.py", render(json.loads(args.out.read_text())))
        print(f"wrote {args.doc} from {args.out}")
        return 0
    report = run_check(quick=args.quick, cpu_only=args.cpu_only, argv=argv)
    print(format_table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.doc is not None:
        write_section(args.doc, PAGE_SECTION, "gpu_check.py", render(report))
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
