"""--recipe auto: a small search over the recipes that matter, scored on the validation split.

Every candidate trains on the same split from the same frozen blocks, so the frozen-prefix cache the first
computes serves the others (one frozen pass for the whole search). Each candidate is a complete run; the
best on validation macro-F1 of the classifier it would save (its blend included) becomes the run, the
others are deleted, and RUN_DIR/search.csv (and metrics.json's `search`) lists what was tried. The test
split plays no part in the choice.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from . import distributed
from .errors import LlmclfError
from .finetune import finetune
from .options import FinetuneOptions, check_options
from .outdir import MARKER, prepare_output_dir
from .train import PrefixCacheStore
from .artifact import atomic_write_text
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


def candidate_options(opts: FinetuneOptions, name: str) -> FinetuneOptions:
    """The options of one candidate: opts with the candidate's changes, run quietly in RUN_DIR/search/NAME."""
    change = dict(CANDIDATES[name])
    if "lr_scale" in change:
        change["lr"] = opts.lr * change.pop("lr_scale")
    if "epochs_scale" in change:
        change["epochs"] = opts.epochs * change.pop("epochs_scale")
    return replace(opts, **change, recipe="default", out=str(Path(opts.out) / "search" / name), overwrite=True,
                   quiet=True, checkpoint_every=0)


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
            "cache_reused": bool(metrics.get("cache_reused")), "seconds": round(seconds, 1)}


def auto_recipe(opts: FinetuneOptions) -> dict:
    """Run --recipe auto: the candidates within --search-minutes, the best kept as RUN_DIR's run."""
    check_options(opts)
    if distributed.launched():
        raise LlmclfError("--recipe auto runs in one process; under torchrun give a recipe (default or book)")
    if not opts.out:
        raise LlmclfError("--out RUN_DIR is required")
    out = Path(opts.out)
    run_dir = prepare_output_dir(out, "run", opts.overwrite)
    say = (lambda msg: None) if opts.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        rows, results = _run_candidates(opts, say)
        best = max(rows, key=lambda r: r["validation_macro_f1"])  # ties: the earlier (the default first)
        return _keep(out, best, rows, results[best["candidate"]], say)
    except BaseException:
        run_dir.discard()
        raise


def _run_candidates(opts: FinetuneOptions, say) -> tuple[list, dict]:
    store, rows, results = PrefixCacheStore(), [], {}
    start, budget, last = time.perf_counter(), opts.search_minutes * 60, 0.0
    for i, name in enumerate(CANDIDATES):
        elapsed = time.perf_counter() - start
        if rows and elapsed + last > budget:  # the next would likely end past the budget
            say(f"search: {elapsed / 60:.1f} of {opts.search_minutes:g} minutes gone; "
                f"{len(CANDIDATES) - i} candidate(s) not tried")
            break
        cand = candidate_options(opts, name)
        t = time.perf_counter()
        metrics = finetune(cand, cache_store=store)
        last = time.perf_counter() - t
        rows.append(_row(name, cand, metrics, last))
        results[name] = metrics
        say(f"search {i + 1}/{len(CANDIDATES)} {name}: validation macro-F1 {rows[-1]['validation_macro_f1']:.4f} "
            f"({last:.0f}s)")
    return rows, results


def _keep(out: Path, best: dict, rows: list, metrics: dict, say) -> dict:
    """Move the winner's files up into RUN_DIR, drop the other candidates, write search.csv and metrics.json."""
    won = out / "search" / best["candidate"]
    for p in won.iterdir():
        if p.name not in (MARKER, "metrics.json"):
            p.replace(out / p.name)
    shutil.rmtree(out / "search")  # every folder in it is a candidate run this call made
    table = pd.DataFrame(rows).assign(chosen=lambda d: d["candidate"] == best["candidate"])
    table.to_csv(out / "search.csv", index=False)
    metrics["search"] = {"chosen": best["candidate"], "by": "validation macro-F1", "candidates": rows,
                         "seconds": round(sum(r["seconds"] for r in rows), 1)}
    metrics["options"]["recipe"] = "auto"
    write_run_report(out, metrics)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # last: marks the run complete
    say(f"search: kept {best['candidate']} (validation macro-F1 {best['validation_macro_f1']:.4f}) -> {out}")
    return metrics
