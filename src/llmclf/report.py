"""The results table of `llmclf experiment` and `llmclf baseline`: OUT/results.csv, OUT/results.md and the
chart OUT/accuracy.png, in the book's columns, so that the two tables read side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_write_text

COLUMNS = ["name", "book_row", "kind", "model", "weights", "trainable_token", "trainable_layers", "context_length",
           "train_acc", "validation_acc", "test_acc", "test_f1", "trainable_parameters", "train_seconds",
           "notes", "run_dir"]
_MD_HEADERS = ["", "Name", "Model", "Weights", "Trainable token", "Trainable layers", "Context length",
               "Training acc", "Validation acc", "Test acc", "Test F1", "Trainable params", "Training time",
               "Notes"]


def _pct(x) -> str:
    try:
        return "" if x is None or x != x else f"{100 * float(x):.2f}%"
    except (TypeError, ValueError):
        return ""


def duration(secs) -> str:
    """Seconds as the table writes them: '12.3 s', '4.50 min', '2.25 h'; '' for none."""
    if secs is None or secs != secs:
        return ""
    if secs >= 2 * 3600:
        return f"{secs / 3600:.2f} h"
    return f"{secs:.1f} s" if secs < 60 else f"{secs / 60:.2f} min"


def total_seconds(df) -> float:
    """The table's training times summed: what its rows cost, however many runs it took to finish them."""
    return df["train_seconds"].astype(float).sum()  # a row without a time is NaN, which sum() skips


def write_chart(path: Path, rows: list[dict]) -> None:
    import matplotlib  # heavy, and needed only here: imported when a chart is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("test_acc") is not None]
    names = [r["name"] for r in rows]
    accs = [100 * float(r["test_acc"]) for r in rows]
    colors = ["tab:gray" if r.get("kind") == "baseline" else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    bars = ax.barh(range(len(rows)), accs, color=colors)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("Test accuracy (%)")
    for bar, acc in zip(bars, accs):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{acc:.1f}", va="center", fontsize=8)
    if any(r.get("kind") == "baseline" for r in rows):
        ax.set_title("Test accuracy (grey: classical baselines)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_row(i: int, r: dict) -> str:
    label = r.get("book_row")
    label = f"{i}" + (f" (book {label})" if label else "")
    params = r.get("trainable_parameters")
    cells = [label, r["name"], r["model"], r["weights"], r["trainable_token"], r["trainable_layers"],
             r["context_length"], _pct(r["train_acc"]), _pct(r["validation_acc"]), _pct(r["test_acc"]),
             f"{r['test_f1']:.4f}" if r.get("test_f1") is not None else "",
             f"{int(params):,}" if params is not None else "",
             duration(r.get("train_seconds")), r.get("notes") or ""]
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def _markdown(df, rows: list[dict], title: str, intro: str, skipped, notes) -> str:
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| " + " | ".join(_MD_HEADERS) + " |", "|" + "---|" * len(_MD_HEADERS)]
    lines += [_md_row(i, r) for i, r in enumerate(rows, 1)]
    lines.append("")
    if rows:
        lines += [f"Training time of these rows, all together: {duration(total_seconds(df))}.", ""]
        lines += ["![test accuracy per configuration](accuracy.png)", ""]
    if skipped:
        lines += ["## Rows not run", ""]
        lines += [f"- {s['name']}" + (f" (book row {s['book_row']})" if s.get("book_row") else "") + f": {s['skip']}"
                  for s in skipped]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict], title: str, intro: str = "", skipped: list[dict] = (),
                  notes: list[str] = ()):
    """OUT/results.csv, OUT/results.md (with the chart) and OUT/accuracy.png from table rows; returns the DataFrame."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    if rows:
        write_chart(out / "accuracy.png", rows)
    atomic_write_text(out / "results.md", _markdown(df, rows, title, intro, skipped, notes))
    return df


def read_results(path: Path, kind: str) -> list[dict]:
    """The rows of a results.csv written by write_results (empty cells as None), each marked with `kind`."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    rows = []
    for r in df.to_dict("records"):
        r = {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        r["kind"] = kind
        rows.append(r)
    return rows
