"""`llmclf train`: data -> backbone -> classifier -> training -> metrics -> saved run directory.

Everything that can be wrong with the inputs (data, columns, model, run directory) is checked before
the run directory is created, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import distributed
from .artifact import save_classifier
from .atomic import atomic_write_text
from .compact import base_identity
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .classifier import TextClassifier, count_parameters, set_trainable
from .baseline import beside_multilabel_run, beside_run, probability_metrics
from .blend import TfidfBlend, choose_weight, mix
from .cache_states import GIB
from .data import ClassificationDataset, data_report, load_data, targets_of, unpair_frame
from .decision import (BINNING, Decision, calibrate, calibration_scores, choose_label_thresholds, choose_threshold,
                       fit_temperature, rates)
from .errors import LlmclfError
from .metrics import (classification_metrics, multilabel_metrics, plot_reliability, plot_roc_pr, plot_values,
                      predict_loader)
from .run_report import write_run_report
from .tensorboard_log import TensorBoardLog, check_available as check_tensorboard
from .options import AUTO_CONTEXT, FinetuneOptions, check_options
from .outdir import check_output_dir, prepare_output_dir
from .precision import (autocast as precision_autocast, cpu_has_native_bf16, fast_float32, onednn_float32_is_faster,
                        resolve_dtype)
from .weights import load_backbone, pretrained_head
from .version import __version__
from .train import (KeepBest, LrSchedule, Parallel, TrainState, enable_grad_checkpoint, gather_predictions, make_loaders,
                    per_text, steps_per_epoch, train_classifier_simple)


def _log(opts):
    quiet = opts.quiet or not distributed.is_main()  # under torchrun only rank 0 reports progress
    return (lambda *a, **k: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def check_launch(opts) -> None:
    """Checks that depend on the torchrun processes (the options themselves: `options.check_options`)."""
    distributed.check_global_batch(opts.batch_size)
    if opts.fsdp and not distributed.active():
        raise LlmclfError("--fsdp shards the model over torchrun processes: launch with "
                          "torchrun --nproc_per_node N -m llmclf train ... (N >= 2)")


def bf16_autocast(opts, device: str):
    """(frozen pass, training) autocast factories, None for float32 (precision.py). bfloat16 is mixed precision:
    float32 weights and AdamW state, bfloat16 forwards. auto takes bfloat16 where it is native, and on a CPU for
    the frozen pass only: the trainable block's small products gained nothing from it here (the book recipe,
    5 epochs: 30.8 s against 30.3 s in float32, each step re-casting the block's weights)."""
    dtype = resolve_dtype(opts.dtype, device)
    if dtype != "bfloat16":
        return None, None
    amp = lambda: precision_autocast(dtype, device)  # noqa: E731
    return amp, (None if opts.dtype == "auto" and torch.device(device).type == "cpu" else amp)


def resolve_max_length(option: str, longest: int, model_context: int) -> int:
    if option == "auto":
        return min(longest, model_context, AUTO_CONTEXT)
    if option == "longest":
        return min(longest, model_context)
    if option == "model":
        return model_context
    try:
        n = int(option)
    except ValueError:
        raise LlmclfError(f"--context-length must be auto, longest, model or a number, not {option!r}") from None
    if not 1 <= n <= model_context:
        raise LlmclfError(f"--context-length {n}: must be between 1 and the model's context length {model_context}")
    return n


def build_classifier(opts, labels, multi_label: bool = False):
    """(TextClassifier, tokenizer, model name) with the requested trainable parameters. A transformers sequence
    classifier trained on these labels gives its `score` as the starting head (zero bias). The head is the one
    the backbone's transformers classifier holds (classifier.py), except that a label-set head keeps its bias:
    each label's prior, often a rare one, lives there, and no export format holds label sets anyway."""
    torch.manual_seed(opts.seed)  # random backbone weights are part of the run: seeded, so runs repeat
    backbone, tokenizer, name = load_backbone(opts.model, opts.weights, opts.tokenizer_dir)
    tokenizer.append_eos = opts.append_eos
    tokenizer.pair = opts.text_pair_column is not None
    tokenizer.long_texts = opts.long_texts
    torch.manual_seed(opts.seed)  # the book seeds before creating the class head
    model = TextClassifier(backbone, len(labels), opts.pooling, opts.causal, head_bias=True if multi_label else None)
    head = pretrained_head(opts.model, labels) if opts.weights == "pretrained" else None
    if head is not None and head.shape == backbone.out_head.weight.shape:
        with torch.no_grad():
            backbone.out_head.weight.copy_(head)
            if backbone.out_head.bias is not None:
                backbone.out_head.bias.zero_()
    set_trainable(model, opts.trainable, opts.lora_rank, opts.lora_alpha)
    return model, tokenizer, name


