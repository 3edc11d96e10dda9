"""Experiment grids: every option is in effect, tables are written (with the baselines), reruns resume."""

from __future__ import annotations

import re
import time

import pandas as pd
import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli, sms_subset
from llmclf.classifier import TextClassifier, set_trainable
from llmclf.errors import LlmclfError
from llmclf.experiment import duration, run_experiments
from llmclf.metrics import calc_loss_batch
from llmclf.models import MODELS, build_model

SPAM = ["win a free prize now", "claim your cash reward today", "urgent call now to win money",
        "free entry text win to claim", "you have won a prize call now", "cash bonus claim free now txt"]
HAM = ["see you at lunch tomorrow", "are we still on for dinner", "i will call you later tonight",
       "thanks for the book see you", "can you pick up some milk", "running late be there soon"]


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread is as fast, and far faster on a busy CPU


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """60 texts, 2 classes (balanced) and an unbalanced twin (45 ham / 15 spam)."""
    d = tmp_path_factory.mktemp("data")
    rows = [(f"{SPAM[i % 6]} {i}", "spam") for i in range(30)] + [(f"{HAM[i % 6]} {i}", "ham") for i in range(30)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(d / "small.csv", index=False)
    unbalanced = rows[:15] + rows[30:] + [(f"{HAM[i % 6]} again {i}", "ham") for i in range(15)]
    pd.DataFrame(unbalanced, columns=["text", "label"]).to_csv(d / "unbalanced.csv", index=False)
    return d / "small.csv", d / "unbalanced.csv"


def _tiny(arch="gpt2", pooling="last_nonpad", causal=True, trainable="last_block", **lora):
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS[f"{arch}-tiny"].config), 2, pooling, causal)
    return set_trainable(model, trainable, **lora)


# ---------------------------------------------------------------- options in effect (in memory)

def test_class_weights_change_the_loss():
    model = _tiny()
    batch = {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]]), "lengths": torch.tensor([3, 3, 3]),
             "labels": torch.tensor([0, 0, 1])}
    plain = calc_loss_batch(batch, model)
    weighted = calc_loss_batch(batch, model, torch.tensor([0.75, 1.5]))
    assert not torch.isclose(plain, weighted)


# ---------------------------------------------------------------- options in effect (through a grid)

GRID = """
[defaults]
model = "gpt2-tiny"
weights = "random"
pooling = "mean"
epochs = 1
batch_size = 4
lr = 1e-3
eval_freq = 5
eval_iter = 2

{rows}
"""


def _grid(path, rows: str):
    path.write_text(GRID.format(rows=rows))
    return path


def _base(data_file, **kw):
    return {"data_file": str(data_file), "tokenizer_dir": str(GPT2_TOKENIZER_DIR), **kw}


def test_grid_options_reach_training(tmp_path, small_csv):
    small, unbalanced = small_csv
    grid = _grid(tmp_path / "g.toml", """
[[run]]
name = "last-layer"
trainable = "last_layer"
[[run]]
name = "last-block"
trainable = "last_block"
[[run]]
name = "two-blocks"
trainable = "last_two_blocks"
[[run]]
name = "all"
trainable = "all"
[[run]]
name = "lora"
trainable = "lora"
lora_rank = 2
[[run]]
name = "ctx5"
context_length = 5
pooling = "last"
[[run]]
name = "unbal"
data_file = "UNBAL"
balance = false
[[run]]
name = "unbal-cw"
data_file = "UNBAL"
balance = false
class_weights = true
""".replace("UNBAL", str(unbalanced).replace("\\", "/")))
    df = run_experiments(grid=str(grid), out=tmp_path / "out", base=_base(small), log=lambda *_: None)
    df = df.set_index("name")
    d = MODELS["gpt2-tiny"].config.emb_dim
    head, norm = d * 2 + 2, 2 * d
    block = 12 * d * d + 13 * d
    p = df["trainable_parameters"].astype(int)
    assert p["last-layer"] == head
    assert p["last-block"] == head + norm + block
    assert p["two-blocks"] == head + norm + 2 * block
    assert p["all"] > 10 * p["two-blocks"]  # embeddings too
    lora_adapters = 2 * 2 * (4 * (d + d) + (d + 4 * d) + (4 * d + d))  # 2 blocks, rank 2: 6 linears each
    assert p["lora"] == head + norm + lora_adapters
    # context_length 5 truncates every text
    metrics = pd.read_json(tmp_path / "out" / "runs" / "ctx5" / "metrics.json", typ="series")
    assert metrics["max_length"] == 5 and df.loc["ctx5", "context_length"].startswith("5")
    # class weights change the training loss on unbalanced data (same data, same seed otherwise)
    h1 = pd.read_csv(tmp_path / "out" / "runs" / "unbal" / "history.csv")["train_loss"].dropna()
    h2 = pd.read_csv(tmp_path / "out" / "runs" / "unbal-cw" / "history.csv")["train_loss"].dropna()
    assert len(h1) and (h1.values != h2.values).any()
    assert "class-weighted" in df.loc["unbal-cw", "notes"] and "unbalanced" in df.loc["unbal", "notes"]


