"""Shared fixtures: the read-only ../shared folder (LLMCLF_SHARED_DIR), a tiny trained run, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared")).resolve()
SMS_FILE = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
GPT2_TOKENIZER_DIR = SHARED / "tokenizers" / "gpt2"


def run_cli(*args, input=None, timeout=600, env=None):
    """Run `python -m llmclf ARGS` in a real subprocess; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "llmclf", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def sms_file():
    if not SMS_FILE.is_file():
        pytest.fail(f"{SMS_FILE} missing: set LLMCLF_SHARED_DIR to the shared folder")
    return SMS_FILE


def sms_subset(folder: Path, n: int) -> Path:
    """A CSV (text, label) of the first n spam and first n ham messages of the real SMS file: a short run on real
    texts, where a test needs training to happen but not the whole collection."""
    import pandas as pd
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    rows = pd.concat([df[df.label == "spam"].head(n), df[df.label == "ham"].head(n)])
    path = folder / f"sms{n}.csv"
    rows[["text", "label"]].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from llmclf.tokenizer import GPT2Tokenizer
    return GPT2Tokenizer(GPT2_TOKENIZER_DIR)


def built_once(tmp_path_factory, folder: str, leaf: str, build) -> Path:
    """The run directory of a session fixture: under pytest-xdist, built by the first worker to get here (the
    others wait on a file lock, then read it), as it is built once in a serial session."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # a serial session
        out = tmp_path_factory.mktemp(folder) / leaf
        build(out)
        return out
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by its workers
    out = root / folder / leaf
    with FileLock(str(root / f"{folder}.lock")):
        if not (out / "metrics.json").is_file():  # written last: a complete run
            out.parent.mkdir(exist_ok=True)
            build(out)
    return out


def _train(out: Path, *args, env=None) -> None:
    r = run_cli("train", *args, "--out", out, env=env)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sms_file):
    """A gpt2-tiny classifier trained for 2 epochs on the real SMS data, through the CLI."""
    return built_once(tmp_path_factory, "runs", "tiny", lambda out: _train(
        out, "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "2", "--data-file",
        sms_file, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--lr", "1e-3"))


@pytest.fixture(scope="session")
def decision_run(tmp_path_factory, sms_file):
    """gpt2-tiny (random weights, 1 epoch) on the real SMS file, calibrated, at most 0.5% of ham flagged."""
    return built_once(tmp_path_factory, "decision", "run", lambda out: _train(
        out, "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1", "--tokenizer-dir",
        GPT2_TOKENIZER_DIR, "--data-file", sms_file, "--operating-point", "max_fpr=0.005",
        env={"OMP_NUM_THREADS": "1"}))


def sms_pairs(folder: Path, n: int = 100) -> Path:
    """A pair task on real SMS texts (columns first, second, label): are the two messages of the same class (both
    spam or both ham)? Only a classifier that reads both texts can answer it."""
    import pandas as pd
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    by = {k: df[df.label == k]["text"].tolist()[:n] for k in ("spam", "ham")}
    rows = []
    for i in range(2 * n):
        first = by["spam" if i % 2 else "ham"][i // 2]
        second = by["spam" if (i // 2) % 2 else "ham"][(7 * i + 3) % n]
        rows.append({"first": first, "second": second, "label": "same" if i % 2 == (i // 2) % 2 else "different"})
    path = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory, sms_file):
    """A gpt2-tiny pair classifier (--text-pair-column), 1 epoch, last-token pooling, no blend."""
    def build(out):
        data = sms_pairs(out.parent)
        _train(out, "--model", "gpt2-tiny", "--weights", "random", "--epochs", "1", "--data-file", data,
               "--text-column", "first", "--text-pair-column", "second", "--pooling", "last_nonpad", "--blend", "off",
               "--tokenizer-dir", GPT2_TOKENIZER_DIR)
    return built_once(tmp_path_factory, "pairs", "run", build)


def sms_documents(folder: Path, n: int = 40, per_doc: int = 6) -> Path:
    """Long texts from real ones: n documents per class, each `per_doc` SMS messages of that class in a row."""
    import pandas as pd
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    rows = [{"text": " ".join(df[df.label == k]["text"].tolist()[i * per_doc:(i + 1) * per_doc]), "label": k}
            for k in ("spam", "ham") for i in range(n)]
    path = folder / "documents.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def windows_run(tmp_path_factory, sms_file):
    """A gpt2-tiny classifier reading documents several times its 32-token context as windows (1 epoch)."""
    def build(out):
        _train(out, "--model", "gpt2-tiny", "--weights", "random", "--epochs", "1", "--data-file",
               sms_documents(out.parent), "--context-length", "32", "--long-texts", "windows", "--pooling", "mean",
               "--blend", "off", "--tokenizer-dir", GPT2_TOKENIZER_DIR)
    return built_once(tmp_path_factory, "windows", "run", build)


def sms_tags(n: int = 150):
    """A multi-label task on real SMS texts: each text's set among spam, number (it has a digit) and question
    (it has a '?'); n spam and n ham messages, so every label is frequent and some texts carry none."""
    import pandas as pd
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    df = pd.concat([df[df.label == "spam"].head(n), df[df.label == "ham"].head(n)])
    tags = [[x for x, on in (("spam", lab == "spam"), ("number", any(c.isdigit() for c in t)), ("question", "?" in t))
             if on] for t, lab in zip(df["text"], df["label"])]
    return pd.DataFrame({"text": df["text"].tolist(), "tags": tags})


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory, sms_file):
    """A gpt2-tiny multi-label classifier (labels split at '|'), 3 epochs."""
    def build(out):
        df = sms_tags()
        df.assign(tags=df["tags"].map("|".join)).to_csv(out.parent / "tags.csv", index=False)
        _train(out, "--model", "gpt2-tiny", "--weights", "random", "--epochs", "3", "--data-file",
               out.parent / "tags.csv", "--label-column", "tags", "--label-delimiter", "|", "--pooling", "mean",
               "--lr", "3e-3", "--tokenizer-dir", GPT2_TOKENIZER_DIR)
    return built_once(tmp_path_factory, "multilabel", "run", build)
