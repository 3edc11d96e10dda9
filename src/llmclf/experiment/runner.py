"""Running an experiment: plan every row (all checked before anything is written), read back the finished
ones, train the others one after another (resuming an interrupted one), rewrite the table after each."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..baseline import DATA_KEYS, run_baselines
from ..checkpoint import CHECKPOINT
from ..errors import LlmclfError
from ..finetune import RUN_OPTIONS, TrainingInterrupted
from ..outdir import prepare_output_dir
from ..predict import pick_device
from ..search import read_search, resume_run, train
from ..report import duration, total_seconds, write_results
from ..train import PrefixCacheStore
from .grid import build_options, check_only, load_grid, plan_rows, same_options
from .preset import load_preset, run_note
from .rows import baseline_rows, table_row

TINY_MODELS = ("gpt2-tiny", "llama-tiny")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Experiment:
    """The planned rows of one experiment and its table so far."""
    out: Path
    title: str
    where: str  # the grid file or "preset NAME", for messages
    defaults: dict
    planned: list  # [(name, row, FinetuneOptions)], in table order
    skipped: list
    notes: list
    entries: dict  # name -> table row, for the rows finished so far

    def write(self):
        table = [self.entries[name] for name, _, _ in self.planned if name in self.entries]
        return write_results(self.out, table + baseline_rows(self.out), self.title, skipped=self.skipped,
                             notes=self.notes)


def _plan(grid, preset, out: Path, base: dict) -> _Experiment:
    """Every row of the grid or preset, checked and turned into options; nothing is written."""
    if (grid is None) == (preset is None):
        raise LlmclfError("give exactly one of --grid FILE or --preset NAME")
    if preset is not None:
        defaults, rows, skipped, notes, title = load_preset(preset, base)
    else:
        (defaults, rows), skipped, notes = load_grid(grid), [], []
        title = f"Experiment: {Path(grid).name}"
    where = grid or f"preset {preset}"
    planned = plan_rows(defaults, rows, base, out, where)
    return _Experiment(out, title, where, defaults, planned, skipped, notes, entries={})


def _finished(run_dir: Path, opts) -> dict | None:
    """The metrics of a finished run with the same options, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not same_options(metrics.get("options", {}), opts):
        return None
    return metrics


def _resumable(run_dir: Path, opts) -> bool:
    """Whether run_dir holds an interrupted run (a checkpoint or a choice begun, no metrics) of exactly these
    options."""
    if (run_dir / "metrics.json").exists():
        return False
    try:
        choice = read_search(run_dir)
        if choice is not None:
            saved = choice["options"]
        elif (run_dir / CHECKPOINT).is_file():
            saved = json.loads((run_dir / RUN_OPTIONS).read_text())
        else:
            return False
    except (OSError, ValueError, KeyError):
        return False
    return same_options(saved, opts)


def _read_back(exp: _Experiment, only: set[str] | None) -> None:
    """Every finished row into the table from the start, so results.csv never lacks one while a long row
    runs; with `only`, the rows left out now and not finished before are listed as still to run."""
    for name, row, opts in exp.planned:
        metrics = _finished(Path(opts.out), opts)
        if metrics is not None:
            exp.entries[name] = table_row(opts, metrics, row, Path(opts.out))
    if only is not None:
        exp.skipped = exp.skipped + [
            {"name": name, "book_row": row.get("book_row"),
             "skip": "not run yet (left out by --only); the same command without --only runs it"}
            for name, row, opts in exp.planned if name not in only and name not in exp.entries]


def _train_row(opts, run_dir: Path, name: str, tag: str, log, store=None) -> dict:
    if _resumable(run_dir, opts):
        log(f"{tag} {name}: resuming the interrupted run from its checkpoint")
        return resume_run(run_dir, store)
    if run_dir.exists():
        log(f"{tag} {name}: incomplete or other options in {run_dir}; redoing it")
    log(f"{tag} {name}: training")
    return train(opts, cache_store=store)


def _run_row(name: str, opts, tag: str, log, store) -> dict:
    """Train one row; its errors name it."""
    t0 = time.perf_counter()
    try:
        with _threads_for(opts):
            metrics = _train_row(opts, Path(opts.out), name, tag, log, store)
    except TrainingInterrupted:
        raise TrainingInterrupted(f"interrupted in row {name!r}; its checkpoint is saved: run the same "
                                  "`llmclf experiment` command again to continue") from None
    except LlmclfError as e:
        raise LlmclfError(f"row {name!r}: {e}") from None
    log(f"{tag} {name}: done in {time.perf_counter() - t0:.1f}s "
        f"(test accuracy {metrics['test']['accuracy'] * 100:.2f}%)")
    return metrics


def _run_rows(exp: _Experiment, only: set[str] | None, log, df):
    """Train every row not finished (and selected by `only`), rewriting the table after each; returns the
    last table written (`df` if none was)."""
    store = PrefixCacheStore()  # rows with the same frozen blocks and texts compute their cache once
    for i, (name, row, opts) in enumerate(exp.planned, 1):
        tag = f"[{i}/{len(exp.planned)}]"
        if name in exp.entries:
            log(f"{tag} {name}: finished earlier, read back from {Path(opts.out)}/metrics.json")
        elif only is None or name in only:  # the others are listed as not run yet
            metrics = _run_row(name, opts, tag, log, store)
            exp.entries[name] = table_row(opts, metrics, row, Path(opts.out))
            df = exp.write()
    return df


def run_experiments(grid=None, preset=None, out="experiments", base: dict | None = None, log=None,
                    only: list[str] | None = None):
    """Run every row of a grid file or preset into OUT/runs/<name>/ (finished rows are read back);
    write OUT/results.csv, OUT/results.md, OUT/accuracy.png; return the table as a DataFrame.
    `only`: run just the rows with these names; rows finished earlier still appear in the table, and the
    others are listed as not run yet (a later call runs them)."""
    log = log or _log
    base = dict(base or {})
    out = Path(out)
    exp = _plan(grid, preset, out, base)
    only = check_only(only, exp.planned, exp.where)
    data_opts = build_options(exp.defaults, base, {}, out / "runs", exp.where)
    if preset is not None:
        exp.notes.append(run_note(data_opts))
    prepare_output_dir(out, "experiment", overwrite=False, reuse=True)  # a rerun continues; nothing foreign
    if preset is not None and not (out / "baseline" / "results.csv").is_file():
        run_baselines(out / "baseline", {k: getattr(data_opts, k) for k in DATA_KEYS}, log=log, overwrite=True)
    _read_back(exp, only)
    df = exp.write()
    t_all = time.perf_counter()
    df = _run_rows(exp, only, log, df)
    log(f"experiment: {len(exp.planned)} rows, {duration(total_seconds(df))} of training in all "
        f"({time.perf_counter() - t_all:.1f}s in this run) -> {out / 'results.md'}")
    return df


class _threads_for:
    """One intra-op thread for the tiny models on a CPU: their operations are too small to split, and on a
    busy machine a second thread made them up to 10x slower (measured: a LoRA row 355 s -> 35 s, same result)."""

    def __init__(self, opts):
        self.one = opts.model in TINY_MODELS and pick_device(opts.device) == "cpu"

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.one:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)
        return False
