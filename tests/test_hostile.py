"""Hostile input (hypothesis): the data path, predict and the server either handle each input or refuse it
with a clear LlmclfError / 4xx; nothing crashes."""

import csv
import io
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmclf.classifier import TextClassifier
from llmclf.data import read_table
from llmclf.errors import LlmclfError
from llmclf.models import MODELS, build_model
from llmclf.predict import Classifier, predict_texts

# Every code point, lone surrogates included (they cannot even be encoded as UTF-8).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
NASTY = st.sampled_from(["\u202e", "\u200f", "\ufeff", "\x00", "\r", "\r\n", "\t", '"', "'", ",", "\\", "🤖",
                         "👩‍👩‍👧", "\ud800", "\udfff", "<|endoftext|>", "<|im_end|>", " ", "\n", "\x1b[31m"])
HOSTILE_TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=20), NASTY), max_size=12).map("".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def clf(gpt2_tokenizer):
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS["gpt2-tiny"].config), 2).eval()
    return Classifier(model, gpt2_tokenizer, {"labels": ["ham", "spam"], "max_length": 64})


@SETTINGS
@given(texts=st.lists(HOSTILE_TEXT, min_size=1, max_size=5))
def test_predict_handles_any_text(clf, texts):
    probs = predict_texts(clf, texts)
    assert probs.shape == (len(texts), 2)
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(len(texts)), atol=1e-5)


def test_ten_megabyte_texts_are_cut_before_tokenizing(clf):
    words = "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May. " * 160_000  # ~10 MB
    for big in (words, "a" * 10_000_000):
        assert len(big) >= 10_000_000
        got = predict_texts(clf, [big])
        prefix = predict_texts(clf, [big[:20_000]])  # the first 64 tokens come from the first 20k chars
        assert torch.allclose(got, prefix, atol=1e-6)


@SETTINGS
@given(rows=st.lists(st.tuples(HOSTILE_TEXT, st.one_of(HOSTILE_TEXT, st.integers(), st.none(), st.floats())),
                     min_size=1, max_size=8),
       fmt=st.sampled_from(["csv", "tsv", "jsonl"]), bom=st.booleans())
def test_data_files_are_read_or_refused_clearly(tmp_path_factory, rows, fmt, bom):
    path = tmp_path_factory.mktemp("hostile") / f"data.{fmt}"
    if fmt == "jsonl":
        body = "\n".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) for t, lab in rows)
    else:
        # The csv module, not pandas: with pyarrow installed pandas' strings are Arrow strings, which cannot hold
        # the lone surrogates this test writes on purpose.
        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerows([("text", "label"), *rows])
        body = out.getvalue()
    raw = body.encode("utf-8", "surrogatepass")  # lone surrogates make the file invalid UTF-8: must be refused
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    try:
        df = read_table(path)
    except LlmclfError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert list(df.columns) == ["text", "label"] and len(df) >= 1
    assert all(isinstance(t, str) and t.strip() for t in df["text"])
    assert all(isinstance(x, str) for x in df["label"])


@SETTINGS
@given(raw=st.binary(max_size=300), suffix=st.sampled_from(["csv", "tsv", "jsonl", "txt"]))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, raw, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"f.{suffix}"
    path.write_bytes(raw)
    try:
        read_table(path)
    except LlmclfError:
        pass


def test_nan_labels_and_duplicates(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n'
                 '{"text": "c", "label": "y"}\n')
    df = read_table(p)
    assert list(df["text"]) == ["a", "a", "c"]  # duplicates kept (they are data), the unlabelled row skipped
    assert "skipped 1 row(s) with no label" in capsys.readouterr().err


JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
                          lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=3),
                          max_leaves=10)


@pytest.fixture(scope="module")
def client(tiny_run):
    from fastapi.testclient import TestClient

    from llmclf.serve import create_app
    with TestClient(create_app(tiny_run, max_texts=8, max_chars=2000, device="cpu")) as c:
        yield c


@SETTINGS
@given(body=st.one_of(JSON_VALUE.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({"texts": st.lists(HOSTILE_TEXT, max_size=10)}).map(
                          lambda v: json.dumps(v).encode()),
                      st.binary(max_size=200)))
def test_server_answers_200_or_4xx_and_keeps_serving(client, body):
    r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"code", "message"}
    assert client.get("/healthz").json() == {"status": "ok"}
