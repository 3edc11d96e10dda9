"""`llmclf baseline`: classical classifiers on the split `llmclf train` uses, in the experiment's columns."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_baselines_on_the_book_split(tmp_path, sms_file):
    out = tmp_path / "baseline"
    r = run_cli("baseline", "--data-file", sms_file, "--out", out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out / "results.csv").set_index("name")
    assert list(df.index) == ["majority", "tfidf-logreg", "tfidf-nb"]
    assert df.loc["tfidf-logreg", "test_acc"] > 0.9 and df.loc["tfidf-nb", "test_acc"] > 0.9
    assert df.loc["majority", "test_acc"] == pytest.approx(0.5, abs=0.1)  # balanced data
    assert df["train_seconds"].lt(30).all() and df["test_f1"].between(0, 1).all()
    md = (out / "results.md").read_text()
    assert "1045/149/300" in md and "TF-IDF + logistic regression" in md
    assert (out / "accuracy.png").is_file()


def test_train_reports_the_tfidf_baseline_beside_the_run(tiny_run):
    """Every `llmclf train` fits TF-IDF + logistic regression on its own split and records it; the tiny random
    model of the fixture is far below it, so the run must say that the baseline wins on validation."""
    import json

    import pandas as pd

    from llmclf.baseline import beside_run
    from llmclf.data import PreparedData
    m = json.loads((tiny_run / "metrics.json").read_text())
    base = m["baseline"]
    assert base["model"] == "TF-IDF + logistic regression" and base["test"]["accuracy"] > 0.9
    assert base["wins_on_validation"] is (base["validation"]["macro_f1"] > m["validation"]["macro_f1"])
    # the same numbers as fitting it again on the run's own split files
    splits = {s: pd.read_csv(tiny_run / f"{s}.csv", dtype=str, keep_default_na=False) for s in
              ("train", "validation", "test")}
    again = beside_run(PreparedData(**splits, labels=m["labels"], source="", class_counts={}), m["options"]["seed"])
    assert again["test"]["accuracy"] == base["test"]["accuracy"]
    assert again["validation"]["f1"] == base["validation"]["f1"]


def test_no_baseline_leaves_it_out(tmp_path, sms_file):
    import json

    from conftest import GPT2_TOKENIZER_DIR, run_cli
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1", "--no-baseline",
                "--blend", "off", "--data-file", sms_file, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "baseline" not in json.loads((out / "metrics.json").read_text())
    assert "TF-IDF" not in r.stdout + r.stderr


def test_when_a_blend_is_saved_the_verdict_is_about_the_llm_alone(tmp_path, sms_file):
    """TF-IDF beating the tiny random LLM is not TF-IDF beating the saved classifier (the blend weighs both)."""
    import json

    from conftest import GPT2_TOKENIZER_DIR, run_cli
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1", "--blend", "tfidf",
                "--data-file", sms_file, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--out", out,
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["baseline"]["wins_on_validation"]
    line = next(x for x in r.stdout.splitlines() if x.startswith("baseline "))
    assert line.endswith("-- it beats the LLM alone on validation")
    assert "beats the LLM alone on validation; the blend below weighs the two on it" in r.stderr
    assert "the better classifier" not in r.stderr


def test_per_class_scores_are_sklearns_in_label_order():
    import torch
    from sklearn.metrics import precision_recall_fscore_support

    from llmclf.metrics import classification_metrics
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    logits = torch.eye(3)[torch.tensor([0, 1, 1, 1, 2, 0, 2, 0])] * 5  # predicted: 0 1 1 1 2 0 2 0
    m = classification_metrics(logits, y, 3)
    p, r, f, n = precision_recall_fscore_support(y.numpy(), logits.argmax(1).numpy(), labels=[0, 1, 2])
    assert [c["support"] for c in m["per_class"]] == n.tolist() == [3, 2, 3]
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f.tolist())
    assert [c["recall"] for c in m["per_class"]] == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert sum(c["f1"] for c in m["per_class"]) / 3 == pytest.approx(m["macro_f1"])
