"""RUN_DIR/report.html: written by every run, self-contained, and whole in a real headless browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from llmclf.run_report import REPORT, write_run_report

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>document.title='owned'</script> & <img src=http://example.com/x.png>"


@pytest.fixture(scope="module")
def report_dir(decision_run, tmp_path_factory):
    """A copy of a calibrated run with a hostile text among its errors, the report written again."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(decision_run, run)
    errors = pd.read_csv(run / "errors.csv", dtype=str, keep_default_na=False)
    row = pd.DataFrame([{"text": HOSTILE, "label": "ham", "predicted": "spam", "probability": "0.999",
                         "label_probability": "0.001"}])
    pd.concat([row, errors]).to_csv(run / "errors.csv", index=False)
    write_run_report(run, json.loads((run / "metrics.json").read_text()))
    return run


def test_every_run_writes_a_report_with_its_figures(decision_run):
    page = (decision_run / REPORT).read_text(encoding="utf-8")
    m = json.loads((decision_run / "metrics.json").read_text())
    for heading in ("Data", "Metrics", "Test confusion matrix", "Calibration", "Operating point", "Plots",
                    "Top test errors"):
        assert f"<h2>{heading}</h2>" in page
    assert f"{100 * m['test']['accuracy']:.2f}%" in page
    assert f"{m['calibration']['validation']['after']['ece']:.4f}" in page
    assert page.count("data:image/png;base64,") == 4  # loss, accuracy, calibration, curves: all embedded
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_the_report_renders_offline_in_a_real_browser(report_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    import importlib.util
    spec = importlib.util.spec_from_file_location("shots", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "screenshot_serve.py")
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    url = (report_dir / REPORT).resolve().as_uri()
    with sync_playwright() as p:
        browser = shots.launch_chromium(p)
        page = browser.new_page(viewport=shots.VIEWPORT)
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "xs => xs.map(i => [i.complete, i.naturalWidth])")
        title = page.title()
        cells = page.eval_on_selector_all("td.t", "xs => xs.map(x => x.textContent)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert len(images) == 4 and all(done and width > 100 for done, width in images)  # every plot decoded
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []  # no outside request
    assert title.startswith("llmclf run") and HOSTILE in cells  # the text shown as text, never run
    assert (tmp_path / "report.png").stat().st_size > 20000
