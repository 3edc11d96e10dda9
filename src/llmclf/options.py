"""The options of a fine-tuning run, and the one place that checks them.

`FinetuneOptions` is filled by the CLI, by library callers and by experiment grids; `check_options` checks
every field's type, range and combination for all three, so a bad value gets the same one-line error
wherever it came from (named `--flag` on the command line, `key` in a grid).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields

from .classifier import POOLINGS, TRAINABLE
from .decision import parse_target
from .errors import LlmclfError
from .tokenizer import LONG_TEXTS


def opt(default, help: str, **cli):
    """A FinetuneOptions field: its default and help are written once, here; `cli` tells the command line what
    argparse cannot infer (choices, metavar, nargs, the flag of a negated switch, aliases, cli=False)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


OPTIONAL_INTS = {"split_seed"}  # options whose default None means "unset" and whose values are integers

AUTO_CONTEXT = 256  # --context-length auto: enough for the news articles of bench/quality.py (mean 252 tokens)


@dataclass
class FinetuneOptions:
    """Every option of `llmclf train`, in the order `--help` lists them. The command line, experiment grids
    and `check_options` are derived from these fields: adding an option is one field plus its use."""
    out: str = opt(None, "run directory to create (required unless --resume)", metavar="RUN_DIR")
    recipe: str = opt("default", "default: the defaults below, chosen on the validation splits of bench/quality.py | "
                      "book: chapter 6 exactly (GPT-2 small, last block, last token, 5 epochs at 5e-5, batch 8, "
                      "float32, no blend) | auto: train each of a few recipes on this split (the frozen-prefix "
                      "cache shared), keep the best on validation macro-F1; search.csv lists them. Options given "
                      "on the command line win over the recipe's")
    search_minutes: float = opt(15.0, "--recipe auto: start no further candidate once this many minutes have gone "
                                "(the first always runs)")
    # data
    dataset: str = opt("sms-spam", "built-in dataset")
    data_file: str | None = opt(None, "your own CSV, TSV or JSON(L) file (or the UCI SMSSpamCollection file)")
    train_file: str | None = opt(None, "your training split as a file of its own (instead of --data-file)")
    validation_file: str | None = opt(None, "your validation split as a file (else carved from the training data by "
                                      "its --split fraction)")
    test_file: str | None = opt(None, "your test split as a file (else carved from the training data: the rest "
                                "after --split's two fractions)")
    text_column: str | None = opt(None, "text column (default: text/message/sms/... or judged by content)")
    label_column: str | None = opt(None, "label column (default: label/class/category/... or judged by content)")
    label_delimiter: str | None = opt(None, "multi-label: the label column holds several labels separated by this "
                                      "string (e.g. '|'; an empty cell: no label). A column of JSON lists needs no flag")
    label_columns: str | None = opt(None, "multi-label: 0/1 columns, one per label, as NAME,NAME,... (a 1 marks the "
                                    "label)", metavar="NAMES")
    text_pair_column: str | None = opt(None, "a second text column: classify text pairs (entailment, duplicate "
                                       "questions, query/document); the two are joined by the end-of-text token "
                                       "and cut longest-first, keeping part of both")
    balance: bool = opt(True, "undersample to the smallest class, as the book does", switch=True)
    balance_ratio: float = opt(1.0, "--balance: keep each class at most this many times the smallest (1: the "
                               "book's 1:1; 3: e.g. ham 3:1)")
    stratify: bool = opt(False, "split each class in the --split proportions (scikit-learn's stratified split) "
                         "instead of the book's shuffle-and-cut")
    split: tuple = opt((0.7, 0.1), "train and validation fractions; the rest is test", nargs=2,
                       metavar=("TRAIN", "VAL"))
    seed: int = opt(123, "seed of the split, the head's initialisation and the data order")
    split_seed: int | None = opt(None, "seed of the balancing and split alone (default: --seed): vary --seed over "
                                 "one fixed split, e.g. the book's (123)")
    # model
    model: str = opt("smollm2-135m-instruct-q4", "named model (see `llmclf download --list`) or a local directory")
    weights: str = opt("pretrained", "pretrained weights, or random ones (no download)")
    tokenizer_dir: str | None = opt(None, "directory holding GPT-2's vocab.bpe and encoder.json (offline use)")
    context_length: str = opt("auto", f"tokens kept per text: auto (the longest training text, at most {AUTO_CONTEXT}: "
                              "bounds what long documents cost) | longest (training set) | model | N")
    long_texts: str = opt("cut", "a text longer than the context length: cut (keep its start, as the book) | head_tail "
                          "(keep its first quarter and last three quarters of the tokens) | windows (read it as "
                          "windows half overlapping, at most 16; train on every window, predict the mean of a text's "
                          "windows' probabilities); the same in evaluate, predict and serve")
    pooling: str = opt("auto", "what the head reads: the mean over a text's tokens, or one token's output "
                       "(last_nonpad: the last real token) | auto: train mean and last_nonpad on the same frozen "
                       "pass and keep the better on validation macro-F1 (ties: mean); search.csv lists both")
    append_eos: bool = opt(False, "end every text with the model's end-of-text token (pooled there with last_nonpad)")
    trainable: str = opt("last_block", "what trains besides the head")
    lora_rank: int = opt(8, "LoRA rank (--trainable lora)")
    lora_alpha: float = opt(16.0, "LoRA alpha (--trainable lora)")
    causal: bool = opt(True, "let every token attend to all tokens", negate="--no-causal-mask")
    # training
    epochs: int = opt(5, "passes over the training split")
    batch_size: int = opt(8, "examples per optimizer step; under torchrun the global batch, split evenly over the "
                          "processes (must be a multiple of their number)")
    grad_accum: int = opt(1, "micro-batches per optimizer step (the loss is averaged over the step's examples)")
    lr: float = opt(1e-3, "AdamW learning rate (the peak, with --warmup or --schedule)")
    warmup: float = opt(0.1, "fraction of the optimizer steps over which the learning rate rises linearly from 0")
    schedule: str = opt("cosine", "learning rate after the warm-up: constant, or cosine or linear decay to 0 at "
                        "the last step")
    weight_decay: float = opt(0.1, "AdamW weight decay")
    eval_freq: int = opt(50, "evaluate every N optimizer steps")
    eval_iter: int = opt(5, "batches per periodic evaluation")
    class_weights: bool = opt(False, "weight the loss by inverse class frequency")
    sampler: str = opt("shuffle", "training batches: shuffle (every example once per epoch, as the book) | balanced "
                       "(every class equally often: each epoch draws as many examples with replacement, weighted "
                       "1 / class count; with --no-balance it keeps all the data and still sees the classes 1:1)")
    keep: str = opt("last", "the weights saved: last (after the last epoch, as the book) | best (the epoch with the "
                    "best --keep-metric on the whole validation split; history.csv marks it)")
    keep_metric: str = opt("macro_f1", "what --keep best and --patience judge an epoch by, on the whole validation "
                           "split: macro_f1 | accuracy | loss")
    patience: int = opt(0, "--keep best: stop once this many epochs in a row have not improved on the best (0: run "
                        "every epoch)")
    cache: str = opt("auto", "frozen-prefix cache: auto (where exact), on (refuse to run uncached), off",
                     aliases={"--no-cache": "off"})
    cache_memory: float = opt(4.0, "GiB of frozen-prefix states held in memory; the rest go to a temporary file and "
                              "are read back per batch (the same results; README: Speed, Scale)", metavar="GIB")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("float32", "bfloat16: mixed precision (float32 weights and optimizer state, bfloat16 autocast "
                     "forwards, the frozen pass included) on a CPU or a CUDA GPU that supports it; slower on CPUs "
                     "without native bfloat16 | float32 | auto: bfloat16 where the hardware computes it natively "
                     "(avx512_bf16/amx_bf16, a bf16 GPU), else float32; on a CPU for the frozen pass only")
    grad_checkpoint: bool = opt(False, "recompute each trainable block's activations in the backward pass instead "
                                "of storing them: less memory, more compute, same results")
    fsdp: bool = opt(False, "under torchrun, shard parameters, gradients and optimizer state over the processes "
                     "(FSDP2) instead of replicating them (DDP); needs --trainable all; writes no checkpoints")
    baseline: bool = opt(True, "also fit TF-IDF + logistic regression on the same split (seconds) and report it "
                         "beside the run", negate="--no-baseline")
    # Defaults (model, context, schedule, lr, blend) chosen on the validation splits of bench/quality.py (README: Quality).
    blend: str = opt("auto", "off | tfidf: save p = w p_llm + (1 - w) p_tfidf (TF-IDF + logistic regression fitted "
                     "on the training split, w in 0, 0.1, ..., 1 chosen by validation macro-F1) as the classifier "
                     "| auto: the same, but the LLM alone when w comes out 1")
    calibrate: bool = opt(True, "fit a temperature on the validation split so that texts given 0.9 are right 9 times in "
                          "10 (metrics.json: calibration); never changes the argmax",
                          negate="--no-calibrate")
    operating_point: str = opt("argmax", "two classes: how the label is chosen from the calibrated probability of "
                               "--positive-label: argmax | best_f1 | max_fpr=A (at most a fraction A of the other "
                               "class flagged) | min_precision=A | min_recall=A, the threshold chosen on the "
                               "validation split and saved with the classifier")
    positive_label: str | None = opt(None, "the class --operating-point is about (default: the second label, e.g. "
                                     "spam)")
    tensorboard: bool = opt(False, "also write the training scalars as TensorBoard event files into "
                            "RUN_DIR/tensorboard, as training goes (needs: pip install tensorboard)")
    # the run
    overwrite: bool = opt(False, "replace an existing run directory (only one llmclf wrote: a directory holding "
                          "anything else is refused, never emptied)")
    standalone: bool = opt(False, "write model/ with every tensor of the backbone, loadable with no base weights; by "
                           "default it holds only the tensors training changed and the sha256 of the base weights' "
                           "files, and loading rebuilds the rest from the asset cache (fetched if need be)")
    checkpoint_every: int = opt(50, "optimizer steps between checkpoints (0: only at epoch ends)")
    quiet: bool = opt(False, "print only the final line")
    extra: dict = opt({}, "free-form notes kept with the run (library and grids only)", cli=False)