def test_rows_with_the_same_frozen_prefix_share_one_cache_and_get_a_lone_runs_results(tmp_path, small_csv):
    """Two rows that differ only in the loss: the second reuses the first's frozen-prefix cache, and its
    history and metrics equal those of the same row run alone (which computes its own cache)."""
    small, unbalanced = small_csv
    rows = """
[[run]]
name = "unbal-cw"
data_file = "UNBAL"
balance = false
class_weights = true
""".replace("UNBAL", str(unbalanced).replace("\\", "/"))
    plain = '[[run]]\nname = "unbal"\nbalance = false\ndata_file = "UNBAL"\n'.replace(
        "UNBAL", str(unbalanced).replace("\\", "/"))
    pair = _grid(tmp_path / "pair.toml", plain + rows)
    alone = _grid(tmp_path / "alone.toml", rows)
    run_experiments(grid=str(pair), out=tmp_path / "pair", base=_base(small), log=lambda *_: None)
    run_experiments(grid=str(alone), out=tmp_path / "alone", base=_base(small), log=lambda *_: None)
    read = lambda d, n: pd.read_json(tmp_path / d / "runs" / n / "metrics.json", typ="series")
    assert not read("pair", "unbal")["cache_reused"] and not read("alone", "unbal-cw")["cache_reused"]
    assert read("pair", "unbal-cw")["cache_reused"]
    notes = pd.read_csv(tmp_path / "pair" / "results.csv").set_index("name")["notes"]
    assert "cache reused" in notes["unbal-cw"] and "cache reused" not in notes["unbal"]
    shared, lone = read("pair", "unbal-cw"), read("alone", "unbal-cw")
    for split in ("train", "validation", "test"):
        assert shared[split]["accuracy"] == lone[split]["accuracy"]
        assert shared[split]["loss"] == pytest.approx(lone[split]["loss"], abs=1e-6)
    h_shared = pd.read_csv(tmp_path / "pair" / "runs" / "unbal-cw" / "history.csv")
    h_lone = pd.read_csv(tmp_path / "alone" / "runs" / "unbal-cw" / "history.csv")
    pd.testing.assert_frame_equal(h_shared, h_lone, atol=1e-6, rtol=0)


