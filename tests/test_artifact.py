"""The saved classifier's files: written atomically, and as readable as the user's umask says."""

import os
import stat
from dataclasses import replace

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR
from llmclf.artifact import atomic_write_text, save_classifier
from llmclf.checkpoint import CHECKPOINT, save_checkpoint
from llmclf.classifier import TextClassifier, set_trainable
from llmclf.data import BatchLoader
from llmclf.models import MODELS, build_model
from llmclf.tokenizer import GPT2Tokenizer
from llmclf.train import TrainState


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(saved)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_results_model_and_checkpoint_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert _mode(tmp_path / "metrics.json") == file_mode
    torch.manual_seed(0)
    model = set_trainable(TextClassifier(build_model(replace(MODELS["gpt2-tiny"].config, n_layers=1)), 2), "last_block")
    out = save_classifier(model, GPT2Tokenizer(GPT2_TOKENIZER_DIR), tmp_path / "model", labels=["ham", "spam"],
                          max_length=8, model_name="gpt2-tiny")
    assert _mode(out) == dir_mode
    files = [p for p in out.iterdir()]
    assert files and all(_mode(p) == file_mode for p in files), {p.name: oct(_mode(p)) for p in files}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    save_checkpoint(tmp_path, model, opt, BatchLoader(4, 2, list, shuffle=True), TrainState())
    assert _mode(tmp_path / CHECKPOINT) == file_mode
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
