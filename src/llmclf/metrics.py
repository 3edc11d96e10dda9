"""Loss, accuracy and the full metric set over a loader; the book's two training plots."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .decision import rates


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, weight=None, reduction: str = "mean"):
    """Cross-entropy over the classes; for 0/1 label rows (multi-label) binary cross-entropy of each label's
    logit, averaged over the labels (each label is a yes/no question of its own)."""
    if targets.is_floating_point():
        per_text = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").mean(-1)
        return per_text.mean() if reduction == "mean" else per_text.sum()
    return F.cross_entropy(logits, targets, weight=weight, reduction=reduction)


def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 per text predicted right: the argmax, or for label sets every label at a probability of 0.5."""
    if targets.is_floating_point():
        return ((logits > 0) == (targets > 0.5)).all(-1).float()
    return (logits.argmax(-1) == targets).float()


def calc_loss_batch(batch: dict, model, weight=None) -> torch.Tensor:
    """Cross-entropy of one batch (the book's calc_loss_batch: the class comes from one token's logits)."""
    return classification_loss(model.forward_batch(batch), batch["labels"], weight=weight)


@torch.no_grad()
def calc_loss_loader(loader, model, num_batches: int | None = None, weight=None) -> float:
    """Mean batch loss over the first num_batches batches (all when None), in the loader's fixed order."""
    was_training = model.training
    model.eval()
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    if n == 0:
        return float("nan")
    total = sum(calc_loss_batch(b, model, weight).item() for _, b in zip(range(n), loader.batches(list(range(loader.n)))))
    model.train(was_training)
    return total / n


@torch.no_grad()
def calc_accuracy_loader(loader, model, num_batches: int | None = None) -> float:
    logits, targets = predict_loader(loader, model, num_batches)
    return float(correct(logits, targets).mean()) if len(targets) else float("nan")


@torch.no_grad()
def predict_loader(loader, model, num_batches: int | None = None):
    """(logits (N, C), targets (N,)) over the loader's first num_batches batches, in input order."""
    was_training = model.training
    model.eval()
    n = len(loader) if num_batches is None else min(num_batches, len(loader))
    logits, targets = [], []
    for _, batch in zip(range(n), loader.batches(list(range(loader.n)))):
        logits.append(model.forward_batch(batch).float().cpu())
        targets.append(batch["labels"].cpu())
    model.train(was_training)
    if not logits:
        return torch.empty(0, model.num_classes), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(targets)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           with_curves: bool = False) -> dict:
    """accuracy, macro_f1, loss, precision, recall, f1 (binary: positive class 1; multiclass: macro),
    balanced_accuracy, per_class (precision, recall, F1, support per label); with_curves adds the confusion
    matrix and (binary) ROC AUC."""
    from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support,
                                 roc_auc_score)

    y = targets.numpy()
    if len(y) == 0:
        return {"num_examples": 0}
    if targets.is_floating_point():
        return multilabel_metrics(torch.sigmoid(logits.double()).numpy(), y)
    probs = torch.softmax(logits.float(), -1).numpy()
    pred = probs.argmax(-1)
    binary = num_classes == 2
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary" if binary else "macro",
                                                 labels=list(range(num_classes)) if not binary else None,
                                                 pos_label=1, zero_division=0)
    macro = precision_recall_fscore_support(y, pred, average="macro", labels=list(range(num_classes)),
                                            zero_division=0)[2]
    per_class = zip(*precision_recall_fscore_support(y, pred, labels=list(range(num_classes)), zero_division=0))
    out = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(macro),  # every class weighs the same: what --recipe auto and the blend choose by
        "loss": float(F.cross_entropy(logits.float(), targets).item()),
        "precision": float(p), "recall": float(r), "f1": float(f),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "num_examples": int(len(y)),
        # in the order of the labels: what macro-F1 averages, and where a rare class hides in the accuracy
        "per_class": [{"precision": float(pc), "recall": float(rc), "f1": float(fc), "support": int(n)}
                      for pc, rc, fc, n in per_class],
    }
    if with_curves:
        out["confusion_matrix"] = confusion_matrix(y, pred, labels=list(range(num_classes))).tolist()
        if binary and len(np.unique(y)) == 2:
            out["roc_auc"] = float(roc_auc_score(y, probs[:, 1]))
    return out


