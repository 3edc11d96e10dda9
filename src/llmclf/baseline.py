"""`llmclf baseline`: classical classifiers on exactly the split `llmclf train` uses.

A fine-tuned LLM's accuracy means little without a floor to compare it with. Three floors, each fitted
on the training split only (TF-IDF vocabulary and idf included) and scored on all three splits:

- majority class: always predicts the most frequent training label (50% on the book's balanced data);
- TF-IDF + logistic regression (word 1-2-grams, sublinear tf);
- TF-IDF + multinomial naive Bayes (same features).

The table (results.csv, results.md, accuracy.png) has the columns of `llmclf experiment`'s, so the two
can be read side by side; `llmclf experiment` appends OUT/baseline/results.csv to its own table when
it finds one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .blend import class_probabilities
from .data import load_data, targets_of
from .decision import choose_label_thresholds
from .errors import LlmclfError
from .metrics import classification_metrics, multilabel_metrics
from .options import DATA_KEYS, FinetuneOptions, check_options
from .outdir import check_output_dir, prepare_output_dir
from .report import write_results



def _data_options(data: dict):
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise LlmclfError(f"unknown data option {unknown[0]!r} (known: {', '.join(DATA_KEYS)})")
    return check_options(FinetuneOptions(out="", **{k: v for k, v in data.items() if v is not None}))


def probability_metrics(probs: np.ndarray, y: np.ndarray, num_classes: int, with_curves: bool = False) -> dict:
    """classification_metrics of class probabilities (not logits): softmax(log p) == p."""
    logits = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0))).float()
    return classification_metrics(logits, torch.from_numpy(y).long(), num_classes, with_curves=with_curves)


def _models(seed: int):
    # scikit-learn is heavy and needed only to fit: imported here, not when the module is
    from sklearn.dummy import DummyClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    def tfidf():
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)

    return [
        ("majority", "majority class", DummyClassifier(strategy="prior")),
        ("tfidf-logreg", "TF-IDF + logistic regression",
         make_pipeline(tfidf(), LogisticRegression(C=10.0, max_iter=2000, random_state=seed))),
        ("tfidf-nb", "TF-IDF + multinomial naive Bayes", make_pipeline(tfidf(), MultinomialNB(alpha=0.1))),
    ]


def _fitted_parameters(model) -> int:
    est = model.steps[-1][1] if hasattr(model, "steps") else model
    if hasattr(est, "coef_"):
        return int(est.coef_.size + np.size(est.intercept_))
    if hasattr(est, "feature_log_prob_"):
        return int(est.feature_log_prob_.size + est.class_log_prior_.size)
    return int(np.size(getattr(est, "class_prior_", 0)))


def beside_run(prepared, seed: int, keep: bool = False):
    """TF-IDF + logistic regression fitted on a run's training split and scored on its validation and test
    splits: the floor `llmclf train` reports beside every run. `keep`: also return what the blend needs,
    {"pipeline": the fitted model, "validation"/"test": (probabilities, targets)}."""
    _, title, model = _models(seed)[1]
    index = {name: i for i, name in enumerate(prepared.labels)}
    t0 = time.perf_counter()
    model.fit(prepared.train["text"].astype(str).tolist(), [index[v] for v in prepared.train["label"]])
    result, kept = {"model": title, "seconds": 0.0}, {"pipeline": model}
    for split in ("validation", "test"):
        df = getattr(prepared, split)
        probs = class_probabilities(model, df["text"], len(index))
        targets = np.array([index[v] for v in df["label"]], dtype=np.int64)
        result[split] = probability_metrics(probs, targets, len(index)) if len(df) else {}
        kept[split] = (probs, targets)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return (result, kept) if keep else result


def beside_multilabel_run(prepared, seed: int) -> dict:
    """beside_run for label sets: TF-IDF + one logistic regression per label (one-vs-rest), each label's threshold
    chosen on validation as the run's are (a label no training text carries is never predicted)."""
    from sklearn.multiclass import OneVsRestClassifier

    t0 = time.perf_counter()
    pipeline = _models(seed)[1][2]
    y = np.array(targets_of(prepared.train, prepared.labels)) > 0.5
    fitted = {j: y[:, j] for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)}  # a constant label: no fit
    pipeline.steps[-1] = ("ovr", OneVsRestClassifier(pipeline.steps[-1][1]))
    pipeline.fit(prepared.train["text"].astype(str).tolist(), np.stack(list(fitted.values()), 1).astype(int))
    probs, constant = {}, [j for j in range(y.shape[1]) if j not in fitted]
    for split in ("validation", "test"):
        df = getattr(prepared, split)
        p = np.zeros((len(df), len(prepared.labels)))
        if len(df):
            p[:, list(fitted)] = pipeline.predict_proba(df["text"].astype(str).tolist())
            p[:, constant] = y.mean(0)[constant]
        probs[split] = (p, np.array(targets_of(df, prepared.labels)).reshape(len(df), -1))
    thresholds = choose_label_thresholds(*probs["validation"]) if len(prepared.validation) else None
    result = {"model": "TF-IDF + logistic regression per label", "thresholds": thresholds}
    for split, (p, t) in probs.items():
        result[split] = multilabel_metrics(p, t, thresholds) if len(t) else {}
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def run_baselines(out, data: dict | None = None, log=None, overwrite: bool = False) -> list[dict]:
    """Fit the three baselines on the split `llmclf train` would use for these data options; write
    OUT/results.csv, OUT/results.md and OUT/accuracy.png; return the table rows (dicts). An existing OUT is
    replaced only with `overwrite`, and only if llmclf wrote it (see outdir.py)."""
    log = log or (lambda msg: None)
    opts = _data_options(data or {})
    check_output_dir(Path(out), "baseline", overwrite)
    prepared = load_data(opts)
    index = {name: i for i, name in enumerate(prepared.labels)}
    splits = {s: getattr(prepared, s) for s in ("train", "validation", "test")}
    X = {s: df["text"].astype(str).tolist() for s, df in splits.items()}
    y = {s: np.array([index[v] for v in df["label"]], dtype=np.int64) for s, df in splits.items()}
    k = len(prepared.labels)

    rows = []
    for name, title, model in _models(opts.seed):
        t0 = time.perf_counter()
        model.fit(X["train"], y["train"])
        seconds = time.perf_counter() - t0
        m = {}
        for s in splits:
            if len(y[s]) == 0:
                m[s] = {}
                continue
            m[s] = probability_metrics(class_probabilities(model, X[s], k), y[s], k)
        rows.append({
            "name": name, "kind": "baseline", "model": title, "weights": "-", "trainable_token": "-",
            "trainable_layers": "-", "context_length": "-",
            "train_acc": m["train"].get("accuracy"), "validation_acc": m["validation"].get("accuracy"),
            "test_acc": m["test"].get("accuracy"), "test_f1": m["test"].get("f1"),
            "trainable_parameters": _fitted_parameters(model), "train_seconds": round(seconds, 3),
            "notes": "", "run_dir": "",
        })
        log(f"{title}: test accuracy {m['test'].get('accuracy', float('nan')) * 100:.2f}% ({seconds:.2f}s)")

    f1_kind = "F1 of the positive class" if k == 2 else "macro F1"
    intro = (f"Data: {prepared.source}; class counts {prepared.class_counts}; "
             f"{'balanced (undersampled), ' if opts.balance else 'unbalanced, '}"
             f"split {len(splits['train'])}/{len(splits['validation'])}/{len(splits['test'])} "
             f"(seed {opts.seed}), the split `llmclf train` uses with the same data options. "
             f"Labels: {', '.join(prepared.labels)}; test F1 is the {f1_kind}"
             f"{' (' + prepared.labels[1] + ')' if k == 2 else ''}.")
    prepare_output_dir(Path(out), "baseline", overwrite)
    write_results(Path(out), rows, title="Baselines", intro=intro)
    return rows
