"""`python -m training figures`: the loss curve and the t-SNE of a tiny real run come out as valid PNG files."""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from training.__main__ import main
from training.config import preset, with_dims
from training.features import FeatureSplits, SplitArrays, one_hot, save_feature_splits
from training.figures import read_metrics
from training.pipeline import train_and_save


def tiny_splits(seed: int = 0) -> FeatureSplits:
    """Three classes whose image and text features both carry the class (plus noise)."""
    rng = np.random.default_rng(seed)
    centres_img, centres_txt = rng.normal(size=(3, 12)) * 3, rng.normal(size=(3, 6)) * 3

    def part(n: int, tag: str) -> SplitArrays:
        cls = np.arange(n) % 3
        return SplitArrays((centres_img[cls] + rng.normal(size=(n, 12))).astype(np.float32),
                           (centres_txt[cls] + rng.normal(size=(n, 6))).astype(np.float32), one_hot(cls, 3), [f"{tag}{i}" for i in range(n)])

    return FeatureSplits(part(30, "tr"), part(9, "va"), part(12, "te"), ["a", "b", "c"], name="tiny")


def test_figures_command_writes_a_loss_curve_and_a_tsne_png(tmp_path):
    data = tiny_splits()
    cfg = with_dims(preset("wiki-tuned", epochs=4, batch_size=10, progress=False), 12, 6, 3)
    cfg = dataclasses.replace(cfg, network=dataclasses.replace(cfg.network, hidden_dim=16, common_dim=8))
    train_and_save(data, cfg, tmp_path / "model", run_dir=tmp_path / "run")
    features = save_feature_splits(data, tmp_path / "features.npz")
    out = tmp_path / "figures"
    assert main(["figures", "--features", str(features), "--run-dir", str(tmp_path / "run"), "--model", str(tmp_path / "model"),
                 "--out", str(out), "--prefix", "tiny-"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["tiny-loss_curve.png", "tiny-tsne_common_space.png"]
    for name in written:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
            # Not a blank canvas: a plot has many distinct colours.
            assert len(img.convert("RGB").getcolors(maxcolors=100000) or []) > 20
        assert path.stat().st_size < 300_000
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_figures_command_explains_a_run_dir_without_metrics(tmp_path, capsys):
    data = tiny_splits()
    features = save_feature_splits(data, tmp_path / "features.npz")
    code = main(["figures", "--features", str(features), "--run-dir", str(tmp_path / "nothing"), "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "f")])
    assert code == 2 and "metrics.jsonl" in capsys.readouterr().err
