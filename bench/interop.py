"""Messages/s of one classifier three ways, one run, same machine, texts, batch size and threads: llmclf (torch),
onnxruntime on `llmclf export --format onnx`, transformers on `llmclf export --format hf`; plus llmclf with
`--backend onnx`. Each is checked against llmclf torch: same labels, largest probability difference.

The classifier: GPT-2 small (124M) with random weights (its pretrained weights cannot be had offline), pooling
last_nonpad, 2 classes, and the first N messages of the SMS file, in file order. With RUN_DIR: that run's
classifier on its own test split (test.csv; transformers is skipped when the HF format cannot hold the classifier,
e.g. mean pooling or a blend). transformers runs twice: the model called on padded batches, and its
`pipeline("text-classification")`.

    python bench/interop.py [--run RUN_DIR] [--texts 300] [--batch-size 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmclf.errors import LlmclfError
from llmclf.export import export_hf, export_onnx
from llmclf.predict import load_classifier, predict_texts, predicted_classes

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared"))


def gpt2_small_run(folder: Path) -> Path:
    from llmclf.artifact import save_classifier
    from llmclf.classifier import TextClassifier
    from llmclf.models import MODELS, build_model
    from llmclf.tokenizer import GPT2Tokenizer

    (folder / "run").mkdir()
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS["gpt2-small"].config), 2, "last_nonpad").eval()
    save_classifier(model, GPT2Tokenizer(SHARED / "tokenizers" / "gpt2"), folder / "run" / "model", labels=["ham", "spam"],
                    max_length=120, model_name="gpt2-small (random weights)")
    return folder / "run"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def onnxruntime_direct(out: Path, texts: list[str], batch: int, threads: int) -> np.ndarray:
    """What a program with only onnxruntime and tokenizers does: batches of `batch` in input order."""
    import json

    import onnxruntime as ort
    from tokenizers import Tokenizer

    card = json.loads((out / "classifier.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])

    def run():
        rows = []
        for i in range(0, len(texts), batch):
            ids = [e.ids[: card["max_length"]] or [card["pad_id"]]
                   for e in tok.encode_batch(texts[i:i + batch], add_special_tokens=False)]
            w = max(map(len, ids))
            feed = {"input_ids": np.array([e + [card["pad_id"]] * (w - len(e)) for e in ids], dtype=np.int64),
                    "attention_mask": np.array([[1] * len(e) + [0] * (w - len(e)) for e in ids], dtype=np.int64)}
            rows.append(sess.run(["probabilities"], feed)[0])
        return np.concatenate(rows)
    run()  # warm-up
    return timed(run)


def transformers_direct(out: Path, texts: list[str], batch: int) -> np.ndarray:
    import transformers
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)

    def run():
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                enc = tok(texts[i:i + batch], padding=True, truncation=True, return_tensors="pt")
                rows.append(model(**enc).logits.softmax(-1).numpy())
        return np.concatenate(rows)
    run()
    return timed(run)


def transformers_pipeline(out: Path, texts: list[str], batch: int, labels: list[str]) -> np.ndarray:
    """What a transformers user does with the export: the text-classification pipeline, every class's score."""
    import transformers
    pipe = transformers.pipeline("text-classification", model=str(out), device="cpu")

    def run():
        rows = pipe(texts, top_k=None, truncation=True, batch_size=batch)
        return np.array([[{d["label"]: d["score"] for d in row}[x] for x in labels] for row in rows])
    run()
    return timed(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path)
    ap.add_argument("--texts", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sms = pd.read_csv(SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection", sep="\t", header=None,
                      names=["label", "text"], quoting=3)
    texts = list(sms.text[: a.texts])
    if a.run is not None and (a.run / "test.csv").is_file():  # the run's own test split
        texts = list(pd.read_csv(a.run / "test.csv", keep_default_na=False).text[: a.texts])
    folder = Path(tempfile.mkdtemp(prefix="llmclf-interop-"))
    run = a.run or gpt2_small_run(folder)
    clf = load_classifier(run, "cpu")
    predict_texts(clf, texts[:16], a.batch_size)
    want, t_torch = timed(lambda: predict_texts(clf, texts, a.batch_size).numpy())
    labels = np.array(predicted_classes(clf, want))
    rows = [("llmclf (torch)", t_torch, want)]
    (onnx_clf, t_export) = timed(lambda: load_classifier(run, "cpu", backend="onnx"))
    predict_texts(onnx_clf, texts[:16], a.batch_size)
    probs, t = timed(lambda: predict_texts(onnx_clf, texts, a.batch_size).numpy())
    rows.append(("llmclf --backend onnx", t, probs))
    try:
        export_onnx(run, folder / "onnx")
        probs, t = onnxruntime_direct(folder / "onnx", texts, a.batch_size, a.threads)
        rows.append(("onnxruntime on the ONNX export", t, probs))
    except LlmclfError as e:
        print(f"onnx export: {e}", file=sys.stderr)
    try:
        export_hf(run, folder / "hf")
        probs, t = transformers_direct(folder / "hf", texts, a.batch_size)
        rows.append(("transformers on the HF export", t, probs))
        probs, t = transformers_pipeline(folder / "hf", texts, a.batch_size, clf.labels)
        rows.append(("transformers pipeline on the HF export", t, probs))
    except LlmclfError as e:
        print(f"hf export: {e}", file=sys.stderr)
    where = " (the run's test split)" if a.run else ""
    print(f"{len(texts)} SMS messages{where}, batch {a.batch_size}, {a.threads} threads, {clf.config['model_name']}; "
          f"first --backend onnx load (export into the cache) {t_export:.1f} s")
    print("| runtime | messages/s | labels as llmclf torch | largest probability difference |")
    print("|---|---:|---:|---:|")
    for name, t, p in rows:
        same = int((np.array(predicted_classes(clf, p)) == labels).sum())
        print(f"| {name} | {len(texts) / t:.1f} | {same}/{len(texts)} | {np.abs(p - want).max():.1e} |")


if __name__ == "__main__":
    main()
