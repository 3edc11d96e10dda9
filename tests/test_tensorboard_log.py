"""--tensorboard: event files whose scalars are history.csv's, step by step."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli, sms_subset

TRAIN = ["train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "2", "--tokenizer-dir",
         GPT2_TOKENIZER_DIR, "--eval-freq", "5", "--blend", "off", "--no-baseline", "--keep", "best"]


def test_event_files_hold_the_history_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    r = run_cli(*TRAIN, "--data-file", sms_subset(tmp_path, 100), "--tensorboard", "--out", out)
    assert r.returncode == 0, r.stderr
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    h = pd.read_csv(out / "history.csv")
    for column, tag in (("train_loss", "loss/train"), ("val_loss", "loss/validation"), ("val_acc", "accuracy/validation"),
                        ("val_score", "keep/validation")):
        rows = h.dropna(subset=[column])
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == (rows["step"] + 1).tolist()
        assert [v for _, v in got] == pytest.approx(rows[column].tolist(), rel=1e-6)  # stored as float32
    assert len(events.Scalars("loss/train")) >= 5