def write_history(path: Path, history: list, kept_epoch: int | None = None) -> None:
    """history.csv: the book's losses and accuracies as they were logged; with --keep best, `val_score` (the
    epoch's --keep-metric on the whole validation split) and `kept` on the row of the epoch that was saved."""
    cols = ["epoch", "step", "examples_seen", "train_loss", "val_loss", "train_acc", "val_acc"]
    df = pd.DataFrame(history, columns=cols + (["val_score"] if any("val_score" in h for h in history) else []))
    if "val_score" in df:
        df["kept"] = df["val_score"].notna() & (df["epoch"] == kept_epoch)
    df.to_csv(path, index=False)


def write_plots(run_dir: Path, history: list, num_epochs: int) -> None:
    losses = [h for h in history if "train_loss" in h]
    accs = [h for h in history if "train_acc" in h]
    if losses:
        epochs = np.linspace(0, num_epochs, len(losses))
        plot_values(epochs, [h["examples_seen"] for h in losses], [h["train_loss"] for h in losses],
                    [h["val_loss"] for h in losses], "loss", run_dir / "loss.png")
    if accs:
        epochs = np.linspace(0, num_epochs, len(accs))
        plot_values(epochs, [h["examples_seen"] for h in accs], [h["train_acc"] for h in accs],
                    [h["val_acc"] for h in accs], "accuracy", run_dir / "accuracy.png")


class TrainingInterrupted(LlmclfError):
    """Ctrl-C during training: the checkpoint is saved and the run can be resumed."""


RUN_OPTIONS = "run.json"


def _read_run_options(run_dir: Path) -> dict:
    if (run_dir / "metrics.json").is_file():
        raise LlmclfError(f"{run_dir}: run already complete (metrics.json exists); nothing to resume")
    f = run_dir / RUN_OPTIONS
    if not f.is_file():
        raise LlmclfError(f"{run_dir}: not a resumable run directory (no {RUN_OPTIONS})")
    return json.loads(f.read_text())


def resume(run_dir, cache_store=None) -> dict:
    """Continue a run from RUN_DIR/checkpoint.safetensors with the options it was started with.
    Under torchrun, rank 0 reads the run directory and sends the options and checkpoint to the others."""
    distributed.init()
    run_dir = Path(run_dir)
    opts = saved_options(distributed.from_main(lambda: _read_run_options(run_dir)), run_dir)
    return finetune(opts, resuming=True, cache_store=cache_store)


def saved_options(saved: dict, run_dir) -> FinetuneOptions:
    """The options a run directory recorded (run.json, search.json), to continue it in run_dir."""
    known = {k: v for k, v in saved.items() if k in FinetuneOptions.__dataclass_fields__}
    return FinetuneOptions(**{**known, "split": tuple(known["split"]), "out": str(run_dir)})


@dataclass
class Job:
    """What the steps of one run share: its options, where it writes, how it reports, where it computes.
    Under torchrun every rank holds one; rank 0 (`main`) alone writes files and reports."""
    opts: FinetuneOptions
    out: Path
    log: Callable
    device: str
    autocast: Callable | None         # training's and evaluation's forwards
    main: bool
    frozen_autocast: Callable | None = None  # the frozen pass's

    @property
    def pair(self) -> bool:
        """A text-pair task (--text-pair-column): each text holds two, joined."""
        return self.opts.text_pair_column is not None

    def amp(self):
        """The forwards' precision context (bfloat16 autocast, or nothing)."""
        return self.autocast() if self.autocast else contextlib.nullcontext()

    def frozen_amp(self):
        """The frozen pass's precision context."""
        return self.frozen_autocast() if self.frozen_autocast else contextlib.nullcontext()


def setup(opts: FinetuneOptions, resuming: bool) -> Job:
    """Check the options and the run directory (before anything is written) and pick device and precision."""
    log = _log(opts)
    distributed.agree(lambda: check_options(opts))
    if not opts.out:
        raise LlmclfError("--out RUN_DIR is required (or --resume RUN_DIR)")
    out = Path(opts.out)
    distributed.from_main(lambda: resuming or check_output_dir(out, "run", opts.overwrite))
    distributed.agree(lambda: check_launch(opts))
    if opts.tensorboard:
        distributed.agree(check_tensorboard)
    device = distributed.agree(lambda: distributed.device(opts.device))
    frozen, autocast = distributed.agree(lambda: bf16_autocast(opts, device))
    if frozen and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        log("warning: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16): --dtype bfloat16 will be "
            "slower than float32")
    return Job(opts, out, log, device, autocast, distributed.is_main(), frozen)


def tokenize_splits(job: Job, data, model, tokenizer) -> tuple[dict, int]:
    """The three splits as token ids, cut to the run's max length (the training split is tokenized once)."""
    context = model.backbone.cfg.context_length
    train = ClassificationDataset(data.train, tokenizer, data.labels, limit=context)
    max_length = distributed.agree(lambda: resolve_max_length(job.opts.context_length, train.max_length, context))
    return {"train": train.with_max_length(max_length),
            "validation": ClassificationDataset(data.validation, tokenizer, data.labels, max_length),
            "test": ClassificationDataset(data.test, tokenizer, data.labels, max_length)}, max_length


