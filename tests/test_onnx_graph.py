"""ONNX: `llmclf export --format onnx` writes a graph that onnxruntime, fed by the `tokenizers` library from the
export's own files, runs with llmclf's probabilities (within 1e-4) and labels on real SMS texts; `--backend onnx`
runs predict on it through the cache (blend and decision applied as saved); what the graph cannot hold is refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, SMS_FILE, run_cli
from llmclf.artifact import save_classifier
from llmclf.classifier import TextClassifier
from llmclf.decision import Decision
from llmclf.export import _hf_tokenizer, export_onnx
from llmclf.models import MODELS, build_model
from llmclf.predict import load_classifier, predict_texts, predicted_classes
from llmclf.tokenizer import GPT2Tokenizer, HFTokenizer

ort = pytest.importorskip("onnxruntime")
LABELS = ["ham", "spam"]
EDGES = ["", "ok", "Free entry in 2 a wkly comp to win FA Cup final tkts " * 20]  # empty; one token; cut at max_length


def _texts(n=40):
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    return list(df.text[:n]) + EDGES


def _saved(tmp_path, arch="gpt2-tiny", pooling="last_nonpad", decision=Decision(), blend=None):
    """A tiny classifier (random weights, GPT-2: a far-from-zero head bias) saved as training saves it."""
    torch.manual_seed(0)
    config = replace(MODELS[arch].config, vocab_size=50257)  # GPT-2's BPE feeds both
    model = TextClassifier(build_model(config), len(LABELS), pooling)
    if model.backbone.out_head.bias is not None:  # GPT-2's head has one; the Llama family's none
        with torch.no_grad():
            model.backbone.out_head.bias.copy_(torch.tensor([0.3, -0.2]))
    if arch == "gpt2-tiny":
        tokenizer = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    else:  # a byte-level BPE over GPT-2's files, as the Llama family's tokenizer.json is (Gemma's: after a BOS)
        tokenizer = HFTokenizer(_hf_tokenizer(None, GPT2_TOKENIZER_DIR), pad_id=0, eos_id=0,
                                bos_id=1 if arch == "gemma3-tiny" else None)
    run = tmp_path / "run"
    run.mkdir()
    save_classifier(model, tokenizer, run / "model", labels=LABELS, max_length=32, model_name=arch,
                    extra={"decision": decision.to_config()}, blend=blend)
    return run


def _run_export(out, texts):
    """What a program with only onnxruntime and tokenizers does with the export directory."""
    from tokenizers import Tokenizer
    card = json.loads((out / "classifier.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos = [] if card["bos_id"] is None else [card["bos_id"]]
    ids = [(bos + e.ids)[: card["max_length"]] or [card["pad_id"]]
           for e in tok.encode_batch(texts, add_special_tokens=False)]
    width = max(map(len, ids))
    batch = np.array([e + [card["pad_id"]] * (width - len(e)) for e in ids], dtype=np.int64)
    mask = np.array([[1] * len(e) + [0] * (width - len(e)) for e in ids], dtype=np.int64)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    _, probs, label = sess.run(None, {"input_ids": batch, "attention_mask": mask})
    return card, probs, label


@pytest.mark.parametrize("arch,pooling,decision", [
    ("gpt2-tiny", "last_nonpad", Decision(temperature=0.7, threshold=0.45, positive=1, target="best_f1")),
    ("llama-tiny", "mean", Decision(temperature=1.3)),
    ("gemma3-tiny", "last_nonpad", Decision(temperature=0.9)),  # sliding-window layers, BOS before every text
])
def test_onnxruntime_on_the_export_gives_llmclfs_probabilities_and_labels(tmp_path, arch, pooling, decision):
    run, texts = _saved(tmp_path, arch, pooling, decision), _texts()
    if arch == "gpt2-tiny":  # the command once; the library call otherwise (a process start saved)
        r = run_cli("export", run, "--format", "onnx", "--out", tmp_path / "onnx")
        assert r.returncode == 0, r.stderr
    else:
        export_onnx(run, tmp_path / "onnx")
    card, probs, label = _run_export(tmp_path / "onnx", texts)
    clf = load_classifier(run, "cpu")
    want = predict_texts(clf, texts)  # calibrated as saved
    np.testing.assert_allclose(probs, want.numpy(), atol=1e-4, rtol=0)
    assert label.tolist() == predicted_classes(clf, want) and card["labels"] == LABELS
    assert 0 < sum(label) < len(texts)  # both classes occur: the labels compared say something


def test_backend_onnx_predicts_as_torch_with_the_blend_and_caches_the_graph(tmp_path, monkeypatch):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from llmclf.blend import TfidfBlend

    monkeypatch.setenv("LLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)[:200]
    pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(df.text, (df.label == "spam").astype(int))
    run, texts = _saved(tmp_path, blend=TfidfBlend(pipe, 0.5, 2)), _texts()
    want = predict_texts(load_classifier(run, "cpu"), texts)
    clf = load_classifier(run, "cpu", backend="onnx")
    np.testing.assert_allclose(predict_texts(clf, texts).numpy(), want.numpy(), atol=1e-4, rtol=0)
    [graph] = (tmp_path / "cache" / "onnx").glob("*/model.onnx")
    graph.write_bytes(graph.read_bytes()[:-10])  # a damaged cache entry is noticed and exported again
    r = run_cli("predict", run, *texts[:3], "--backend", "onnx", "--json", env={"LLMCLF_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    got = [json.loads(x)["probabilities"]["spam"] for x in r.stdout.splitlines()]
    assert got == pytest.approx(want[:3, 1].tolist(), abs=1e-4)
    # the blend cannot go into a graph: refused in one line, nothing written
    r = run_cli("export", run, "--format", "onnx", "--out", tmp_path / "onnx")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "blends the LLM with TF-IDF" in r.stderr
    assert not (tmp_path / "onnx").exists() and not list(tmp_path.glob(".onnx*"))
