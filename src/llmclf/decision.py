"""From class probabilities to a decision: temperature calibration, then the argmax or, for two classes, a
threshold chosen on the validation split for a target the user states (`--operating-point`).

Calibration: p' = softmax(log p / T), T fitted by minimising the validation negative log-likelihood. For the
LLM alone log p is the logits up to a constant, so this is temperature scaling of the logits (Guo et al.,
2017); for a blend it scales the blended probabilities the same way. T never changes the argmax, only how
far a 0.9 can be trusted. Calibration is judged by ECE over ECE_BINS equal-width bins of the top-class
probability, the Brier score and the NLL; a temperature that makes validation ECE worse is not kept.

Operating point (two classes, `positive` the class the threshold is about): predict `positive` when its
calibrated probability is at least `threshold`. Targets: `argmax` (no threshold), `best_f1`,
`max_fpr=A` (at most a fraction A of the other class flagged), `min_precision=A`, `min_recall=A`.

Stored in the saved classifier's config.json as the field `decision` (covered by the manifest), so predict,
evaluate, serve and the page decide exactly as training measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .errors import LlmclfError

ECE_BINS = 15
BINNING = f"{ECE_BINS} equal-width bins of the top-class probability"
TARGETS = ("argmax", "best_f1", "max_fpr", "min_precision", "min_recall")
_EPS = 1e-12


# ------------------------------------------------------------------------------------------ calibration

def calibrate(probs, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row (float64)."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, None)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs, targets) -> float:
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(targets)), np.asarray(targets)]
    return float(-np.log(np.clip(p, _EPS, None)).mean())


def fit_temperature(probs, targets) -> float:
    """The T in [0.05, 20] that minimises the NLL of calibrate(probs, T) (a 1-D bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    if len(targets) == 0:
        return 1.0
    res = minimize_scalar(lambda lt: nll(calibrate(probs, math.exp(lt)), targets), bounds=(math.log(0.05), math.log(20)),
                          method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def expected_calibration_error(probs, targets, bins: int = ECE_BINS) -> float:
    """sum over bins of (share of examples) * |accuracy - mean confidence|, on the top-class probability."""
    p = np.asarray(probs, dtype=np.float64)
    conf, correct = p.max(1), (p.argmax(1) == np.asarray(targets))
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def calibration_scores(probs, targets) -> dict:
    """ECE, Brier score (mean squared distance to the one-hot truth, summed over classes) and NLL."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    if len(y) == 0:
        return {}
    onehot = np.eye(p.shape[1])[y]
    return {"ece": expected_calibration_error(p, y), "brier": float(((p - onehot) ** 2).sum(1).mean()),
            "nll": nll(p, y)}


# -------------------------------------------------------------------------------------- operating point

def parse_target(spec: str) -> tuple[str, float | None]:
    """'max_fpr=0.005' -> ('max_fpr', 0.005); 'best_f1' -> ('best_f1', None). LlmclfError if malformed."""
    name, _, value = str(spec).partition("=")
    if name not in TARGETS:
        raise LlmclfError(f"--operating-point must be one of argmax, best_f1, max_fpr=A, min_precision=A, "
                          f"min_recall=A, not {spec!r}")
    if name in ("argmax", "best_f1"):
        if value:
            raise LlmclfError(f"--operating-point {name} takes no value (got {spec!r})")
        return name, None
    try:
        a = float(value)
    except ValueError:
        a = float("nan")
    if not 0 <= a <= 1:
        raise LlmclfError(f"--operating-point {name}=A needs a fraction A from 0 to 1 (got {spec!r})")
    return name, a


def rates(scores, positive, threshold: float) -> dict:
    """precision, recall, F1, false-positive rate and accuracy when `scores >= threshold` is predicted positive."""
    pred, y = np.asarray(scores) >= threshold, np.asarray(positive, dtype=bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0, "accuracy": (tp + tn) / max(len(y), 1),
            "flagged": tp + fp, "false_positives": fp, "false_negatives": fn}


def _rates_at_every_cut(scores, positive, cuts) -> dict:
    """rates() at every cut at once (arrays), from sorted scores: O(N log N), not a pass per cut."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = (len(pos) - np.searchsorted(pos, cuts, "left")).astype(np.float64)  # scores >= cut
    fp = (len(neg) - np.searchsorted(neg, cuts, "left")).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        recall = tp / len(pos) if len(pos) else np.zeros_like(tp)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    fpr = fp / len(neg) if len(neg) else np.zeros_like(fp)
    return {"precision": precision, "recall": recall, "f1": f1, "false_positive_rate": fpr, "flagged": tp + fp}


def choose_threshold(scores, positive, target: str) -> tuple[float, bool]:
    """(threshold, whether the target is met on these examples). The candidates lie midway between
    consecutive distinct scores (and 0.5 stays the tie-breaker for best_f1); best_f1 takes the highest F1;
    max_fpr / min_precision the highest recall among those meeting the bound; min_recall the lowest
    false-positive rate. A target nothing meets keeps 0.5."""
    name, a = parse_target(target)
    s = np.unique(np.asarray(scores, dtype=np.float64))
    cuts = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [np.nextafter(s[-1], 2.0)]]) if len(s) else np.array([0.5])
    r = _rates_at_every_cut(scores, positive, cuts)
    every = range(len(cuts))
    if name == "best_f1":
        return float(cuts[max(every, key=lambda i: (r["f1"][i], -abs(cuts[i] - 0.5)))]), True
    meets = {"max_fpr": r["false_positive_rate"] <= a + 1e-12,
             "min_precision": (r["flagged"] > 0) & (r["precision"] >= a - 1e-12),
             "min_recall": r["recall"] >= a - 1e-12}[name]
    ok = np.flatnonzero(meets)
    if not len(ok):
        return 0.5, False
    if name == "min_recall":
        return float(cuts[min(ok, key=lambda i: (r["false_positive_rate"][i], -cuts[i]))]), True
    return float(cuts[max(ok, key=lambda i: (r["recall"][i], cuts[i]))]), True