def write_split(job: Job, data, report: dict) -> None:
    """The options (what --resume continues with), the data report and the split, first in the run directory."""
    if job.main:
        atomic_write_text(job.out / RUN_OPTIONS, json.dumps(asdict(job.opts), indent=2))
        atomic_write_text(job.out / "data.json", json.dumps(report, indent=2, ensure_ascii=False))
        for split in ("train", "validation", "test"):
            unpair_frame(getattr(data, split), job.pair).to_csv(job.out / f"{split}.csv", index=False)


def say_cuts(job: Job, report: dict) -> None:
    """One line before training: how many texts the cut at max_length shortens (none is silent)."""
    if not report:
        return
    parts = []
    for split, r in report["splits"].items():
        t = r["tokens"]
        if t.get("cut"):
            parts.append(f"{split} {t['cut']} of {t['texts']} ({100 * t['cut_share']:.1f}%, "
                         f"{100 * t['tokens_dropped_share']:.1f}% of tokens)")
    how = {"cut": "", "head_tail": "; --long-texts head_tail: their middle is dropped",
           "windows": "; --long-texts windows: read as windows, up to 16 each"}[job.opts.long_texts]
    job.log(f"max_length {report['max_length']} tokens: " + ("texts over it: " + "; ".join(parts) + how if parts else
                                                             "no text is cut") + " (data.json)")


def class_weight(job: Job, dataset, num_classes: int):
    """Inverse class frequency of the training split (--class-weights), or None."""
    if not job.opts.class_weights:
        return None
    counts = torch.bincount(torch.tensor(dataset.targets), minlength=num_classes).float()
    return (counts.sum() / (len(counts) * counts.clamp(min=1))).to(job.device)


def wrap_for_parallelism(job: Job, model):
    """Under torchrun, the model wrapped for DDP (or sharded by FSDP); None in one process."""
    if job.opts.grad_checkpoint:
        job.log(f"gradient checkpointing: {enable_grad_checkpoint(model)} trainable block(s) recomputed in backward")
    if not distributed.active():
        return None
    if job.opts.fsdp:
        distributed.shard_fsdp(model)  # before the optimizer: it must hold the sharded parameters
        return Parallel(model.forward_batch, distributed.world())
    ddp = distributed.wrap_ddp(model, job.device)
    return Parallel(ddp, distributed.world(), ddp.no_sync)


def make_optimizer(job: Job, model):
    """The book's AdamW over the trainable parameters (fused: one pass over them, on CPU and CUDA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=job.opts.lr, weight_decay=job.opts.weight_decay,
                             fused=torch.device(job.device).type in ("cpu", "cuda"))


def restore(job: Job, model, optimizer, loader, resuming: bool, keeper: KeepBest | None = None) -> TrainState:
    """The training state to start from: the checkpoint's when resuming (and there is one), else a fresh one.
    keeper (--keep best) gets back the checkpoint's copy of the best epoch's weights."""
    best = keeper.weights if keeper is not None else None
    torch.manual_seed(job.opts.seed)
    if job.opts.fsdp:
        job.log("--fsdp: no checkpoints are written; an interrupted run starts again")
    if not resuming or job.opts.fsdp:
        return TrainState()
    if distributed.active():
        loaded = _load_checkpoint_on_every_rank(job.out, model, optimizer, loader, best)
    else:
        loaded = load_checkpoint(job.out, model, optimizer, loader, best) if (job.out / CHECKPOINT).is_file() else None
    if loaded is None:
        return TrainState()
    job.log(f"resuming at epoch {loaded.epoch + 1}, step {loaded.global_step + 1}")
    return loaded


class Clock:
    """Run time from data ready, plus the time earlier processes spent up to the checkpoint: a resumed row of
    `llmclf experiment` would otherwise report only its last part."""

    def __init__(self, start: float, earlier: float = 0.0):
        self.start, self.earlier = start, earlier

    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.start


class CheckpointOnStep:
    """The loop's on_step: a checkpoint every --checkpoint-every steps, at each epoch end and on Ctrl-C (then
    stop). FSDP shards live on every rank: such runs keep no checkpoint."""

    def __init__(self, job: Job, model, optimizer, loader, clock: Clock, stop, parallel, keeper=None, board=None):
        self.job, self.model, self.optimizer, self.loader = job, model, optimizer, loader
        self.clock, self.stop, self.parallel, self.keeper, self.board = clock, stop, parallel, keeper, board
        self.keep = not job.opts.fsdp

    def __call__(self, st: TrainState, epoch_end: bool) -> None:
        stopping = distributed.any_rank(self.stop.requested) if self.parallel else self.stop.requested
        if self.board is not None:
            self.board.write(st.history)
        every = self.job.opts.checkpoint_every
        if (epoch_end or (every and st.global_step % every == 0) or stopping) and self.keep and self.job.main:
            st.seconds = self.clock.seconds()
            save_checkpoint(self.job.out, self.model, self.optimizer, self.loader, st,
                            self.keeper.weights if self.keeper is not None else None)
        if stopping:
            distributed.barrier()  # no rank leaves before rank 0 has saved
            if not self.keep:
                raise LlmclfError(f"interrupted at step {st.global_step}; --fsdp runs keep no checkpoint")
            raise TrainingInterrupted(f"interrupted at step {st.global_step}; checkpoint saved; continue "
                                      f"with: llmclf train --resume {self.job.out}")


def fit(job: Job, model, optimizer, loaders, state: TrainState, parallel, weight, clock: Clock,
        keeper: KeepBest | None = None) -> int:
    """Chapter 6's training loop, checkpointing as it goes; with --keep best the best epoch's weights are put
    back at the end. Returns the examples seen."""
    o = job.opts
    board = TensorBoardLog(job.out, len(state.history)) if o.tensorboard and job.main else None
    with _stop_on_ctrl_c() as stop, contextlib.closing(board) if board else contextlib.nullcontext():
        on_step = CheckpointOnStep(job, model, optimizer, loaders["train"], clock, stop, parallel, keeper, board)
        distributed.test_hook()
        seen = train_classifier_simple(
            model, loaders["train"], loaders["validation"], optimizer, job.device, o.epochs, o.eval_freq,
            o.eval_iter, grad_accum=o.grad_accum, class_weight=weight, state=state, on_step=on_step,
            log=job.log, progress=not o.quiet and job.main and sys.stderr.isatty(), parallel=parallel,
            autocast=job.autocast, schedule=lr_schedule(o, len(loaders["train"])), keeper=keeper)[4]
    if keeper is not None:
        keeper.restore(model)
        job.log(f"kept epoch {state.best_epoch} of {state.epoch} (validation {o.keep_metric} {state.best_value:.4f})")
    return seen


def kept_section(o: FinetuneOptions, state: TrainState) -> dict:
    """metrics.json's `kept`: which weights were saved, and by what."""
    if o.keep == "last":
        return {"weights": "last", "epoch": state.epoch, "epochs_run": state.epoch}
    return {"weights": "best", "by": f"validation {o.keep_metric}", "epoch": state.best_epoch,
            "value": state.best_value, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
            "patience": o.patience}


