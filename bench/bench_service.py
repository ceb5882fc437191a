"""Service benchmark: what HTTP costs over the raw work, throughput with and without micro-batching, and 1 vs 2 workers.

    python bench/bench_service.py --root artifacts                      # the demo root (python -m training demo --root artifacts)
    python bench/bench_service.py --root artifacts --baseline-commit e52bb3d   # plus the service as it was at a commit

One command, three parts, each interleaved so that the compared paths share the machine's load:

1. Overhead at 1 client: pairs of (raw in-process work, the same query over HTTP) alternate, for /search/text and
   /search/image. Raw = encode + search (+ decode for images) in this process with the server's functions and thread
   settings (for text: the vectors with the query-problem check, and the unknown words, as the server's encode stage);
   HTTP = a keep-alive request from a minimal socket client to a real `python -m app`, batching off.
2. Load: requests/s, p50 and p99 at 1, 8 and 32 clients (`hey`, Debian package `hey`) for text and image, against a
   server with batching off and one with batching on (DSCMR_BATCHING=on), levels alternating between the two.
3. Workers: RSS per worker process (Rss, Pss, private and shared, from /proc/PID/smaps_rollup) and requests/s at 8 and
   32 clients with DSCMR_WORKERS=1 and DSCMR_WORKERS=2, alternating.

With --baseline-commit, the service of that commit (exported with `git archive`, same index and model) runs too, in
parts 1 and 2, for a before/after table. Prints tables, writes docs/results/service.json and docs/service-benchmark.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import describe, detect_machine, git_commit  # noqa: E402

CONCURRENCY = (1, 8, 32)
WORKER_CONCURRENCY = (8, 32)
TEXT_QUERY = {"text": "a smiling yellow face with sunglasses", "k": 10, "target": "image"}
IMAGE_K = 10
BOUNDARY = "dscmrbenchboundary7d1e"
RATIO_TARGET = 1.3
# what every server of the run gets (the bench sets the load, nothing may poll or log per request)
BASE_ENV = {
    "DSCMR_ACCESS_LOG": "false",
    "DSCMR_LOG_LEVEL": "warning",
    "DSCMR_RELOAD_POLL_S": "0",
    "DSCMR_DEVICE": "cpu",
    "OMP_WAIT_POLICY": "PASSIVE",
}
SERVERS = {  # name -> (extra settings, what it is)
    "off": ({"DSCMR_BATCHING": "off"}, "1 process, batching off (the CPU default)"),
    "on": ({"DSCMR_BATCHING": "on"}, "1 process, batching on (DSCMR_BATCHING=on, default wait and size)"),
    "workers2": ({"DSCMR_BATCHING": "off", "DSCMR_WORKERS": "2"}, "DSCMR_WORKERS=2, batching off"),
}


def machine() -> dict:
    """What the numbers were measured on (bench.machine.detect_machine; kept for other benches that import it)."""
    return detect_machine()


# ------------------------------------------------------------------------------------------------------ payloads
def multipart_body(image_bytes: bytes, filename: str, k: int = IMAGE_K) -> bytes:
    """A multipart/form-data body with the image as `file` and k."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + image_bytes
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on one socket: the least client-side work per request, so that what the
    round trip adds over the raw work is the server's (and the loopback's)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def request(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST `body`; (status, response body)."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        header, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status, rest[:length]

    def _read(self) -> None:
        self.buffer += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


# -------------------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `python -m app` subprocess (from this repository or an exported tree) on a free port."""

    def __init__(self, name: str, code: Path, index_root: Path, settings: dict[str, str], log_path: Path) -> None:
        self.name, self.code, self.settings = name, code, settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSCMR_")}
        env.update(BASE_ENV)
        env.update(
            {
                "DSCMR_INDEX_ROOT": str(index_root),
                "DSCMR_PORT": str(self.port),
                "DSCMR_HOST": "127.0.0.1",
                "PYTHONPATH": str(code),
                **settings,
            }
        )
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"], cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server {self.name} exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                response = httpx.get(self.url + "/readyz", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server {self.name} was not ready within {timeout:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def worker_pids(self, expected: int, attempts: int = 400) -> list[int]:
        """The pids of the processes that answer (one per worker), from /readyz on new connections."""
        seen: set[int] = set()
        for _ in range(attempts):
            seen.add(httpx.get(self.url + "/readyz", timeout=30).json()["worker_pid"])
            if len(seen) >= expected:
                break
        return sorted(seen)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def memory_of(pid: int) -> dict[str, float]:
    """MiB of one process from /proc/PID/smaps_rollup: Rss, Pss (shared pages split between their users), private
    (only this process) and shared (also mapped by another process: the page cache of mapped files, libraries)."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            fields[name.strip()] = int(parts[0]) / 1024
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    shared = fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)
    return {
        "rss_mib": round(fields.get("Rss", 0), 1),
        "pss_mib": round(fields.get("Pss", 0), 1),
        "private_mib": round(private, 1),
        "shared_mib": round(shared, 1),
        "anonymous_mib": round(fields.get("Anonymous", 0), 1),
    }


# ------------------------------------------------------------------------------------------------- part 1: overhead
class RawWork:
    """The work of one search done in this process, as the server does it (same functions, same thread counts)."""

    def __init__(self, index_root: Path, torch_threads: int = 1, search_threads: int = 1) -> None:
        import faiss
        import torch

        from index.search import SearchIndex
        from index.store import load_manifest, resolve_version
        from model.encoder import load_encoder

        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(search_threads)
        manifest = load_manifest(resolve_version(index_root), verify_files=False)
        self.encoder = load_encoder(manifest["model"]["path"], device="cpu")
        self.index = SearchIndex.load(index_root, encoder=self.encoder, mmap_vectors=True)
        from app.settings import ServiceSettings
        from model.caption import caption_encoder_from_spec

        self.settings = ServiceSettings()
        # an index with caption vectors: the server mixes in the caption match by default (index/captions.py)
        self.captions = (
            caption_encoder_from_spec(manifest["captions"]["encoder"], device="cpu", shared=self.encoder)
            if self.index.has_captions
            else None
        )

    def text(self, query: dict) -> list:
        from model.caption import encode_text_queries_with_captions

        weight = query.get("caption_weight", self.index.caption_weight if self.captions is not None else 0.0)
        if self.captions is not None and query["target"] != "both" and weight > 0:
            vectors, _, caption_vectors = encode_text_queries_with_captions(self.encoder, self.captions, [query["text"]])
            self.encoder.unknown_words(query["text"])
            return self.index.search_vectors_fused(vectors, caption_vectors, query["k"], query["target"], weight=weight)[0]
        # the server's encoding stage: the vectors with each query's problem check (no known words, a degenerate vector)
        vectors, _ = self.encoder.encode_text_queries([query["text"]])
        self.encoder.unknown_words(query["text"])
        return self.index.search_vectors(vectors, query["k"], query["target"], query_modality="text")[0]

    def image(self, data: bytes, k: int) -> list:
        from app.main import decode_image

        settings = self.settings
        image = decode_image(data, settings.max_image_pixels, self.encoder.image_decode_size, settings.max_image_aspect_ratio)
        vectors = self.encoder.encode_images([image])
        return self.index.search_vectors(vectors, k, "text", query_modality="image")[0]


def overhead(raw: RawWork, servers: list[Server], text_pairs: int, image_pairs: int, image: bytes, text_query: dict) -> dict:
    """Part 1: alternate raw work and the same request to each server, one at a time; medians per path."""
    text_body = json.dumps(text_query).encode()
    image_body = multipart_body(image, "query.png")
    kinds = {
        "text": ("/search/text", text_body, "application/json", lambda: raw.text(text_query), text_pairs),
        "image": (
            "/search/image",
            image_body,
            f"multipart/form-data; boundary={BOUNDARY}",
            lambda: raw.image(image, IMAGE_K),
            image_pairs,
        ),
    }
    clients = {s.name: RawHTTP(s.url) for s in servers}
    out: dict[str, Any] = {}
    try:
        for kind, (path, body, content_type, work, pairs) in kinds.items():
            for _ in range(5):  # warm-up: lazy initialisation, caches
                work()
                for client in clients.values():
                    assert client.request(path, body, content_type)[0] == 200
            times: dict[str, list[float]] = {"raw": [], **{name: [] for name in clients}}
            took: dict[str, list[float]] = {name: [] for name in clients}
            stages: dict[str, dict[str, list[float]]] = {name: {} for name in clients}
            for i in range(pairs):
                order = ["raw", *clients]
                shift = i % len(order)  # each path goes first in turn
                for name in order[shift:] + order[:shift]:
                    started = time.perf_counter()
                    if name == "raw":
                        work()
                        times["raw"].append(time.perf_counter() - started)
                        continue
                    status, answer = clients[name].request(path, body, content_type)
                    times[name].append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"{name} {path}: {status} {answer[:300]!r}")
                    parsed = json.loads(answer)
                    took[name].append(parsed["took_ms"])
                    for stage, ms in parsed.get("stages_ms", {}).items():
                        stages[name].setdefault(stage, []).append(ms)
            raw_ms = statistics.median(times["raw"]) * 1000
            out[kind] = {
                "pairs": pairs,
                "raw_ms": round(raw_ms, 3),
                "servers": {
                    name: {
                        "http_ms": round(statistics.median(times[name]) * 1000, 3),
                        "ratio": round(statistics.median(times[name]) * 1000 / raw_ms, 3),
                        "server_took_ms": round(statistics.median(took[name]), 3),
                        "server_stages_ms": {stage: round(statistics.median(v), 3) for stage, v in stages[name].items()},
                    }
                    for name in clients
                },
            }
            for name, row in out[kind]["servers"].items():
                print(
                    f"overhead {kind:<6} {name:<9} raw {raw_ms:7.2f} ms  HTTP {row['http_ms']:7.2f} ms  "
                    f"ratio {row['ratio']:.2f}  server took {row['server_took_ms']:.2f} ms  {row['server_stages_ms']}",
                    flush=True,
                )
    finally:
        for client in clients.values():
            client.close()
    return out


# ----------------------------------------------------------------------------------------------------- part 2, 3: load
def summarise(csv_text: str, sent: int) -> dict:
    """Requests/s, latency percentiles (ms) and errors from hey's per-request CSV (requests without an answer are
    missing from it and counted as errors, as is any status other than 200)."""
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    latencies = np.array([float(r["response-time"]) * 1000 for r in rows])
    statuses = Counter(r["status-code"] for r in rows)
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
    unanswered = sent - len(rows)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(latencies, q)), 2) if len(latencies) else None

    return {
        "requests": sent,
        "requests_per_s": round(len(rows) / span, 2) if span else None,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "status_codes": dict(statuses),
        "errors": unanswered + sum(n for c, n in statuses.items() if c != "200"),
        "wall_s": round(span, 2),
    }


def run_hey(url: str, concurrency: int, requests: int, body: Path, content_type: str) -> dict:
    """One load level: `requests` POSTs from `concurrency` keep-alive clients."""
    cmd = [
        shutil.which("hey") or "hey",
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        content_type,
        "-D",
        str(body),
        "-t",
        "120",
        "-o",
        "csv",
        url,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"hey failed ({result.returncode}): {result.stderr[-2000:]}")
    return summarise(result.stdout, requests)


def requests_for(seconds: float, rate: float, concurrency: int) -> int:
    """How many requests make a level last about `seconds` at `rate` req/s (at least 2 per client, and 12)."""
    return max(12, 2 * concurrency, int(round(seconds * rate / concurrency)) * concurrency)


def load_levels(
    servers: list[Server],
    payloads: dict[str, tuple[str, Path, str]],
    levels: tuple[int, ...],
    seconds: float,
    repeats: int,
    part: str,
) -> list[dict]:
    """Every (payload, clients) level against every server, the servers alternating within each level."""
    rates: dict[tuple[str, str], float] = {}
    runs = []
    for repeat in range(repeats):
        for clients in levels:
            for payload, (path, body, content_type) in payloads.items():
                order = servers if repeat % 2 == 0 else servers[::-1]
                for server in order:
                    rate = rates.get((server.name, payload))
                    if rate is None:
                        started = time.perf_counter()
                        with httpx.Client(timeout=120) as client:
                            for _ in range(3):
                                client.post(
                                    server.url + path, content=body.read_bytes(), headers={"content-type": content_type}
                                ).raise_for_status()
                        rate = 3 / (time.perf_counter() - started)
                    result = run_hey(server.url + path, clients, requests_for(seconds, rate, clients), body, content_type)
                    rates[(server.name, payload)] = result["requests_per_s"] or rate
                    row = {
                        "part": part,
                        "server": server.name,
                        "payload": payload,
                        "clients": clients,
                        "repeat": repeat,
                        **result,
                    }
                    runs.append(row)
                    print(
                        f"{part:<8} {server.name:<9} {payload:<6} {clients:>3} clients  {result['requests_per_s'] or 0:7.1f} req/s  "
                        f"p50 {result['p50_ms'] or 0:8.1f} ms  p99 {result['p99_ms'] or 0:8.1f} ms  errors {result['errors']}",
                        flush=True,
                    )
    return runs


def medians(runs: list[dict]) -> list[dict]:
    """One row per (part, server, payload, clients): medians over the repeats, errors summed."""
    groups: dict[tuple, list[dict]] = {}
    for row in runs:
        groups.setdefault((row["part"], row["server"], row["payload"], row["clients"]), []).append(row)
    out = []
    for (part, server, payload, clients), group in groups.items():

        def median(key: str, group: list[dict] = group) -> float | None:
            values = [r[key] for r in group if r[key] is not None]
            return round(float(np.median(values)), 2) if values else None

        out.append(
            {
                "part": part,
                "server": server,
                "payload": payload,
                "clients": clients,
                "repeats": len(group),
                "requests": sum(r["requests"] for r in group),
                "requests_per_s": median("requests_per_s"),
                "p50_ms": median("p50_ms"),
                "p99_ms": median("p99_ms"),
                "errors": sum(r["errors"] for r in group),
            }
        )
    return out


# --------------------------------------------------------------------------------------------------------------- run
def export_commit(commit: str, target: Path) -> str:
    """The repository at `commit` exported (git archive) into `target`; returns the full commit id."""
    full = subprocess.run(["git", "rev-parse", commit], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", full], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return full


def run(args: argparse.Namespace) -> dict:
    """All three parts; returns the results (also written to args.out and args.md)."""
    if shutil.which("hey") is None:
        raise SystemExit("the load generator `hey` is not installed: apt-get install -y hey")
    from index.store import load_manifest, resolve_version
    from model.corpus import load_corpus

    index_root = args.root / "index"
    try:
        manifest = load_manifest(resolve_version(index_root), verify_files=False)
    except Exception as exc:  # noqa: BLE001 -- say what to do instead of a traceback
        raise SystemExit(f"no index under {index_root} ({exc}); build the demo first: python -m training demo --root {args.root}")
    corpus = load_corpus(args.root / "corpus")
    sample = next(it for it in corpus.items if it.image_path)
    image = Path(sample.image_path).read_bytes()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    text_query = {**TEXT_QUERY, **({} if args.caption_weight is None else {"caption_weight": args.caption_weight})}
    (work / "text.json").write_text(json.dumps(text_query))
    (work / "image.multipart").write_bytes(multipart_body(image, Path(sample.image_path).name))
    payloads = {
        "text": ("/search/text", work / "text.json", "application/json"),
        "image": ("/search/image", work / "image.multipart", f"multipart/form-data; boundary={BOUNDARY}"),
    }

    before = detect_machine()
    started = time.perf_counter()
    baseline_commit = None
    servers: dict[str, Server] = {}
    cleanup: list[Path] = []
    try:
        for name, (settings, _) in SERVERS.items():
            servers[name] = Server(name, REPO, index_root, settings, work / f"server-{name}.log")
        if args.baseline_commit:
            # outside the repository: a second copy of the code under it would be seen by linters and build contexts
            baseline_tree = Path(tempfile.mkdtemp(prefix="dscmr-bench-baseline-"))
            cleanup.append(baseline_tree)
            baseline_commit = export_commit(args.baseline_commit, baseline_tree)
            servers["baseline"] = Server("baseline", baseline_tree, index_root, {}, work / "server-baseline.log")
        ready = {name: server.wait_ready() for name, server in servers.items()}
        raw = RawWork(index_root)
        compared = [servers["off"]] + ([servers["baseline"]] if "baseline" in servers else [])
        part1 = overhead(raw, compared, args.text_pairs, args.image_pairs, image, text_query)
        del raw
        part2 = load_levels(
            [servers["off"], servers["on"]] + ([servers["baseline"]] if "baseline" in servers else []),
            payloads,
            tuple(args.concurrency),
            args.seconds,
            args.repeats,
            "batching",
        )
        pids = {"off": servers["off"].worker_pids(1), "workers2": servers["workers2"].worker_pids(2)}
        part3 = load_levels(
            [servers["off"], servers["workers2"]], payloads, WORKER_CONCURRENCY, args.seconds, args.repeats, "workers"
        )
        # after the load: every worker has searched, so the index pages it maps are in its RSS
        memory = {name: {str(pid): memory_of(pid) for pid in pid_list} for name, pid_list in pids.items()}
        memory["workers2_supervisor"] = {str(servers["workers2"].process.pid): memory_of(servers["workers2"].process.pid)}
    finally:
        for server in servers.values():
            server.stop()
        for tree in cleanup:
            shutil.rmtree(tree, ignore_errors=True)
    after = detect_machine()
    first = ready["off"]
    results = {
        "benchmark": "service",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/bench_service.py", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "machine": before,
        "machine_after": after,
        "wall_s": round(time.perf_counter() - started, 1),
        "seconds_per_level": args.seconds,
        "repeats": args.repeats,
        "index": {
            "artefact_root": str(args.root),
            "index_version": first["index_version"],
            "model_hash": first["model_hash"],
            "counts": first["counts"],
            "index_type": {m: i["spec"].get("kind") for m, i in manifest["modalities"].items()},
            "text_encoder": _text_kind(manifest),
            "corpus_items": len(corpus.items),
        },
        "servers": {name: {"settings": {**BASE_ENV, **settings}, "what": what} for name, (settings, what) in SERVERS.items()},
        "baseline_commit": baseline_commit,
        "payloads": {
            "text": f"JSON {json.dumps(text_query)}",
            "image": f"multipart upload of a corpus image ({len(image):,} B, k={IMAGE_K}, target text)",
        },
        "overhead": part1,
        "load": medians(part2),
        "workers": medians(part3),
        "memory": memory,
        "runs": part2 + part3,
        "targets": targets(part1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    args.md.write_text(markdown(results))
    return results


def _text_kind(manifest: dict) -> str | None:
    try:
        from model.artefact import load_model

        return load_model(manifest["model"]["path"]).feature_spec.get("text", {}).get("kind")
    except Exception:  # noqa: BLE001 -- descriptive only
        return None


def targets(part1: dict) -> dict:
    """The issue's targets: HTTP / raw at 1 client <= RATIO_TARGET for text and image (the current code, server 'off')."""
    return {
        f"{kind}_http_over_raw": {
            "target": RATIO_TARGET,
            "measured": part1[kind]["servers"]["off"]["ratio"],
            "met": part1[kind]["servers"]["off"]["ratio"] <= RATIO_TARGET,
        }
        for kind in part1
    }


