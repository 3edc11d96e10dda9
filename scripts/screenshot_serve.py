"""Screenshot the `llmclf serve` web page after classifying a spam-like message: docs/serve.png.

    python scripts/screenshot_serve.py [--run-dir RUN_DIR] [--out docs/serve.png]

Starts `llmclf serve RUN_DIR` on 127.0.0.1 (a free port), drives Debian's headless Chromium
(/usr/bin/chromium; `apt-get install -y chromium`) with Playwright's Python package (Playwright never
downloads a browser here), classifies a spam-like example and saves a 1000x800 screenshot
of the top of the page. Without --run-dir it first trains a gpt2-tiny run on the shared SMS data
(${LLMCLF_SHARED_DIR:-../shared}) into a temporary directory.

tests/test_serve_browser.py imports the helpers below (serve_subprocess, launch_chromium, classify_on_page).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
SPAM_EXAMPLE = ("WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! "
                "To claim call 09061701461. Claim code KL341. Valid 12 hours only.")
VIEWPORT = {"width": 1000, "height": 800}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_subprocess(run_dir, *extra_args, startup_timeout: float = 120, log_path=None):
    """Run `python -m llmclf serve RUN_DIR` on a free loopback port; yields its base URL once /healthz answers."""
    import httpx

    port = free_port()
    log_path = Path(log_path or tempfile.mkstemp(prefix="llmclf-serve-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "llmclf", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", *map(str, extra_args)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llmclf serve exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llmclf serve did not answer within {startup_timeout} s:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_chromium(playwright):
    """Debian's Chromium, headless; never a browser Playwright would download."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def classify_on_page(page, text: str, timeout_ms: int = 30000) -> str:
    """Type `text`, press Classify, wait for the verdict; returns the predicted label shown."""
    page.fill("#text", text)
    page.click("#classify")
    page.wait_for_selector("#predicted-label", timeout=timeout_ms)
    page.wait_for_function("document.getElementById('classify').disabled === false", timeout=timeout_ms)
    return page.inner_text("#predicted-label")


def screenshot(url: str, out, text: str = SPAM_EXAMPLE, batch: bool = False) -> Path:
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            page.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model')")
            if batch:
                page.click("#fill-batch")
                page.wait_for_selector("#batch-table tbody tr")
            classify_on_page(page, text)
            page.mouse.move(5, 5)  # no hover state on the button
            page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
            page.wait_for_timeout(400)  # let the bar transition finish
            page.screenshot(path=str(out))
        finally:
            browser.close()
    return out


def train_tiny_run(out: Path, epochs: int = 2) -> Path:
    shared = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared")).resolve()
    cmd = [sys.executable, "-m", "llmclf", "train", "--model", "gpt2-tiny", "--weights", "random", "--epochs", str(epochs),
           "--data-file", shared / "data" / "sms_spam_collection" / "SMSSpamCollection",
           "--tokenizer-dir", shared / "tokenizers" / "gpt2", "--out", out, "--lr", "1e-3", "--quiet"]
    subprocess.run(list(map(str, cmd)), check=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", help="a trained run (default: train gpt2-tiny into a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "serve.png"))
    ap.add_argument("--epochs", type=int, default=2, help="epochs when training the default run")
    a = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install -y chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(a.run_dir) if a.run_dir else train_tiny_run(Path(tmp) / "run", a.epochs)
        with serve_subprocess(run_dir) as url:
            out = screenshot(url, a.out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
