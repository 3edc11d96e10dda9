"""`llmclf train`: data -> backbone -> classifier -> training -> metrics -> saved run directory.

Everything that can be wrong with the inputs (data, columns, model, run directory) is checked before
the run directory is created, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import LlmclfError
from .options import FinetuneOptions, check_options
from .outdir import check_output_dir, prepare_output_dir


def _log(opts):
    from . import distributed
    quiet = opts.quiet or not distributed.is_main()  # under torchrun only rank 0 reports progress
    return (lambda *a, **k: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def check_launch(opts) -> None:
    """Checks that depend on the torchrun processes (the options themselves: `options.check_options`)."""
    from . import distributed
    distributed.check_global_batch(opts.batch_size)
    if opts.fsdp and not distributed.active():
        raise LlmclfError("--fsdp shards the model over torchrun processes: launch with "
                          "torchrun --nproc_per_node N -m llmclf train ... (N >= 2)")


def bf16_autocast(opts, device: str):
    """The autocast factory for --dtype bfloat16 (None for float32). bfloat16 is mixed precision on every
    device: weights and AdamW state stay float32 (a 5e-5 step is below bfloat16's resolution for most
    weights, which would then never move), and only the forwards run in bfloat16."""
    kind = torch.device(device).type
    if opts.dtype == "float32":
        return None
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlmclfError("--dtype bfloat16: this GPU does not support bfloat16; use --dtype float32")
    if kind not in ("cuda", "cpu"):
        raise LlmclfError(f"--dtype bfloat16 is offered on cpu and cuda, not {kind}; use --dtype float32")
    return lambda: torch.autocast(kind, dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it bf16 is emulated, slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_max_length(option: str, longest: int, model_context: int) -> int:
    if option == "longest":
        return min(longest, model_context)
    if option == "model":
        return model_context
    try:
        n = int(option)
    except ValueError:
        raise LlmclfError(f"--context-length must be longest, model or a number, not {option!r}") from None
    if not 1 <= n <= model_context:
        raise LlmclfError(f"--context-length {n}: must be between 1 and the model's context length {model_context}")
    return n


def load_data(opts):
    from .data import load_sms_spam, prepare_data, read_table

    if opts.data_file is not None:
        df, source = read_table(opts.data_file, opts.text_column, opts.label_column), str(opts.data_file)
    else:
        df, source = load_sms_spam()
    return prepare_data(df, source, balance=opts.balance, split=tuple(opts.split), seed=opts.seed)


def build_classifier(opts, num_classes: int):
    """(TextClassifier, tokenizer, model name) with the requested trainable parameters."""
    from .classifier import TextClassifier, set_trainable
    from .weights import load_backbone

    torch.manual_seed(opts.seed)  # random backbone weights are part of the run: seeded, so runs repeat
    backbone, tokenizer, name = load_backbone(opts.model, opts.weights, opts.tokenizer_dir)
    tokenizer.append_eos = opts.append_eos
    torch.manual_seed(opts.seed)  # the book seeds before creating the class head
    model = TextClassifier(backbone, num_classes, opts.pooling, opts.causal)
    set_trainable(model, opts.trainable, opts.lora_rank, opts.lora_alpha)
    return model, tokenizer, name


def write_history(path: Path, history: list) -> None:
    import pandas as pd
    cols = ["epoch", "step", "examples_seen", "train_loss", "val_loss", "train_acc", "val_acc"]
    pd.DataFrame(history, columns=cols).to_csv(path, index=False)


def write_plots(run_dir: Path, history: list, num_epochs: int) -> None:
    import numpy as np

    from .metrics import plot_values
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
    from . import distributed
    distributed.init()
    run_dir = Path(run_dir)
    saved = distributed.from_main(lambda: _read_run_options(run_dir))
    saved["split"] = tuple(saved["split"])
    opts = FinetuneOptions(**{k: v for k, v in saved.items() if k in FinetuneOptions.__dataclass_fields__})
    opts.out = str(run_dir)
    return finetune(opts, resuming=True, cache_store=cache_store)


def finetune(opts: FinetuneOptions, resuming: bool = False, cache_store=None) -> dict:
    """Run the whole job; returns the metrics written to RUN_DIR/metrics.json.
    `cache_store` (a `train.PrefixCacheStore`): reuse frozen-prefix caches across runs in this process."""
    from . import __version__
    from .artifact import atomic_write_text, save_classifier
    from .classifier import count_parameters
    from .data import ClassificationDataset
    from .metrics import classification_metrics, predict_loader
    from . import distributed
    from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from .train import (Parallel, TrainState, enable_grad_checkpoint, gather_predictions, make_loaders,
                        train_classifier_simple)

    # Under torchrun every rank runs this function; rank 0 alone writes files and reports (see distributed.py).
    distributed.init()
    main = distributed.is_main()
    log = _log(opts)
    out = Path(opts.out)

    distributed.agree(lambda: check_options(opts))
    distributed.from_main(lambda: resuming or check_output_dir(out, "run", opts.overwrite))
    distributed.agree(lambda: check_launch(opts))
    device = distributed.agree(lambda: distributed.device(opts.device))
    autocast = distributed.agree(lambda: bf16_autocast(opts, device))
    amp = autocast or contextlib.nullcontext
    if autocast and torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        log("warning: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16): --dtype bfloat16 will be "
            "slower than float32")
    data = distributed.agree(lambda: load_data(opts))
    t_start = time.perf_counter()  # data ready: train_seconds runs from here to the final metrics
    log(f"data: {data.source}; class counts {data.class_counts}; "
        f"{'balanced, ' if opts.balance else ''}split {len(data.train)}/{len(data.validation)}/{len(data.test)}")
    model, tokenizer, model_name = distributed.agree(lambda: build_classifier(opts, len(data.labels)))
    model.to(device)

    train_ds = ClassificationDataset(data.train, tokenizer, data.labels, limit=model.backbone.cfg.context_length)
    max_length = distributed.agree(lambda: resolve_max_length(opts.context_length, train_ds.max_length,
                                                              model.backbone.cfg.context_length))
    datasets = {"train": train_ds.with_max_length(max_length),  # tokenized once, not twice
                "validation": ClassificationDataset(data.validation, tokenizer, data.labels, max_length),
                "test": ClassificationDataset(data.test, tokenizer, data.labels, max_length)}

    run_dir = None
    if not resuming:
        run_dir = distributed.from_main(lambda: prepare_output_dir(out, "run", opts.overwrite))
    try:
        if main:
            atomic_write_text(out / RUN_OPTIONS, json.dumps(asdict(opts), indent=2))
            for split in ("train", "validation", "test"):
                getattr(data, split).to_csv(out / f"{split}.csv", index=False)
        with amp():
            loaders, cache_info = make_loaders(model, datasets, opts.batch_size, device, seed=opts.seed,
                                               cache=opts.cache, log=log, store=cache_store)
        weight = None
        if opts.class_weights:
            counts = torch.bincount(torch.tensor(datasets["train"].targets), minlength=len(data.labels)).float()
            weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
        n_params, n_trainable = count_parameters(model, False), count_parameters(model)
        if opts.grad_checkpoint:
            log(f"gradient checkpointing: {enable_grad_checkpoint(model)} trainable block(s) recomputed in backward")
        parallel = None
        if distributed.active():
            if opts.fsdp:
                distributed.shard_fsdp(model)  # before the optimizer: it must hold the sharded parameters
                parallel = Parallel(model.forward_batch, distributed.world())
            else:
                ddp = distributed.wrap_ddp(model, device)
                parallel = Parallel(ddp, distributed.world(), ddp.no_sync)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay,
                                      fused=torch.device(device).type in ("cpu", "cuda"))  # one pass over the parameters
        where = f"; {distributed.world()} processes ({'FSDP' if opts.fsdp else 'DDP'})" if parallel else ""
        log(f"model {model_name}: {n_params:,} parameters, "
            f"{n_trainable:,} trainable ({opts.trainable}); device {device}{where}")
        torch.manual_seed(opts.seed)
        state = TrainState()
        keep_checkpoints = not opts.fsdp  # FSDP shards live on every rank: no checkpoint, no --resume
        if opts.fsdp:
            log("--fsdp: no checkpoints are written; an interrupted run starts again")
        if resuming and keep_checkpoints:
            loaded = None
            if not distributed.active():
                if (out / CHECKPOINT).is_file():
                    loaded = load_checkpoint(out, model, optimizer, loaders["train"])
            else:
                loaded = _load_checkpoint_on_every_rank(out, model, optimizer, loaders["train"])
            if loaded is not None:
                state = loaded
                log(f"resuming at epoch {state.epoch + 1}, step {state.global_step + 1}")
        # The time the earlier processes spent up to the checkpoint counts in train_seconds: a resumed row of
        # `llmclf experiment` would otherwise report only its last part.
        earlier_seconds = state.seconds

        def run_seconds():
            return earlier_seconds + time.perf_counter() - t_start

        with _stop_on_ctrl_c() as stop:
            def on_step(st, epoch_end):
                stopping = distributed.any_rank(stop.requested) if parallel else stop.requested
                due = opts.checkpoint_every and st.global_step % opts.checkpoint_every == 0
                if (epoch_end or due or stopping) and keep_checkpoints and main:
                    st.seconds = run_seconds()
                    save_checkpoint(out, model, optimizer, loaders["train"], st)
                if stopping:
                    distributed.barrier()  # no rank leaves before rank 0 has saved
                    if not keep_checkpoints:
                        raise LlmclfError(f"interrupted at step {st.global_step}; --fsdp runs keep no checkpoint")
                    raise TrainingInterrupted(f"interrupted at step {st.global_step}; checkpoint saved; continue "
                                              f"with: llmclf train --resume {out}")

            distributed.test_hook()
            _, _, _, _, examples_seen = train_classifier_simple(
                model, loaders["train"], loaders["validation"], optimizer, device, opts.epochs, opts.eval_freq,
                opts.eval_iter, grad_accum=opts.grad_accum, class_weight=weight, state=state, on_step=on_step,
                log=log, progress=not opts.quiet and main and sys.stderr.isatty(), parallel=parallel,
                autocast=autocast)

        metrics = {"llmclf_version": __version__, "model": model_name, "weights": opts.weights,
                   "data_source": data.source, "labels": data.labels, "class_counts": data.class_counts}
        for split, loader in (("train", "train"), ("validation", "validation"), ("test", "test")):
            full = loaders[loader]
            full.drop_last = False  # metrics over the whole split
            with amp():  # torchrun: each rank predicts its slices, the logits are gathered (whole split)
                logits, targets = predict_loader(full, model) if parallel is None else gather_predictions(full, model)[:2]
            if main:
                metrics[split] = classification_metrics(logits, targets, len(data.labels), with_curves=split == "test")
        train_seconds = run_seconds()
        if earlier_seconds:
            metrics["train_seconds_before_resume"] = round(earlier_seconds, 3)
        metrics.update({"train_seconds": round(train_seconds, 3), "examples_seen": examples_seen,
                        "trainable_parameters": n_trainable, "max_length": max_length,
                        "num_examples": {s: len(d) for s, d in datasets.items()}, **cache_info,
                        "options": {k: v for k, v in asdict(opts).items() if k not in ("quiet", "extra")}})
        if parallel:
            metrics["world_size"] = distributed.world()
        to_save = distributed.full_model_copy(model) if opts.fsdp else model  # FSDP: collective gather
        if main:
            write_history(out / "history.csv", state.history)
            write_plots(out, state.history, opts.epochs)
            save_classifier(to_save, tokenizer, out / "model", labels=data.labels, max_length=max_length,
                            model_name=model_name, extra={"train_metrics": {s: metrics[s] for s in ("train", "validation", "test")}})
            atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))  # written last: marks a complete run
            (out / CHECKPOINT).unlink(missing_ok=True)
            log(f"test accuracy {metrics['test']['accuracy'] * 100:.2f}%  (train {train_seconds:.1f}s) -> {out}")
        return distributed.broadcast_object(metrics if main else None)  # also: no rank returns before rank 0 is done
    except TrainingInterrupted:
        raise
    except LlmclfError:
        if main and run_dir is not None and not (out / CHECKPOINT).exists():
            run_dir.discard()  # nothing worth keeping: leave no half-written run, and nothing else touched
        raise


def _load_checkpoint_on_every_rank(out: Path, model, optimizer, loader):
    """torchrun --resume: rank 0 loads RUN_DIR's checkpoint (checking it) and sends its bytes to the other ranks,
    which load the same bytes from a private temp dir. None when there is no checkpoint."""
    import tempfile

    from . import distributed
    from .checkpoint import CHECKPOINT, load_checkpoint
    loaded = {}

    def read_on_main():
        if not (out / CHECKPOINT).is_file():
            return None
        loaded["state"] = load_checkpoint(out, model, optimizer, loader)
        return (out / CHECKPOINT).read_bytes()

    raw = distributed.from_main(read_on_main)
    if raw is None or distributed.is_main():
        return loaded.get("state")
    with tempfile.TemporaryDirectory(prefix="llmclf-resume-") as tmp:
        (Path(tmp) / CHECKPOINT).write_bytes(raw)
        return load_checkpoint(Path(tmp), model, optimizer, loader)


class _stop_on_ctrl_c:
    """First Ctrl-C asks the loop to checkpoint and stop after the current step; a second one stops at once."""

    def __enter__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        from . import distributed
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
