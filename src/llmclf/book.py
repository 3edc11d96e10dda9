"""Chapter 6's functions with the book's own signatures and results, built on llmclf's pieces.

`llmclf.book` is a drop-in for `llms_from_scratch.ch06` (the book's code, PyPI `llms-from-scratch`): the
chapter's notebook code runs unchanged with `from llmclf.book import ...`, and gives the same numbers
(tests/test_book.py checks every function against ch06 on the same model and loaders). The data follow the
book's conventions: DataFrames with columns `Label` and `Text`, CSV files whose `Label` holds the class ids
(the book maps ham -> 0, spam -> 1), every text padded to one length with `pad_token_id`, and loaders that
yield `(input_batch, target_batch)` pairs of tensors (plain `torch.utils.data.DataLoader`s).

Models. Any module called as `model(input_batch)`:
- one returning logits (B, T, C) -- the book's `GPTModel` or llmclf's `GPTModel`/`LlamaModel` with
  `model.out_head = torch.nn.Linear(emb_dim, num_classes)` -- is read at the last position, `[:, -1, :]`,
  as in the book;
- one returning pooled logits (B, C) -- an llmclf `TextClassifier` -- is used as it is. Called without
  lengths, a TextClassifier counts every position as real, so its `last_nonpad` and `last` poolings read
  the last position: the book's numbers. (`first` and `mean` pool over the padded row.)

The library's own `llmclf.calc_loss_batch`, `calc_loss_loader`, `calc_accuracy_loader`,
`train_classifier_simple` and `classify_review` share these names but take llmclf's batches and
classifiers (see their docstrings); use this module to run the book's code.

Where the book's code fails, these return instead: `calc_accuracy_loader` over no batches gives nan (the
book divides by zero), and `classify_review(..., max_length=None)` uses the text's own length (the book
calls `min(None, ...)`).
"""

from __future__ import annotations

import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import data as _data
from . import metrics as _metrics


# ---------------------------------------------------------------- data

def download_and_unzip_spam_data(url, zip_path, extracted_path, data_file_path):
    """The UCI SMS Spam Collection saved as `data_file_path` (skipped if that file exists). For the book's
    URL (UCI) or its mirror, the file comes through llmclf's fetch: sha256-verified, cached, and taken
    from the other source when one is down; no zip is left behind. Any other URL is downloaded and unzipped
    as the book does (`zip_path`, `extracted_path`)."""
    data_file_path = Path(data_file_path)
    if data_file_path.exists():
        print(f"{data_file_path} already exists. Skipping download and extraction.")
        return
    from .assets import ASSETS, fetch

    asset = ASSETS["SMSSpamCollection"]
    if str(url) in {s.url for s in asset.sources if s.url}:
        data_file_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetch(asset), data_file_path)
    else:
        with urllib.request.urlopen(url) as response, open(zip_path, "wb") as out_file:
            out_file.write(response.read())
        with zipfile.ZipFile(zip_path, "r") as zip_ref:
            zip_ref.extractall(extracted_path)
        os.rename(Path(extracted_path) / "SMSSpamCollection", data_file_path)
    print(f"File downloaded and saved as {data_file_path}")


def create_balanced_dataset(df):
    """The "ham" rows of `df` undersampled to the number of "spam" rows (seed 123), then the spam rows, with
    their original index, as the book returns them; rows with other labels are dropped, as in the book.
    Done by `llmclf.data.create_balanced_dataset`, which undersamples every class to the smallest: with both
    labels present and no more spam than ham (the SMS collection) that is the book's selection, row for row.
    (With more spam than ham the book fails; this undersamples the spam.) Only `Label` is read."""
    rows = np.flatnonzero(df["Label"].isin(["ham", "spam"]).to_numpy())
    labels = pd.DataFrame({"label": df["Label"].to_numpy()[rows]})  # sampling depends on the row count only
    return df.iloc[rows[_data.create_balanced_dataset(labels, seed=123).index]]


def random_split(df, train_frac, validation_frac):
    """Shuffle (seed 123), then cut into train / validation / test (the rest): `llmclf.data.random_split`."""
    return _data.random_split(df, train_frac, validation_frac, seed=123)


class _BookTokenizer:
    """A tokenizer with `encode` (tiktoken's Encoding, llmclf's GPT2Tokenizer, ...) seen through the interface
    llmclf's ClassificationDataset reads: `encode_batch(texts, max_length)` and `pad_id`."""

    def __init__(self, tokenizer, pad_id: int):
        self.tokenizer, self.pad_id = tokenizer, pad_id

    def encode_batch(self, texts, max_length=None):
        return [self.tokenizer.encode(t)[:max_length] for t in texts]


