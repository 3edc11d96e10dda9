"""Reliability: a run killed with SIGKILL resumes to the same result; Ctrl-C saves and stops cleanly;
tampered weights are refused; the same seed gives the same metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from safetensors import safe_open

from conftest import GPT2_TOKENIZER_DIR, run_cli, sms_subset

# 200 spam and 200 ham messages at batch 1 make 280 optimizer steps an epoch: long enough to interrupt mid-epoch.
ARGS = ["--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "2", "--batch-size", "1", "--lr", "1e-4",
        "--tokenizer-dir", str(GPT2_TOKENIZER_DIR), "--checkpoint-every", "25", "--eval-freq", "50"]


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "llmclf", "train", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(proc, marker):
    for line in proc.stderr:
        if marker in line:
            return True
    return False


def _metrics(run):
    m = json.loads((run / "metrics.json").read_text())
    return {s: {k: m[s][k] for k in ("accuracy", "loss", "f1")} for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def sms400(tmp_path_factory):
    return sms_subset(tmp_path_factory.mktemp("data"), 200)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, sms400):
    out = tmp_path_factory.mktemp("ckpt") / "full"
    r = run_cli("train", *ARGS, "--data-file", sms400, "--out", out)
    assert r.returncode == 0, r.stderr
    assert not (out / "checkpoint.safetensors").exists()  # removed once the run is complete
    return out


def test_sigkill_mid_epoch_then_resume_gives_the_same_result(tmp_path, sms400, uninterrupted):
    out = tmp_path / "killed"
    proc = _start([*ARGS, "--data-file", sms400, "--out", out])
    assert _wait_for(proc, "Ep 2 (Step 000400)"), "training ended before the kill point"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoint.safetensors").is_file() and not (out / "metrics.json").exists()

    r = run_cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert "resuming at epoch 2" in r.stderr
    # CPU, same seed: the resumed run reproduces the uninterrupted one to float precision.
    got, want = _metrics(out), _metrics(uninterrupted)
    for split in want:
        for k in want[split]:
            assert got[split][k] == pytest.approx(want[split][k], abs=1e-6), (split, k)
    h1, h2 = pd.read_csv(out / "history.csv"), pd.read_csv(uninterrupted / "history.csv")
    assert len(h1) == len(h2)
    assert (h1.fillna(-1)[["epoch", "step", "examples_seen"]] == h2.fillna(-1)[["epoch", "step", "examples_seen"]]).all().all()
    assert (h1.fillna(-1)[["train_loss", "val_loss"]] - h2.fillna(-1)[["train_loss", "val_loss"]]).abs().max().max() < 1e-6


def test_ctrl_c_saves_a_checkpoint_and_stops_cleanly(tmp_path, sms400):
    out = tmp_path / "interrupted"
    proc = _start([*ARGS, "--epochs", "1", "--data-file", sms400, "--out", out])
    assert _wait_for(proc, "(Step 000100)")
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 130, rest
    assert "checkpoint saved" in rest and "--resume" in rest and "Traceback" not in rest
    assert (out / "checkpoint.safetensors").is_file()
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        before = json.loads(f.metadata()["state"])["seconds"]
    assert before > 0
    t0 = time.perf_counter()
    r = run_cli("train", "--resume", out)
    resumed_wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    # train_seconds counts the time before the interrupt too, not just the resumed process's
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_seconds_before_resume"] == pytest.approx(before, abs=1e-3)
    assert before < m["train_seconds"] < before + resumed_wall
    r = run_cli("train", "--resume", out)
    assert r.returncode == 2 and "already complete" in r.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_weights_are_refused(tmp_path, tiny_run, damage):
    import shutil

    from llmclf.errors import LlmclfError
    from llmclf.predict import load_classifier
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "model", run / "model")
    w = run / "model" / "model.safetensors"
    data = bytearray(w.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 100]
    w.write_bytes(bytes(data))
    with pytest.raises(LlmclfError, match="sha256 does not match"):
        load_classifier(run, "cpu")
    r = run_cli("predict", run, "hello")
    assert r.returncode == 2 and "sha256 does not match" in r.stderr and "Traceback" not in r.stderr


def test_config_that_disagrees_with_the_tensors_is_refused(tmp_path, tiny_run):
    import shutil

    from llmclf.errors import LlmclfError
    from llmclf.predict import load_classifier
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "model", run / "model")
    cfg = json.loads((run / "model" / "config.json").read_text())
    cfg["backbone"]["emb_dim"] = 128
    (run / "model" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match="field .backbone. does not match the manifest"):
        load_classifier(run, "cpu")
    cfg["schema_version"] = 99
    (run / "model" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match="schema_version"):
        load_classifier(run, "cpu")


def test_same_seed_gives_identical_metrics(tmp_path, sms400, uninterrupted):
    out = tmp_path / "again"
    r = run_cli("train", *ARGS, "--data-file", sms400, "--out", out)
    assert r.returncode == 0, r.stderr
    assert _metrics(out) == _metrics(uninterrupted)


# --keep best on an overfitting run: every weight trains at a constant high rate on a small split.
BEST = ["--model", "gpt2-tiny", "--pooling", "mean",
        "--weights", "random", "--tokenizer-dir", str(GPT2_TOKENIZER_DIR), "--epochs", "12",
        "--trainable", "all", "--lr", "2e-3", "--schedule", "constant", "--warmup", "0", "--split", "0.3", "0.2",
        "--blend", "off", "--no-baseline", "--keep", "best", "--keep-metric", "loss", "--patience", "2",
        "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, sms400):
    out = tmp_path_factory.mktemp("best") / "full"
    r = run_cli("train", *BEST, "--data-file", sms400, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_keep_best_saves_the_best_validation_epoch(best_run):
    m = json.loads((best_run / "metrics.json").read_text())
    kept = m["kept"]
    h = pd.read_csv(best_run / "history.csv")
    scores = h.dropna(subset=["val_score"])
    assert kept["weights"] == "best" and kept["by"] == "validation loss"
    assert kept["epoch"] == int(scores.loc[scores["val_score"].idxmin(), "epoch"])  # the best, the earliest of ties
    assert scores.loc[scores["kept"], "epoch"].tolist() == [kept["epoch"]]
    assert kept["stopped_early"] and kept["epochs_run"] == kept["epoch"] + 2 < 12
    # what was saved is that epoch: its validation loss, recomputed from the run's own metrics, is the kept one
    assert m["validation"]["loss"] == pytest.approx(kept["value"], abs=1e-5)


def test_resuming_a_killed_keep_best_run_keeps_the_same_epoch(tmp_path, sms400, best_run):
    out = tmp_path / "killed"
    proc = _start([*BEST, "--data-file", sms400, "--out", out])
    assert _wait_for(proc, "Epoch 3: validation loss"), "training ended before the kill point"
    proc.send_signal(signal.SIGKILL)  # after epoch 2's checkpoint (it holds the best weights so far)
    proc.wait(timeout=30)
    assert (out / "checkpoint.safetensors").is_file() and not (out / "metrics.json").exists()
    r = run_cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((best_run / "metrics.json").read_text())
    assert got["kept"] == pytest.approx(want["kept"])
    for split in ("validation", "test"):
        assert got[split]["loss"] == pytest.approx(want[split]["loss"], abs=1e-6)
