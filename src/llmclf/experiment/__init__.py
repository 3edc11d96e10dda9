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
experiments in rasbt/LLMs-from-scratch): see preset.BOOK_TABLE and the notes written into results.md.

Rows run one after another into OUT/runs/<name>/ through `finetune.finetune`. A rerun is resumable: a
row whose run directory holds metrics.json (written last by `finetune`) with the same options is read
back, not retrained; an interrupted row with a training checkpoint (Ctrl-C) continues from it; any other
row directory without metrics.json, or one with other options, is redone from scratch.
The tables OUT/results.csv, OUT/results.md and the chart OUT/accuracy.png (llmclf.report, shared with
`llmclf baseline`) are rewritten after every row.

Modules, one job each: preset.py (the book's table), grid.py (grid files, row options), rows.py (a finished
run as a table row), runner.py (the loop).
"""

from ..report import COLUMNS, duration, write_chart, write_results
from .grid import build_options, load_grid
from .preset import BOOK_DEFAULTS, BOOK_TABLE, CPU_CONTEXT_CAP, book_table
from .runner import TINY_MODELS, run_experiments

__all__ = ["BOOK_DEFAULTS", "BOOK_TABLE", "COLUMNS", "CPU_CONTEXT_CAP", "TINY_MODELS", "book_table", "build_options",
           "duration", "load_grid", "run_experiments", "write_chart", "write_results"]
