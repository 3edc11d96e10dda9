"""The HTTP service: a FastAPI app around one saved classifier, loaded once when the app is created.

Routes
    POST /v1/classify   {"texts": ["...", ...]} -> {"model": NAME, "results": [{"label", "probability",
                        "probabilities": {label: p}}, ...]}, one result per text, in input order (a
                        multi-label classifier adds "labels": the set at its thresholds). A pair
                        classifier (--text-pair-column) takes {"texts": [...], "text_pairs": [...]}: one pair
                        per index, the two lists as long as each other.
    GET  /v1/model      labels, text_pairs (whether requests carry pairs), model name, backbone config,
                        max_length, pooling, blend_weight (the LLM's weight in a --blend classifier, else
                        null), decision (temperature,
                        threshold, positive label: how labels are chosen), the run's metrics (train/validation/test
                        and blend from RUN_DIR/metrics.json, else config.json's train_metrics; local paths
                        and training options left out) and the request limits.
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
    422 invalid_request       the JSON is not {"texts": [string, ...]} (missing field, wrong type, extra field;
                              a pair classifier also needs "text_pairs", as long as "texts")
    422 empty_texts           "texts" is an empty list
    503 overloaded            the queue holds max_queue texts already (default max(256, 4 * max_texts)); nothing
                              was computed; the Retry-After header says when to try again (seconds, an estimate)
    503 shutting_down         the server stopped (SIGTERM) before computing the request
    504 timeout               not answered within request_timeout seconds (default 30); the work is dropped
    404 not_found, 405 method_not_allowed, 500 internal_error (a fixed message; the details go to the log)
Bad requests never affect the server: each is answered and the next one is served as usual. The OpenAPI
schema states the limits (minItems 1, maxItems max_texts, maxLength max_chars) and every status above.

Empty and whitespace-only texts are classified, not refused: a blank line in a batch should not fail the
whole batch. The model sees no content (an empty text is one pad token), so its answer is only the model's
prior; clients that care should drop blank texts first (the web page does).

Inference runs on one dedicated worker thread, never on the event loop. A micro-batcher (an asyncio queue)
gathers the texts of requests that arrive together, waiting up to `batch_wait_ms` (default 2 ms) after the
first one or until `max_batch_texts` texts, makes one `predict_texts` call and hands each request its own
rows. Predictions do not depend on what they are batched with (causal mask, pooling at the last real
token), so batching changes throughput only.

Under pressure: the queue is bounded (503 at once rather than an unbounded wait), each request has a deadline
(504), and work for a client that timed out or disconnected is dropped before it reaches the model. If the
batch loop itself dies, every request it holds gets a 500 and the next request starts a new loop. On SIGTERM
uvicorn stops accepting, gives in-flight requests `shutdown_grace` seconds (default 10), then cancels them
and the queue; the batch being computed at that moment is the only work still finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
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
from ..predict import Classifier, load_classifier, predict_texts, predicted_classes, predicted_sets
from ..tokenizer import join_pair

log = logging.getLogger("llmclf.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
ENV_PREFIX = "LLMCLF_SERVE_"
SHUTDOWN_GRACE_S = 10.0  # default seconds in-flight requests get after SIGTERM
INTERNAL_ERROR = "internal server error; the details are in the server log"
METRIC_KEYS = ("train", "validation", "test", "class_counts", "num_examples", "train_seconds",
               "trainable_parameters", "examples_seen", "weights", "blend")


# ----------------------------------------------------------------------------------------------- schemas

class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(description="texts to classify (at least one, at most max_texts)",
                             examples=[["WINNER!! Claim your free prize now, text WIN to 80082",
                                        "Are we still on for lunch tomorrow?"]])


class PairClassifyRequest(ClassifyRequest):
    """A pair classifier's request (trained with --text-pair-column): texts[i] and text_pairs[i] are one pair."""
    text_pairs: list[str] = Field(description="the second text of each pair, one per text",
                                  examples=[["Claim your prize by texting WIN", "See you at lunch"]])


