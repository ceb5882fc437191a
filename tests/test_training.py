"""Training: validation-based selection, reproducibility, kill -9 resume, CLI and input validation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures_data import WIKI_CATEGORIES, WIKI_FEATURES, needs_real_wiki, write_wiki_features
from tests.test_artefact import tiny_config, tiny_splits
from training.features import DataValidationError, load_wiki_features, one_hot, save_feature_splits
from training.train import make_adam, train_dscmr

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "training", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_same_seed_same_model_and_selection_on_validation():
    data = tiny_splits()
    a = train_dscmr(data, tiny_config(6))
    b = train_dscmr(data, tiny_config(6))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    best = max(a.history, key=lambda h: h["val_avg"])
    assert a.best_epoch == best["epoch"] and a.best_val.avg == pytest.approx(best["val_avg"])
    assert set(a.history[0]) >= {"j1", "j2", "j3", "val_i2t", "val_t2i", "val_avg"}
    c = train_dscmr(data, tiny_config(6, seed=1))
    assert not torch.equal(a.model.shared.weight, c.model.shared.weight)


def test_multi_tensor_adam_gives_the_weights_of_the_per_parameter_loop():
    """The trainer's Adam (multi-tensor, also on CPU for speed) against PyTorch's plain per-parameter loop."""
    cfg = tiny_config()
    data = tiny_splits()
    weights = {}
    for name, make in (
        ("trainer", lambda params: make_adam(params, cfg.train)),
        ("reference", lambda params: torch.optim.Adam(params, lr=cfg.train.lr, betas=cfg.train.betas, foreach=False)),
    ):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(data.train.image.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        opt = make(net.parameters())
        x = torch.from_numpy(data.train.image)
        for step in range(30):
            loss = (net(x) ** 2).mean() + step * 1e-3 * net[0].weight.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights[name] = net.state_dict()
    for key, ref in weights["reference"].items():
        assert torch.equal(weights["trainer"][key], ref), key


def test_early_stopping_stops_and_keeps_best():
    data = tiny_splits()
    r = train_dscmr(data, tiny_config(200, early_stopping_patience=3))
    assert r.epochs_run < 200 and r.epochs_run - r.best_epoch == 3


def test_kill_9_then_resume_gives_the_same_model(tmp_path):
    data = tiny_splits(n=(400, 40, 40), d_img=64, d_txt=32)
    feats = save_feature_splits(data, tmp_path / "feats.npz")
    common = [
        "train",
        "--features",
        str(feats),
        "--epochs",
        "12",
        "--batch-size",
        "20",
        "--checkpoint-every",
        "1",
        "--no-progress",
    ]
    ref = _cli(*common, "--out", str(tmp_path / "ref"), "--run-dir", str(tmp_path / "ref_run"))
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    run_dir = tmp_path / "run"
    victim = _cli(*common, "--out", str(tmp_path / "resumed"), "--run-dir", str(run_dir))
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed; make it slower"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "resumed").exists()
    killed_at = len(log.read_text().splitlines())
    assert 1 <= killed_at < 12

    resumed = _cli(*common, "--out", str(tmp_path / "resumed"), "--run-dir", str(run_dir))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    a, b = load_file(str(tmp_path / "ref" / "weights.safetensors")), load_file(str(tmp_path / "resumed" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(1, 13))


def test_evaluate_cli_prints_table_and_writes_json(tmp_path):
    data = tiny_splits()
    feats = save_feature_splits(data, tmp_path / "feats.npz")
    p = _cli(
        "train", "--features", str(feats), "--epochs", "3", "--batch-size", "16", "--out", str(tmp_path / "m"), "--no-progress"
    )
    assert p.wait(timeout=300) == 0, p.stderr.read()
    p = _cli(
        "evaluate",
        "--features",
        str(feats),
        "--model",
        str(tmp_path / "m"),
        "--split",
        "test",
        "--json",
        str(tmp_path / "e.json"),
    )
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "I->T" in out and "T->I" in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert {"i2t", "t2i", "avg", "split", "n_queries"} <= set(res)
    assert res["split"] == "test" and res["n_queries"] == 20
    assert res["avg"] == pytest.approx((res["i2t"] + res["t2i"]) / 2)


def test_train_cli_sets_the_loss_weights(tmp_path):
    feats = save_feature_splits(tiny_splits(), tmp_path / "feats.npz")
    p = _cli(
        "train",
        "--features",
        str(feats),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lambda-j2",
        "0.5",
        "--eta-j3",
        "0",
        "--out",
        str(tmp_path / "m"),
        "--no-progress",
    )
    assert p.wait(timeout=300) == 0, p.stderr.read()
    loss = json.loads((tmp_path / "m" / "config.json").read_text())["loss"]
    assert (loss["lambda_j2"], loss["eta_j3"]) == (0.5, 0.0)


@pytest.mark.parametrize("problem", ["rows", "nan", "empty_class", "empty_val", "bad_label"])
def test_bad_input_is_refused_before_training(problem):
    data = tiny_splits()
    if problem == "rows":
        data.train.text = data.train.text[:-1]
        match = "rows"
    elif problem == "nan":
        data.val.image[3, 2] = np.nan
        match = "NaN"
    elif problem == "empty_class":
        data.label_names.append("ghost")
        for s in (data.train, data.val, data.test):
            s.labels = np.hstack([s.labels, np.zeros((len(s.labels), 1), np.float32)])
        match = "no training items"
    elif problem == "empty_val":
        data.val.image, data.val.text, data.val.labels = data.val.image[:0], data.val.text[:0], data.val.labels[:0]
        match = "val split is empty"
    else:
        with pytest.raises(DataValidationError, match="outside the class list"):
            one_hot(np.array([0, 1, 7]), 3)
        return
    with pytest.raises(DataValidationError, match=match):
        train_dscmr(data, tiny_config(2))


def test_cli_reports_bad_data_as_error_not_traceback(tmp_path):
    data = tiny_splits()
    data.train.image[0, 0] = np.inf
    feats = save_feature_splits(data, tmp_path / "bad.npz")
    p = _cli("train", "--features", str(feats), "--epochs", "1", "--out", str(tmp_path / "m"))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "NaN or infinite" in err and "Traceback" not in err


def test_wiki_loader_on_a_generated_raw_features_folder(tmp_path):
    written = write_wiki_features(tmp_path / "raw_features")
    d = load_wiki_features(written.root)
    n_train, n_test = len(written.ids["tr"]), len(written.ids["te"])
    assert (n_train, n_test) == (217, 70)
    assert len(d.train) + len(d.val) == n_train and len(d.test) == n_test
    assert d.train.image.shape[1] == 128 and d.train.text.shape[1] == 10 and d.train.image.dtype == np.float32
    assert d.label_names == WIKI_CATEGORIES
    # validation: round(10%) of each class of the official training set (at least one), the official test set untouched
    per_class = np.bincount(written.classes["tr"] - 1, minlength=10)
    np.testing.assert_array_equal(d.val.labels.sum(0), [max(1, int(round(0.1 * c))) for c in per_class])
    assert not set(d.train.ids) & set(d.val.ids) and set(d.train.ids) | set(d.val.ids) == set(written.ids["tr"])
    assert d.test.ids == written.ids["te"]
    # every row keeps its own features and the category of its .list line
    for split, part in ((d.train, "tr"), (d.val, "tr"), (d.test, "te")):
        rows = [written.ids[part].index(i) for i in split.ids]
        np.testing.assert_array_equal(split.image, written.image[part][rows].astype(np.float32))
        np.testing.assert_array_equal(split.text, written.text[part][rows].astype(np.float32))
        np.testing.assert_array_equal(split.labels.argmax(1) + 1, written.classes[part][rows])
    assert load_wiki_features(written.root).val.ids == d.val.ids
    assert load_wiki_features(written.root, seed=1).val.ids != d.val.ids
    with pytest.raises(FileNotFoundError, match="raw_features.mat not found"):
        load_wiki_features(tmp_path)


@needs_real_wiki
def test_wiki_loader_official_split_and_stratified_validation():
    d = load_wiki_features(WIKI_FEATURES)
    assert len(d.train) + len(d.val) == 2173 and len(d.test) == 693
    assert d.train.image.shape[1] == 128 and d.train.text.shape[1] == 10
    assert len(d.label_names) == 10 and d.label_names[0] == "art"
    per_class_val = d.val.labels.sum(0)
    full = d.train.labels.sum(0) + per_class_val
    np.testing.assert_allclose(per_class_val, np.round(0.1 * full), atol=1)
    assert not set(d.train.ids) & set(d.val.ids)
    again = load_wiki_features(WIKI_FEATURES)
    assert again.val.ids == d.val.ids


def test_train_cli_instance_term_and_selection_criterion_are_saved(tmp_path):
    feats = save_feature_splits(tiny_splits(), tmp_path / "feats.npz")
    p = _cli(
        "train",
        "--features",
        str(feats),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--instance-weight",
        "0.5",
        "--instance-temperature",
        "0.1",
        "--select-on",
        "r10",
        "--out",
        str(tmp_path / "m"),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert p.wait(timeout=300) == 0, p.stderr.read()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["loss"]["instance_weight"], config["loss"]["instance_temperature"]) == (0.5, 0.1)
    assert config["train"]["select_on"] == "r10"
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the kept epoch is the one with the best validation R@10, and the saved model says so
    best = max(history, key=lambda h: h["val_r10"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["selection"] == {"criterion": "r10", "score": best["val_r10"], "split": "val"}
    assert metrics["val"]["recall"]["avg"]["r10"] == best["val_r10"]
    assert set(metrics["test"]["recall"]["i2t"]) == {"r1", "r5", "r10", "median_rank", "mrr"}
    assert all(h["inst"] > 0 for h in history)
