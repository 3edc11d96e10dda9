"""torchrun: N data-parallel processes compute what one process computes; failures end the job promptly.

Every run here is a real `python -m torch.distributed.run --standalone --nproc_per_node 2 -m llmclf ...`
(gloo on CPU) against a one-process run with the same global batch. All runs use OMP_NUM_THREADS=1, so both
sides use the same kernels, and gpt2-tiny with random weights for 1 epoch on the first 600 SMS messages.

Tolerance: accuracy, precision, recall and f1 must be equal; losses may differ by 1e-5. Why not bitwise:
with 2 ranks each gradient is the average of two half-batch gradients (DDP's all-reduce) instead of one
full-batch sum, so float32 additions happen in another order (about 1e-7 relative per step). Measured on
this machine the largest loss difference is about 1e-7, so 1e-5 leaves a 100x margin, and a prediction
only flips when a logit margin is that small.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COMMON = ["--model", "gpt2-tiny", "--pooling", "mean",
          "--weights", "random", "--epochs", "1", "--batch-size", "8", "--eval-freq", "5",
          "--checkpoint-every", "5", "--tokenizer-dir", str(GPT2_TOKENIZER_DIR)]
LOSS_TOL = 1e-5
EXACT = ("accuracy", "precision", "recall", "f1", "balanced_accuracy")


def llmclf(*args, procs=1, timeout=300, env=None):
    """`python -m llmclf ARGS`, or the same under torchrun with `procs` processes."""
    launcher = [] if procs == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    cmd = [sys.executable, *launcher, "-m", "llmclf", *map(str, args)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})})
    r.seconds = time.monotonic() - t0
    return r


def error_lines(stderr):
    return [x for x in stderr.splitlines() if x.startswith("llmclf: error:")]


@pytest.fixture(scope="module")
def subset(tmp_path_factory, sms_file):
    from llmclf.data import read_table
    path = tmp_path_factory.mktemp("data") / "sms600.csv"
    read_table(sms_file).iloc[:600].to_csv(path, index=False)  # balanced: 123 / 17 / 36 examples
    return path


# cache: the default recipe (last block trains on the cached output of block 0); no-cache: every block trains,
# with class weights and gradient accumulation (the weighted loss is rescaled per rank; see parallel_loss).
VARIANTS = {"cache": [], "no-cache": ["--trainable", "all", "--class-weights", "--grad-accum", "2"]}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, subset):
    """The reference: one process per variant, run in this process (the CLI's main) to save start-up time,
    with one thread like the subprocesses."""
    from llmclf.cli import main
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in VARIANTS.items():
            out = tmp_path_factory.mktemp("one") / name
            assert main(["train", *COMMON, *extra, "--quiet", "--data-file", str(subset), "--out", str(out)]) == 0
            runs[name] = out
    finally:
        torch.set_num_threads(threads)
    return runs


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def assert_same_training(one, two):
    m1, m2 = _metrics(one), _metrics(two)
    for split in ("train", "validation", "test"):
        for key in EXACT:
            assert m2[split][key] == m1[split][key], (split, key)
        assert m2[split]["loss"] == pytest.approx(m1[split]["loss"], abs=LOSS_TOL), split
        assert m2[split]["num_examples"] == m1[split]["num_examples"]
    assert m2["test"]["confusion_matrix"] == m1["test"]["confusion_matrix"]
    assert m2["examples_seen"] == m1["examples_seen"]
    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    assert len(h1) == len(h2) > 2
    assert (h1[["epoch", "step", "examples_seen"]] == h2[["epoch", "step", "examples_seen"]]).all().all()
    for col in ("train_loss", "val_loss", "train_acc", "val_acc"):
        assert (h1[col].fillna(-1) - h2[col].fillna(-1)).abs().max() <= LOSS_TOL, col


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_train_like_one(tmp_path, subset, one_process, variant):
    out = tmp_path / "two"
    r = llmclf("train", *COMMON, *VARIANTS[variant], "--data-file", subset, "--out", out, procs=2)
    assert r.returncode == 0, r.stderr
    m = _metrics(out)
    assert m["world_size"] == 2 and m["cache"] == (variant == "cache")
    assert_same_training(one_process[variant], out)
    # Only rank 0 reports and writes: one final line, one epoch summary, the same files as one process.
    assert sum(line.startswith("test accuracy") for line in r.stdout.splitlines()) == 1, r.stdout
    assert sum(line.startswith("baseline ") for line in r.stdout.splitlines()) == 1, r.stdout
    assert r.stderr.count("Training accuracy:") == 1, r.stderr
    assert r.stderr.count("text column") == 1, r.stderr  # the data line too: rank 0 alone
    assert "2 processes (DDP)" in r.stderr
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert files(out) == files(one_process[variant])


def test_two_processes_choose_the_pooling_like_one(tmp_path, subset):
    """--pooling auto (the default) under torchrun: both poolings train on both ranks, rank 0 keeps the same
    one as a single process does, with the same validation scores and the same files."""
    auto = [a for a in COMMON if a not in ("--pooling", "mean")]
    one, two = tmp_path / "one", tmp_path / "two"
    assert llmclf("train", *auto, "--quiet", "--data-file", subset, "--out", one).returncode == 0
    r = llmclf("train", *auto, "--data-file", subset, "--out", two, procs=2)
    assert r.returncode == 0, r.stderr
    t1, t2 = pd.read_csv(one / "search.csv"), pd.read_csv(two / "search.csv")
    assert list(t2["candidate"]) == ["mean", "last_nonpad"] and t2["chosen"].tolist() == t1["chosen"].tolist()
    assert t2["validation_macro_f1"].tolist() == pytest.approx(t1["validation_macro_f1"].tolist(), abs=1e-9)
    assert r.stderr.count("pooling auto: kept") == 1, r.stderr  # rank 0 alone reports
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    assert files(two) == files(one)


def test_two_process_prediction_prints_every_input_once_in_order(tmp_path, one_process):
    run = one_process["no-cache"]
    texts = [f"message {i}: " + ("WIN a FREE prize, call now " * (i % 4) or "see you at lunch") for i in range(25)]
    f = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(f, index=False)
    r = llmclf("predict", run, "one more text", "--input", f, "--json", procs=2)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == ["one more text", *texts]  # each input once, in input order
    from llmclf.predict import load_classifier, predict_texts
    clf = load_classifier(run, "cpu")
    probs = predict_texts(clf, ["one more text", *texts])  # one process
    for row, p in zip(rows, probs):  # the shards are batched differently: float noise only
        assert row["label"] == clf.labels[int(p.argmax())]
        assert [row["probabilities"][label] for label in clf.labels] == pytest.approx(p.tolist(), abs=1e-5)


def test_batch_size_not_divisible_is_one_clean_error(tmp_path, subset):
    out = tmp_path / "run"
    r = llmclf("train", *COMMON, "--batch-size", "3", "--data-file", subset, "--out", out, procs=2, timeout=120)
    assert r.returncode != 0
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and "--batch-size 3" in errors[0] and "divisible" in errors[0], r.stderr
    assert "llmclf/cli.py" not in r.stderr and "llmclf/finetune.py" not in r.stderr  # no traceback of ours
    assert not out.exists()


def test_a_crashing_rank_ends_the_job_promptly_with_its_rank_named(tmp_path, subset):
    out = tmp_path / "run"
    # LLMCLF_TEST_FAIL_RANK is a test hook (distributed.test_hook): rank 1 raises just before training,
    # while rank 0 goes on into its first gradient all-reduce.
    r = llmclf("train", *COMMON, "--data-file", subset, "--out", out, procs=2, timeout=120,
               env={"LLMCLF_TEST_FAIL_RANK": "1", "LLMCLF_DIST_TIMEOUT": "60"})
    assert r.returncode != 0
    crashed = [x for x in error_lines(r.stderr) if "rank 1 of 2: crashed" in x]
    assert len(crashed) == 1 and "simulated crash on rank 1" in crashed[0], r.stderr
    assert not (out / "metrics.json").exists()
    assert r.seconds < 90, r.seconds  # torchrun stops rank 0 at once; it never waits for the timeout


def test_ctrl_c_under_torchrun_saves_and_resume_gives_the_one_process_result(tmp_path, subset, one_process):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmclf",
           "train", *COMMON, "--data-file", str(subset), "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=ENV)
    for line in proc.stderr:
        if "(Step 000005)" in line:
            proc.send_signal(signal.SIGINT)  # torchrun forwards it to both ranks
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert "checkpoint saved" in rest, rest
    assert (out / "checkpoint.safetensors").is_file() and not (out / "metrics.json").exists()
    r = llmclf("train", "--resume", out, procs=2)
    assert r.returncode == 0, r.stderr
    assert "resuming at epoch 1" in r.stderr
    assert_same_training(one_process["cache"], out)


def test_fsdp_with_grad_checkpoint_trains_like_one_process(tmp_path, subset, one_process):
    out = tmp_path / "fsdp"
    r = llmclf("train", *COMMON, *VARIANTS["no-cache"], "--fsdp", "--grad-checkpoint", "--data-file", subset,
               "--out", out, procs=2)
    assert r.returncode == 0, r.stderr
    assert "2 processes (FSDP)" in r.stderr and "gradient checkpointing: 2 trainable block(s)" in r.stderr
    assert not (out / "checkpoint.safetensors").exists()
    assert_same_training(one_process["no-cache"], out)
    # The shards were gathered into one plain model file: same tensor names, shapes and (nearly) values.
    from safetensors.torch import load_file
    w1 = load_file(one_process["no-cache"] / "model" / "model.safetensors")
    w2 = load_file(out / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_fsdp_is_refused_clearly_without_torchrun(tmp_path, subset, capsys):
    from llmclf.cli import main
    assert main(["train", *COMMON, "--trainable", "all", "--fsdp", "--data-file", str(subset),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmclf: error: --fsdp") and "torchrun" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_grad_checkpoint_gives_the_same_losses():
    """In process: trainable=all, uncached, activation checkpointing on both blocks vs plain."""
    from test_train import FakeDataset

    from llmclf.classifier import TextClassifier, set_trainable
    from llmclf.models import MODELS, build_model
    from llmclf.train import TrainState, enable_grad_checkpoint, make_loaders, train_classifier_simple

    def run(checkpointed):
        torch.manual_seed(0)
        model = set_trainable(TextClassifier(build_model(MODELS["gpt2-tiny"].config), 2), "all")
        if checkpointed:
            assert enable_grad_checkpoint(model) == 2
        ds = {"train": FakeDataset(32, model.backbone.cfg.vocab_size, 1),
              "validation": FakeDataset(8, model.backbone.cfg.vocab_size, 2)}
        loaders, info = make_loaders(model, ds, 4, "cpu", cache="off", log=lambda *_: None)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        state = TrainState()
        train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", 1, 2, 2, state=state,
                                log=lambda *_: None, progress=False)
        return state.history, {n: p.detach().clone() for n, p in model.named_parameters()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the subprocesses: fast on a loaded machine
    try:
        (h1, p1), (h2, p2) = run(False), run(True)
    finally:
        torch.set_num_threads(threads)
    assert len(h1) == len(h2) > 3
    for a, b in zip(h1, h2):
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-5), (k, a, b)
    assert p1.keys() == p2.keys()  # parameter names (and so saved files) are unchanged
    assert max((p1[n] - p2[n]).abs().max().item() for n in p1) < 1e-5


def test_loader_shard_covers_each_batch_once_in_order():
    from llmclf.data import BatchLoader
    for m in (8, 7, 3, 1):
        for world in (2, 3):
            idx = list(range(100, 100 + m))
            slices = [BatchLoader(m, 8, None, rank=r, world=world).shard(idx) for r in range(world)]
            assert len({len(s) for s, _ in slices}) == 1  # the same forward size on every rank
            counts = slices[0][1]
            assert sum(counts) == m and all(s[1] == counts for s in slices)
            assert [i for r, (s, _) in enumerate(slices) for i in s[:counts[r]]] == idx