class ClassifyResult(BaseModel):
    label: str = Field(description="the most probable label")
    probability: float = Field(description="probability of that label")
    probabilities: dict[str, float] = Field(description="probability of every label")
    labels: list[str] | None = Field(None, description="multi-label classifiers only: every label the text carries "
                                     "(its probability at least that label's threshold; possibly none)")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error answered as {"error": {"code", "message"}} with `status` (and optional headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


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

class Overloaded(Exception):
    """The queue is full: the request was refused before anything was computed."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"{queued} texts queued")
        self.queued, self.retry_after = queued, retry_after


class BatcherClosed(Exception):
    """The batcher stopped (the server is shutting down) before computing the request."""


class MicroBatcher:
    """Coalesce concurrent predict calls: one `predict(texts) -> (N, C) tensor` call per batch.

    `submit(texts)` queues the request and returns a future for its rows (await it; cancel it to drop the
    work). The loop takes the first queued request, then whatever else arrives within `max_wait_s`, up to
    `max_batch_texts` texts (a request never splits; one that would overflow the batch opens the next one),
    skips requests already cancelled, runs `predict` on the one-thread executor and resolves each request's
    future with its slice. A failing `predict` fails its batch's requests; a failure of the loop itself fails
    every request it holds, and the next `submit` starts a new loop. At most `max_queue` texts (None: no
    limit) wait or compute at once; `submit` raises Overloaded beyond that.
    """

    def __init__(self, predict, max_batch_texts: int = 64, max_wait_s: float = 0.002, max_queue: int | None = None):
        self.predict = predict
        self.max_batch_texts = max(1, int(max_batch_texts))
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_queue = None if max_queue is None else int(max_queue)
        self.executor = None
        self.batches = 0
        self.requests = 0
        self.seconds_per_text = None  # running estimate, for Retry-After
        self._waiting = {}  # future -> its number of texts, for every admitted request
        self._loop = None
        self._queue = None
        self._task = None
        self._batch = []  # the requests of the batch being gathered or computed
        self._carry = None  # a request taken from the queue that opens the next batch

    def _ensure_started(self):
        loop = asyncio.get_running_loop()
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmclf-infer")
        if self._loop is not loop:
            self._waiting = {}  # futures of an old event loop can never be answered
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._batch, self._carry = [], None
            self._task = loop.create_task(self._run())

    @property
    def queued(self) -> int:
        """Texts admitted and not yet answered (waiting or being computed)."""
        return sum(n for f, n in self._waiting.items() if not f.done())

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (1 to 60), from the measured time per text."""
        if not self.seconds_per_text:
            return 1
        return min(60, max(1, math.ceil(self.queued * self.seconds_per_text)))

    def submit(self, texts: list[str]) -> asyncio.Future:
        """Queue `texts`; the future resolves to their rows. Raises Overloaded when the queue is full."""
        self._ensure_started()
        self._waiting = {f: n for f, n in self._waiting.items() if not f.done()}
        queued = self.queued
        if self.max_queue is not None and queued + len(texts) > self.max_queue:
            raise Overloaded(queued, self.retry_after())
        fut = self._loop.create_future()
        self._waiting[fut] = len(texts)
        self._queue.put_nowait((list(texts), fut))
        return fut

    def _drain(self, n: int) -> int:
        """Move queued live requests into the batch while they fit; returns its text count."""
        while self._carry is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if item[1].done():  # cancelled: the client went away or timed out
                continue
            if n + len(item[0]) > self.max_batch_texts:
                self._carry = item
            else:
                self._batch.append(item)
                n += len(item[0])
        return n

    async def _gather(self):
        """Fill self._batch: the first live request, then what arrives within max_wait_s."""
        self._batch = []
        while not self._batch:
            first = self._carry or await self._queue.get()
            self._carry = None
            if not first[1].done():
                self._batch.append(first)
        n = self._drain(len(self._batch[0][0]))
        if self._carry is None and n < self.max_batch_texts and self.max_wait_s > 0:
            await asyncio.sleep(self.max_wait_s)
            self._drain(n)
        self._batch = [item for item in self._batch if not item[1].done()]  # cancelled while we waited

    async def _compute(self, batch):
        """One predict call for the batch; each request gets its rows, or predict's exception."""
        texts = [t for ts, _ in batch for t in ts]
        t0 = time.perf_counter()
        try:
            probs = await self._loop.run_in_executor(self.executor, self.predict, texts)
        except Exception as e:  # noqa: BLE001 - handed to each waiting request
            log.error("inference failed on a batch of %d texts", len(texts), exc_info=e)
            _fail(batch, e)
            return
        per_text = (time.perf_counter() - t0) / len(texts)
        self.seconds_per_text = per_text if self.seconds_per_text is None else 0.8 * self.seconds_per_text + 0.2 * per_text
        self.batches += 1
        self.requests += len(batch)
        start = 0
        for ts, f in batch:
            if not f.done():
                f.set_result(probs[start:start + len(ts)])
            start += len(ts)

    async def _run(self):
        try:
            while True:
                await self._gather()
                if self._batch:
                    await self._compute(self._batch)
                self._batch = []
        except asyncio.CancelledError:
            self._fail_all(BatcherClosed("the server is shutting down"))
            raise
        except Exception as e:  # noqa: BLE001 - the loop's own failure: nobody may be left waiting
            log.error("the batch loop failed; failing the requests it held (the next request restarts it)",
                      exc_info=e)
            self._fail_all(e)

    def _fail_all(self, exc: BaseException):
        """Fail every request the loop holds: the current batch, the carried request, the queue."""
        items = self._batch + ([self._carry] if self._carry else [])
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        self._batch, self._carry = [], None
        _fail(items, exc)

    async def aclose(self):
        """Stop the loop (its requests fail with BatcherClosed) and the executor; queued work is dropped."""
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


def _fail(items, exc: BaseException):
    for _, f in items:
        if not f.done():
            f.set_exception(exc)


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


def _parse_texts(raw: bytes, max_texts: int, max_chars: int, pair: bool = False) -> list[str]:
    """The request's texts (for a pair classifier each pair joined), or ApiError 400/413/422 naming what is wrong
    with the body."""
    try:
        payload = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "invalid_json", f"request body is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", f"body must be a JSON object: {_SHAPES[pair]}")
    try:
        request = (PairClassifyRequest if pair else ClassifyRequest).model_validate(payload)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", _validation_message(e.errors())) from None
    texts, seconds = request.texts, getattr(request, "text_pairs", None)
    if not texts:
        raise ApiError(422, "empty_texts", '"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise ApiError(413, "too_many_texts", f"{len(texts)} texts; at most {max_texts} per request")
    if seconds is not None and len(seconds) != len(texts):
        raise ApiError(422, "invalid_request", f'"text_pairs" has {len(seconds)} texts, "texts" {len(texts)}: '
                       "send one second text per text")
    for field, values in (("texts", texts), ("text_pairs", seconds or [])):
        for i, t in enumerate(values):
            if len(t) > max_chars:
                raise ApiError(413, "text_too_long", f"{field}.{i} has {len(t)} characters; at most {max_chars}")
    return texts if seconds is None else [join_pair(a, b) for a, b in zip(texts, seconds)]


_SHAPES = {False: '{"texts": ["...", ...]}', True: '{"texts": ["...", ...], "text_pairs": ["...", ...]}'}


def _submit(batcher: MicroBatcher, texts: list[str]) -> asyncio.Future:
    """Queue the texts, or ApiError 503 with Retry-After when the queue is full."""
    try:
        return batcher.submit(texts)
    except Overloaded as e:
        raise ApiError(503, "overloaded", f"server busy: {e.queued} texts queued, at most {batcher.max_queue}; "
                       f"retry after {e.retry_after} s", headers={"Retry-After": str(e.retry_after)}) from None


async def _client_gone(request: Request) -> None:
    """Returns once the client disconnects (the body is read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_for_rows(request: Request, fut: asyncio.Future, timeout: float):
    """The batcher's rows for this request. On timeout, a disconnect or cancellation the future is cancelled,
    so the batcher drops the work instead of computing it for nobody."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({fut, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        fut.cancel()  # a no-op once it has its result
    if fut in done:
        return _rows(fut)
    if gone in done:
        raise ApiError(499, "client_closed_request", "the client went away")
    raise ApiError(504, "timeout", f"not answered within {timeout:g} s (the server is busy); try again later")


def _rows(fut: asyncio.Future):
    """The future's rows; its failure as a 503 (shutdown) or a 500 without internal text (logged by the batcher)."""
    exc = BatcherClosed() if fut.cancelled() else fut.exception()
    if isinstance(exc, BatcherClosed):
        raise ApiError(503, "shutting_down", "the server is shutting down; try again later",
                       headers={"Retry-After": "5"})
    if exc is not None:
        raise ApiError(500, "internal_error", INTERNAL_ERROR)
    return fut.result()


def _classify_openapi(max_texts: int, max_chars: int, limit: int, pair: bool = False) -> dict:
    """The route's request schema and error responses, stating the limits this app enforces."""
    schema = (PairClassifyRequest if pair else ClassifyRequest).model_json_schema()
    for name in ("texts", "text_pairs") if pair else ("texts",):
        texts = schema["properties"][name]
        texts.update(minItems=1, maxItems=max_texts)
        texts["items"].update(maxLength=max_chars)
        texts["description"] = (f"{'the second texts of the pairs' if name == 'text_pairs' else 'texts to classify'}: "
                                f"1 to {max_texts}, each at most {max_chars} characters")
        texts["examples"] = [ex for ex in texts["examples"] if len(ex) <= max_texts and max(map(len, ex)) <= max_chars]
    retry = {"Retry-After": {"description": "seconds to wait before retrying (an estimate)", "required": True,
                             "schema": {"type": "integer", "minimum": 1}}}
    described = {
        400: "the body is not valid UTF-8 JSON",
        413: f"too large: body over {limit} bytes, more than {max_texts} texts or a text over {max_chars} characters",
        422: f"not {_SHAPES[pair]}, or \"texts\" is empty" + (", or the two lists differ in length" if pair else ""),
        500: "internal error (no details: they are in the server log)",
        503: "overloaded (the queue is full: nothing was computed) or shutting down",
        504: "not answered within the server's request timeout",
    }
    responses = {s: {"model": ErrorResponse, "description": d} for s, d in described.items()}
    responses[503]["headers"] = retry
    body = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    return {"responses": responses, "openapi_extra": body}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": {"code", "message"}}; an unexpected exception as a 500 without its text."""

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)

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
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", INTERNAL_ERROR)