def lr_schedule(o: FinetuneOptions, n_batches: int) -> LrSchedule | None:
    """--warmup/--schedule as a per-step learning rate; None for the book's constant rate."""
    if o.schedule == "constant" and not o.warmup:
        return None
    return LrSchedule(o.lr, o.epochs * steps_per_epoch(n_batches, o.grad_accum), o.warmup, o.schedule)


def windows_info(datasets: dict) -> dict:
    """--long-texts windows: how many windows each split's texts became (what training and evaluation read)."""
    if all(d.owner is None for d in datasets.values()):
        return {}
    return {"windows": {s: len(d) for s, d in datasets.items()}}


def evaluate(job: Job, model, loaders, parallel, num_classes: int) -> tuple[dict, dict]:
    """(metrics, logits) over the whole of each split (under torchrun each rank predicts its slices, then they
    are gathered); only rank 0 holds them. The logits (float32, CPU) are what a blend is chosen from."""
    metrics, all_logits = {}, {}
    for split in ("train", "validation", "test"):
        full = loaders[split]
        full.drop_last = False
        with job.amp():
            logits, targets = predict_loader(full, model) if parallel is None else gather_predictions(full, model)[:2]
            logits, targets = per_text(full, logits, targets)  # --long-texts windows: a text's windows combined
        if job.main:
            metrics[split] = classification_metrics(logits, targets, num_classes, with_curves=split == "test")
            all_logits[split] = logits.float().cpu()
    return metrics, all_logits


def misclassified(test, probs, pred, labels) -> pd.DataFrame:
    """errors.csv: the test texts the saved classifier gets wrong (its decisions `pred`, its calibrated
    probabilities), with the true and the predicted label and their probabilities, the most confident
    mistakes first (the ones to look at)."""
    probs = np.asarray(probs, dtype=np.float64)
    true = np.array([labels.index(v) for v in test["label"]])
    wrong = np.flatnonzero(pred != true)
    rows = pd.DataFrame({"text": test["text"].to_numpy()[wrong], "label": [labels[i] for i in true[wrong]],
                         "predicted": [labels[i] for i in pred[wrong]], "probability": probs[wrong, pred[wrong]],
                         "label_probability": probs[wrong, true[wrong]]})
    return rows.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def misclassified_sets(test, probs, decision: Decision, labels) -> pd.DataFrame:
    """errors.csv for label sets: the test texts whose predicted set differs from the true one, with both sets
    and the labels missed and added, the most wrong first."""
    true = np.array(targets_of(test, labels)).reshape(len(test), -1) > 0.5
    pred = decision.choose_sets(probs)
    wrong = np.flatnonzero((pred != true).any(1))

    def names(row):
        return json.dumps([lab for lab, on in zip(labels, row) if on], ensure_ascii=False)

    rows = pd.DataFrame({"text": test["text"].to_numpy()[wrong], "label": [names(true[i]) for i in wrong],
                         "predicted": [names(pred[i]) for i in wrong],
                         "missed": [names(true[i] & ~pred[i]) for i in wrong],
                         "added": [names(pred[i] & ~true[i]) for i in wrong],
                         "wrong_labels": (pred != true)[wrong].sum(1)})
    return rows.sort_values("wrong_labels", ascending=False, kind="stable").reset_index(drop=True)