def multilabel_metrics(probs: np.ndarray, y: np.ndarray, thresholds=None) -> dict:
    """The metrics of the multi-label field, a label predicted where its probability reaches its threshold (0.5
    unless given): micro (also precision, recall, f1) and macro F1, subset accuracy (the whole set right; also
    `accuracy`), Hamming loss
    (the share of text x label decisions wrong), binary cross-entropy, per-label precision/recall/F1/support."""
    from sklearn.metrics import f1_score, hamming_loss, precision_recall_fscore_support

    y = np.asarray(y) > 0.5
    pred = np.asarray(probs) >= (0.5 if thresholds is None else np.asarray(thresholds)[None, :])
    per_label = zip(*precision_recall_fscore_support(y, pred, average=None, zero_division=0))
    micro = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    subset = float((pred == y).all(1).mean())
    return {"accuracy": subset, "subset_accuracy": subset,
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "micro_f1": float(micro[2]), "precision": float(micro[0]), "recall": float(micro[1]),
            "f1": float(micro[2]),  # the micro averages: every text x label decision weighs the same
            "hamming_loss": float(hamming_loss(y, pred)),
            "loss": float(-(y * np.log(p) + (~y) * np.log(1 - p)).mean()),
            "num_examples": int(len(y)), "multi_label": True,
            "per_class": [{"precision": float(a), "recall": float(b), "f1": float(c), "support": int(n)}
                          for a, b, c, n in per_label]}


def plot_values(epochs_seen, examples_seen, train_values, val_values, label: str = "loss", path=None):
    """The book's plot: training and validation values against epochs, with an examples-seen twin axis."""
    plt = _pyplot()
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_values, label=f"Training {label}")
    ax1.plot(epochs_seen, val_values, linestyle="-.", label=f"Validation {label}")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel(label.capitalize())
    ax1.legend()
    ax2 = ax1.twiny()
    ax2.plot(examples_seen, train_values, alpha=0)  # invisible: aligns the examples-seen ticks
    ax2.set_xlabel("Examples seen")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_reliability(before, after, targets, path, bins: int = 15):
    """Reliability diagram: accuracy against mean top-class probability per equal-width bin, before and after
    calibration (the diagonal is perfect calibration)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    y = np.asarray(targets)
    for probs, label in ((before, "before"), (after, "after")):
        p = np.asarray(probs, dtype=np.float64)
        conf, correct = p.max(1), p.argmax(1) == y
        which = np.minimum((conf * bins).astype(int), bins - 1)
        used = [b for b in range(bins) if (which == b).any()]
        ax.plot([conf[which == b].mean() for b in used], [correct[which == b].mean() for b in used], marker="o",
                markersize=3, label=f"{label} calibration")
    ax.set_xlabel("Mean top-class probability")
    ax.set_ylabel("Accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc_pr(scores, positive, threshold, path, positive_label: str = "positive"):
    """ROC and precision-recall curves of the positive class side by side, the operating point marked."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    s, y = np.asarray(scores), np.asarray(positive, dtype=bool)
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    at = rates(s, y, threshold)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.6))
    a.plot(fpr, tpr)
    a.plot([at["false_positive_rate"]], [at["recall"]], "o", color="tab:red", label=f"threshold {threshold:.3f}")
    a.set_xlabel("False-positive rate")
    a.set_ylabel("True-positive rate (recall)")
    a.set_title(f"ROC ({positive_label})", fontsize=10)
    a.legend(fontsize=8, loc="lower right")
    b.plot(rec, prec)
    b.plot([at["recall"]], [at["precision"]], "o", color="tab:red")
    b.set_xlabel("Recall")
    b.set_ylabel("Precision")
    b.set_title(f"Precision-recall ({positive_label})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
