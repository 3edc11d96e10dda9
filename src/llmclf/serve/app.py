"""The HTTP service: a FastAPI app around one saved classifier, loaded once when the app is created.

Routes
    POST /v1/classify   {"texts": ["...", ...]} -> {"model": NAME, "results": [{"label", "probability",
                        "probabilities": {label: p}}, ...]}, one result per text, in input order.
    GET  /v1/model      labels, model name, backbone config, max_length, pooling, the run's metrics
                        (train/validation/test from RUN_DIR/metrics.json, else config.json's train_metrics;
                        local paths and training options left out) and the request limits.
    GET  /healthz       {"status": "ok"}
    GET  /              the web page (static/index.html); /static/* its files.
    GET  /openapi.json, /docs   FastAPI's schema and Swagger UI. Swagger UI's files come from the
                        fastapi-offline package (/static-offline-docs/*), not a CDN, so /docs works offline.
                        (No /redoc: ReDoc still fetches its logo from a CDN.)

Errors all have one shape, {"error": {"code": CODE, "message": ONE_LINE}}:
    400 invalid_json          the body is not valid UTF-8 JSON
    413 body_too_large        body over max_texts * (12 * max_chars + 8) + 64 KiB bytes (checked before
                              parsing; that bound fits any valid request however its JSON escapes characters)
    413 too_many_texts        more than max_texts texts (default 64); 413 rather than 422 because the request
                              is well formed, only too big: split it into several requests
    413 text_too_long         a text over max_chars characters (Unicode code points; default 10000)
    422 invalid_request       the JSON is not {"texts": [string, ...]} (missing field, wrong type, extra field)
    422 empty_texts           "texts" is an empty list
    404 not_found, 405 method_not_allowed, 500 internal_error
Bad requests never affect the server: each is answered and the next one is served as usual.

Empty and whitespace-only texts are classified, not refused: a blank line in a batch should not fail the
whole batch. The model sees no content (an empty text is one pad token), so its answer is only the model's
prior; clients that care should drop blank texts first (the web page does).

Inference runs on one dedicated worker thread, never on the event loop. A micro-batcher (an asyncio queue)
gathers the texts of requests that arrive together, waiting up to `batch_wait_ms` (default 2 ms) after the
first one or until `max_batch_texts` texts, makes one `predict_texts` call and hands each request its own
rows. Predictions do not depend on what they are batched with (causal mask, pooling at the last real
token), so batching changes throughput only.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LlmclfError
from ..predict import Classifier, load_classifier, predict_texts

STATIC_DIR = Path(__file__).resolve().parent / "static"
ENV_PREFIX = "LLMCLF_SERVE_"
METRIC_KEYS = ("train", "validation", "test", "class_counts", "num_examples", "train_seconds",
               "trainable_parameters", "examples_seen", "weights")


# ----------------------------------------------------------------------------------------------- schemas

class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(description="texts to classify (at least one, at most max_texts)",
                             examples=[["WINNER!! Claim your free prize now, text WIN to 80082",
                                        "Are we still on for lunch tomorrow?"]])


class ClassifyResult(BaseModel):
    label: str = Field(description="the most probable label")
    probability: float = Field(description="probability of that label")
    probabilities: dict[str, float] = Field(description="probability of every label")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
              415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error"}


def _validation_message(errors) -> str:
    """One line out of pydantic's error list, e.g. 'texts.2: Input should be a valid string'."""
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


# ------------------------------------------------------------------------------------------ micro-batcher

