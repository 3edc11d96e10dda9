"""`llmclf experiment`: a grid of fine-tuning configurations on one data split, as one table.

A grid is a TOML file:

    [defaults]                 # optional: options every row starts from
    model = "gpt2-tiny"
    weights = "random"
    epochs = 1

    [[run]]
    name = "last-block"        # the row's run directory: OUT/runs/last-block/
    trainable = "last_block"

    [[run]]
    name = "lora"
    trainable = "lora"
    lora_rank = 16
    note = "free text shown in the table"   # optional

Every other key of [defaults] and of a row is a `finetune.FinetuneOptions` field (`--pooling` is
`pooling`, `--context-length` is `context_length`, ...); an unknown key is an error that names it.
Precedence, lowest first: FinetuneOptions defaults, [defaults] (or the preset's), command-line values
(only those not None and different from the built-in defaults, e.g. --model, --epochs, --data-file),
the row's own keys.

`--preset book-table` is the grid of the book's chapter-6 bonus table (ch06/02_bonus_additional-
experiments in rasbt/LLMs-from-scratch): see BOOK_TABLE and the notes written into results.md.

Rows run one after another into OUT/runs/<name>/ through `finetune.finetune`. A rerun is resumable: a
row whose run directory holds metrics.json (written last by `finetune`) with the same options is read
back, not retrained; an interrupted row with a training checkpoint (Ctrl-C) continues from it; any other
row directory without metrics.json, or one with other options, is redone from scratch.
The tables OUT/results.csv, OUT/results.md and the chart OUT/accuracy.png are rewritten after every row.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from .errors import LlmclfError
from .outdir import prepare_output_dir

# Option keys that describe the run itself, not the experiment: never set from a grid.
_RESERVED = {"out", "overwrite", "quiet", "extra"}
_ROW_META = {"name", "note"}
# Options that do not change what is computed; ignored when deciding whether a finished row is current.
_IRRELEVANT = {"out", "overwrite", "quiet", "extra", "tokenizer_dir", "device", "cache", "checkpoint_every",
               "grad_checkpoint"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

COLUMNS = ["name", "book_row", "kind", "model", "weights", "trainable_token", "trainable_layers", "context_length",
           "train_acc", "validation_acc", "test_acc", "test_f1", "trainable_parameters", "train_seconds",
           "notes", "run_dir"]
_MD_HEADERS = ["", "Name", "Model", "Weights", "Trainable token", "Trainable layers", "Context length",
               "Training acc", "Validation acc", "Test acc", "Test F1", "Trainable params", "Training time",
               "Notes"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the book's table

DEFAULT_PRESET_MODEL = "smollm2-135m-instruct-q4"  # on a GPU: pretrained weights a package registry serves
FALLBACK_PRESET_MODEL = "gpt2-small"           # on a GPU without it, with random weights (no hub assumed)
CPU_PRESET_MODEL = "gpt2-tiny"                 # on a CPU: see the module notes below

# Why a tiny model on a CPU by default (measured on the project's 2-core CPU, SmolLM2-135M, 5 epochs): a row
# that trains on the frozen-prefix cache takes 1.3-6 min (9 such rows: 28 min); LoRA, which runs every
# block at every step over texts padded to 120 tokens, took 49 min (4.4 s per step); all layers add the
# weight gradients (~75 min each, two rows); the unbalanced pair pads 5,572 texts to 262 tokens (one cache
# shared by both rows). The whole table is about 5 hours there; gpt2-tiny runs all of it in about 6 minutes.

# The book script's defaults (additional_experiments.py): the chapter's settings, 5 epochs.
BOOK_DEFAULTS = {"pooling": "last", "context_length": "longest", "trainable": "last_block", "batch_size": 8,
                 "grad_accum": 1, "lr": 5e-5, "weight_decay": 0.1, "lora_rank": 16, "lora_alpha": 16.0,
                 "eval_freq": 50, "eval_iter": 5, "epochs": 5}

_LARGER = "needs pretrained {m} weights, which are not available offline (Hugging Face hub); with random " \
          "weights the row would not measure what the book measures, and on a CPU it would take hours"

# (book row, name, options, skip reason or None, note). Row 18 and the two extras are explained in notes.
BOOK_TABLE = [
    (1, "default", {}, None, "the chapter's settings: the reference row"),
    (2, "first-token", {"pooling": "first"}, None, ""),
    (3, "last-layer", {"trainable": "last_layer"}, None, ""),
    (4, "last-two-blocks", {"trainable": "last_two_blocks"}, None, ""),
    (5, "all-layers", {"trainable": "all"}, None, ""),
    (6, "gpt2-medium", {}, _LARGER.format(m="gpt2-medium (355M)"), ""),
    (7, "gpt2-large", {}, _LARGER.format(m="gpt2-large (774M)"), ""),
    (8, "gpt2-xl", {}, _LARGER.format(m="gpt2-xl (1558M)"), ""),
    (9, "gpt2-xl-all-layers", {}, _LARGER.format(m="gpt2-xl (1558M)"), ""),
    (10, "random-weights-all-layers", {"weights": "random", "trainable": "all"}, None, ""),
    (11, "lora", {"trainable": "lora", "lora_rank": 16, "lora_alpha": 16.0}, None, "rank 16, alpha 16"),
    (12, "gpt2-xl-lora", {}, _LARGER.format(m="gpt2-xl (1558M)"), ""),
    (13, "model-context-length", {"context_length": "model"}, None, "every text padded to the context length"),
    (14, "no-padding-batch-1", {"pooling": "last_nonpad", "batch_size": 1}, None, "variable length, no padding"),
    (15, "no-padding-batch-1-accum-8", {"pooling": "last_nonpad", "batch_size": 1, "grad_accum": 8}, None,
     "variable length, no padding; effective batch 8"),
    (16, "flexible-last-nonpad", {"pooling": "last_nonpad"}, None, "padded, but the last real token is read"),
    (17, "no-causal-mask", {"causal": False}, None, ""),
    (18, "ignore-index", {}, "identical to row 1 by construction: the book's `ignore_index 50256` masks targets "
     "equal to the pad token id, and class targets are 0/1, so its result equals row 1 (as the book reports)", ""),
    (19, "average-embeddings", {"pooling": "mean"}, None, "mean over the real tokens' outputs"),
    (None, "unbalanced", {"balance": False}, None, "extra (not in the book): all 5,572 texts, no undersampling"),
    (None, "unbalanced-class-weights", {"balance": False, "class_weights": True}, None,
     "extra (not in the book): unbalanced, loss weighted by inverse class frequency"),
]

# Context-length cap for row 13 on a CPU: the model's full context (8,192 for SmolLM2, 1,024 for GPT-2)
# means every text is padded to it, which costs hours on a CPU; the row keeps the book's point (pad far
# beyond the longest text) at a length a CPU can afford.
CPU_CONTEXT_CAP = 1024


def _preset_model(base: dict, device: str) -> tuple[str, str, str]:
    """(model, weights, note) for the preset: --model if given; else on a CPU gpt2-tiny; else SmolLM2-135M
    (a package registry serves it) if it can be had, else GPT-2 small with random weights."""
    if base.get("model"):
        return base["model"], "pretrained", ""
    if device == "cpu":
        return CPU_PRESET_MODEL, "random", (
            f"Device: CPU, so the preset uses {CPU_PRESET_MODEL} (2 blocks, 64 dimensions, random weights): the table "
            "shows what each option does, not the book's accuracies. With a 124-135M model this table takes about "
            "5 hours on an idle 2-core CPU (a frozen-bottom row 1-6 min, LoRA ~50 min, an all-layers row ~75 min); "
            f"for that, pass --model {DEFAULT_PRESET_MODEL} (--only NAME,... runs some rows at a time), or run on a "
            "GPU (minutes).")
    try:
        from .assets import fetch
        from .models import MODELS
        fetch(MODELS[DEFAULT_PRESET_MODEL].gguf_asset)
        return DEFAULT_PRESET_MODEL, "pretrained", ""
    except LlmclfError as e:
        return FALLBACK_PRESET_MODEL, "random", (f"{DEFAULT_PRESET_MODEL} unavailable ({e}); "
                                                 f"using {FALLBACK_PRESET_MODEL} with random weights")


def _pretrained_available(model: str) -> bool:
    """Whether `--weights pretrained` can be loaded for this model without error (checked once)."""
    from .models import MODELS
    spec = MODELS.get(model)
    if spec is None:
        return True  # a local directory or file: its own weights
    if spec.hf_repo is None and spec.gguf_asset is None:
        return False  # random-only tiny models
    if spec.gguf_asset:
        try:
            from .assets import fetch
            fetch(spec.gguf_asset)
            return True
        except LlmclfError:
            return False
    try:
        from .weights.hf import download_hf
        download_hf(spec.hf_repo)
        return True
    except LlmclfError:
        return False


def book_table(base: dict, device: str | None = None) -> tuple[dict, list[dict], list[dict], list[str]]:
    """The preset as (defaults, rows, skipped rows, notes)."""
    if device is None:
        from .predict import pick_device
        device = pick_device(base.get("device") or "auto")
    model, weights, note = _preset_model(base, device)
    notes = [note] if note else []
    if weights == "pretrained" and not _pretrained_available(model):
        weights = "random"
        notes.append(f"no pretrained weights for {model} here: every row uses random weights")
    defaults = {**BOOK_DEFAULTS, "model": model, "weights": weights}
    rows, skipped = [], []
    for book_row, name, options, skip, row_note in BOOK_TABLE:
        options = dict(options)
        if skip is None and options.get("weights") == "random" and weights == "random":
            skip = "same as row 5 (all layers): the base model already uses random weights"
        if skip is None and options.get("context_length") == "model" and device == "cpu":
            from .models import MODELS
            spec = MODELS.get(model)
            ctx = spec.config.context_length if spec else None
            if ctx is None or ctx > CPU_CONTEXT_CAP:
                options["context_length"] = str(CPU_CONTEXT_CAP)
                row_note = (f"padded to {CPU_CONTEXT_CAP} tokens, not the model's full context "
                            f"({ctx or 'unknown'}): that would take hours on a CPU")
        entry = {"name": name, "book_row": book_row, "note": row_note, **options}
        (skipped if skip else rows).append({**entry, "skip": skip} if skip else entry)
    return defaults, rows, skipped, notes


# ---------------------------------------------------------------- grid files

def _toml_load(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise LlmclfError("reading a grid needs Python 3.11+ or the `tomli` package (pip install tomli)") from None
    if not path.is_file():
        raise LlmclfError(f"{path}: no such grid file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{path}: not valid TOML ({str(e).splitlines()[0]})") from None


def load_grid(path) -> tuple[dict, list[dict]]:
    """(defaults, rows) of a grid TOML file, keys checked (see the module docstring)."""
    path = Path(path)
    doc = _toml_load(path)
    extra = sorted(set(doc) - {"defaults", "run"})
    if extra:
        raise LlmclfError(f"{path}: unknown top-level key {extra[0]!r} (expected [defaults] and [[run]] tables)")
    defaults = doc.get("defaults", {})
    rows = doc.get("run", [])
    if not isinstance(defaults, dict):
        raise LlmclfError(f"{path}: 'defaults' must be a table ([defaults])")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows) or not rows:
        raise LlmclfError(f"{path}: no rows; add [[run]] tables, one per configuration")
    return defaults, rows


# ---------------------------------------------------------------- options

def _option_types() -> dict:
    from .finetune import FinetuneOptions
    return {f.name: f for f in fields(FinetuneOptions)}


def _check_keys(d: dict, where: str, allow_meta: bool) -> None:
    known = set(_option_types()) - _RESERVED
    for key in d:
        if key in _RESERVED:
            raise LlmclfError(f"{where}: key {key!r} cannot be set in a grid (the experiment sets it)")
        if key not in known and not (allow_meta and key in _ROW_META | {"book_row", "skip"}):
            raise LlmclfError(f"{where}: unknown key {key!r} (not a training option; see `llmclf train --help`)")


def build_options(defaults: dict, base: dict, row: dict, out: Path, where: str):
    """FinetuneOptions for one row (precedence: built-in < defaults < base < row)."""
    from .options import FinetuneOptions, check_options, coerce
    builtin = FinetuneOptions(out="")
    merged = {}
    for key, value in defaults.items():
        merged[key] = coerce(key, value, f"{where} (defaults): {key}")
    for key, value in base.items():
        if key in _RESERVED or key in _ROW_META or value is None:
            continue
        if key not in _option_types():
            raise LlmclfError(f"unknown base option {key!r}")
        value = tuple(value) if key == "split" else value
        if value != getattr(builtin, key):
            merged[key] = value
    for key, value in row.items():
        if key in _ROW_META or key in ("book_row", "skip"):
            continue
        merged[key] = coerce(key, value, f"{where}: {key}")
    return check_options(FinetuneOptions(out=str(out), overwrite=True, **merged), where)


def _comparable(options: dict) -> dict:
    """Options as JSON sees them, without those that do not change the result."""
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in _IRRELEVANT}))


def _same_options(saved: dict, opts) -> bool:
    """Whether a run saved with `saved` options is the run `opts` describes. An option the saved run does not
    record (added to FinetuneOptions later) matches when `opts` leaves it at its built-in default."""
    from .finetune import FinetuneOptions
    builtin = _comparable(asdict(FinetuneOptions(out="")))
    saved, current = _comparable(saved), _comparable(asdict(opts))
    return all(saved.get(k, builtin.get(k)) == v for k, v in current.items())


# ---------------------------------------------------------------- table

def _pct(x) -> str:
    try:
        return "" if x is None or x != x else f"{100 * float(x):.2f}%"
    except (TypeError, ValueError):
        return ""


def _duration(secs) -> str:
    if secs is None or secs != secs:
        return ""
    if secs >= 2 * 3600:
        return f"{secs / 3600:.2f} h"
    return f"{secs:.1f} s" if secs < 60 else f"{secs / 60:.2f} min"


def _total_seconds(df) -> float:
    """The table's training times summed: what its rows cost, however many runs it took to finish them."""
    return df["train_seconds"].astype(float).sum()  # a row without a time is NaN, which sum() skips


