"""Quality benchmark: llmclf (through its library, what `llmclf train` runs) against TF-IDF + logistic
regression on the same splits of several public corpora (bench/corpora.py).

    python bench/quality.py --out quality.md                                   # the defaults, 3 seeds, test
    python bench/quality.py --recipe "cand:trainable=last_two_blocks,lr=2e-4" --out q.md
    python bench/quality.py --datasets trec6,vader --seeds 123 --report val \
        --recipe "a:lr=5e-5,schedule=constant,warmup=0" --recipe "b:lr=1e-3,pooling=mean" --out val.md

A recipe is `NAME:key=value,...` over FinetuneOptions fields (trainable, pooling, lr, warmup, schedule,
epochs, batch_size, context_length, weight_decay, append_eos, blend, ...); `trainable=last_N_blocks`
(N >= 3) is prototyped here. With no --recipe: `mean` and `last` (the two poolings), and `default`,
the one of them `--pooling auto` keeps per split (--choose default=mean,last).

Splits: `sms` is the book's protocol done by llmclf itself (balance by undersampling, 70/10/20, seed s;
seed 123 is the book split). The others: a fixed subsample (seed 0, the same for every split seed),
then a stratified 70/10/20 split per seed, written to a CSV whose row order makes llmclf's own shuffle
(data.random_split with that seed) reproduce it, checked before training. The baseline is fitted on the
RUN_DIR/train.csv llmclf wrote and scored on RUN_DIR/validation.csv and test.csv: exactly its split.

Each recipe gets two rows: "llmclf" is what `llmclf train` saves with those options (with the default
--blend auto: p = w p_llm + (1 - w) p_tfidf, w on a 0.1 grid chosen by validation macro-F1, or the LLM alone
when w is 1), and "LLM alone" is the fine-tuned model without the TF-IDF part.

Speed: one process shares the frozen-prefix cache over recipes and seeds (an order-invariant store; a
cache for a deeper trainable top is derived from a shallower one by running the frozen blocks between),
and loads the backbone once. Results are exact, but `train_seconds` then misses those costs, so the table's
"job s" adds back the measured first-time cost: load + frozen pass (a derived cache's pass is scaled from
the one measured, by block count) + this run's training and evaluation. Raw rows: --raw (JSONL).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

SUBSAMPLE = {"sms": None, "trec6": 2000, "trec50": 2000, "vader": 2000, "news": 600}


# ---------------------------------------------------------------- recipes

def parse_recipe(spec: str) -> tuple[str, dict]:
    from llmclf.options import FinetuneOptions
    name, _, body = spec.partition(":")
    kv = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        k, _, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if k not in FinetuneOptions.__dataclass_fields__:
            raise SystemExit(f"recipe {name}: unknown key {k!r}")
        kv[k] = _value(k, v.strip())
    return name.strip(), kv


def _value(k, v):
    from llmclf.options import FinetuneOptions
    default = FinetuneOptions.__dataclass_fields__[k].default
    if isinstance(default, bool):
        return v.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(v)
    if isinstance(default, float):
        return float(v)
    return v


# ---------------------------------------------------------------- prototypes the library lacks

def enable_n_blocks():
    """Allow trainable=last_N_blocks (N >= 1) by wrapping classifier.set_trainable (bench prototype)."""
    import llmclf.classifier as C
    if getattr(C, "_bench_n_blocks", False):
        return
    original = C.set_trainable
    extra = tuple(f"last_{n}_blocks" for n in range(3, 13))
    C.TRAINABLE = tuple(C.TRAINABLE) + extra
    import llmclf.options as O
    O.TRAINABLE = C.TRAINABLE  # check_options reads its own copy of the name

    def set_trainable(model, trainable="last_block", lora_rank=8, lora_alpha=16.0):
        if trainable not in extra:
            return original(model, trainable, lora_rank, lora_alpha)
        n = int(trainable.split("_")[1])
        original(model, "last_block", lora_rank, lora_alpha)
        for block in list(model.backbone.trf_blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad = True
        return model

    import llmclf.finetune as F
    for m in (C, F):
        if getattr(m, "set_trainable", None) is original:
            m.set_trainable = set_trainable
    C._bench_n_blocks = True


class Capture:
    """Records what metrics.predict_loader returns; finetune's last three calls are train, validation, test."""

    def __enter__(self):
        import llmclf.metrics as M
        self.M, self.orig, self.calls = M, M.predict_loader, []

        def wrapped(loader, model, num_batches=None):
            out = self.orig(loader, model, num_batches)
            if num_batches is None:
                self.calls.append(out)
            return out

        import llmclf.finetune as F  # it may import predict_loader by name: patch it there too
        self.patched = [m for m in (M, F) if getattr(m, "predict_loader", None) is self.orig]
        for m in self.patched:
            m.predict_loader = wrapped
        return self

    def __exit__(self, *exc):
        for m in self.patched:
            m.predict_loader = self.orig
        return False


