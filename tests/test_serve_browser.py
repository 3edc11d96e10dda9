"""The web page in a real browser: Debian's headless Chromium via Playwright, against `llmclf serve`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
_spec = importlib.util.spec_from_file_location("screenshot_serve",
                                               Path(__file__).resolve().parents[1] / "scripts" / "screenshot_serve.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)


@pytest.fixture(scope="module")
def server_url(tiny_run, tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with shots.serve_subprocess(tiny_run, "--max-texts", "4", log_path=log) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server_url):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = shots.launch_chromium(p)
        yield b
        b.close()


def open_page(browser, url):
    """A new page on the server's web page, once it has read the model's information."""
    page = browser.new_page(viewport=shots.VIEWPORT)
    page.set_default_timeout(30000)
    page.goto(url)
    page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model')")
    return page


@pytest.fixture
def page(browser, server_url):
    page = open_page(browser, server_url)
    yield page
    page.close()


def bars(page):
    return page.eval_on_selector_all(".bar-row", "rows => rows.map(r => [r.dataset.label, "
                                     "parseFloat(r.querySelector('.bar-fill').style.width)])")


def test_type_classify_see_label_and_bars(page, tmp_path):
    assert "gpt2-tiny" in page.inner_text("#model-info") and "ham, spam" in page.inner_text("#model-info")
    label = shots.classify_on_page(page, shots.SPAM_EXAMPLE)
    assert label in ("ham", "spam")
    rows = bars(page)
    assert sorted(lbl for lbl, _ in rows) == ["ham", "spam"]
    assert abs(sum(w for _, w in rows) - 100) < 0.5 and rows[0][0] == label  # sorted: the winner first
    assert page.get_attribute("#result", "aria-live") == "polite"
    assert page.is_hidden("#error") and page.is_hidden("#text-pair")  # one text per message: no pair box
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_click_an_example_and_the_batch_table(page):
    chip = page.locator(".chip[data-kind='ham-like']").first
    chip.click()
    page.wait_for_selector("#predicted-label")
    assert page.input_value("#text") == chip.inner_text()
    assert len(bars(page)) == 2
    # six examples with --max-texts 4: the page splits them into two requests
    page.click("#fill-batch")
    page.wait_for_selector("#batch-table tbody tr:nth-child(6)")
    cells = page.eval_on_selector_all("#batch-table tbody tr", "rows => rows.map(r => r.cells[2].innerText)")
    assert len(cells) == 6 and set(cells) <= {"ham", "spam"}
    assert page.inner_text("#batch-status").startswith("6 classified")


def test_api_errors_are_shown(page):
    page.fill("#text", "x" * 10001)  # over --max-chars: the page says so before asking the server
    page.click("#classify")
    page.wait_for_selector("#error:not([hidden])")
    assert "10000" in page.inner_text("#error")
    # the server's own error (413 text_too_long) appears with its status, code and message
    page.evaluate("limits.max_chars = 1e9")  # switch off the page's own check
    page.click("#classify")
    page.wait_for_function("document.getElementById('error').textContent.includes('text_too_long')")
    assert "413" in page.inner_text("#error") and "at most 10000" in page.inner_text("#error")
    shots.classify_on_page(page, "hello again")  # and the page recovers: the error box clears
    assert page.is_hidden("#error")


def test_api_docs_render_offline(browser, server_url):
    """Swagger UI draws the three routes from files the server itself serves: no CDN request."""
    page = browser.new_page(viewport=shots.VIEWPORT)
    elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(server_url) else elsewhere.append(r.url))
    page.goto(server_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30000)
    text = page.inner_text("body")
    assert all(route in text for route in ("/v1/classify", "/v1/model", "/healthz")), text[:500]
    assert "Unable to render" not in text
    assert elsewhere == []
    page.close()


def test_a_pair_classifier_s_page_asks_for_both_texts(pair_run, browser, tmp_path):
    import httpx

    with shots.serve_subprocess(pair_run, log_path=tmp_path / "serve.log") as url:
        page = open_page(browser, url)
        assert page.is_visible("#text-pair")
        first, second = "Free entry to win a prize, text WIN now", "Are we still on for lunch?"
        page.fill("#text-pair", second)
        label = shots.classify_on_page(page, first)
        api = httpx.post(url + "/v1/classify", json={"texts": [first], "text_pairs": [second]}).json()["results"][0]
        shown = dict(bars(page))
        assert label == api["label"] and shown[label] == pytest.approx(100 * api["probability"], abs=0.1)
        page.fill("#batch", f"{first}\t{second}\n{second}\t{first}")
        page.click("#classify-batch")
        page.wait_for_selector("#batch-table tbody tr:nth-child(2)")
        assert page.inner_text("#batch-status").startswith("2 classified")
        page.close()


def test_a_multilabel_classifier_s_page_shows_the_label_set(multilabel_run, browser, tmp_path):
    import httpx

    with shots.serve_subprocess(multilabel_run, log_path=tmp_path / "serve.log") as url:
        page = open_page(browser, url)
        text = "URGENT! Call 09061701461 to claim your prize?"
        shown = shots.classify_on_page(page, text)
        want = httpx.post(url + "/v1/classify", json={"texts": [text]}).json()["results"][0]["labels"]
        assert shown.startswith("Labels:")
        assert [b for b in page.eval_on_selector_all("#predicted-label .label-badge", "bs => bs.map(b => b.textContent)")] == want
        assert len(bars(page)) == 3
        page.close()
