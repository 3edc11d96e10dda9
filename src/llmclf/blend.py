"""The blend of the fine-tuned LLM with TF-IDF + logistic regression (`--blend tfidf|auto`).

p = w * p_llm + (1 - w) * p_tfidf, with w on the grid 0.0, 0.1, ..., 1.0 chosen by validation macro-F1
(ties: the largest w, i.e. the most LLM). `mix` is the one function that blends: training chooses w with
it, and every use of a saved classifier (predict, classify, evaluate, the server) goes through it.

Storage, without pickle: RUN_DIR/model/blend.safetensors holds the idf vector and the logistic regression's
coef and intercept (float64); config.json's field `blend` holds the weight, the vocabulary (terms in column
order), the TfidfVectorizer and LogisticRegression settings and the fitted class indices. Both are written
before the manifest is computed, so a changed byte or weight is refused at load like any other. Loading
rebuilds the sklearn objects themselves (vocabulary, settings, idf_, coef_, intercept_, classes_), so the
probabilities are the fitted ones exactly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LlmclfError

BLEND_FILE = "blend.safetensors"
GRID = tuple(round(i / 10, 1) for i in range(11))
# Vectorizer settings kept: what decides its transform once the vocabulary is fixed.
VECTORIZER_KEYS = ("analyzer", "binary", "lowercase", "ngram_range", "norm", "smooth_idf", "stop_words",
                   "strip_accents", "sublinear_tf", "token_pattern", "use_idf")
TENSORS = ("idf", "coef", "intercept")


def class_probabilities(model, texts, num_classes: int) -> np.ndarray:
    """A fitted scikit-learn classifier's probabilities (N, num_classes) over all the run's classes: a class
    it never saw in training gets 0 (predict_proba has columns only for model.classes_)."""
    texts = [str(t) for t in texts]
    probs = np.zeros((len(texts), num_classes))
    if texts:
        probs[:, model.classes_] = model.predict_proba(texts)
    return probs


def mix(p_llm, p_tfidf, weight: float) -> np.ndarray:
    """The blended class probabilities (N, C): weight * p_llm + (1 - weight) * p_tfidf."""
    return weight * np.asarray(p_llm, dtype=np.float64) + (1.0 - weight) * np.asarray(p_tfidf, dtype=np.float64)


def macro_f1(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(targets, np.asarray(probs).argmax(1), average="macro", labels=np.arange(num_classes),
                          zero_division=0))


def choose_weight(p_llm: np.ndarray, p_tfidf: np.ndarray, targets: np.ndarray, num_classes: int) -> tuple[float, dict]:
    """(w, {w: validation macro-F1}) over GRID; the best F1, and among equal ones the largest w."""
    scores = {w: macro_f1(mix(p_llm, p_tfidf, w), targets, num_classes) for w in GRID}
    best = max(scores.values())
    return max(w for w, f in scores.items() if f >= best - 1e-12), scores


@dataclass
class TfidfBlend:
    """A fitted TF-IDF + logistic regression pipeline and the weight of the LLM beside it."""
    pipeline: object  # sklearn Pipeline(TfidfVectorizer, LogisticRegression)
    weight: float
    num_classes: int

    def tfidf_probs(self, texts) -> np.ndarray:
        """TF-IDF + LR class probabilities (N, num_classes)."""
        return class_probabilities(self.pipeline, texts, self.num_classes)

    def apply(self, p_llm, texts) -> np.ndarray:
        return mix(p_llm, self.tfidf_probs(texts), self.weight)

    # ------------------------------------------------------------------ saving
    def write(self, out: Path) -> dict:
        """Write blend.safetensors into `out`; returns config.json's `blend` field."""
        from safetensors.numpy import save_file

        vec, lr = self.pipeline.steps[0][1], self.pipeline.steps[-1][1]
        tensors = {"idf": np.ascontiguousarray(vec.idf_, dtype=np.float64),
                   "coef": np.ascontiguousarray(lr.coef_, dtype=np.float64),
                   "intercept": np.ascontiguousarray(lr.intercept_, dtype=np.float64)}
        save_file(tensors, str(out / BLEND_FILE), metadata={"format": "np"})
        terms = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
        settings = {k: v for k, v in vec.get_params().items() if k in VECTORIZER_KEYS}
        return {"weight": float(self.weight), "file": BLEND_FILE, "method": "tfidf-logreg",
                "classes": [int(c) for c in lr.classes_], "vocabulary": terms,
                "vectorizer": json.loads(json.dumps(settings)),
                "classifier": json.loads(json.dumps(_json_params(lr.get_params()))),
                "tensors": {k: list(v.shape) for k, v in tensors.items()}}