# ---------------------------------------------------------------- shared caches and backbone

class OrderInvariantStore:
    """A `train.PrefixCacheStore` keyed by (backbone, start block) and by each token sequence, so that
    seeds (other splits of the same texts) and recipes share one frozen pass. A request for start s is served
    from a stored shallower start s' by running the frozen blocks s'..s-1 on the stored states."""

    def __init__(self):
        self.tables: dict = {}          # (backbone name, start) -> {tuple(ids): tensor (T, D)}
        self.first_seconds: dict = {}   # (dataset, start) -> seconds of the one real frozen pass
        self.backbone_name = None
        self.dataset = None
        self._req: dict = {}

    def key(self, model, encoded, start, pad_id, fixed_length):
        k = f"{len(self._req)}"
        if fixed_length is not None or not model.causal or model.pooling == "last":
            raise SystemExit("bench store: only causal, unpadded caching is supported")
        self._req[k] = (model, [tuple(e) for e in encoded], start)
        return k

    def get(self, k):
        import torch
        from llmclf.models.common import Attend
        model, seqs, start = self._req[k]
        if start == len(model.blocks):
            return None  # pooled-vector caches: not shared here
        table = self.tables.get((self.backbone_name, start))
        if table is not None and all(s in table for s in seqs):
            return [table[s] for s in seqs]
        # Deriving needs the cache to hold plain (T, D) tensors; newer llmclf caches hold richer objects.
        lower = sorted(s for (b, s) in self.tables if b == self.backbone_name and s < start
                       and all(isinstance(v, torch.Tensor) for v in self.tables[(b, s)].values()))
        for s0 in reversed(lower):
            t0 = self.tables[(self.backbone_name, s0)]
            if not all(s in t0 for s in seqs):
                continue
            t = time.perf_counter()
            new = self.tables.setdefault((self.backbone_name, start), {})
            todo = sorted(set(seqs) - set(new), key=len)
            blocks = list(model.blocks)[s0:start]
            with torch.inference_mode():
                for i in range(0, len(todo), 32):
                    chunk = todo[i:i + 32]
                    states = [t0[s] for s in chunk]
                    lens = torch.tensor([x.shape[0] for x in states])
                    x = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
                    for b in blocks:
                        x = b(x, Attend.full(lens, True))
                    for s, n, row in zip(chunk, lens.tolist(), x):
                        new[s] = row[:n].clone()
            dk = (self.dataset, start)
            if dk not in self.first_seconds:  # a real run would compute all `start` blocks
                ref = self.first_seconds.get((self.dataset, s0))
                self.first_seconds[dk] = ref * start / s0 if ref else time.perf_counter() - t
            return [new[s] for s in seqs]
        return None

    def forget_requests(self):
        self._req.clear()

    def put(self, k, states):
        model, seqs, start = self._req[k]
        table = self.tables.setdefault((self.backbone_name, start), {})
        table.update(zip(seqs, states))

    def drop_dataset(self):
        self.tables.clear()


_BACKBONES: dict = {}


@contextlib.contextmanager
def shared_backbone(stats: dict):
    """Load each backbone once (its load time recorded in stats) and give every run a deep copy."""
    import llmclf.weights as W
    orig = W.load_backbone

    def load(model, weights="pretrained", tokenizer_dir=None):
        key = (model, weights, tokenizer_dir)
        if weights != "pretrained":
            return orig(model, weights, tokenizer_dir)
        if key not in _BACKBONES:
            t = time.perf_counter()
            _BACKBONES[key] = orig(model, weights, tokenizer_dir)
            stats["load_seconds"] = time.perf_counter() - t
            stats["fresh"] = True
        else:
            stats["fresh"] = False
        bb, tok, name = _BACKBONES[key]
        return copy.deepcopy(bb), copy.copy(tok), name

    import llmclf.finetune as F
    mods = [m for m in (W, F) if getattr(m, "load_backbone", None) is orig]
    for m in mods:
        m.load_backbone = load
    try:
        yield
    finally:
        for m in mods:
            m.load_backbone = orig


