"""The saved classifier: RUN_DIR/model/ holds model.safetensors, the tokenizer files and config.json.

Weights are safetensors only (nothing is ever unpickled). config.json carries a schema version, the
backbone config, the label names, pooling, lengths, the tokenizer config, and a manifest ("integrity"):
the sha256 of every other file in the directory and a digest of each config field's canonical JSON.
Loading refuses, with a one-line error naming the file or field, any file or field that is missing,
unlisted, changed or malformed, any name that could leave the directory, and any link or sub-folder.

Saving is atomic: the new classifier is written beside the old one and swapped in by renames
(`_swap_into_place`), so a process killed at any moment leaves a complete classifier loadable.

Schema 2 is this layout. Schema 1 (before the manifest) still loads with its own checks: the weights'
sha256 and tensor list, plus the field and path checks; its labels and other fields are not covered by
any digest, so re-save (retrain) to get the full check.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .atomic import atomic_write_text, default_mode
from .classifier import POOLINGS
from .compact import BASE, compact_state, is_base, lora_adapters, rebuild_state, stored_names, trained_names
from .errors import LlmclfError

SCHEMA_VERSION = 2
LEGACY_SCHEMA = 1  # no manifest: only the weights' sha256 is checked
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "integrity"  # config.json's key for {"files": {name: sha256}, "fields": {field: digest}}


def canonical_digest(value) -> str:
    """sha256 of a JSON value written canonically (sorted keys, no spaces): reformatting config.json keeps
    it, changing a value does not."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- saving

def save_classifier(model, tokenizer, directory, *, labels, max_length, model_name, extra=None, blend=None,
                    base=None) -> Path:
    """Write the classifier into `directory`, replacing any earlier one as a whole, atomically. `blend` (a
    blend.TfidfBlend) writes its own file and config field, both covered by the manifest. `base` (from
    compact.base_identity) stores only what differs from those base weights; None writes every tensor."""
    directory = Path(directory)
    new = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        _write_classifier(new, model, tokenizer, labels, max_length, model_name, extra, blend, base)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _swap_into_place(new, directory)
    return directory


def _write_classifier(out: Path, model, tokenizer, labels, max_length, model_name, extra, blend=None,
                      base=None) -> None:
    """Weights and tokenizer files, then config.json with the manifest of them (written last), all fsynced."""
    from safetensors.torch import save_file

    from .version import __version__
    from .assets import sha256_file
    from .lora import merge_lora

    adapters, trained = lora_adapters(model.backbone), trained_names(model.backbone)
    # Compact only when training froze some tensors and not others: with --trainable all (or an FSDP copy, or a
    # loaded classifier, nothing requiring grad) the flags do not tell what differs from the base.
    partial = len({p.requires_grad for p in model.backbone.parameters()}) == 2
    merge_lora(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.backbone.state_dict().items()}
    stored = state
    if base is not None and partial:
        stored, folded = compact_state(state, trained, adapters)
        extra = {**(extra or {}), BASE: {**base, "lora": folded}}
    save_file(stored, str(out / WEIGHTS), metadata={"format": "pt", "llmclf_schema": str(SCHEMA_VERSION)})
    os.chmod(out / WEIGHTS, default_mode())  # safetensors writes its files private
    tok_cfg = tokenizer.save(out)
    config = {
        "schema_version": SCHEMA_VERSION, "llmclf_version": __version__, "model_name": model_name,
        "backbone": asdict(model.backbone.cfg), "num_classes": model.num_classes, "labels": list(labels),
        "pooling": model.pooling, "causal": model.causal, "max_length": int(max_length),
        "pad_id": tokenizer.pad_id, "tokenizer": tok_cfg,
        "weights": {"file": WEIGHTS,
                    "tensors": {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()}},
        **(extra or {}),
    }
    if blend is not None:
        config["blend"] = blend.write(out)
        os.chmod(out / config["blend"]["file"], default_mode())
    config = json.loads(json.dumps(config))  # digest exactly what a reader will parse (tuples, int keys...)
    config[MANIFEST] = {"files": {p.name: sha256_file(p) for p in sorted(out.iterdir())},
                        "fields": {k: canonical_digest(v) for k, v in config.items()}}
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2))
    for p in out.iterdir():
        _fsync(p)
    os.chmod(out, default_mode(directory=True))
    _fsync(out)


