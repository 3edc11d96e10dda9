"""Calibration (temperature on validation) and the operating point (a threshold for a stated target): fitted
as decision.py says, stored with the classifier, and applied by predict, evaluate and the server exactly as
computed by hand from the model's own probabilities."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.decision import (Decision, calibrate, calibration_scores, choose_threshold, expected_calibration_error,
                             fit_temperature, rates)
from llmclf.errors import LlmclfError
from llmclf.predict import classify, load_classifier, predict_texts

TRAIN = ["train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1", "--tokenizer-dir",
         GPT2_TOKENIZER_DIR]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 3))
    y = np.array([rng.choice(3, p=p) for p in _softmax(z / 2.5)])  # the truth is 2.5 times less sure
    t = fit_temperature(_softmax(z), y)
    assert t == pytest.approx(2.5, abs=0.15)
    assert calibration_scores(calibrate(_softmax(z), t), y)["nll"] < calibration_scores(_softmax(z), y)["nll"]
    np.testing.assert_allclose(calibrate(_softmax(z), t), _softmax(z / t), atol=1e-12)  # = scaling the logits


def test_ece_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])
    # top-class confidences 0.9, 0.8, 0.7, 0.55 fall in four different bins of 15; correct: 1, 0, 1, 0
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert expected_calibration_error(probs, y) == pytest.approx(want)
    brier = np.mean([(0.1 ** 2) * 2, 0.8 ** 2 * 2, 0.3 ** 2 * 2, 0.55 ** 2 * 2])
    assert calibration_scores(probs, y)["brier"] == pytest.approx(brier)


def test_thresholds_meet_their_targets_with_the_most_recall():
    scores = np.array([0.05, 0.2, 0.4, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95, 0.99])
    pos = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    t, met = choose_threshold(scores, pos, "max_fpr=0")  # no negative flagged: above 0.9
    assert met and 0.9 < t <= 0.95 and rates(scores, pos, t)["false_positive_rate"] == 0
    t, _ = choose_threshold(scores, pos, "max_fpr=0.2")  # one negative of five may be flagged (the 0.9 one)
    assert 0.65 < t <= 0.7 and rates(scores, pos, t)["recall"] == 0.8
    t, met = choose_threshold(scores, pos, "min_precision=0.8")
    r = rates(scores, pos, t)
    assert met and r["precision"] >= 0.8 and r["recall"] == 0.8  # from 0.7 up: 4 of the 5 positives, 1 negative
    better = [rates(scores, pos, c) for c in np.linspace(0, 1, 1001)]
    assert max(x["recall"] for x in better if x["precision"] >= 0.8 and x["flagged"]) == r["recall"]
    t, _ = choose_threshold(scores, pos, "best_f1")
    assert rates(scores, pos, t)["f1"] == pytest.approx(max(x["f1"] for x in better))
    t, met = choose_threshold(scores[~pos], pos[~pos], "min_recall=0.5")  # no positive at all: unmet, 0.5 kept
    assert (t, met) == (0.5, False)


@pytest.mark.parametrize("spec", ["max_fpr=2", "max_fpr", "best_f1=0.3", "top"])
def test_a_bad_operating_point_is_one_line(spec):
    from llmclf.options import FinetuneOptions, check_options
    with pytest.raises(LlmclfError, match="--operating-point") as e:
        check_options(FinetuneOptions(out="x", operating_point=spec))
    assert "\n" not in str(e.value)


@pytest.fixture
def op_run(decision_run):
    return decision_run


def _raw_and_calibrated(run, texts):
    """(uncalibrated probabilities, what the stored decision makes of them by hand, the decision)."""
    clf = load_classifier(run, "cpu")
    raw = predict_texts(dataclasses.replace(clf, decision=Decision()), texts).double().numpy()
    d = clf.decision
    cal = _softmax(np.log(np.clip(raw, 1e-12, None)) / d.temperature)
    labels = np.where(cal[:, d.positive] >= d.threshold, d.positive, 1 - d.positive)
    return raw, cal, labels, clf


def test_metrics_json_holds_calibration_and_the_operating_point(op_run):
    m = json.loads((op_run / "metrics.json").read_text())
    assert (op_run / "calibration.png").stat().st_size > 5000 and (op_run / "curves.png").stat().st_size > 5000
    cal, op = m["calibration"], m["operating_point"]
    for split in ("train", "validation", "test"):
        assert set(cal[split]["before"]) == set(cal[split]["after"]) == {"ece", "brier", "nll"}
    assert cal["validation"]["after"]["ece"] <= cal["validation"]["before"]["ece"]
    assert cal["binning"] == "15 equal-width bins of the top-class probability" and 0.05 <= cal["temperature"] <= 20
    cfg = json.loads((op_run / "model" / "config.json").read_text())["decision"]
    assert cfg == {"temperature": cal["temperature"], "threshold": op["threshold"], "positive": 1,
                   "target": "max_fpr=0.005"}
    assert op["positive_label"] == "spam" and op["met_on_validation"] is True
    assert op["validation"]["false_positive_rate"] <= 0.005
    # the test figures at the threshold, recomputed from the run's own test split
    test = pd.read_csv(op_run / "test.csv", dtype=str, keep_default_na=False)
    _, cal_p, _, _ = _raw_and_calibrated(op_run, list(test["text"]))
    want = rates(cal_p[:, 1], (test["label"] == "spam").to_numpy(), op["threshold"])
    for k in ("precision", "recall", "false_positive_rate"):
        assert op["test"]["at_threshold"][k] == pytest.approx(want[k], abs=1e-9)


def test_predict_evaluate_and_serve_apply_the_stored_temperature_and_threshold(op_run, tmp_path):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app
    test = pd.read_csv(op_run / "test.csv", dtype=str, keep_default_na=False)
    texts = [t for t in test["text"] if t.strip()][:60]
    raw, cal, labels, clf = _raw_and_calibrated(op_run, texts)
    assert clf.decision.temperature != 1.0 and np.abs(cal - raw).max() > 1e-3  # calibration is in effect
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = run_cli("predict", op_run, "--json", "--input", tmp_path / "t.txt", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    np.testing.assert_allclose([[x["probabilities"][k] for k in ("ham", "spam")] for x in rows], cal, atol=1e-6)
    assert [x["label"] for x in rows] == [clf.labels[i] for i in labels]
    assert classify(texts[0], clf)[0] == clf.labels[labels[0]]
    with TestClient(create_app(op_run, device="cpu")) as c:
        results = c.post("/v1/classify", json={"texts": texts}).json()["results"]
        info = c.get("/v1/model").json()
    assert [x["label"] for x in results] == [clf.labels[i] for i in labels]
    assert info["decision"]["threshold"] == clf.decision.threshold and info["decision"]["positive_label"] == "spam"
    r = run_cli("evaluate", op_run, "--data-file", op_run / "test.csv", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    at = json.loads(r.stdout)["operating_point"]
    m = json.loads((op_run / "metrics.json").read_text())["operating_point"]["test"]["at_threshold"]
    assert at["false_positive_rate"] == pytest.approx(m["false_positive_rate"], abs=1e-9)
    assert at["recall"] == pytest.approx(m["recall"], abs=1e-9)


def test_a_threshold_is_applied_even_where_it_overrules_the_argmax():
    d = Decision(temperature=1.0, threshold=0.9, positive=1)
    probs = np.array([[0.2, 0.8], [0.05, 0.95], [0.6, 0.4]])
    assert d.choose(probs).tolist() == [0, 1, 0]  # 0.8 would be spam by argmax; below 0.9 it is ham
    assert Decision(threshold=0.3, positive=0).choose(probs).tolist() == [1, 1, 0]


def test_a_tampered_decision_is_refused_even_with_a_matching_manifest(op_run, tmp_path):
    import shutil

    from llmclf.artifact import canonical_digest
    shutil.copytree(op_run / "model", tmp_path / "model")
    f = tmp_path / "model" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["decision"]["temperature"] = 0
    cfg["integrity"]["fields"]["decision"] = canonical_digest(cfg["decision"])
    f.write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match="field 'decision' has temperature 0"):
        load_classifier(tmp_path, "cpu")


def test_refusals_leave_nothing(tmp_path, sms_file):
    three = tmp_path / "three.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(60)], "label": ["a", "b", "c"] * 20}).to_csv(three, index=False)
    for args, fragment in (((three, "--operating-point", "best_f1"), "chooses a threshold between two classes"),
                           ((sms_file, "--positive-label", "eggs"), "--positive-label 'eggs' is not a label")):
        out = tmp_path / "run"
        r = run_cli(*TRAIN, "--data-file", args[0], *args[1:], "--out", out)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert fragment in r.stderr.strip().splitlines()[-1] and not out.exists()


def test_book_recipe_is_uncalibrated_argmax():
    from llmclf.options import from_recipe
    o = from_recipe("book")
    assert o.calibrate is False and o.operating_point == "argmax"


def test_label_thresholds_are_each_label_s_best_f1_on_validation():
    import numpy as np

    from llmclf.decision import Decision, choose_label_thresholds, load_decision

    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    p = np.array([[0.3, 0.2, 0.1], [0.35, 0.4, 0.2], [0.1, 0.9, 0.3], [0.05, 0.6, 0.4]])
    t = choose_label_thresholds(p, y)
    # label 0: anything in (0.1, 0.3] separates; nearest 0.5 on the grid is 0.3. label 1: only 0.9 is positive,
    # any threshold in (0.6, 0.9] gets F1 1; nearest 0.5 is 0.65. label 2: never positive -> 0.5
    assert t == [0.3, 0.65, 0.5]
    d = Decision(thresholds=tuple(t))
    assert d.choose_sets(p).tolist() == [[True, False, False], [True, False, False], [False, True, False],
                                         [False, False, False]]
    cfg = {"num_classes": 3, "decision": d.to_config()}
    assert load_decision(cfg, "config.json") == d
    cfg["decision"]["thresholds"] = [0.5, 2.0, 0.5]
    with pytest.raises(LlmclfError, match="thresholds"):
        load_decision(cfg, "config.json")
