"""Issue 4's benchmark, in one run on one machine (each contender in its own subprocess):

a. end-to-end fine-tuning time (data ready -> final metrics) of the book's own chapter-6 code
   (PyPI llms-from-scratch==1.0.19, llms_from_scratch.ch06) against llmclf: same data, GPT-2 small
   architecture with random weights, last block + final norm trainable, batch 8, lr 5e-5, same epochs;
b. inference throughput over the SMS test split: llmclf against transformers'
   GPT2ForSequenceClassification holding the same weights (same batch size, CPU, fp32), labels compared;
   each times REPEATS passes after a warm-up and reports the median;
c. peak memory (max RSS) of each process.
Optionally (--smollm2) the same fine-tuning time and messages/s for the SmolLM2 backbone.

    pip install -e '.[bench]' && pip install --no-deps llms-from-scratch==1.0.19
    python bench/speed.py [--epochs 2] [--batch-sizes 8 32] [--smollm2] [--update-readme]

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

def worker_book_train(epochs: int) -> None:
    """Chapter 6 as the book's package runs it, GPT-2 small with random weights."""
    import pandas as pd
    import tiktoken
    import torch
    from llms_from_scratch.ch04 import GPTModel
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
    torch.manual_seed(123)
    loader = torch.utils.data.DataLoader
    train_loader = loader(train_ds, batch_size=8, shuffle=True, num_workers=0, drop_last=True)
    val_loader = loader(val_ds, batch_size=8, num_workers=0, drop_last=False)
    test_loader = loader(test_ds, batch_size=8, num_workers=0, drop_last=False)
    cfg = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True,
           "emb_dim": 768, "n_layers": 12, "n_heads": 12}
    model = GPTModel(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    torch.manual_seed(123)
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
    emit({"seconds": time.perf_counter() - t0, **{f"{k}_accuracy": v for k, v in accs.items()}})


def worker_llmclf_train(epochs: int, model: str, run_dir: str) -> None:
    from llmclf.finetune import finetune
    from llmclf.options import from_recipe
    # the book's recipe on both sides: the same work, so the times compare
    m = finetune(from_recipe("book", out=run_dir, model=model, weights="random" if model.startswith("gpt2") else "pretrained",
                             data_file=str(SMS), tokenizer_dir=str(BPE_DIR), epochs=epochs, overwrite=True, quiet=True))
    emit({"seconds": m["train_seconds"], "cache_seconds": m.get("cache_seconds"),
          **{f"{s}_accuracy": m[s]["accuracy"] for s in ("train", "validation", "test")}})


def _test_texts(run_dir: Path) -> list[str]:
    import pandas as pd
    return [str(t) for t in pd.read_csv(run_dir / "test.csv")["text"]]


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


def worker_llmclf_infer(run_dir: str, batch_size: int) -> None:
    import torch

    from llmclf.predict import load_classifier, predict_texts
    clf = load_classifier(run_dir, "cpu")
    texts = _test_texts(Path(run_dir))
    predict_texts(clf, texts[:8 * batch_size], batch_size)  # warm-up
    emit({**timed_passes(lambda: predict_texts(clf, texts, batch_size), len(texts)),
          "threads": torch.get_num_threads()})


def hf_model_from_run(run_dir: Path):
    """transformers' GPT2ForSequenceClassification with the run's weights. Its score layer has no bias, so
    the head's bias is folded into the final layer norm's shift: W (ln + d) = W ln + b with d = pinv(W) b."""
    import torch
    import transformers
    from safetensors.torch import load_file

    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    b = cfg["backbone"]
    sd = load_file(str(run_dir / "model" / "model.safetensors"))
    hf_cfg = transformers.GPT2Config(vocab_size=b["vocab_size"], n_positions=b["context_length"], n_embd=b["emb_dim"],
                                     n_layer=b["n_layers"], n_head=b["n_heads"], num_labels=cfg["num_classes"],
                                     pad_token_id=cfg["pad_id"], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = transformers.GPT2ForSequenceClassification(hf_cfg).eval()
    W, bias = sd["out_head.weight"].double(), sd["out_head.bias"].double()
    hf = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
          "transformer.ln_f.weight": sd["final_norm.scale"],
          "transformer.ln_f.bias": (sd["final_norm.shift"].double() + torch.linalg.pinv(W) @ bias).float(),
          "score.weight": sd["out_head.weight"]}
    for i in range(b["n_layers"]):
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
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in hf.items()}, strict=False)
    assert not [k for k in missing if not k.endswith(("attn.bias", "masked_bias"))] and not unexpected, (missing, unexpected)
    return model, cfg


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
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} CPU cores ({model}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 2 epochs: the book's code takes 8 to 11 min per epoch here, so the default run ends within ~20 min.
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--smollm2", action="store_true", help="also time the SmolLM2-135M backbone")
    ap.add_argument("--skip-book", action="store_true", help="reuse the book's figures from the last speed.json")
    ap.add_argument("--update-readme", action="store_true")
    ap.add_argument("--worker", nargs="+")
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.worker
        {"book-train": lambda: worker_book_train(int(rest[0])),
         "llmclf-train": lambda: worker_llmclf_train(int(rest[0]), rest[1], rest[2]),
         "llmclf-infer": lambda: worker_llmclf_infer(rest[0], int(rest[1])),
         "hf-infer": lambda: worker_hf_infer(rest[0], int(rest[1]))}[kind]()
        return

    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "speed.json").read_text()) if (OUT / "speed.json").exists() else {}
    t_bench = time.perf_counter()
    res = {"machine": machine(), "epochs": a.epochs, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python bench/speed.py"] + [x for x in sys.argv[1:] if x != "--update-readme"])}
    tmp = Path(tempfile.mkdtemp(prefix="llmclf-bench-"))
    print(f"[a] fine-tuning, {a.epochs} epoch(s), GPT-2 small random weights", file=sys.stderr)
    res["llmclf_train"] = run_worker("llmclf-train", a.epochs, "gpt2-small", tmp / "gpt2")
    if a.skip_book and "book_train" in previous and previous.get("epochs") == a.epochs:
        res["book_train"] = previous["book_train"]
    else:
        res["book_train"] = run_worker("book-train", a.epochs)
    res["train_speedup"] = res["book_train"]["seconds"] / res["llmclf_train"]["seconds"]
    print("[b] inference over the test split", file=sys.stderr)
    res["inference"] = {}
    for bs in a.batch_sizes:
        ours = run_worker("llmclf-infer", tmp / "gpt2", bs)
        ref = run_worker("hf-infer", tmp / "gpt2", bs)
        same = ours["labels"] == ref["labels"]
        max_diff = max(abs(x - y) for x, y in zip(ours["probs"], ref["probs"]))
        res["inference"][str(bs)] = {"llmclf": {k: v for k, v in ours.items() if k not in ("labels", "probs")},
                                     "transformers": {k: v for k, v in ref.items() if k not in ("labels", "probs")},
                                     "speedup": ours["messages_per_s"] / ref["messages_per_s"],
                                     "identical_labels": same, "max_prob_diff": max_diff}
    if a.smollm2:
        print("[5] SmolLM2-135M-Instruct (Q4 GGUF, pretrained)", file=sys.stderr)
        res["smollm2_train"] = run_worker("llmclf-train", a.epochs, "smollm2-135m-instruct-q4", tmp / "smol")
        res["smollm2_infer"] = {k: v for k, v in run_worker("llmclf-infer", tmp / "smol", 32).items()
                                if k not in ("labels", "probs")}
    res["wall_minutes"] = (time.perf_counter() - t_bench) / 60
    (OUT / "speed.json").write_text(json.dumps(res, indent=2))
    table = render(res)
    print(table)
    if a.update_readme:
        update_readme(table)


def render(r: dict) -> str:
    b, o = r["book_train"], r["llmclf_train"]
    lines = [f"Measured {r['date']} on {r['machine']}; `{r.get('command', 'python bench/speed.py')}` "
             f"({r.get('wall_minutes', 0):.0f} min).", "",
             "| what | book ch06 / transformers | llmclf | ratio |", "|---|---|---|---|",
             f"| fine-tune GPT-2 small (random init), {r['epochs']} epoch(s), data ready -> final metrics | "
             f"{b['seconds']:.0f} s | {o['seconds']:.0f} s | **{r['train_speedup']:.1f}x** |",
             f"| test accuracy after it | {b['test_accuracy'] * 100:.2f}% | {o['test_accuracy'] * 100:.2f}% | |",
             f"| peak memory (max RSS) of the fine-tuning process | {b['peak_rss_mb']:.0f} MB | {o['peak_rss_mb']:.0f} MB | |"]
    for bs, inf in r["inference"].items():
        lines.append(f"| inference, SMS test split (300), batch {bs}: messages/s (median of {REPEATS} passes) | "
                     f"{inf['transformers']['messages_per_s']:.1f} | "
                     f"{inf['llmclf']['messages_per_s']:.1f} | **{inf['speedup']:.2f}x** |")
        lines.append(f"| ... same labels / max probability difference / peak memory | "
                     f"{'identical' if inf['identical_labels'] else 'DIFFERENT'} / {inf['max_prob_diff']:.1e} / "
                     f"{inf['transformers']['peak_rss_mb']:.0f} MB | {inf['llmclf']['peak_rss_mb']:.0f} MB | |")
    if "smollm2_train" in r:
        s, si = r["smollm2_train"], r["smollm2_infer"]
        lines.append(f"| SmolLM2-135M-Instruct (pretrained), {r['epochs']} epoch(s): fine-tune / test accuracy / "
                     f"messages/s (batch 32) | | {s['seconds']:.0f} s / {s['test_accuracy'] * 100:.2f}% / "
                     f"{si['messages_per_s']:.1f} | |")
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
