"""Publish benchmark: our publish of a flat index version against a raw write of the same files, interleaved in one run.

    .venv/bin/python bench/bench_publish.py --size 1M                 # the recorded run: 1M x 1024 (4 GiB of vectors)
    .venv/bin/python bench/bench_publish.py --size 20k --rounds 2 --out /tmp/publish.json   # a quick check, seconds

The vectors (`index.synthetic.ClusteredVectors`, unit length) and their items are generated once, in memory, before
anything is timed. Then each round runs the two paths back to back, in alternating order:

- **raw**: a FAISS `IDMap2,Flat` inner-product index is filled (not timed), then timed: `faiss.write_index` to a file
  and the metadata written to SQLite with the same schema and rows as ours (`index.metadata.SCHEMA`, one transaction,
  SQLite's default settings), nothing more. Its fsync of both files is timed apart ("raw + fsync"), which also keeps
  its dirty pages from being flushed during the next measurement.
- **publish**: `index.build.publish_version` on the same vectors and items (`ArraySource`): the FAISS build (train,
  normalise, add: reported, not counted) and everything a published version needs: SQLite metadata, the FAISS file,
  the records copy, sha256 of every file in the manifest, fsyncs, the rename out of staging and the CURRENT switch.
  Its own per-step timings (`publish_version(..., timings=...)`) give the breakdown.

The figure the target is judged on is the median over rounds of (publish without the FAISS build) / (raw write).
`--library DIR` imports `index` from another checkout (e.g. the code before a change) and measures its
`publish_version` the same way; code without the `timings` argument is broken down from its manifest's timings only.
`--doc FILE` regenerates the publish section of FILE (between the `publish-benchmark` markers) from the JSON written
by this run and by `--before JSON` (a run with `--library`), instead of editing figures by hand.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC_START = "<!-- publish-benchmark:start (written by bench/bench_publish.py --doc; do not edit by hand) -->"
DOC_END = "<!-- publish-benchmark:end -->"
# Our publish's steps beyond the FAISS build, in the order they run (index.build.PUBLISH_STEPS less the build).
PUBLISH_PHASES = ("metadata_insert_s", "index_write_s", "records_s", "seal_wait_s", "manifest_s", "rename_s", "pointer_s")
PHASE_NOTES = {
    "metadata_insert_s": "SQLite metadata rows (during the fill)",
    "index_write_s": "faiss.write_index to staging",
    "records_s": "records.jsonl + records.idx.npy",
    "seal_wait_s": "waiting for background sha256 + fsync",
    "manifest_s": "manifest write + fsync, directory fsync",
    "rename_s": "rename into versions/ + fsync",
    "pointer_s": "CURRENT switch under the lock",
    "other_s": "the rest (staging set-up, cleanup)",
}


def parse_size(text: str) -> int:
    """'1M', '200k', '50000' -> number of vectors."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--size must be a count like 1M, 200k or 50000, not {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 10**3, "m": 10**6}[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError("--size must be at least 1")
    return int(value)


# ------------------------------------------------------------------------------------------------------------ machine
def detect_machine(work: Path) -> dict:
    """What this run ran on, as detected: cores, memory, load, GPU, disk and library versions."""
    import faiss
    import numpy

    gpu_names: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
            gpu_names = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": bool(gpu_names) or faiss_gpus > 0,
        "gpus": gpu_names,
        "faiss_gpus": faiss_gpus,
        "filesystem": _filesystem_of(work),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "faiss": faiss.__version__,
        "numpy": numpy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "omp_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _filesystem_of(path: Path) -> dict:
    """Mount point, device and type of the filesystem holding `path` (from /proc/mounts), and its free space."""
    path = path.resolve()
    best: dict = {}
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, *_ = line.split()
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) >= len(best.get("mount", "")):
                best = {"mount": mount, "device": device, "type": fstype}
    except OSError:
        pass
    stat = os.statvfs(path)
    return {**best, "free_gib": round(stat.f_bavail * stat.f_frsize / 2**30, 1)}


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "index", "model"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() + ("+uncommitted changes to index/ or model/" if dirty else "")) if out.returncode == 0 else None


