"""Dying sentence-CNN maps (issue 19, item 7): the training log counts the live maps per epoch, and a query the model
cannot represent (no known word, or an all-zero text feature) is flagged instead of ranked."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from model.artefact import load_model, save_model
from model.encoder import CrossModalEncoder, load_encoder
from model.sentence_cnn import TextEncoderConfig
from model.text import build_sentence_cnn
from tests.fixtures_data import topic_corpus
from training.config import preset, with_dims
from training.features import FeatureSplits, SplitArrays
from training.pipeline import selected_map_activity
from training.train import METRICS_LOG, features_spec, save_trained_model, train_dscmr

# ReLU, the paper's activation, under which the defect shows
TEXT = TextEncoderConfig(
    kind="sentence_cnn", embed_dim=100, maps=100, min_count=1, max_len=48, word2vec_epochs=2, activation="relu"
)


def _train(tmp_path, text_cfg: TextEncoderConfig, epochs: int = 3):
    texts, labels, images = topic_corpus(200, seed=0, noise=2.0, img_dim=32)
    y = np.eye(10, dtype=np.float32)[labels]
    rows = np.arange(len(texts))
    parts = {"train": rows[:140], "val": rows[140:170], "test": rows[170:]}
    torch.manual_seed(0)
    bundle = build_sentence_cnn(text_cfg, [texts[i] for i in parts["train"]], seed=0)
    ids = bundle.vocab.encode(texts, max_len=text_cfg.max_len).numpy().astype(np.int64)
    data = FeatureSplits(
        **{k: SplitArrays(images[r], ids[r], y[r], [str(i) for i in r]) for k, r in parts.items()},
        label_names=[f"c{c}" for c in range(10)],
        name="topics",
        text_is_tokens=True,
    )
    cfg = with_dims(
        preset("wiki-tuned", epochs=epochs, progress=False, device="cpu", batch_size=50), 32, bundle.encoder.output_dim, 10
    )
    result = train_dscmr(data, cfg, run_dir=tmp_path / "run", text_encoder=bundle.encoder)
    return result, data, bundle, texts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maps")
    result, data, bundle, texts = _train(tmp, TEXT)
    spec = {"image": features_spec(32, 1)["image"], "text": {"kind": "sentence_cnn", "config": dataclasses.asdict(TEXT)}}
    model_dir = tmp / "model"
    save_trained_model(
        result,
        model_dir,
        data.label_names,
        spec,
        vocab=bundle.vocab.to_dict(),
        metrics={"text_maps": selected_map_activity(result.model, data)},
    )
    return tmp, result, data, texts, model_dir


def test_each_epoch_logs_the_live_maps_and_the_silent_texts(trained):
    tmp, result, data, _, model_dir = trained
    logged = [json.loads(line) for line in (tmp / "run" / METRICS_LOG).read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]
    for record in logged:
        assert 0 < record["text_live_maps"] <= 1 and 0 <= record["text_silent"] <= 1
    activity = result.model.text_encoder.map_activity(torch.from_numpy(data.train.text))
    assert logged[result.best_epoch - 1]["text_live_maps"] == round(activity.live_fraction, 4)
    # The defect: at the wiki-tuned learning rate, ReLU maps die within three epochs (about 40% here) and never return.
    assert logged[-1]["text_live_maps"] < 0.9
    saved = load_model(model_dir).metrics["text_maps"]
    assert saved["maps"] == 300 and saved["live"] == activity.live and saved["texts"] == len(data.train)


def test_a_query_without_known_words_is_flagged_and_a_known_one_is_not(trained):
    *_, texts, model_dir = trained
    encoder = load_encoder(model_dir, device="cpu")
    queries = [texts[0], "qqqzzz xxyyq", "", texts[1]]
    vectors, problems = encoder.encode_text_queries(queries)
    assert problems == [None, "no_known_words", "no_known_words", None]
    np.testing.assert_allclose(vectors, encoder.encode_texts(queries), rtol=1e-5, atol=1e-6)
    assert np.isfinite(vectors).all()


def test_an_all_zero_text_feature_is_flagged_as_degenerate(trained):
    """Where every map is dead, every text gets the same vector (each item then ranks with one score): flagged."""
    tmp, *_, texts, model_dir = trained
    artefact = load_model(model_dir)
    convs = [k for k in artefact.state_dict if k.startswith("text_encoder.convs.") and k.endswith(".bias")]
    assert len(convs) == 3
    for key in convs:  # the end state of dying maps: no map's maximum is positive on any text
        artefact.state_dict[key] = torch.full_like(artefact.state_dict[key], -1e4)
    save_model(artefact, tmp / "dead")
    encoder = CrossModalEncoder(load_model(tmp / "dead"), device="cpu")
    vectors, problems = encoder.encode_text_queries(texts[:5] + ["qqqzzz"])
    assert problems == ["degenerate_vector"] * 5 + ["no_known_words"]
    assert np.allclose(vectors[:5], vectors[0])  # the defect: one vector for unrelated texts


def test_elu_the_default_brings_back_the_maps_that_relu_loses(tmp_path):
    """The remedy, on the same corpus and schedule as the defect above, 20 epochs: both lose maps in the first epoch
    (about 40%); ReLU's stay silent (a silent map gets no gradient), ELU's come back (it passes one below zero)."""
    assert TextEncoderConfig().activation == "elu"
    live = {}
    for activation in ("relu", "elu"):
        result, data, *_ = _train(tmp_path / activation, dataclasses.replace(TEXT, activation=activation), epochs=20)
        live[activation] = [record["text_live_maps"] for record in result.history]
    assert live["relu"][0] < 0.7 and live["elu"][0] < 0.7
    assert max(live["relu"]) < 0.75
    assert live["elu"][-1] > 0.95
    features = result.model.text_encoder.eval()(torch.from_numpy(data.train.text))
    assert not result.model.text_encoder.silent_features(features).any()


def test_a_saturated_elu_feature_is_flagged_as_degenerate(tmp_path):
    """With ELU the floor is -1, not 0: a text on which every map is far below zero is the same flagged defect."""
    result, data, bundle, texts = _train(tmp_path, dataclasses.replace(TEXT, activation="elu"), epochs=1)
    spec = {"image": features_spec(32, 1)["image"], "text": {"kind": "sentence_cnn", "config": dataclasses.asdict(bundle.config)}}
    save_trained_model(result, tmp_path / "model", data.label_names, spec, vocab=bundle.vocab.to_dict())
    encoder = load_encoder(tmp_path / "model", device="cpu")
    assert encoder.encode_text_queries(texts[:3])[1] == [None, None, None]
    artefact = load_model(tmp_path / "model")
    for key in [k for k in artefact.state_dict if k.startswith("text_encoder.convs.") and k.endswith(".bias")]:
        artefact.state_dict[key] = torch.full_like(artefact.state_dict[key], -1e4)
    save_model(artefact, tmp_path / "saturated")
    vectors, problems = CrossModalEncoder(load_model(tmp_path / "saturated"), device="cpu").encode_text_queries(texts[:3])
    assert problems == ["degenerate_vector"] * 3 and np.allclose(vectors, vectors[0])


def test_a_model_saved_before_the_activation_option_loads_as_relu():
    from model.config import from_dict, to_dict

    saved = {k: v for k, v in to_dict(TextEncoderConfig(kind="sentence_cnn")).items() if k != "activation"}
    assert from_dict(TextEncoderConfig, saved).activation == "relu"
    assert from_dict(TextEncoderConfig, {**saved, "activation": "elu"}).activation == "elu"


def test_leaky_activation_leaves_no_text_with_an_all_zero_feature(tmp_path):
    result, data, bundle, texts = _train(tmp_path, dataclasses.replace(TEXT, activation="leaky_relu"), epochs=2)
    features = result.model.text_encoder.eval()(torch.from_numpy(np.concatenate([data.train.text, data.test.text])))
    assert not (features == 0).all(1).any()