class MicroBatcher:
    """Coalesce concurrent predict calls: one `predict(texts) -> (N, C) tensor` call per batch.

    `submit(texts)` queues the request and awaits its rows. The loop takes the first queued request, then
    whatever else arrives within `max_wait_s`, up to `max_batch_texts` texts (a request never splits; one that
    would overflow the batch opens the next one), runs `predict` on the one-thread executor and resolves each
    request's future with its slice. A failing batch fails each of its requests, not the loop.
    """

    def __init__(self, predict, max_batch_texts: int = 64, max_wait_s: float = 0.002):
        self.predict = predict
        self.max_batch_texts = max(1, int(max_batch_texts))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.executor = None
        self.batches = 0
        self.requests = 0
        self._loop = None
        self._queue = None
        self._task = None

    def _ensure_started(self):
        loop = asyncio.get_running_loop()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-infer")
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._run())

    async def submit(self, texts: list[str]):
        self._ensure_started()
        fut = self._loop.create_future()
        self._queue.put_nowait((list(texts), fut))
        return await fut

    def _drain(self, batch, n, carry):
        """Move queued requests into the batch while they fit; returns (n, carry)."""
        while carry is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if n + len(item[0]) > self.max_batch_texts:
                return n, item
            batch.append(item)
            n += len(item[0])
        return n, carry

    async def _run(self):
        carry = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch, n = [first], len(first[0])
            n, carry = self._drain(batch, n, carry)
            if carry is None and n < self.max_batch_texts and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)
                n, carry = self._drain(batch, n, carry)
            batch = [(t, f) for t, f in batch if not f.done()]  # skip requests whose client went away
            if not batch:
                continue
            texts = [t for ts, _ in batch for t in ts]
            try:
                probs = await self._loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as e:  # noqa: BLE001 - handed to each waiting request
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(batch)
            start = 0
            for ts, f in batch:
                if not f.done():
                    f.set_result(probs[start:start + len(ts)])
                start += len(ts)

    async def aclose(self):
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._task = None
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


# ------------------------------------------------------------------------------------------------ the app

def _run_metrics(run_dir: Path | None, config: dict) -> dict:
    metrics = None
    if run_dir is not None:
        # RUN_DIR/model given (it holds config.json): the run's metrics.json is one level up
        f = (run_dir.parent if (run_dir / "config.json").is_file() else run_dir) / "metrics.json"
        try:
            metrics = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
        except (ValueError, OSError):
            metrics = None
    if not isinstance(metrics, dict):
        metrics = config.get("train_metrics") or {}
    return {k: metrics[k] for k in METRIC_KEYS if k in metrics}


