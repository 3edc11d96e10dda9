"""What `llmclf experiment --preset book-table` writes per row: the size of each row's model/, compact (the
default) and standalone (--standalone), for a real backbone.

A model/'s size depends only on which tensors train (compact: those, plus the tokenizer and config; standalone:
every tensor), not on what training made of them. So each row's classifier is built as `llmclf train` builds
it (the row's options on the book's defaults) and saved both ways as training saves it, without the hours of
training the table takes on a CPU. The totals are what the table's runs/ folders hold in model/.

    python bench/book_table_sizes.py [--model smollm2-135m-instruct-q4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

from llmclf.artifact import save_classifier
from llmclf.compact import base_identity
from llmclf.experiment.preset import BOOK_DEFAULTS, BOOK_TABLE
from llmclf.finetune import build_classifier
from llmclf.options import FinetuneOptions


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir()) / 1e6


def row_sizes(name: str, options: dict, model: str, tmp: Path) -> tuple[float, float]:
    """(compact MB, standalone MB) of the row's model/."""
    known = {f.name for f in fields(FinetuneOptions)}
    opts = FinetuneOptions(**{k: v for k, v in {**BOOK_DEFAULTS, **options}.items() if k in known}, model=model)
    clf, tokenizer, model_name = build_classifier(opts, ["ham", "spam"])
    sizes = []
    for base in (base_identity(opts.model, opts.weights), None):
        out = tmp / name / "model"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_classifier(clf, tokenizer, out, labels=["ham", "spam"], max_length=120, model_name=model_name, base=base)
        sizes.append(size_mb(out))
        shutil.rmtree(out.parent)
    return sizes[0], sizes[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct-q4")
    model = ap.parse_args().model
    rows, total = [], [0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        for number, name, options, skip, _note in BOOK_TABLE:
            if skip is None:
                compact, whole = row_sizes(name, options, model, Path(tmp))
                rows.append((number, name, compact, whole))
                total = [total[0] + compact, total[1] + whole]
    print(f"book-table rows, {model}: model/ per row")
    print("| book row | name | compact (default) MB | standalone MB |\n|---|---|---:|---:|")
    for number, name, compact, whole in rows:
        print(f"| {number or ''} | {name} | {compact:.1f} | {whole:.1f} |")
    print(f"| | all {len(rows)} rows | {total[0]:.1f} | {total[1]:.1f} |")


if __name__ == "__main__":
    main()
