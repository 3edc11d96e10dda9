"""--blend: the LLM mixed with TF-IDF + logistic regression, chosen on validation and saved as the classifier;
every use of the classifier (predict, classify, evaluate, the server) gives the blended probabilities."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.baseline import beside_run
from llmclf.blend import BLEND_FILE, GRID, macro_f1, mix
from llmclf.data import PreparedData
from llmclf.errors import LlmclfError
from llmclf.options import FinetuneOptions, check_options
from llmclf.predict import classify, load_classifier, predict_texts

TRAIN = ["train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--epochs", "1", "--tokenizer-dir",
         GPT2_TOKENIZER_DIR]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _read(run, split):
    return pd.read_csv(run / f"{split}.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def blend_run(tmp_path_factory, sms_file):
    """gpt2-tiny (random weights, 1 epoch) on the real SMS file with --blend tfidf (uncalibrated: the blend
    alone is what these tests check; calibration on top of it is tests/test_decision.py's)."""
    out = tmp_path_factory.mktemp("blend") / "run"
    r = run_cli(*TRAIN, "--data-file", sms_file, "--blend", "tfidf", "--no-calibrate", "--out", out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("blend w=")  # the last line: the blend's test accuracy
    assert r.stdout.strip().splitlines()[0].endswith("(the LLM alone)")  # the first: not what was saved
    return out


@pytest.fixture(scope="module")
def parts(blend_run):
    """What the blend is made of, recomputed independently: the LLM alone (the loaded classifier with its
    blend stripped) and TF-IDF + LR fitted again on the run's training split."""
    m = json.loads((blend_run / "metrics.json").read_text())
    clf = load_classifier(blend_run, "cpu")
    llm = dataclasses.replace(clf, blend=None)
    splits = {s: _read(blend_run, s) for s in ("train", "validation", "test")}
    _, kept = beside_run(PreparedData(**splits, labels=m["labels"], source="", class_counts={}), m["options"]["seed"],
                         keep=True)
    return {"metrics": m, "clf": clf, "llm": llm, "refit": kept, "splits": splits}


def test_weight_is_the_validation_macro_f1_argmax_and_beats_both_parts(parts):
    m, refit = parts["metrics"], parts["refit"]
    b = m["blend"]
    assert b["weight"] in GRID and b["saved"] is True and parts["clf"].blend.weight == b["weight"]
    val = parts["splits"]["validation"]
    p_llm = predict_texts(parts["llm"], list(val["text"])).double().numpy()
    p_tf, y = refit["validation"]
    f1 = {w: macro_f1(mix(p_llm, p_tf, w), y, 2) for w in GRID}
    best = max(f1.values())
    assert b["weight"] == max(w for w in GRID if f1[w] >= best - 1e-12)  # ties: the most LLM
    assert f1[b["weight"]] >= f1[1.0] and f1[b["weight"]] >= f1[0.0]
    assert f1[b["weight"]] > f1[1.0]  # the random tiny LLM alone is far below TF-IDF: the blend moves w off 1
    assert b["validation_macro_f1"][f"{b['weight']:.1f}"] == pytest.approx(f1[b["weight"]], abs=1e-6)
    acc = float((mix(p_llm, p_tf, b["weight"]).argmax(1) == y).mean())
    assert b["validation"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    # the per-split metrics stay the LLM's own (within one example: training predicts through its cache)
    assert m["validation"]["accuracy"] == pytest.approx(float((p_llm.argmax(1) == y).mean()), abs=1.01 / len(y))
    assert m["validation"]["accuracy"] < b["validation"]["accuracy"]


def test_rebuilt_tfidf_equals_the_fitted_one_to_1e9(parts, sms_file):
    """The stored vocabulary, idf, coef and intercept rebuild the sklearn pipeline exactly: on every text of
    the SMS file its probabilities equal those of the pipeline fitted on the same split."""
    texts = pd.read_csv(sms_file, sep="\t", header=None, quoting=3, dtype=str)[1].fillna("").tolist()
    assert len(texts) > 5000
    fitted = parts["refit"]["pipeline"]
    rebuilt = parts["clf"].blend
    want = np.zeros((len(texts), 2))
    want[:, fitted.classes_] = fitted.predict_proba(texts)
    got = rebuilt.tfidf_probs(texts)
    assert np.abs(got - want).max() < 1e-9
    assert np.abs(want - 0.5).max() > 0.4  # not a constant


def test_predict_cli_gives_the_blended_probabilities(parts, blend_run, tmp_path):
    texts = [t for t in parts["splits"]["test"]["text"] if t.strip()][:40]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = run_cli("predict", blend_run, "--json", "--input", tmp_path / "texts.txt", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    got = np.array([[json.loads(x)["probabilities"][lab] for lab in ("ham", "spam")] for x in r.stdout.splitlines()])
    p_llm = predict_texts(parts["llm"], texts).double().numpy()
    fitted = parts["refit"]["pipeline"]
    p_tf = np.zeros((len(texts), 2))
    p_tf[:, fitted.classes_] = fitted.predict_proba(texts)
    want = mix(p_llm, p_tf, parts["metrics"]["blend"]["weight"])
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(got - p_llm).max() > 0.05  # the blend is in effect, not the LLM alone
    label, p = classify(texts[0], parts["clf"])
    assert p == pytest.approx(want[0].max(), abs=1e-6) and label == ("ham", "spam")[int(want[0].argmax())]


def test_evaluate_uses_the_blend(parts, blend_run):
    r = run_cli("evaluate", blend_run, "--data-file", blend_run / "test.csv", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    want = parts["metrics"]["blend"]["test"]
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
    assert got["confusion_matrix"] == want["confusion_matrix"]
    assert got["accuracy"] != pytest.approx(parts["metrics"]["test"]["accuracy"], abs=1e-9)


def test_server_returns_the_blended_probabilities(parts, blend_run):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app
    texts = list(parts["splits"]["validation"]["text"][:10])
    want = predict_texts(parts["clf"], texts)
    with TestClient(create_app(blend_run, device="cpu")) as c:
        results = c.post("/v1/classify", json={"texts": texts}).json()["results"]
        info = c.get("/v1/model").json()
    got = torch.tensor([[r["probabilities"][lab] for lab in ("ham", "spam")] for r in results])
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, predict_texts(parts["llm"], texts), atol=1e-2)
    assert info["blend_weight"] == parts["metrics"]["blend"]["weight"]
    assert info["metrics"]["blend"]["weight"] == info["blend_weight"]


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run / "model", dst / "model")
    return dst


def _one_line_error(r, fragment):
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    err = [x for x in r.stderr.strip().splitlines() if x.startswith("llmclf: error:")]
    assert len(err) == 1 and fragment in err[0], r.stderr


def test_a_changed_weight_or_idf_is_refused(blend_run, tmp_path):
    from safetensors.numpy import load_file, save_file

    run = _copy(blend_run, tmp_path)
    cfg_file = run / "model" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    w = cfg["blend"]["weight"]
    cfg["blend"]["weight"] = 0.9 if w != 0.9 else 0.8
    cfg_file.write_text(json.dumps(cfg))
    _one_line_error(run_cli("predict", run, "hello"), "field 'blend' does not match the manifest")

    run = _copy(blend_run, tmp_path / "b")
    f = run / "model" / BLEND_FILE
    t = load_file(str(f))
    t["idf"][0] *= 1.5
    save_file(t, str(f))
    _one_line_error(run_cli("predict", run, "hello"), "blend.safetensors: sha256 does not match the manifest")


def test_a_bad_blend_field_is_refused_even_with_a_matching_manifest(blend_run, tmp_path):
    """A weight off the grid, with the manifest recomputed to match: refused by the field's own check."""
    from llmclf.artifact import canonical_digest

    run = _copy(blend_run, tmp_path)
    cfg_file = run / "model" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["blend"]["weight"] = 0.35
    cfg["integrity"]["fields"]["blend"] = canonical_digest(cfg["blend"])
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match=r"field 'blend' has weight 0.35: must be one of"):
        load_classifier(run, "cpu")


@pytest.fixture(scope="module")
def punctuation_csv(tmp_path_factory):
    """Label = the final '!' or '?', over random words: TF-IDF's tokens never see it, the LLM's last token does."""
    rng = random.Random(0)
    words = "apple river stone cloud table green music paper light window garden summer yellow bridge".split()
    rows = [(" ".join(rng.choice(words) for _ in range(5)) + (" !" if i % 2 else " ?"), "excited" if i % 2 else "asking")
            for i in range(300)]
    f = tmp_path_factory.mktemp("punct") / "punct.csv"
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(f, index=False)
    return f


def test_auto_keeps_the_llm_alone_when_w_is_1(tmp_path, punctuation_csv):
    out = tmp_path / "run"
    # the label sits in the last token: read there (not the default mean), at the constant rate this was built for
    r = run_cli(*TRAIN, "--epochs", "2", "--lr", "1e-3", "--data-file", punctuation_csv, "--blend", "auto",
                "--pooling", "last_nonpad", "--schedule", "constant", "--warmup", "0", "--out", out, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    b = json.loads((out / "metrics.json").read_text())["blend"]
    assert b["weight"] == 1.0 and b["saved"] is False
    assert b["validation_macro_f1"]["1.0"] > b["validation_macro_f1"]["0.0"]
    assert not (out / "model" / BLEND_FILE).exists()
    assert "blend" not in json.loads((out / "model" / "config.json").read_text())
    assert load_classifier(out, "cpu").blend is None
    assert "not saved" in [x for x in r.stdout.splitlines() if x.startswith("blend w=")][0]


def test_bad_blend_values_are_one_line_errors(tmp_path):
    r = run_cli("train", "--blend", "bogus", "--out", tmp_path / "x")
    errors = [x for x in r.stderr.splitlines() if "error:" in x]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert "--blend" in errors[0] and "'off', 'tfidf', 'auto'" in errors[0]
    with pytest.raises(LlmclfError, match=r"^--blend must be one of off, tfidf, auto, not 'bogus'$"):
        check_options(FinetuneOptions(out="x", blend="bogus"))
    with pytest.raises(LlmclfError, match=r"--blend tfidf chooses its weight on the validation split"):
        check_options(FinetuneOptions(out="x", blend="tfidf", split=(0.8, 0.0)))
    assert check_options(FinetuneOptions(out="x")).blend == "auto"  # the default since bench/quality.py's search


def test_experiment_grids_accept_blend(tmp_path, punctuation_csv):
    from llmclf.experiment import run_experiments
    grid = tmp_path / "g.toml"
    grid.write_text('[defaults]\nmodel = "gpt2-tiny"\nweights = "random"\nepochs = 1\n'
                    '[[run]]\nname = "blended"\nblend = "tfidf"\n')
    base = {"data_file": str(punctuation_csv), "tokenizer_dir": str(GPT2_TOKENIZER_DIR)}
    run_experiments(grid=str(grid), out=tmp_path / "exp", base=base, log=lambda *_: None)
    run = tmp_path / "exp" / "runs" / "blended"
    assert json.loads((run / "metrics.json").read_text())["options"]["blend"] == "tfidf"
    cfg = json.loads((run / "model" / "config.json").read_text())
    digest = hashlib.sha256((run / "model" / BLEND_FILE).read_bytes()).hexdigest()
    assert cfg["integrity"]["files"][BLEND_FILE] == digest and cfg["blend"]["weight"] in GRID
    grid.write_text(grid.read_text().replace('"tfidf"', '"bogus"'))
    with pytest.raises(LlmclfError, match=r"row 'blended': blend must be one of off, tfidf, auto"):
        run_experiments(grid=str(grid), out=tmp_path / "exp2", base=base)
