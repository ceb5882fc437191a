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
from training.retrain import RetrainConfig, RetrainError, retrain, rollback


def _train_cfg(prepared, epochs: int):
    from training.config import preset, with_dims

    return with_dims(
        preset("wiki-tuned", epochs=epochs, progress=False, seed=0), 1280, TEXT.output_dim, len(prepared.manifest["label_names"])
    )


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
    assert set(candidate) == {"val", "test", "judged_by"} and report["selected_on"] == "val"
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
    assert {str(p) for p in paths["models"].iterdir() if p.is_dir() and not p.name.startswith(".")} >= served
    assert len([p for p in paths["models"].iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2


def test_promotion_decision_compares_with_the_serving_model_and_the_lineage_best():
    from training.retrain import promotion_decision

    assert promotion_decision(0.80, 0.80, None, 0.01)[0]
    assert promotion_decision(0.795, 0.80, 0.80, 0.01)[0]  # inside the tolerance of both
    assert not promotion_decision(0.78, 0.80, 0.80, 0.01)[0]  # trails the serving model
    # a chain of small steps down: within the tolerance of the serving model, not of the best the lineage had
    ok, reason = promotion_decision(0.786, 0.793, 0.80, 0.01)
    assert not ok and "lineage" in reason
    assert promotion_decision(0.5, None, None, 0.0)[0]  # the serving model's classes differ: the candidate wins


@pytest.fixture()
def tuned_root(tmp_path) -> Path:
    """Served: a refit whose recipe is not a preset (loss weights, instance term, selection criterion all changed)."""
    import dataclasses

    paths = artefact_paths(tmp_path)
    make_corpus(paths["corpus"])
    prepare_corpus(paths["corpus"], paths["prepared"], PrepareConfig(text=TEXT, batch_size=8, progress=False))
    cfg = _train_cfg(load_prepared(paths["prepared"]), 12)
    cfg = dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, lambda_j2=0.5, eta_j3=0.0, instance_weight=0.5),
        train=dataclasses.replace(cfg.train, select_on="mean", early_stopping_patience=None),
    )
    served = train_into_models(paths["prepared"], paths["models"], cfg, refit=True)
    build_index(served["model_dir"], paths["corpus"], paths["index"], BuildConfig(show_progress=False))
    return tmp_path


def test_retrain_on_unchanged_data_trains_the_serving_recipe_and_reproduces_the_served_model(tuned_root):
    paths = artefact_paths(tuned_root)
    served = SearchIndex.load(paths["index"], verify=False)
    served_dir = Path(served.manifest["model"]["path"])
    served_metrics = json.loads((served_dir / "metrics.json").read_text())
    twin = paths["models"] / served_metrics["refit"]["heldout_model"][:12]
    report = retrain(tuned_root, RetrainConfig(progress=False))
    cfg = report["training_config"]
    assert (cfg["loss"]["lambda_j2"], cfg["loss"]["eta_j3"], cfg["loss"]["instance_weight"]) == (0.5, 0.0, 0.5)
    assert cfg["train"]["select_on"] == "mean" and report["criterion"] == "mean"
    assert cfg["train"]["epochs"] == 12 and report["candidate"]["refit"] is True
    # the same recipe on the same data is the same model: nothing to promote, nothing removed
    assert report["candidate"]["content_hash"] == served.model_hash
    assert report["decision"] == "rejected" and "same content hash" in report["reason"]
    # a refit is judged by its held-out twin, on validation
    assert report["scores"]["serving"]["judged_by"] == twin.name
    assert report["scores"]["serving"]["val"]["criterion"] == "mean"
    assert served_dir.is_dir() and twin.is_dir()


def test_two_retrains_in_a_row_cannot_drift_below_the_lineage_best(root):
    paths = artefact_paths(root)
    good = retrain(root, RetrainConfig(epochs=40, early_stopping=None, progress=False, keep=1))
    assert good["decision"] == "promoted"
    good_model = Path(good["serving_after"]["model_dir"]).name
    # a weaker recipe is let in by a loose tolerance ...
    weaker = retrain(root, RetrainConfig(epochs=2, early_stopping=None, tolerance=1.0, progress=False, keep=1, reprepare=False))
    assert weaker["decision"] == "promoted"
    s_good, s_weak = weaker["scores"]["serving"]["val"]["score"], weaker["scores"]["candidate"]["val"]["score"]
    assert s_weak < s_good
    # ... but the lineage still remembers the better model, and pruning keeps it although keep=1
    assert json.loads((paths["models"] / "LINEAGE.json").read_text())["best"]["model"] == good_model
    assert weaker["lineage_best_after"] == good_model and (paths["models"] / good_model).is_dir()
    # the next step down, within the tolerance of the serving (weaker) model, trails the lineage's best: rejected
    tolerance = (s_good - s_weak) / 2
    again = retrain(
        root, RetrainConfig(epochs=2, early_stopping=None, seed=1, tolerance=tolerance, progress=False, keep=1, reprepare=False)
    )
    scores = again["scores"]
    assert scores["lineage_best"]["judged_by"] == good_model
    s_cand, s_serv, s_best = (scores[k]["val"]["score"] for k in ("candidate", "serving", "lineage_best"))
    assert s_cand >= s_serv - tolerance and s_cand < s_best - tolerance
    assert again["decision"] == "rejected" and "lineage" in again["reason"]


def test_a_promoted_model_keeps_the_serving_versions_caption_match(root):
    """Caption vectors do not depend on the model: the promoted model's index version gets them again, same weight."""
    from index.captions import attach_captions

    paths = artefact_paths(root)
    attach_captions(paths["index"], 0.6)
    report = retrain(root, RetrainConfig(epochs=60, early_stopping=None, progress=False, keep=5))
    assert report["decision"] == "promoted", report["reason"]
    served = SearchIndex.load(paths["index"])
    assert served.version == report["serving_after"]["index_version"]
    assert served.has_captions and served.caption_weight == 0.6
    assert served.manifest["captions"]["count"] == served.count("text")
