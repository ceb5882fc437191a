"""The machine a benchmark ran on, as detected at run time (never hard-coded): CPU, cores, memory, GPU, threads, load.

Every bench/ script records `detect_machine()` in its JSON (once before and once after its work, for the load) and
prints `describe(...)` in its page, so a figure always says where and under what load it was measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpu() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:  # a bench that needs no torch still says what it knows
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "count": torch.cuda.device_count(), "memory_gib": round(props.total_memory / 2**30, 1)}


def git_commit() -> str | None:
    """The checked-out commit of this repository (with '+dirty' when files differ from it), or None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def detect_machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (or None), torch version and thread count, Python, load average, git commit."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    info["load_average"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


def describe(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """One line for a results page: the machine, its threads and the load average before (and after) the run."""
    gpu = before["gpu"]["name"] if before.get("gpu") else "no GPU"
    load = f"load average {before['load_average'][0]:.1f}" if before.get("load_average") else "load unknown"
    if after and after.get("load_average"):
        load += f" before, {after['load_average'][0]:.1f} after"
    torch_part = f"; torch {before['torch']} with {before['torch_threads']} thread(s)" if before.get("torch") else ""
    return (
        f"{before['cpu']}, {before['cores']} cores, {before['memory_gib']} GiB, {gpu}{torch_part}, Python {before['python']}; "
        f"{load}; commit {(before.get('git_commit') or 'unknown')[:12]}"
    )


def code_fingerprint(*folders: str) -> str | None:
    """A fingerprint of the code in `folders` (git tree hashes plus any uncommitted change in them), for keying cached
    benchmark runs by the code that produced them; None outside git."""
    import hashlib

    repo = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    try:
        for folder in folders:
            tree = subprocess.run(["git", "rev-parse", f"HEAD:{folder}"], cwd=repo, capture_output=True, text=True, timeout=10)
            diff = subprocess.run(["git", "diff", "HEAD", "--", folder], cwd=repo, capture_output=True, text=True, timeout=30)
            if tree.returncode != 0:
                return None
            digest.update(tree.stdout.strip().encode() + diff.stdout.encode())
    except (OSError, subprocess.SubprocessError):
        return None
    return digest.hexdigest()[:16]


def data_fingerprint(data: Any) -> str:
    """A hash of a FeatureSplits' arrays (image, text, labels of every split), so a cached run is never reused for other
    data."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        part = data.split(split)
        for array in (part.image, part.text, part.labels):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
