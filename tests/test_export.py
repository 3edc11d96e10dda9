"""`llmclf export --format hf`: transformers' own loaders and pipeline run the exported GPT-2, Llama-family and
Gemma 3 classifiers with the labels and probabilities (within 1e-4) that llmclf gives on SMS texts; what the
format cannot hold is refused, nothing written."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, SMS_FILE, run_cli
from llmclf.artifact import save_classifier
from llmclf.classifier import TextClassifier
from llmclf.decision import Decision
from llmclf.models import MODELS, build_model
from llmclf.predict import load_classifier, predict_texts
from llmclf.export import _hf_tokenizer
from llmclf.tokenizer import GPT2Tokenizer, HFTokenizer
from llmclf.weights import _gguf_tokenizer

transformers = pytest.importorskip("transformers")
LABELS = ["ham", "spam", "promo"]
TEXTS = ["WINNER!! You have won a prize, call 0800 now", "see you at lunch?", "ok",
         "Free entry in 2 a wkly comp to win FA Cup final tkts " * 20]  # longer than max_length: cut the same way


def _sms_texts(n: int = 150) -> list[str]:
    import pandas as pd
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    return list(df.text[-n:]) + TEXTS


def _saved(tmp_path, pooling="last_nonpad", temperature=0.7, arch="gpt2", head_bias=None):
    """A tiny classifier with random weights, saved as training saves it. GPT-2's head gets a far-from-zero bias
    (which the export folds into the final norm); a Llama-family head has none unless asked."""
    torch.manual_seed(0)
    qwen = {"qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True, "head_dim": 32}}.get(arch)
    config = replace(MODELS["llama-tiny"].config, **qwen) if qwen else MODELS[f"{arch}-tiny"].config
    if arch == "gemma3":
        config = replace(config, vocab_size=50257)  # read through GPT-2's BPE, below
    model = TextClassifier(build_model(config), len(LABELS), pooling, head_bias=head_bias)
    with torch.no_grad():
        if model.backbone.out_head.bias is not None:
            model.backbone.out_head.bias.copy_(torch.tensor([1.5, -2.0, 0.5]))
        model.backbone.out_head.weight.mul_(20.0)  # probabilities far from uniform, so a mismatch would show
        for name, p in model.backbone.named_parameters():  # fresh q/k/v biases are zeros, norms ones: make them count
            if name.endswith(("W_query.bias", "W_key.bias", "W_value.bias", "q_norm.weight", "k_norm.weight")) \
                    or (arch == "gemma3" and "norm" in name):  # Gemma's norms start at zero (a scale of 1)
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    run = tmp_path / "run"
    run.mkdir()
    if arch == "gpt2":
        tokenizer = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    elif arch == "gemma3":  # what the export must carry for Gemma: a BOS before every text (the real Gemma
        # tokenizer gives transformers' ids on every SMS text: bench/gemma3_check.py; 16 s to build, so not here)
        tokenizer = HFTokenizer(_hf_tokenizer(None, GPT2_TOKENIZER_DIR), pad_id=50256, eos_id=50256, bos_id=50256)
    else:
        tokenizer = _gguf_tokenizer("smollm2-135m-instruct-q4")
    name = f"{arch}-tiny" if arch in ("gpt2", "llama", "gemma3") else "llama-tiny"
    save_classifier(model, tokenizer, run / "model", labels=LABELS, max_length=48, model_name=name,
                    extra={"decision": Decision(temperature=temperature).to_config()})
    return run


@pytest.mark.parametrize("arch, architecture", [("gpt2", "GPT2ForSequenceClassification"),
                                                ("llama", "LlamaForSequenceClassification"),
                                                ("qwen2", "Qwen2ForSequenceClassification"),
                                                ("qwen3", "Qwen3ForSequenceClassification"),
                                                ("gemma3", "Gemma3TextForSequenceClassification")])
def test_transformers_pipeline_on_the_export_gives_llmclfs_labels_and_probabilities(tmp_path, arch, architecture):
    run = _saved(tmp_path, arch=arch)
    r = run_cli("export", run, "--format", "hf", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == architecture and model.config.id2label[1] == "spam"
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    texts = _sms_texts()
    got = pipe(texts, top_k=None, truncation=True)
    clf = load_classifier(run, "cpu")
    want = predict_texts(clf, texts)  # calibrated: the temperature is folded into the export's head
    probs = torch.tensor([[{d["label"]: d["score"] for d in row}[x] for x in LABELS] for row in got])
    torch.testing.assert_close(probs, want, atol=1e-4, rtol=0)
    assert probs.argmax(-1).tolist() == want.argmax(-1).tolist() and len(set(want.argmax(-1).tolist())) > 1
    padded = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")  # a padded batch reads the same token
    with torch.no_grad():
        batch = model(**padded).logits.softmax(-1)
    torch.testing.assert_close(batch, want[-len(TEXTS):], atol=1e-4, rtol=0)
    short = [i for i, t in enumerate(texts) if len(tok(t)["input_ids"]) < 48]  # imported, texts are cut at the context
    back = predict_texts(load_classifier(tmp_path / "hf", "cpu"), [texts[i] for i in short])  # and read back
    torch.testing.assert_close(back, want[short], atol=1e-4, rtol=0)


def test_a_llama_head_with_a_bias_is_refused_by_the_hf_format(tmp_path):
    run = _saved(tmp_path, arch="llama", head_bias=True)  # as Llama-family classifiers were saved before
    r = run_cli("export", run, "--out", tmp_path / "hf")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "the class head has a bias" in r.stderr and not (tmp_path / "hf").exists()
    assert load_classifier(run, "cpu").model.backbone.out_head.bias is not None  # and it still loads with its bias


def test_what_the_format_cannot_hold_is_refused_and_nothing_is_written(tmp_path):
    pooling = "mean"  # the default's usual choice: transformers has no place for it
    run = _saved(tmp_path, pooling=pooling)
    r = run_cli("export", run, "--out", tmp_path / "hf")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"pooling {pooling}: transformers reads the last real token" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_pair_classifier_is_refused_by_the_hf_format_and_its_onnx_card_says_how_pairs_join(pair_run, tmp_path):
    import json

    r = run_cli("export", pair_run, "--out", tmp_path / "hf")
    assert r.returncode == 2 and "a text-pair classifier" in r.stderr and not (tmp_path / "hf").exists()
    r = run_cli("export", pair_run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "onnx" / "classifier.json").read_text())
    assert card["text_pairs"]["separator_id"] == 50256