# The book's chapter 6, written out in full so that it stays exact whatever the defaults become.
BOOK_RECIPE = {"model": "gpt2-small", "trainable": "last_block", "pooling": "last_nonpad", "append_eos": False,
               "context_length": "longest", "epochs": 5, "batch_size": 8, "lr": 5e-5, "warmup": 0.0,
               "schedule": "constant", "weight_decay": 0.1, "dtype": "float32", "blend": "off", "calibrate": False}
RECIPES = {"default": {}, "book": BOOK_RECIPE, "auto": {}}
RECIPE_KEYS = tuple(BOOK_RECIPE)


def from_recipe(recipe: str = "default", **given) -> "FinetuneOptions":
    """FinetuneOptions of a named recipe: the recipe's values, then the options given (which win)."""
    if recipe not in RECIPES:
        raise LlmclfError(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    return FinetuneOptions(**{**RECIPES[recipe], **given, "recipe": recipe})


DATASETS = ("sms-spam",)
DEVICES = ("auto", "cpu", "cuda", "mps")
BLENDS = ("off", "tfidf", "auto")
SCHEDULES = ("constant", "cosine", "linear")
KEEP_METRICS = ("macro_f1", "accuracy", "loss")
# Smallest allowed value of each integer option.
MINIMUM = {"seed": 0, "patience": 0, "epochs": 1, "batch_size": 1, "grad_accum": 1, "eval_freq": 1, "eval_iter": 1,
           "lora_rank": 1, "checkpoint_every": 0}


def choices() -> dict:
    """The allowed values of each option that takes one of a few words."""
    return {"weights": ("pretrained", "random"), "pooling": (*POOLINGS, "auto"), "trainable": TRAINABLE,
            "cache": ("auto", "on", "off"), "dtype": ("auto", "float32", "bfloat16"),
            "dataset": DATASETS, "recipe": tuple(RECIPES),
            "blend": BLENDS, "schedule": SCHEDULES, "sampler": ("shuffle", "balanced"), "keep": ("last", "best"),
            "keep_metric": KEEP_METRICS, "long_texts": LONG_TEXTS}


def flag(key: str) -> str:
    """How the command line spells an option."""
    return "--" + key.replace("_", "-")


def coerce(key: str, value, name: str):
    """`value` checked against the type of the option's default (ints accepted for floats); `name` is how
    errors call the option. Returns the value in the option's own type."""
    f = FinetuneOptions.__dataclass_fields__[key]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if key == "split":
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise LlmclfError(f"{name} must be two numbers (train, validation), not {value!r}")
        return tuple(float(v) for v in value)
    if key == "context_length":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LlmclfError(f"{name} must be auto, longest, model or a number, not {value!r}")
        return str(value)
    if key == "extra":
        if not isinstance(value, dict):
            raise LlmclfError(f"{name} must be a table, not {value!r}")
        return value
    if key in OPTIONAL_INTS and value is None:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise LlmclfError(f"{name} must be true or false, not {value!r}")
        return value
    if isinstance(default, int) or key in OPTIONAL_INTS:
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


DATA_KEYS = ("dataset", "data_file", "train_file", "validation_file", "test_file", "text_column", "label_column",
             "label_delimiter", "label_columns", "text_pair_column", "balance", "balance_ratio", "stratify", "split", "seed",
             "split_seed")
MODEL_KEYS = ("model", "weights", "tokenizer_dir")


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
    for key in ("seed", "split_seed"):
        value = getattr(opts, key)
        if value is not None and not 0 <= value < 2**32:
            raise LlmclfError(f"{name(key)} must be from 0 to 2**32 - 1, not {value}")
    if not (math.isfinite(opts.cache_memory) and opts.cache_memory >= 0):
        raise LlmclfError(f"{name('cache_memory')} must be a number of GiB, 0 or more, not {opts.cache_memory}")
    if not opts.search_minutes > 0:
        raise LlmclfError(f"{name('search_minutes')} must be a positive number, not {opts.search_minutes}")
    for key, positive in (("lr", True), ("lora_alpha", True), ("weight_decay", False)):
        v = getattr(opts, key)
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise LlmclfError(f"{name(key)} must be a {'positive' if positive else 'non-negative'} number, not {v}")
    if not (math.isfinite(opts.balance_ratio) and opts.balance_ratio >= 1):
        raise LlmclfError(f"{name('balance_ratio')} must be a number of at least 1, not {opts.balance_ratio}")
    if not 0 <= opts.warmup <= 1:
        raise LlmclfError(f"{name('warmup')} must be a fraction from 0 to 1, not {opts.warmup}")
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
    if value in ("auto", "longest", "model"):
        return
    try:
        n = int(value)
    except ValueError:
        raise LlmclfError(f"{name} must be auto, longest, model or a number, not {value!r}") from None
    if n < 1:
        raise LlmclfError(f"{name} must be at least 1, not {n}")


def _check_combinations(opts: FinetuneOptions, name) -> None:
    if opts.train_file and opts.data_file:
        raise LlmclfError(f"{name('train_file')} and {name('data_file')} both name the training data: give one")
    for key in ("validation_file", "test_file"):
        if getattr(opts, key) and not (opts.train_file or opts.data_file):
            raise LlmclfError(f"{name(key)} needs the training data as a file too: {name('train_file')} FILE")
    if opts.label_delimiter == "":
        raise LlmclfError(f"{name('label_delimiter')} must not be empty (e.g. '|' or ',')")
    if opts.label_columns and (opts.label_column or opts.label_delimiter):
        raise LlmclfError(f"{name('label_columns')} names the labels' 0/1 columns: give it without "
                          f"{name('label_column')} and {name('label_delimiter')}")
    if (opts.label_columns or opts.label_delimiter) and not (opts.train_file or opts.data_file):
        raise LlmclfError(f"{name('label_columns' if opts.label_columns else 'label_delimiter')} needs your data as a "
                          f"file: {name('data_file')} FILE")
    if opts.text_pair_column and opts.long_texts != "cut":
        raise LlmclfError(f"{name('long_texts')} {opts.long_texts}: a text pair is cut its own way (longest first); "
                          "use cut")
    if opts.text_pair_column and not (opts.train_file or opts.data_file):
        raise LlmclfError(f"{name('text_pair_column')} needs your data as a file: {name('data_file')} FILE")
    if opts.fsdp and opts.trainable != "all":
        raise LlmclfError(f"{name('fsdp')} needs trainable all (smaller trainable sets fit without sharding)")
    if opts.dtype == "bfloat16" and opts.device == "mps":
        raise LlmclfError(f"{name('dtype')} bfloat16 is not offered on mps; use float32")
    if opts.patience and opts.keep != "best":
        raise LlmclfError(f"{name('patience')} stops at the best epoch so far: it needs {name('keep')} best")
    if opts.keep == "best" and opts.split[1] == 0 and not opts.validation_file:
        raise LlmclfError(f"{name('keep')} best judges each epoch on the validation split: give {name('split')} a "
                          "validation fraction above 0")
    target = parse_target(opts.operating_point)[0]
    if target != "argmax" and opts.split[1] == 0 and not opts.validation_file:
        raise LlmclfError(f"{name('operating_point')} {opts.operating_point} is chosen on the validation split: give "
                          f"{name('split')} a validation fraction above 0")
    if opts.blend != "off" and opts.split[1] == 0:
        raise LlmclfError(f"{name('blend')} {opts.blend} chooses its weight on the validation split: give "
                          f"{name('split')} a validation fraction above 0")
