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
