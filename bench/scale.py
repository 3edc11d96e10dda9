"""How a run's time and peak memory grow with its data: the SMS collection at 1x, 10x and 100x.

The collection is replicated k times. Replica r > 0 prefixes each message with "[r] ", so every text is
distinct: llmclf computes a repeated token sequence once, and exact copies would cost almost nothing.
Each size is one `llmclf train` in a process of its own (the defaults, except one epoch, --pooling
last_nonpad and the backbone below), timed from data ready to final metrics (metrics.json: train_seconds),
its peak memory the process's max RSS. The backbone is SmolLM2-135M's width (so its cache holds SmolLM2's
2.3 KB per token) but 3 blocks deep with random weights, which keeps the 100x run within minutes on 2 cores:
what grows with the data (tokenizing, the frozen pass, the cache, the epochs, the evaluations, the
baseline, the report) is the same code whatever the depth. Test accuracy at 10x and 100x means little:
the replicas of a training text sit in the test split too.

    python bench/scale.py [--factors 1 10 100] [--model smollm2-narrow|gpt2-tiny] [--cache-memory 4] [--epochs 1]

Prints a markdown table and appends each row to bench/results/scale-DATE.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared"))
SMS = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
BPE_DIR = SHARED / "tokenizers" / "gpt2"


def replicated(k: int, path: Path) -> int:
    """The UCI file k times over (replica r > 0 marked "[r] "), written to `path`; returns its rows."""
    lines = [ln for ln in SMS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for r in range(k):
            for ln in lines:
                label, text = ln.split("\t", 1)
                f.write(f"{label}\t{text if r == 0 else f'[{r}] {text}'}\n")
    return k * len(lines)


def narrow_smollm2(directory: Path) -> Path:
    """A random-weight Llama as wide as SmolLM2-135M (576, 9 heads, 3 KV heads, its vocabulary and tokenizer)
    but 3 blocks deep, saved by transformers: its cache entering the last block holds SmolLM2's 2.3 KB per
    token, while the frozen pass costs a tenth of SmolLM2's."""
    import torch
    import transformers

    from llmclf.weights import RANDOM_TOKENIZER_ASSETS, _gguf_tokenizer
    tok = _gguf_tokenizer(RANDOM_TOKENIZER_ASSETS["llama"])
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=3,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.tok.save(str(directory / "tokenizer.json"))
    return directory


def worker(argv: list[str]) -> None:
    """One `llmclf train` in this process; prints its peak RSS (MB) last."""
    from llmclf.cli import main
    code = main(argv)
    print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
    raise SystemExit(code)


def run_size(k: int, a, tmp: Path) -> dict:
    data, out = tmp / f"sms-x{k}.tsv", tmp / f"run-x{k}"
    rows = replicated(k, data)
    model = ["--model", str(a.model_dir)] if a.model_dir else ["--model", a.model, "--weights", "random"]
    argv = ["train", "--out", str(out), "--overwrite", "--quiet", "--data-file", str(data), *model,
            "--tokenizer-dir", str(BPE_DIR), "--epochs", str(a.epochs),
            "--cache-memory", str(a.cache_memory), "--pooling", a.pooling, "--dtype", a.dtype]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"x{k} failed:\n{proc.stderr[-3000:]}")
    peak = float(proc.stdout.strip().splitlines()[-1].split()[1])
    m = json.loads((out / "metrics.json").read_text())
    return {"factor": k, "rows": rows, "texts": sum(m["num_examples"].values()), "seconds": m["train_seconds"],
            "process_seconds": time.perf_counter() - t0, "cache_seconds": m.get("cache_seconds"),
            "cache_memory_gib": m.get("cache_memory_bytes", 0) / 2**30,
            "cache_disk_gib": m.get("cache_disk_bytes", 0) / 2**30, "peak_rss_mb": peak,
            "test_accuracy": m["test"]["accuracy"]}


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| data | texts (train+val+test) | data ready -> metrics | per text vs 1x | frozen pass | cache in "
             "memory / in file | peak RSS | test acc. |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = (r["seconds"] / r["texts"]) / (base["seconds"] / base["texts"])
        lines.append(f"| {r['factor']}x ({r['rows']:,} rows) | {r['texts']:,} | {r['seconds']:.0f} s | {per:.2f} | "
                     f"{r['cache_seconds']:.0f} s | {r['cache_memory_gib']:.2f} / {r['cache_disk_gib']:.2f} GiB | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GiB | {r['test_accuracy'] * 100:.2f}% |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--model", default="smollm2-narrow", help="smollm2-narrow (built here, see narrow_smollm2) or a "
                    "named random-weight model such as gpt2-tiny")
    ap.add_argument("--cache-memory", type=float, default=4.0, help="GiB (llmclf's --cache-memory, its default)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pooling", default="last_nonpad")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    from record import append_row
    date = time.strftime("%Y-%m-%d")
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmclf-scale-") as tmp:
        a.model_dir = narrow_smollm2(Path(tmp) / "smollm2-narrow") if a.model == "smollm2-narrow" else None
        for k in a.factors:
            rows.append(run_size(k, a, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    md = table(rows)
    settings = {k: getattr(a, k) for k in ("model", "cache_memory", "epochs", "pooling", "dtype")}
    head = f"`python bench/scale.py {' '.join(sys.argv[1:])}` ({date}; {settings})"
    for r, line in zip(rows, md.splitlines()[2:]):
        append_row("scale", {"date": date, "command": head, **settings, **r}, f"{head}: {line}")
    print(f"{head}\n\n{md}")


if __name__ == "__main__":
    main()
