"""Choices made on the validation split: --pooling auto (the default) and --recipe auto.

--pooling auto trains the two poolings that each won somewhere on bench/quality.py's validation splits,
the mean (better on topics and long texts) and the last real token (better on sentiment), and keeps the
better for this data. --recipe auto searches a few more recipes within --search-minutes.

Every candidate trains on the same split from the same frozen blocks, so the frozen-prefix cache the first
computes serves the others (one frozen pass for the whole choice). Each candidate is a complete run in
RUN_DIR/search/NAME, with its own checkpoints, so an interrupted choice resumes (`--resume RUN_DIR`). The
best on validation macro-F1 of the classifier it would save (its blend included; ties: the one tried
first) becomes the run, the others are deleted, and RUN_DIR/search.csv (and metrics.json's `search`)
lists what was tried. The test split plays no part in the choice.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from . import distributed
from .errors import LlmclfError
from .finetune import CHECKPOINT, TrainingInterrupted, finetune, resume, saved_options
from .options import FinetuneOptions, check_options
from .outdir import MARKER, prepare_output_dir
from .train import PrefixCacheStore
from .atomic import atomic_write_text
from .run_report import write_run_report

# What each candidate changes from the default recipe; the default itself runs first. The trainable depth
# is the same in all, so they share one frozen-prefix cache.
CANDIDATES = {
    "default": {},
    "lr_x3": {"lr_scale": 3.0},
    "lr_div3": {"lr_scale": 1 / 3},
    "last_token": {"pooling": "last_nonpad"},
    "epochs_x2": {"epochs_scale": 2},
}
# --pooling auto: the first is the one kept on a tie (the better of the two on average over the benchmark).
POOLING_CANDIDATES = {"mean": {"pooling": "mean"}, "last_nonpad": {"pooling": "last_nonpad"}}
SEARCH_FILE = "search.json"  # written first: what is being chosen, so that --resume can continue it


def train(opts: FinetuneOptions, cache_store=None) -> dict:
    """What `llmclf train` runs: --recipe auto's search, --pooling auto's choice, or one run."""
    if opts.recipe == "auto":
        return auto_recipe(opts)
    if opts.pooling == "auto":
        return choose(opts, "pooling", cache_store)
    return finetune(opts, cache_store=cache_store)


def resume_run(run_dir, cache_store=None) -> dict:
    """--resume RUN_DIR: continue an interrupted choice (its unfinished candidates), or one run."""
    distributed.init()
    run_dir = Path(run_dir)
    saved = distributed.from_main(lambda: read_search(run_dir))
    if saved is None:
        return resume(run_dir, cache_store)
    return choose(saved_options(saved["options"], run_dir), saved["kind"], cache_store, resuming=True)


def read_search(run_dir: Path) -> dict | None:
    """RUN_DIR/search.json of an unfinished choice ({kind, options}), or None."""
    f = run_dir / SEARCH_FILE
    if not f.is_file() or (run_dir / "metrics.json").is_file():
        return None  # finetune.resume says why a finished or foreign directory cannot be resumed
    return json.loads(f.read_text())


def candidate_options(opts: FinetuneOptions, name: str, kind: str = "recipe") -> FinetuneOptions:
    """The options of one candidate: opts with the candidate's changes, run quietly in RUN_DIR/search/NAME."""
    change = dict((CANDIDATES if kind == "recipe" else POOLING_CANDIDATES)[name])
    if "lr_scale" in change:
        change["lr"] = opts.lr * change.pop("lr_scale")
    if "epochs_scale" in change:
        change["epochs"] = opts.epochs * change.pop("epochs_scale")
    if change.get("pooling", opts.pooling) == "auto":
        change["pooling"] = next(iter(POOLING_CANDIDATES))  # a recipe candidate that leaves pooling alone
    return replace(opts, **change, recipe="default", out=str(Path(opts.out) / "search" / name), overwrite=True,
                   quiet=opts.quiet or kind == "recipe")  # --pooling auto shows each run's progress


def _score(metrics: dict) -> float:
    """Validation macro-F1 of what the run saves: the blend when it is saved, else the LLM alone."""
    blend = metrics.get("blend")
    saved = blend["validation"] if blend and blend["saved"] else metrics["validation"]
    return saved["macro_f1"]


def _row(name: str, opts: FinetuneOptions, metrics: dict, seconds: float) -> dict:
    blend = metrics.get("blend") or {}
    return {"candidate": name, "pooling": opts.pooling, "lr": opts.lr, "epochs": opts.epochs,
            "validation_macro_f1": round(_score(metrics), 6),
            "llm_validation_macro_f1": round(metrics["validation"]["macro_f1"], 6),
            "blend_weight": blend.get("weight") if blend.get("saved") else None,
            "cache_reused": bool(metrics.get("cache_reused")), "train_seconds": metrics["train_seconds"],
            "seconds": round(seconds, 1)}


