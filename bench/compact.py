"""A compact classifier against its standalone form, on a real run (default: the README main job's runs/spam).

Loads RUN_DIR/model (compact: the trained tensors + the base weights' sha256), writes the same classifier
standalone (every tensor) into a temp folder, and runs both over the run's test split: the probabilities must
be identical, bit for bit. Prints the size of each model/ and the time each takes to load.

    llmclf train --out runs/spam --overwrite
    python bench/compact.py [runs/spam]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from llmclf.artifact import save_classifier
from llmclf.predict import load_classifier, predict_texts, predicted_classes


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir()) / 1e6


def timed_predictions(path: Path, texts: list[str]):
    t0 = time.perf_counter()
    clf = load_classifier(path, "cpu")
    load_s = time.perf_counter() - t0
    probs = predict_texts(clf, texts)
    return clf, load_s, probs, predicted_classes(clf, probs)


def standalone_copy(clf, out: Path) -> Path:
    """The loaded classifier saved with every tensor (nothing of it requires grad, so no base is used)."""
    cfg = clf.config
    save_classifier(clf.model, clf.tokenizer, out, labels=cfg["labels"], max_length=cfg["max_length"],
                    model_name=cfg["model_name"], blend=clf.blend,
                    extra={k: cfg[k] for k in ("train_metrics", "decision") if k in cfg})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/spam")
    run = Path(ap.parse_args().run)
    texts = pd.read_csv(run / "test.csv", keep_default_na=False)["text"].astype(str).tolist()
    compact, compact_s, p1, y1 = timed_predictions(run, texts)
    if "base" not in compact.config:
        raise SystemExit(f"{run}/model is standalone already (trained with --standalone or random weights)")
    with tempfile.TemporaryDirectory() as tmp:
        whole = standalone_copy(compact, Path(tmp) / "model")
        _, whole_s, p2, y2 = timed_predictions(whole, texts)
        rows = [("compact (default)", size_mb(run / "model"), compact_s),
                ("standalone (--standalone)", size_mb(whole), whole_s)]
    print(f"{run}: {len(texts)} test texts; base {compact.config['base']['model']}")
    print("| model/ | size MB | load s |\n|---|---:|---:|")
    for name, mb, s in rows:
        print(f"| {name} | {mb:.1f} | {s:.1f} |")
    same = torch.equal(p1, p2) and y1 == y2
    print(f"probabilities identical: {torch.equal(p1, p2)}; labels identical: {y1 == y2}")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
