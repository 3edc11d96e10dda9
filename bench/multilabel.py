"""A multi-label task on real data, through the CLI: train on 0/1 label columns, evaluate, predict and serve.

    python bench/multilabel.py [--train 3000] [--validation 500] [--test 1000] [--seed 0]
                               [--out /tmp/llmclf-multilabel] [-- TRAIN_ARGS]

The corpus: Figure Eight's disaster-response messages (bench/corpora.py: load_disaster; 34 labels), a seeded
sample of each of its given splits written as three CSVs (text + one 0/1 column per label) and passed as
--train-file/--validation-file/--test-file with --label-columns. After training: `llmclf evaluate` on the test
file, `llmclf predict --json` on it (the subset accuracy it implies must be the run's), and `llmclf serve`
answering the first 16 test messages with the label sets predict gave. One markdown row goes to stdout and
bench/results/multilabel-DATE.{md,jsonl}.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402
import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_splits(a) -> tuple[dict, list[str]]:
    df = corpora.load_disaster()
    labels = [c for c in df.columns if c not in ("text", "split")]
    files = {}
    for split in ("train", "validation", "test"):
        part = df[df["split"] == split]
        part = part.sample(n=min(getattr(a, split), len(part)), random_state=a.seed)
        files[split] = a.out / f"disaster-{split}.csv"
        part.drop(columns=["split"]).to_csv(files[split], index=False)
    return files, labels


def llmclf(*args, capture=False) -> str:
    r = subprocess.run([sys.executable, "-m", "llmclf", *map(str, args)], check=True, capture_output=capture, text=True)
    return r.stdout if capture else ""


def served_sets(run: Path, texts: list[str]) -> list[list[str]]:
    import httpx

    spec = importlib.util.spec_from_file_location("screenshot_serve", ROOT / "scripts" / "screenshot_serve.py")
    shots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shots)
    with shots.serve_subprocess(run) as url:
        results = httpx.post(url + "/v1/classify", json={"texts": texts}, timeout=120).json()["results"]
    return [r["labels"] for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for split, n in (("train", 3000), ("validation", 500), ("test", 1000)):
        ap.add_argument(f"--{split}", type=int, default=n)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/llmclf-multilabel"))
    ap.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more llmclf train options")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    files, labels = write_splits(a)
    run, extra = a.out / "run", [x for x in a.train_args if x != "--"]
    t0 = time.perf_counter()
    llmclf("train", "--train-file", files["train"], "--validation-file", files["validation"], "--test-file",
           files["test"], "--label-columns", ",".join(labels), "--seed", a.seed, "--out", run, "--overwrite", *extra)
    wall = time.perf_counter() - t0
    m = json.loads((run / "metrics.json").read_text())
    ev = json.loads(llmclf("evaluate", run, "--data-file", files["test"], "--label-columns", ",".join(labels), capture=True))
    rows = [json.loads(x) for x in llmclf("predict", run, "--input", files["test"], "--json", capture=True).splitlines()]
    truth = [json.loads(t) for t in __import__("pandas").read_csv(run / "test.csv")["label"]]
    predicted_subset = sum(r["labels"] == t for r, t in zip(rows, truth)) / len(rows)
    served = served_sets(run, [r["text"] for r in rows[:16]])
    t, b = m["test"], m.get("baseline", {}).get("test", {})
    row = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "labels": len(labels), "split": m["num_examples"], "train_args": extra,
           **{k: t[k] for k in ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss")},
           "validation_macro_f1": m["validation"]["macro_f1"], "evaluate_matches": all(
               abs(ev[k] - t[k]) < 1e-9 for k in ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss")),
           "predict_subset_accuracy": predicted_subset, "served_as_predicted": served == [r["labels"] for r in rows[:16]],
           "baseline": {k: b.get(k) for k in ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss")},
           "pooling": (m.get("search") or {}).get("kept"), "train_seconds": m["train_seconds"], "wall_seconds": round(wall, 1)}
    md = (f"| disaster | {len(labels)} | {row['split']['train']}/{row['split']['validation']}/{row['split']['test']} | "
          f"{' '.join(extra) or 'defaults'} | {t['subset_accuracy']:.2%} | {t['micro_f1']:.3f} | {t['macro_f1']:.3f} | "
          f"{t['hamming_loss']:.4f} | {b.get('subset_accuracy', float('nan')):.2%} / {b.get('micro_f1', float('nan')):.3f} / "
          f"{b.get('macro_f1', float('nan')):.3f} | {row['train_seconds']:.0f} s |")
    print(md, json.dumps({k: row[k] for k in ("evaluate_matches", "predict_subset_accuracy", "served_as_predicted")}))
    record.append_row("multilabel", row, md)


if __name__ == "__main__":
    main()
