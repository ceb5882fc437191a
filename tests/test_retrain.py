"""The retraining job: promote a better candidate, reject a worse one, prune old versions, roll back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.build import BuildConfig, build_index
from index.search import SearchIndex
from index.store import list_versions, read_current
from tests.test_prepare import TEXT, make_corpus
from training.demo import artefact_paths, train_into_models
from training.prepare import PrepareConfig, load_prepared, prepare_corpus
from training.retrain import RetrainConfig, RetrainError, rollback, retrain


def _train_cfg(prepared, epochs: int):
    from training.config import preset, with_dims

    return with_dims(preset("wiki-tuned", epochs=epochs, progress=False, seed=0), 1280, TEXT.output_dim, len(prepared.manifest["label_names"]))


@pytest.fixture()
def root(tmp_path) -> Path:
    """An artefact root serving a deliberately weak model (1 epoch), as a first deployment might."""
    paths = artefact_paths(tmp_path)
    make_corpus(paths["corpus"])
    prepare_corpus(paths["corpus"], paths["prepared"], PrepareConfig(text=TEXT, batch_size=8, progress=False))
    weak = train_into_models(paths["prepared"], paths["models"], _train_cfg(load_prepared(paths["prepared"]), 1))
    build_index(weak["model_dir"], paths["corpus"], paths["index"], BuildConfig(show_progress=False))
    return tmp_path


def test_a_better_candidate_is_promoted_and_served_then_rolled_back(root):
    paths = artefact_paths(root)
    first_version = read_current(paths["index"])
    first_model = SearchIndex.load(paths["index"], verify=False).model_hash
    report = retrain(root, RetrainConfig(epochs=60, early_stopping=None, progress=False, keep=5))
    assert report["decision"] == "promoted", report["reason"]
    serving, candidate = report["scores"]["serving"], report["scores"]["candidate"]
    assert candidate["val"]["avg"] > serving["val"]["avg"] and candidate["val"]["avg"] > 0.9
    assert set(candidate) == {"val", "test"} and report["selected_on"] == "val"
    new_version = read_current(paths["index"])
    assert new_version != first_version and list_versions(paths["index"]) == [first_version, new_version]
    loaded = SearchIndex.load(paths["index"])
    assert loaded.model_hash == report["candidate"]["content_hash"] != first_model
    assert json.loads(Path(report["report_path"]).read_text())["decision"] == "promoted"

    back = rollback(root)
    assert back == {"from": new_version, "to": first_version, "model_dir": report["serving_before"]["model_dir"]}
    assert SearchIndex.load(paths["index"]).model_hash == first_model
    with pytest.raises(RetrainError, match="nothing to roll back to"):
        rollback(root)


def test_a_worse_candidate_is_rejected_and_nothing_changes(root):
    paths = artefact_paths(root)
    # First make the serving model a good one, then retrain with a budget too small to match it.
    assert retrain(root, RetrainConfig(epochs=60, early_stopping=None, progress=False))["decision"] == "promoted"
    version, models = read_current(paths["index"]), sorted(p.name for p in paths["models"].iterdir())
    report = retrain(root, RetrainConfig(epochs=1, tolerance=0.0, progress=False, reprepare=False))
    assert report["decision"] == "rejected"
    assert report["scores"]["candidate"]["val"]["avg"] < report["scores"]["serving"]["val"]["avg"]
    assert read_current(paths["index"]) == version and report["serving_after"] == report["serving_before"]
    assert sorted(p.name for p in paths["models"].iterdir()) == models  # the rejected candidate was removed
    assert Path(report["report_path"]).name.endswith("-rejected.json")


def test_old_versions_are_pruned_but_never_the_serving_ones(root):
    paths = artefact_paths(root)
    for epochs in (2, 3):
        retrain(root, RetrainConfig(epochs=epochs, early_stopping=None, tolerance=1.0, progress=False, keep=2, reprepare=False))
    versions = list_versions(paths["index"])
    assert len(versions) == 2 and read_current(paths["index"]) == versions[-1]
    served = {json.loads((paths["index"] / "versions" / v / "manifest.json").read_text())["model"]["path"] for v in versions}
    assert {str(p) for p in paths["models"].iterdir() if not p.name.startswith(".")} >= served
    assert len([p for p in paths["models"].iterdir() if not p.name.startswith(".")]) == 2