# --------------------------------------------------------------------------------------------------------------- data
def generate(n: int, dim: int, seed: int):
    """(vectors (n, dim) float32 unit rows, items) of the clustered synthetic collection."""
    import numpy as np

    from index.synthetic import ClusteredVectors

    data = ClusteredVectors(n=n, dim=dim, n_clusters=1000, seed=seed, intrinsic_dim=64)
    vectors = np.empty((n, dim), dtype=np.float32)
    items = []
    for first, block, clusters in data.blocks():
        vectors[first : first + len(block)] = block
        items.extend(data.items(first, clusters))
    return vectors, items


# -------------------------------------------------------------------------------------------------------------- paths
def raw_write(vectors, items, directory: Path, batch: int) -> dict:
    """Fill a plain FAISS IDMap2,Flat index (not timed), then time faiss.write_index and the SQLite metadata write."""
    import faiss
    import numpy as np

    from index.metadata import SCHEMA

    n, dim = vectors.shape
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    index = faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    for start in range(0, n, batch):
        index.add_with_ids(vectors[start : start + batch], np.arange(start, min(n, start + batch), dtype=np.int64))
    add_s = time.perf_counter() - t0

    index_path, metadata_path = directory / "image.faiss", directory / "metadata.sqlite"
    t0 = time.perf_counter()
    faiss.write_index(index, str(index_path))
    faiss_write_s = time.perf_counter() - t0
    del index
    gc.collect()

    encode_labels = json.JSONEncoder(ensure_ascii=False).encode  # the same bytes as index.metadata writes
    encode_extra = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
    t0 = time.perf_counter()
    conn = sqlite3.connect(metadata_path)
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO entries (key, item_id, modality, source_path, text, labels, extra) VALUES (?,?,?,?,?,?,?)",
        (
            (key, it.id, "image", it.image_path, it.text, encode_labels(list(it.labels)), encode_extra(it.extra))
            for key, it in enumerate(items)
        ),
    )
    conn.executemany(
        "INSERT INTO entry_labels (modality, label, key) VALUES (?,?,?)",
        (("image", label, key) for key, it in enumerate(items) for label in it.labels),
    )
    conn.execute("INSERT INTO info (name, value) VALUES ('next_key', ?)", (str(n),))
    conn.commit()
    conn.close()
    metadata_write_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for path in (index_path, metadata_path):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    fsync_s = time.perf_counter() - t0
    return {
        "add_s": add_s,
        "faiss_write_s": faiss_write_s,
        "metadata_write_s": metadata_write_s,
        "write_s": faiss_write_s + metadata_write_s,
        "fsync_s": fsync_s,
        "files": {p.name: p.stat().st_size for p in (index_path, metadata_path)},
    }


def our_publish(vectors, items, root: Path, batch: int) -> dict:
    """index.build.publish_version on the same data; its steps, the FAISS build separated from the publish proper."""
    from index.build import IndexConfig, publish_version
    from index.shards import ArraySource

    source = ArraySource({"image": (vectors, items)}, vectors.shape[1], batch_size=batch)
    steps: dict[str, float] = {}
    has_timings = "timings" in inspect.signature(publish_version).parameters
    kwargs = {"timings": steps} if has_timings else {}
    t0 = time.perf_counter()
    version = publish_version(root, source, "bench-model", IndexConfig(index_type="flat"), **kwargs)
    total_s = time.perf_counter() - t0
    manifest = json.loads((version / "manifest.json").read_text())
    built = manifest["modalities"]["image"]["timings"]
    files = {name: info["bytes"] for name, info in manifest["files"].items()}
    if has_timings:
        build_s = steps["train_s"] + steps["normalise_s"] + steps["add_s"]
        publish_s = total_s - steps["source_s"] - build_s
        phases = {name: steps[name] for name in PUBLISH_PHASES}
        phases["other_s"] = publish_s - sum(phases.values())
        background = {"hash_s": steps["hash_s"], "fsync_s": steps["fsync_s"]}
        comparable_s = publish_s + steps["normalise_s"]
    else:  # older code: only the manifest's per-modality timings (train, add, fill = normalise + add + metadata, write)
        build_s = built["train_s"] + built["add_s"]
        publish_s = None
        fill_rest = built["fill_s"] - built["add_s"]
        phases = {
            "metadata_insert_s": fill_rest,
            "index_write_s": built["write_s"],
            "rest_s": total_s - built["train_s"] - built["fill_s"] - built["write_s"],
        }
        background = {}
        comparable_s = total_s - build_s
    return {
        "total_s": total_s,
        "build_s": build_s,
        "publish_s": publish_s,
        "publish_with_normalise_s": comparable_s,
        "phases": phases,
        "background": background,
        "steps": steps or None,
        "files": files,
        "version": version.name,
        "timings_api": has_timings,
    }


