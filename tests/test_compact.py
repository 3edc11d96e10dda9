"""Compact classifiers (the default where the backbone has base weights): model/ holds only the tensors training
changed and the sha256 of the base weights' files; loading rebuilds the rest and gives, bit for bit, what a
standalone save holds. Base checkpoints are transformers models with random weights, saved here; bench/compact.py
measures the README main job's classifier on the real SmolLM2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli, sms_subset
from llmclf.artifact import WEIGHTS, load_classifier_model, save_classifier
from llmclf.classifier import TextClassifier, set_trainable
from llmclf.compact import BASE, base_identity
from llmclf.errors import LlmclfError
from llmclf.lora import LinearWithLoRA
from llmclf.weights import load_backbone

transformers = pytest.importorskip("transformers")
LABELS = ["ham", "spam"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A GPT-2 checkpoint as transformers saves it (random weights, from a config)."""
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50257, n_embd=64, n_layer=3, n_head=4,
                                                               n_positions=128))
    d = tmp_path_factory.mktemp("base") / "gpt2"
    ref.save_pretrained(d)
    return d


def _trained(model: str, trainable: str, pooling: str = "mean"):
    """A classifier on `model` whose trainable tensors moved, as training moves them."""
    backbone, tok, _ = load_backbone(model, tokenizer_dir=GPT2_TOKENIZER_DIR)
    torch.manual_seed(1)
    clf = set_trainable(TextClassifier(backbone, len(LABELS), pooling), trainable)
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return clf, tok


def _save(model, tok, directory, base):
    save_classifier(model, tok, directory, labels=LABELS, max_length=32, model_name="m", base=base)
    return directory


def _stored(directory) -> set[str]:
    from safetensors import safe_open
    with safe_open(str(directory / WEIGHTS), framework="pt") as f:
        return set(f.keys())


def _same_classifier(a, b):
    """Two saved classifiers load to the same tensors, bit for bit, and give the same logits."""
    (ma, _, ca), (mb, _, cb) = load_classifier_model(a), load_classifier_model(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ca["weights"]["tensors"] == cb["weights"]["tensors"]
    ids = torch.randint(0, ma.backbone.cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(2))
    assert torch.equal(ma(ids), mb(ids))


@pytest.mark.parametrize("trainable", ["last_block", "lora"])
def test_compact_holds_what_training_changed_and_loads_as_the_standalone(gpt2_dir, tmp_path, trainable):
    model, tok = _trained(str(gpt2_dir), trainable)
    adapters = sum(isinstance(m, LinearWithLoRA) for m in model.modules())
    compact = _save(model, tok, tmp_path / "compact", base_identity(str(gpt2_dir)))  # merges LoRA: save it first
    standalone = _save(model, tok, tmp_path / "standalone", None)
    cfg = json.loads((compact / "config.json").read_text())
    assert cfg[BASE]["model"] == str(gpt2_dir.resolve())
    assert set(cfg[BASE]["files"]) == {"config.json", "model.safetensors"}
    heads = {"final_norm.scale", "final_norm.shift", "out_head.weight", "out_head.bias"}
    if trainable == "last_block":
        assert _stored(compact) == heads | {k for k in cfg["weights"]["tensors"] if k.startswith("trf_blocks.2.")}
        assert cfg[BASE]["lora"] == {}
    else:  # the adapters' factors, not the merged weights: 6 Linear layers in each of 3 blocks; alpha / rank
        factors = _stored(compact) - heads
        assert adapters == 18 and len(factors) == 2 * adapters and all(".lora." in k for k in factors)
        assert len(cfg[BASE]["lora"]) == adapters and set(cfg[BASE]["lora"].values()) == {2.0}
    assert (compact / WEIGHTS).stat().st_size * 3 < (standalone / WEIGHTS).stat().st_size
    _same_classifier(compact, standalone)


def test_a_changed_or_missing_base_is_refused_in_one_line(gpt2_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(gpt2_dir, base)
    model, tok = _trained(str(base), "last_block")
    saved = _save(model, tok, tmp_path / "model", base_identity(str(base)))
    weights = load_file(base / "model.safetensors")
    frozen = next(k for k in weights if k.endswith("h.0.attn.c_attn.weight"))
    weights[frozen][0, 0] += 1.0  # a frozen tensor: the rebuild would be wrong
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlmclfError, match=r"model\.safetensors\) changed since saving \(sha256 differs\)"):
        load_classifier_model(saved)
    shutil.rmtree(base)
    r = run_cli("predict", saved, "hello")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "rebuilt from its base weights, but they" in r.stderr and "could not be had" in r.stderr, r.stderr


def test_the_base_field_is_covered_by_the_manifest(gpt2_dir, tmp_path):
    model, tok = _trained(str(gpt2_dir), "last_block")
    saved = _save(model, tok, tmp_path / "model", base_identity(str(gpt2_dir)))
    cfg = json.loads((saved / "config.json").read_text())
    cfg[BASE]["model"] = "gpt2-small"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match="field 'base' does not match the manifest"):
        load_classifier_model(saved)