def _describe_run(opts, metrics: dict, note: str, run_dir: Path) -> dict:
    token = {"last": "last", "last_nonpad": "last non-pad", "first": "first", "mean": "mean of all"}[opts.pooling]
    layers = (f"LoRA (r={opts.lora_rank}, alpha={opts.lora_alpha:g})" if opts.trainable == "lora"
              else opts.trainable)
    n = metrics.get("max_length")
    ctx = {"longest": f"longest train ex. ({n})", "model": f"model context ({n})"}.get(opts.context_length, str(n))
    if opts.pooling != "last":
        ctx += "; variable, no padding" if opts.batch_size == 1 else "; padded per batch"
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
    if note:
        extras.append(note)
    from .models import MODELS
    spec = MODELS.get(opts.model)
    random_only = spec is not None and spec.hf_repo is None and spec.gguf_asset is None
    return {
        "name": run_dir.name, "kind": "finetune", "model": metrics.get("model", opts.model),
        "weights": "random" if random_only else opts.weights, "trainable_token": token, "trainable_layers": layers, "context_length": ctx,
        "train_acc": metrics["train"].get("accuracy"), "validation_acc": metrics["validation"].get("accuracy"),
        "test_acc": metrics["test"].get("accuracy"), "test_f1": metrics["test"].get("f1"),
        "trainable_parameters": metrics.get("trainable_parameters"), "train_seconds": metrics.get("train_seconds"),
        "notes": "; ".join(extras), "run_dir": str(run_dir),
    }