def saved_probabilities(logits: dict, blend, data) -> dict:
    """The saved classifier's class probabilities (float64) per split, before calibration: the LLM's, or its
    blend with TF-IDF."""
    out = {}
    for split, lg in logits.items():
        p = torch.softmax(lg.double(), -1).numpy()
        out[split] = blend.apply(p, getattr(data, split)["text"].tolist()) if blend is not None else p
    return out


def check_multi_label(job: Job, data) -> None:
    """Label sets: refuse the options that choose among single classes; say what the run does instead."""
    o = job.opts
    if not data.multi_label:
        return
    refused = [(o.operating_point != "argmax", f"--operating-point {o.operating_point}"),
               (o.sampler == "balanced", "--sampler balanced"), (o.class_weights, "--class-weights"),
               (o.blend == "tfidf", "--blend tfidf"), (o.long_texts == "windows", "--long-texts windows")]
    for bad, what in refused:
        if bad:
            raise LlmclfError(f"{what} is for single-label data; {data.source} gives each text a set of labels")
    job.log(f"multi-label: {len(data.labels)} labels; sigmoid outputs, binary cross-entropy, a threshold per label "
            "chosen on validation (no calibration, no TF-IDF blend)")


def positive_class(opts, labels) -> int:
    """The class index --operating-point is about (checked before the run directory is made)."""
    if opts.operating_point != "argmax" and len(labels) != 2:
        shown = ", ".join(map(str, labels[:5])) + (", ..." if len(labels) > 5 else "")
        raise LlmclfError(f"--operating-point {opts.operating_point} chooses a threshold between two classes; this "
                          f"data has {len(labels)} ({shown})")
    if opts.positive_label is None:
        return min(1, len(labels) - 1)
    if opts.positive_label not in labels:
        raise LlmclfError(f"--positive-label {opts.positive_label!r} is not a label of this data "
                          f"({', '.join(map(str, labels[:10]))})")
    return labels.index(opts.positive_label)


def fit_calibration(job: Job, probs: dict, targets: dict) -> tuple[float, dict | None]:
    """(temperature, metrics.json's `calibration`): T fitted on validation by NLL and kept only if validation
    ECE is no worse; ECE, Brier score and NLL before and after, on every split."""
    y_val = targets["validation"]
    if not job.opts.calibrate or not len(y_val):
        if job.opts.calibrate:
            job.log("calibration: skipped, the validation split is empty")
        return 1.0, None
    fitted = fit_temperature(probs["validation"], y_val)
    ece_before = calibration_scores(probs["validation"], y_val)["ece"]
    ece_fitted = calibration_scores(calibrate(probs["validation"], fitted), y_val)["ece"]
    kept = ece_fitted <= ece_before + 1e-12
    t = fitted if kept else 1.0
    section = {"method": "temperature scaling of the log-probabilities, fitted on validation by NLL",
               "temperature": t, "fitted_temperature": fitted, "kept": kept, "binning": BINNING}
    for split, p in probs.items():
        section[split] = {"before": calibration_scores(p, targets[split]),
                          "after": calibration_scores(calibrate(p, t), targets[split])}
    job.log(f"calibration: temperature {fitted:.3f} fitted on validation, ECE {ece_before:.4f} -> {ece_fitted:.4f}"
            + ("" if kept else "; not kept (validation ECE would rise)"))
    return t, section


def choose_operating_point(job: Job, calibrated: dict, targets: dict, labels, positive: int):
    """(threshold or None, metrics.json's `operating_point`): the threshold for --operating-point on the
    calibrated validation probabilities, and the test figures at it beside those at 0.5."""
    target = job.opts.operating_point
    if target == "argmax":
        return None, None
    score = {s: p[:, positive] for s, p in calibrated.items()}
    is_pos = {s: np.asarray(y) == positive for s, y in targets.items()}
    threshold, met = choose_threshold(score["validation"], is_pos["validation"], target)
    section = {"target": target, "positive_label": labels[positive], "threshold": threshold,
               "met_on_validation": met, "validation": rates(score["validation"], is_pos["validation"], threshold),
               "test": {"at_threshold": rates(score["test"], is_pos["test"], threshold),
                        "at_0.5": rates(score["test"], is_pos["test"], 0.5)}}
    at = section["test"]["at_threshold"]
    job.log(f"operating point {target} for {labels[positive]!r}: threshold {threshold:.4f}"
            + ("" if met else " (target not met on validation: 0.5 kept)")
            + f"; test precision {at['precision']:.4f} recall {at['recall']:.4f} "
            f"false-positive rate {at['false_positive_rate']:.4f}")
    return threshold, section


