"""A saved classifier as an ONNX graph that onnxruntime runs on a CPU, for `llmclf export --format onnx` and for
`--backend onnx` (predict, evaluate, serve).

The graph takes `input_ids` and `attention_mask` (int64, batch x sequence, right padding: 1 on real tokens, as
a Hugging Face tokenizer gives them) and returns `logits` (the class head's), `probabilities` (calibrated with
the saved temperature) and `label` (the class index the saved decision picks: argmax or the threshold). Batch
and sequence are dynamic axes. Every pooling and mask exports: the graph is the same torch code, traced by
torch.export; only the shortcut that projects keys and values at real tokens alone is skipped while exporting
(shapes must not depend on the data; padded keys are masked either way). Each export is checked against the
torch model on a padded batch before it is used or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from .errors import LlmclfError

INPUTS, OUTPUTS = ("input_ids", "attention_mask"), ("logits", "probabilities", "label")
SINGLE_FILE_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger graphs keep their weights in model.onnx.data


class ClassifierGraph(nn.Module):
    """What the graph computes, from what a tokenizer gives: the classifier's logits, then the saved decision."""

    def __init__(self, model, decision):
        super().__init__()
        self.model, self.decision = model, decision

    def forward(self, input_ids, attention_mask):
        logits = self.model(input_ids, attention_mask.sum(-1))
        probs = torch.softmax(logits / self.decision.temperature, -1)
        d = self.decision
        if d.threshold is None:
            label = probs.argmax(-1)
        else:
            label = torch.where(probs[:, d.positive] >= d.threshold, d.positive, 1 - d.positive)
        return logits, probs, label


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise LlmclfError(f"ONNX needs the {module} package: pip install 'llmclf[onnx]'") from None


def export_graph(model, decision, path: Path) -> Path:
    """Trace `model` (a TextClassifier on the CPU, eval mode) into the ONNX file `path`, checked by onnxruntime."""
    _need("onnx"), _need("onnxscript"), _need("onnxruntime")
    graph = ClassifierGraph(model, decision).eval()
    ids, mask = _probe(model)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    quiet = logging.getLogger("torch.onnx")
    level, quiet.level = quiet.level, logging.ERROR  # no notes about torchvision's operators
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter prints its progress and warns of axis names
            program = torch.onnx.export(graph, (ids, mask), input_names=list(INPUTS), output_names=list(OUTPUTS),
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                        "attention_mask": {0: batch, 1: seq}},
                                        dynamo=True, optimize=True, verbose=False)
        big = sum(p.numel() * p.element_size() for p in model.parameters()) > SINGLE_FILE_BYTES
        program.save(str(path), external_data=big)
    finally:
        quiet.level = level
    _check(graph, path)
    return path


def _probe(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of random tokens: rows of 7, 3 and 1 real tokens in a sequence of 7."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.backbone.cfg.vocab_size, (3, 7), generator=g)
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 3, 1])[:, None]).long()
    if model.pooling == "last":  # the book's pooling reads full-length rows
        mask = torch.ones_like(mask)
    return ids, mask


def _check(graph: ClassifierGraph, path: Path) -> None:
    ids, mask = _probe(graph.model, seed=1)
    with torch.no_grad():
        want = graph(ids, mask)[0]
    got = torch.from_numpy(session(path).run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
    err = float((got - want).abs().max())
    if not err <= 1e-4:
        raise LlmclfError(f"the ONNX graph's logits differ from the classifier's by {err:.2e}; not exported")


def session(path: Path, threads: int = 1):
    """An onnxruntime CPU session with `threads` threads of its own (parallel.map_batches runs batches side by
    side, one per core, as it does for torch)."""
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """Stands in for the TextClassifier in predict.predict_encoded: (ids, lengths) -> logits, by onnxruntime."""

    def __init__(self, path: Path, pooling: str, num_classes: int):
        self.sess, self.pooling, self.num_classes = session(path), pooling, num_classes

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        out = self.sess.run(["logits"], {"input_ids": ids.cpu().numpy(), "attention_mask": mask.numpy()})[0]
        return torch.from_numpy(out)


def onnx_model(model, decision, cfg: dict) -> OnnxModel:
    """The classifier's graph from the asset cache (exported on first use: SmolLM2 takes about a minute), named
    by the digest of its verified config (which lists every file's sha256) and the versions that export."""
    from .assets import cache_dir, sha256_file

    if "integrity" not in cfg:  # a transformers directory: no manifest to name it by, export for this load only
        tmp = Path(tempfile.mkdtemp(prefix="llmclf-onnx-"))
        try:
            return OnnxModel(export_graph(model, decision, tmp / "model.onnx"), model.pooling, model.num_classes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    path = cache_dir() / "onnx" / _cache_key(cfg) / "model.onnx"
    digest = path.parent / "model.sha256"
    if not (path.is_file() and digest.is_file() and sha256_file(path) == digest.read_text().strip()):
        _cache_graph(model, decision, path)
    return OnnxModel(path, model.pooling, model.num_classes)


def _cache_key(cfg: dict) -> str:
    from .version import __version__
    from .artifact import canonical_digest

    onnx = _need("onnx")
    return hashlib.sha256(json.dumps([canonical_digest(cfg), __version__, torch.__version__, onnx.__version__])
                          .encode()).hexdigest()[:32]


def _cache_graph(model, decision, path: Path) -> None:
    """Export into a fresh folder beside the cache entry, then rename it into place (another process may race)."""
    from .assets import sha256_file

    path.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent.parent, prefix=".export-"))
    try:
        export_graph(model, decision, tmp / path.name)
        (tmp / "model.sha256").write_text(sha256_file(tmp / path.name))
        shutil.rmtree(path.parent, ignore_errors=True)  # a damaged entry
        try:
            tmp.rename(path.parent)
        except OSError:
            pass  # another process put its copy there first: the caller verifies and uses that
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
