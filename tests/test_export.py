"""`llmclf export --format hf`: transformers' own loaders and pipeline run the exported GPT-2 classifier with the
labels and probabilities (within 1e-4) that llmclf gives; what the format cannot hold is refused, nothing written."""

from __future__ import annotations

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.artifact import save_classifier
from llmclf.classifier import TextClassifier
from llmclf.decision import Decision
from llmclf.models import MODELS, build_model
from llmclf.predict import load_classifier, predict_texts
from llmclf.tokenizer import GPT2Tokenizer

transformers = pytest.importorskip("transformers")
LABELS = ["ham", "spam", "promo"]
TEXTS = ["WINNER!! You have won a prize, call 0800 now", "see you at lunch?", "ok",
         "Free entry in 2 a wkly comp to win FA Cup final tkts " * 20]  # longer than max_length: cut the same way


def _saved(tmp_path, pooling="last_nonpad", temperature=0.7):
    """A gpt2-tiny classifier with random weights and a far-from-zero head bias, saved as training saves it."""
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS["gpt2-tiny"].config), len(LABELS), pooling)
    with torch.no_grad():
        model.backbone.out_head.bias.copy_(torch.tensor([1.5, -2.0, 0.5]))
    run = tmp_path / "run"
    run.mkdir()
    save_classifier(model, GPT2Tokenizer(GPT2_TOKENIZER_DIR), run / "model", labels=LABELS, max_length=48,
                    model_name="gpt2-tiny", extra={"decision": Decision(temperature=temperature).to_config()})
    return run


def test_transformers_pipeline_on_the_export_gives_llmclfs_labels_and_probabilities(tmp_path):
    run = _saved(tmp_path)
    r = run_cli("export", run, "--format", "hf", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(model).__name__ == "GPT2ForSequenceClassification" and model.config.id2label[1] == "spam"
    pipe = transformers.pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    got = pipe(TEXTS, top_k=None, truncation=True)
    clf = load_classifier(run, "cpu")
    want = predict_texts(clf, TEXTS)  # calibrated: the temperature is folded into the export's head
    for row, p in zip(got, want):
        scores = {d["label"]: d["score"] for d in row}
        assert [scores[x] for x in LABELS] == pytest.approx(p.tolist(), abs=1e-4)
        assert max(scores, key=scores.get) == LABELS[int(p.argmax())]
    padded = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")  # a padded batch reads the same token
    with torch.no_grad():
        batch = model(**padded).logits.softmax(-1)
    torch.testing.assert_close(batch, want, atol=1e-4, rtol=0)


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