class SpamDataset(torch.utils.data.Dataset):
    """The book's dataset: a CSV with columns `Text` and `Label` (integer class ids), every text encoded with
    `tokenizer.encode`, truncated to `max_length` (default: the longest text) and padded to it with
    `pad_token_id`. Items are (token ids (max_length,), label ()) tensors. Tokenizing and truncating is
    llmclf's ClassificationDataset; padding is llmclf's pad_batch."""

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=50256):
        self.data = pd.read_csv(csv_file)
        labels = self.data["Label"]
        if len(labels) and (not pd.api.types.is_integer_dtype(labels) or labels.min() < 0):
            raise ValueError(f"{csv_file}: column 'Label' must hold class ids 0, 1, ... (the book maps "
                             "ham -> 0, spam -> 1 before writing the CSV)")
        classes = list(range(int(labels.max()) + 1)) if len(labels) else []
        frame = pd.DataFrame({"text": self.data["Text"], "label": labels})
        dataset = _data.ClassificationDataset(frame, _BookTokenizer(tokenizer, pad_token_id), classes, max_length)
        self.max_length = dataset.max_length
        self.targets = torch.tensor(dataset.targets, dtype=torch.long)
        self.input_ids = _data.pad_batch(dataset.encoded, pad_token_id, self.max_length)[0]
        self.encoded_texts = self.input_ids.tolist()  # the book's attribute: padded token lists

    def __getitem__(self, index):
        return self.input_ids[index].clone(), self.targets[index].clone()

    def __len__(self):
        return len(self.data)

    def _longest_encoded_length(self):
        return max(map(len, self.encoded_texts), default=0)


# ---------------------------------------------------------------- loss, accuracy, training

def _last_token_logits(model, input_batch):
    """Class logits (B, C): the last position of a (B, T, C) output, or a pooled (B, C) output as it is."""
    logits = model(input_batch)
    return logits[:, -1, :] if logits.dim() == 3 else logits


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Accuracy over the first num_batches batches (all when None). Puts the model in eval mode, as the
    book does, and leaves it there."""
    model.eval()
    n = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    correct, total = 0, 0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= n:
            break
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
        with torch.no_grad():
            predicted = torch.argmax(_last_token_logits(model, input_batch), dim=-1)
        total += predicted.shape[0]
        correct += (predicted == target_batch).sum().item()
    return correct / total if total else float("nan")


def calc_loss_batch(input_batch, target_batch, model, device):
    """Cross-entropy of the last token's class logits for one batch."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    return F.cross_entropy(_last_token_logits(model, input_batch), target_batch)


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean batch loss over the first num_batches batches (all when None); nan for an empty loader. Like the
    book's, it leaves the model's train/eval mode as it is (evaluate_model sets eval)."""
    if len(data_loader) == 0:
        return float("nan")
    n = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total = 0.0
    with torch.no_grad():
        for i, (input_batch, target_batch) in enumerate(data_loader):
            if i >= n:
                break
            total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / n


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """(train loss, validation loss) over eval_iter batches each, in eval mode; back to train mode after."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter):
    """The book's loop: one optimizer step per batch, train/validation loss every eval_freq steps on eval_iter
    batches, accuracy on eval_iter batches at each epoch end. Returns (train_losses, val_losses, train_accs,
    val_accs, examples_seen). It iterates the loaders exactly as the book does, so with the same seed it
    draws the same batches."""
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            examples_seen += input_batch.shape[0]
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (Step {global_step:06d}): Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        train_accuracy = calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter)
        val_accuracy = calc_accuracy_loader(val_loader, model, device, num_batches=eval_iter)
        print(f"Training accuracy: {train_accuracy * 100:.2f}% | Validation accuracy: {val_accuracy * 100:.2f}%")
        train_accs.append(train_accuracy)
        val_accs.append(val_accuracy)
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def plot_values(epochs_seen, examples_seen, train_values, val_values, label="loss"):
    """The book's plot, saved as `{label}-plot.pdf` in the working directory (llmclf's plot_values, which
    draws off screen: no window opens). Returns the file name."""
    return _metrics.plot_values(epochs_seen, examples_seen, train_values, val_values, label, path=f"{label}-plot.pdf")


# ---------------------------------------------------------------- one text

def _context_length(model) -> int:
    """The longest input the model takes: its position-embedding table (the book's test), else its config."""
    for m in (model, getattr(model, "backbone", None)):
        if m is None:
            continue
        if getattr(m, "pos_emb", None) is not None:
            return m.pos_emb.weight.shape[0]
        cfg = getattr(m, "cfg", None)
        n = cfg.get("context_length") if isinstance(cfg, dict) else getattr(cfg, "context_length", None)
        if n is not None:
            return int(n)
    raise ValueError("cannot tell the model's context length (no pos_emb and no cfg.context_length)")


def classify_review(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    """"spam" or "not spam" for one text: encoded, truncated to max_length (and the model's context), padded
    to max_length with pad_token_id, classified by the last token's logits. max_length=None: the text's own
    length (the book's code fails there)."""
    model.eval()
    input_ids = tokenizer.encode(text)
    limit = _context_length(model) if max_length is None else min(max_length, _context_length(model))
    input_ids = input_ids[:limit] or ([] if max_length else [pad_token_id])
    input_tensor = _data.pad_batch([input_ids], pad_token_id, max_length)[0].to(device)
    with torch.no_grad():
        predicted_label = torch.argmax(_last_token_logits(model, input_tensor), dim=-1).item()
    return "spam" if predicted_label == 1 else "not spam"


__all__ = ["SpamDataset", "calc_accuracy_loader", "calc_loss_batch", "calc_loss_loader", "classify_review",
           "create_balanced_dataset", "download_and_unzip_spam_data", "evaluate_model", "plot_values",
           "random_split", "train_classifier_simple"]
