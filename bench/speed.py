"""Speed against the book's code, transformers and onnxruntime, in one run on one machine (each contender in a
subprocess of its own, the same threads):

a. fine-tuning, data ready -> final metrics, at the book's 5 epochs, for each of --seeds (the model's init and
   the batch order; the book's split stays): the book's own chapter-6 code (PyPI llms-from-scratch==1.0.19)
   against llmclf's book recipe (GPT-2 small with the book's random initial weights for that seed, handed to
   llmclf as a transformers directory so both sides fine-tune the same backbone; last block + final norm,
   batch 8, lr 5e-5)
   in float32, with --dtype auto (bfloat16 where the CPU has it natively), and with --pooling last --dtype
   auto (padded to the longest text and read at the last position: what the book computes);
b. inference over the SMS test split at --batch-sizes, on the first seed's float32 run: llmclf in float32,
   bfloat16 and int8 against transformers' GPT2ForSequenceClassification holding the same weights (float32)
   and onnxruntime running `llmclf export --format onnx` (batches in input order, and sorted by length);
   each times REPEATS passes after a warm-up (the median counts), with labels and test accuracy compared;
c. peak memory (max RSS) of each process.
Optionally (--smollm2) the fine-tuning time and messages/s of the SmolLM2 backbone.

    pip install -e '.[bench]' && pip install --no-deps llms-from-scratch==1.0.19
    python bench/speed.py [--epochs 5] [--seeds 123 124 125] [--batch-sizes 8] [--smollm2] [--update-readme]

Writes bench/out/speed.json and, with --update-readme, the table between the bench:speed markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMCLF_SHARED_DIR", ROOT.parent / "shared"))
SMS = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
BPE_DIR = SHARED / "tokenizers" / "gpt2"
OUT = ROOT / "bench" / "out"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict) -> None:
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- workers (each runs in its own process)

def worker_book_train(epochs: int, seed: int = 123) -> None:
    """Chapter 6 as the book's package runs it, GPT-2 small with random weights."""
    import pandas as pd
    import tiktoken
    import torch
    from llms_from_scratch.ch06 import (SpamDataset, calc_accuracy_loader, create_balanced_dataset, random_split,
                                        train_classifier_simple)

    tmp = Path(tempfile.mkdtemp())
    # tiktoken takes OpenAI's files from a cache dir where each is named by the sha1 of its URL.
    (tmp / "tk").mkdir()
    for name, sha1 in (("vocab.bpe", "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"),
                       ("encoder.json", "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")):
        (tmp / "tk" / sha1).write_bytes((BPE_DIR / name).read_bytes())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tmp / "tk")

    df = pd.read_csv(SMS, sep="\t", header=None, names=["Label", "Text"])
    balanced = create_balanced_dataset(df)
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    train_df, val_df, test_df = random_split(balanced, 0.7, 0.1)
    for n, d in (("train", train_df), ("validation", val_df), ("test", test_df)):
        d.to_csv(tmp / f"{n}.csv", index=None)

    t0 = time.perf_counter()  # data ready
    tokenizer = tiktoken.get_encoding("gpt2")
    train_ds = SpamDataset(tmp / "train.csv", max_length=None, tokenizer=tokenizer)
    val_ds = SpamDataset(tmp / "validation.csv", max_length=train_ds.max_length, tokenizer=tokenizer)
    test_ds = SpamDataset(tmp / "test.csv", max_length=train_ds.max_length, tokenizer=tokenizer)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader
    train_loader = loader(train_ds, batch_size=8, shuffle=True, num_workers=0, drop_last=True)
    val_loader = loader(val_ds, batch_size=8, num_workers=0, drop_last=False)
    test_loader = loader(test_ds, batch_size=8, num_workers=0, drop_last=False)
    model = book_backbone(seed)  # torch.manual_seed(seed) then GPTModel(cfg), as before the loaders' first use
    digest = weights_digest(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    torch.manual_seed(seed)
    model.out_head = torch.nn.Linear(768, 2)
    for p in model.trf_blocks[-1].parameters():
        p.requires_grad = True
    for p in model.final_norm.parameters():
        p.requires_grad = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    train_classifier_simple(model, train_loader, val_loader, optimizer, "cpu", num_epochs=epochs,
                            eval_freq=50, eval_iter=5)
    accs = {n: calc_accuracy_loader(ld, model, "cpu") for n, ld in
            (("train", train_loader), ("validation", val_loader), ("test", test_loader))}
    emit({"seconds": time.perf_counter() - t0, "digest": digest, **{f"{k}_accuracy": v for k, v in accs.items()}})


def worker_llmclf_train(epochs: int, model: str, run_dir: str, seed: int = 123, dtype: str = "float32",
                        pooling: str = "last_nonpad") -> None:
    from llmclf.finetune import finetune
    from llmclf.options import from_recipe
    # the book's recipe on both sides: the same work, so the times compare; --split-seed keeps the book's split
    # model: a named backbone (random weights for GPT-2's) or a directory (the book's own initial weights)
    weights = "random" if model.startswith("gpt2") else "pretrained"
    m = finetune(from_recipe("book", out=run_dir, model=model, weights=weights, data_file=str(SMS),
                             tokenizer_dir=str(BPE_DIR), epochs=epochs, overwrite=True, quiet=True, seed=seed,
                             split_seed=123, dtype=dtype, pooling=pooling, standalone=True))
    emit({"seconds": m["train_seconds"], "cache_seconds": m.get("cache_seconds"),
          **{f"{s}_accuracy": m[s]["accuracy"] for s in ("train", "validation", "test")}})


def _test_split(run_dir: Path) -> tuple[list[str], list[str]]:
    import pandas as pd
    df = pd.read_csv(run_dir / "test.csv", keep_default_na=False)
    return [str(t) for t in df["text"]], [str(y) for y in df["label"]]


def _test_texts(run_dir: Path) -> list[str]:
    return _test_split(run_dir)[0]


REPEATS = 3  # inference passes timed per contender; the median counts (this shared machine's speed wanders)


def timed_passes(fn, n_texts: int) -> dict:
    """Run fn() (one pass over the test split) REPEATS times; the median pass time and the last result."""
    import statistics
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        probs = fn()
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    return {"seconds": dt, "pass_seconds": [round(x, 3) for x in times], "messages_per_s": n_texts / dt,
            "labels": probs.argmax(-1).tolist(), "probs": probs[:, 1].tolist()}


def worker_llmclf_infer(run_dir: str, batch_size: int, dtype: str = "float32") -> None:
    import torch

    from llmclf.precision import onednn_float32_is_faster
    from llmclf.predict import load_classifier, predict_texts
    clf = load_classifier(run_dir, "cpu", dtype=dtype)
    texts = _test_texts(Path(run_dir))
    predict_texts(clf, texts[:8 * batch_size], batch_size)  # warm-up
    emit({**timed_passes(lambda: predict_texts(clf, texts, batch_size), len(texts)), "dtype": clf.dtype,
          "threads": torch.get_num_threads(), "float32_kernel": "onednn" if onednn_float32_is_faster() else "blas"})


def worker_ort_infer(run_dir: str, batch_size: int, order: str) -> None:
    """onnxruntime on the ONNX export, as a program with only onnxruntime and tokenizers runs it (bench/interop.py);
    order "sorted": the texts sorted by length first (little padding), results put back in input order."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from interop import onnxruntime_direct
    from llmclf.export import export_onnx
    texts = _test_texts(Path(run_dir))
    out = Path(tempfile.mkdtemp()) / "onnx"
    export_onnx(run_dir, out)
    perm = sorted(range(len(texts)), key=lambda i: len(texts[i])) if order == "sorted" else list(range(len(texts)))
    arranged = [texts[i] for i in perm]
    probs, times = None, []
    for _ in range(REPEATS):  # onnxruntime_direct warms up, then times one pass
        p, t = onnxruntime_direct(out, arranged, batch_size, torch.get_num_threads())
        times.append(t)
        probs = np.empty_like(p)
        probs[perm] = p
    import statistics
    dt = statistics.median(times)
    emit({"seconds": dt, "pass_seconds": [round(x, 3) for x in times], "messages_per_s": len(texts) / dt,
          "labels": probs.argmax(-1).tolist(), "probs": probs[:, 1].tolist(), "threads": torch.get_num_threads()})


def hf_gpt2_state(sd: dict, n_layers: int) -> dict:
    """transformers' GPT-2 names for a backbone state dict in the book's names (which llmclf's GPT-2 keeps)."""
    import torch
    hf = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
          "transformer.ln_f.weight": sd["final_norm.scale"], "transformer.ln_f.bias": sd["final_norm.shift"]}
    for i in range(n_layers):
        p, o = f"transformer.h.{i}.", f"trf_blocks.{i}."
        hf[p + "attn.c_attn.weight"] = torch.cat([sd[o + f"att.{n}.weight"] for n in ("W_query", "W_key", "W_value")]).t()
        hf[p + "attn.c_attn.bias"] = torch.cat([sd[o + f"att.{n}.bias"] for n in ("W_query", "W_key", "W_value")])
        hf[p + "attn.c_proj.weight"] = sd[o + "att.out_proj.weight"].t()
        hf[p + "attn.c_proj.bias"] = sd[o + "att.out_proj.bias"]
        hf[p + "mlp.c_fc.weight"] = sd[o + "ff.layers.0.weight"].t()
        hf[p + "mlp.c_fc.bias"] = sd[o + "ff.layers.0.bias"]
        hf[p + "mlp.c_proj.weight"] = sd[o + "ff.layers.2.weight"].t()
        hf[p + "mlp.c_proj.bias"] = sd[o + "ff.layers.2.bias"]
        for n, m in (("ln_1", "norm1"), ("ln_2", "norm2")):
            hf[p + f"{n}.weight"], hf[p + f"{n}.bias"] = sd[o + f"{m}.scale"], sd[o + f"{m}.shift"]
    return {k: v.contiguous() for k, v in hf.items()}


def _hf_config(b: dict, **extra):
    import transformers
    return transformers.GPT2Config(vocab_size=b["vocab_size"], n_positions=b["context_length"], n_embd=b["emb_dim"],
                                   n_layer=b["n_layers"], n_head=b["n_heads"], resid_pdrop=0, embd_pdrop=0,
                                   attn_pdrop=0, **extra)


def hf_model_from_run(run_dir: Path):
    """transformers' GPT2ForSequenceClassification with the run's weights. Its score layer has no bias, so
    the head's bias is folded into the final layer norm's shift: W (ln + d) = W ln + b with d = pinv(W) b."""
    import torch
    import transformers
    from safetensors.torch import load_file

    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    b = cfg["backbone"]
    sd = load_file(str(run_dir / "model" / "model.safetensors"))
    model = transformers.GPT2ForSequenceClassification(
        _hf_config(b, num_labels=cfg["num_classes"], pad_token_id=cfg["pad_id"])).eval()
    W, bias = sd["out_head.weight"].double(), sd["out_head.bias"].double()
    hf = hf_gpt2_state(sd, b["n_layers"])
    hf["transformer.ln_f.bias"] = (sd["final_norm.shift"].double() + torch.linalg.pinv(W) @ bias).float()
    hf["score.weight"] = sd["out_head.weight"]
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not [k for k in missing if not k.endswith(("attn.bias", "masked_bias"))] and not unexpected, (missing, unexpected)
    return model, cfg


BOOK_CFG = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True,
            "emb_dim": 768, "n_layers": 12, "n_heads": 12}


