"""What the experiment's table says of each row: a finished fine-tuning run described in the table's
columns, and the rows of an `llmclf baseline` table found beside the experiment's."""

from __future__ import annotations

from pathlib import Path

from ..models import MODELS
from ..report import read_results
from ..options import AUTO_CONTEXT

_TOKENS = {"last": "last", "last_nonpad": "last non-pad", "first": "first", "mean": "mean of all",
           "mean_last": "mean and last non-pad"}


def _notes(opts, metrics: dict, note: str) -> list[str]:
    """The Notes column: every setting that differs from the book's, then the row's own note."""
    extras = []
    if opts.batch_size != 8 or opts.grad_accum != 1:
        extras.append(f"batch {opts.batch_size}" + (f" x accum {opts.grad_accum}" if opts.grad_accum != 1 else ""))
    if not opts.causal:
        extras.append("no causal mask")
    if not opts.balance:
        extras.append("unbalanced (different test set)")
    if opts.class_weights:
        extras.append("class-weighted loss")
    extras.append(f"{opts.epochs} epoch{'s' if opts.epochs != 1 else ''}")
    if metrics.get("cache_reused"):
        extras.append("frozen-prefix cache reused from an earlier row (not in its time)")
    search = metrics.get("search") or {}
    if search.get("what") == "pooling":
        extras.append(f"pooling auto: kept {search['chosen']} on validation (time: both poolings)")
    if note:
        extras.append(note)
    return extras


def describe_run(opts, metrics: dict, note: str, run_dir: Path) -> dict:
    """One finished fine-tuning run as a row of the table (report.COLUMNS, without book_row)."""
    layers = (f"LoRA (r={opts.lora_rank}, alpha={opts.lora_alpha:g})" if opts.trainable == "lora"
              else opts.trainable)
    search = metrics.get("search") or {}
    pooling = search["chosen"] if search.get("what") == "pooling" else opts.pooling  # auto: the one kept
    n = metrics.get("max_length")
    ctx = {"auto": f"longest train ex., at most {AUTO_CONTEXT} ({n})", "longest": f"longest train ex. ({n})",
           "model": f"model context ({n})"}.get(opts.context_length, str(n))
    if pooling != "last":
        ctx += "; variable, no padding" if opts.batch_size == 1 else "; padded per batch"
    spec = MODELS.get(opts.model)
    random_only = spec is not None and spec.hf_repo is None and spec.gguf_asset is None
    return {
        "name": run_dir.name, "kind": "finetune", "model": metrics.get("model", opts.model),
        "weights": "random" if random_only else opts.weights, "trainable_token": _TOKENS[pooling],
        "trainable_layers": layers, "context_length": ctx,
        "train_acc": metrics["train"].get("accuracy"), "validation_acc": metrics["validation"].get("accuracy"),
        "test_acc": metrics["test"].get("accuracy"), "test_f1": metrics["test"].get("f1"),
        "trainable_parameters": metrics.get("trainable_parameters"), "train_seconds": metrics.get("train_seconds"),
        "notes": "; ".join(_notes(opts, metrics, note)), "run_dir": str(run_dir),
    }


def table_row(opts, metrics: dict, row: dict, run_dir: Path) -> dict:
    """One finished row of results.csv: the run's description plus its book row number."""
    entry = describe_run(opts, metrics, row.get("note", ""), run_dir)
    entry["book_row"] = row.get("book_row")
    return entry


def baseline_rows(out: Path) -> list[dict]:
    """Rows of OUT/baseline/results.csv, if `llmclf baseline --out OUT/baseline` was run."""
    path = out / "baseline" / "results.csv"
    return read_results(path, "baseline") if path.is_file() else []
