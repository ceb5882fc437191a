"""A corpus without labels end to end (issue 16, item 2a), through the commands a user runs: prepare from a manifest,
train (J3 + the instance term, selected on R@10), evaluate (recall; mAP undefined), build the index, and a real uvicorn
server answering text and image queries with empty label lists."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from model.artefact import load_model
from model.corpus import load_corpus
from tests.app_fixtures import start_server, stop_server, wait_ready
from tests.fixtures_data import REPO, write_caption_manifest

TEXT_OPTIONS = ["--word-vectors", "word2vec", "--embed-dim", "16", "--min-count", "1", "--max-len", "32"]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def label_free(tmp_path_factory):
    root = tmp_path_factory.mktemp("label-free")
    manifest = write_caption_manifest(root / "data", per_class=4, labels="none")  # 48 photos, 48 distinct captions
    prepared, model, index = root / "prepared", root / "model", root / "index"
    run(
        "-m",
        "training",
        "prepare",
        "--dataset",
        "manifest",
        str(manifest),
        "--out",
        str(prepared),
        *TEXT_OPTIONS,
        "--no-progress",
    )
    trained = run(
        "-m",
        "training",
        "train",
        "--prepared",
        str(prepared),
        "--out",
        str(model),
        "--preset",
        "wiki-tuned",
        "--epochs",
        "40",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--run-dir",
        str(root / "run"),
    )
    evaluated = run(
        "-m",
        "training",
        "evaluate",
        "--prepared",
        str(prepared),
        "--model",
        str(model),
        "--split",
        "test",
        "--json",
        str(root / "eval.json"),
    )
    run(
        "-m",
        "index",
        "build",
        "--model",
        str(model),
        "--corpus",
        str(prepared / "corpus"),
        "--root",
        str(index),
        "--feature-cache",
        str(prepared / "feature_cache"),
        "--device",
        "cpu",
        "--no-progress",
    )
    return {"root": root, "prepared": prepared, "model": model, "index": index, "train": trained, "evaluate": evaluated}


def test_train_picks_the_terms_the_data_supports_and_says_so(label_free):
    trained = label_free["train"]
    assert (
        "loss: data without labels: loss terms J3 + instance term (weight 1); kept epoch chosen on validation R@10 (ties: MRR)"
        in trained.stderr
    )
    assert "J1 and J2 off (they need labels)" in trained.stderr and "selection on r10 instead of map" in trained.stderr
    report = json.loads(trained.stdout)
    assert report["loss_terms"]["j1"] is False and report["loss_terms"]["j2"] is False
    assert report["loss_terms"]["j3"] is True and report["loss_terms"]["instance_weight"] == 1.0
    assert report["selection"]["criterion"] == "r10" and report["val"]["avg"] is None and report["test"]["avg"] is None
    artefact = load_model(label_free["model"])
    assert artefact.label_names == [] and artefact.config["network"]["num_classes"] == 0
    loss = artefact.config["loss"]
    assert (loss["use_j1"], loss["use_j2"], loss["use_j3"], loss["instance_weight"]) == (False, False, True, 1.0)
    assert artefact.config["train"]["select_on"] == "r10"
    metrics = artefact.metrics
    assert metrics["loss_terms"]["note"].startswith("data without labels") and "mAP is undefined" in metrics["val"]["map_note"]
    assert metrics["selection"] == {"criterion": "r10", "score": metrics["val"]["recall"]["avg"]["r10"], "split": "val"}
    # calibrated on the pairs, both cross-modal directions; the same-modality ones have no notion of relevance here
    assert sorted(metrics["calibration"]["params"]) == ["image->text", "text->image"]
    assert "own pair" in metrics["calibration"]["relevant_means"]
    history = [json.loads(line) for line in (label_free["root"] / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 40 and all(h["val_avg"] is None and h["j1"] == 0 and h["j2"] == 0 and h["inst"] > 0 for h in history)
    assert history[-1]["inst"] < history[0]["inst"]  # the instance term is learnt


def test_evaluation_reports_recall_and_says_map_is_undefined(label_free):
    out = label_free["evaluate"].stdout
    assert "mAP is undefined without labels" in out and "R@10" in out
    result = json.loads((label_free["root"] / "eval.json").read_text())
    assert result["avg"] is None and result["precision_at_k"] is None and result["n_queries"] == 5
    assert 0 <= result["recall"]["avg"]["r1"] <= result["recall"]["avg"]["r10"] <= 1


def test_the_model_learns_the_pairs(label_free):
    from model.encoder import load_encoder
    from model.image_io import load_image

    encoder = load_encoder(label_free["model"], device="cpu")
    corpus = load_corpus(label_free["prepared"] / "corpus")
    items = corpus.split_items("train")
    texts = encoder.encode_texts([it.text for it in items])
    images = encoder.encode_images([load_image(it.image_path) for it in items])
    ranks = (images @ texts.T >= np.diag(images @ texts.T)[:, None]).sum(1)
    assert (ranks <= 5).mean() > 0.5, ranks  # chance: 5 / 38


def test_a_real_server_answers_text_and_image_queries_with_empty_label_lists(label_free, tmp_path):
    corpus = load_corpus(label_free["prepared"] / "corpus")
    items = corpus.split_items("train")[:8]
    item = items[0]
    server = start_server(label_free["index"], tmp_path / "server.log")
    try:
        wait_ready(server)
        with server.client() as client:
            assert client.get("/labels").json()["labels"] == []
            body = client.post("/search/text", json={"text": item.text, "k": 5}).json()
            hits = body["results"]
            assert len(hits) == 5 and all(h["labels"] == [] and h["modality"] == "image" for h in hits)
            # a training text finds its own image among the first 5 of 38 far above chance (5 / 38), not always
            found = [
                it.id in [h["id"] for h in client.post("/search/text", json={"text": it.text, "k": 5}).json()["results"]]
                for it in items
            ]
            assert sum(found) >= 4, found
            assert all(h["relevance"] is not None for h in hits)  # text->image is calibrated on the pairs
            both = client.post("/search/text", json={"text": item.text, "k": 6, "target": "both"}).json()["results"]
            # same-modality scores are not calibrated without labels: 'both' merges by raw cosine (texts first, as before
            # calibration existed), and says so by leaving the text hits without a relevance
            assert len(both) == 6 and all(h["labels"] == [] for h in both)
            assert all(h["relevance"] is None for h in both if h["modality"] == "text")
            with open(item.image_path, "rb") as fh:
                upload = client.post(
                    "/search/image", files={"file": ("q.png", fh.read(), "image/png")}, data={"k": "5", "target": "text"}
                )
            assert upload.status_code == 200, upload.text
            hits = upload.json()["results"]
            assert len(hits) == 5 and all(h["labels"] == [] and h["modality"] == "text" for h in hits)
            assert item.id in [h["id"] for h in hits]
            refused = client.post("/search/text", json={"text": "fish", "labels": ["fish"]})
            assert refused.status_code == 422 and refused.json()["error"] == "unknown_label"
            assert client.get(f"/items/{item.id}").json()["labels"] == []
    finally:
        stop_server(server)


# ------------------------------------------------------------------------------------------ labels on some items only
def test_masked_terms_equal_the_plain_terms_on_the_labelled_rows():
    import torch

    from model.config import LossConfig
    from model.losses import dscmr_loss, j1_label_space, j2_common_space

    torch.manual_seed(0)
    u, v = torch.randn(10, 6), torch.randn(10, 6)
    pu, pv = torch.randn(10, 3), torch.randn(10, 3)
    labels = torch.nn.functional.one_hot(torch.arange(10) % 3, 3).float()
    for form in ("released", "paper"):
        cfg = LossConfig(norm_form=form)
        plain = dscmr_loss(u, v, pu, pv, labels, cfg)
        masked = dscmr_loss(u, v, pu, pv, labels, cfg, partial_labels=True)
        for term in ("j1", "j2", "j3", "total"):
            torch.testing.assert_close(getattr(masked, term), getattr(plain, term))
        partial = labels.clone()
        partial[[1, 4, 7]] = 0  # three items without a label
        known = partial.sum(1) > 0
        masked = dscmr_loss(u, v, pu, pv, partial, cfg, partial_labels=True)
        torch.testing.assert_close(masked.j1, j1_label_space(pu[known], pv[known], partial[known], form))
        torch.testing.assert_close(masked.j2, j2_common_space(u[known], v[known], partial[known]))


def test_a_mixed_corpus_trains_j1_j2_on_its_labelled_items_and_the_pairs_on_all(tmp_path):
    from model.corpus import save_corpus
    from model.sentence_cnn import TextEncoderConfig
    from training.config import preset, with_dims
    from training.datasets import load_manifest
    from training.pipeline import evaluate_model_dir, train_and_save
    from training.prepare import PrepareConfig, load_prepared, prepare_corpus

    corpus, report = load_manifest(write_caption_manifest(tmp_path / "data", per_class=4, labels="mixed", classes=6))
    assert report.counts == {"with labels": 12, "without labels": 12}
    save_corpus(corpus, tmp_path / "corpus")
    text = TextEncoderConfig(
        kind="sentence_cnn", word_vectors="word2vec", embed_dim=16, maps=8, min_count=1, max_len=32, word2vec_epochs=3
    )
    summary = prepare_corpus(tmp_path / "corpus", tmp_path / "prepared", PrepareConfig(text=text, progress=False))
    assert summary["items"] == 24  # the unlabelled items are kept
    prepared = load_prepared(tmp_path / "prepared")
    data = prepared.feature_splits()
    assert data.has_labels and data.partially_labelled
    cfg = with_dims(preset("wiki-tuned", epochs=5, progress=False, device="cpu"), 1280, text.output_dim, len(data.label_names))
    report = train_and_save(data, cfg, tmp_path / "model", prepared=prepared)
    terms = report["loss_terms"]
    assert terms["j1"] and terms["j2"] and terms["j3"] and terms["instance_weight"] == 1.0 and terms["select_on"] == "map"
    assert terms["note"].startswith("data with labels on some items: loss terms J1 + J2 over the labelled items")
    assert report["val"]["avg"] is not None and 0 < report["test"]["avg"] <= 1  # mAP over the labelled items
    result = evaluate_model_dir(tmp_path / "model", data, "test")
    n_known = int((data.test.labels.sum(1) > 0).sum())
    assert result["map_over"] == f"{n_known} labelled items of {len(data.test)}" and result["n_queries"] == len(data.test)


def test_the_retrain_job_accepts_a_corpus_without_labels(tmp_path):
    from index.build import BuildConfig, build_index
    from index.store import read_current
    from model.corpus import save_corpus
    from tests.test_prepare import TEXT
    from training.config import preset, with_dims
    from training.datasets import load_manifest
    from training.demo import artefact_paths, train_into_models
    from training.prepare import PrepareConfig, prepare_corpus
    from training.retrain import RetrainConfig, retrain

    paths = artefact_paths(tmp_path)
    corpus, _ = load_manifest(write_caption_manifest(tmp_path / "data", per_class=3, labels="none", classes=8))
    save_corpus(corpus, paths["corpus"])
    prepare_corpus(paths["corpus"], paths["prepared"], PrepareConfig(text=TEXT, batch_size=8, progress=False))
    cfg = with_dims(preset("wiki-tuned", epochs=1, progress=False, seed=0), 1280, TEXT.output_dim, 0)
    weak = train_into_models(paths["prepared"], paths["models"], cfg)
    build_index(weak["model_dir"], paths["corpus"], paths["index"], BuildConfig(show_progress=False))
    before = read_current(paths["index"])
    report = retrain(tmp_path, RetrainConfig(epochs=20, early_stopping=None, progress=False))
    assert report["decision"] in ("promoted", "rejected"), report
    assert report["criterion"] == "r10" and report["training_config"]["loss"]["use_j1"] is False
    for name in ("serving", "candidate"):
        scores = report["scores"][name]["val"]
        assert scores["avg"] is None and scores["score"] == scores["recall"]["avg"]["r10"]
    assert (read_current(paths["index"]) != before) == (report["decision"] == "promoted")
