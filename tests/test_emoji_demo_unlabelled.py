"""The emoji demo built as a corpus without labels (issue 16, item 5): `training demo --labels none` hides the Unicode
groups, derives k-means cluster labels from the texts, and the retraining job then works on that root unchanged. These
are the commands scripts/verify_docker.sh runs in the container (`docker compose run --rm demo-init ...`, then
`docker compose run --rm retrain ...`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures_data import REPO
from training.datasets import EmojiSources, build_emoji_corpus


def run_cli(*args: str) -> dict:
    """Run `python -m training ARGS` as the container does; return the JSON summary it prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_a_label_free_emoji_corpus_keeps_the_split_and_no_label(tmp_path):
    EmojiSources().check()
    grouped, _ = build_emoji_corpus(tmp_path, limit=90, image_size=32, labels="group", progress=False)
    bare, _ = build_emoji_corpus(tmp_path, limit=90, image_size=32, labels="none", progress=False)
    assert bare.label_names == [] and all(it.labels == () for it in bare.items)
    assert bare.splits == grouped.splits  # the same items in each split as the labelled demo, for a fair comparison
    assert [it.extra["group"] for it in bare.items] == [it.labels[0] for it in grouped.items]


def test_the_label_free_demo_trains_on_text_clusters_and_retrains_unchanged(tmp_path):
    from index.search import SearchIndex
    from index.store import read_current, resolve_version
    from model.corpus import load_corpus

    root = tmp_path / "demo"
    built = run_cli(
        "demo", "--root", str(root), "--labels", "none", "--clusters", "6", "--limit", "120", "--epochs", "3", "--no-progress"
    )
    assert built["status"] == "built" and built["derived_labels"] == "clusters" and built["classes"] == 6
    loss = json.loads((Path(built["model_dir"]) / "config.json").read_text())["loss"]
    assert loss["instance_weight"] == 0.3  # the label-free default (DEMO_UNLABELLED_INSTANCE_WEIGHT)
    assert load_corpus(root / "corpus").label_names == []
    prepared = json.loads((root / "prepared" / "prepared.json").read_text())
    names = prepared["derived_labels"]["names"]
    assert prepared["config"]["derive_labels"] == "clusters" and prepared["config"]["clusters"] == 6 and len(names) == 6
    index = SearchIndex.load(resolve_version(root / "index"))
    assert index.label_names == sorted(names)  # the cluster names are the label chips and filters of the served index
    groups = {"Smileys & Emotion", "Animals & Nature", "Food & Drink", "Flags"}
    assert not groups & set(index.label_names)  # nothing of the hidden groups reaches the labels

    before = read_current(root / "index")
    # another seed, so that the candidate is not the serving model; --tolerance 1 promotes it whatever its score
    retrained = run_cli("retrain", "--root", str(root), "--no-progress", "--seed", "1", "--tolerance", "1")
    assert retrained["decision"] == "promoted", retrained
    after = read_current(root / "index")
    assert after != before
    again = json.loads((root / "prepared" / "prepared.json").read_text())
    assert again["config"]["derive_labels"] == "clusters" and again["config"]["clusters"] == 6
    assert SearchIndex.load(resolve_version(root / "index")).label_names == sorted(again["derived_labels"]["names"])