def book_backbone(seed: int):
    """The book's GPTModel, initialised as its chapter-6 run initialises it under `seed`."""
    import torch
    from llms_from_scratch.ch04 import GPTModel
    torch.manual_seed(seed)
    return GPTModel(BOOK_CFG)


def weights_digest(model) -> str:
    import hashlib

    import torch
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def worker_book_init(seed: int, out: str) -> None:
    """The book's initial weights for `seed`, saved as a transformers GPT-2 directory llmclf loads (--model DIR):
    both sides then fine-tune the very same backbone."""
    import transformers
    model = book_backbone(seed)
    hf = transformers.GPT2LMHeadModel(_hf_config(BOOK_CFG))
    missing, unexpected = hf.load_state_dict(hf_gpt2_state(model.state_dict(), BOOK_CFG["n_layers"]), strict=False)
    assert not [k for k in missing if k != "lm_head.weight"] and not unexpected, (missing, unexpected)
    hf.save_pretrained(out)
    emit({"seconds": 0.0, "digest": weights_digest(model)})


def worker_hf_infer(run_dir: str, batch_size: int) -> None:
    import torch

    from llmclf.tokenizer import GPT2Tokenizer
    model, cfg = hf_model_from_run(Path(run_dir))
    tok = GPT2Tokenizer(Path(run_dir) / "model")
    texts = _test_texts(Path(run_dir))
    encoded = [e[: cfg["max_length"]] for e in tok.encode_batch(texts)]

    def run(enc):
        out = []
        with torch.inference_mode():
            for i in range(0, len(enc), batch_size):  # input order, padded to each batch's longest: the usual way
                chunk = enc[i:i + batch_size]
                T = max(map(len, chunk))
                ids = torch.tensor([e + [cfg["pad_id"]] * (T - len(e)) for e in chunk])
                mask = torch.tensor([[1] * len(e) + [0] * (T - len(e)) for e in chunk])
                out.append(torch.softmax(model(input_ids=ids, attention_mask=mask).logits, -1))
        return torch.cat(out)

    run(encoded[:8 * batch_size])  # warm-up
    emit({**timed_passes(lambda: run(encoded), len(texts)), "threads": torch.get_num_threads()})