def _swap_into_place(new: Path, directory: Path) -> None:
    """Make the complete classifier in `new` the one at `directory`, by renames only.

    rename(2) cannot replace a non-empty directory, so: (1) the old one is renamed aside to
    .NAME.old-XXXX, (2) `new` (.NAME.new-XXXX) is renamed to NAME, (3) the old one and any leftovers of
    earlier killed saves are deleted. A kill before (1) leaves the old classifier at NAME; after (2), the
    new one; between (1) and (2), no NAME but two complete copies beside it, which `find_classifier_dir`
    loads from (new first). Leftovers are deleted only once the new classifier is at NAME.
    """
    parent = directory.parent
    if directory.exists() or directory.is_symlink():
        os.rename(directory, parent / f".{directory.name}.old-{secrets.token_hex(4)}")
    os.rename(new, directory)
    _fsync(parent)
    for leftover in _leftovers(directory):
        if leftover.is_symlink():
            leftover.unlink()
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _leftovers(directory: Path) -> list[Path]:
    """Copies a killed save can leave beside `directory`: complete new ones first, then old ones, newest first."""
    def newest_first(kind):
        found = [p for p in directory.parent.glob(f".{directory.name}.{kind}-*") if p.is_dir()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    return newest_first("new") + newest_first("old")


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk, so that the renames above never expose data still in memory only."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows: nothing to flush there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ verifying

def _plain_name(name) -> bool:
    """A file name directly inside the directory: no path separator, not absolute, not `.` or `..`."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_labels(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v)


def _is_tensors(v) -> bool:
    """{name: [shape, dtype]} as `_write_classifier` records it."""
    return isinstance(v, dict) and all(
        isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], list) and all(_is_id(n) for n in spec[0])
        and isinstance(spec[1], str) for spec in v.values())


def _is_tokenizer(v) -> bool:
    from .tokenizer import LONG_TEXTS, GPT2Tokenizer, HFTokenizer
    if not (isinstance(v, dict) and isinstance(v.get("files"), list) and all(map(_plain_name, v["files"]))
            and isinstance(v.get("append_eos", False), bool) and isinstance(v.get("pair", False), bool)
            and v.get("long_texts", "cut") in LONG_TEXTS and (v.get("bos_id") is None or _is_id(v["bos_id"]))):
        return False
    if v.get("type") == HFTokenizer.kind:
        return _is_id(v.get("pad_id")) and _is_id(v.get("eos_id"))
    return v.get("type") == GPT2Tokenizer.kind


# The fields loading relies on: field -> (what it must be, check). Other fields (model_name, train_metrics,
# ...) are covered by the manifest but not read here.
FIELDS = {
    "labels": ("a non-empty list of distinct strings", _is_labels),
    "num_classes": ("a positive integer equal to the number of labels", _is_count),
    "pooling": (f"one of {', '.join(POOLINGS)}", lambda v: isinstance(v, str) and v in POOLINGS),
    "causal": ("true or false", lambda v: isinstance(v, bool)),
    "max_length": ("a positive integer", _is_count),
    "pad_id": ("a token id (an integer >= 0)", _is_id),
    "backbone": ("an object", lambda v: isinstance(v, dict)),
    "tokenizer": ("a tokenizer config (type, files: plain file names, ids)", _is_tokenizer),
    "weights": ("an object with file (a plain file name) and tensors ({name: [shape, dtype]})",
                lambda v: isinstance(v, dict) and _plain_name(v.get("file")) and _is_tensors(v.get("tensors"))),
}


def read_classifier_config(directory: Path) -> dict:
    """config.json of a saved classifier, verified: manifest (schema 2) or weights sha256 (schema 1),
    then every field that loading relies on. Any problem is one LlmclfError naming the file or field."""
    directory = Path(directory)
    f = directory / CONFIG
    if f.is_symlink() or not f.is_file():
        raise LlmclfError(f"{directory}: not a saved classifier (no config.json{' file' if f.is_symlink() else ''})")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{f}: corrupt config ({e})") from None
    version = cfg.get("schema_version") if isinstance(cfg, dict) else None
    if version not in (SCHEMA_VERSION, LEGACY_SCHEMA) or isinstance(version, bool):
        raise LlmclfError(f"{f}: unsupported schema_version {version!r} (this llmclf reads {SCHEMA_VERSION} and "
                          f"{LEGACY_SCHEMA}); retrain with this llmclf")
    if version == SCHEMA_VERSION:
        _verify_manifest(directory, cfg)
    _check_fields(f, cfg)
    if version == LEGACY_SCHEMA:
        _verify_legacy_weights(directory, cfg)
    return cfg


def _verify_manifest(directory: Path, cfg: dict) -> None:
    """Every field's digest and every file's sha256 as recorded at saving; no file unlisted, none missing."""
    f = directory / CONFIG
    m = cfg.get(MANIFEST)
    if not (isinstance(m, dict) and isinstance(m.get("files"), dict) and isinstance(m.get("fields"), dict)):
        raise LlmclfError(f"{f}: field {MANIFEST!r} must be an object with files and fields")
    present = {k: v for k, v in cfg.items() if k != MANIFEST}
    for k in sorted(set(present) | set(m["fields"])):
        if k not in m["fields"]:
            raise LlmclfError(f"{f}: field {k!r} is not in the manifest (added after saving); refusing to load")
        if k not in present:
            raise LlmclfError(f"{f}: field {k!r} is missing (the manifest lists it)")
        if canonical_digest(present[k]) != m["fields"][k]:
            raise LlmclfError(f"{f}: field {k!r} does not match the manifest (changed since saving); refusing to load")
    _verify_files(directory, m["files"])


def _verify_files(directory: Path, listed: dict) -> None:
    """The directory holds exactly the listed regular files (plus config.json), each with its sha256."""
    from .assets import sha256_file

    for name in listed:
        if not _plain_name(name):
            raise LlmclfError(f"{directory / CONFIG}: the manifest lists {name!r}, which is not a file name "
                              "inside the model directory")
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                raise LlmclfError(f"{directory / entry.name}: a link or folder in the model directory; refusing to load")
            if entry.name != CONFIG and entry.name not in listed:
                raise LlmclfError(f"{directory / entry.name}: not in the manifest of config.json; refusing to load")
    for name, sha in sorted(listed.items()):
        p = directory / name
        if not p.is_file():
            raise LlmclfError(f"{p}: missing (the manifest of config.json lists it)")
        if sha256_file(p) != sha:
            raise LlmclfError(f"{p}: sha256 does not match the manifest in config.json: the file was changed or "
                              "truncated; refusing to load")


def _check_fields(f: Path, cfg: dict) -> None:
    """Each field loading relies on is present and well-formed (see FIELDS)."""
    for name, (what, ok) in FIELDS.items():
        if name not in cfg:
            raise LlmclfError(f"{f}: field {name!r} is missing")
        if not ok(cfg[name]):
            raise LlmclfError(f"{f}: field {name!r} must be {what}, not {json.dumps(cfg[name])[:80]}")
    if cfg["num_classes"] != len(cfg["labels"]):
        raise LlmclfError(f"{f}: field 'num_classes' is {cfg['num_classes']} but there are {len(cfg['labels'])} labels")
    if BASE in cfg and not is_base(cfg[BASE]):
        raise LlmclfError(f"{f}: field {BASE!r} must be an object with model (a name or path), files ({{name: "
                          "sha256}}) and lora ({module: scaling})")


def _verify_legacy_weights(directory: Path, cfg: dict) -> None:
    """Schema 1: the weights file against the sha256 in config.json (the only digest that schema has)."""
    from .assets import sha256_file

    wfile = directory / cfg["weights"]["file"]
    if wfile.is_symlink() or not wfile.is_file():
        raise LlmclfError(f"{wfile}: weights file missing")
    if sha256_file(wfile) != cfg["weights"].get("sha256"):
        raise LlmclfError(f"{wfile}: sha256 does not match config.json: the weights were changed or truncated; "
                          "refusing to load")


def backbone_config(f: Path, d: dict):
    """The backbone's GPTConfig/LlamaConfig; an unknown setting or a value of the wrong type is refused."""
    from .models import CONFIGS

    arch = d.get("arch", "gpt2")
    cls = CONFIGS.get(arch) if isinstance(arch, str) else None
    if cls is None:
        raise LlmclfError(f"{f}: field 'backbone.arch' must be one of {', '.join(CONFIGS)}, not {json.dumps(arch)}")
    defaults = {fl.name: fl.default for fl in fields(cls)}
    for k, v in d.items():
        if k not in defaults:
            raise LlmclfError(f"{f}: field 'backbone.{k}' is not a setting of the {arch} model")
        kind = int if defaults[k] is None else type(defaults[k])  # None-default settings (head_dim) are counts
        fits = (v is None and defaults[k] is None) or {
            bool: lambda: isinstance(v, bool), str: lambda: isinstance(v, str), int: lambda: _is_count(v),
            float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}[kind]()
        if not fits:
            raise LlmclfError(f"{f}: field 'backbone.{k}' must be {'a positive integer' if kind is int else kind.__name__},"
                              f" not {json.dumps(v)[:40]}")
    return cls(**d)


# -------------------------------------------------------------------------------------------- loading

def find_classifier_dir(path: Path) -> tuple[Path, dict]:
    """(model directory, verified config) for RUN_DIR or RUN_DIR/model. If model/ is missing because a save
    was killed between its two renames, the complete copy left beside it is used (see _swap_into_place)."""
    for directory in (path / "model", path):
        if (directory / CONFIG).is_file():
            return directory, read_classifier_config(directory)
    candidates = _leftovers(path / "model") + (_leftovers(path) if path.name and not path.exists() else [])
    for directory in candidates:
        try:
            return directory, read_classifier_config(directory)
        except LlmclfError:
            continue  # an incomplete copy (killed while it was written): try the next one
    if not path.is_dir():
        raise LlmclfError(f"{path}: no such run or model directory")
    raise LlmclfError(f"{path}: not a saved classifier (no config.json)")


def _read_weights(wfile: Path, expected: dict, factors: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the weights file, which must be exactly those config.json lists (names, shapes, dtypes);
    a compact file (`factors`: its LoRA factor names) holds some of them, and those factors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(wfile), framework="pt") as f:
            names = set(f.keys())
            wrong = names ^ set(expected) if factors is None else (names - set(expected)) ^ factors
            if wrong:
                raise LlmclfError(f"{wfile}: tensor names do not match config.json (e.g. {sorted(wrong)[0]})")
            state = {}
            for k in names:
                t = f.get_tensor(k)
                if k in expected and [list(t.shape), str(t.dtype).removeprefix("torch.")] != expected[k]:
                    raise LlmclfError(f"{wfile}: tensor {k} is {list(t.shape)} {t.dtype}, config.json says {expected[k]}")
                state[k] = t
    except SafetensorError as e:
        raise LlmclfError(f"{wfile}: not a valid safetensors file ({str(e).splitlines()[0]})") from None
    return state


def load_classifier_model(path, device="cpu"):
    """(TextClassifier in eval mode, tokenizer, config) from RUN_DIR or RUN_DIR/model, after verification."""
    return load_classifier_parts(path, device)[:3]


def load_hf_classifier_parts(path: Path, device="cpu"):
    """A transformers GPT2/LlamaForSequenceClassification directory as load_classifier_parts gives a saved one:
    its `score` (no bias) becomes the class head (no bias), its id2label the labels, and it pools the last
    real token, as transformers does (the last token that is not the pad token)."""
    from .classifier import TextClassifier
    from .tokenizer import tokenizer_for_dir
    from .weights.hf import load_hf_classifier

    backbone, bcfg, score, labels = load_hf_classifier(path)
    model = TextClassifier(backbone, len(labels), "last_nonpad", causal=True, head_bias=False)
    with torch.no_grad():
        backbone.out_head.weight.copy_(score)
    tokenizer = tokenizer_for_dir(path, bcfg.arch)
    model.to(device).eval().requires_grad_(False)
    cfg = {"labels": labels, "num_classes": len(labels), "pooling": "last_nonpad", "causal": True,
           "max_length": bcfg.context_length, "pad_id": tokenizer.pad_id, "model_name": Path(path).name,
           "backbone": asdict(bcfg), "source": "transformers"}
    return model, tokenizer, cfg, Path(path)


def load_classifier_parts(path, device="cpu"):
    """load_classifier_model's three, plus the model directory they came from (where the blend file lies)."""
    from .classifier import TextClassifier
    from .models import build_model
    from .tokenizer import load_saved_tokenizer
    from .weights.hf import is_hf_classifier

    if is_hf_classifier(Path(path)):
        return load_hf_classifier_parts(Path(path), device)
    directory, cfg = find_classifier_dir(Path(path))
    f = directory / CONFIG
    wfile = directory / cfg["weights"]["file"]
    if not wfile.is_file():
        raise LlmclfError(f"{wfile}: weights file missing")
    state = _read_weights(wfile, cfg["weights"]["tensors"], stored_names(cfg))
    if BASE in cfg:
        state = rebuild_state(f, cfg, state)
    backbone_cfg = backbone_config(f, cfg["backbone"])
    if cfg["pad_id"] >= backbone_cfg.vocab_size or cfg["max_length"] > backbone_cfg.context_length:
        raise LlmclfError(f"{f}: field 'pad_id' or 'max_length' lies outside the backbone's vocabulary or context")
    backbone = build_model(backbone_cfg)
    # A saved head with a bias loads with one (every GPT-2 head; Llama-family heads saved before they went bias-free).
    model = TextClassifier(backbone, cfg["num_classes"], cfg["pooling"], cfg["causal"], "out_head.bias" in state)
    own = backbone.state_dict()
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        raise LlmclfError(f"{wfile}: tensors do not fit the backbone config in config.json")
    backbone.load_state_dict(state, strict=True)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    missing = [n for n in cfg["tokenizer"]["files"] if not (directory / n).is_file()]
    if missing:
        raise LlmclfError(f"{directory / missing[0]}: tokenizer file missing")
    tokenizer = load_saved_tokenizer(directory, cfg["tokenizer"])
    if tokenizer.pad_id != cfg["pad_id"]:
        raise LlmclfError(f"{f}: field 'pad_id' is {cfg['pad_id']} but the tokenizer pads with {tokenizer.pad_id}")
    return model, tokenizer, cfg, directory
