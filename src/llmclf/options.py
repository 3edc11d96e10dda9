"""The options of a fine-tuning run, and the one place that checks them.

`FinetuneOptions` is filled by the CLI, by library callers and by experiment grids; `check_options` checks
every field's type, range and combination for all three, so a bad value gets the same one-line error
wherever it came from (named `--flag` on the command line, `key` in a grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .errors import LlmclfError


@dataclass
class FinetuneOptions:
    out: str
    model: str = "gpt2-small"
    weights: str = "pretrained"
    dataset: str = "sms-spam"
    data_file: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    balance: bool = True
    split: tuple = (0.7, 0.1)
    seed: int = 123
    context_length: str = "longest"      # longest | model | N
    pooling: str = "last_nonpad"
    append_eos: bool = False             # end every text with the model's end-of-text token
    trainable: str = "last_block"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    causal: bool = True
    epochs: int = 5
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    eval_freq: int = 50
    eval_iter: int = 5
    cache: str = "auto"                  # auto | on (refuse to run uncached) | off
    class_weights: bool = False
    device: str = "auto"
    dtype: str = "float32"
    tokenizer_dir: str | None = None
    overwrite: bool = False
    checkpoint_every: int = 50           # optimizer steps between checkpoints (0: epoch ends only)
    grad_checkpoint: bool = False        # recompute trainable blocks' activations in backward (less memory)
    fsdp: bool = False                   # torchrun: shard parameters, gradients, optimizer state (trainable=all)
    quiet: bool = False
    extra: dict = field(default_factory=dict)


DATASETS = ("sms-spam",)
DEVICES = ("auto", "cpu", "cuda", "mps")
# Smallest allowed value of each integer option.
MINIMUM = {"seed": 0, "epochs": 1, "batch_size": 1, "grad_accum": 1, "eval_freq": 1, "eval_iter": 1,
           "lora_rank": 1, "checkpoint_every": 0}


def choices() -> dict:
    """The allowed values of each option that takes one of a few words."""
    from .classifier import POOLINGS, TRAINABLE
    return {"weights": ("pretrained", "random"), "pooling": POOLINGS, "trainable": TRAINABLE,
            "cache": ("auto", "on", "off"), "dtype": ("float32", "bfloat16"), "dataset": DATASETS}


def flag(key: str) -> str:
    """How the command line spells an option."""
    return "--" + key.replace("_", "-")


def coerce(key: str, value, name: str):
    """`value` checked against the type of the option's default (ints accepted for floats); `name` is how
    errors call the option. Returns the value in the option's own type."""
    default = FinetuneOptions.__dataclass_fields__[key].default
    if key == "split":
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise LlmclfError(f"{name} must be two numbers (train, validation), not {value!r}")
        return tuple(float(v) for v in value)
    if key == "context_length":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LlmclfError(f"{name} must be longest, model or a number, not {value!r}")
        return str(value)
    if key == "extra":
        if not isinstance(value, dict):
            raise LlmclfError(f"{name} must be a table, not {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise LlmclfError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise LlmclfError(f"{name} must be an integer, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LlmclfError(f"{name} must be a number, not {value!r}")
        return float(value)
    if value is not None and not isinstance(value, str):
        raise LlmclfError(f"{name} must be a string, not {value!r}")
    if value is None and default is not None:
        raise LlmclfError(f"{name} must be set")
    return value


def check_options(opts: FinetuneOptions, where: str | None = None) -> FinetuneOptions:
    """Type, range and combination of every option; one LlmclfError naming the first bad one. Values are
    normalised in place (ints to floats, lists to tuples). `where` (a grid row): errors say `where: key`."""
    def name(key):
        return f"{where}: {key}" if where else flag(key)

    for f in fields(FinetuneOptions):
        setattr(opts, f.name, coerce(f.name, getattr(opts, f.name), name(f.name)))
    for key, allowed in choices().items():
        if getattr(opts, key) not in allowed:
            raise LlmclfError(f"{name(key)} must be one of {', '.join(allowed)}, not {getattr(opts, key)!r}")
    for key, low in MINIMUM.items():
        if getattr(opts, key) < low:
            raise LlmclfError(f"{name(key)} must be at least {low}, not {getattr(opts, key)}")
    if opts.seed >= 2**32:
        raise LlmclfError(f"{name('seed')} must be below 2**32, not {opts.seed}")
    for key, positive in (("lr", True), ("lora_alpha", True), ("weight_decay", False)):
        v = getattr(opts, key)
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise LlmclfError(f"{name(key)} must be a {'positive' if positive else 'non-negative'} number, not {v}")
    _check_split(opts.split, name("split"))
    _check_context_length(opts.context_length, name("context_length"))
    if opts.device.split(":")[0] not in DEVICES or (":" in opts.device and not opts.device.startswith("cuda:")):
        raise LlmclfError(f"{name('device')} must be auto, cpu, cuda, cuda:N or mps, not {opts.device!r}")
    _check_combinations(opts, name)
    return opts


def _check_split(split, name: str) -> None:
    train, val = split
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise LlmclfError(f"{name} {train:g} {val:g}: need 0 < train < 1, 0 <= validation, "
                          "train + validation < 1 (the rest is test)")


def _check_context_length(value: str, name: str) -> None:
    if value in ("longest", "model"):
        return
    try:
        n = int(value)
    except ValueError:
        raise LlmclfError(f"{name} must be longest, model or a number, not {value!r}") from None
    if n < 1:
        raise LlmclfError(f"{name} must be at least 1, not {n}")


def _check_combinations(opts: FinetuneOptions, name) -> None:
    if opts.fsdp and opts.trainable != "all":
        raise LlmclfError(f"{name('fsdp')} needs trainable all (smaller trainable sets fit without sharding)")
    if opts.dtype == "bfloat16" and opts.device == "mps":
        raise LlmclfError(f"{name('dtype')} bfloat16 is not offered on mps; use float32")
