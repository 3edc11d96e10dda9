"""The saved classifier: RUN_DIR/model/ holds model.safetensors, the tokenizer files and config.json.

Weights are safetensors only (nothing is ever unpickled). config.json carries a schema version, the
backbone config, the label names and the sha256 of the weights; loading checks the hash, then the tensor
names, shapes and dtypes against the config, and refuses any mismatch with a one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import LlmclfError

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"


def default_mode(directory: bool = False) -> int:
    """The mode `open`/`mkdir` would give under the process umask. Temp files and folders (made private
    by mkstemp/mkdtemp) get it before they are renamed into place, so results are as readable as any file."""
    mask = os.umask(0o022)  # os offers no read-only umask call: set it and put it back at once
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` fills a temp file in the same directory, which is then renamed to `path`: readers never
    see half a file, a failed write leaves nothing behind, and the file gets the umask's mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_classifier(model, tokenizer, directory, *, labels, max_length, model_name, extra=None) -> Path:
    """Write the classifier into `directory` (replaced as a whole, atomically)."""
    from safetensors.torch import save_file

    from .assets import sha256_file
    from .lora import merge_lora

    directory = Path(directory)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        merge_lora(model)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.backbone.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "llmclf_schema": str(SCHEMA_VERSION)})
        os.chmod(tmp / WEIGHTS, default_mode())  # safetensors writes its files private
        tok_cfg = tokenizer.save(tmp)
        from . import __version__
        config = {
            "schema_version": SCHEMA_VERSION, "llmclf_version": __version__, "model_name": model_name,
            "backbone": asdict(model.backbone.cfg), "num_classes": model.num_classes, "labels": list(labels),
            "pooling": model.pooling, "causal": model.causal, "max_length": int(max_length),
            "pad_id": tokenizer.pad_id, "tokenizer": tok_cfg,
            "weights": {"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS),
                        "tensors": {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}},
            **(extra or {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        os.chmod(tmp, default_mode(directory=True))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_classifier_config(directory: Path) -> dict:
    f = directory / "config.json"
    if not f.is_file():
        raise LlmclfError(f"{directory}: not a saved classifier (no config.json)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{f}: corrupt config ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("schema_version") != SCHEMA_VERSION:
        raise LlmclfError(f"{f}: unsupported schema_version {cfg.get('schema_version') if isinstance(cfg, dict) else None!r}"
                          f" (this llmclf reads {SCHEMA_VERSION})")
    return cfg


def load_classifier_model(path, device="cpu"):
    """(TextClassifier in eval mode, tokenizer, config) from RUN_DIR or RUN_DIR/model, after verification."""
    from safetensors import SafetensorError, safe_open

    from .assets import sha256_file
    from .classifier import TextClassifier
    from .models import build_model, config_from_dict
    from .tokenizer import load_saved_tokenizer

    path = Path(path)
    directory = path / "model" if (path / "model" / "config.json").is_file() else path
    if not directory.is_dir():
        raise LlmclfError(f"{path}: no such run or model directory")
    cfg = read_classifier_config(directory)
    wfile = directory / cfg["weights"]["file"]
    if not wfile.is_file():
        raise LlmclfError(f"{wfile}: weights file missing")
    if sha256_file(wfile) != cfg["weights"]["sha256"]:
        raise LlmclfError(f"{wfile}: sha256 does not match config.json: the weights were changed or truncated; refusing to load")
    expected = cfg["weights"]["tensors"]
    try:
        with safe_open(str(wfile), framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                diff = sorted(names ^ set(expected))
                raise LlmclfError(f"{wfile}: tensor names do not match config.json (e.g. {diff[0]})")
            state = {}
            for k in names:
                t = f.get_tensor(k)
                if [list(t.shape), str(t.dtype).removeprefix("torch.")] != expected[k]:
                    raise LlmclfError(f"{wfile}: tensor {k} is {list(t.shape)} {t.dtype}, config.json says {expected[k]}")
                state[k] = t
    except SafetensorError as e:
        raise LlmclfError(f"{wfile}: not a valid safetensors file ({str(e).splitlines()[0]})") from None
    backbone = build_model(config_from_dict(cfg["backbone"]))
    model = TextClassifier(backbone, cfg["num_classes"], cfg["pooling"], cfg["causal"])
    own = backbone.state_dict()
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        raise LlmclfError(f"{wfile}: tensors do not fit the backbone config in config.json")
    backbone.load_state_dict(state, strict=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = load_saved_tokenizer(directory, cfg["tokenizer"])
    return model, tokenizer, cfg