def test_two_row_grid_writes_tables_and_rerun_skips_finished_rows(tmp_path, small_csv):
    small, _ = small_csv
    grid = _grid(tmp_path / "g.toml", """
[[run]]
name = "block"
pooling = "auto"
[[run]]
name = "lora"
trainable = "lora"
""")
    out = tmp_path / "exp"
    args = ["experiment", "--grid", grid, "--out", out, "--data-file", small, "--tokenizer-dir", GPT2_TOKENIZER_DIR]
    r = run_cli(*args, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    for f in ("results.csv", "results.md", "accuracy.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    df = pd.read_csv(out / "results.csv")
    assert list(df["name"]) == ["block", "lora"]
    assert df["test_acc"].between(0, 1).all() and df["train_seconds"].gt(0).all()
    md = (out / "results.md").read_text()
    assert "| Trainable token |" in md and "![test accuracy per configuration](accuracy.png)" in md
    mtimes = {n: (out / "runs" / n / "metrics.json").stat().st_mtime_ns for n in ("block", "lora")}

    # an interrupted row (directory without metrics.json) is redone; finished rows are read back
    (out / "runs" / "lora" / "metrics.json").unlink()
    messages = []
    run_experiments(grid=str(grid), out=out, base=_base(small), log=messages.append)
    assert any("block: finished earlier" in m for m in messages), messages
    assert any("lora: incomplete" in m for m in messages) and any("lora: training" in m for m in messages)
    assert (out / "runs" / "block" / "metrics.json").stat().st_mtime_ns == mtimes["block"]
    assert (out / "runs" / "lora" / "metrics.json").is_file()

    t0 = time.perf_counter()
    messages = []
    df2 = run_experiments(grid=str(grid), out=out, base=_base(small), log=messages.append)
    assert time.perf_counter() - t0 < 5
    # read back in seconds, yet the summary states what the rows cost to train: their times summed
    total = duration(df2["train_seconds"].sum())
    assert total and f"rows, {total} of training in all" in messages[-1], messages[-1]
    assert f"Training time of these rows, all together: {total}." in (out / "results.md").read_text()
    assert (out / "runs" / "block" / "metrics.json").stat().st_mtime_ns == mtimes["block"]
    assert list(df2["name"]) == ["block", "lora"]
    pd.testing.assert_series_equal(df2["test_acc"], pd.read_csv(out / "results.csv")["test_acc"], check_dtype=False)

    # a row whose options changed is retrained; the others are still read back
    grid.write_text(grid.read_text().replace('trainable = "lora"', 'trainable = "lora"\nlora_rank = 2'))
    messages = []
    df3 = run_experiments(grid=str(grid), out=out, base=_base(small), log=messages.append)
    assert any("lora: incomplete or other options" in m for m in messages), messages
    assert (out / "runs" / "block" / "metrics.json").stat().st_mtime_ns == mtimes["block"]
    assert df3.set_index("name").loc["lora", "trainable_layers"].startswith("LoRA (r=2,")


def test_grid_errors_are_one_line(tmp_path, small_csv):
    small, _ = small_csv
    grid = _grid(tmp_path / "g.toml", '[[run]]\nname = "x"\ntrainable_layers = "all"\n')
    r = run_cli("experiment", "--grid", grid, "--out", tmp_path / "o", "--data-file", small, env=ONE_THREAD)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    err = [x for x in r.stderr.strip().splitlines() if x.startswith("llmclf: error:")]
    assert len(err) == 1 and "unknown key 'trainable_layers'" in err[0], r.stderr
    assert not (tmp_path / "o" / "runs").exists()

    for body, fragment in [('[defaults]\nepoch = 1\n[[run]]\nname = "a"\n', "unknown key 'epoch'"),
                           ('[[run]]\nname = "a"\nepochs = "two"\n', "epochs must be an integer"),
                           ('[[run]]\nname = "a"\n[[run]]\nname = "a"\n', "duplicate name"),
                           ('[[run]]\nname = "a"\npooling = "max"\n', "pooling must be one of"),
                           ('[[run]]\nname = "../a"\n', "name must be"),
                           ("[defaults]\nepochs = 1\n", "no rows"),
                           ("[[run]\n", "not valid TOML")]:
        (tmp_path / "bad.toml").write_text(body)
        with pytest.raises(LlmclfError, match=re.escape(fragment)):
            run_experiments(grid=str(tmp_path / "bad.toml"), out=tmp_path / "o2", base=_base(small))
    assert not (tmp_path / "o2").exists()


def test_book_table_preset_rows_map_to_options():
    from llmclf.experiment import BOOK_TABLE, book_table
    defaults, rows, skipped, _ = book_table({"model": "gpt2-tiny"}, device="cpu")
    assert defaults["pooling"] == "last" and defaults["trainable"] == "last_block"
    assert defaults["weights"] == "random"  # gpt2-tiny has no pretrained weights
    by_name = {r["name"]: r for r in rows}
    assert by_name["first-token"]["pooling"] == "first"
    assert by_name["lora"]["trainable"] == "lora" and by_name["lora"]["lora_rank"] == 16
    assert by_name["no-causal-mask"]["causal"] is False
    assert by_name["no-padding-batch-1-accum-8"]["grad_accum"] == 8
    assert by_name["model-context-length"]["context_length"] == "model"  # 256 <= the CPU cap
    skipped_names = {s["name"] for s in skipped}
    assert {"gpt2-medium", "gpt2-large", "gpt2-xl", "ignore-index", "random-weights-all-layers"} <= skipped_names
    assert len(rows) + len(skipped) == len(BOOK_TABLE)
    assert all(s["skip"] for s in skipped)


def test_book_table_preset_runs_selected_rows_with_baselines(tmp_path, small_csv):
    small, _ = small_csv
    out = tmp_path / "book"
    df = run_experiments(preset="book-table", out=out, base=_base(small, model="gpt2-tiny", epochs=1),
                         only=["default", "first-token"], log=lambda *_: None)
    assert list(df["name"]) == ["default", "first-token", "majority", "tfidf-logreg", "tfidf-nb"]
    assert list(df["kind"]) == ["finetune"] * 2 + ["baseline"] * 3
    assert list(df["trainable_token"][:2]) == ["last", "first"]
    md = (out / "results.md").read_text()
    assert "1 (book 1)" in md and "## Rows not run" in md and "gpt2-xl" in md and "ignore-index" in md
    assert "- last-layer (book row 3): not run yet" in md
    assert (out / "baseline" / "results.csv").is_file() and (out / "accuracy.png").is_file()
    # a later call with other rows runs just those; the rows finished before stay in the table
    df2 = run_experiments(preset="book-table", out=out, base=_base(small, model="gpt2-tiny", epochs=1),
                          only=["last-layer"], log=lambda *_: None)
    assert list(df2["name"][:3]) == ["default", "first-token", "last-layer"]
    assert list(df2["test_acc"][:2]) == list(df["test_acc"][:2])  # read back, not rerun
    md = (out / "results.md").read_text()
    assert "not run yet" in md and "- last-layer (book row 3)" not in md

    # while a row trains, results.csv already lists every finished row, those after it in the table included
    (out / "runs" / "default" / "metrics.json").unlink()
    seen = []

    def log(msg):
        if msg.endswith("default: training"):
            seen.append(list(pd.read_csv(out / "results.csv")["name"]))

    df3 = run_experiments(preset="book-table", out=out, base=_base(small, model="gpt2-tiny", epochs=1),
                          only=["default"], log=log)
    assert seen == [["first-token", "last-layer", "majority", "tfidf-logreg", "tfidf-nb"]]
    assert list(df3["name"][:3]) == ["default", "first-token", "last-layer"]


def test_ctrl_c_during_a_row_exits_130_and_a_rerun_continues(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    grid = tmp_path / "g.toml"
    grid.write_text('[defaults]\nmodel = "gpt2-tiny"\nweights = "random"\npooling = "mean"\nepochs = 2\nbatch_size = 1\n'
                    'checkpoint_every = 25\n\n[[run]]\nname = "slow"\n')
    out = tmp_path / "out"
    args = [sys.executable, "-m", "llmclf", "experiment", "--grid", str(grid), "--out", str(out),
            "--data-file", str(sms_subset(tmp_path, 100)), "--tokenizer-dir", str(GPT2_TOKENIZER_DIR)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **ONE_THREAD})
    ckpt = out / "runs" / "slow" / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "checkpoint" in err and "Traceback" not in err
    r = run_cli(*args[3:], env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert (out / "runs" / "slow" / "metrics.json").is_file()