def _json_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is None or isinstance(v, (bool, int, float, str))}


# ---------------------------------------------------------------------- loading

def load_blend(directory: Path, cfg: dict) -> TfidfBlend | None:
    """The blend of a verified saved classifier (None when it has none). The tensors are read from bytes whose
    sha256 is checked against the manifest here, so what is used is what was verified."""
    field = cfg.get("blend")
    if field is None:
        return None
    f = Path(directory) / "config.json"
    _check_field(f, field, cfg["num_classes"])
    tensors = _read_tensors(Path(directory), cfg, field)
    return TfidfBlend(_rebuild(f, field, tensors), field["weight"], cfg["num_classes"])


def _check_field(f: Path, b, num_classes: int) -> None:
    def bad(what):
        raise LlmclfError(f"{f}: field 'blend' {what}")
    if not isinstance(b, dict):
        bad("must be an object")
    w = b.get("weight")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not any(abs(w - g) < 1e-9 for g in GRID):
        bad(f"has weight {json.dumps(w)}: must be one of 0.0, 0.1, ..., 1.0")
    if b.get("file") != BLEND_FILE or b.get("method") != "tfidf-logreg":
        bad(f"must name file {BLEND_FILE} and method tfidf-logreg")
    classes, vocab = b.get("classes"), b.get("vocabulary")
    if not (isinstance(classes, list) and len(classes) >= 2 and len(set(classes)) == len(classes)
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in classes)):
        bad(f"has classes {json.dumps(classes)[:40]}: must be distinct class indices below {num_classes}")
    if not (isinstance(vocab, list) and vocab and all(isinstance(t, str) for t in vocab) and len(set(vocab)) == len(vocab)):
        bad("has a vocabulary that is not a non-empty list of distinct strings")
    if not (isinstance(b.get("vectorizer"), dict) and set(b["vectorizer"]) <= set(VECTORIZER_KEYS)
            and isinstance(b.get("classifier"), dict)):
        bad("must hold vectorizer settings (" + ", ".join(VECTORIZER_KEYS) + ") and classifier settings")
    rows = 1 if len(classes) == 2 else len(classes)
    want = {"idf": [len(vocab)], "coef": [rows, len(vocab)], "intercept": [rows]}
    if b.get("tensors") != want:
        bad(f"has tensors {json.dumps(b.get('tensors'))[:60]}: its vocabulary and classes need {json.dumps(want)}")


def _read_tensors(directory: Path, cfg: dict, field: dict) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    p = directory / BLEND_FILE
    try:
        raw = p.read_bytes()
    except OSError:
        raise LlmclfError(f"{p}: missing (config.json has a blend)") from None
    listed = (cfg.get("integrity") or {}).get("files", {}).get(BLEND_FILE)
    if hashlib.sha256(raw).hexdigest() != listed:
        raise LlmclfError(f"{p}: sha256 does not match the manifest in config.json: the file was changed or "
                          "truncated; refusing to load")
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError) as e:
        raise LlmclfError(f"{p}: not a valid safetensors file ({str(e).splitlines()[0]})") from None
    for k in TENSORS:
        t = tensors.get(k)
        if t is None or list(t.shape) != field["tensors"][k] or t.dtype != np.float64 or not np.isfinite(t).all():
            raise LlmclfError(f"{p}: tensor {k!r} is missing, not float64 {field['tensors'][k]}, or not finite")
    if set(tensors) != set(TENSORS):
        raise LlmclfError(f"{p}: holds tensors other than {', '.join(TENSORS)}")
    return tensors


def _rebuild(f: Path, field: dict, tensors: dict):
    """The sklearn pipeline with the saved vocabulary, settings and parameters: no refitting."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    settings = dict(field["vectorizer"])
    if "ngram_range" in settings:
        settings["ngram_range"] = tuple(settings["ngram_range"])
    known = LogisticRegression().get_params()
    try:
        vec = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(field["vocabulary"])}, **settings)
        vec.idf_ = tensors["idf"]
        lr = LogisticRegression(**{k: v for k, v in field["classifier"].items() if k in known})
        lr.coef_, lr.intercept_ = tensors["coef"], tensors["intercept"]
        lr.classes_ = np.array(field["classes"])
        lr.n_features_in_ = len(field["vocabulary"])
        pipeline = make_pipeline(vec, lr)
        pipeline.predict_proba(["check"])  # bad settings fail here, at load, not at the first request
    except (TypeError, ValueError) as e:
        raise LlmclfError(f"{f}: field 'blend' has settings this scikit-learn cannot use ({str(e).splitlines()[0]})") from None
    return pipeline