# ---------------------------------------------------------------- orchestration

def run_worker(*args) -> dict:
    cmd = [sys.executable, __file__, "--worker", *map(str, args)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["process_seconds"] = time.perf_counter() - t
    print(f"  {args[0]}: {result['seconds']:.1f}s, peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    return result


def machine() -> str:
    import torch
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags]
    return (f"{os.cpu_count()} CPU cores ({model}; {', '.join(shown) or 'no AVX2'}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


FINETUNE = {  # contender -> (dtype, pooling) of llmclf's book recipe
    "llmclf": ("float32", "last_nonpad"),
    "llmclf_auto": ("auto", "last_nonpad"),
    "llmclf_last_auto": ("auto", "last"),
}


def finetune_rows(a, tmp: Path, previous: dict) -> dict:
    """Per seed: the book's code and each llmclf contender (all at a.epochs)."""
    res = {}
    for seed in a.seeds:
        print(f"[a] fine-tuning, seed {seed}, {a.epochs} epoch(s), GPT-2 small random weights", file=sys.stderr)
        init = run_worker("book-init", seed, tmp / f"init-{seed}")  # both sides start from these weights
        row = {name: run_worker("llmclf-train", a.epochs, tmp / f"init-{seed}", tmp / f"{name}-{seed}", seed, dtype,
                                pooling) for name, (dtype, pooling) in FINETUNE.items()}
        old = previous.get("finetune", {}).get(str(seed), {})
        reuse = a.skip_book and "book" in old and previous.get("epochs") == a.epochs
        row["book"] = old["book"] if reuse else run_worker("book-train", a.epochs, seed)
        if row["book"].get("digest") != init["digest"]:
            raise SystemExit(f"seed {seed}: the book's initial weights differ from the ones given to llmclf")
        res[str(seed)] = row
    return res


def inference_rows(run: Path, batch_size: int) -> dict:
    """Every inference contender on `run`'s test split; labels and accuracy against llmclf float32's."""
    _, truth = _test_split(run)
    labels = json.loads((run / "model" / "config.json").read_text())["labels"]
    y = [labels.index(t) for t in truth]
    got = {"llmclf": run_worker("llmclf-infer", run, batch_size, "float32"),
           "llmclf_bfloat16": run_worker("llmclf-infer", run, batch_size, "bfloat16"),
           "llmclf_int8": run_worker("llmclf-infer", run, batch_size, "int8"),
           "transformers": run_worker("hf-infer", run, batch_size),
           "onnxruntime": run_worker("ort-infer", run, batch_size, "input"),
           "onnxruntime_sorted": run_worker("ort-infer", run, batch_size, "sorted")}
    ref, hf = got["llmclf"], got["transformers"]
    out = {}
    for name, r in got.items():
        out[name] = {k: v for k, v in r.items() if k not in ("labels", "probs")}
        out[name].update(
            vs_transformers=r["messages_per_s"] / hf["messages_per_s"],
            agreement_with_llmclf_float32=sum(p == q for p, q in zip(r["labels"], ref["labels"])) / len(y),
            agreement_with_transformers=sum(p == q for p, q in zip(r["labels"], hf["labels"])) / len(y),
            max_prob_diff_vs_llmclf_float32=max(abs(p - q) for p, q in zip(r["probs"], ref["probs"])),
            test_accuracy=sum(p == t for p, t in zip(r["labels"], y)) / len(y))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5, help="the book's 5 (its code takes minutes per epoch)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--smollm2", action="store_true", help="also time the SmolLM2-135M backbone")
    ap.add_argument("--skip-book", action="store_true", help="reuse the book's figures from the last speed.json")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--worker", nargs="+")
    a = ap.parse_args()
    if a.worker:
        kind, *r = a.worker
        {"book-train": lambda: worker_book_train(int(r[0]), int(r[1])),
         "book-init": lambda: worker_book_init(int(r[0]), r[1]),
         "llmclf-train": lambda: worker_llmclf_train(int(r[0]), r[1], r[2], int(r[3]), r[4], r[5]),
         "llmclf-infer": lambda: worker_llmclf_infer(r[0], int(r[1]), r[2]),
         "hf-infer": lambda: worker_hf_infer(r[0], int(r[1])),
         "ort-infer": lambda: worker_ort_infer(r[0], int(r[1]), r[2])}[kind]()
        return

    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "speed.json").read_text()) if (OUT / "speed.json").exists() else {}
    t_bench = time.perf_counter()
    res = {"machine": machine(), "epochs": a.epochs, "seeds": a.seeds, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python bench/speed.py"] + [x for x in sys.argv[1:] if x != "--update-readme"])}
    tmp = Path(tempfile.mkdtemp(prefix="llmclf-bench-"))
    res["finetune"] = finetune_rows(a, tmp, previous)
    print("[b] inference over the test split", file=sys.stderr)
    run = tmp / f"llmclf-{a.seeds[0]}"
    res["inference"] = {str(bs): inference_rows(run, bs) for bs in a.batch_sizes}
    if a.smollm2:
        print("[c] SmolLM2-135M-Instruct (Q4 GGUF, pretrained)", file=sys.stderr)
        res["smollm2_train"] = run_worker("llmclf-train", a.epochs, "smollm2-135m-instruct-q4", tmp / "smol", 123,
                                          "float32", "last_nonpad")
        res["smollm2_infer"] = {k: v for k, v in run_worker("llmclf-infer", tmp / "smol", 32, "float32").items()
                                if k not in ("labels", "probs")}
    res["wall_minutes"] = (time.perf_counter() - t_bench) / 60
    (OUT / "speed.json").write_text(json.dumps(res, indent=2))
    table = render(res)
    print(table)
    if a.update_readme:
        update_readme(table)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    import statistics
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


NAMES = {"book": "the book's ch06 code", "llmclf": "llmclf, float32",
         "llmclf_auto": "llmclf, --dtype auto", "llmclf_last_auto": "llmclf, --pooling last --dtype auto"}


def render_finetune(r: dict) -> list[str]:
    rows = list(r["finetune"].values())
    book = _mean_sd([x["book"]["seconds"] for x in rows])[0]
    lines = [f"| fine-tune GPT-2 small (random init), {r['epochs']} epochs, data ready -> final metrics, "
             f"{len(rows)} seeds | seconds (mean +- sd) | x the book | test accuracy (mean +- sd) | peak RSS |",
             "|---|---:|---:|---:|---:|"]
    for name in ("book", *FINETUNE):
        t, ts = _mean_sd([x[name]["seconds"] for x in rows])
        acc, accs = _mean_sd([x[name]["test_accuracy"] * 100 for x in rows])
        mem = max(x[name]["peak_rss_mb"] for x in rows)
        lines.append(f"| {NAMES[name]} | {t:.0f} +- {ts:.0f} | **{book / t:.1f}x** | {acc:.2f} +- {accs:.2f}% | "
                     f"{mem:.0f} MB |")
    return lines


INFER_NAMES = {"transformers": "transformers GPT2ForSequenceClassification, float32",
               "onnxruntime": "onnxruntime on the ONNX export (input order)",
               "onnxruntime_sorted": "onnxruntime on the ONNX export (sorted by length)",
               "llmclf": "llmclf, float32", "llmclf_bfloat16": "llmclf, --dtype bfloat16",
               "llmclf_int8": "llmclf, --dtype int8"}


def render_inference(r: dict) -> list[str]:
    lines = []
    for bs, inf in r["inference"].items():
        kernel = inf["llmclf"].get("float32_kernel", "?")
        lines += ["", f"Inference over the SMS test split (300 texts), batch {bs}, messages/s as the median of "
                  f"{REPEATS} passes (llmclf's float32 Linear kernel here: {kernel}):", "",
                  "| inference | messages/s | x transformers | labels as llmclf float32 | as transformers | "
                  "max prob. diff vs llmclf float32 | test accuracy | peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in INFER_NAMES:
            x = inf[name]
            lines.append(f"| {INFER_NAMES[name]} | {x['messages_per_s']:.1f} | **{x['vs_transformers']:.2f}x** | "
                         f"{x['agreement_with_llmclf_float32'] * 100:.1f}% | {x['agreement_with_transformers'] * 100:.1f}% | "
                         f"{x['max_prob_diff_vs_llmclf_float32']:.1e} | {x['test_accuracy'] * 100:.2f}% | "
                         f"{x['peak_rss_mb']:.0f} MB |")
    return lines


def render(r: dict) -> str:
    lines = [f"Measured {r['date']} on {r['machine']}; `{r.get('command', 'python bench/speed.py')}` "
             f"({r.get('wall_minutes', 0):.0f} min).", ""] + render_finetune(r) + render_inference(r)
    if "smollm2_train" in r:
        s, si = r["smollm2_train"], r["smollm2_infer"]
        lines += ["", f"SmolLM2-135M-Instruct (pretrained), {r['epochs']} epochs: fine-tune {s['seconds']:.0f} s, test "
                  f"accuracy {s['test_accuracy'] * 100:.2f}%, {si['messages_per_s']:.1f} messages/s at batch 32."]
    return "\n".join(lines)


def update_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:speed:start -->", "<!-- bench:speed:end -->"
    if start not in text:
        raise SystemExit("README.md has no bench:speed markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    main()