def auto_recipe(opts: FinetuneOptions) -> dict:
    """Run --recipe auto: the candidates within --search-minutes, the best kept as RUN_DIR's run."""
    if distributed.launched():
        raise LlmclfError("--recipe auto runs in one process; under torchrun give a recipe (default or book)")
    return choose(opts, "recipe")


def choose(opts: FinetuneOptions, kind: str, cache_store=None, resuming: bool = False) -> dict:
    """Train each candidate of `kind` (recipe | pooling) on this split; keep the best on validation."""
    check_options(opts)
    if not opts.out:
        raise LlmclfError("--out RUN_DIR is required")
    distributed.init()
    out = Path(opts.out)
    say = (lambda msg: None) if opts.quiet or not distributed.is_main() else (
        lambda msg: print(msg, file=sys.stderr, flush=True))
    started = []  # rank 0's handle on the run directory it made (the other ranks never touch it)
    if not resuming:
        distributed.from_main(lambda: started.append(_start(out, opts, kind)))
    try:
        rows, results = _run_candidates(opts, kind, say, cache_store or PrefixCacheStore(), resuming)
        best = max(rows, key=lambda r: r["validation_macro_f1"])  # ties: the earlier (the first candidate)
        return _keep(out, kind, best, rows, results[best["candidate"]], say)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(f"{str(e).split(';')[0]}; finished candidates and the checkpoint kept; "
                                  f"continue with: llmclf train --resume {out}") from None
    except BaseException:
        if started:
            started[0].discard()  # the whole choice was this call's: leave nothing half-written
        raise


def _start(out: Path, opts: FinetuneOptions, kind: str):
    run_dir = prepare_output_dir(out, "run", opts.overwrite)
    atomic_write_text(out / SEARCH_FILE, json.dumps({"kind": kind, "options": asdict(opts)}, indent=2))
    return run_dir


def _run_candidates(opts: FinetuneOptions, kind: str, say, store, resuming: bool) -> tuple[list, dict]:
    names = list(CANDIDATES if kind == "recipe" else POOLING_CANDIDATES)
    rows, results = [], {}
    start, last = time.perf_counter(), 0.0
    budget = opts.search_minutes * 60 if kind == "recipe" else float("inf")
    for i, name in enumerate(names):
        elapsed = time.perf_counter() - start
        if rows and elapsed + last > budget:  # the next would likely end past the budget
            say(f"search: {elapsed / 60:.1f} of {opts.search_minutes:g} minutes gone; "
                f"{len(names) - i} candidate(s) not tried")
            break
        cand = candidate_options(opts, name, kind)
        say(f"{kind} auto {i + 1}/{len(names)}: {name}")
        t = time.perf_counter()
        metrics = _run_candidate(cand, store, resuming)
        last = time.perf_counter() - t
        rows.append(_row(name, cand, metrics, last))
        results[name] = metrics
        say(f"{kind} auto {i + 1}/{len(names)} {name}: validation macro-F1 {rows[-1]['validation_macro_f1']:.4f} "
            f"({last:.0f}s)")
    return rows, results


def _run_candidate(cand: FinetuneOptions, store, resuming: bool) -> dict:
    """One candidate: read back when an earlier call finished it, resumed from its checkpoint, or trained."""
    where = Path(cand.out)
    found = distributed.from_main(lambda: _candidate_state(where)) if resuming else "new"
    if isinstance(found, dict):
        return found  # its metrics
    if found == "checkpoint":
        return resume(where, store)
    return finetune(cand, cache_store=store)


def _candidate_state(where: Path):
    """A finished candidate's metrics, else "checkpoint" (interrupted) or "new"."""
    if (where / "metrics.json").is_file():
        return json.loads((where / "metrics.json").read_text())
    return "checkpoint" if (where / CHECKPOINT).is_file() else "new"


def _keep(out: Path, kind: str, best: dict, rows: list, metrics: dict, say) -> dict:
    """Move the winner's files up into RUN_DIR, drop the other candidates, write search.csv and metrics.json."""
    metrics["search"] = {"what": kind, "chosen": best["candidate"], "by": "validation macro-F1",
                         "candidates": rows, "seconds": round(sum(r["seconds"] for r in rows), 1)}
    metrics["options"][kind] = "auto"  # what was asked for; search.chosen says what it came to
    metrics["train_seconds"] = round(sum(r["train_seconds"] for r in rows), 2)  # the choice's, every candidate
    if distributed.is_main():
        won = out / "search" / best["candidate"]
        for p in won.iterdir():
            if p.name not in (MARKER, "metrics.json"):
                p.replace(out / p.name)
        shutil.rmtree(out / "search")  # every folder in it is a candidate run this choice made
        table = pd.DataFrame(rows).assign(chosen=lambda d: d["candidate"] == best["candidate"])
        table.to_csv(out / "search.csv", index=False)
        write_run_report(out, metrics)
        (out / SEARCH_FILE).unlink()
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # last: marks the run complete
    distributed.barrier()
    say(f"{kind} auto: kept {best['candidate']} (validation macro-F1 {best['validation_macro_f1']:.4f}) -> {out}")
    return metrics
