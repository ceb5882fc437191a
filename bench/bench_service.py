"""Load test of the search service: requests/s and p50 / p99 latency of /search/text and /search/image at 1, 8 and 32
concurrent clients, with the per-stage breakdown (queue, decode, encode, search) read from the server's /metrics.

    python bench/bench_service.py --root artifacts            # the demo artefact root (python -m training demo --root artifacts)

The load generator is `hey` (Debian package `hey`); the server is a real `python -m app` (uvicorn) subprocess on
127.0.0.1 serving the CURRENT index version of <root>/index. Prints a table and writes docs/results/service.json and
docs/service-benchmark.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
TEXT_QUERY = {"text": "a smiling yellow face with sunglasses", "k": 10, "target": "image"}
TARGETS = {"text_p50_ms_1_client": 15.0, "image_p50_ms_1_client": 150.0}
BOUNDARY = "dscmrbenchboundary7d1e"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = None
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem_gib = round(kb / 1024 / 1024, 1)
    except (OSError, AttributeError):
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "gpu": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def multipart_body(image_bytes: bytes, filename: str, k: int = 10) -> bytes:
    """A multipart/form-data body with the image as `file` and k."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + image_bytes + f"\r\n--{BOUNDARY}--\r\n".encode()


def photo_jpeg(source: Path, size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A phone-photo-sized JPEG made from a corpus image (what a user typically uploads)."""
    with Image.open(source) as image:
        photo = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=90)
    return out.getvalue()


def summarise(csv_text: str, sent: int) -> dict:
    """Requests/s, latency percentiles (ms) and errors from hey's per-request CSV.

    hey's CSV lists every answered request; requests that got no answer (refused, reset, timed out) are missing from
    it, so they are counted as `sent` minus the rows. Any status other than 200 is an error too.
    """
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    latencies = np.array([float(r["response-time"]) * 1000 for r in rows])
    statuses = Counter(r["status-code"] for r in rows)
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
    unanswered = sent - len(rows)
    def pct(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 2) if len(latencies) else None

    return {"requests": sent, "requests_per_s": round(len(rows) / span, 2) if span else None, "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99), "mean_ms": round(float(latencies.mean()), 2) if len(latencies) else None,
            "max_ms": round(float(latencies.max()), 2) if len(latencies) else None, "status_codes": dict(statuses),
            "unanswered": unanswered, "errors": unanswered + sum(n for code, n in statuses.items() if code != "200"),
            "wall_s": round(span, 2)}


def stage_sums(metrics_text: str) -> dict[tuple[str, str], tuple[float, float]]:
    """{(endpoint, stage): (sum seconds, count)} of dscmr_stage_duration_seconds, plus whole requests as stage 'total'."""
    out: dict[tuple[str, str], list[float]] = {}
    for name, labels, value in re.findall(r"^(dscmr_stage_duration_seconds_(?:sum|count)|"
                                          r"dscmr_http_request_duration_seconds_(?:sum|count))\{([^}]*)\} (\S+)$",
                                          metrics_text, flags=re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        stage = fields.get("stage", "total")
        entry = out.setdefault((fields["endpoint"], stage), [0.0, 0.0])
        entry[0 if name.endswith("_sum") else 1] += float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_breakdown(before: dict, after: dict, endpoint: str) -> dict[str, float]:
    """Mean ms per stage of the requests between two /metrics snapshots."""
    out = {}
    for (ep, stage), (total, count) in after.items():
        if ep != endpoint:
            continue
        b_total, b_count = before.get((ep, stage), (0.0, 0.0))
        if count > b_count:
            out[stage] = round((total - b_total) / (count - b_count) * 1000, 2)
    order = ["queue", "decode", "encode", "search", "total"]
    return {s: out[s] for s in order if s in out}


def run_hey(hey: str, url: str, concurrency: int, requests: int, body: Path, content_type: str) -> dict:
    """One load level: `requests` POSTs from `concurrency` clients with hey; returns the summary."""
    cmd = [hey, "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-T", content_type, "-D", str(body), "-t", "60",
           "-o", "csv", url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"hey failed ({result.returncode}): {result.stderr[-2000:]}")
    return summarise(result.stdout, requests)


def requests_for(seconds: float, rate: float, concurrency: int) -> int:
    """How many requests make a level last about `seconds` at `rate` req/s (at least 4 per client, and 20)."""
    return max(20, 4 * concurrency, int(round(seconds * rate / concurrency)) * concurrency)


def start_server(index_root: Path, log_path: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`python -m app` on a free port; returns (process, base URL) once /readyz answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSCMR_")}
    env.update({"DSCMR_INDEX_ROOT": str(index_root), "DSCMR_PORT": str(port), "DSCMR_HOST": "127.0.0.1",
                "DSCMR_ACCESS_LOG": "false", "DSCMR_LOG_LEVEL": "warning", "DSCMR_RELOAD_POLL_S": "0",
                "OMP_WAIT_POLICY": "PASSIVE"}, **extra_env)
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the server did not become ready in 300 s:\n{log_path.read_text()[-3000:]}")


def run(root: Path, seconds: float, concurrency: tuple[int, ...], out_json: Path, out_md: Path, work: Path,
        server_env: dict[str, str], repeats: int = 1) -> dict:
    """Run every (endpoint, payload, concurrency) level against a fresh server; return the results."""
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("the load generator `hey` is not installed: apt-get install -y hey")
    index_root = root / "index"
    from index.store import load_manifest, resolve_version
    from model.corpus import load_corpus

    try:
        manifest = load_manifest(resolve_version(index_root), verify_files=False)
    except Exception as exc:  # noqa: BLE001 -- say what to do instead of a traceback
        raise SystemExit(f"no index under {index_root} ({exc}); build the demo first: python -m training demo --root {root}")
    corpus = load_corpus(root / "corpus")
    sample = next(it for it in corpus.items if it.image_path)
    work.mkdir(parents=True, exist_ok=True)
    text_body = work / "text.json"
    text_body.write_text(json.dumps(TEXT_QUERY))
    corpus_png = Path(sample.image_path).read_bytes()
    with Image.open(sample.image_path) as im:
        corpus_size = im.size
    photo = photo_jpeg(Path(sample.image_path))
    payloads = {
        "text": ("/search/text", text_body, "application/json", f"JSON text query {TEXT_QUERY['text']!r}"),
        "image": ("/search/image", work / "image.multipart", f"multipart/form-data; boundary={BOUNDARY}",
                  f"multipart upload of a corpus image ({corpus_size[0]}x{corpus_size[1]} PNG, {len(corpus_png):,} B)"),
        "image_photo": ("/search/image", work / "photo.multipart", f"multipart/form-data; boundary={BOUNDARY}",
                        f"multipart upload of a 1600x1200 JPEG photo ({len(photo):,} B)"),
    }
    (work / "image.multipart").write_bytes(multipart_body(corpus_png, Path(sample.image_path).name))
    (work / "photo.multipart").write_bytes(multipart_body(photo, "photo.jpg"))

    info = machine()
    process, url = start_server(index_root, work / "server.log", server_env)
    runs: list[dict] = []
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            ready = client.get("/readyz").json()
            for name, (path, body, content_type, _) in payloads.items():  # warm-up: first calls pay lazy initialisation
                for _ in range(10):
                    response = client.post(path, content=body.read_bytes(), headers={"content-type": content_type})
                    response.raise_for_status()
            for repeat in range(repeats):
                for name, (path, body, content_type, description) in payloads.items():
                    started = time.perf_counter()
                    for _ in range(5):
                        client.post(path, content=body.read_bytes(), headers={"content-type": content_type}).raise_for_status()
                    rate = 5 / (time.perf_counter() - started)  # one client's rate: sizes the first level
                    for c in concurrency:
                        before = stage_sums(client.get("/metrics").text)
                        result = run_hey(hey, url + path, c, requests_for(seconds, rate, c), body, content_type)
                        rate = result["requests_per_s"] or rate  # the next level starts from the throughput reached here
                        after = stage_sums(client.get("/metrics").text)
                        row = {"endpoint": path, "payload": name, "description": description, "concurrency": c,
                               "seconds": seconds, "repeat": repeat, **result,
                               "server_stages_ms": stage_breakdown(before, after, path)}
                        runs.append(row)
                        print(format_row(row), flush=True)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    info["load_average_at_end"] = list(os.getloadavg())
    rows = median_rows(runs)
    results = {
        "benchmark": "service", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_generator": f"hey ({shutil.which('hey')}): -n requests sized to about {seconds:g} s per level, -c clients, "
                          "keep-alive connections, per-request CSV (-o csv)",
        "machine": info, "server": {"command": "python -m app (uvicorn, 1 process)", "settings": server_env, "artefact_root": str(root),
                                    "index_version": ready["index_version"], "model_hash": ready["model_hash"],
                                    "counts": ready["counts"], "index_type": {m: i["spec"].get("kind") for m, i in manifest["modalities"].items()},
                                    "corpus_items": len(corpus.items)},
        "payloads": {k: v[3] for k, v in payloads.items()},
        "repeats": repeats, "results": rows, "runs": runs, "targets": evaluate_targets(rows),
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    out_md.write_text(markdown(results))
    return results


def median_rows(runs: list[dict]) -> list[dict]:
    """One row per (payload, clients): the median of each figure over the repeats (errors: their sum)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in runs:
        groups.setdefault((row["payload"], row["concurrency"]), []).append(row)
    rows = []
    for group in groups.values():
        def median(key: str) -> float | None:
            values = [r[key] for r in group if r[key] is not None]
            return round(float(np.median(values)), 2) if values else None

        stages = {stage: round(float(np.median([r["server_stages_ms"][stage] for r in group if stage in r["server_stages_ms"]])), 2)
                  for stage in group[0]["server_stages_ms"]}
        first = group[0]
        rows.append({**{k: first[k] for k in ("endpoint", "payload", "description", "concurrency", "seconds")},
                     "repeats": len(group), "requests": sum(r["requests"] for r in group),
                     **{k: median(k) for k in ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "mean_ms")},
                     "max_ms": max(r["max_ms"] or 0 for r in group), "errors": sum(r["errors"] for r in group),
                     "server_stages_ms": stages})
    return rows


