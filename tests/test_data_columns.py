"""Input is read or refused, never guessed wrong: header rows and column roles judged by content, stray quotes
in TSV texts, label columns that are not labels, classes too small to split, no raw library warnings."""

import warnings

import pandas as pd
import pytest

from llmclf import data
from llmclf.data import prepare_data, read_table
from llmclf.errors import LlmclfError

pytestmark = pytest.mark.filterwarnings("error")  # a raw pandas/numpy warning fails any test here


@pytest.fixture(scope="module")
def sms(sms_file):
    """The UCI file's messages as (label, text) pairs, one per line, quotes and all (5,574)."""
    return [tuple(line.split("\t", 1)) for line in sms_file.read_text(encoding="utf-8").splitlines()]


def write_tsv(path, header, rows):
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def test_text_first_header_with_unknown_names_is_a_header(tmp_path, sms, capsys):
    rows = [(text, label) for label, text in sms[:600]]
    df = read_table(write_tsv(tmp_path / "data.tsv", ("utterance", "intent"), rows))
    assert list(df["text"]) == [t for t, _ in rows] and list(df["label"]) == [lab for _, lab in rows]
    assert "text column 'utterance', label column 'intent' (2 classes)" in capsys.readouterr().err


def test_label_first_header_is_not_a_class(tmp_path, sms, capsys):
    df = read_table(write_tsv(tmp_path / "data.tsv", ("label", "sms_text"), sms[:600]))
    assert len(df) == 600 and set(df["label"]) == {"ham", "spam"}
    assert list(df["text"]) == [t for _, t in sms[:600]]
    assert "text column 'sms_text', label column 'label' (2 classes)" in capsys.readouterr().err


@pytest.mark.parametrize("order", ["quoted first", "unclosed quote last"])
def test_tsv_texts_with_stray_quotes_are_read_exactly(tmp_path, sms, capsys, order):
    # quoted parsing merges lines silently (first order) or fails: "EOF inside string" (second order)
    quoted = [(t, lab) for lab, t in sms if '"' in t]
    rows = quoted + [(t, lab) for lab, t in sms if '"' not in t][:800 - len(quoted)]
    if order == "unclosed quote last":
        rows.sort(key=lambda r: r[0].startswith('"') and r[0].count('"') == 1)  # "Keep ur problems... (no close)
    df = read_table(write_tsv(tmp_path / "data.tsv", ("text", "label"), rows))
    assert len(df) == 800 and list(df["text"]) == [t for t, _ in rows] and list(df["label"]) == [x for _, x in rows]
    assert "read without quote handling" in capsys.readouterr().err


def test_well_formed_tsv_quoting_is_still_honoured(tmp_path, capsys):
    texts = ['say "hi" to him', "two\nlines", '"all quoted"', "tab\tinside"] * 10
    p = tmp_path / "d.tsv"
    pd.DataFrame({"text": texts, "label": ["a", "b"] * 20}).to_csv(p, sep="\t", index=False)
    assert list(read_table(p)["text"]) == texts
    assert "quote handling" not in capsys.readouterr().err


def test_headerless_uci_file_keeps_the_books_reading(sms_file, capsys):
    df = read_table(sms_file)
    assert len(df) == 5572 and df["label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}
    assert capsys.readouterr().err.strip().endswith("no header row; text column 2, label column 1 (2 classes)")


def test_headerless_tsv_with_text_first(tmp_path, sms):
    p = tmp_path / "d.tsv"
    p.write_text("\n".join(f"{t}\t{lab}" for lab, t in sms[:300] if '"' not in t) + "\n", encoding="utf-8")
    df = read_table(p)
    assert set(df["label"]) == {"ham", "spam"} and df.iloc[0]["text"] == sms[0][1]


def test_mostly_unique_label_column_is_refused(tmp_path, sms):
    p = write_tsv(tmp_path / "d.tsv", ("text", "label"), [(t, f"id{i}") for i, (_, t) in enumerate(sms[:100])])
    with pytest.raises(LlmclfError, match="100 distinct values in 100 rows.*--label-column NAME --text-column"):
        read_table(p)


def test_a_class_too_small_to_split_is_refused(tmp_path, sms):
    rows = [(t, lab) for lab, t in sms[:200]] + [("Is this a label?", "oops")]
    df = read_table(write_tsv(tmp_path / "d.tsv", ("text", "label"), rows))
    with pytest.raises(LlmclfError, match="class 'oops' has 1 example.*need at least 3.*--label-column"):
        prepare_data(df, "d.tsv")
    with pytest.raises(LlmclfError, match="need at least 2"):  # no validation split: train and test
        prepare_data(df, "d.tsv", split=(0.8, 0.0))
    oops = df[df["label"] == "oops"]
    with pytest.raises(LlmclfError, match=r"training split\): class 'oops' has 0 example"):  # 3, none in train
        prepare_data(pd.concat([df, oops, oops]), "d.tsv", balance=False)
    assert prepare_data(pd.concat([df] + [oops] * 9), "d.tsv", balance=False).labels == ["ham", "oops", "spam"]


def test_library_warnings_become_one_llmclf_line(capsys):
    with data._library_warnings_as_lines("d.tsv"):
        warnings.warn("Length of header does not match\nsecond line", pd.errors.ParserWarning)
        warnings.warn("Length of header does not match\nsecond line", pd.errors.ParserWarning)
    assert capsys.readouterr().err == "llmclf: d.tsv: Length of header does not match\n"
