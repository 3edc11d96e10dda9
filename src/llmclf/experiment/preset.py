"""`--preset book-table`: the book's chapter-6 bonus table (ch06/02_bonus_additional-experiments in
rasbt/LLMs-from-scratch) as a grid of llmclf options; see BOOK_TABLE and the notes written into results.md."""

from __future__ import annotations

from ..assets import fetch
from ..errors import LlmclfError
from ..models import MODELS
from ..options import BOOK_RECIPE
from ..predict import pick_device
from ..weights.hf import download_hf

DEFAULT_PRESET_MODEL = "smollm2-135m-instruct-q4"  # on a GPU: pretrained weights a package registry serves
FALLBACK_PRESET_MODEL = "gpt2-small"           # on a GPU without it, with random weights (no hub assumed)
CPU_PRESET_MODEL = "gpt2-tiny"                 # on a CPU: see the module notes below

# Why a tiny model on a CPU by default (measured on the project's 2-core CPU, SmolLM2-135M, 5 epochs): a row
# that trains on the frozen-prefix cache takes 1.3-6 min (9 such rows: 28 min); LoRA, which runs every
# block at every step over texts padded to 120 tokens, took 49 min (4.4 s per step); all layers add the
# weight gradients (~75 min each, two rows); the unbalanced pair pads 5,572 texts to 262 tokens (one cache
# shared by both rows). The whole table is about 5 hours there; gpt2-tiny runs all of it in about 6 minutes.

# The book script's defaults (additional_experiments.py): the chapter's settings, 5 epochs.
BOOK_DEFAULTS = {**{k: v for k, v in BOOK_RECIPE.items() if k != "model"},
                 "pooling": "last", "grad_accum": 1, "lora_rank": 16, "lora_alpha": 16.0, "eval_freq": 50,
                 "eval_iter": 5}

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

PRESETS = ("book-table",)
BOOK_TITLE = "Chapter 6 bonus table (book-table preset)"
BOOK_NOTES = [
    "Book rows: rasbt/LLMs-from-scratch, ch06/02_bonus_additional-experiments (gpt2-small and larger, "
    "5 epochs, on an A100); the table's '(book N)' is the book's row number.",
    "Trainable token: 'last' reads the last position of texts padded to the longest training text (the "
    "book's setting); 'last non-pad' reads each text's last real token (the book's 'flexible'); 'mean of "
    "all' averages the real tokens' outputs (the book's --average_embeddings).",
    "Training time runs from data ready to final metrics: model loading, tokenization, the frozen-prefix "
    "cache (computed once, and reused by later rows with the same frozen blocks and texts), training and "
    "the evaluation of all three splits.",
]


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
        fetch(MODELS[DEFAULT_PRESET_MODEL].gguf_asset)
        return DEFAULT_PRESET_MODEL, "pretrained", ""
    except LlmclfError as e:
        return FALLBACK_PRESET_MODEL, "random", (f"{DEFAULT_PRESET_MODEL} unavailable ({e}); "
                                                 f"using {FALLBACK_PRESET_MODEL} with random weights")


def _pretrained_available(model: str) -> bool:
    """Whether `--weights pretrained` can be loaded for this model without error (checked once)."""
    spec = MODELS.get(model)
    if spec is None:
        return True  # a local directory or file: its own weights
    if spec.hf_repo is None and spec.gguf_asset is None:
        return False  # random-only tiny models
    try:
        if spec.gguf_asset:
            fetch(spec.gguf_asset)
        else:
            download_hf(spec.hf_repo)
        return True
    except LlmclfError:
        return False


def _row_options(options: dict, row_note: str, model: str, device: str) -> tuple[dict, str]:
    """A runnable row's options and note, with row 13's context capped on a CPU (see CPU_CONTEXT_CAP)."""
    options = dict(options)
    if options.get("context_length") == "model" and device == "cpu":
        spec = MODELS.get(model)
        ctx = spec.config.context_length if spec else None
        if ctx is None or ctx > CPU_CONTEXT_CAP:
            options["context_length"] = str(CPU_CONTEXT_CAP)
            row_note = (f"padded to {CPU_CONTEXT_CAP} tokens, not the model's full context "
                        f"({ctx or 'unknown'}): that would take hours on a CPU")
    return options, row_note


def book_table(base: dict, device: str | None = None) -> tuple[dict, list[dict], list[dict], list[str]]:
    """The preset as (defaults, rows, skipped rows, notes)."""
    if device is None:
        device = pick_device(base.get("device") or "auto")
    model, weights, note = _preset_model(base, device)
    notes = [note] if note else []
    if weights == "pretrained" and not _pretrained_available(model):
        weights = "random"
        notes.append(f"no pretrained weights for {model} here: every row uses random weights")
    defaults = {**BOOK_DEFAULTS, "model": model, "weights": weights}
    rows, skipped = [], []
    for book_row, name, options, skip, row_note in BOOK_TABLE:
        if skip is None and options.get("weights") == "random" and weights == "random":
            skip = "same as row 5 (all layers): the base model already uses random weights"
        if skip is None:
            options, row_note = _row_options(options, row_note, model, device)
        entry = {"name": name, "book_row": book_row, "note": row_note, **options}
        (skipped if skip else rows).append({**entry, "skip": skip} if skip else entry)
    return defaults, rows, skipped, notes


def load_preset(preset: str, base: dict) -> tuple[dict, list[dict], list[dict], list[str], str]:
    """(defaults, rows, skipped rows, notes, title) of a named preset."""
    if preset not in PRESETS:
        raise LlmclfError(f"unknown preset {preset!r} (available: {', '.join(PRESETS)})")
    defaults, rows, skipped, notes = book_table(base)
    return defaults, rows, skipped, notes + BOOK_NOTES, BOOK_TITLE


def run_note(opts) -> str:
    """The preset's note on how its rows were run (epochs, device, the shared training settings)."""
    return (f"Run with {opts.epochs} epoch(s) per row on device {pick_device(opts.device)}; "
            f"batch size {opts.batch_size}, lr {opts.lr:g}, weight decay {opts.weight_decay:g}.")