def write_chart(path: Path, rows: list[dict]) -> None:
    import matplotlib
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


def write_results(out: Path, rows: list[dict], title: str, intro: str = "", skipped: list[dict] = (),
                  notes: list[str] = ()):
    """OUT/results.csv, OUT/results.md (with the chart) and OUT/accuracy.png from table rows; returns the DataFrame."""
    import pandas as pd
    from .artifact import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    if rows:
        write_chart(out / "accuracy.png", rows)
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| " + " | ".join(_MD_HEADERS) + " |", "|" + "---|" * len(_MD_HEADERS)]
    for i, r in enumerate(rows, 1):
        label = r.get("book_row")
        label = f"{i}" + (f" (book {label})" if label else "")
        params = r.get("trainable_parameters")
        secs = r.get("train_seconds")
        cells = [label, r["name"], r["model"], r["weights"], r["trainable_token"], r["trainable_layers"],
                 r["context_length"], _pct(r["train_acc"]), _pct(r["validation_acc"]), _pct(r["test_acc"]),
                 f"{r['test_f1']:.4f}" if r.get("test_f1") is not None else "",
                 f"{int(params):,}" if params is not None else "",
                 _duration(secs), r.get("notes") or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines.append("")
    if rows:
        lines += [f"Training time of these rows, all together: {_duration(_total_seconds(df))}.", ""]
        lines += ["![test accuracy per configuration](accuracy.png)", ""]
    if skipped:
        lines += ["## Rows not run", ""]
        lines += [f"- {s['name']}" + (f" (book row {s['book_row']})" if s.get("book_row") else "") + f": {s['skip']}"
                  for s in skipped]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    atomic_write_text(out / "results.md", "\n".join(lines))
    return df


def _baseline_rows(out: Path) -> list[dict]:
    """Rows of OUT/baseline/results.csv, if `llmclf baseline --out OUT/baseline` was run."""
    import pandas as pd
    path = out / "baseline" / "results.csv"
    if not path.is_file():
        return []
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    rows = []
    for r in df.to_dict("records"):
        r = {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        r["kind"] = "baseline"
        rows.append(r)
    return rows


# ---------------------------------------------------------------- running

def _finished(run_dir: Path, opts) -> dict | None:
    """The metrics of a finished run with the same options, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _same_options(metrics.get("options", {}), opts):
        return None
    return metrics


def _resumable(run_dir: Path, opts) -> bool:
    """Whether run_dir holds an interrupted run (checkpoint, no metrics) of exactly these options."""
    from .checkpoint import CHECKPOINT
    from .finetune import RUN_OPTIONS
    if not (run_dir / CHECKPOINT).is_file() or (run_dir / "metrics.json").exists():
        return False
    try:
        saved = json.loads((run_dir / RUN_OPTIONS).read_text())
    except (OSError, ValueError):
        return False
    return _same_options(saved, opts)


def run_experiments(grid=None, preset=None, out="experiments", base: dict | None = None, log=None,
                    only: list[str] | None = None):
    """Run every row of a grid file or preset into OUT/runs/<name>/ (finished rows are read back);
    write OUT/results.csv, OUT/results.md, OUT/accuracy.png; return the table as a DataFrame.
    `only`: run just the rows with these names; rows finished earlier still appear in the table, and the
    others are listed as not run yet (a later call runs them)."""
    from .finetune import TrainingInterrupted
    from .train import PrefixCacheStore

    log = log or _log
    base = dict(base or {})
    out = Path(out)
    if (grid is None) == (preset is None):
        raise LlmclfError("give exactly one of --grid FILE or --preset NAME")
    skipped, notes = [], []
    if preset is not None:
        if preset != "book-table":
            raise LlmclfError(f"unknown preset {preset!r} (available: book-table)")
        defaults, rows, skipped, notes = book_table(base)
        title = "Chapter 6 bonus table (book-table preset)"
        notes = notes + [
            "Book rows: rasbt/LLMs-from-scratch, ch06/02_bonus_additional-experiments (gpt2-small and larger, "
            "5 epochs, on an A100); the table's '(book N)' is the book's row number.",
            "Trainable token: 'last' reads the last position of texts padded to the longest training text (the "
            "book's setting); 'last non-pad' reads each text's last real token (the book's 'flexible'); 'mean of "
            "all' averages the real tokens' outputs (the book's --average_embeddings).",
            "Training time runs from data ready to final metrics: model loading, tokenization, the frozen-prefix "
            "cache (computed once, and reused by later rows with the same frozen blocks and texts), training and "
            "the evaluation of all three splits.",
        ]
    else:
        defaults, rows = load_grid(grid)
        title = f"Experiment: {Path(grid).name}"
    where_file = grid or f"preset {preset}"
    _check_keys(defaults, f"{where_file} [defaults]", allow_meta=False)
    names = set()
    planned = []
    for i, row in enumerate(rows, 1):
        name = row.get("name", f"run-{i}")
        where = f"{where_file}, row {name!r}" if "name" in row else f"{where_file}, row {i}"
        _check_keys(row, where, allow_meta=True)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise LlmclfError(f"{where}: name must be letters, digits, '.', '_' or '-' (it names a directory)")
        if name in names:
            raise LlmclfError(f"{where}: duplicate name {name!r}")
        names.add(name)
        opts = build_options(defaults, base, row, out / "runs" / name, where)
        planned.append((name, row, opts))
    if only is not None:
        unknown = sorted(set(only) - names)
        if unknown:
            raise LlmclfError(f"no row named {unknown[0]!r} in {where_file} (rows: {', '.join(sorted(names))})")
        only = set(only)

    data_opts = build_options(defaults, base, {}, out / "runs", where_file)
    if preset is not None:
        from .predict import pick_device
        first = data_opts
        notes.append(f"Run with {first.epochs} epoch(s) per row on device {pick_device(first.device)}; "
                     f"batch size {first.batch_size}, lr {first.lr:g}, weight decay {first.weight_decay:g}.")
    prepare_output_dir(out, "experiment", overwrite=False, reuse=True)  # a rerun continues; nothing foreign
    if preset is not None and not (out / "baseline" / "results.csv").is_file():
        from .baseline import DATA_KEYS, run_baselines
        run_baselines(out / "baseline", {k: getattr(data_opts, k) for k in DATA_KEYS}, log=log, overwrite=True)

    # Every finished row is in the table from the start, so results.csv never lacks one while a long row runs.
    entries = {}
    for name, row, opts in planned:
        metrics = _finished(Path(opts.out), opts)
        if metrics is not None:
            entries[name] = _table_row(opts, metrics, row, Path(opts.out))
    if only is not None:  # rows left out now and not finished before: listed as still to run
        skipped = skipped + [
            {"name": name, "book_row": row.get("book_row"),
             "skip": "not run yet (left out by --only); the same command without --only runs it"}
            for name, row, opts in planned if name not in only and name not in entries]

    def write():
        table = [entries[name] for name, _, _ in planned if name in entries]
        return write_results(out, table + _baseline_rows(out), title, skipped=skipped, notes=notes)

    df = write()
    t_all = time.perf_counter()
    store = PrefixCacheStore()  # rows with the same frozen blocks and texts compute their cache once
    for i, (name, row, opts) in enumerate(planned, 1):
        run_dir = Path(opts.out)
        if name in entries:
            log(f"[{i}/{len(planned)}] {name}: finished earlier, read back from {run_dir}/metrics.json")
        elif only is not None and name not in only:
            continue  # listed above as not run yet
        else:
            t0 = time.perf_counter()
            try:
                with _threads_for(opts):
                    metrics = _train_row(opts, run_dir, name, f"[{i}/{len(planned)}]", log, store)
            except TrainingInterrupted:
                raise TrainingInterrupted(f"interrupted in row {name!r}; its checkpoint is saved: run the same "
                                          "`llmclf experiment` command again to continue") from None
            except LlmclfError as e:
                raise LlmclfError(f"row {name!r}: {e}") from None
            log(f"[{i}/{len(planned)}] {name}: done in {time.perf_counter() - t0:.1f}s "
                f"(test accuracy {metrics['test']['accuracy'] * 100:.2f}%)")
            entries[name] = _table_row(opts, metrics, row, run_dir)
            df = write()
    log(f"experiment: {len(planned)} rows, {_duration(_total_seconds(df))} of training in all "
        f"({time.perf_counter() - t_all:.1f}s in this run) -> {out / 'results.md'}")
    return df


def _table_row(opts, metrics: dict, row: dict, run_dir: Path) -> dict:
    """One finished row of results.csv: the run's description plus its book row number."""
    entry = _describe_run(opts, metrics, row.get("note", ""), run_dir)
    entry["book_row"] = row.get("book_row")
    return entry


def _train_row(opts, run_dir: Path, name: str, tag: str, log, store=None) -> dict:
    from .finetune import finetune, resume
    if _resumable(run_dir, opts):
        log(f"{tag} {name}: resuming the interrupted run from its checkpoint")
        return resume(run_dir, store)
    if run_dir.exists():
        log(f"{tag} {name}: incomplete or other options in {run_dir}; redoing it")
    log(f"{tag} {name}: training")
    return finetune(opts, cache_store=store)


TINY_MODELS = ("gpt2-tiny", "llama-tiny")


class _threads_for:
    """One intra-op thread for the tiny models on a CPU: their operations are too small to split, and on a
    busy machine a second thread made them up to 10x slower (measured: a LoRA row 355 s -> 35 s, same result)."""

    def __init__(self, opts):
        from .predict import pick_device
        self.one = opts.model in TINY_MODELS and pick_device(opts.device) == "cpu"

    def __enter__(self):
        import torch
        self.saved = torch.get_num_threads()
        if self.one:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch
        torch.set_num_threads(self.saved)
        return False


