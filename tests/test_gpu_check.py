"""bench/gpu_check.sh runs end to end (reduced sizes), prints the table and writes the JSON; CPU-only hosts say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_writes_the_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    # The interpreter running the tests, not the script's fallback (.venv/bin/python, else python3), which a checkout
    # tested with another environment's Python lacks.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert set(report["results"]) == {"train", "extract", "search"}
    units = {name: entry["unit"] for name, entry in report["results"].items()}
    assert units == {"train": "epochs/s", "extract": "images/s", "search": "queries/s"}
    for name, entry in report["results"].items():
        assert entry["cpu"]["rate"] > 0 and entry["cpu"]["seconds"] > 0, name
    assert report["results"]["extract"]["cpu"]["feature_dim"] == 1280
    assert report["results"]["train"]["cpu"]["precision"] == "fp32"
    # provenance and the machine as detected, not hard-coded
    assert report["command"].startswith("python bench/gpu_check.py --quick") and report["date"] and "git_commit" in report
    for key in ("machine_before", "machine_after"):
        assert report[key]["cores"] >= 1 and report[key]["torch"] == torch.__version__
        assert (report[key]["gpu"] is not None) == torch.cuda.is_available()
    assert report["libraries"]["cuda_available"] == torch.cuda.is_available()
    assert "task" in proc.stdout and "queries/s" in proc.stdout
    if torch.cuda.is_available():
        assert report["gpu_measured"] and report["machine_before"]["gpu"]["name"]
        for name, entry in report["results"].items():
            assert entry["gpu"]["rate"] > 0 and entry["speedup"] > 0, name
        assert report["results"]["search"]["gpu"]["top1_agreement_with_cpu"] == 1.0
    else:
        assert not report["gpu_measured"] and report["status"].startswith("CPU only")
        assert all(entry["gpu"] is None and entry["speedup"] is None for entry in report["results"].values())
        assert "CPU only" in proc.stdout