def choose_label_decision(job: Job, data, logits: dict, targets: dict):
    """Multi-label, rank 0: one threshold per label chosen on validation (its best F1); the splits' metrics at
    those thresholds (the saved classifier's), and at 0.5 beside them."""
    probs = {s: torch.sigmoid(lg.double()).numpy() for s, lg in logits.items()}
    y_val = targets["validation"]
    thresholds = choose_label_thresholds(probs["validation"], y_val) if len(y_val) else [0.5] * len(data.labels)
    sections = {s: multilabel_metrics(p, targets[s], thresholds) for s, p in probs.items() if len(targets[s])}
    sections["at_0.5"] = {s: multilabel_metrics(p, targets[s]) for s, p in probs.items() if len(targets[s])}
    sections["thresholds"] = dict(zip(data.labels, thresholds))
    job.log("multi-label: thresholds per label chosen on validation (best F1): "
            + ", ".join(f"{lab} {t:.2f}" for lab, t in list(sections["thresholds"].items())[:8])
            + (", ..." if len(thresholds) > 8 else ""))
    return Decision(thresholds=tuple(thresholds)), sections, probs


def choose_decision(job: Job, data, logits: dict, blend, targets: dict, positive: int):
    """Rank 0: (the saved classifier's decision rule, what metrics.json says of it, the calibrated
    probabilities per split)."""
    if data.multi_label:
        return choose_label_decision(job, data, logits, targets)
    probs = saved_probabilities(logits, blend, data)
    temperature, cal = fit_calibration(job, probs, targets)
    calibrated = {s: calibrate(p, temperature) for s, p in probs.items()}
    threshold, op = choose_operating_point(job, calibrated, targets, data.labels, positive)
    sections = {k: v for k, v in (("calibration", cal), ("operating_point", op)) if v is not None}
    decision = Decision(temperature, threshold, positive, job.opts.operating_point)
    write_decision_plots(job.out, probs["test"], calibrated["test"], targets["test"], decision, data.labels)
    return decision, sections, calibrated


def write_decision_plots(out: Path, raw, calibrated, targets, decision: Decision, labels) -> None:
    """calibration.png (test reliability before and after) and, for two classes, curves.png (test ROC and
    precision-recall with the operating point marked: the threshold, or 0.5 for the argmax)."""
    if not len(targets):
        return
    plot_reliability(raw, calibrated, targets, out / "calibration.png")
    if len(labels) == 2 and len(np.unique(targets)) == 2:
        threshold = 0.5 if decision.threshold is None else decision.threshold
        plot_roc_pr(calibrated[:, decision.positive], np.asarray(targets) == decision.positive, threshold,
                    out / "curves.png", str(labels[decision.positive]))


def save_run(job: Job, model, tokenizer, metrics: dict, state: TrainState, labels, max_length: int,
             blend=None, errors=None, decision: Decision | None = None) -> None:
    """History, plots, the classifier (with its blend, if any), and metrics.json last: its presence marks a
    complete run."""
    to_save = distributed.full_model_copy(model) if job.opts.fsdp else model  # FSDP: a collective gather
    if not job.main:
        return
    write_history(job.out / "history.csv", state.history, state.best_epoch)
    write_plots(job.out, state.history, job.opts.epochs)
    errors.to_csv(job.out / "errors.csv", index=False)
    save_classifier(to_save, tokenizer, job.out / "model", labels=labels, max_length=max_length,
                    model_name=metrics["model"], blend=blend,
                    base=None if job.opts.standalone else base_identity(job.opts.model, job.opts.weights),
                    extra={"train_metrics": {s: metrics[s] for s in ("train", "validation", "test")},
                           "decision": (decision or Decision()).to_config(),
                           **({"multi_label": True} if decision is not None and decision.thresholds else {}),
                           **({"text_pair": {"text_column": job.opts.text_column,
                                             "text_pair_column": job.opts.text_pair_column}} if job.pair else {})})
    write_run_report(job.out, metrics)
    atomic_write_text(job.out / "metrics.json", json.dumps(metrics, indent=2))
    (job.out / CHECKPOINT).unlink(missing_ok=True)
    kind = "subset accuracy" if metrics["test"].get("multi_label") else "accuracy"
    job.log(f"test {kind} {metrics['test']['accuracy'] * 100:.2f}%  (train {metrics['train_seconds']:.1f}s) "
            f"-> {job.out}")
    if blend is not None:
        b = metrics["blend"]
        job.log(f"saved classifier: blend w={b['weight']:.1f} LLM + TF-IDF, test accuracy "
                f"{b['test']['accuracy'] * 100:.2f}% (LLM alone {metrics['test']['accuracy'] * 100:.2f}%)")