def test_random_weights_have_no_base_and_are_saved_whole():
    assert base_identity("gpt2-tiny") is None and base_identity("smollm2-135m", "random") is None


def test_train_writes_a_compact_model_unless_standalone(gpt2_dir, tmp_path):
    from llmclf.finetune import finetune
    from llmclf.options import FinetuneOptions

    data = sms_subset(tmp_path, 60)
    common = dict(model=str(gpt2_dir), tokenizer_dir=str(GPT2_TOKENIZER_DIR), data_file=str(data), epochs=1,
                  pooling="last_nonpad", context_length="32", baseline=False, blend="off", calibrate=False, quiet=True)
    r = run_cli("train", "--out", tmp_path / "compact", "--model", gpt2_dir, "--tokenizer-dir", GPT2_TOKENIZER_DIR,
                "--data-file", data, "--epochs", "1", "--pooling", "last_nonpad", "--context-length", "32",
                "--no-baseline", "--blend", "off", "--no-calibrate", "--quiet")
    assert r.returncode == 0, r.stderr
    finetune(FinetuneOptions(out=str(tmp_path / "standalone"), standalone=True, **common))
    compact, standalone = tmp_path / "compact" / "model", tmp_path / "standalone" / "model"
    assert BASE in json.loads((compact / "config.json").read_text())
    assert BASE not in json.loads((standalone / "config.json").read_text())
    assert (compact / WEIGHTS).stat().st_size * 3 < (standalone / WEIGHTS).stat().st_size
    _same_classifier(compact, standalone)  # the CLI's run and the library's: one classifier, two forms
    r = run_cli("predict", tmp_path / "compact", "WINNER!! claim your prize now", "see you at lunch?")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 2, r.stderr


def test_the_rebuilt_base_is_cached_and_a_damaged_copy_is_never_used(gpt2_dir, tmp_path, monkeypatch):
    import llmclf.compact as compact_module
    from llmclf.assets import sha256_file

    monkeypatch.setenv("LLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    model, tok = _trained(str(gpt2_dir), "last_block")
    compact = _save(model, tok, tmp_path / "compact", base_identity(str(gpt2_dir)))
    standalone = _save(model, tok, tmp_path / "standalone", None)
    _same_classifier(compact, standalone)  # the first load reads the checkpoint, and caches its tensors
    [cached] = (tmp_path / "cache" / "base-states").glob("*.safetensors")
    assert cached.with_suffix(".sha256").read_text() == sha256_file(cached)

    def no_checkpoint(*a, **k):
        raise AssertionError("the checkpoint was read again")
    with monkeypatch.context() as m:
        m.setattr(compact_module, "load_backbone", no_checkpoint)
        _same_classifier(compact, standalone)  # later loads read the cached tensors
    data = bytearray(cached.read_bytes())
    data[-8] ^= 0xFF  # a damaged copy: its sha256 no longer matches, so the checkpoint is read again
    cached.write_bytes(bytes(data))
    _same_classifier(compact, standalone)
    assert cached.with_suffix(".sha256").read_text() == sha256_file(cached)  # and the copy written anew
