"""Load check for `llmclf serve`: N concurrent clients against a real server process, loopback only.

    python bench/serve_load.py [--run-dir RUN_DIR] [--clients 32] [--seconds 60] [--workers 1] [--texts 1]

Starts `llmclf serve RUN_DIR` on 127.0.0.1 (a free port); without --run-dir it first trains a gpt2-tiny
run on the shared SMS data (${LLMCLF_SHARED_DIR:-../shared}) into a temporary directory. Each client
(asyncio + httpx, one connection each) sends --texts texts per request, drawn from the run's SMS test split,
back to back, until --seconds have passed or --max-requests were sent in all. Reports requests/s, p50 / p90
/ p99 latency of the 200s, the 503s (the server's queue was full: refused at once, with Retry-After; not an
error, the server shedding load) and the error count (anything else, a timeout included; the exit status is
1 if there are any, or if the server does not answer afterwards), writes bench/out/serve_load.json and
prints a markdown table row. The clients run on the same machine as the server, so they share its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared")).resolve()
SMS_FILE = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
HEADER = ("| clients | texts/request | seconds | requests | requests/s | p50 ms | p90 ms | p99 ms | 503s | errors "
          "| workers | model | machine |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_tiny_run(out: Path) -> Path:
    print(f"training a gpt2-tiny run into {out} ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "llmclf", "train", "--model", "gpt2-tiny", "--weights", "random", "--epochs", "1",
           "--data-file", SMS_FILE, "--tokenizer-dir", SHARED / "tokenizers" / "gpt2", "--out", out, "--lr", "1e-3",
           "--quiet"]
    subprocess.run(list(map(str, cmd)), check=True)
    return out


def test_texts(run_dir: Path) -> list[str]:
    import pandas as pd
    f = run_dir / "test.csv"
    if f.is_file():
        return pd.read_csv(f)["text"].astype(str).tolist()
    lines = SMS_FILE.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.split("\t", 1)[1] for line in lines if "\t" in line][-500:]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def start_server(run_dir: Path, port: int, workers: int, log_path: Path, timeout: float = 180):
    import httpx
    cmd = [sys.executable, "-m", "llmclf", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--device", "cpu"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"llmclf serve exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"llmclf serve did not start in {timeout} s:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.25)


async def load(url: str, texts: list[str], clients: int, seconds: float, max_requests: int, labels: set, seed: int,
               per_request: int = 1):
    """Returns (latencies of the 200s, error details, number of 503s, elapsed seconds)."""
    import httpx
    latencies, errors, sent, shed = [], [], 0, 0
    deadline = time.perf_counter() + seconds

    async def client(i: int):
        nonlocal sent, shed
        rng = random.Random(seed + i)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                batch = [rng.choice(texts) for _ in range(per_request)]
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/classify", json={"texts": batch})
                    if r.status_code == 503 and r.headers.get("retry-after", "").isdigit():
                        shed += 1  # a polite client waits as told (not past the end of the run)
                        await asyncio.sleep(min(int(r.headers["retry-after"]), max(0.0, deadline - time.perf_counter())))
                        continue
                    results = r.json()["results"] if r.status_code == 200 else []
                    ok = len(results) == per_request and all(x["label"] in labels for x in results)
                    detail = f"{r.status_code} {r.text[:200]}"
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    ok, detail = False, f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t0
                if ok:
                    latencies.append(dt)
                else:
                    errors.append(detail)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors, shed, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", help="trained run to serve (default: train gpt2-tiny into a temp dir)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests in all")
    ap.add_argument("--texts", type=int, default=1, help="texts per request (at most the server's --max-texts)")
    ap.add_argument("--workers", type=int, default=1, help="llmclf serve --workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve_load.json"))
    a = ap.parse_args(argv)
    import httpx

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        run_dir = Path(a.run_dir) if a.run_dir else train_tiny_run(Path(tmp) / "run")
        texts = test_texts(run_dir)
        port = free_port()
        log_path = Path(tmp) / "serve.log"
        proc = start_server(run_dir, port, a.workers, log_path)
        url = f"http://127.0.0.1:{port}"
        try:
            info = httpx.get(url + "/v1/model", timeout=10).json()
            for t in texts[:20]:  # warm-up, not measured
                httpx.post(url + "/v1/classify", json={"texts": [t]}, timeout=30).raise_for_status()
            latencies, errors, shed, elapsed = asyncio.run(load(url, texts, a.clients, a.seconds, a.max_requests,
                                                                set(info["labels"]), a.seed, a.texts))
            alive = httpx.get(url + "/healthz", timeout=10).status_code == 200
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    lat = sorted(x * 1000 for x in latencies)
    n = len(lat) + len(errors) + shed
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), {platform.system()}"
    result = {
        "clients": a.clients, "seconds": round(elapsed, 2), "requests": n, "ok": len(lat), "shed_503": shed,
        "errors": len(errors),
        "requests_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {"p50": round(percentile(lat, 50), 2), "p90": round(percentile(lat, 90), 2),
                       "p99": round(percentile(lat, 99), 2), "max": round(lat[-1], 2) if lat else None,
                       "mean": round(statistics.fmean(lat), 2) if lat else None},
        "error_samples": errors[:5], "server_alive_after": alive, "workers": a.workers, "texts_per_request": a.texts,
        "model": info.get("model"), "device": info.get("device"), "run_dir": str(a.run_dir) if a.run_dir else None,
        "machine": machine, "python": platform.python_version(),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print()
    print(HEADER)
    print(f"| {a.clients} | {a.texts} | {result['seconds']:.0f} | {n} | {result['requests_per_s']:.1f} "
          f"| {result['latency_ms']['p50']:.1f} | {result['latency_ms']['p90']:.1f} | {result['latency_ms']['p99']:.1f} "
          f"| {shed} | {len(errors)} | {a.workers} "
          f"| {result['model']} ({result['device']}) | {machine} |")
    return 0 if not errors and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