def body_limit(max_texts: int, max_chars: int) -> int:
    """Largest accepted body: every text at max_chars, each char a 12-byte surrogate-pair escape, + slack."""
    return max_texts * (12 * max_chars + 8) + 64 * 1024


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, "body_too_large", f"request body over {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(run_dir_or_classifier, max_texts: int = 64, max_chars: int = 10000, device: str = "auto",
               batch_wait_ms: float = 2.0, max_batch_texts: int | None = None, batch_size: int = 32) -> FastAPI:
    """The FastAPI app for a run directory (or RUN_DIR/model, or an already loaded Classifier).

    Raises LlmclfError for a missing or broken run, or for limits below 1.
    """
    if int(max_texts) < 1 or int(max_chars) < 1:
        raise LlmclfError(f"--max-texts and --max-chars must be at least 1 (got {max_texts}, {max_chars})")
    max_texts, max_chars = int(max_texts), int(max_chars)
    if isinstance(run_dir_or_classifier, Classifier):
        clf, run_dir = run_dir_or_classifier, None
    else:
        run_dir = Path(run_dir_or_classifier)
        clf = load_classifier(run_dir, device=device)
    labels = list(clf.labels)
    cfg = clf.config
    model_name = str(cfg.get("model_name", "classifier"))
    limit = body_limit(max_texts, max_chars)
    model_info = {
        "model": model_name, "labels": labels, "num_classes": len(labels), "max_length": clf.max_length,
        "pooling": cfg.get("pooling"), "backbone": cfg.get("backbone"), "llmclf_version": cfg.get("llmclf_version"),
        "device": clf.device, "metrics": _run_metrics(run_dir, cfg),
        "limits": {"max_texts": max_texts, "max_chars": max_chars, "max_body_bytes": limit},
    }
    batcher = MicroBatcher(lambda texts: predict_texts(clf, texts, batch_size=batch_size),
                           max_batch_texts=max_batch_texts or max(max_texts, 64), max_wait_s=batch_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.aclose()

    app = FastAPIOffline(title="llmclf", version=str(cfg.get("llmclf_version", "")), lifespan=lifespan, redoc_url=None,
                  description=f"Text classification with `{model_name}` (labels: {', '.join(labels)}). "
                              "Every error is `{\"error\": {\"code\", \"message\"}}`.")
    app.state.classifier = clf
    app.state.batcher = batcher
    app.state.model_info = model_info

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "http_error")
        message = {404: f"no route {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON")
        return error_response(422, "invalid_request", _validation_message(errors))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        detail = str(exc).strip().splitlines()
        return error_response(500, "internal_error", f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__)

    errors = {s: {"model": ErrorResponse} for s in (400, 413, 422, 500)}
    body_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": ClassifyRequest.model_json_schema()}}}}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors, openapi_extra=body_schema,
              summary="Classify texts", tags=["classify"])
    async def classify(request: Request):
        """Label and class probabilities for each text, in input order."""
        raw = await _read_body(request, limit)
        try:
            payload = json.loads(raw)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise ApiError(400, "invalid_json", f"request body is not valid JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "invalid_request", 'body must be a JSON object: {"texts": ["...", ...]}')
        try:
            req = ClassifyRequest.model_validate(payload)
        except ValidationError as e:
            raise ApiError(422, "invalid_request", _validation_message(e.errors())) from None
        texts = req.texts
        if not texts:
            raise ApiError(422, "empty_texts", '"texts" is empty: send at least one text')
        if len(texts) > max_texts:
            raise ApiError(413, "too_many_texts", f"{len(texts)} texts; at most {max_texts} per request")
        for i, t in enumerate(texts):
            if len(t) > max_chars:
                raise ApiError(413, "text_too_long", f"texts.{i} has {len(t)} characters; at most {max_chars}")
        probs = (await batcher.submit(texts)).tolist()
        results = []
        for row in probs:
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": labels[best], "probability": row[best],
                            "probabilities": dict(zip(labels, row))})
        return {"model": model_name, "results": results}

    @app.get("/v1/model", summary="The model and its run's metrics", tags=["model"])
    async def model():
        return model_info

    @app.get("/healthz", summary="Liveness", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ------------------------------------------------------------------------------- uvicorn and multi-worker

def _settings_to_env(run_dir, max_texts, max_chars, device) -> dict:
    return {f"{ENV_PREFIX}RUN_DIR": str(Path(run_dir).resolve()), f"{ENV_PREFIX}MAX_TEXTS": str(max_texts),
            f"{ENV_PREFIX}MAX_CHARS": str(max_chars), f"{ENV_PREFIX}DEVICE": str(device)}


def app_from_env() -> FastAPI:
    """App factory for uvicorn's worker processes (`--workers N`): settings come from LLMCLF_SERVE_* variables."""
    env = os.environ
    run_dir = env.get(f"{ENV_PREFIX}RUN_DIR")
    if not run_dir:
        raise LlmclfError(f"{ENV_PREFIX}RUN_DIR is not set")
    return create_app(run_dir, max_texts=int(env.get(f"{ENV_PREFIX}MAX_TEXTS", 64)),
                      max_chars=int(env.get(f"{ENV_PREFIX}MAX_CHARS", 10000)),
                      device=env.get(f"{ENV_PREFIX}DEVICE", "auto"))


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_texts: int = 64,
          max_chars: int = 10000, device: str = "auto") -> None:
    """Run the service with uvicorn until interrupted. The run is loaded (and verified) before the port opens."""
    import uvicorn

    if int(workers) < 1:
        raise LlmclfError(f"--workers must be at least 1 (got {workers})")
    if int(workers) == 1:
        app = create_app(run_dir, max_texts=max_texts, max_chars=max_chars, device=device)
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    # uvicorn's multi-process mode needs an import string: each worker builds its own app from the
    # environment. Load once here first so a broken run is a one-line error, not N worker tracebacks.
    create_app(run_dir, max_texts=max_texts, max_chars=max_chars, device=device)
    os.environ.update(_settings_to_env(run_dir, max_texts, max_chars, device))
    uvicorn.run("llmclf.serve.app:app_from_env", factory=True, host=host, port=port, workers=int(workers),
                log_level="info")
