"""MiniLM on a corpus its English word pieces cannot read (issue 19, item 9): `training prepare --text minilm` measures
the share of unknown word pieces ([UNK]), records it in prepared.json and warns with a text option that fits (the
multilingual USE when installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.fixtures_data import write_caption_manifest

REPO = Path(__file__).resolve().parents[1]
# Everyday Chinese words (MiniLM's vocabulary holds only a few of their characters).
CHINESE_WORDS = ("篮球", "比赛", "苹果", "香蕉", "早餐", "厨房", "猫咪", "小狗", "森林", "河流", "汽车", "飞机", "音乐", "钢琴")


def chinese_manifest(english: Path) -> Path:
    """The English caption manifest with every caption replaced by 3-5 Chinese words (same images and labels)."""
    rng = np.random.default_rng(0)
    rows = [json.loads(line) for line in english.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["text"] = "".join(rng.choice(CHINESE_WORDS, size=int(rng.integers(3, 6)))) + "的照片"
    path = english.with_name("manifest-zh.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare_minilm(manifest: Path, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `python -m training prepare --dataset manifest ... --text minilm`; return the process and prepared.json."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "training", "prepare", "--dataset", "manifest", str(manifest), "--out", str(out)]
        + ["--text", "minilm", "--no-progress", "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "prepared.json").read_text(encoding="utf-8"))


def test_a_chinese_corpus_warns_and_suggests_a_text_option_that_reads_it_an_english_one_does_not(tmp_path):
    english = write_caption_manifest(tmp_path / "data", per_class=2, labels="all")
    done, prepared = prepare_minilm(chinese_manifest(english), tmp_path / "zh")
    rate = prepared["text"]["unknown_token_fraction"]
    assert rate > 0.4, rate  # most Chinese characters are [UNK] to MiniLM
    # the multilingual USE (the `multilingual` extra, installed with the tests) reads Chinese; tf-idf is named too
    assert prepared["text"]["suggested_text"] == "muse"
    assert "--text muse" in done.stderr and "--text tfidf" in done.stderr and f"{100 * rate:.0f}%" in done.stderr
    assert json.loads(done.stdout[done.stdout.index("{") :])["text"]["unknown_token_fraction"] == rate

    done, prepared = prepare_minilm(english, tmp_path / "en")
    assert prepared["text"]["unknown_token_fraction"] < 0.01
    assert "suggested_text" not in prepared["text"]
    assert "--text" not in done.stderr and "[UNK]" not in done.stderr
