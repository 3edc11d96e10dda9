"""Classify new text with a saved classifier: `classify` for one text, `predict_texts` for many.

Many texts are batched in order of length (little padding is computed), a repeated text is computed
once, and on a CPU the batches run side by side, one per core (see parallel.py); results come back in
input order. Pooling at the last real token plus the causal mask makes every prediction
independent of what it was batched with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .artifact import load_classifier_parts
from .blend import load_blend
from .decision import Decision, load_decision
from .data import combine_windows, distinct_sequences, length_sorted_chunks, pad_batch
from .distributed import pick_device
from .errors import LlmclfError
from .parallel import map_batches
from .precision import autocast, for_inference, resolve_dtype


@dataclass
class Classifier:
    model: object
    tokenizer: object
    config: dict
    device: str = "cpu"
    blend: object = None  # a blend.TfidfBlend when the classifier was saved with one (--blend)
    decision: Decision = Decision()  # temperature and operating point chosen on validation (decision.py)
    backend: str = "torch"  # or "onnx": `model` is an onnx_graph.OnnxModel
    dtype: str = "float32"  # or "bfloat16" / "int8": the precision its forwards run in (precision.py)

    @property
    def labels(self) -> list[str]:
        return self.config["labels"]

    @property
    def max_length(self) -> int:
        return self.config["max_length"]

    @property
    def multi_label(self) -> bool:
        """Each text gets a set of labels: sigmoid probabilities, one threshold per label."""
        return self.decision.thresholds is not None


def load_classifier(path, device: str = "auto", backend: str = "torch", dtype: str = "float32") -> Classifier:
    """A saved classifier, verified. backend "onnx": its ONNX graph runs in onnxruntime instead of torch (on the
    CPU); tokenizing, the blend and the decision stay as they are. dtype: float32 | bfloat16 | int8 | auto
    (bfloat16 where the hardware has it natively, else float32): see precision.py."""
    if backend not in ("torch", "onnx"):
        raise LlmclfError(f"backend must be torch or onnx (got {backend!r})")
    device = pick_device("cpu" if backend == "onnx" and device == "auto" else device)
    if backend == "onnx" and device != "cpu":
        raise LlmclfError(f"--backend onnx runs on the CPU (got --device {device})")
    dtype = resolve_dtype(dtype, device)
    if backend == "onnx" and dtype != "float32":
        raise LlmclfError(f"--backend onnx runs the float32 graph (got --dtype {dtype}); use --backend torch for {dtype}")
    model, tokenizer, cfg, directory = load_classifier_parts(Path(path), device)
    decision = load_decision(cfg, Path(directory) / "config.json")
    if backend == "onnx":
        from .onnx_graph import onnx_model
        model = onnx_model(model, decision, cfg)
    else:
        model = for_inference(model, dtype)
    return Classifier(model, tokenizer, cfg, device, load_blend(directory, cfg), decision, backend, dtype)


def encode_texts(clf: Classifier, texts: list[str]) -> tuple[list[list[int]], list[int] | None]:
    """(token lists, owner): one list per text, or with --long-texts windows one per window and the text of each."""
    tok, owner = clf.tokenizer, None
    if tok.long_texts == "windows":
        encoded, owner = tok.encode_windows(list(texts), clf.max_length)
    else:
        encoded = tok.encode_batch(list(texts), clf.max_length)
    return [e or [tok.pad_id] for e in encoded], owner


@torch.inference_mode()
def predict_encoded(clf: Classifier, encoded: list[list[int]], batch_size: int = 32, progress: bool = False):
    """Class probabilities (N, C) for token lists, in input order."""
    from tqdm import tqdm

    model = clf.model
    fixed = clf.max_length if model.pooling == "last" else None
    distinct, slots = distinct_sequences(encoded)  # a repeated text is classified once
    lengths = [fixed or len(e) for e in distinct]
    probs = torch.empty(len(distinct), model.num_classes)
    chunks = list(length_sorted_chunks(lengths, max_tokens=batch_size * max(lengths, default=1), max_rows=batch_size))
    with tqdm(total=len(chunks), desc="predict", unit="batch", disable=not progress, leave=False) as bar:
        def run(chunk):
            ids, lens = pad_batch([distinct[i] for i in chunk], clf.tokenizer.pad_id, fixed)
            logits = model(ids.to(clf.device), lens.to(clf.device))
            probs[chunk] = (torch.sigmoid(logits.float()) if clf.multi_label else torch.softmax(logits.float(), -1)).cpu()
            bar.update()

        # On a CPU the batches run side by side, one per core, longest first.
        with autocast(clf.dtype, clf.device):
            map_batches(run, chunks, clf.device, cost=lambda c: len(c) * max(lengths[i] for i in c))
    return probs[slots]


def predict_texts(clf: Classifier, texts, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Calibrated class probabilities (N, C) in input order: the LLM's, or blended with TF-IDF when the
    classifier has a blend (blend.mix, the same function training chose its weight with), then scaled by the
    temperature fitted on validation (decision.py). Multi-label: each label's sigmoid probability."""
    texts = list(texts)
    encoded, owner = encode_texts(clf, texts)
    probs = predict_encoded(clf, encoded, batch_size, progress)
    if owner is not None:  # a text's windows combined as in training's evaluation
        probs = torch.exp(combine_windows(probs.log(), owner, len(texts)))  # log p: softmax gives p back
    probs = probs.double().numpy()
    if clf.blend is not None:
        probs = clf.blend.apply(probs, texts)
    return torch.from_numpy(clf.decision.calibrate(probs)).float()


def predicted_sets(clf: Classifier, probs) -> list[list[str]]:
    """Multi-label: the labels of each row of predict_texts' probabilities, at the thresholds saved with it."""
    chosen = clf.decision.choose_sets(torch.as_tensor(probs).double().numpy())
    return [[lab for lab, on in zip(clf.labels, row) if on] for row in chosen]


def predicted_classes(clf: Classifier, probs) -> list[int]:
    """The class index per row of predict_texts' probabilities: the argmax, or the saved threshold."""
    return [int(i) for i in clf.decision.choose(torch.as_tensor(probs).double().numpy())]


def predict_texts_distributed(clf: Classifier, texts, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """predict_texts for a torchrun job: every rank classifies a contiguous shard of the texts and the shards
    are all-gathered, so every rank returns all N rows in input order. One process: predict_texts."""
    if not distributed.active():
        return predict_texts(clf, texts, batch_size, progress)
    lo, hi = distributed.contiguous_shard(len(texts))
    mine = predict_texts(clf, list(texts)[lo:hi], batch_size, progress)
    parts = distributed.all_gather_tensors([mine.to(clf.device)], clf.device)
    return torch.cat([p[0].cpu() for p in parts])


def classify(text: str, clf: Classifier) -> tuple[str, float]:
    """(label, probability) for one text: chapter 6's classify_review for any classifier."""
    probs = predict_texts(clf, [text])
    i = predicted_classes(clf, probs)[0]
    return clf.labels[i], float(probs[0, i])


def classify_review(text: str, clf: Classifier) -> str:
    """The book's name: the predicted label of one text."""
    return classify(text, clf)[0]