# ---------------------------------------------------------------- data and splits

def subsample(df: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """A fixed stratified subsample (by label, and by source where the corpus has one)."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    from sklearn.model_selection import train_test_split
    strat = df["label"] + ("|" + df["source"] if "source" in df else "")
    keep, _ = train_test_split(df, train_size=n, stratify=strat, random_state=seed)
    return keep.sort_index().reset_index(drop=True)


def arranged_csv(df: pd.DataFrame, seed: int, path: Path) -> dict:
    """Write df so that llmclf's random_split(df, 0.7, 0.1, seed) gives a stratified 70/10/20 split."""
    from sklearn.model_selection import train_test_split
    from llmclf.data import random_split
    n = len(df)
    n_train, n_val = int(n * 0.7), int(n * 0.1)
    idx = np.arange(n)
    tr, rest = train_test_split(idx, train_size=n_train, stratify=df["label"], random_state=seed)
    try:
        va, te = train_test_split(rest, train_size=n_val, stratify=df["label"].iloc[rest], random_state=seed)
    except ValueError:  # a class with one example left: split the rest unstratified
        va, te = train_test_split(rest, train_size=n_val, random_state=seed)
    desired = np.concatenate([tr, va, te])
    perm = pd.DataFrame({"i": idx}).sample(frac=1, random_state=seed)["i"].to_numpy()
    rows = np.empty(n, dtype=np.int64)
    rows[perm] = desired  # file row perm[p] lands at shuffled position p
    out = df.iloc[rows][["text", "label"]].reset_index(drop=True)
    train, val, test = random_split(out, 0.7, 0.1, seed)
    assert list(train["text"]) == list(df["text"].iloc[tr]) and list(test["text"]) == list(df["text"].iloc[te])
    out.to_csv(path, index=False)
    return {"train": len(tr), "validation": len(va), "test": len(te)}


# ---------------------------------------------------------------- metrics, baseline, blend

def scores(probs: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    pred = probs.argmax(1)
    return {"acc": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0))}


def tfidf_logreg(seed: int):
    """The TF-IDF + logistic regression of llmclf.baseline (same settings), fitted fresh."""
    try:
        from llmclf.baseline import _models
        return next(m for name, _, m in _models(seed) if name == "tfidf-logreg")
    except Exception:  # noqa: BLE001 - fall back to a copy of its settings
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                             LogisticRegression(C=10.0, max_iter=2000, random_state=seed))


def baseline_probs(run_dir: Path, labels: list[str], seed: int) -> tuple[dict, float]:
    index = {name: i for i, name in enumerate(labels)}
    read = {s: pd.read_csv(run_dir / f"{s}.csv", keep_default_na=False, dtype=str) for s in ("train", "validation", "test")}
    t = time.perf_counter()
    model = tfidf_logreg(seed)
    model.fit(read["train"]["text"].tolist(), [index[v] for v in read["train"]["label"]])
    out = {}
    for s in ("validation", "test"):
        p = np.zeros((len(read[s]), len(labels)))
        p[:, model.classes_] = model.predict_proba(read[s]["text"].tolist())
        out[s] = (p, np.array([index[v] for v in read[s]["label"]]))
    return out, time.perf_counter() - t


def blend(p_llm: dict, p_tf: dict) -> dict:
    best = None
    for w in np.round(np.linspace(0, 1, 11), 2):
        v = scores(w * p_llm["validation"] + (1 - w) * p_tf["validation"][0], p_tf["validation"][1])
        if best is None or v["f1"] > best[1]["f1"] + 1e-12:
            best = (float(w), v)
    w = best[0]
    return {"w": w, "validation": best[1],
            "test": scores(w * p_llm["test"] + (1 - w) * p_tf["test"][0], p_tf["test"][1])}


def saved_scores(metrics: dict) -> dict:
    """Accuracy and macro-F1 of what `llmclf train` saves: its blend when it saved one, else the LLM alone."""
    b = metrics.get("blend")
    src = b if b and b.get("saved") else metrics
    return {s: {"acc": src[s]["accuracy"], "f1": src[s]["macro_f1"]} for s in ("validation", "test")} | {
        "blend_weight": b["weight"] if b and b.get("saved") else None}


# ---------------------------------------------------------------- one run

