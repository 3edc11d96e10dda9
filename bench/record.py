"""Where the bench scripts keep their rows: bench/results/NAME-DATE.jsonl (every figure) and .md (the table row)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def append_row(name: str, row: dict, md: str) -> None:
    """Append one run's figures (row["date"] names the files) and its markdown table row."""
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{name}-{row['date']}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    with open(RESULTS / f"{name}-{row['date']}.md", "a") as f:
        f.write(md + "\n")