def evaluate_targets(rows: list[dict]) -> dict:
    """The issue's targets against the measured rows."""
    def p50(payload: str, c: int) -> float | None:
        return next((r["p50_ms"] for r in rows if r["payload"] == payload and r["concurrency"] == c), None)

    text, image = p50("text", 1), p50("image", 1)
    errors_32 = sum(r["errors"] for r in rows if r["concurrency"] == 32)
    return {
        "text_p50_ms_1_client": {"target_ms": TARGETS["text_p50_ms_1_client"], "measured_ms": text,
                                 "met": text is not None and text < TARGETS["text_p50_ms_1_client"]},
        "image_p50_ms_1_client": {"target_ms": TARGETS["image_p50_ms_1_client"], "measured_ms": image,
                                  "met": image is not None and image < TARGETS["image_p50_ms_1_client"]},
        "no_errors_at_32_clients": {"errors": errors_32, "met": errors_32 == 0},
    }


HEADER = f"{'payload':<12} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  server stages (mean ms)"


def format_row(row: dict) -> str:
    """One line of the printed table."""
    stages = " ".join(f"{k}={v:g}" for k, v in row["server_stages_ms"].items())
    return (f"{row['payload']:<12} {row['concurrency']:>7} {row['requests_per_s'] or 0:>8.1f} {_ms(row['p50_ms']):>8} "
            f"{_ms(row['p99_ms']):>8} {row['errors']:>6}  {stages}")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown(results: dict) -> str:
    """docs/service-benchmark.md from the results."""
    m, s, t = results["machine"], results["server"], results["targets"]
    lines = [
        "# Service benchmark",
        "",
        "`python bench/bench_service.py --root artifacts` starts `python -m app` (one uvicorn process) on the demo index and "
        "drives it with [hey](https://github.com/rakyll/hey) at "
        f"{', '.join(str(c) for c in dict.fromkeys(r['concurrency'] for r in results['results']))} concurrent clients, "
        f"about {results['results'][0]['seconds']:g} s per level (a fixed request count each, so that requests without an "
        f"answer are counted). Every level ran {results['repeats']} times, spread over the run; the table shows medians, "
        "the raw runs are in `docs/results/service.json`.",
        "",
        f"- **Machine:** {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, GPU: {'yes' if m['gpu'] else 'no'}; "
        f"load average {m['load_average_at_start'][0]:.1f} at the start and {m['load_average_at_end'][0]:.1f} at the end "
        "(1-minute; the machine is shared with other work, so absolute figures move between runs). "
        "hey runs on the same cores as the server.",
        f"- **Index:** version `{s['index_version']}`: "
        + " + ".join(f"{n} {m} vectors ({s['index_type'][m]} index)" for m, n in s["counts"].items())
        + f" of {s['corpus_items']} corpus items; model `{s['model_hash'][:12]}` (EfficientNet-Lite0 backbone, sentence CNN).",
        f"- **Server settings:** {s['settings'] or 'defaults'} (DSCMR_CPU_WORKERS = cores, DSCMR_TORCH_THREADS=1, access log off).",
        f"- **Measured:** {results['created_at']}.",
        "",
        "| endpoint | payload | clients | requests | req/s | p50 ms | p99 ms | errors | queue | decode | encode | search | server total |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["results"]:
        st = r["server_stages_ms"]
        cell = lambda k: f"{st[k]:.1f}" if k in st else "–"  # noqa: E731
        lines.append(f"| `{r['endpoint']}` | {r['payload']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s'] or 0:.1f} | "
                     f"{_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} | {cell('queue')} | {cell('decode')} | "
                     f"{cell('encode')} | {cell('search')} | {cell('total')} |")
    lines += [
        "",
        "Stage columns are server-side means over the level's requests from `/metrics` (`dscmr_stage_duration_seconds`); "
        "*queue* is the wait for one of the DSCMR_CPU_WORKERS slots, *server total* the whole request inside uvicorn "
        "(`dscmr_http_request_duration_seconds`). Client latency adds the HTTP round trip and hey's own CPU use.",
        "",
        "Payloads: " + "; ".join(f"**{k}**: {v}" for k, v in results["payloads"].items()) + ".",
        "",
        "## Where the time goes",
        "",
        *where_time_goes(results["results"]),
        "",
        "## Targets",
        "",
        f"- `/search/text` p50 at 1 client under {t['text_p50_ms_1_client']['target_ms']:g} ms: "
        f"**{t['text_p50_ms_1_client']['measured_ms']:.1f} ms** ({'met' if t['text_p50_ms_1_client']['met'] else 'NOT met'}).",
        f"- `/search/image` p50 at 1 client under {t['image_p50_ms_1_client']['target_ms']:g} ms: "
        f"**{t['image_p50_ms_1_client']['measured_ms']:.1f} ms** ({'met' if t['image_p50_ms_1_client']['met'] else 'NOT met'}).",
        f"- No errors at 32 clients: **{t['no_errors_at_32_clients']['errors']} errors** "
        f"({'met' if t['no_errors_at_32_clients']['met'] else 'NOT met'}).",
        "",
    ]
    return "\n".join(lines)


def where_time_goes(rows: list[dict]) -> list[str]:
    """One line per payload: the stage shares at 1 client and what concurrency adds."""
    lines = []
    for payload in dict.fromkeys(r["payload"] for r in rows):
        mine = sorted((r for r in rows if r["payload"] == payload), key=lambda r: r["concurrency"])
        one, top = mine[0], mine[-1]
        stages, total = one["server_stages_ms"], one["server_stages_ms"].get("total")
        if not total:
            continue
        parts = ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in stages.items() if k != "total")
        line = (f"- **{payload}**, {one['concurrency']} client: {total:.1f} ms in the server = {parts}; the client sees "
                f"p50 {one['p50_ms']:.1f} ms.")
        if top is not one:
            queue = top["server_stages_ms"].get("queue", 0.0)
            line += (f" At {top['concurrency']} clients throughput is {top['requests_per_s']:.1f} req/s "
                     f"({top['requests_per_s'] / one['requests_per_s']:.1f}x one client) and requests wait {queue:.1f} ms on "
                     "average for a CPU slot: the cores are saturated, so latency grows with the queue, not with errors.")
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI of the service benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("DSCMR_ARTIFACTS", "artifacts")),
                        help="artefact root holding index/ and corpus/ (default $DSCMR_ARTIFACTS or artifacts)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--repeats", type=int, default=3, help="run every level this many times (spread over the run); "
                        "the table shows medians, which matter on a machine shared with other work")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "service.json")
    parser.add_argument("--md", type=Path, default=REPO / "docs" / "service-benchmark.md")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "service")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite --md from the existing --out JSON, measure nothing")
    parser.add_argument("--server-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra server settings, e.g. DSCMR_TORCH_THREADS=2")
    args = parser.parse_args(argv)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    if args.markdown_only:
        args.md.write_text(markdown(json.loads(args.out.read_text())))
        return 0
    print(HEADER)
    results = run(args.root, args.seconds, tuple(args.concurrency), args.out, args.md, args.work, server_env, args.repeats)
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
