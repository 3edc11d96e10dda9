"""metrics.py: the multi-label metric set and loss against scikit-learn and torch written out by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmclf.metrics import classification_loss, classification_metrics, correct, multilabel_metrics


def test_multilabel_metrics_match_their_definitions():
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=float)
    p = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.2], [0.8, 0.4, 0.1], [0.3, 0.9, 0.55]])
    m = multilabel_metrics(p, y)
    pred = p >= 0.5  # row 2 misses label 1, row 1 adds label 1
    assert m["subset_accuracy"] == m["accuracy"] == 0.5
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    tp, fp, fn = 5, 1, 1
    assert m["micro_f1"] == m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    per = [2 * (pred[:, j] & (y[:, j] > 0)).sum() / (pred[:, j].sum() + y[:, j].sum()) for j in range(3)]
    assert m["macro_f1"] == pytest.approx(np.mean(per))
    assert [c["support"] for c in m["per_class"]] == [2, 2, 2]
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    assert m["loss"] == pytest.approx(bce)
    at = multilabel_metrics(p, y, thresholds=[0.5, 0.8, 0.5])  # label 1 now only in row 3: row 1 right, row 2 wrong
    assert at["subset_accuracy"] == 0.75
    logits = torch.logit(torch.tensor(p))
    assert classification_metrics(logits, torch.tensor(y), 3)["macro_f1"] == pytest.approx(m["macro_f1"])


def test_the_loss_is_binary_cross_entropy_per_label_for_label_rows_and_cross_entropy_otherwise():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    rows = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    by_hand = -(rows * F.logsigmoid(logits) + (1 - rows) * F.logsigmoid(-logits)).mean()
    assert classification_loss(logits, rows) == pytest.approx(float(by_hand))
    assert classification_loss(logits, rows, reduction="sum") == pytest.approx(float(by_hand) * 2)
    ids = torch.tensor([0, 1])
    assert classification_loss(logits, ids) == pytest.approx(float(F.cross_entropy(logits, ids)))
    assert correct(logits, rows).tolist() == [1.0, 0.0] and correct(logits, ids).tolist() == [1.0, 1.0]  # row 2 adds label 1
    assert correct(logits, torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])).tolist() == [0.0, 1.0]
