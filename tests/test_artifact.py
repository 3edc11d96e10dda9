"""The saved classifier's files: written atomically, and as readable as the user's umask says."""

import json
import os
import shutil
import signal
import stat
from dataclasses import replace

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.artifact import atomic_write_text, canonical_digest, load_classifier_model, save_classifier
from llmclf.checkpoint import CHECKPOINT, save_checkpoint
from llmclf.classifier import TextClassifier, set_trainable
from llmclf.data import BatchLoader
from llmclf.errors import LlmclfError
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


# ------------------------------------------------------------------ the saved classifier, verified whole

SMALL = replace(MODELS["gpt2-tiny"].config, n_layers=1, emb_dim=16, n_heads=2)
IDS = torch.tensor([[464, 3139, 286, 4881, 318, 50256]])


def _classifier(seed=0, arch="gpt2"):
    torch.manual_seed(seed)
    cfg = SMALL if arch == "gpt2" else replace(MODELS["llama-tiny"].config, n_layers=1, emb_dim=16, n_heads=2,
                                               n_kv_groups=1, hidden_dim=32, vocab_size=64)
    return TextClassifier(build_model(cfg), 2)


def _hf_tokenizer():
    """A real `tokenizers` word-level tokenizer, saved as tokenizer.json like a Llama model's."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from llmclf.tokenizer import HFTokenizer
    tok = Tokenizer(WordLevel({"<pad>": 0, "<unk>": 1, "hello": 2, "there": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return HFTokenizer(tok, 0, 0)


def _save(directory, labels=("ham", "spam"), seed=0, arch="gpt2"):
    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR) if arch == "gpt2" else _hf_tokenizer()
    directory.parent.mkdir(parents=True, exist_ok=True)
    return save_classifier(_classifier(seed, arch), tok, directory, labels=list(labels), max_length=8,
                           model_name="small", extra={"train_metrics": {"test": {"accuracy": 0.5}}})


@pytest.fixture
def saved(tmp_path):
    return _save(tmp_path / "run" / "model")


def _config(d):
    return json.loads((d / "config.json").read_text())


def _write_config(d, cfg, reseal=False):
    """Write config.json; with reseal, recompute the field digests first, as someone forging one would, so
    that the checks behind the manifest (types, paths) are reached."""
    if reseal:
        cfg["integrity"]["fields"] = {k: canonical_digest(v) for k, v in cfg.items() if k != "integrity"}
    (d / "config.json").write_text(json.dumps(cfg))


def _logits(model):
    with torch.no_grad():
        return model(IDS, torch.tensor([IDS.shape[1]]))


def test_saved_classifier_loads_with_identical_logits_and_reformatted_config_still_loads(saved):
    model, tok, cfg = load_classifier_model(saved.parent)
    torch.testing.assert_close(_logits(model), _logits(_classifier().eval()), atol=0, rtol=0)
    assert cfg["labels"] == ["ham", "spam"] and cfg["schema_version"] == 2 and tok.pad_id == cfg["pad_id"] == 50256
    assert set(cfg["integrity"]["files"]) == {"model.safetensors", "vocab.bpe", "encoder.json"}
    (saved / "config.json").write_text(json.dumps(_config(saved), indent=7, sort_keys=True))  # same values
    assert load_classifier_model(saved)[2]["labels"] == ["ham", "spam"]


@pytest.mark.parametrize("field,edit", [
    ("labels", lambda c: c["labels"].reverse()),  # would silently invert every prediction
    ("pooling", lambda c: c.update(pooling="mean")),
    ("causal", lambda c: c.update(causal=False)),
    ("max_length", lambda c: c.update(max_length=4)),
    ("pad_id", lambda c: c.update(pad_id=0)),
    ("backbone", lambda c: c["backbone"].update(drop_rate=0.5)),
    ("tokenizer", lambda c: c["tokenizer"].update(append_eos=True)),
    ("train_metrics", lambda c: c["train_metrics"]["test"].update(accuracy=0.99)),
])
def test_every_config_field_is_covered_by_the_manifest(saved, field, edit):
    cfg = _config(saved)
    edit(cfg)
    _write_config(saved, cfg)
    with pytest.raises(LlmclfError, match=rf"config\.json: field '{field}' does not match the manifest"):
        load_classifier_model(saved)


def test_added_or_removed_config_field_is_refused(saved):
    cfg = _config(saved)
    _write_config(saved, {**cfg, "labels_override": ["spam", "ham"]})
    with pytest.raises(LlmclfError, match="field 'labels_override' is not in the manifest"):
        load_classifier_model(saved)
    del cfg["model_name"]
    _write_config(saved, cfg)
    with pytest.raises(LlmclfError, match="field 'model_name' is missing"):
        load_classifier_model(saved)


def test_hf_tokenizer_file_is_covered_by_the_manifest(tmp_path):
    d = _save(tmp_path / "model", arch="llama")
    assert load_classifier_model(d)[1].encode("hello there") == [2, 3]
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["model"]["vocab"]["hello"], tj["model"]["vocab"]["there"] = 3, 2  # swapped ids: valid, but different
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(LlmclfError, match=r"tokenizer\.json: sha256 does not match the manifest"):
        load_classifier_model(d)


def test_unlisted_missing_or_linked_files_are_refused(saved, tmp_path):
    (saved / "notes.txt").write_text("hi")
    with pytest.raises(LlmclfError, match=r"notes\.txt: not in the manifest"):
        load_classifier_model(saved)
    (saved / "notes.txt").unlink()
    real = tmp_path / "encoder.json"
    shutil.move(saved / "encoder.json", real)
    with pytest.raises(LlmclfError, match=r"encoder\.json: missing \(the manifest of config\.json lists it\)"):
        load_classifier_model(saved)
    (saved / "encoder.json").symlink_to(real)  # the same bytes, but from outside the directory
    with pytest.raises(LlmclfError, match=r"encoder\.json: a link or folder in the model directory"):
        load_classifier_model(saved)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors", ".."])
def test_paths_cannot_leave_the_model_directory(saved, name):
    cfg = _config(saved)
    cfg["weights"]["file"] = name
    _write_config(saved, cfg, reseal=True)
    with pytest.raises(LlmclfError, match=r"field 'weights' must be an object with file \(a plain file name\)"):
        load_classifier_model(saved)
    cfg = _config(saved)
    cfg["integrity"]["files"][name] = "0" * 64
    _write_config(saved, cfg)
    with pytest.raises(LlmclfError, match="which is not a file name inside the model directory"):
        load_classifier_model(saved)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(labels="ham,spam"), "field 'labels' must be a non-empty list of distinct strings"),
    (lambda c: c.update(labels=["ham", "ham"]), "field 'labels' must be a non-empty list of distinct strings"),
    (lambda c: c.pop("pooling"), "field 'pooling' is missing"),
    (lambda c: c.update(pooling="max"), "field 'pooling' must be one of"),
    (lambda c: c.update(causal="yes"), "field 'causal' must be true or false"),
    (lambda c: c.update(max_length=-3), "field 'max_length' must be a positive integer"),
    (lambda c: c.update(num_classes=3), "field 'num_classes' is 3 but there are 2 labels"),
    (lambda c: c["backbone"].update(emb_dim="16"), "field 'backbone.emb_dim' must be a positive integer"),
    (lambda c: c["backbone"].update(flash=True), "field 'backbone.flash' is not a setting of the gpt2 model"),
    (lambda c: c["tokenizer"].pop("files"), "field 'tokenizer' must be a tokenizer config"),
    (lambda c: c["weights"].update(tensors=[]), "field 'weights' must be an object"),
    (lambda c: c.update(pad_id=70000), "field 'pad_id' or 'max_length' lies outside"),
])
def test_malformed_fields_are_one_line_errors_naming_the_field(saved, edit, message):
    cfg = _config(saved)
    edit(cfg)
    _write_config(saved, cfg, reseal=True)
    with pytest.raises(LlmclfError) as e:
        load_classifier_model(saved)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_config_is_one_line_in_the_cli(saved):
    (saved / "config.json").write_text('{"schema_version": 1, "weights": {}}')  # valid JSON, fields missing
    r = run_cli("predict", saved.parent, "hello")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "config.json: field 'labels' is missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (saved / "config.json").write_text('{"schema_version": 2, "labels": [')
    with pytest.raises(LlmclfError, match="config.json: corrupt config"):
        load_classifier_model(saved)


def test_schema_1_artifact_still_loads_with_its_checks(saved):
    """A classifier saved before the manifest (schema 1): weights sha256 in config.json, no integrity key."""
    from llmclf.assets import sha256_file
    cfg = _config(saved)
    del cfg["integrity"]
    cfg["schema_version"] = 1
    cfg["weights"]["sha256"] = sha256_file(saved / "model.safetensors")
    _write_config(saved, cfg)
    model, _, loaded = load_classifier_model(saved)
    torch.testing.assert_close(_logits(model), _logits(_classifier().eval()), atol=0, rtol=0)
    cfg["weights"]["file"] = "../model/model.safetensors"  # schema 1 gets the path checks too
    _write_config(saved, cfg)
    with pytest.raises(LlmclfError, match="field 'weights' must be"):
        load_classifier_model(saved)
    cfg["weights"]["file"] = "model.safetensors"
    cfg["weights"]["sha256"] = "0" * 64
    _write_config(saved, cfg)
    with pytest.raises(LlmclfError, match="sha256 does not match config.json"):
        load_classifier_model(saved)


KILL_POINTS = ("mkdir", "chmod", "replace", "rename", "fsync", "unlink", "rmdir")  # every step that changes disk


def _save_killed_at(k: int, directory, model, tok) -> bool:
    """Save `model` (labels a, b) over `directory` in a forked child that SIGKILLs itself just before its
    k-th file-system call; True if it was killed, False if the save completed first."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest cleanup may run here
        try:
            calls = [0]

            def hook(fn):
                def call(*a, **kw):
                    calls[0] += 1
                    if calls[0] == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return fn(*a, **kw)
                return call
            for name in KILL_POINTS:
                setattr(os, name, hook(getattr(os, name)))
            save_classifier(model, tok, directory, labels=["a", "b"], max_length=8, model_name="new")
            os._exit(0)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, status
    return os.WIFSIGNALED(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_save_killed_at_any_step_leaves_a_loadable_classifier(saved, tmp_path):
    from llmclf.artifact import find_classifier_dir
    template = tmp_path / "template"
    shutil.copytree(saved.parent, template)
    run, seen, missing_at = saved.parent, [], []
    new = (_classifier(seed=1), GPT2Tokenizer(GPT2_TOKENIZER_DIR))
    for k in range(1, 200):
        shutil.rmtree(run)
        shutil.copytree(template, run)
        killed = _save_killed_at(k, run / "model", *new)
        if not (run / "model").exists():
            missing_at.append(k)
        seen.append(find_classifier_dir(run)[1]["labels"])  # verified whole; recovered if model/ is missing
        if not killed:
            break
    assert not killed and k > 10 and seen[0] == ["ham", "spam"] and seen[-1] == ["a", "b"]
    assert all(labels in (["ham", "spam"], ["a", "b"]) for labels in seen)
    assert missing_at  # a kill between the two renames happened, and was recovered from
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # a finished save leaves no copies
    # killed between the renames, then loaded for real, then saved over: the copies are cleaned up
    shutil.rmtree(run)
    shutil.copytree(template, run)
    assert _save_killed_at(missing_at[0], run / "model", *new) and not (run / "model").exists()
    assert load_classifier_model(run)[2]["labels"] in (["ham", "spam"], ["a", "b"])
    _save(run / "model", labels=("x", "y"))
    assert [p.name for p in run.iterdir()] == ["model"] and load_classifier_model(run)[2]["labels"] == ["x", "y"]
