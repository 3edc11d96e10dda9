"""Predictions do not depend on batch composition, and predict reads what train wrote."""

import json

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.classifier import TextClassifier
from llmclf.models import MODELS, build_model
from llmclf.predict import Classifier, load_classifier, predict_encoded, predict_texts


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("pooling", ["last_nonpad", "mean", "first"])
def test_padding_invariance(arch, pooling):
    torch.manual_seed(0)
    backbone = build_model(MODELS[f"{arch}-tiny"].config)
    model = TextClassifier(backbone, 3, pooling).eval()
    with torch.no_grad():
        model.backbone.out_head.weight.normal_(0, 1.0)  # a head that separates, so differences would show

    class Tok:
        pad_id = 0

    clf = Classifier(model, Tok(), {"labels": ["a", "b", "c"], "max_length": 200})
    g = torch.Generator().manual_seed(1)
    short = torch.randint(1, 1000, (5,), generator=g).tolist()
    longs = [torch.randint(1, 1000, (n,), generator=g).tolist() for n in (150, 90, 180)]
    alone = predict_encoded(clf, [short])[0]
    in_batch = predict_encoded(clf, longs + [short] + longs, batch_size=8)[3]
    assert int(alone.argmax()) == int(in_batch.argmax())
    assert torch.allclose(alone, in_batch, atol=1e-4)