# ------------------------------------------------------------------------------------------------------------ summary
def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds, and the per-round ratios of our publish to the raw write."""
    med = statistics.median
    raw = [r["raw"] for r in rounds]
    ours = [r["publish"] for r in rounds]
    out = {
        "raw_faiss_write_s": med(r["faiss_write_s"] for r in raw),
        "raw_metadata_write_s": med(r["metadata_write_s"] for r in raw),
        "raw_write_s": med(r["write_s"] for r in raw),
        "raw_fsync_s": med(r["fsync_s"] for r in raw),
        "raw_write_fsync_s": med(r["write_s"] + r["fsync_s"] for r in raw),
        "publish_total_s": med(o["total_s"] for o in ours),
        "build_s": med(o["build_s"] for o in ours),
        "publish_with_normalise_s": med(o["publish_with_normalise_s"] for o in ours),
        "phases": {name: med(o["phases"][name] for o in ours) for name in ours[0]["phases"]},
        "background": {name: med(o["background"][name] for o in ours) for name in ours[0]["background"]},
    }
    if ours[0]["publish_s"] is not None:
        out["publish_s"] = med(o["publish_s"] for o in ours)
        out["ratio_to_raw_write"] = med(o["publish_s"] / r["write_s"] for o, r in zip(ours, raw))
        out["ratio_to_raw_write_fsync"] = med(o["publish_s"] / (r["write_s"] + r["fsync_s"]) for o, r in zip(ours, raw))
    out["ratio_with_normalise_to_raw_write"] = med(o["publish_with_normalise_s"] / r["write_s"] for o, r in zip(ours, raw))
    return {
        k: (round(v, 3) if isinstance(v, float) else {kk: round(vv, 3) for kk, vv in v.items()} if isinstance(v, dict) else v)
        for k, v in out.items()
    }


def table(report: dict) -> str:
    """The run's figures as a plain-text table."""
    s = report["summary"]
    lines = [f"{'step':34} {'seconds':>9}  note"]
    lines.append(f"{'raw: faiss.write_index':34} {s['raw_faiss_write_s']:>9.2f}")
    lines.append(f"{'raw: SQLite metadata':34} {s['raw_metadata_write_s']:>9.2f}")
    lines.append(f"{'raw write (target base)':34} {s['raw_write_s']:>9.2f}")
    lines.append(f"{'raw: fsync of both files':34} {s['raw_fsync_s']:>9.2f}  (not in the target base)")
    for name, value in s["phases"].items():
        lines.append(f"{'publish: ' + name:34} {value:>9.2f}  {PHASE_NOTES.get(name, '')}")
    for name, value in s["background"].items():
        lines.append(f"{'  background ' + name:34} {value:>9.2f}  overlapped with the steps above")
    if "publish_s" in s:
        lines.append(f"{'publish (without the FAISS build)':34} {s['publish_s']:>9.2f}")
        lines.append(f"{'ratio publish / raw write':34} {s['ratio_to_raw_write']:>9.2f}  target <= 2")
        lines.append(f"{'ratio publish / (raw write + fsync)':34} {s['ratio_to_raw_write_fsync']:>9.2f}")
    lines.append(
        f"{'publish incl. normalising':34} {s['publish_with_normalise_s']:>9.2f}  comparable with code before the change"
    )
    lines.append(f"{'FAISS build (train+normalise+add)':34} {s['build_s']:>9.2f}  not counted")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- doc page
