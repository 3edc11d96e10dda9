"""`llmclf serve`: the REST API against predict_texts, its errors and limits, the micro-batcher, uvicorn."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import run_cli
from llmclf.errors import LlmclfError
from llmclf.predict import load_classifier, predict_texts
from llmclf.serve import create_app
from llmclf.serve.app import MicroBatcher, body_limit

SPAM = "WINNER!! As a valued network customer you have been selected to receive a £900 prize reward! Call 09061701461"
HAM = "Hey, are we still meeting for lunch tomorrow at 12?"


@pytest.fixture(scope="module")
def clf(tiny_run):
    return load_classifier(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(tiny_run, device="cpu")) as c:
        yield c


@pytest.fixture(scope="module")
def test_texts(tiny_run):
    return pd.read_csv(tiny_run / "test.csv")["text"].astype(str).tolist()


def expect_error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"] and "\n" not in body["error"]["message"]
    return body["error"]["message"]


def check_results(results, texts, clf, atol=1e-5):
    ref = predict_texts(clf, texts)
    assert len(results) == len(texts)
    for res, row in zip(results, ref):
        probs = torch.tensor([res["probabilities"][label] for label in clf.labels])
        assert list(res["probabilities"]) == clf.labels
        assert torch.allclose(probs, row, atol=atol), (probs, row)
        assert res["label"] == clf.labels[int(row.argmax())]
        assert res["probability"] == res["probabilities"][res["label"]]


# ------------------------------------------------------------------------------------------- the API

def test_classify_matches_predict_texts_in_order(client, clf, test_texts):
    texts = test_texts[:30] + [SPAM, HAM]
    r = client.post("/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "gpt2-tiny" and set(body) == {"model", "results"}
    check_results(body["results"], texts, clf)
    rev = client.post("/v1/classify", json={"texts": texts[::-1]}).json()["results"]
    assert rev == body["results"][::-1]
    one = client.post("/v1/classify", json={"texts": [texts[3]]}).json()["results"]
    assert one[0]["label"] == body["results"][3]["label"]
    assert one[0]["probability"] == pytest.approx(body["results"][3]["probability"], abs=1e-5)


def test_blank_texts_are_classified(client, clf):
    texts = ["", "   ", "\n\t", "x"]
    r = client.post("/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    check_results(r.json()["results"], texts, clf)


def test_limits_at_the_boundary_pass(clf):
    with TestClient(create_app(clf, max_texts=3, max_chars=20)) as c:
        r = c.post("/v1/classify", json={"texts": ["a" * 20, "é" * 20, "😀" * 20]})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 3


BAD_BODIES = [
    (b"{bad json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe\xfa", 400, "invalid_json"),
    (b'["a", "b"]', 422, "invalid_request"),
    (b'"hello"', 422, "invalid_request"),
    (b'{"texts": "hello"}', 422, "invalid_request"),
    (b'{"texts": [1, 2]}', 422, "invalid_request"),
    (b'{"texts": ["ok", null]}', 422, "invalid_request"),
    (b'{"texts": null}', 422, "invalid_request"),
    (b'{"text": ["hello"]}', 422, "invalid_request"),
    (b'{"texts": ["a"], "extra": 1}', 422, "invalid_request"),
    (b'{}', 422, "invalid_request"),
    (b'{"texts": []}', 422, "empty_texts"),
    (json.dumps({"texts": ["a"] * 65}).encode(), 413, "too_many_texts"),
    (json.dumps({"texts": ["short", "a" * 10001]}).encode(), 413, "text_too_long"),
]


@pytest.mark.parametrize("body,status,code", BAD_BODIES, ids=[f"{c}-{i}" for i, (_, _, c) in enumerate(BAD_BODIES)])
def test_bad_requests_then_still_serving(client, body, status, code):
    msg = expect_error(client.post("/v1/classify", content=body, headers={"content-type": "application/json"}),
                       status, code)
    if code == "too_many_texts":
        assert "64" in msg
    if code == "text_too_long":
        assert "texts.1" in msg and "10000" in msg
    r = client.post("/v1/classify", json={"texts": [HAM]})
    assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_body_size_cap(clf):
    app = create_app(clf, max_texts=2, max_chars=10)
    limit = body_limit(2, 10)
    assert app.state.model_info["limits"] == {"max_texts": 2, "max_chars": 10, "max_body_bytes": limit,
                                              "max_queue": 256, "request_timeout_s": 30.0}
    with TestClient(app) as c:
        big = b'{"texts": ["' + b"a" * limit + b'"]}'
        expect_error(c.post("/v1/classify", content=big), 413, "body_too_large")

        def chunks():  # no Content-Length: the cap must hold while streaming too
            yield b'{"texts": ["'
            for _ in range(limit // 1000 + 2):
                yield b"a" * 1000
            yield b'"]}'

        expect_error(c.post("/v1/classify", content=chunks()), 413, "body_too_large")
        # whitespace padding under the cap is fine: parsed, then judged on its texts
        ok = b'{"texts": ["hi"]' + b" " * 1000 + b"}"
        assert c.post("/v1/classify", content=ok).status_code == 200
        expect_error(c.post("/v1/classify", json={"texts": ["a", "b", "c"]}), 413, "too_many_texts")
        assert c.get("/healthz").json() == {"status": "ok"}


def test_unknown_routes_and_methods(client):
    expect_error(client.get("/v2/classify"), 404, "not_found")
    expect_error(client.post("/nope", json={}), 404, "not_found")
    expect_error(client.get("/static/missing.js"), 404, "not_found")
    r = client.get("/v1/classify")
    expect_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["allow"]
    expect_error(client.delete("/v1/model"), 405, "method_not_allowed")
    expect_error(client.put("/healthz"), 405, "method_not_allowed")
    assert client.post("/v1/classify", json={"texts": [SPAM]}).status_code == 200


def test_inference_failure_is_a_500_without_internal_text_and_the_server_recovers(clf, caplog):
    app = create_app(clf)
    batcher = app.state.batcher
    real = batcher.predict
    calls = []

    def flaky(texts):
        calls.append(texts)
        if len(calls) == 1:
            raise RuntimeError("boom\nsecond line")
        return real(texts)

    batcher.predict = flaky
    with TestClient(app, raise_server_exceptions=False) as c:
        msg = expect_error(c.post("/v1/classify", json={"texts": [HAM]}), 500, "internal_error")
        assert "boom" not in msg and "RuntimeError" not in msg  # the detail is logged, not sent
        assert any("boom" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
        r = c.post("/v1/classify", json={"texts": [HAM]})
        assert r.status_code == 200, r.text


def test_healthz_model_and_openapi(client, clf, tiny_run):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert info["model"] == "gpt2-tiny" and info["labels"] == clf.labels == ["ham", "spam"]
    assert info["max_length"] == clf.max_length and info["pooling"] == clf.config["pooling"]
    assert info["backbone"] == clf.config["backbone"] and info["num_classes"] == 2
    assert info["dtype"] == clf.dtype == "float32"  # the precision the server predicts in (--dtype)
    assert info["metrics"]["test"] == metrics["test"] and info["metrics"]["validation"] == metrics["validation"]
    assert "options" not in info["metrics"] and "data_source" not in info["metrics"]  # no local paths
    assert info["limits"]["max_texts"] == 64 and info["limits"]["max_chars"] == 10000
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/classify"]["post"]
    assert "texts" in op["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "413", "422"} <= set(op["responses"])
    assert "/v1/model" in spec["paths"] and "/healthz" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_sources_and_app_reuse(clf, tiny_run):
    app = create_app(clf)  # a loaded Classifier: no run dir, so config.json's train_metrics
    for _ in range(2):  # the app survives its lifespan ending and starting again (a new event loop)
        with TestClient(app) as c:
            assert c.get("/v1/model").json()["metrics"]["test"] == clf.config["train_metrics"]["test"]
            assert c.post("/v1/classify", json={"texts": [HAM]}).status_code == 200
    with TestClient(create_app(tiny_run / "model", device="cpu")) as c:  # RUN_DIR/model: metrics.json one level up
        info = c.get("/v1/model").json()
    assert info["metrics"]["train_seconds"] == json.loads((tiny_run / "metrics.json").read_text())["train_seconds"]


def test_web_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in ('<textarea id="text"', 'id="classify"', 'aria-live', 'id="batch"', "/static/app.js"):
        assert needle in r.text
    for f, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{f}")
        assert r.status_code == 200 and kind in r.headers["content-type"]


def test_bad_run_dir_and_limits_raise_llmclf_error(tmp_path, clf):
    with pytest.raises(LlmclfError, match="no such run"):
        create_app(tmp_path / "missing")
    with pytest.raises(LlmclfError, match="not a saved classifier"):
        create_app(tmp_path)
    with pytest.raises(LlmclfError, match="at least 1"):
        create_app(clf, max_texts=0)
    with pytest.raises(LlmclfError, match="max-queue"):
        create_app(clf, max_texts=8, max_queue=4)
    with pytest.raises(LlmclfError, match="request-timeout"):
        create_app(clf, request_timeout=0)


# ------------------------------------------------------------------------------------ micro-batcher

def test_micro_batcher_coalesces_and_splits():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return torch.tensor([[float(len(t)), 1.0] for t in texts])

    async def main(max_batch):
        b = MicroBatcher(predict, max_batch_texts=max_batch, max_wait_s=0.005)
        reqs = [["x" * i] * (1 + i % 3) for i in range(1, 11)]
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.aclose()
        for r, o in zip(reqs, outs):
            assert o[:, 0].tolist() == [float(len(t)) for t in r]
        return len(reqs), sum(len(r) for r in reqs)

    n, total = asyncio.run(main(64))
    assert len(calls) == 1 and len(calls[0]) == total  # ten concurrent requests, one predict call
    calls.clear()
    asyncio.run(main(5))
    assert all(len(c) <= 5 for c in calls) and sum(map(len, calls)) == total and len(calls) > 1


def test_micro_batcher_failure_reaches_each_request_and_loop_survives():
    state = {"fail": True}

    def predict(texts):
        if state["fail"]:
            raise ValueError("bad batch")
        return torch.zeros(len(texts), 2)

    async def main():
        b = MicroBatcher(predict, max_wait_s=0.001)
        outs = await asyncio.gather(b.submit(["a"]), b.submit(["b", "c"]), return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outs)
        state["fail"] = False
        assert (await b.submit(["d", "e"])).shape == (2, 2)
        await b.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------------- a real uvicorn server

@contextmanager
def live_server(app):
    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_concurrent_requests_get_their_own_results(clf, test_texts):
    app = create_app(clf, batch_wait_ms=5)
    n = 16
    requests = [test_texts[i * 4: i * 4 + 1 + i % 4] for i in range(n)]  # 1 to 4 texts each, all different
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def worker(i, url):
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                barrier.wait(timeout=10)
                r = http.post("/v1/classify", json={"texts": requests[i]})
                assert r.status_code == 200, r.text
                results[i] = r.json()["results"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with live_server(app) as url:
        threads = [threading.Thread(target=worker, args=(i, url)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert not errors, errors
    for texts, res in zip(requests, results):
        check_results(res, texts, clf)
    b = app.state.batcher
    assert b.requests == n and 1 <= b.batches <= n


# ------------------------------------------------------------------------------- serve() and the CLI

def test_serve_single_and_multi_worker(monkeypatch, tiny_run):
    import uvicorn

    from llmclf.serve import app as app_module
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append((target, kw)))
    for k in ("RUN_DIR", "MAX_TEXTS", "MAX_CHARS", "MAX_QUEUE", "REQUEST_TIMEOUT", "DEVICE"):
        monkeypatch.setenv(f"LLMCLF_SERVE_{k}", "")  # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(f"LLMCLF_SERVE_{k}")

    app_module.serve(tiny_run, port=8123, workers=1, max_texts=5, max_chars=50, device="cpu")
    target, kw = calls.pop()
    assert target.state.model_info["limits"]["max_texts"] == 5 and kw["port"] == 8123 and "workers" not in kw
    assert kw["timeout_graceful_shutdown"] == 10.0  # SIGTERM: bounded grace by default

    app_module.serve(tiny_run, host="127.0.0.1", port=8124, workers=2, max_texts=7, max_chars=70, device="cpu",
                     max_queue=21, request_timeout=4.5, shutdown_grace=3)
    target, kw = calls.pop()
    assert target == "llmclf.serve.app:app_from_env" and kw["factory"] is True and kw["workers"] == 2
    assert kw["timeout_graceful_shutdown"] == 3.0
    # what each worker process does with the environment serve() left:
    app = app_module.app_from_env()
    assert app.state.model_info["limits"] == {"max_texts": 7, "max_chars": 70, "max_body_bytes": body_limit(7, 70),
                                              "max_queue": 21, "request_timeout_s": 4.5}
    with TestClient(app) as c:
        expect_error(c.post("/v1/classify", json={"texts": ["a"] * 8}), 413, "too_many_texts")
        assert c.post("/v1/classify", json={"texts": [HAM]}).status_code == 200

    with pytest.raises(LlmclfError):
        app_module.serve(tiny_run / "missing", workers=2)
    with pytest.raises(LlmclfError, match="workers"):
        app_module.serve(tiny_run, workers=0)
    assert not calls  # nothing started for a bad run


def test_cli_serve_missing_run_is_a_one_line_error(tmp_path):
    r = run_cli("serve", tmp_path / "nope", "--port", "0", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("llmclf: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_pair_classifier_takes_text_pairs_and_a_single_text_one_refuses_them(pair_run, client):
    from llmclf.tokenizer import join_pair

    clf = load_classifier(pair_run, device="cpu")
    test = pd.read_csv(pair_run / "test.csv", dtype=str, keep_default_na=False).head(5)
    with TestClient(create_app(clf)) as pairs:
        assert pairs.get("/v1/model").json()["text_pairs"] is True
        r = pairs.post("/v1/classify", json={"texts": list(test["text"]), "text_pairs": list(test["text_pair"])})
        assert r.status_code == 200, r.text
        check_results(r.json()["results"], [join_pair(a, b) for a, b in zip(test["text"], test["text_pair"])], clf)
        expect_error(pairs.post("/v1/classify", json={"texts": ["a"]}), 422, "invalid_request")
        msg = expect_error(pairs.post("/v1/classify", json={"texts": ["a", "b"], "text_pairs": ["c"]}), 422,
                           "invalid_request")
        assert '"text_pairs" has 1 texts, "texts" 2' in msg
        too_long = {"texts": ["a"], "text_pairs": ["x" * 10001]}
        assert "text_pairs.0 has 10001" in expect_error(pairs.post("/v1/classify", json=too_long), 413, "text_too_long")
        schema = pairs.get("/openapi.json").json()["paths"]["/v1/classify"]["post"]["requestBody"]
        props = schema["content"]["application/json"]["schema"]["properties"]
        assert props["text_pairs"]["maxItems"] == 64 and props["text_pairs"]["items"]["maxLength"] == 10000
    assert client.get("/v1/model").json()["text_pairs"] is False
    expect_error(client.post("/v1/classify", json={"texts": ["a"], "text_pairs": ["b"]}), 422, "invalid_request")


def test_a_multilabel_classifier_answers_label_sets_and_a_single_label_one_does_not(multilabel_run, client):
    from llmclf.predict import predicted_sets

    clf = load_classifier(multilabel_run, device="cpu")
    texts = pd.read_csv(multilabel_run / "test.csv")["text"].astype(str).head(6).tolist()
    with TestClient(create_app(clf)) as c:
        info = c.get("/v1/model").json()
        assert info["multi_label"] is True and set(info["thresholds"]) == set(clf.labels)
        r = c.post("/v1/classify", json={"texts": texts})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        check_results(results, texts, clf)  # the probabilities, and "label": the most probable one
        assert [x["labels"] for x in results] == predicted_sets(clf, predict_texts(clf, texts))
        schema = c.get("/openapi.json").json()["components"]["schemas"]["ClassifyResult"]
        assert "labels" in schema["properties"]
    single = client.post("/v1/classify", json={"texts": ["hello"]}).json()["results"][0]
    assert "labels" not in single and client.get("/v1/model").json()["multi_label"] is False