def test_trained_run_files_and_metrics(tiny_run):
    for name in ("train.csv", "validation.csv", "test.csv", "history.csv", "loss.png", "accuracy.png",
                 "metrics.json", "model/model.safetensors", "model/config.json"):
        assert (tiny_run / name).is_file(), name
    m = json.loads((tiny_run / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        for key in ("accuracy", "loss", "precision", "recall", "f1", "balanced_accuracy"):
            assert 0 <= m[split][key] <= (1 if key != "loss" else 10), (split, key)
    assert m["num_examples"] == {"train": 1045, "validation": 149, "test": 300}
    assert len(m["test"]["confusion_matrix"]) == 2 and sum(map(sum, m["test"]["confusion_matrix"])) == 300
    assert 0 <= m["test"]["roc_auc"] <= 1 and m["train_seconds"] > 0 and m["model"] == "gpt2-tiny"
    assert m["data_source"].endswith("SMSSpamCollection")
    # balanced data: the majority class scores 50%; training must do clearly better
    assert m["test"]["accuracy"] > 0.6
    import pandas as pd
    hist = pd.read_csv(tiny_run / "history.csv")
    losses = hist["train_loss"].dropna().tolist()
    assert losses[-1] < losses[0]


def test_predict_cli_and_library_agree(tiny_run):
    texts = ["WINNER!! Claim your prize now", "See you at lunch?"]
    r = run_cli("predict", tiny_run, texts[0], "--batch-size", "4", texts[1])  # texts before and after an option
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    clf = load_classifier(tiny_run, "cpu")
    probs = predict_texts(clf, texts)
    for line, p in zip(lines, probs):
        label, prob = line.split("\t")
        assert label == clf.labels[int(p.argmax())] and float(prob) == pytest.approx(float(p.max()), abs=1e-4)


def test_predict_input_file_json_and_stdin(tiny_run, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text('text\n"hello, there"\nFREE entry win cash\n')
    r = run_cli("predict", tiny_run, "--input", f, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.strip().split("\n")]
    assert [x["text"] for x in rows] == ["hello, there", "FREE entry win cash"]
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-4 for x in rows)
    r2 = run_cli("predict", tiny_run, "--input", "-", input="hello, there\nFREE entry win cash\n")
    assert [x.split("\t")[0] for x in r2.stdout.strip().split("\n")] == [x["label"] for x in rows]
    import pandas as pd
    pd.DataFrame({"id": [1, 2], "message": ["hello, there", "FREE entry win cash"]}).to_parquet(tmp_path / "in.parquet")
    r3 = run_cli("predict", tiny_run, "--input", tmp_path / "in.parquet", "--json")
    assert r3.returncode == 0, r3.stderr
    assert [json.loads(x) for x in r3.stdout.strip().split("\n")] == rows  # the text column found by its name


def test_evaluate_reads_a_labelled_file(tiny_run):
    r = run_cli("evaluate", tiny_run, "--data-file", tiny_run / "test.csv")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    blend = metrics.get("blend")  # the default --blend auto: evaluate scores what was saved
    saved = blend["test"] if blend and blend["saved"] else metrics["test"]
    assert got["num_examples"] == 300
    assert got["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-9)


def test_errors_csv_lists_the_misclassified_test_texts_most_confident_first(tiny_run):
    """RUN_DIR/errors.csv: exactly the test texts the saved classifier gets wrong, with its probabilities."""
    import pandas as pd

    from llmclf.predict import load_classifier, predict_texts
    errors = pd.read_csv(tiny_run / "errors.csv", dtype={"text": str, "label": str, "predicted": str},
                         keep_default_na=False)
    test = pd.read_csv(tiny_run / "test.csv", dtype=str, keep_default_na=False)
    clf = load_classifier(tiny_run, "cpu")
    probs = predict_texts(clf, test["text"].tolist())
    pred = [clf.labels[i] for i in probs.argmax(1).tolist()]
    wrong = [(t, y, p) for t, y, p in zip(test["text"], test["label"], pred) if y != p]
    assert 0 < len(wrong) == len(errors)  # the tiny random model makes mistakes
    assert sorted(wrong) == sorted(zip(errors["text"], errors["label"], errors["predicted"]))
    assert (errors["probability"].diff().dropna() <= 0).all()  # most confident first
    by_text = {t: p for t, p in zip(test["text"], probs.max(1).values.tolist())}
    for t, p in zip(errors["text"], errors["probability"]):
        assert abs(by_text[t] - p) < 1e-5
    assert ((errors["label_probability"] < errors["probability"]) | (errors["probability"] == 0.5)).all()


def test_a_pair_classifier_reads_both_texts_from_files_tabs_and_the_library(pair_run, tmp_path):
    import pandas as pd

    from llmclf.tokenizer import join_pair

    clf = load_classifier(pair_run, device="cpu")
    test = pd.read_csv(pair_run / "test.csv", dtype=str, keep_default_na=False)
    ref = predict_texts(clf, [join_pair(a, b) for a, b in zip(test["text"], test["text_pair"])])
    swapped = predict_texts(clf, [join_pair(b, a) for a, b in zip(test["text"], test["text_pair"])])
    assert not torch.allclose(ref, swapped, atol=1e-4)  # the two texts are read as a pair, in order
    r = run_cli("predict", pair_run, "--input", pair_run / "test.csv", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["text"], x["text_pair"]) for x in rows] == list(zip(test["text"], test["text_pair"]))
    got = torch.tensor([[x["probabilities"][lab] for lab in clf.labels] for x in rows])
    assert torch.allclose(got, ref, atol=1e-5)
    # the columns it was trained on (first, second) are found by name in a file of the user's
    test.rename(columns={"text": "first", "text_pair": "second"}).head(3).to_parquet(tmp_path / "mine.parquet")
    lines = [f"{a}\t{b}" for a, b in zip(test["text"][:3], test["text_pair"][:3])]
    for args in (["--input", tmp_path / "mine.parquet"], lines):
        r = run_cli("predict", pair_run, *args)
        assert r.returncode == 0, r.stderr
        assert [float(x.split("\t")[1]) for x in r.stdout.splitlines()] == pytest.approx(
            ref[:3].max(1).values.tolist(), abs=1e-4)
    r = run_cli("predict", pair_run, "just one text")
    assert r.returncode == 2 and "has no tab" in r.stderr and "Traceback" not in r.stderr


def test_evaluate_a_pair_classifier_on_its_test_split_gives_the_run_s_test_metrics(pair_run):
    r = run_cli("evaluate", pair_run, "--data-file", pair_run / "test.csv")
    assert r.returncode == 0, r.stderr
    saved = json.loads((pair_run / "metrics.json").read_text())["test"]
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(saved["accuracy"])
    assert json.loads(r.stdout)["macro_f1"] == pytest.approx(saved["macro_f1"])


def test_windows_predict_and_evaluate_give_the_run_s_test_figures(windows_run):
    import pandas as pd

    saved = json.loads((windows_run / "metrics.json").read_text())["test"]
    r = run_cli("evaluate", windows_run, "--data-file", windows_run / "test.csv")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(saved["accuracy"])
    assert json.loads(r.stdout)["loss"] == pytest.approx(saved["loss"], abs=1e-4)
    clf = load_classifier(windows_run, device="cpu")
    test = pd.read_csv(windows_run / "test.csv")["text"].tolist()
    whole = predict_texts(clf, test[:4])
    clf.tokenizer.long_texts = "cut"  # the first window alone answers differently: all windows were read
    assert not torch.allclose(whole, predict_texts(clf, test[:4]), atol=1e-4)


def test_a_multilabel_classifier_predicts_label_sets_at_its_thresholds_and_evaluates_as_trained(multilabel_run):
    import pandas as pd

    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    thresholds = metrics["thresholds"]
    clf = load_classifier(multilabel_run, device="cpu")
    assert clf.multi_label and clf.labels == ["number", "question", "spam"]
    test = pd.read_csv(multilabel_run / "test.csv", dtype=str, keep_default_na=False)
    r = run_cli("predict", multilabel_run, "--input", multilabel_run / "test.csv", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    probs = predict_texts(clf, test["text"].tolist())
    assert torch.allclose(torch.tensor([[x["probabilities"][k] for k in clf.labels] for x in rows]), probs, atol=1e-5)
    assert (probs.sum(1) - 1).abs().max() > 0.01  # sigmoids, one per label, not a softmax
    for x in rows:
        assert x["labels"] == [k for k in clf.labels if x["probabilities"][k] >= thresholds[k]]
    truth = [json.loads(t) for t in test["label"]]
    assert sum(x["labels"] == t for x, t in zip(rows, truth)) / len(rows) == pytest.approx(metrics["test"]["accuracy"])
    r = run_cli("evaluate", multilabel_run, "--data-file", multilabel_run / "test.csv")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    for k in ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss"):
        assert ev[k] == pytest.approx(metrics["test"][k]), k
    assert metrics["test"]["micro_f1"] > 0.6  # learnt something: the labels follow from the words


def test_multilabel_training_reports_the_field_s_metrics_and_refuses_single_label_options(multilabel_run, tmp_path):
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    assert set(metrics["thresholds"]) == {"number", "question", "spam"}
    for split in ("validation", "test"):
        m = metrics[split]
        assert {"subset_accuracy", "micro_f1", "macro_f1", "hamming_loss"} <= set(m) and len(m["per_class"]) == 3
        assert metrics["at_0.5"][split]["num_examples"] == m["num_examples"]
    assert metrics["baseline"]["model"] == "TF-IDF + logistic regression per label" and "calibration" not in metrics
    errors = pd_read(multilabel_run / "errors.csv")
    assert list(errors.columns) == ["text", "label", "predicted", "missed", "added", "wrong_labels"]
    assert (errors["label"] != errors["predicted"]).all()
    data = multilabel_run.parent / "tags.csv"
    r = run_cli("train", "--data-file", data, "--label-column", "tags", "--label-delimiter", "|", "--model", "gpt2-tiny",
                "--weights", "random", "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--operating-point", "best_f1",
                "--out", tmp_path / "run")
    assert r.returncode == 2 and "for single-label data" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def pd_read(path):
    import pandas as pd
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_reduced_precision_prediction_keeps_the_labels_and_moves_the_probabilities_a_little(tiny_run, dtype):
    """bfloat16 / int8: the same labels as float32 on the run's test split, probabilities within 0.05, and not
    bit-equal (the forwards did run in reduced precision); the weights are stored as the dtype says."""
    import pandas as pd
    texts = [str(t) for t in pd.read_csv(tiny_run / "test.csv")["text"]]
    full = predict_texts(load_classifier(tiny_run, "cpu"), texts)
    clf = load_classifier(tiny_run, "cpu", dtype=dtype)
    low = predict_texts(clf, texts)
    assert clf.dtype == dtype
    linears = [m for m in clf.model.blocks.modules() if "Linear" in type(m).__name__]
    if dtype == "bfloat16":
        assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    else:
        assert linears and all("quantized" in type(m).__module__ for m in linears)
    assert (low.argmax(1) == full.argmax(1)).float().mean() >= 0.99
    assert 0 < (low - full).abs().max() < 0.05


def test_dtype_auto_follows_the_hardware_and_onnx_refuses_reduced_precision(tiny_run):
    from llmclf.precision import cpu_has_native_bf16
    assert load_classifier(tiny_run, "cpu", dtype="auto").dtype == ("bfloat16" if cpu_has_native_bf16() else "float32")
    r = run_cli("predict", tiny_run, "hello", "--backend", "onnx", "--dtype", "int8")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--backend onnx runs the float32 graph" in r.stderr
    r = run_cli("predict", tiny_run, "hello", "--dtype", "bfloat16", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["label"] in ("ham", "spam")