def render_section(after: dict, before: dict | None) -> str:
    """The markdown publish section from the JSON of a run (and of a run of the code before the change)."""
    a = after["summary"]
    m = after["machine"]
    out = [
        DOC_START,
        "",
        f"Written by `{after['command']}`"
        + (f" and, for the code before the change, `{before['command']}`" if before else "")
        + f" (JSON: `{after['out']}`"
        + (f", `{before['out']}`" if before else "")
        + "). "
        f"{after['data']['n']:,} x {after['data']['dim']} flat index, {len(after['rounds'])} rounds per path, "
        "medians over rounds; raw and publish run back to back in alternating order.",
        "",
        f"Machine as detected: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"GPU: {', '.join(m['gpus']) if m['gpu'] else 'none'}; {m['filesystem'].get('type', '?')} on "
        f"{m['filesystem'].get('device', '?')}; load average {after['load_average_before']} before, "
        f"{after['load_average_after']} after; faiss {m['faiss']}, SQLite {m['sqlite']}, Python {m['python']}.",
        "",
    ]
    header = "| step | raw write | publish now |" + (" publish before |" if before else "")
    out += [header, "|---|---|---|" + ("---|" if before else "")]

    def cell(value) -> str:
        return "" if value is None else f"{value:.2f} s"

    b = before["summary"] if before else None
    rows = [
        (
            "`faiss.write_index` (image.faiss)",
            a["raw_faiss_write_s"],
            a["phases"].get("index_write_s"),
            b["phases"].get("index_write_s") if b else None,
        ),
        (
            "SQLite metadata (metadata.sqlite)",
            a["raw_metadata_write_s"],
            a["phases"].get("metadata_insert_s"),
            b["phases"].get("metadata_insert_s") if b else None,
        ),
        ("records.jsonl + records.idx.npy", None, a["phases"].get("records_s"), None),
        ("waiting for background sha256 + fsync", None, a["phases"].get("seal_wait_s"), None),
        ("manifest, directory fsync", None, a["phases"].get("manifest_s"), None),
        ("rename into versions/, CURRENT switch", None, a["phases"].get("rename_s", 0) + a["phases"].get("pointer_s", 0), None),
        ("the rest (staging set-up, cleanup)", None, a["phases"].get("other_s"), None),
    ]
    if b and "rest_s" in b["phases"]:
        rows.append(
            ("records, sha256 of every file, fsyncs, rename, CURRENT (not separable before)", None, None, b["phases"]["rest_s"])
        )
    for label, raw, now, old in rows:
        out.append(f"| {label} | {cell(raw)} | {cell(now)} |" + (f" {cell(old)} |" if before else ""))
    out.append(
        f"| **total** (publish: without the FAISS build) | **{a['raw_write_s']:.2f} s** | **{a.get('publish_s', 0):.2f} s** |"
        + (" |" if before else "")
    )
    out.append(
        f"| total with normalising the vectors (comparable before/after) | | {a['publish_with_normalise_s']:.2f} s |"
        + (f" {b['publish_with_normalise_s']:.2f} s |" if before else "")
    )
    out.append(f"| raw fsync of both files (not in the raw total) | {a['raw_fsync_s']:.2f} s | |" + (" |" if before else ""))
    out.append(
        f"| background sha256 / fsync (overlapped) | | {a['background'].get('hash_s', 0):.2f} / "
        f"{a['background'].get('fsync_s', 0):.2f} s |" + (" |" if before else "")
    )
    out.append(
        f"| FAISS build (train + normalise + add; not counted) | {cell(a.get('raw_add_s'))} (add only) | "
        f"{a['build_s']:.2f} s |" + (f" {b['build_s']:.2f} s |" if before else "")
    )
    out += [
        "",
        f"**Publish / raw write: {a['ratio_to_raw_write']:.2f}** (median of the per-round ratios; target at most 2); "
        f"against the raw write plus its fsync: {a['ratio_to_raw_write_fsync']:.2f}."
        + (
            f" Before the change the same publish took {b['publish_with_normalise_s']:.1f} s with normalising "
            f"({b['ratio_with_normalise_to_raw_write']:.2f}x that run's raw write); now "
            f"{a['publish_with_normalise_s']:.1f} s ({a['ratio_with_normalise_to_raw_write']:.2f}x)."
            if b
            else ""
        ),
        "",
    ]
    if b and "rest_s" in b["phases"]:
        out += [
            "The code before the change has no per-step timings: its columns come from its manifest (SQLite metadata = "
            "its fill time less the FAISS add, which also normalised the vectors; FAISS build = train + add), the rest "
            "by difference.",
            "",
        ]
    out.append(DOC_END)
    return "\n".join(out)


def update_doc(doc: Path, section: str) -> None:
    """Replace the marked publish section of `doc` (it must hold both markers)."""
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(DOC_START), text.find(DOC_END)
    if start < 0 or end < start:
        raise SystemExit(f"{doc} has no publish-benchmark markers; add the two marker lines where the section goes")
    doc.write_text(text[:start] + section + text[end + len(DOC_END) :], encoding="utf-8")