# ---------------------------------------------------------------------------------------------------------- markdown
def _cell(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _results_file(command: str) -> str:
    """The JSON file a recorded command wrote (its --out, else the default)."""
    words = command.split()
    return words[words.index("--out") + 1] if "--out" in words[:-1] else "docs/results/service.json"


def markdown(results: dict) -> str:
    """docs/service-benchmark.md from the results."""
    m, after, ix = results["machine"], results["machine_after"], results["index"]
    baseline = results.get("baseline_commit")
    lines = [
        "# Service benchmark",
        "",
        f"`{results['command']}` ({results['created_at']}, commit `{(results['git_commit'] or 'unknown')[:12]}`, "
        f"{results['wall_s']:.0f} s). Written by that command; the raw figures are in `{_results_file(results['command'])}`.",
        "",
        f"- **Machine:** {describe(m, after)}. Load averages (1, 5, 15 min) before: {m['load_average']}, after: "
        f"{after['load_average']}.",
        f"- **Index:** version `{ix['index_version']}`: "
        + " + ".join(f"{n} {mod} vectors ({ix['index_type'][mod]})" for mod, n in ix["counts"].items())
        + f" of {ix['corpus_items']} corpus items; model `{ix['model_hash'][:12]}`, text encoder {ix['text_encoder']}.",
        "- **Servers:** "
        + "; ".join(f"`{name}`: {s['what']}" for name, s in results["servers"].items())
        + (f"; `baseline`: the service at commit `{baseline[:12]}` (same index, defaults)" if baseline else "")
        + ". All with "
        + ", ".join(f"{k}={v}" for k, v in results["servers"]["off"]["settings"].items() if k != "DSCMR_BATCHING")
        + " and the other settings at their defaults (DSCMR_CPU_WORKERS = cores, one torch and one FAISS thread per query).",
        f"- **Payloads:** text: {results['payloads']['text']}; image: {results['payloads']['image']}.",
        "",
        "## 1. What HTTP costs over the raw work (1 client)",
        "",
        "Pairs alternate: the raw work in the benchmark process (encode + search, + decode for images; the server's "
        "functions and thread settings: for text the vectors with the query-problem check and the unknown words), then "
        "the same query as one keep-alive HTTP request from a minimal socket client. Medians.",
        "",
        "| endpoint | server | pairs | raw ms | HTTP ms | HTTP / raw | server took_ms | server stages (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for kind, row in results["overhead"].items():
        for name, s in row["servers"].items():
            stages = ", ".join(f"{k} {v:.2f}" for k, v in s["server_stages_ms"].items())
            lines.append(
                f"| `/search/{kind}` | {name} | {row['pairs']} | {row['raw_ms']:.2f} | {s['http_ms']:.2f} | "
                f"**{s['ratio']:.2f}** | {s['server_took_ms']:.2f} | {stages} |"
            )
    lines += [
        "",
        "Targets (server `off`, the current code): "
        + "; ".join(
            f"{k.replace('_', ' ')} {v['measured']:.2f} (target <= {v['target']:g}: {'met' if v['met'] else 'NOT met'})"
            for k, v in results["targets"].items()
        )
        + ".",
        "",
        "## 2. Throughput and latency, batching off and on",
        "",
        f"`hey` with keep-alive clients, a fixed request count per level (sized for about {results['seconds_per_level']:g} s "
        f"from the previous level's rate); the servers alternate within each level; medians over {results['repeats']} "
        "repeats. hey runs on the same cores as the server. `dscmr_batch_size` in /metrics has the batch sizes.",
        "",
        "| endpoint | clients | server | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in sorted(results["load"], key=lambda r: (r["payload"] != "text", r["clients"], r["server"])):
        lines.append(
            f"| `/search/{row['payload']}` | {row['clients']} | {row['server']} | {_cell(row['requests_per_s'])} | "
            f"{_cell(row['p50_ms'])} | {_cell(row['p99_ms'])} | {row['errors']} |"
        )
    lines += [
        "",
        "## 3. One worker and two",
        "",
        "| endpoint | clients | server | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in sorted(results["workers"], key=lambda r: (r["payload"] != "text", r["clients"], r["server"])):
        lines.append(
            f"| `/search/{row['payload']}` | {row['clients']} | {row['server']} | {_cell(row['requests_per_s'])} | "
            f"{_cell(row['p50_ms'])} | {_cell(row['p99_ms'])} | {row['errors']} |"
        )
    lines += [
        "",
        "Memory per process after the load (MiB, /proc/PID/smaps_rollup; *shared* pages are also mapped by "
        "another process: libraries, and with DSCMR_MMAP_INDEX the index vectors in the page cache; *PSS* splits "
        "them between their users):",
        "",
        "| server | process | RSS | PSS | private | shared | anonymous |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, processes in results["memory"].items():
        for pid, mem in processes.items():
            lines.append(
                f"| {name} | {pid} | {mem['rss_mib']:.0f} | {mem['pss_mib']:.0f} | {mem['private_mib']:.0f} | "
                f"{mem['shared_mib']:.0f} | {mem['anonymous_mib']:.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI of the service benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("DSCMR_ARTIFACTS", "artifacts")),
        help="artefact root holding index/ and corpus/ (default $DSCMR_ARTIFACTS or artifacts)",
    )
    parser.add_argument("--baseline-commit", help="also run the service of this commit (git archive), for before/after")
    parser.add_argument("--seconds", type=float, default=4.0, help="about how long each load level lasts")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--repeats", type=int, default=2, help="run every load level this many times (medians)")
    parser.add_argument("--text-pairs", type=int, default=300, help="raw / HTTP pairs of text queries in part 1")
    parser.add_argument("--image-pairs", type=int, default=60, help="raw / HTTP pairs of image queries in part 1")
    parser.add_argument(
        "--caption-weight",
        type=float,
        metavar="W",
        help="send caption_weight W with every text query (0: the cross-modal score alone; default: the index's weight)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "service.json")
    parser.add_argument("--md", type=Path, default=REPO / "docs" / "service-benchmark.md")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "service")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite --md from the existing --out JSON, measure nothing")
    args = parser.parse_args(argv)
    if args.markdown_only:
        args.md.write_text(markdown(json.loads(args.out.read_text())))
        return 0
    results = run(args)
    print(json.dumps(results["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
