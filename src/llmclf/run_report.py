"""RUN_DIR/report.html: one page per run, readable offline with no server.

Everything is inside the file: the plots are embedded as data: URIs, there is no script and no outside
reference, so it opens from a mail attachment or a file share as it does on the machine that trained it.
It shows the data, the metrics of each split (the LLM alone, the saved blend, the TF-IDF baseline), the
test confusion matrix, calibration and the operating point, the training curves, and the top test errors.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_text

REPORT = "report.html"
PLOTS = (("loss.png", "Training and validation loss"), ("accuracy.png", "Training and validation accuracy"),
         ("calibration.png", "Reliability on the test split, before and after calibration"),
         ("curves.png", "Test ROC and precision-recall curves, the operating point marked"))
COLUMNS = ("accuracy", "macro_f1", "precision", "recall", "f1", "balanced_accuracy", "loss")
LABEL_SET_COLUMNS = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "loss")  # multi-label runs
TOP_ERRORS = 20

STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.t{text-align:left;max-width:560px;overflow-wrap:anywhere}img{max-width:100%;
border:1px solid #eee}h2{margin-top:1.6em;border-bottom:1px solid #ddd}.note{color:#555}"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(v, pct: bool = False) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return ""
    return f"{100 * v:.2f}%" if pct else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _table(header, rows, left: int = 1) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td{' class=t' if i < left else ''}>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def metrics_section(m: dict) -> str:
    """Per split: the LLM alone, and the saved blend and the baseline where the run has them."""
    rows = []
    columns = LABEL_SET_COLUMNS if (m.get("test") or {}).get("multi_label") else COLUMNS
    for split in ("train", "validation", "test"):
        for name, block in (("LLM alone", m.get(split)), ("saved blend", (m.get("blend") or {}).get(split)
                                                           if (m.get("blend") or {}).get("saved") else None),
                            ("TF-IDF + LR", (m.get("baseline") or {}).get(split))):
            if block:
                rows.append([_e(split), _e(name)] + [_num(block.get(k), k not in ("loss", "hamming_loss"))
                                                     for k in columns])
    return "<h2>Metrics</h2>" + _table(["split", "model", *columns], rows, left=2)


def confusion_section(m: dict) -> str:
    saved = m["blend"]["test"] if (m.get("blend") or {}).get("saved") else m.get("test", {})
    cm, labels = saved.get("confusion_matrix"), m.get("labels", [])
    if not cm:
        return ""
    rows = [[_e(labels[i])] + [str(c) for c in row] for i, row in enumerate(cm)]
    return ("<h2>Test confusion matrix</h2><p class=note>rows: true label, columns: predicted (argmax of the saved "
            "classifier)</p>" + _table(["true \\ predicted", *labels], rows))


def decision_section(m: dict) -> str:
    out = []
    cal = m.get("calibration")
    if cal:
        rows = [[_e(s), *(_num(cal[s][w].get(k)) for w in ("before", "after") for k in ("ece", "brier", "nll"))]
                for s in ("train", "validation", "test") if cal.get(s)]
        out.append(f"<h2>Calibration</h2><p class=note>temperature {cal['temperature']:.4f} (fitted "
                   f"{cal['fitted_temperature']:.4f}{'' if cal['kept'] else ', not kept: validation ECE would rise'}"
                   f"); ECE over {_e(cal['binning'])}</p>"
                   + _table(["split", "ECE before", "Brier before", "NLL before", "ECE after", "Brier after",
                             "NLL after"], rows))
    op = m.get("operating_point")
    if op:
        keys = ("threshold", "precision", "recall", "false_positive_rate", "f1", "accuracy")
        rows = [[_e(name), *(_num(r.get(k), k != "threshold") for k in keys)] for name, r in
                (("validation", op["validation"]), ("test at the threshold", op["test"]["at_threshold"]),
                 ("test at 0.5", op["test"]["at_0.5"]))]
        out.append(f"<h2>Operating point</h2><p class=note>target {_e(op['target'])} for {_e(op['positive_label'])}"
                   f"{'' if op['met_on_validation'] else ' (not met on validation: 0.5 kept)'}</p>"
                   + _table(["", *keys], rows))
    return "".join(out)


def plots_section(run_dir: Path) -> str:
    parts = []
    for name, caption in PLOTS:
        f = run_dir / name
        if f.is_file():
            data = base64.b64encode(f.read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class=note>{_e(caption)}</figcaption></figure>")
    return "<h2>Plots</h2>" + "".join(parts) if parts else ""


def errors_section(run_dir: Path) -> str:
    f = run_dir / "errors.csv"
    if not f.is_file():
        return ""
    df = pd.read_csv(f, dtype={"text": str, "label": str, "predicted": str}, keep_default_na=False)
    score, first = ("wrong_labels", "the most wrong labels first") if "wrong_labels" in df else (
        "probability", "the most confident first")
    rows = [[_e(r.text), _e(r.label), _e(r.predicted), _num(getattr(r, score))] for r in df.head(TOP_ERRORS).itertuples()]
    return (f"<h2>Top test errors</h2><p class=note>{len(df)} misclassified test texts, {first} "
            f"(all in errors.csv)</p>" + _table(["text", "label", "predicted", score.replace("_", " ")], rows, left=3))


def data_section(m: dict) -> str:
    n = m.get("num_examples", {})
    rows = [[_e(k), _e(v)] for k, v in (("source", m.get("data_source")), ("labels", ", ".join(map(str, m.get("labels", [])))),
                                        ("class counts (before balancing)", m.get("class_counts")),
                                        ("examples train / validation / test",
                                         " / ".join(str(n.get(s, "")) for s in ("train", "validation", "test"))),
                                        ("tokens kept per text", m.get("max_length")))]
    return "<h2>Data</h2>" + _table(None, rows, left=2)


def splits_section(run_dir: Path) -> str:
    """Classes and token lengths per split, from RUN_DIR/data.json."""
    f = run_dir / "data.json"
    if not f.is_file():
        return ""
    d = json.loads(f.read_text(encoding="utf-8"))
    rows = []
    for split, r in d.get("splits", {}).items():
        t = r.get("tokens", {})
        counts = ", ".join(f"{k} {v}" for k, v in r.get("class_counts", {}).items())
        rows.append([_e(split), _e(r.get("rows")), _e(counts), *(_e(t.get(k, "")) for k in ("p50", "p90", "max")),
                     _e(f"{t.get('cut', 0)} ({_num(t.get('cut_share'), True)})")])
    skipped = "; ".join(f"{_e(name)}: {_e(r.get('rows'))} rows read, skipped "
                        + ", ".join(f"{v} ({_e(k)})" for k, v in r.get("skipped", {}).items())
                        for name, r in d.get("read", {}).items() if r.get("skipped"))
    return (_table(["split", "rows", "classes", "tokens p50", "p90", "max", f"cut at {d.get('max_length')}"], rows, left=3)
            + (f"<p class=note>{skipped}</p>" if skipped else ""))


def kept_note(kept: dict | None) -> str:
    if not kept or kept.get("weights") != "best":
        return ""
    return (f"; kept epoch {_e(kept['epoch'])} of {_e(kept['epochs_run'])} by {_e(kept['by'])} ({_num(kept['value'])})"
            + (", stopped early" if kept.get("stopped_early") else ""))


def write_run_report(run_dir, metrics: dict) -> Path:
    """Write RUN_DIR/report.html from the run's metrics and the files beside it."""
    run_dir = Path(run_dir)
    o = metrics.get("options", {})
    title = f"llmclf run: {metrics.get('model', '')}"
    search = metrics.get("search") or {}
    pooling = (f"auto ({search['chosen']}: the better on validation)" if search.get("what") == "pooling"
               else o.get("pooling"))
    summary = (f"model {_e(metrics.get('model'))}, {_e(o.get('trainable'))} trained, pooling {_e(pooling)}, "
               f"{_e(o.get('epochs'))} epochs at lr {_e(o.get('lr'))} ({_e(o.get('schedule'))}); "
               f"{metrics.get('train_seconds', 0):.1f} s from data ready to metrics; llmclf {_e(metrics.get('llmclf_version'))}"
               + kept_note(metrics.get("kept")))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1><p class=note>{summary}</p>"
            + data_section(metrics) + splits_section(run_dir) + metrics_section(metrics) + confusion_section(metrics)
            + decision_section(metrics) + plots_section(run_dir) + errors_section(run_dir) + "</body></html>")
    atomic_write_text(run_dir / REPORT, page)
    return run_dir / REPORT
