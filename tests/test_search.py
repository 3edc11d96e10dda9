"""--recipe auto: candidates trained on one split with one frozen-prefix cache, the best on validation kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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


def _spam_csv(folder, n: int):
    """n spam and n ham texts, numbered so that every text is distinct."""
    rows = [(f"{SPAM[i % 6]} {i}", "spam") for i in range(n)] + [(f"{HAM[i % 6]} {i}", "ham") for i in range(n)]
    path = folder / f"spam{n}.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    return _spam_csv(tmp_path_factory.mktemp("data"), 40)


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


# ---------------------------------------------------------------- --pooling auto (the default)

TINY = ["train", "--model", "gpt2-tiny", "--weights", "random", "--tokenizer-dir", GPT2_TOKENIZER_DIR,
        "--epochs", "1", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def longer_csv(tmp_path_factory):
    """120 texts: with batch 1, each pooling's run takes 84 steps, long enough to interrupt at step 40."""
    return _spam_csv(tmp_path_factory.mktemp("data"), 60)


def _choice(out):
    return pd.read_csv(out / "search.csv"), json.loads((out / "metrics.json").read_text())


def test_default_pooling_trains_both_and_keeps_the_better_on_validation(tmp_path, small_csv):
    from llmclf.search import POOLING_CANDIDATES
    out = tmp_path / "run"
    r = run_cli(*TINY, "--data-file", small_csv, "--out", out, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    table, metrics = _choice(out)
    assert list(table["candidate"]) == list(POOLING_CANDIDATES) == ["mean", "last_nonpad"]
    best = table.loc[table["validation_macro_f1"].idxmax()]  # first of the ties: mean
    assert table.loc[table["chosen"], "candidate"].item() == best["candidate"]
    assert not table["cache_reused"].iloc[0] and table["cache_reused"].iloc[1]  # one frozen pass for both
    assert metrics["search"]["what"] == "pooling" and metrics["search"]["chosen"] == best["candidate"]
    assert metrics["options"]["pooling"] == "auto"  # what was asked; the model's config says what it came to
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["pooling"] == best["candidate"]  # the classifier saved is the chosen one
    assert not (out / "search").exists() and not (out / "search.json").exists()
    assert f"pooling auto: kept {best['candidate']}" in r.stderr


def test_an_interrupted_choice_resumes_where_it_stopped(tmp_path, longer_csv):
    """Ctrl-C in the second pooling's run: the first's result and the second's checkpoint are kept, and
    --resume finishes the choice with the numbers an uninterrupted choice gives."""
    args = [*TINY, "--batch-size", "1", "--checkpoint-every", "20", "--eval-freq", "20", "--data-file", longer_csv]
    full = tmp_path / "full"
    assert run_cli(*args, "--out", full).returncode == 0
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "llmclf", *map(str, args), "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = ""
    for line in proc.stderr:
        seen += line
        if "pooling auto 2/2: last_nonpad" in seen and "(Step 000040)" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, seen + rest
    assert f"continue with: llmclf train --resume {out}" in rest and "Traceback" not in rest
    assert (out / "search" / "mean" / "metrics.json").is_file()
    assert (out / "search" / "last_nonpad" / "checkpoint.safetensors").is_file() and (out / "search.json").is_file()

    r = run_cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr
    (got, m_got), (want, m_want) = _choice(out), _choice(full)
    assert list(got["candidate"]) == list(want["candidate"])
    assert got["validation_macro_f1"].tolist() == pytest.approx(want["validation_macro_f1"].tolist(), abs=1e-9)
    assert m_got["search"]["chosen"] == m_want["search"]["chosen"]
    assert m_got["test"]["loss"] == pytest.approx(m_want["test"]["loss"], abs=1e-6)
    assert run_cli("train", "--resume", out).returncode == 2  # complete now: nothing to resume


def test_explicit_pooling_trains_once(tmp_path, small_csv):
    out = tmp_path / "run"
    r = run_cli(*TINY, "--pooling", "last_nonpad", "--data-file", small_csv, "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert "search" not in metrics and not (out / "search.csv").exists()
    assert json.loads((out / "model" / "config.json").read_text())["pooling"] == "last_nonpad"


def test_finetune_alone_refuses_the_choice_and_names_the_entry_point(tmp_path):
    from llmclf.errors import LlmclfError
    from llmclf.finetune import finetune
    from llmclf.options import FinetuneOptions
    out = tmp_path / "run"
    with pytest.raises(LlmclfError, match=r"llmclf\.search\.train"):
        finetune(FinetuneOptions(out=str(out), model="gpt2-tiny", weights="random"))
    assert not out.exists()
