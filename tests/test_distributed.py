"""torchrun: two CPU processes (gloo) with the same global batch reach the same model as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_artefact import tiny_splits
from training.features import save_feature_splits

REPO = Path(__file__).resolve().parents[1]


def _train(tmp_path, name, nproc, extra=()):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
        "-m",
        "training",
        "train",
        "--features",
        str(tmp_path / "f.npz"),
        "--epochs",
        "6",
        "--batch-size",
        "20",
        "--out",
        str(tmp_path / name),
        "--run-dir",
        str(tmp_path / f"{name}_run"),
        "--no-progress",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / f"{name}_run" / "metrics.jsonl").read_text().splitlines()]
    return history, json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    save_feature_splits(tiny_splits(n=(200, 40, 40), d_img=16, d_txt=8), tmp / "f.npz")
    # The instance term is on, so that its all-gathered pairs are checked too (like J2's).
    both = ("--instance-weight", "0.5", "--instance-temperature", "0.2")
    return tmp, _train(tmp, "single", 1, both), _train(tmp, "ddp", 2, both)


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    _, (h1, m1), (h2, m2) = runs
    assert len(h1) == len(h2) == 6
    assert h1[0]["inst"] > 0
    # Tolerance: float summation order differs between one 20-row batch and two 10-row halves.
    for a, b in zip(h1, h2):
        for key in ("loss", "j1", "j2", "j3", "inst"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["epoch"], key)
        assert b["val_avg"] == pytest.approx(a["val_avg"], abs=1e-3)
    assert m2["val"]["avg"] == pytest.approx(m1["val"]["avg"], abs=1e-3)
    assert m2["best_epoch"] == m1["best_epoch"]


def test_only_rank_zero_writes_the_log_once(runs):
    tmp, _, (h2, _) = runs
    assert [h["epoch"] for h in h2] == list(range(1, 7))
    assert (tmp / "ddp" / "weights.safetensors").is_file()


def test_local_j2_is_a_different_objective(runs):
    tmp, (h1, _), _ = runs
    cfg = tmp / "local.json"
    cfg.write_text(json.dumps({"train": {"j2_scope": "local"}}))
    h_local, _ = _train(tmp, "local", 2, extra=("--config", str(cfg)))
    # Same J1 and J3 definitions, but J2 over each process's half batch: the first epoch's J2 differs.
    assert h_local[0]["j2"] != pytest.approx(h1[0]["j2"], rel=1e-6)
