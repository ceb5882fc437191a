"""Index benchmark: build time, memory, queries/s and recall@10 of flat, HNSW and IVF-PQ on synthetic clustered
1,024-d unit vectors, and the overhead of our search library (index.search.SearchIndex) over raw FAISS calls on the
same index object. (`--hnsw-n` caps the HNSW collection for machines where its build would take too long.)

    python bench/bench_index.py --doc docs/index-benchmark.md          # 1M vectors for all three types (long on 2 cores)
    python bench/bench_index.py --n 200000 --hnsw-n 200000 --queries 500 --search-threads 1 --doc docs/index-benchmark.md
    python bench/bench_index.py --doc docs/index-benchmark.md --from-json   # re-render the page's section from the JSON
    python bench/bench_index.py --n 50000 --hnsw-n 20000 --queries 200 --out /tmp/small.json   # a quick look

The JSON records the command, date, git commit and the machine as detected before and after (bench.machine); `--doc
PAGE` renders the page's `index-benchmark` section from the JSON alone, conclusions included.

Each index type is built and measured in its own subprocess (so that its peak RSS is its own), through the library's
real build path (`publish_version`: FAISS + SQLite metadata + manifest + atomic publish) and loaded with
`SearchIndex.load` (sha256-verified). Ground truth is an exact float32 matrix-product top-k computed by numpy, block by
block, independently of FAISS (with `--work DIR` it is kept there and reused by later runs with the same data).
Library overhead: the same query sets go through `index.search(q, k)` on the FAISS object ("raw"), through
`SearchIndex.search_keys(q, k)` ("keys": the library call that returns what FAISS returns, after checking and
normalising the queries), through `SearchIndex.search_vectors(q, k)` ("hits": typed results carrying every hit's
metadata, built from the records table the default load keeps in memory) and through the same call on the same index
with the records read from the memory map instead ("hits_mmap", `records_in_memory=False`), back to back, in an order
that rotates from set to set and round to round so that each path takes each place equally often. The overhead
reported is the median over query sets of (library time / raw time on the same set, summed over the rounds) - 1,
for batches of 100 queries and for one query per call, on CPU time of the process (`*_pct`: the work itself, of all
threads, blind to waits while other jobs hold the machine's cores) and on wall-clock time (`*_pct_wall`); the
library's own work timed with FAISS taken out is recorded too (`library_own_work_us_*`).
`--keep-built` keeps the built versions in `--work` so that a later run can re-measure them without building again.
The in-memory records table's cost is recorded as `records_table_*`: load time (decode of records.jsonl), the bytes
Python allocates for it (tracemalloc) and the growth of the process's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.provenance import finish_record, load_note, provenance_line, run_record, write_section  # noqa: E402

DEFAULTS = {
    "n": 1_000_000,
    "dim": 1024,
    "hnsw_n": 1_000_000,
    "queries": 1000,
    "k": 10,
    "clusters": 1000,
    "intrinsic_dim": 64,
    "seed": 0,
}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------------------------------ subprocesses
def _data(args: argparse.Namespace):
    from index.synthetic import ClusteredVectors

    return ClusteredVectors(
        n=args.n, dim=args.dim, n_clusters=args.clusters, seed=args.seed, intrinsic_dim=args.intrinsic_dim or None
    )


def ground_truth(args: argparse.Namespace) -> dict:
    """Exact top-k ids of the queries over the first n vectors (and over the HNSW subset), by numpy float32 matmul."""
    import numpy as np

    data = _data(args)
    queries, _ = data.queries(args.queries)
    limits = sorted({args.n, min(args.hnsw_n, args.n)})
    best = {
        lim: (np.full((len(queries), args.k), -np.inf, np.float32), np.full((len(queries), args.k), -1, np.int64))
        for lim in limits
    }
    t0 = time.perf_counter()
    for first, vectors, _ in data.blocks():
        scores = queries @ vectors.T
        ids = np.arange(first, first + len(vectors))
        for lim in limits:
            if first >= lim:
                continue
            take = min(len(vectors), lim - first)
            s, i = best[lim]
            all_s = np.concatenate([s, scores[:, :take]], axis=1)
            all_i = np.concatenate([i, np.broadcast_to(ids[:take], (len(queries), take))], axis=1)
            top = np.argsort(-all_s, axis=1, kind="stable")[:, : args.k]
            best[lim] = (np.take_along_axis(all_s, top, axis=1), np.take_along_axis(all_i, top, axis=1))
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "params": _truth_params(args),
        "truth": {str(lim): best[lim][1].tolist() for lim in limits},
    }


def _truth_params(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("n", "dim", "hnsw_n", "queries", "k", "clusters", "intrinsic_dim", "seed")}


def measure_one(args: argparse.Namespace) -> dict:
    """Build one index type through the library, then time raw FAISS and the library on the same index."""
    import faiss
    import numpy as np

    from index.build import IndexConfig, publish_version
    from index.records import RECORDS_FILE, RecordReader
    from index.search import SearchIndex, _normalise_queries
    from index.synthetic import ClusteredSource

    kind = args.one
    n = min(args.hnsw_n, args.n) if kind == "hnsw" else args.n
    data = _data(args)
    queries, _ = data.queries(args.queries)
    truth = np.array(json.loads(Path(args.truth).read_text())["truth"][str(n)])
    rounds = args.rounds
    if kind == "flat":  # an exact scan is slow (memory-bound): time fewer queries
        queries, truth, rounds = queries[: args.flat_queries], truth[: args.flat_queries], 3
    root = Path(args.work) / kind
    rss0 = _rss_bytes()
    config = IndexConfig(index_type=kind, seed=args.seed)
    reused = args.keep_built and _built_version(root, n) is not None
    if reused:  # measure a version an earlier --keep-built run built (build figures come from its manifest)
        version, publish_s, peak_build = _built_version(root, n), None, None
    else:
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        version = publish_version(root, ClusteredSource(data, limit=n), "bench-model", config, show_progress=False)
        publish_s = time.perf_counter() - t0
        peak_build = _peak_rss_bytes()
    if args.search_threads:
        faiss.omp_set_num_threads(args.search_threads)
    manifest = json.loads((version / "manifest.json").read_text())
    info = manifest["modalities"]["image"]
    t0 = time.perf_counter()
    index = SearchIndex.load(root)
    load_s = time.perf_counter() - t0
    raw = index.faiss_index("image")
    rss_loaded = _rss_bytes()
    # the same loaded index with its hits built from the memory-mapped records (the path for corpora past the budget)
    mapped = SearchIndex(index.path, index.manifest, index._indexes, index.metadata, RecordReader(version, in_memory=False))

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / args.k for f, t in zip(found, truth)]))

    batch = args.batch
    batches = [queries[i : i + batch] for i in range(0, len(queries), batch)]
    paths = {
        "raw": lambda q: raw.search(q, args.k),  # the FAISS call: ids and distances
        "keys": lambda q: index.search_keys(q, args.k),  # library, same output as FAISS (checks, normalising, dispatch)
        "hits": lambda q: index.search_vectors(q, args.k),  # library, typed results with every hit's metadata
        "hits_mmap": lambda q: mapped.search_vectors(q, args.k),  # the same, records read from the memory map
    }
    names = list(paths)

    def time_paths(query_sets: list[np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
        """Every query set goes through the paths back to back, in an order that rotates from set to set and from
        round to round; over a multiple of len(paths) rounds each path takes each place equally often on every set (the
        first call on a query meets colder caches than the ones after it). Each call is timed on two clocks: "cpu"
        (CPU time of this process: the work itself, blind to the time the process waits while other jobs hold the
        cores) and "wall". Returns per clock and path: the median over rounds of the path's total time, and the
        median over query sets of its time summed over the rounds divided by raw FAISS's on the same set (and of the
        difference, per call): pairing by set keeps a burst from another job from moving only one path's figure."""
        reps = len(names) * max(1, -(-rounds // len(names)))
        calls = {clock: {name: np.zeros((reps, len(query_sets))) for name in names} for clock in ("cpu", "wall")}
        for r in range(reps):
            for i, qb in enumerate(query_sets):
                shift = (i + r) % len(names)
                for name in names[shift:] + names[:shift]:
                    c, t = time.process_time(), time.perf_counter()
                    paths[name](qb)
                    calls["wall"][name][r, i] = time.perf_counter() - t
                    calls["cpu"][name][r, i] = time.process_time() - c
        out = {}
        for clock, per_path in calls.items():
            raw_sets = per_path["raw"].sum(axis=0)
            out[clock] = {
                name: {
                    "total_s": float(np.median(v.sum(axis=1))),
                    "ratio": float(np.median(v.sum(axis=0) / raw_sets)),
                    "added_s_per_call": float(np.median((v.sum(axis=0) - raw_sets) / reps)),
                    "rounds": reps,
                }
                for name, v in per_path.items()
            }
        return out

    def own_work_s(query_sets: list[np.ndarray]) -> float:
        """Median CPU time, per call, of the library's own work on a query set with the FAISS call taken out: checking
        and normalising the queries and building the typed hits from the raw results (a diagnostic, using the
        library's internals; it misses the cache effects of running right after a FAISS search)."""
        results = [raw.search(qb, args.k) for qb in query_sets]
        spent = []
        for _ in range(rounds):
            for qb, (scores, keys) in zip(query_sets, results):
                c = time.process_time()
                _normalise_queries(qb)
                index._hits(scores, keys)
                spent.append(time.process_time() - c)
        return float(np.median(spent))

    found = np.concatenate([raw.search(qb, args.k)[1] for qb in batches])
    hits = index.search_vectors(batches[0], args.k)
    assert [[h.key for h in r] for r in hits] == [[k for k in row if k >= 0] for row in found[: len(batches[0])].tolist()]
    assert hits == mapped.search_vectors(batches[0], args.k)
    batch_t = time_paths(batches)
    singles = queries[: args.single_queries if kind != "flat" else 10]
    single_sets = [q[None, :] for q in singles]
    single_t = time_paths(single_sets)
    raw_s, keys_s, lib_s, _ = (batch_t["wall"][name]["total_s"] for name in names)
    raw_1, keys_1, lib_1, _ = (single_t["wall"][name]["total_s"] for name in names)
    own_batch_s, own_single_s = own_work_s(batches), own_work_s(single_sets)
    table = records_table_cost(version)

    sweep = []
    core = faiss.downcast_index(raw.index) if isinstance(raw, faiss.IndexIDMap2) else raw
    if kind in ("hnsw", "ivfpq"):
        settings = (
            [("efSearch", v) for v in (32, 64, 128, 256)] if kind == "hnsw" else [("nprobe", v) for v in (8, 16, 32, 64, 128)]
        )
        for name, value in settings:
            if kind == "hnsw":
                core.hnsw.efSearch = value
            else:
                faiss.extract_index_ivf(raw).nprobe = value
            t = time.perf_counter()
            _, ids = raw.search(queries, args.k)
            s = time.perf_counter() - t
            sweep.append({name: value, "recall_at_10": round(recall(ids), 4), "qps": round(len(queries) / s, 1)})
        from index.faiss_index import IndexSpec, apply_search_defaults

        apply_search_defaults(raw, IndexSpec.from_dict(info["spec"]))

    label_times = []
    for qb in batches[: max(1, len(batches) // 2)]:
        t = time.perf_counter()
        rows = index.search_vectors(qb, args.k, labels=["label03"])
        label_times.append(time.perf_counter() - t)
        assert all(len(r) == args.k and all("label03" in h.labels for h in r) for r in rows)
    n_label_q = sum(len(b) for b in batches[: max(1, len(batches) // 2)])

    result = {
        "kind": kind,
        "n": n,
        "factory": info["spec"]["factory"],
        "search_params": {k: info["spec"][k] for k in ("ef_search", "nprobe") if info["spec"][k]},
        "build_s": round(info["timings"]["train_s"] + info["timings"]["add_s"], 1),
        "train_s": info["timings"]["train_s"],
        "add_s": info["timings"]["add_s"],
        "publish_s": None if publish_s is None else round(publish_s, 1),
        "load_verify_s": round(load_s, 1),
        "reused_build": reused,
        "index_file_bytes": int(manifest["files"]["image.faiss"]["bytes"]),
        "metadata_bytes": int(manifest["files"]["metadata.sqlite"]["bytes"]),
        "rss_index_loaded_bytes": int(rss_loaded - rss0),
        "peak_rss_bytes": None if peak_build is None else int(max(peak_build, _peak_rss_bytes())),
        "recall_at_10": round(recall(found), 4),
        "batch_size": batch,
        "queries": len(queries),
        "rounds": batch_t["cpu"]["raw"]["rounds"],
        "raw_faiss_qps": round(len(queries) / raw_s, 1),
        "library_keys_qps": round(len(queries) / keys_s, 1),
        "library_qps": round(len(queries) / lib_s, 1),
        "overhead_method": "median over query sets of (library time / raw FAISS time on the same set) - 1, each time summed "
        f"over {batch_t['cpu']['raw']['rounds']} rounds in which the {len(names)} paths run back to back in an "
        "order rotating so that each takes each place equally often; *_pct on CPU time of the process, *_pct_wall "
        "on wall-clock time; 'keys' = SearchIndex.search_keys, 'hits' (library_overhead_*) = "
        "SearchIndex.search_vectors with the records in memory (the default load), 'mmap' = the same with "
        "records_in_memory=False",
        "library_keys_overhead_batch_pct": round(100 * (batch_t["cpu"]["keys"]["ratio"] - 1), 2),
        "library_overhead_batch_pct": round(100 * (batch_t["cpu"]["hits"]["ratio"] - 1), 2),
        "library_added_us_per_query_batch": round(1e6 * batch_t["cpu"]["hits"]["added_s_per_call"] / batch, 1),
        "library_keys_overhead_batch_pct_wall": round(100 * (batch_t["wall"]["keys"]["ratio"] - 1), 2),
        "library_overhead_batch_pct_wall": round(100 * (batch_t["wall"]["hits"]["ratio"] - 1), 2),
        "library_own_work_us_per_query_batch": round(1e6 * own_batch_s / batch, 1),
        "raw_faiss_cpu_ms_per_query_batch": round(1000 * batch_t["cpu"]["raw"]["total_s"] / len(queries), 4),
        "single_queries": len(singles),
        "raw_faiss_single_ms": round(1000 * raw_1 / len(singles), 4),
        "library_keys_single_ms": round(1000 * keys_1 / len(singles), 4),
        "library_single_ms": round(1000 * lib_1 / len(singles), 4),
        "raw_faiss_cpu_ms_single": round(1000 * single_t["cpu"]["raw"]["total_s"] / len(singles), 4),
        "library_keys_overhead_single_pct": round(100 * (single_t["cpu"]["keys"]["ratio"] - 1), 2),
        "library_overhead_single_pct": round(100 * (single_t["cpu"]["hits"]["ratio"] - 1), 2),
        "library_added_us_per_query_single": round(1e6 * single_t["cpu"]["hits"]["added_s_per_call"], 1),
        "library_keys_overhead_single_pct_wall": round(100 * (single_t["wall"]["keys"]["ratio"] - 1), 2),
        "library_overhead_single_pct_wall": round(100 * (single_t["wall"]["hits"]["ratio"] - 1), 2),
        "library_own_work_us_per_query_single": round(1e6 * own_single_s, 1),
        "library_mmap_overhead_batch_pct": round(100 * (batch_t["cpu"]["hits_mmap"]["ratio"] - 1), 2),
        "library_mmap_overhead_single_pct": round(100 * (single_t["cpu"]["hits_mmap"]["ratio"] - 1), 2),
        "library_mmap_added_us_per_query_batch": round(1e6 * batch_t["cpu"]["hits_mmap"]["added_s_per_call"] / batch, 1),
        "library_mmap_added_us_per_query_single": round(1e6 * single_t["cpu"]["hits_mmap"]["added_s_per_call"], 1),
        "library_mmap_overhead_batch_pct_wall": round(100 * (batch_t["wall"]["hits_mmap"]["ratio"] - 1), 2),
        "library_mmap_overhead_single_pct_wall": round(100 * (single_t["wall"]["hits_mmap"]["ratio"] - 1), 2),
        "records_in_memory": index.records.rows is not None,  # what the default load chose for this version
        "records_file_bytes": (version / RECORDS_FILE).stat().st_size,
        **table,
        "filtered_label03_qps": round(n_label_q / sum(label_times), 1),
        "sweep": sweep,
    }
    mapped.records.close()
    index.close()
    if not args.keep_built:
        shutil.rmtree(root, ignore_errors=True)
    return result


def records_table_cost(version: Path) -> dict:
    """Load time, Python allocations and RSS growth of a version's in-memory records table (against the map alone)."""
    import gc
    import tracemalloc

    from index.records import RecordReader

    def timed(in_memory: bool) -> float:
        gc.collect()
        t = time.perf_counter()
        RecordReader(version, in_memory=in_memory).close()
        return time.perf_counter() - t

    mapped_s = min(timed(False) for _ in range(3))
    memory_s = min(timed(True) for _ in range(3))
    gc.collect()
    rss0 = _rss_bytes()
    reader = RecordReader(version, in_memory=True)
    gc.collect()
    rss_growth = _rss_bytes() - rss0
    estimate = reader.estimated_memory()
    live = reader.live_count()
    reader.close()
    del reader
    gc.collect()
    tracemalloc.start()
    reader = RecordReader(version, in_memory=True)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reader.close()
    return {
        "records_table_load_s": round(memory_s, 3),
        "records_mmap_load_s": round(mapped_s, 4),
        "records_table_bytes": int(traced),
        "records_table_bytes_per_entry": round(traced / max(live, 1), 1),
        "records_table_rss_growth_bytes": int(rss_growth),
        "records_table_estimate_bytes": int(estimate),
    }


def _built_version(root: Path, n: int) -> Path | None:
    """The CURRENT version under `root` when it indexes n vectors (what --keep-built left there), else None."""
    from index.store import resolve_version

    try:
        version = resolve_version(root)
        manifest = json.loads((version / "manifest.json").read_text())
    except Exception:  # noqa: BLE001 - no usable earlier build: build afresh
        return None
    return version if manifest["modalities"]["image"]["count"] == n else None


# ------------------------------------------------------------------------------------------------------------ driver
def _child(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        *extra,
        "--n",
        str(args.n),
        "--dim",
        str(args.dim),
        "--hnsw-n",
        str(args.hnsw_n),
        "--queries",
        str(args.queries),
        "--k",
        str(args.k),
        "--clusters",
        str(args.clusters),
        "--seed",
        str(args.seed),
        "--intrinsic-dim",
        str(args.intrinsic_dim),
        "--batch",
        str(args.batch),
        "--rounds",
        str(args.rounds),
        "--single-queries",
        str(args.single_queries),
        "--flat-queries",
        str(args.flat_queries),
        *(["--keep-built"] if args.keep_built else []),
        *(["--search-threads", str(args.search_threads)] if args.search_threads else []),
        "--work",
        str(args.work),
        "--truth",
        str(args.truth),
        "--child-out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


PAGE_SECTION = "index-benchmark"
OVERHEAD_TARGET_PCT = 5.0  # the search library's target overhead over raw FAISS (full results)
NAMES = {"flat": "flat", "hnsw": "HNSW", "ivfpq": "IVF-PQ"}


def _params(r: dict) -> str:
    return ", ".join([f"`{r['factory']}`", *(f"{k} {v}" for k, v in r["search_params"].items())])


def _pct(value: float) -> str:
    return f"{value:+.1f} %"


def render(report: dict) -> str:
    """The benchmark section of docs/index-benchmark.md, from the JSON alone (figures and conclusions)."""
    data, libs, results = report["data"], report["libraries"], report["results"]
    lines = [
        provenance_line(report),
        "",
        f"{load_note(report)} faiss {libs['faiss']}, numpy {libs['numpy']}, {libs['omp_threads']} OpenMP thread(s) for the "
        f"builds, {libs['search_threads']} for the timed searches, `OMP_WAIT_POLICY={libs['omp_wait_policy']}`; whole run "
        f"{report['total_s']:,.0f} s.",
        "",
        f"**Data.** {data['n']:,} synthetic {data['dim']:,}-d unit vectors (`index.synthetic.ClusteredVectors`, seed "
        f"{data['seed']}): {data['clusters']:,} random unit cluster centres; each vector is a centre plus variation of norm "
        f"{data['spread']} in a fixed random {data['intrinsic_dim']}-d subspace plus isotropic noise of norm "
        f"{data['floor_noise']}, normalised. {data['queries']:,} queries from the same distribution (not in the "
        f"collection); ground truth = exact float32 inner-product top-{data['k']} computed by numpy "
        f"({data['ground_truth_s']:,.0f} s)."
        + (f" HNSW indexes the first {data['hnsw_n']:,} vectors." if data.get("hnsw_n", data["n"]) < data["n"] else ""),
        "",
        "| type | n | factory, search params | build (train + add) | publish total | load + verify | index file | peak RSS "
        "| recall@10 | raw FAISS q/s | library q/s | filtered q/s (`label03`) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        build = f"{r['build_s']:,.1f} s" + (f" ({r['train_s']:.1f} + {r['add_s']:.1f})" if r["train_s"] else "")
        publish = "reused" if r["publish_s"] is None else f"{r['publish_s']:,.1f} s"
        peak = "reused" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB"
        lines.append(
            f"| {NAMES[r['kind']]} | {r['n']:,} | {_params(r)} | {build} | {publish} | {r['load_verify_s']:.1f} s "
            f"| {r['index_file_bytes'] / 2**20:,.0f} MiB | {peak} | {r['recall_at_10']:.3f} | {r['raw_faiss_qps']:,.1f} "
            f"| {r['library_qps']:,.1f} | {r['filtered_label03_qps']:,.1f} |"
        )
    timing = report.get("timing", {})
    lines += [
        "",
        f"q/s (wall clock): batches of {timing.get('batch', 100)} queries, k = {data['k']}, median over timing rounds (flat: "
        f'{timing.get("flat_queries", 100)} queries, exact scans being slow). "publish total" is `publish_version` '
        "end to end (synthetic vectors generated on the fly, FAISS build, SQLite metadata, records copy, index file, "
        "hashes, fsyncs, publish); peak RSS includes the Python process and the streamed generation buffers. "
        "Filtered search keeps items labelled `label03` (about 5 % of them).",
    ]
    for r in results:
        if not r["sweep"]:
            continue
        knob = next(k for k in r["sweep"][0] if k not in ("recall_at_10", "qps"))
        default = r["search_params"].get("ef_search" if knob == "efSearch" else "nprobe")
        lines += [
            "",
            f"| {NAMES[r['kind']]} {knob} | "
            + " | ".join(f"{s[knob]}" + (" (default)" if s[knob] == default else "") for s in r["sweep"])
            + " |",
            "|---|" + "---|" * len(r["sweep"]),
            "| recall@10 | " + " | ".join(f"{s['recall_at_10']:.3f}" for s in r["sweep"]) + " |",
            "| q/s | " + " | ".join(f"{s['qps']:,.0f}" for s in r["sweep"]) + " |",
        ]
        recalls = [s["recall_at_10"] for s in r["sweep"]]
        if max(recalls) - min(recalls) < 0.005:
            why = (
                ": on this data the first probes already reach every true neighbour's list, so recall is bounded by the "
                "PQ codes, not by nprobe"
                if r["kind"] == "ivfpq" and recalls[0] < 0.99
                else ""
            )
            level = (
                f"{min(recalls):.3f}"
                if f"{min(recalls):.3f}" == f"{max(recalls):.3f}"
                else f"{min(recalls):.3f}-{max(recalls):.3f}"
            )
            lines += [
                "",
                f"{NAMES[r['kind']]} recall@10 stays at {level} from {knob} {r['sweep'][0][knob]} to "
                f"{r['sweep'][-1][knob]}{why}; q/s goes from {r['sweep'][0]['qps']:,.0f} to {r['sweep'][-1]['qps']:,.0f}.",
            ]
        else:
            lines += [
                "",
                f"{NAMES[r['kind']]} recall@10 goes from {recalls[0]:.3f} at {knob} {r['sweep'][0][knob]} to "
                f"{recalls[-1]:.3f} at {r['sweep'][-1][knob]}, q/s from {r['sweep'][0]['qps']:,.0f} to "
                f"{r['sweep'][-1]['qps']:,.0f}.",
            ]
    lines += [
        "",
        "**Overhead of the search library over raw FAISS** (see the method above; CPU time of the process, "
        "median over query sets; wall-clock figures in the JSON as `*_pct_wall`):",
        "",
        "| type | raw CPU per query, batch / single | keys, batch / single | **hits, batch** | **hits, single** "
        "| hits, wall clock, batch / single | mmap, batch / single | hits: added CPU per query, batch / single "
        "| library's own work per query, batch / single |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {NAMES[r['kind']]} | {r['raw_faiss_cpu_ms_per_query_batch']:.3f} / {r['raw_faiss_cpu_ms_single']:.3f} ms "
            f"| {_pct(r['library_keys_overhead_batch_pct'])} / {_pct(r['library_keys_overhead_single_pct'])} "
            f"| **{_pct(r['library_overhead_batch_pct'])}** | **{_pct(r['library_overhead_single_pct'])}** "
            f"| {_pct(r['library_overhead_batch_pct_wall'])} / {_pct(r['library_overhead_single_pct_wall'])} "
            f"| {_pct(r['library_mmap_overhead_batch_pct'])} / {_pct(r['library_mmap_overhead_single_pct'])} "
            f"| {r['library_added_us_per_query_batch']:.0f} / {r['library_added_us_per_query_single']:.0f} us "
            f"| {r['library_own_work_us_per_query_batch']:.0f} / {r['library_own_work_us_per_query_single']:.0f} us |"
        )
    met = [
        f"{NAMES[r['kind']]} {mode}"
        for r in results
        for mode, key in (("batches", "library_overhead_batch_pct"), ("single queries", "library_overhead_single_pct"))
        if r[key] < OVERHEAD_TARGET_PCT
    ]
    missed = [
        f"{NAMES[r['kind']]} {mode} ({_pct(r[key])})"
        for r in results
        for mode, key in (("batches", "library_overhead_batch_pct"), ("single queries", "library_overhead_single_pct"))
        if r[key] >= OVERHEAD_TARGET_PCT
    ]
    lines += [
        "",
        f"Against a target of under {OVERHEAD_TARGET_PCT:g} % for full results (hits, CPU time): "
        + (f"met for {', '.join(met)}" if met else "met for none")
        + (f"; not met for {', '.join(missed)}." if missed else "."),
    ]
    lines += [
        "",
        "| type | records in memory | records.jsonl | table: Python allocations (per entry) | RSS growth | estimate "
        "| decode at load | memory map alone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {NAMES[r['kind']]} | {r['records_in_memory']} | {r['records_file_bytes'] / 2**20:,.1f} MiB "
            f"| {r['records_table_bytes'] / 2**20:,.0f} MiB ({r['records_table_bytes_per_entry']:.0f} B) "
            f"| {r['records_table_rss_growth_bytes'] / 2**20:,.0f} MiB | {r['records_table_estimate_bytes'] / 2**20:,.0f} MiB "
            f"| {r['records_table_load_s']:.2f} s | {r['records_mmap_load_s'] * 1000:.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --one/--truth-only, one of its subprocess parts)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    p.add_argument("--batch", type=int, default=100, help="queries per search call in the throughput runs")
    p.add_argument("--rounds", type=int, default=9, help="timing rounds, rounded up to a multiple of 3 (flat: 3)")
    p.add_argument(
        "--keep-built",
        action="store_true",
        help="keep the built versions in --work and, on a later run, measure them instead of building again",
    )
    p.add_argument("--single-queries", type=int, default=200, help="one-query calls timed for the single-query overhead")
    p.add_argument("--flat-queries", type=int, default=100, help="queries timed on the flat index (exact scans are slow)")
    p.add_argument("--types", default="flat,hnsw,ivfpq")
    p.add_argument(
        "--search-threads",
        type=int,
        default=None,
        help="FAISS threads for the timed searches (the build uses all of OMP_NUM_THREADS; the service searches on 1)",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "index.json")
    p.add_argument("--work", type=Path, default=None, help="scratch directory for the index versions (default: a temp dir)")
    p.add_argument("--truth", type=Path, default=None)
    p.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"write the '{PAGE_SECTION}' section of this page (docs/index-benchmark.md) from the JSON",
    )
    p.add_argument("--from-json", action="store_true", help="with --doc: render from --out without running the benchmark")
    p.add_argument("--one", choices=["flat", "hnsw", "ivfpq"], help=argparse.SUPPRESS)
    p.add_argument("--truth-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one or args.truth_only:
        result = measure_one(args) if args.one else ground_truth(args)
        args.child_out.write_text(json.dumps(result))
        return 0
    if args.from_json:
        if args.doc is None:
            p.error("--from-json needs --doc")
        write_section(args.doc, PAGE_SECTION, "bench_index.py", render(json.loads(args.out.read_text())))
        print(f"written {args.doc} from {args.out}")
        return 0

    import faiss
    import numpy as np

    report = run_record("bench_index.py", argv)
    started = time.perf_counter()
    keep_work = args.work is not None
    work = Path(tempfile.mkdtemp(prefix="bench-index-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    args.work = work
    args.truth = work / "truth.json"
    try:
        truth = json.loads(args.truth.read_text()) if args.truth.is_file() else None
        needed = {str(args.n), str(min(args.hnsw_n, args.n))}
        same = truth is not None and {k: v for k, v in truth.get("params", {}).items() if k != "hnsw_n"} == {
            k: v for k, v in _truth_params(args).items() if k != "hnsw_n"
        }
        if not (same and needed <= set(truth["truth"])):  # reuse a --work dir's ground truth when it fits
            print(f"ground truth: exact top-{args.k} of {args.queries} queries over {args.n:,} x {args.dim} ...", flush=True)
            truth = _child(args, ["--truth-only"], work / "truth.tmp.json")
            args.truth.write_text(json.dumps(truth))
        results = []
        for kind in args.types.split(","):
            print(f"{kind}: building and measuring ...", flush=True)
            results.append(_child(args, ["--one", kind], work / f"{kind}.json"))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)

    report.update(
        {
            "benchmark": "index build/search on synthetic clustered unit vectors",
            "libraries": {
                "faiss": faiss.__version__,
                "numpy": np.__version__,
                "omp_threads": faiss.omp_get_max_threads(),
                "search_threads": args.search_threads or faiss.omp_get_max_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            },
            "data": {
                "n": args.n,
                "hnsw_n": min(args.hnsw_n, args.n),
                "dim": args.dim,
                "clusters": args.clusters,
                "spread": 0.7,
                "intrinsic_dim": args.intrinsic_dim or None,
                "floor_noise": 0.1,
                "seed": args.seed,
                "queries": args.queries,
                "k": args.k,
                "ground_truth": "numpy float32 exact inner product",
                "ground_truth_s": truth["seconds"],
            },
            "timing": {
                "batch": args.batch,
                "rounds": args.rounds,
                "single_queries": args.single_queries,
                "flat_queries": args.flat_queries,
                "keep_built": args.keep_built,
            },
            "results": results,
            "total_s": round(time.perf_counter() - started, 1),
        }
    )
    finish_record(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print()
    header = (
        f"{'type':6} {'n':>9} {'factory':14} {'build s':>8} {'index MiB':>9} {'peak RSS MiB':>12} {'recall@10':>9} "
        f"{'raw q/s':>8} {'lib q/s':>8} {'keys ovh':>8} {'hits ovh':>8} {'keys ovh1':>9} {'hits ovh1':>9} {'mmap ovh1':>9}"
    )
    print(header)
    for r in results:
        print(
            f"{r['kind']:6} {r['n']:>9,} {r['factory']:14} {r['build_s']:>8.1f} {r['index_file_bytes'] / 2**20:>9.0f} "
            f"{(r['peak_rss_bytes'] or 0) / 2**20:>12.0f} {r['recall_at_10']:>9.4f} {r['raw_faiss_qps']:>8.1f} {r['library_qps']:>8.1f} "
            f"{r['library_keys_overhead_batch_pct']:>7.2f}% {r['library_overhead_batch_pct']:>7.2f}% "
            f"{r['library_keys_overhead_single_pct']:>8.2f}% {r['library_overhead_single_pct']:>8.2f}% "
            f"{r['library_mmap_overhead_single_pct']:>8.2f}%"
        )
    print(
        "keys = library call returning what FAISS returns (scores, ids); hits = typed results with metadata (records in "
        "memory); mmap = the same with the records read from the memory map; ovh = batch of 100, ovh1 = one query per call; "
        "overhead = median over query sets of (library / raw FAISS) CPU time - 1"
    )
    print(f"\nwritten {args.out} ({report['total_s']:.0f} s)")
    if args.doc is not None:
        write_section(args.doc, PAGE_SECTION, "bench_index.py", render(report))
        print(f"written {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