def compare_with_baseline(job: Job, metrics: dict, base: dict) -> dict:
    """TF-IDF + logistic regression on the same split (it takes seconds), said beside the run's own figures;
    when it beats the run on validation macro-F1 the output says so plainly, and so does metrics.json."""
    ours, theirs = metrics["validation"].get("macro_f1"), base["validation"].get("macro_f1")
    base["wins_on_validation"] = bool(theirs is not None and ours is not None and theirs > ours)
    job.log(f"baseline {base['model']} on the same split: validation macro-F1 {theirs:.4f} (this run {ours:.4f}), "
            f"test accuracy {base['test']['accuracy'] * 100:.2f}% (this run {metrics['test']['accuracy'] * 100:.2f}%)")
    if base["wins_on_validation"] and job.opts.blend != "off" and not (metrics["test"] or {}).get("multi_label"):
        job.log(f"note: {base['model']} beats the LLM alone on validation; the blend below weighs the two on it")
    elif base["wins_on_validation"]:
        job.log(f"note: {base['model']} beats this run on validation; for this data it is the better classifier "
                "until a recipe beats it (see `llmclf experiment`, `--recipe auto`, `--blend auto`)")
    return base


def choose_blend(job: Job, logits: dict, kept: dict, num_classes: int):
    """(TfidfBlend to save or None, metrics.json's `blend`): w on the 0.1 grid by validation macro-F1, ties to
    the larger w; `--blend auto` saves nothing when w is 1 (the LLM alone)."""
    p_llm = {s: torch.softmax(logits[s].double(), -1).numpy() for s in ("validation", "test")}
    (p_val, y_val), (p_test, y_test) = kept["validation"], kept["test"]
    if not len(y_val):
        raise LlmclfError(f"--blend {job.opts.blend}: the validation split is empty; nothing to choose the weight on")
    w, scores = choose_weight(p_llm["validation"], p_val, y_val, num_classes)
    keep = job.opts.blend == "tfidf" or w < 1.0
    section = {"weight": w, "saved": keep, "method": "TF-IDF + logistic regression",
               "validation_macro_f1": {f"{g:.1f}": round(f, 6) for g, f in scores.items()}}
    for split, p_tf, y in (("validation", p_val, y_val), ("test", p_test, y_test)):
        section[split] = probability_metrics(mix(p_llm[split], p_tf, w), y, num_classes, split == "test") if len(y) else {}
    job.log(f"blend: w={w:.1f} (validation macro-F1 {scores[w]:.4f}; LLM alone {scores[1.0]:.4f}, TF-IDF alone "
            f"{scores[0.0]:.4f}); " + ("saved with the classifier" if keep else "the LLM alone is kept"))
    return (TfidfBlend(kept["pipeline"], w, num_classes) if keep else None), section


def baseline_and_blend(job: Job, data, metrics: dict, logits: dict):
    """Rank 0, after training: the TF-IDF baseline beside the run and the blend with it (one fit for both).
    Returns the TfidfBlend to save, or None."""
    opts = job.opts
    if not job.main or not (opts.baseline or opts.blend != "off"):
        return None
    if data.multi_label:  # no blend for label sets; the baseline is compared once the thresholds are chosen
        if opts.baseline:
            metrics["baseline"] = beside_multilabel_run(data, opts.seed)
        return None
    base, kept = beside_run(data, opts.seed, keep=True)
    if opts.baseline:
        metrics["baseline"] = compare_with_baseline(job, metrics, base)
    if opts.blend == "off":
        return None
    blend, metrics["blend"] = choose_blend(job, logits, kept, len(data.labels))
    return blend


def run_summary(job: Job, data, model_name: str, info: dict, clock: Clock) -> dict:
    """What metrics.json says besides the per-split metrics."""
    summary = {"llmclf_version": __version__, "model": model_name, "weights": job.opts.weights,
               "data_source": data.source, "labels": data.labels, "class_counts": data.class_counts}
    if clock.earlier:
        summary["train_seconds_before_resume"] = round(clock.earlier, 3)
    summary.update({"train_seconds": round(clock.seconds(), 3), **info,
                    "options": {k: v for k, v in asdict(job.opts).items() if k not in ("quiet", "extra")}})
    if distributed.active():
        summary["world_size"] = distributed.world()
    return summary


def decide(job: Job, data, datasets: dict, metrics: dict, logits: dict, blend, positive: int):
    """Rank 0: (the saved decision rule, errors.csv's rows); metrics gets what is said of the decision."""
    targets = {s: np.asarray(d.text_targets) for s, d in datasets.items()}
    decision, sections, calibrated = choose_decision(job, data, logits, blend, targets, positive)
    metrics.update(sections)
    if data.multi_label and "baseline" in metrics:  # both at thresholds chosen on validation
        metrics["baseline"] = compare_with_baseline(job, metrics, metrics["baseline"])
    errors = (misclassified_sets(data.test, calibrated["test"], decision, data.labels) if data.multi_label
              else misclassified(data.test, calibrated["test"], decision.choose(calibrated["test"]), data.labels))
    return decision, unpair_frame(errors, job.pair)


