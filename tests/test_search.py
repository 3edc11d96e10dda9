"""--recipe auto: candidates trained on one split with one frozen-prefix cache, the best on validation kept."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.outdir import MARKER
from llmclf.search import CANDIDATES

SPAM = ["win a free prize now", "claim your cash reward today", "urgent call to claim prize",
        "free entry text win to claim", "you have won a prize call now", "cash bonus claim free now txt"]
HAM = ["see you at lunch tomorrow", "are we still on for dinner", "i will call you later tonight",
       "thanks for the book see you", "can you pick up some milk", "running late be there soon"]
AUTO = ["train", "--recipe", "auto", "--model", "gpt2-tiny", "--weights", "random", "--tokenizer-dir",
        GPT2_TOKENIZER_DIR, "--epochs", "1", "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    rows = [(f"{SPAM[i % 6]} {i}", "spam") for i in range(40)] + [(f"{HAM[i % 6]} {i}", "ham") for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


def test_auto_keeps_the_best_candidate_on_validation_and_lists_them_all(tmp_path, small_csv):
    out = tmp_path / "run"
    r = run_cli(*AUTO, "--data-file", small_csv, "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(out / "search.csv")
    assert list(table["candidate"]) == list(CANDIDATES)
    best = table.loc[table["validation_macro_f1"].idxmax()]  # first of the ties: the order tried
    assert table["chosen"].sum() == 1 and table.loc[table["chosen"], "candidate"].item() == best["candidate"]
    assert not table["cache_reused"].iloc[0] and table["cache_reused"].iloc[1:].all()  # one frozen pass
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["search"]["chosen"] == best["candidate"] and metrics["options"]["recipe"] == "auto"
    chosen_lr = 1e-3 * {"lr_x3": 3, "lr_div3": 1 / 3}.get(best["candidate"], 1)
    assert metrics["options"]["lr"] == pytest.approx(chosen_lr) and best["lr"] == pytest.approx(chosen_lr)
    assert not (out / "search").exists() and (out / MARKER).is_file()
    assert {"model", "train.csv", "history.csv", "errors.csv"} <= {p.name for p in out.iterdir()}
    p = run_cli("predict", out, "claim your free prize now", "--json")
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[0])["label"] in ("spam", "ham")


def test_auto_stops_starting_candidates_when_its_time_is_up(tmp_path, small_csv):
    out = tmp_path / "run"
    r = run_cli(*AUTO[:-1], "--search-minutes", "0.0001", "--data-file", small_csv, "--out", out,
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert list(pd.read_csv(out / "search.csv")["candidate"]) == ["default"]
    assert f"{len(CANDIDATES) - 1} candidate(s) not tried" in r.stderr


def test_auto_with_a_bad_input_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly one,a\n")
    out = tmp_path / "run"
    r = run_cli(*AUTO, "--data-file", bad, "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("llmclf: error: ") and "two classes" in r.stderr
    assert not out.exists()


def test_auto_refuses_torchrun_before_writing(tmp_path, monkeypatch):
    from llmclf.errors import LlmclfError
    from llmclf.options import FinetuneOptions
    from llmclf.search import auto_recipe
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for two processes
    out = tmp_path / "run"
    with pytest.raises(LlmclfError, match="--recipe auto runs in one process"):
        auto_recipe(FinetuneOptions(out=str(out), recipe="auto", model="gpt2-tiny", weights="random"))
    assert not out.exists()