def run_one(ds: str, seed: int, recipe: str, kv: dict, args, store, stats, baseline_cache, data_info):
    import torch
    from llmclf.finetune import finetune
    from llmclf.options import FinetuneOptions

    work = Path(args.work) / ds / str(seed)
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / "data.csv"
    if not data_file.exists():
        if ds == "sms":
            data_info["full"].to_csv(data_file, index=False)
        else:
            arranged_csv(data_info["sample"], seed if args.split_seed is None else args.split_seed, data_file)
    cols = {"text_column": "text", "label_column": "label"}
    if ds == "sms" and corpora.SMS_FILE.is_file():  # the UCI file itself, read as `llmclf train --data-file` does:
        data_file, cols = corpora.SMS_FILE, {}      # the book's 5,572 rows, so seed 123 is the book split
    opts = FinetuneOptions(out=str(work / recipe), model=args.model, data_file=str(data_file),
                           **cols, balance=(ds == "sms"), seed=seed, split_seed=args.split_seed,
                           overwrite=True, quiet=not args.verbose, checkpoint_every=0)
    for k, v in kv.items():
        setattr(opts, k, v)
    if opts.pooling == "auto":
        raise SystemExit("bench: --pooling auto is a choice between runs; give each pooling as a recipe and "
                         "--choose NAME=A,B")
    if str(opts.trainable).startswith("last_") and opts.trainable.endswith("_blocks") and opts.trainable != "last_two_blocks":
        enable_n_blocks()
    store.dataset = ds
    store.backbone_name = opts.model
    t0 = time.perf_counter()
    with Capture() as cap:
        metrics = finetune(opts, cache_store=store)
    wall = time.perf_counter() - t0
    store.forget_requests()  # they hold the run's model: ~0.5 GB a run otherwise
    if not args.keep_models:
        import shutil
        shutil.rmtree(Path(opts.out) / "model", ignore_errors=True)  # ~0.5 GB per run
    labels = metrics["labels"]
    assert len(cap.calls) >= 3, "could not capture finetune's final predictions (llmclf changed?)"
    (ltr, ttr), (lva, tva), (lte, tte) = cap.calls[-3:]
    p_llm = {"validation": torch.softmax(lva, -1).numpy(), "test": torch.softmax(lte, -1).numpy()}
    bkey = (ds, seed)
    if bkey not in baseline_cache:
        baseline_cache[bkey] = baseline_probs(Path(opts.out), labels, seed)
    p_tf, tf_seconds = baseline_cache[bkey]
    assert (p_tf["validation"][1] == tva.numpy()).all() and (p_tf["test"][1] == tte.numpy()).all(), "order mismatch"
    start = metrics.get("cache_start_block")
    first = store.first_seconds.get((ds, start), 0.0)
    if not metrics.get("cache_reused") and metrics.get("cache"):
        store.first_seconds[(ds, start)] = first = metrics["cache_seconds"]
    job = metrics["train_seconds"] - metrics.get("cache_seconds", 0.0) + first
    job += 0.0 if stats.get("fresh") else stats.get("load_seconds", 0.0)  # a fresh load is in train_seconds
    row = {
        "dataset": ds, "seed": seed, "recipe": recipe, "recipe_kv": kv, "model": args.model, "split_seed": args.split_seed,
        "labels": len(labels),
        "n": metrics["num_examples"], "max_length": metrics["max_length"],
        "llm": {"train": scores(torch.softmax(ltr, -1).numpy(), ttr.numpy()),
                "validation": scores(p_llm["validation"], tva.numpy()), "test": scores(p_llm["test"], tte.numpy())},
        "tfidf": {"validation": scores(*p_tf["validation"]), "test": scores(*p_tf["test"]), "seconds": tf_seconds},
        "blend": blend(p_llm, p_tf),
        "saved": saved_scores(metrics),
        "train_seconds": metrics["train_seconds"], "cache_seconds": metrics.get("cache_seconds"),
        "cache_reused": metrics.get("cache_reused"), "cache_start_block": start,
        "first_cache_seconds": first, "load_seconds": stats.get("load_seconds"), "job_seconds_est": round(job, 1),
        "wall_seconds": round(wall, 1), "loadavg": os.getloadavg()[0], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return row


# ---------------------------------------------------------------- tables

def _ms(vals, pct=True):
    vals = [v for v in vals if v is not None]
    if not vals:
        return ""
    k = 100 if pct else 1
    m = np.mean(vals) * k
    if len(vals) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {np.std(vals, ddof=1) * k:.2f}"


def choice_rows(rows: list[dict], spec: str) -> list[dict]:
    """`--choose NAME=A,B`: per data set and seed, the row of the candidate --pooling auto would keep (the
    best saved validation macro-F1, ties: the earlier, as llmclf.search.choose), as recipe NAME. Its job
    time is what one such `llmclf train` spends: every candidate's training, one frozen pass."""
    name, _, cands = spec.partition("=")
    cands = cands.split(",")
    out = []
    for (ds, seed) in dict.fromkeys((r["dataset"], r["seed"]) for r in rows):
        got = {r["recipe"]: r for r in rows if (r["dataset"], r["seed"]) == (ds, seed) and r["recipe"] in cands}
        if len(got) < len(cands):
            continue
        tried = [got[c] for c in cands]
        best = max(tried, key=lambda r: r["saved"]["validation"]["f1"])
        job = sum(r["job_seconds_est"] for r in tried) - sum(r["first_cache_seconds"] or 0 for r in tried[1:])
        out.append({**best, "recipe": name, "chosen": best["recipe"], "job_seconds_est": round(job, 1)})
    return out


def table(rows: list[dict], report: str) -> str:
    """Per data set: TF-IDF + LR, then per recipe what `llmclf train` saves and its LLM alone (mean ± sd over
    seeds); `vs TF-IDF` is the saved classifier's mean macro-F1 minus TF-IDF's on the same seeds, in points."""
    by = {}
    for r in rows:
        by.setdefault(r["dataset"], {}).setdefault(r["recipe"], []).append(r)
    splits = {"val": ["validation"], "test": ["test"], "both": ["validation", "test"]}[report]
    split = splits[-1]  # what `vs TF-IDF` compares
    head = ("| data set | model | seeds | " + " | ".join(f"{s} macro-F1 | {s} accuracy" for s in splits)
            + " | vs TF-IDF | job s | max job s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]

    def cells(scores_per_split):
        return " | ".join(f"{_ms([x['f1'] for x in xs])} | {_ms([x['acc'] for x in xs])}" for xs in scores_per_split)
    for ds, recipes in by.items():
        tf = {r["seed"]: r["tfidf"] for rs in recipes.values() for r in rs}
        out.append(f"| {ds} | TF-IDF + LR | {len(tf)} | {cells([[tf[k][s] for k in sorted(tf)] for s in splits])} | | "
                   f"{np.mean([tf[k]['seconds'] for k in tf]):.1f} | |")
        for name, rs in recipes.items():
            saved = {s: [r["saved"][s] if "saved" in r else r["blend"][s] for r in rs] for s in splits}
            gain = (np.mean([x["f1"] for x in saved[split]]) - np.mean([tf[r["seed"]][split]["f1"] for r in rs])) * 100
            out.append(f"| {ds} | llmclf `{name}` | {len(rs)} | {cells([saved[s] for s in splits])} | {gain:+.2f} | "
                       f"{np.mean([r['job_seconds_est'] for r in rs]):.0f} | "
                       f"{max(r['job_seconds_est'] for r in rs):.0f} |")
            chosen = " (kept: " + ", ".join(r["chosen"] for r in rs) + ")" if "chosen" in rs[0] else ""
            out.append(f"| {ds} | &nbsp; LLM alone{chosen} | {len(rs)} | {cells([[r['llm'][s] for r in rs] for s in splits])}"
                       " | | | |")
    return "\n".join(out)


def describe(data: dict) -> str:
    out = ["| data set | examples used | classes | mean tokens (SmolLM2 BPE) | max tokens |", "|---|---|---|---|---|"]
    for ds, d in data.items():
        out.append(f"| {ds} | {d['n_used']} | {d['classes']} | {d['mean_tokens']:.1f} | {d['max_tokens']} |")
    return "\n".join(out)


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="sms,trec6,trec50,vader,news", help=f"comma list of {', '.join(corpora.LOADERS)}")
    ap.add_argument("--seeds", default="123,124,125")
    ap.add_argument("--split-seed", type=int, help="one split for every seed (e.g. 123: the book's SMS split); "
                    "--seeds then vary only the head's initialisation and the data order")
    ap.add_argument("--model", default="smollm2-135m-instruct-q4")
    ap.add_argument("--recipe", action="append", help="NAME:key=value,... (repeatable); default: 'default'")
    ap.add_argument("--subsample", action="append", default=[], help="DATASET=N (0: all)")
    ap.add_argument("--report", choices=("val", "test", "both"), default="test",
                    help="val: leave test columns out; both: validation and test side by side")
    ap.add_argument("--out", required=True, help="markdown table")
    ap.add_argument("--raw", default="/tmp/quality/raw.jsonl", help="one JSON row per run (appended)")
    ap.add_argument("--work", default="/tmp/quality/runs")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--keep-models", action="store_true", help="keep RUN_DIR/model (0.5 GB a run)")
    ap.add_argument("--from-raw", nargs="+", metavar="JSONL", help="only rebuild the table from earlier --raw rows")
    ap.add_argument("--choose", action="append", default=[], metavar="NAME=A,B",
                    help="add recipe NAME: per seed, the one of recipes A, B, ... that --pooling auto would keep")
    args = ap.parse_args(argv)
    if args.from_raw:
        rows = [json.loads(line) for f in args.from_raw for line in open(f) if line.strip()]
        rows += [r for spec in args.choose for r in choice_rows(rows, spec)]
        Path(args.out).write_text(f"# llmclf quality benchmark, from {', '.join(args.from_raw)}\n\n"
                                  + table(rows, args.report) + "\n")
        return

    import torch
    torch.set_num_threads(int(os.environ.get("LLMCLF_BENCH_THREADS", torch.get_num_threads())))
    # the default (--pooling auto) is a choice between two runs: train both, score the choice with --choose
    recipes = [parse_recipe(s) for s in (args.recipe or ["mean:pooling=mean", "last:pooling=last_nonpad"])]
    if not args.recipe and not args.choose:
        args.choose = ["default=mean,last"]
    # deepest trainable top first: shallower tops' caches are then derived from its cache (cheap)
    depth = {"last_block": 1, "last_two_blocks": 2}
    recipes.sort(key=lambda r: -depth.get(r[1].get("trainable", "last_block"),
                                         int(r[1]["trainable"].split("_")[1]) if r[1].get("trainable", "").startswith("last_")
                                         and r[1]["trainable"].split("_")[1].isdigit() else 0))
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = dict(SUBSAMPLE)
    for s in args.subsample:
        k, _, v = s.partition("=")
        sizes[k] = int(v) or None
    Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
    store, stats, baseline_cache, rows, described = OrderInvariantStore(), {}, {}, [], {}

    with shared_backbone(stats):
        for ds in args.datasets.split(","):
            full = corpora.LOADERS[ds]()
            sample = subsample(full, sizes.get(ds))
            if ds == "sms":
                from llmclf.data import create_balanced_dataset
                used = create_balanced_dataset(full, 123)
                n_train = int(len(used) * 0.7)
            else:
                used, n_train = sample, int(len(sample) * 0.7)
            info = {"full": full, "sample": sample, "n_train": n_train}
            t_ds = time.perf_counter()
            for seed in seeds:
                for name, kv in recipes:
                    row = run_one(ds, seed, name, kv, args, store, stats, baseline_cache, info)
                    rows.append(row)
                    with open(args.raw, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{ds} seed {seed} {name}: val macro-F1 saved {row['saved']['validation']['f1']:.4f} "
                          f"(w={row['saved']['blend_weight']}; LLM alone {row['llm']['validation']['f1']:.4f}, "
                          f"tfidf {row['tfidf']['validation']['f1']:.4f}) job~{row['job_seconds_est']}s "
                          f"wall {row['wall_seconds']}s "
                          f"load {row['loadavg']:.1f}", file=sys.stderr, flush=True)
            bb, tok, _ = _BACKBONES[(args.model, "pretrained", None)]
            lens = [len(e) for e in tok.encode_batch(list(used["text"]), 8192)]
            described[ds] = {"n_used": len(used), "classes": used["label"].nunique(),
                             "mean_tokens": float(np.mean(lens)), "max_tokens": int(np.max(lens)),
                             "seconds": time.perf_counter() - t_ds}
            store.drop_dataset()

    rows += [r for spec in args.choose for r in choice_rows(rows, spec)]
    md = [f"# llmclf quality benchmark ({time.strftime('%Y-%m-%d')}, model {args.model}, seeds {args.seeds})", "",
          describe(described), "", "Recipes: " + "; ".join(f"`{n}` = {kv or 'defaults'}" for n, kv in recipes), "",
          table(rows, args.report), ""]
    if "sms" in described and 123 in seeds and args.report == "test":
        md.append("SMS book split (balanced, 70/10/20, seed 123) test accuracy: " + "; ".join(
            f"`{r['recipe']}` {r['saved']['test']['acc'] * 100:.2f}% (LLM alone {r['llm']['test']['acc'] * 100:.2f}%)"
            for r in rows if r["dataset"] == "sms" and r["seed"] == 123))
    text = "\n".join(md) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
