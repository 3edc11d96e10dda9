"""Compact classifiers: model/ keeps only the tensors that training changed, and the base weights' identity.

A fine-tuned classifier differs from its pretrained backbone in a few tensors (the trained blocks, the final
norm, the class head, LoRA factors); the rest is the base model, bit for bit. So the saved file holds those
tensors, config.json's `base` field names the base (a named model, or the absolute path of a local directory
or GGUF file) with the sha256 of every file its weights are read from, and loading rebuilds the rest from the
asset cache. A tensor is stored when it required grad (what the optimizer could change); the others are the
base model's as `load_backbone` gives it, and a LoRA adapter is folded into its base weight by the same
function that merges it for a standalone save, so a rebuild holds the standalone save's tensors bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .assets import cache_dir, sha256_file
from .atomic import atomic_write, atomic_write_text
from .errors import LlmclfError
from .lora import LinearWithLoRA, fold_lora
from .models import MODELS
from .weights import load_backbone, source_files

BASE = "base"  # config.json's field: {"model": NAME|PATH, "files": {file name: sha256}, "lora": {module: scaling}}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def base_identity(model: str, weights: str = "pretrained") -> dict | None:
    """The `base` field for a backbone loaded by `load_backbone(model, weights)`, or None when it has no base
    weights to rebuild from (random weights): such a classifier is always saved standalone."""
    files = source_files(model, weights)
    if files is None:
        return None
    name = model if model in MODELS else str(Path(model).expanduser().resolve())
    return {"model": name, "files": {p.name: sha256_file(p) for p in files}, "lora": {}}


def lora_adapters(backbone) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path: (A, B, scaling)} of every LoRA adapter, read before they are merged for saving."""
    return {n: (m.lora.A.detach().cpu(), m.lora.B.detach().cpu(), m.lora.scaling)
            for n, m in backbone.named_modules() if isinstance(m, LinearWithLoRA)}


def trained_names(backbone) -> set[str]:
    """The tensors the optimizer may have changed (those that require grad), LoRA factors aside: every other
    tensor is still the base model's, as `load_backbone` gave it, since nothing but the optimizer writes weights."""
    return {n for n, p in backbone.named_parameters() if p.requires_grad and ".lora." not in n}


def compact_state(state: dict, trained: set[str], adapters: dict) -> tuple[dict, dict]:
    """(tensors to store, {module: scaling} of the adapters folded at loading): of the merged `state`, the
    trained tensors, and each adapter's two factors instead of the weight it was merged into."""
    stored = {k: v for k, v in state.items() if k in trained}
    for module, (a, b, _) in adapters.items():
        stored[f"{module}.lora.A"], stored[f"{module}.lora.B"] = a.contiguous(), b.contiguous()
    return stored, {module: scaling for module, (_, _, scaling) in adapters.items()}


def rebuild_state(f: Path, cfg: dict, stored: dict) -> dict[str, torch.Tensor]:
    """The full state a standalone save would hold: stored tensors, the rest from the verified base weights."""
    base, listing = cfg[BASE], cfg["weights"]["tensors"]
    base_state = load_base_state(base, f"{f}: this compact classifier is rebuilt from its base weights, but they")
    state = {}
    for k, (shape, dtype) in listing.items():
        if k in stored:
            state[k] = stored[k]
            continue
        ref = base_state.get(k)
        if ref is None or list(ref.shape) != shape:
            raise LlmclfError(f"{f}: tensor {k} is neither stored nor in the base weights of {base['model']} "
                              "with the shape config.json gives")
        ref = ref.to(getattr(torch, dtype))
        module = k.removesuffix(".weight")
        if module in base["lora"]:
            ref = fold_lora(ref, stored[f"{module}.lora.A"], stored[f"{module}.lora.B"], base["lora"][module])
        state[k] = ref
    return state


def stored_names(cfg: dict) -> set[str] | None:
    """The LoRA factor names a compact file holds beside the listed tensors (None for a standalone file)."""
    if BASE not in cfg:
        return None
    return {f"{m}.lora.{x}" for m in cfg[BASE]["lora"] for x in "AB"}


def load_base_state(base: dict, who: str) -> dict[str, torch.Tensor]:
    """The base backbone's tensors, after checking that its files are those recorded (same names, same sha256).
    `who` starts the error message: the files are missing, changed or cannot be fetched."""
    try:
        files = source_files(base["model"])
    except (LlmclfError, OSError) as e:
        raise LlmclfError(f"{who} ({base['model']}) could not be had: {e}; train with --standalone for a "
                          "classifier that needs none") from None
    found = {p.name: p for p in files or []}
    if sorted(found) != sorted(base["files"]):
        raise LlmclfError(f"{who} ({base['model']}) are not the files recorded: {', '.join(sorted(base['files']))}")
    for name, sha in sorted(base["files"].items()):
        if sha256_file(found[name]) != sha:
            raise LlmclfError(f"{who} ({found[name]}) changed since saving (sha256 differs); refusing to load")
    return _base_tensors(base)


def _base_tensors(base: dict) -> dict[str, torch.Tensor]:
    """load_backbone's tensors for these base files, kept in the asset cache as safetensors after the first
    load: a GGUF takes seconds to parse and dequantize (about 17 s for SmolLM2 on 2 cores), its tensors about
    one to read. The copy is named by the files' sha256 and this llmclf's version (the loader that made it),
    and used only if its own sha256, written beside it, checks out."""
    from .version import __version__

    key = hashlib.sha256(json.dumps([base["files"], __version__], sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / "base-states" / f"{key}.safetensors"
    digest = path.with_suffix(".sha256")
    if path.is_file() and digest.is_file() and sha256_file(path) == digest.read_text().strip():
        return load_file(path)
    state = load_backbone(base["model"])[0].state_dict()
    try:
        _cache_state(path, digest, state)
    except OSError:
        pass  # a read-only or full cache only costs the next load the same seconds again
    return state


def _cache_state(path: Path, digest: Path, state: dict) -> None:
    seen, tensors = set(), {}
    for k, v in state.items():  # tied embeddings share storage, which safetensors refuses: copy the second
        tensors[k] = v.clone() if v.data_ptr() in seen else v.contiguous()
        seen.add(v.data_ptr())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    atomic_write_text(digest, sha256_file(path))


def is_base(v) -> bool:
    """The `base` field as `base_identity` and saving write it."""
    return (isinstance(v, dict) and set(v) == {"model", "files", "lora"} and isinstance(v["model"], str)
            and isinstance(v["files"], dict) and bool(v["files"])
            and all(isinstance(k, str) and isinstance(s, str) and _SHA256.fullmatch(s) for k, s in v["files"].items())
            and isinstance(v["lora"], dict)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in v["lora"].values()))