def _check_settings(max_texts, max_chars, max_queue, request_timeout) -> tuple[int, int, int, float]:
    """The limits as numbers (max_queue None: max(256, 4 * max_texts)); LlmclfError for impossible ones."""
    max_texts, max_chars = int(max_texts), int(max_chars)
    if max_texts < 1 or max_chars < 1:
        raise LlmclfError(f"--max-texts and --max-chars must be at least 1 (got {max_texts}, {max_chars})")
    max_queue = max(256, 4 * max_texts) if max_queue is None else int(max_queue)
    if max_queue < max_texts:
        raise LlmclfError(f"--max-queue must be at least --max-texts, or no full request fits (got {max_queue} < {max_texts})")
    if not float(request_timeout) > 0:
        raise LlmclfError(f"--request-timeout must be above 0 seconds (got {request_timeout})")
    return max_texts, max_chars, max_queue, float(request_timeout)


def _model_info(clf, run_dir, limits: dict) -> dict:
    """What GET /v1/model answers: the model, its run's metrics and the limits the server enforces."""
    cfg = clf.config
    return {"model": str(cfg.get("model_name", "classifier")), "labels": list(clf.labels),
            "num_classes": len(clf.labels), "max_length": clf.max_length, "pooling": cfg.get("pooling"),
            "backbone": cfg.get("backbone"), "llmclf_version": cfg.get("llmclf_version"), "device": clf.device,
            "backend": clf.backend, "dtype": clf.dtype, "text_pairs": bool(clf.tokenizer.pair), "multi_label": clf.multi_label,
            "thresholds": dict(zip(clf.labels, clf.decision.thresholds)) if clf.multi_label else None,
            "blend_weight": clf.blend.weight if clf.blend is not None else None,
            "decision": {**clf.decision.to_config(), "positive_label": clf.labels[clf.decision.positive]},
            "metrics": _run_metrics(run_dir, cfg), "limits": limits}


