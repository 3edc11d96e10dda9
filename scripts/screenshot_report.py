"""Screenshot a run's report.html in Debian's headless Chromium: docs/report.png.

    python scripts/screenshot_report.py RUN_DIR [--out docs/report.png]

Opens RUN_DIR/report.html from disk (file://, no server, Playwright's Python package driving
/usr/bin/chromium) and saves the top 1000x1400 pixels of the page.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("screenshot_serve", ROOT / "scripts" / "screenshot_serve.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"))
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = shots.launch_chromium(p)
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.goto((Path(a.run_dir) / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=a.out)
        browser.close()
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
