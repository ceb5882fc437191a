"""The web page in a real headless Chromium (Playwright): type a query and see pictures, upload a picture and see texts,
click a result to search with it, on a phone-sized screen too."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (the system's, not a Playwright download)."""
    if not CHROMIUM.exists():  # a prerequisite of the suite (.ci/run installs it), so its absence fails, not skips
        pytest.fail(
            f"{CHROMIUM} is missing: the web-page tests drive the system's Chromium (apt-get install -y chromium)", pytrace=False
        )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, app_server):
    """A fresh page on the search page of the session server (phone-sized by default: every test also checks that)."""
    # bypass_csp: Playwright's wait_for_function polls with eval, which the page's policy forbids (as it should); the
    # policy has tests of its own below, on pages that wait without it
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True, bypass_csp=True
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_server.url + "/")
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"
    context.close()


def fits_the_screen(page) -> bool:
    """No horizontal scrolling: the layout fits the viewport width."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_typing_a_query_shows_image_results(page, app_server):
    ready = page.request.get(app_server.url + "/readyz").json()
    sync_api.expect(page.locator("#version")).to_contain_text(ready["index_version"])
    sync_api.expect(page.locator("#version")).to_contain_text(ready["model_hash"][:12])
    page.fill("#query", "a happy face")
    page.press("#query", "Enter")
    cards = page.locator("#results .result-image")
    sync_api.expect(cards).to_have_count(20)
    # the thumbnails on screen really loaded (natural size known; those below the fold load lazily), with scores and labels
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].slice(0, 2).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "score" in cards.first.inner_text()
    assert cards.first.locator(".chip").count() >= 1
    sync_api.expect(page.locator("#message")).to_contain_text("20 results")
    assert fits_the_screen(page)


def test_a_query_of_unknown_words_says_so_instead_of_showing_results(page):
    page.fill("#query", "a happy face")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result-image")).to_have_count(20)
    page.fill("#query", "qzxv blorptangle")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#message")).to_contain_text("the model knows none of these words")
    sync_api.expect(page.locator("#message")).to_contain_text("qzxv, blorptangle")
    sync_api.expect(page.locator("#results .result")).to_have_count(0)


def test_uploading_an_image_shows_text_results(page, app_artefacts):
    page.set_input_files("#file", app_artefacts.items[0].image_path)
    texts = page.locator("#results .result-text")
    sync_api.expect(texts.first).to_be_visible()
    assert texts.count() == 20
    known = {it.text for it in app_artefacts.items}
    assert all(t in known for t in page.locator("#results .result-text .snippet").all_inner_texts())
    sync_api.expect(page.locator("#preview")).to_be_visible()
    assert fits_the_screen(page)


def test_dropping_an_image_searches_with_it(page, app_artefacts):
    data = Path(app_artefacts.items[1].image_path).read_bytes()
    transfer = page.evaluate_handle(
        """bytes => { const t = new DataTransfer();
                      t.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'})); return t; }""",
        list(data),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    sync_api.expect(page.locator("#results .result-text").first).to_be_visible()
    sync_api.expect(page.locator("#message")).to_contain_text("dropped.png")


def test_clicking_results_searches_with_them(page):
    page.fill("#query", "animal")
    page.press("#query", "Enter")
    first_image = page.locator("#results .result-image").first
    sync_api.expect(first_image).to_be_visible()
    image_id = first_image.get_attribute("data-id")
    first_image.click()  # image -> its picture is uploaded -> text results
    sync_api.expect(page.locator("#message")).to_contain_text(image_id)
    first_text = page.locator("#results .result-text").first
    sync_api.expect(first_text).to_be_visible()
    text = first_text.locator(".snippet").inner_text()
    page.locator("#results .result-text").first.click()  # text -> a text search with it -> image results
    sync_api.expect(page.locator("#query")).to_have_value(text)
    sync_api.expect(page.locator("#results .result-image").first).to_be_visible()


def test_errors_are_shown_to_the_user(page):
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"})
    sync_api.expect(page.locator("#message")).to_have_class("message error")
    sync_api.expect(page.locator("#message")).to_contain_text("That file is not a picture we can read")


def test_an_error_clears_the_old_results_and_preview(page, app_artefacts):
    page.set_input_files("#file", app_artefacts.items[0].image_path)
    sync_api.expect(page.locator("#results .result-text").first).to_be_visible()
    sync_api.expect(page.locator("#preview")).to_be_visible()
    page.set_input_files("#file", {"name": "broken.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\nbroken"})
    sync_api.expect(page.locator("#message")).to_have_class("message error")
    sync_api.expect(page.locator("#results .result")).to_have_count(0)
    sync_api.expect(page.locator("#preview")).to_be_hidden()


def test_image_results_carry_their_caption(page, app_artefacts):
    page.fill("#query", "a happy face")
    page.press("#query", "Enter")
    cards = page.locator("#results .result-image")
    sync_api.expect(cards).to_have_count(20)
    by_id = {it.id: it for it in app_artefacts.items}
    for i in range(3):
        card = cards.nth(i)
        item = by_id[card.get_attribute("data-id")]
        expected = item.extra.get("name") or item.text
        sync_api.expect(card.locator(".caption")).to_have_text(expected)
        assert card.locator("img").get_attribute("alt") == expected


def test_the_query_lives_in_the_address_for_back_and_sharing(page, app_server):
    page.fill("#query", "a cat")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result-image").first).to_be_visible()
    page.select_option("#target", "text")
    page.fill("#query", "a red car")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result-text").first).to_be_visible()
    assert page.url.endswith("/?q=a+red+car&target=text")
    page.go_back()  # the earlier search comes back, with its own options
    sync_api.expect(page.locator("#query")).to_have_value("a cat")
    sync_api.expect(page.locator("#results .result-image").first).to_be_visible()
    assert "q=a+cat" in page.url
    # a shared link opens straight onto its results
    shared = page.context.new_page()
    shared.goto(app_server.url + "/?q=a+happy+face&k=10")
    sync_api.expect(shared.locator("#results .result-image")).to_have_count(10)
    sync_api.expect(shared.locator("#query")).to_have_value("a happy face")
    # "more like this picture" is shareable too
    first = shared.locator("#results .result-image").first
    item_id = first.get_attribute("data-id")
    first.click()
    sync_api.expect(shared.locator("#results .result-text").first).to_be_visible()
    assert f"item={item_id}" in shared.url.replace("%2D", "-")


def test_words_the_model_does_not_know_are_named(page):
    page.fill("#query", "a happy face qzxv")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result-image")).to_have_count(20)
    sync_api.expect(page.locator("#message")).to_contain_text("words the model does not know:")
    sync_api.expect(page.locator("#message")).to_contain_text("qzxv")


@pytest.fixture()
def offline_page(browser, app_server):
    """A page whose requests may reach the session server only: anything else (a CDN) is refused and recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(app_server.url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page, outside, errors
    context.close()


def test_the_api_docs_render_offline(offline_page, app_server):
    page, outside, errors = offline_page
    page.goto(app_server.url + "/docs")
    operations = page.locator(".swagger-ui .opblock")
    sync_api.expect(operations).to_have_count(9, timeout=20_000)  # every operation of /openapi.json
    sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("DSCMR cross-modal search")
    # the page works, not just shows: open the text search and see its documented request body, with the labels enum
    page.locator(".opblock-summary-path", has_text="/search/text").first.click()
    sync_api.expect(page.locator(".opblock-body").first).to_contain_text("text")
    page.locator(".opblock-body button.try-out__btn").first.click()
    sync_api.expect(page.locator(".opblock-body textarea.body-param__text").first).to_contain_text("a smiling face")
    assert not outside, f"/docs reached outside the server: {outside}"
    assert not errors, f"JavaScript errors on /docs: {errors}"


CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));
"""


def wait_for_true(page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll a JavaScript expression until it is true (page.wait_for_function polls with eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def csp_violations(page) -> list[str]:
    """What the Content-Security-Policy blocked on the page so far (the listener is installed before any script runs)."""
    return page.evaluate("window.__cspViolations")


def test_the_page_satisfies_its_content_security_policy(browser, app_server, app_artefacts):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console_errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    response = page.goto(app_server.url + "/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page.fill("#query", "a happy face")
    page.press("#query", "Enter")
    sync_api.expect(page.locator("#results .result-image")).to_have_count(20)
    wait_for_true(page, "[...document.querySelectorAll('#results img')].slice(0, 2).every(i => i.complete && i.naturalWidth > 0)")
    page.set_input_files("#file", app_artefacts.items[0].image_path)  # previewed through a blob: URL
    sync_api.expect(page.locator("#results .result-text").first).to_be_visible()
    sync_api.expect(page.locator("#preview")).to_be_visible()
    page.locator("#results .result-text").first.click()
    sync_api.expect(page.locator("#results .result-image").first).to_be_visible()
    assert csp_violations(page) == [] and not [e for e in console_errors if "Content Security Policy" in e], (
        csp_violations(page),
        console_errors,
    )
    # the listener does see what the policy blocks: an inline script, which the page never uses
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; document.body.append(s); }"
    )
    wait_for_true(page, "window.__cspViolations.length > 0")
    assert page.evaluate("window.__ran") is None and "script-src" in csp_violations(page)[0]
    context.close()


def test_the_api_docs_satisfy_the_content_security_policy(offline_page, app_server):
    page, outside, errors = offline_page
    page.context.add_init_script(CSP_LISTENER)
    response = page.goto(app_server.url + "/docs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    sync_api.expect(page.locator(".swagger-ui .opblock")).to_have_count(9, timeout=20_000)
    page.locator(".opblock-summary-path", has_text="/search/text").first.click()
    page.locator(".opblock-body button.try-out__btn").first.click()
    page.locator(".opblock-body button.execute").first.click()  # a real request from the docs page
    sync_api.expect(page.locator(".opblock-body .live-responses-table .response .response-col_status").first).to_contain_text(
        "200"
    )
    assert csp_violations(page) == [], csp_violations(page)
    assert not outside and not errors, (outside, errors)