# ------------------------------------------------------------------------------ the saved decision rule

@dataclass(frozen=True)
class Decision:
    """How a saved classifier turns probabilities into a label: calibrate, then argmax or the threshold."""
    temperature: float = 1.0
    threshold: float | None = None  # two classes: `positive` when its calibrated probability >= threshold
    positive: int = 1
    target: str = "argmax"
    thresholds: tuple | None = None  # multi-label: label i is on when its sigmoid probability >= thresholds[i]

    def calibrate(self, probs) -> np.ndarray:
        return calibrate(probs, self.temperature) if self.temperature != 1.0 else np.asarray(probs, dtype=np.float64)

    def choose(self, probs) -> np.ndarray:
        """The class index per row of (calibrated) probabilities."""
        p = np.asarray(probs, dtype=np.float64)
        if self.threshold is None:
            return p.argmax(1)
        other = 1 - self.positive
        return np.where(p[:, self.positive] >= self.threshold, self.positive, other)

    def choose_sets(self, probs) -> np.ndarray:
        """Multi-label: which labels each row of sigmoid probabilities carries (bool, rows x labels)."""
        return np.asarray(probs, dtype=np.float64) >= np.asarray(self.thresholds)[None, :]

    def to_config(self) -> dict:
        return {"temperature": self.temperature, "threshold": self.threshold, "positive": self.positive,
                "target": self.target, **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {})}


def choose_label_thresholds(probs, targets, grid=np.round(np.arange(0.05, 0.951, 0.05), 2)) -> list[float]:
    """Multi-label: each label's threshold on the 0.05 grid with the best F1 of that label on these (validation)
    rows; ties go to the threshold nearest 0.5, and a label never seen there keeps 0.5."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    chosen = []
    for j in range(p.shape[1]):
        if not y[:, j].any():
            chosen.append(0.5)
            continue
        pred = p[:, j][None, :] >= grid[:, None]
        tp = (pred & y[:, j]).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + y[:, j].sum(), 1)
        best = np.flatnonzero(np.isclose(f1, f1.max()))
        chosen.append(float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]]))
    return chosen


def load_decision(cfg: dict, where) -> Decision:
    """The `decision` field of a verified config (a classifier saved before it existed: argmax, T = 1)."""
    d = cfg.get("decision")
    if d is None:
        return Decision()

    def bad(what):
        raise LlmclfError(f"{where}: field 'decision' {what}")

    if not isinstance(d, dict) or set(d) - {"thresholds"} != {"temperature", "threshold", "positive", "target"}:
        bad("must be an object with temperature, threshold, positive and target (and thresholds)")
    ths = d.get("thresholds")
    if ths is not None and not (isinstance(ths, list) and len(ths) == cfg.get("num_classes") and all(
            not isinstance(x, bool) and isinstance(x, (int, float)) and 0 <= x <= 1 for x in ths)):
        bad("has thresholds that are not one probability per label")
    t, th, pos = d["temperature"], d["threshold"], d["positive"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.05 - 1e-9 <= t <= 20 + 1e-9:
        bad(f"has temperature {json.dumps(t)}: must be a number from 0.05 to 20")
    if th is not None and (isinstance(th, bool) or not isinstance(th, (int, float)) or not 0 <= th <= 1):
        bad(f"has threshold {json.dumps(th)}: must be null or a probability")
    if th is not None and cfg.get("num_classes") != 2:
        bad("has a threshold, but a threshold needs two classes")
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < cfg.get("num_classes", 0):
        bad(f"has positive {json.dumps(pos)}: must be a class index")
    if not isinstance(d["target"], str):
        bad("has a target that is not a string")
    return Decision(float(t), None if th is None else float(th), pos, d["target"],
                    None if ths is None else tuple(float(x) for x in ths))