# ------------------------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --render-only, regenerate the doc section from recorded JSON)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1M"), help="vectors: 1M (default), 200k, 20000 ...")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3, help="rounds of raw + publish, alternating which goes first")
    p.add_argument("--batch", type=int, default=65536, help="vectors per add / metadata batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir on the default disk)")
    p.add_argument("--library", type=Path, default=None, help="import index/ and model/ from this checkout instead")
    p.add_argument(
        "--library-rev",
        default=None,
        help="import index/ and model/ from this git revision of the repository (extracted to a temp dir)",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "index-publish.json")
    p.add_argument("--doc", type=Path, default=None, help="regenerate this page's publish section from the JSON")
    p.add_argument("--before", type=Path, default=None, help="JSON of a run with --library (the code before), for --doc")
    p.add_argument("--render-only", action="store_true", help="with --doc: render from --out without running")
    args = p.parse_args(argv)

    if args.render_only:
        if args.doc is None:
            p.error("--render-only needs --doc")
        after = json.loads(args.out.read_text())
        before = json.loads(args.before.read_text()) if args.before else None
        update_doc(args.doc, render_section(after, before))
        print(f"updated {args.doc}")
        return 0

    library = (args.library or REPO).resolve()
    commit = _git_commit(library)
    if args.library_rev:
        library = Path(tempfile.mkdtemp(prefix="bench-publish-library-"))
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.library_rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "index", "model"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(library)], input=archive.stdout, check=True)
    sys.path.insert(0, str(library))
    import index  # noqa: F401  (imported here so that --library decides where from)

    if not Path(index.__file__).resolve().is_relative_to(library):
        raise SystemExit(f"index was imported from {index.__file__}, not from {library}")
    work = Path(tempfile.mkdtemp(prefix="bench-publish-", dir=args.work))
    load_before = [round(x, 2) for x in os.getloadavg()]
    machine = detect_machine(work)
    started = time.perf_counter()
    try:
        t0 = time.perf_counter()
        vectors, items = generate(args.size, args.dim, args.seed)
        generate_s = time.perf_counter() - t0
        print(f"generated {args.size:,} x {args.dim} vectors and items in {generate_s:.1f} s", flush=True)
        rounds = []
        for r in range(args.rounds):
            order = ["raw", "publish"] if r % 2 == 0 else ["publish", "raw"]
            result: dict = {"round": r, "order": order}
            for path in order:
                target = work / f"{path}-{r}"
                gc.collect()
                if path == "raw":
                    result["raw"] = raw_write(vectors, items, target, args.batch)
                else:
                    result["publish"] = our_publish(vectors, items, target, args.batch)
                shutil.rmtree(target, ignore_errors=True)
                print(f"round {r} {path}: {json.dumps(result[path])}", flush=True)
            rounds.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.library_rev:
            shutil.rmtree(library, ignore_errors=True)
    report = {
        "benchmark": "publish_version of a flat index vs a raw write of the same files (faiss.write_index + SQLite)",
        "command": " ".join(["bench/bench_publish.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "out": str(args.out.resolve().relative_to(REPO)) if args.out.resolve().is_relative_to(REPO) else str(args.out),
        "library": {
            "path": "repository" if library == REPO else str(library),
            "git": commit,
            "timings_api": rounds[0]["publish"]["timings_api"],
        },
        "machine": machine,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "data": {
            "n": args.size,
            "dim": args.dim,
            "index_type": "flat",
            "vectors_bytes": int(vectors.nbytes),
            "generator": "index.synthetic.ClusteredVectors(n_clusters=1000, intrinsic_dim=64)",
            "seed": args.seed,
            "generate_s": round(generate_s, 2),
            "batch": args.batch,
        },
        "rounds": rounds,
        "summary": summarise(rounds),
        "total_s": round(time.perf_counter() - started, 1),
    }
    report["summary"]["raw_add_s"] = round(statistics.median(r["raw"]["add_s"] for r in rounds), 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print()
    print(table(report))
    print(f"\nwritten {args.out} ({report['total_s']:.0f} s)")
    if args.doc is not None:
        before = json.loads(args.before.read_text()) if args.before else None
        update_doc(args.doc, render_section(report, before))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
