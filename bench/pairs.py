"""A text-pair task on real data, through the CLI: train with --text-pair-column, then predict the test split.

    python bench/pairs.py [--corpus privacy|boolq] [--rows 3000] [--seed 0] [--out /tmp/llmclf-pairs] [-- TRAIN_ARGS]

Takes a seeded sample of `--rows` pairs of the corpus (bench/corpora.py: PAIR_LOADERS), writes it as a CSV
(question, passage, label), runs `llmclf train` on it with the default recipe (plus any TRAIN_ARGS), then
`llmclf predict --input RUN/test.csv --json` and checks that predict gives the run's test accuracy. Prints
one markdown row and writes it with the metrics to bench/results/pairs-DATE.{md,jsonl}.
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

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
import record  # noqa: E402



def sample(corpus: str, rows: int, seed: int) -> pd.DataFrame:
    df = corpora.PAIR_LOADERS[corpus]()
    return df.sample(n=min(rows, len(df)), random_state=seed).reset_index(drop=True)


def train(csv: Path, run: Path, seed: int, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "llmclf", "train", "--data-file", str(csv), "--text-column", "question",
           "--text-pair-column", "passage", "--seed", str(seed), "--out", str(run), "--overwrite", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return json.loads((run / "metrics.json").read_text()), time.perf_counter() - t0


def predicted_accuracy(run: Path) -> float:
    """llmclf predict on the run's test split (columns text, text_pair): the share it labels right."""
    out = subprocess.run([sys.executable, "-m", "llmclf", "predict", str(run), "--input", str(run / "test.csv"), "--json"],
                         check=True, capture_output=True, text=True).stdout
    test = pd.read_csv(run / "test.csv", dtype=str, keep_default_na=False)
    got = [json.loads(line)["label"] for line in out.splitlines()]
    return sum(g == t for g, t in zip(got, test["label"])) / len(test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=sorted(corpora.PAIR_LOADERS), default="privacy")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/llmclf-pairs"))
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more llmclf train options")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    df = sample(a.corpus, a.rows, a.seed).rename(columns={"text": "question", "text_pair": "passage"})
    csv = a.out / f"{a.corpus}{len(df)}.csv"
    df.to_csv(csv, index=False)
    run = a.out / f"{a.corpus}-run"
    extra = [x for x in a.train_args if x != "--"]
    m, seconds = train(csv, run, a.seed, extra)
    acc = predicted_accuracy(run)
    tf = m.get("baseline", {}).get("test", {})
    row = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "corpus": a.corpus, "rows": len(df), "split": m["num_examples"], "train_args": extra,
           "validation_accuracy": m["validation"]["accuracy"], "test_accuracy": m["test"]["accuracy"],
           "test_macro_f1": m["test"]["macro_f1"], "predict_test_accuracy": acc,
           "tfidf_test_accuracy": tf.get("accuracy"), "saved": m.get("saved"), "pooling": m.get("pooling"),
           "train_seconds": m["train_seconds"], "wall_seconds": round(seconds, 1)}
    md = (f"| {a.corpus} | {len(df):,} | {row['split']['train']}/{row['split']['validation']}/{row['split']['test']} | "
          f"{' '.join(extra) or 'defaults'} | {row['validation_accuracy']:.2%} | {row['test_accuracy']:.2%} | "
          f"{acc:.2%} | {row['tfidf_test_accuracy'] or float('nan'):.2%} | {row['wall_seconds']:.0f} s |")
    print(md)
    record.append_row("pairs", row, md)


if __name__ == "__main__":
    main()
