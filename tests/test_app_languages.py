"""The service in the corpus's language (issue 19, item 5): an Arabic emoji demo (tf-idf beside the multilingual USE,
picked by the demo for a non-English locale) served by a real uvicorn answers Arabic queries and names unknown words, and the web
page in a real headless Chromium renders Arabic texts right to left and English ones left to right."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import pytest
import regex
from playwright import sync_api

from tests.app_fixtures import DEMO_EPOCHS, DEMO_LIMIT, ServerHandle, serving
from tests.test_app_browser import browser  # noqa: F401 -- the same headless Chromium fixture
from training.datasets.emoji_demo import EmojiSources

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000
FACE = "وجه"  # "face", in many of the Arabic CLDR names
GRINNING = "وجه بابتسامة عريضة"  # CLDR ar name of U+1F600 grinning face


@pytest.fixture(scope="module")
def arabic_demo(tmp_path_factory) -> dict:
    """The emoji demo built in Arabic (small and briefly trained), as `python -m training demo --locale ar` builds it."""
    from model.corpus import load_corpus
    from training.demo import DemoConfig, artefact_paths, build_demo

    EmojiSources().check()  # a prerequisite of the suite (.ci/run installs it): absent, this fails naming the packages
    root = tmp_path_factory.mktemp("demo-ar")
    report = build_demo(root, DemoConfig(locale="ar", limit=DEMO_LIMIT, epochs=DEMO_EPOCHS, progress=False))
    corpus = load_corpus(artefact_paths(root)["corpus"])
    return {"report": report, "index": artefact_paths(root)["index"], "corpus": corpus}


@pytest.fixture(scope="module")
def arabic_server(arabic_demo, tmp_path_factory) -> Iterator[ServerHandle]:
    """A uvicorn server over the Arabic demo."""
    with serving(arabic_demo["index"], tmp_path_factory.mktemp("server-ar") / "server.log", reload_poll_s="0") as server:
        yield server


def test_the_arabic_demo_trains_on_tfidf_beside_the_multilingual_use_and_says_so(arabic_demo):
    report, corpus = arabic_demo["report"], arabic_demo["corpus"]
    assert (report["locale"], report["text"], corpus.language) == ("ar", "tfidf+muse", "ar")
    english = [it for it in corpus.items if it.extra["text_language"] == "en"]
    assert 1 <= len(english) <= 5  # emoji newer than the Arabic CLDR data keep their English text


def test_arabic_queries_are_answered_and_unknown_words_named(arabic_server):
    with arabic_server.client() as api:
        body = api.post("/search/text", json={"text": GRINNING, "k": 5, "target": "text"}).json()
        assert body["query_problem"] is None and body["unknown_words"] == []
        assert body["results"][0]["id"] == "u1f600"  # the own text first: char n-grams read Arabic as it is
        images = api.post("/search/text", json={"text": FACE, "k": 10, "target": "image"}).json()
        assert len(images["results"]) == 10 and images["unknown_words"] == []
        # the pictures' captions are the Arabic CLDR names (English only for the few emoji Arabic has no name for)
        assert sum(1 for hit in images["results"] if regex.search(r"\p{Arabic}", hit["caption"] or "")) >= 8
        # Georgian shares no character with the corpus: named, and not ranked
        body = api.post("/search/text", json={"text": f"{FACE} ქართული", "k": 5}).json()
        assert body["unknown_words"] == ["ქართული"] and body["query_problem"] is None
        body = api.post("/search/text", json={"text": "ქართული", "k": 5}).json()
        assert body["unknown_words"] == ["ქართული"] and body["query_problem"] == "no_known_words" and body["results"] == []


@pytest.fixture()
def page(browser, arabic_server):  # noqa: F811 -- `browser` is the imported fixture
    """A fresh desktop-sized page on the Arabic demo's server."""
    context = browser.new_context(viewport={"width": 1000, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"
    context.close()


def direction(locator) -> str:
    """The computed CSS direction of an element ('rtl' or 'ltr')."""
    return locator.evaluate("el => getComputedStyle(el).direction")


@pytest.mark.browser
def test_arabic_texts_run_right_to_left_and_english_ones_left_to_right(page, arabic_server, arabic_demo):
    english = next(it for it in arabic_demo["corpus"].items if it.extra["text_language"] == "en")
    page.goto(arabic_server.url + "/?" + urlencode({"q": english.text, "target": "text", "k": "50"}))
    snippets = page.locator("#results .result-text .snippet")
    sync_api.expect(snippets).to_have_count(50)
    texts = snippets.all_inner_texts()
    assert english.text in texts
    own = snippets.nth(texts.index(english.text))
    arabic = snippets.filter(has_text=FACE).first
    assert (direction(own), direction(arabic)) == ("ltr", "rtl")
    # the right-to-left text is laid out from the right edge of its card, the English one from the left
    for snippet, edge in ((arabic, "right"), (own, "left")):
        gap = snippet.evaluate(
            "(el, edge) => { const r = document.createRange(); r.selectNodeContents(el); const t = r.getBoundingClientRect();"
            " const b = el.getBoundingClientRect(); return edge === 'right' ? b.right - t.right : t.left - b.left; }",
            edge,
        )
        assert abs(gap) < 2, (edge, gap)


@pytest.mark.browser
def test_an_arabic_query_runs_right_to_left_in_the_box_and_the_message(page, arabic_server):
    page.goto(arabic_server.url + "/")
    query = page.locator("#query")
    query.fill(GRINNING)
    assert query.evaluate("el => el.matches(':dir(rtl)')") and direction(query) == "rtl"
    query.press("Enter")
    cards = page.locator("#results .result-image")
    sync_api.expect(cards).to_have_count(20)
    # the query sits isolated inside the English message, so the sentence around it keeps its order
    sync_api.expect(page.locator("#message bdi")).to_have_text(GRINNING)
    assert page.locator("#message").inner_text().startswith("20 results for “")
    captions = page.locator("#results .result-image .caption")
    assert direction(captions.filter(has_text=FACE).first) == "rtl"
    query.fill("grinning face")
    assert query.evaluate("el => el.matches(':dir(ltr)')") and direction(query) == "ltr"
