"""Issue 7's measurement: data-parallel training on N CPU processes (torchrun, gloo) against one process.

Same job in every configuration: GPT-2 (random weights), every parameter trainable, no prefix cache
(`--trainable all --no-cache`), 1 epoch over the first ROWS messages of the SMS Spam Collection, global
batch 8, periodic evaluation reduced to the step-0 check (`--eval-freq 100000 --eval-iter 1`). Each
configuration runs in its own subprocess:

  1 process  x 1 thread     the baseline
  1 process  x N threads    what one process gets from the same cores
  N processes x 1 thread    torchrun --nproc_per_node N (DDP, each rank gets batch/N examples per step)

Throughput is examples_seen / train_seconds from metrics.json: training steps plus the final metrics over
every split (which are sharded across ranks too), from data ready to metrics; start-up and imports are
not counted (wall seconds are reported as well). The machine's load average is recorded with each run:
on a shared machine other people's jobs take cores too, so treat one run as one sample.

    python bench/distributed.py [--model gpt2-small] [--rows 300] [--procs 2] [--repeat 1]

Prints a markdown table and writes bench/out/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared"))
SMS = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
BPE_DIR = SHARED / "tokenizers" / "gpt2"
OUT = ROOT / "bench" / "out"


def run(label, procs, threads, args, workdir):
    out = workdir / label.replace(" ", "_")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] if procs > 1 else []
    cmd = [sys.executable, *launcher, "-m", "llmclf", "train", *args, "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{label}: failed\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"config": label, "processes": procs, "threads_per_process": threads,
            "examples_seen": m["examples_seen"], "train_seconds": m["train_seconds"],
            "examples_per_second": round(m["examples_seen"] / m["train_seconds"], 3),
            "wall_seconds": round(wall, 1), "load_average_before": round(load_before, 2),
            "test_loss": m["test"]["loss"], "test_accuracy": m["test"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-small")
    ap.add_argument("--rows", type=int, default=300, help="first ROWS messages of the SMS file (before balancing)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (the best is reported)")
    a = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from llmclf.data import read_table
    workdir = Path(tempfile.mkdtemp(prefix="llmclf-bench-dist-"))
    data = workdir / "subset.csv"
    read_table(SMS).iloc[: a.rows].to_csv(data, index=False)
    args = ["--recipe", "book", "--model", a.model, "--weights", "random", "--trainable", "all", "--no-cache", "--epochs", "1",
            "--batch-size", str(a.batch_size), "--eval-freq", "100000", "--eval-iter", "1",
            "--checkpoint-every", "0", "--data-file", str(data), "--tokenizer-dir", str(BPE_DIR)]
    configs = [("1 process x 1 thread", 1, 1), (f"1 process x {a.procs} threads", 1, a.procs),
               (f"{a.procs} processes x 1 thread", a.procs, 1)]
    results = []
    for label, procs, threads in configs:
        runs = [run(label, procs, threads, args, workdir) for _ in range(a.repeat)]
        best = max(runs, key=lambda x: x["examples_per_second"])
        best["all_examples_per_second"] = [x["examples_per_second"] for x in runs]
        results.append(best)
        print(f"{label}: {best['examples_per_second']} examples/s (load {best['load_average_before']})",
              file=sys.stderr, flush=True)
    base = results[0]["examples_per_second"]
    print(f"\n| config ({a.model}, all trainable, no cache, batch {a.batch_size}) | examples/s | speed-up vs 1x1 "
          f"| train s | wall s | load avg before | test loss |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        r["speedup_vs_1x1"] = round(r["examples_per_second"] / base, 2)
        print(f"| {r['config']} | {r['examples_per_second']:.2f} | {r['speedup_vs_1x1']:.2f}x | {r['train_seconds']:.1f} "
              f"| {r['wall_seconds']:.1f} | {r['load_average_before']:.2f} | {r['test_loss']:.5f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"model": a.model, "rows": a.rows, "batch_size": a.batch_size, "procs": a.procs,
              "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}
    (OUT / "distributed.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {OUT / 'distributed.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