def _decide(clf, rows) -> list[tuple]:
    """(class index, label set or None) per row: the argmax or the saved operating point; for a multi-label
    classifier the most probable label and the set its thresholds give."""
    sets = predicted_sets(clf, rows) if clf.multi_label else [None] * len(rows)
    return list(zip(predicted_classes(clf, rows), sets))


def _add_routes(app: FastAPI, batcher, model_info: dict, limit: int, request_timeout: float, decide) -> None:
    """POST /v1/classify, GET /v1/model, GET /healthz and the web page. `decide`: (class index, label set or
    None) per row of probabilities (`_decide`)."""
    labels, model_name = model_info["labels"], model_info["model"]
    max_texts, max_chars = model_info["limits"]["max_texts"], model_info["limits"]["max_chars"]

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              summary="Classify texts", tags=["classify"],
              **_classify_openapi(max_texts, max_chars, limit, model_info["text_pairs"]))
    async def classify(request: Request):
        """Label and class probabilities for each text (or text pair), in input order."""
        texts = _parse_texts(await _read_body(request, limit), max_texts, max_chars, model_info["text_pairs"])
        rows = await _wait_for_rows(request, _submit(batcher, texts), request_timeout)
        results = []
        for row, (best, carried) in zip(rows.tolist(), decide(rows)):  # argmax, or the saved operating point
            results.append({"label": labels[best], "probability": row[best],
                            "probabilities": dict(zip(labels, row)), **({"labels": carried} if carried is not None else {})})
        return {"model": model_name, "results": results}

    @app.get("/v1/model", summary="The model, its run's metrics and the request limits", tags=["model"])
    async def model():
        return model_info

    @app.get("/healthz", summary="Liveness", tags=["health"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def create_app(run_dir_or_classifier, max_texts: int = 64, max_chars: int = 10000, device: str = "auto", backend: str = "torch",
               dtype: str = "float32", batch_wait_ms: float = 2.0, max_batch_texts: int | None = None, batch_size: int = 32,
               max_queue: int | None = None, request_timeout: float = 30.0) -> FastAPI:
    """The FastAPI app for a run directory (or RUN_DIR/model, or an already loaded Classifier).

    max_queue: most texts waiting or computing at once (default max(256, 4 * max_texts)); beyond it, 503.
    request_timeout: seconds a request may wait for its answer before a 504.
    Raises LlmclfError for a missing or broken run, or for impossible limits.
    """
    max_texts, max_chars, max_queue, request_timeout = _check_settings(max_texts, max_chars, max_queue, request_timeout)
    if isinstance(run_dir_or_classifier, Classifier):
        clf, run_dir = run_dir_or_classifier, None
    else:
        run_dir = Path(run_dir_or_classifier)
        clf = load_classifier(run_dir, device=device, backend=backend, dtype=dtype)
    labels, cfg = list(clf.labels), clf.config
    model_name = str(cfg.get("model_name", "classifier"))
    limit = body_limit(max_texts, max_chars)
    model_info = _model_info(clf, run_dir, {"max_texts": max_texts, "max_chars": max_chars, "max_body_bytes": limit,
                                            "max_queue": max_queue, "request_timeout_s": request_timeout})
    batcher = MicroBatcher(lambda texts: predict_texts(clf, texts, batch_size=batch_size),
                           max_batch_texts=max_batch_texts or max(max_texts, 64), max_wait_s=batch_wait_ms / 1000,
                           max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.aclose()

    app = FastAPIOffline(title="llmclf", version=str(cfg.get("llmclf_version", "")), lifespan=lifespan, redoc_url=None,
                  description=f"Text classification with `{model_name}` (labels: {', '.join(labels)}). "
                              "Every error is `{\"error\": {\"code\", \"message\"}}`. Limits: "
                              f"{max_texts} texts per request, {max_chars} characters per text, {limit} bytes per "
                              f"body, {max_queue} texts queued (then 503 with Retry-After), {request_timeout:g} s "
                              "per request (then 504).")
    app.state.classifier = clf
    app.state.batcher = batcher
    app.state.model_info = model_info
    _add_error_handlers(app)

    _add_routes(app, batcher, model_info, limit, request_timeout, lambda rows: _decide(clf, rows))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# ------------------------------------------------------------------------------- uvicorn and multi-worker

SETTINGS = {"max_texts": int, "max_chars": int, "max_queue": int, "request_timeout": float, "device": str, "backend": str,
            "dtype": str}


def _settings_to_env(run_dir, **settings) -> dict:
    """LLMCLF_SERVE_* variables for the worker processes: RUN_DIR and each setting that is not None."""
    env = {f"{ENV_PREFIX}RUN_DIR": str(Path(run_dir).resolve())}
    env.update({f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    return env


def app_from_env() -> FastAPI:
    """App factory for uvicorn's worker processes (`--workers N`): settings come from LLMCLF_SERVE_* variables."""
    env = os.environ
    run_dir = env.get(f"{ENV_PREFIX}RUN_DIR")
    if not run_dir:
        raise LlmclfError(f"{ENV_PREFIX}RUN_DIR is not set")
    settings = {k: kind(env[f"{ENV_PREFIX}{k.upper()}"]) for k, kind in SETTINGS.items() if env.get(f"{ENV_PREFIX}{k.upper()}")}
    return create_app(run_dir, **settings)


def serve(run_dir, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_texts: int = 64,
          max_chars: int = 10000, device: str = "auto", backend: str = "torch", dtype: str = "float32",
          max_queue: int | None = None, request_timeout: float = 30.0, shutdown_grace: float = SHUTDOWN_GRACE_S) -> None:
    """Run the service with uvicorn until interrupted. The run is loaded (and verified) before the port opens.

    On SIGTERM/SIGINT, requests in flight get `shutdown_grace` seconds to finish; then they and the queue are
    cancelled and the process exits.
    """
    import uvicorn

    if int(workers) < 1:
        raise LlmclfError(f"--workers must be at least 1 (got {workers})")
    if not float(shutdown_grace) >= 0:
        raise LlmclfError(f"--shutdown-grace must be at least 0 seconds (got {shutdown_grace})")
    settings = {"max_texts": max_texts, "max_chars": max_chars, "max_queue": max_queue,
                "request_timeout": request_timeout, "device": device, "backend": backend,
                "dtype": dtype}
    common = {"host": host, "port": port, "log_level": "info", "timeout_graceful_shutdown": float(shutdown_grace)}
    app = create_app(run_dir, **settings)
    if int(workers) == 1:
        uvicorn.run(app, **common)
        return
    # uvicorn's multi-process mode needs an import string: each worker builds its own app from the
    # environment. The app above was loaded once first so a broken run is a one-line error, not N worker tracebacks.
    os.environ.update(_settings_to_env(run_dir, **settings))
    uvicorn.run("llmclf.serve.app:app_from_env", factory=True, workers=int(workers), **common)