def finetune(opts: FinetuneOptions, resuming: bool = False, cache_store=None) -> dict:
    """Run the whole job, the chapter's steps in order; returns the metrics written to RUN_DIR/metrics.json.
    `cache_store` (a `train.PrefixCacheStore`): reuse frozen-prefix caches across runs in this process."""
    if opts.pooling == "auto":  # a choice between runs, made by search.train, which calls this once per pooling
        raise LlmclfError("finetune() trains one pooling; for --pooling auto (the default) call "
                          "llmclf.search.train(opts), or give pooling='mean' or 'last_nonpad'")
    distributed.init()
    job = setup(opts, resuming)
    data = distributed.agree(lambda: load_data(opts))
    check_multi_label(job, data)
    positive = positive_class(opts, data.labels)
    t_start = time.perf_counter()  # data ready: train_seconds runs from here to the final metrics
    balanced = opts.balance and not data.multi_label  # label sets are never undersampled
    job.log(f"data: {data.source}; class counts {data.class_counts}; "
            f"{'balanced, ' if balanced else ''}split {len(data.train)}/{len(data.validation)}/{len(data.test)}")
    model, tokenizer, model_name = distributed.agree(lambda: build_classifier(opts, data.labels, data.multi_label))
    model.to(job.device)
    if not opts.fsdp and torch.device(job.device).type == "cpu":  # (FSDP's sharded parameters: nn.Linear's path)
        fast_float32(model, distributed.from_main(onednn_float32_is_faster))  # every rank the same kernel
    datasets, max_length = tokenize_splits(job, data, model, tokenizer)
    report = data_report(data, tokenizer, max_length, balanced) if job.main else {}
    say_cuts(job, report)
    run_dir = None if resuming else distributed.from_main(lambda: prepare_output_dir(job.out, "run", opts.overwrite))
    try:
        write_split(job, data, report)
        with job.frozen_amp():
            loaders, cache_info = make_loaders(model, datasets, opts.batch_size, job.device, seed=opts.seed,
                                               cache=opts.cache, log=job.log, store=cache_store, sampler=opts.sampler,
                                               memory_budget=opts.cache_memory * GIB,
                                               progress=not opts.quiet and job.main and sys.stderr.isatty())
        n_params, n_trainable = count_parameters(model, False), count_parameters(model)
        parallel = wrap_for_parallelism(job, model)
        optimizer = make_optimizer(job, model)
        where = f"; {distributed.world()} processes ({'FSDP' if opts.fsdp else 'DDP'})" if parallel else ""
        job.log(f"model {model_name}: {n_params:,} parameters, {n_trainable:,} trainable ({opts.trainable}); "
                f"device {job.device}{where}")
        keeper = KeepBest(opts.keep_metric, opts.patience) if opts.keep == "best" else None
        state = restore(job, model, optimizer, loaders["train"], resuming, keeper)
        clock = Clock(t_start, state.seconds)
        weight = class_weight(job, datasets["train"], len(data.labels))
        examples_seen = fit(job, model, optimizer, loaders, state, parallel, weight, clock, keeper)
        metrics, logits = evaluate(job, model, loaders, parallel, len(data.labels))
        blend = baseline_and_blend(job, data, metrics, logits)
        metrics.update(run_summary(job, data, model_name, {
            "examples_seen": examples_seen, "kept": kept_section(opts, state), "trainable_parameters": n_trainable,
            "max_length": max_length,
            "num_examples": {s: len(d.text_targets) for s, d in datasets.items()}, **windows_info(datasets),
            **cache_info}, clock))
        decision, errors = decide(job, data, datasets, metrics, logits, blend, positive) if job.main else (None, None)
        save_run(job, model, tokenizer, metrics, state, data.labels, max_length, blend, errors, decision)
        return distributed.broadcast_object(metrics if job.main else None)  # no rank returns before rank 0 is done
    except TrainingInterrupted:
        raise
    except LlmclfError:
        if job.main and run_dir is not None and not (job.out / CHECKPOINT).exists():
            run_dir.discard()  # nothing worth keeping: leave no half-written run, and nothing else touched
        raise


def _load_checkpoint_on_every_rank(out: Path, model, optimizer, loader, best=None):
    """torchrun --resume: rank 0 loads RUN_DIR's checkpoint (checking it) and sends its bytes to the other ranks,
    which load the same bytes from a private temp dir. None when there is no checkpoint."""
    loaded = {}

    def read_on_main():
        if not (out / CHECKPOINT).is_file():
            return None
        loaded["state"] = load_checkpoint(out, model, optimizer, loader, best)
        return (out / CHECKPOINT).read_bytes()

    raw = distributed.from_main(read_on_main)
    if raw is None or distributed.is_main():
        return loaded.get("state")
    with tempfile.TemporaryDirectory(prefix="llmclf-resume-") as tmp:
        (Path(tmp) / CHECKPOINT).write_bytes(raw)
        return load_checkpoint(Path(tmp), model, optimizer, loader, best)


class _stop_on_ctrl_c:
    """First Ctrl-C asks the loop to checkpoint and stop after the current step; a second one stops at once."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            # Under torchrun one Ctrl-C arrives twice (from the terminal, then forwarded by torchrun): a second
            # signal within 2 s is that echo, not a second Ctrl-C.
            if distributed.active() and time.monotonic() - self._first < 2.0:
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, time.monotonic()
        if distributed.is_main():
            print("llmclf: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False
