"""Training views of each text: random subsets of its segments, used by training only, reproducible and resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tests.test_prepare import TEXT, make_corpus
from training.config import preset, with_dims
from training.prepare import TEXT_FILE, TEXT_VIEWS_FILE, PrepareConfig, load_prepared, prepare_corpus
from training.text_views import text_segments, text_views
from training.train import train_dscmr


def test_segments_and_views():
    assert text_segments("red apple. apple, fruit, red") == ["red apple", "apple", "fruit", "red"]
    assert text_segments("grinning face (smiling face). face; smile") == ["grinning face", "smiling face", "face", "smile"]
    assert text_segments("篮球比赛，体育新闻。球员") == ["篮球比赛", "体育新闻", "球员"]
    rng = np.random.default_rng(0)
    views = text_views("red apple. apple, fruit, red", 50, rng)
    assert views[0] == "red apple. apple, fruit, red"
    segments = set(text_segments(views[0]))
    for view in views[1:]:
        parts = view.split(", ")
        assert parts and set(parts) <= segments  # a non-empty subset, in order
        assert parts == [s for s in text_segments(views[0]) if s in parts]
    assert len(set(views[1:])) > 5
    assert text_views("a photo of a dog", 3, rng) == ["a photo of a dog"] * 3
    assert text_views("a. b", 4, np.random.default_rng(1)) == text_views("a. b", 4, np.random.default_rng(1))
    with pytest.raises(ValueError):
        text_views("x", 0, rng)


@pytest.fixture(scope="module")
def with_views(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("views")
    corpus = make_corpus(root / "corpus")
    prepare_corpus(corpus, root / "plain", PrepareConfig(text=TEXT, batch_size=8, progress=False))
    prepare_corpus(corpus, root / "views", PrepareConfig(text=TEXT, batch_size=8, progress=False, text_views=4))
    return root / "plain", root / "views"


def test_prepare_stores_views_with_the_whole_text_first(with_views):
    plain, views = with_views
    text, stored = np.load(views / TEXT_FILE), np.load(views / TEXT_VIEWS_FILE)
    assert stored.shape == (text.shape[0], 4, text.shape[1])
    assert (stored[:, 0] == text).all()
    assert not (stored[:, 1:] == text[:, None]).all()  # some views differ from the whole text
    assert not (plain / TEXT_VIEWS_FILE).exists()
    assert load_prepared(views).content_hash != load_prepared(plain).content_hash
    data = load_prepared(views).feature_splits()
    assert all(data.split(s).text_views is not None for s in ("train", "val", "test"))
    everything = data.with_every_item_in_train()
    assert everything.train.text_views.shape[0] == len(everything.train)


def test_training_draws_views_reproducibly_and_resumes_with_them(with_views, tmp_path):
    plain_dir, views_dir = with_views
    plain, views = load_prepared(plain_dir), load_prepared(views_dir)

    def run(prepared, run_dir=None, on_epoch_end=None):
        data = prepared.feature_splits()
        cfg = with_dims(
            preset("wiki-tuned", epochs=4, progress=False, seed=0, checkpoint_every=2),
            1280,
            TEXT.output_dim,
            len(data.label_names),
        )
        return train_dscmr(data, cfg, run_dir=run_dir, text_encoder=prepared.build_text_encoder(), on_epoch_end=on_epoch_end)

    class Crash(Exception):
        pass

    def crash_in_epoch_3(record):
        if record["epoch"] == 3:
            raise Crash

    a, b, without = run(views), run(views), run(plain)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert [h["loss"] for h in a.history] != [h["loss"] for h in without.history]  # the views are really used
    # a run stopped after 2 epochs and resumed draws the same views as an uninterrupted one
    with pytest.raises(Crash):
        run(views, tmp_path / "run", on_epoch_end=crash_in_epoch_3)  # the last checkpoint is epoch 2's
    resumed = run(views, tmp_path / "run")
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in a.history], rel=1e-6)


def test_views_of_the_wrong_shape_are_refused(with_views):
    from training.features import DataValidationError

    data = load_prepared(with_views[1]).feature_splits()
    broken = dataclasses.replace(data.train, text_views=data.train.text_views[:, :, :3])
    with pytest.raises(DataValidationError, match="text views"):
        dataclasses.replace(data, train=broken).validate()
