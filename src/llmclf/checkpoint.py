"""Checkpoints that let a killed run continue exactly where it was.

One safetensors file holds everything: the trainable tensors, the optimizer's moment tensors, the torch
and data-order RNG states (as uint8 tensors), and, in the header's metadata, the loop position and the
history as JSON. It is written to a temp file and renamed, so RUN_DIR/checkpoint.safetensors is always a
whole checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import LlmclfError

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(run_dir: Path, model, optimizer, loader, state, best: dict | None = None) -> Path:
    """`best`: --keep best's copy of the best epoch's trainable weights (name -> tensor), saved beside them."""
    from safetensors.torch import save_file

    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tensors.update({f"best.{n}": t.detach().cpu().contiguous() for n, t in (best or {}).items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.loader"] = loader.generator.get_state()
    meta = {"state": json.dumps(asdict(state)), "param_groups": json.dumps(opt["param_groups"])}
    path = Path(run_dir) / CHECKPOINT
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_checkpoint(run_dir: Path, model, optimizer, loader, best: dict | None = None):
    """Restore model, optimizer and RNGs in place; returns the TrainState to continue from. `best` (a dict)
    receives the saved copy of the best epoch's weights, if any (--keep best)."""
    from safetensors import SafetensorError, safe_open

    from .train import TrainState

    path = Path(run_dir) / CHECKPOINT
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LlmclfError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]})") from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, t in tensors.items():
            kind, _, name = key.partition(".")
            if kind not in ("param", "best") or (kind == "best" and best is None):
                continue
            if name not in params or params[name].shape != t.shape:
                raise LlmclfError(f"{path}: checkpoint does not fit this model ({name})")
            if kind == "param":
                params[name].copy_(t)
            else:
                best[name] = t.to(params[name].device)
    opt_state = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    loader.generator.set_state(tensors["rng.loader"])
    return TrainState(**json.loads(meta["state"]))
