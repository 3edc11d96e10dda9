import json

import pandas as pd
import pytest

from llmclf.data import (BatchLoader, ClassificationDataset, create_balanced_dataset, length_sorted_chunks,
                         pack_prefix_trees, pad_batch, prepare_data, random_split, read_table)
from llmclf.errors import LlmclfError


def test_uci_file_read_as_the_book_does(sms_file):
    df = read_table(sms_file)
    # Default quoting merges two lines with unbalanced quotes: 5,572 rows, the count the book reports.
    assert len(df) == 5572
    assert df["label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}


def test_balanced_split_matches_the_book(sms_file):
    data = prepare_data(read_table(sms_file), "sms")
    assert (len(data.train), len(data.validation), len(data.test)) == (1045, 149, 300)
    assert data.labels == ["ham", "spam"]
    both = pd.concat([data.train, data.validation, data.test])
    assert both["label"].value_counts().to_dict() == {"ham": 747, "spam": 747}
    assert data.train.iloc[0]["text"] == "Dude how do you like the buff wind."  # the book's train.csv row 1


def test_balance_undersamples_every_class_and_split_is_seeded():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": ["a"] * 40 + ["b"] * 12 + ["c"] * 8})
    bal = create_balanced_dataset(df, seed=1)
    assert bal["label"].value_counts().to_dict() == {"a": 8, "b": 8, "c": 8}
    t1, v1, s1 = random_split(bal, 0.5, 0.25, seed=7)
    t2, _, _ = random_split(bal, 0.5, 0.25, seed=7)
    assert list(t1["text"]) == list(t2["text"]) and (len(t1), len(v1), len(s1)) == (12, 6, 6)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_user_files_with_named_columns(tmp_path, fmt):
    rows = [{"msg": f"message number {i}", "cat": i % 3} for i in range(30)]
    p = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        p.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        pd.DataFrame(rows).to_csv(p, sep="," if fmt == "csv" else "\t", index=False)
    df = read_table(p, text_column="msg", label_column="cat")
    assert len(df) == 30 and sorted(df["label"].unique()) == ["0", "1", "2"]
    assert df.iloc[4]["text"] == "message number 4"


def test_default_columns_and_csv_quoting(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('id,Label,Text\n1,pos,"a ""quoted"" text,\nwith a newline"\n2,neg,plain\n', encoding="utf-8")
    df = read_table(p)
    assert list(df["label"]) == ["pos", "neg"]
    assert df.iloc[0]["text"] == 'a "quoted" text,\nwith a newline'


def test_bom_and_crlf_and_blank_texts(tmp_path, capsys):
    p = tmp_path / "d.tsv"
    p.write_bytes("\ufefftext\tlabel\r\nhello\ta\r\n   \tb\nworld\tb\n".encode("utf-8"))
    df = read_table(p)
    assert list(df["text"]) == ["hello", "world"]
    assert "skipped 1 row(s) with an empty text" in capsys.readouterr().err


@pytest.mark.parametrize("content,kwargs,message", [
    (None, {}, "no such file"),
    (b"", {}, "file is empty"),
    (b"text,label\nhi,a\n", {"text_column": "body"}, "no text column 'body'"),
    (b"text,label\n\xff\xfe bad,a\n", {}, "not UTF-8"),
])
def test_read_errors(tmp_path, content, kwargs, message):
    p = tmp_path / "d.csv"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(LlmclfError, match=message):
        read_table(p, **kwargs)


def test_one_class_is_refused(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\na,x\nb,x\n")
    with pytest.raises(LlmclfError, match="at least two classes"):
        prepare_data(read_table(p), str(p))


def test_dataset_pads_per_batch_and_truncates(gpt2_tokenizer):
    df = pd.DataFrame({"text": ["hi", "a much longer message than the first one"], "label": ["a", "b"]})
    ds = ClassificationDataset(df, gpt2_tokenizer, ["a", "b"])
    assert ds.max_length == len(gpt2_tokenizer.encode(df.text[1]))
    short = ClassificationDataset(df, gpt2_tokenizer, ["a", "b"], max_length=3)
    assert max(map(len, short.encoded)) == 3
    ids, lengths = pad_batch(ds.encoded, 50256)
    assert ids.shape == (2, ds.max_length) and lengths.tolist() == [1, ds.max_length]
    assert (ids[0, 1:] == 50256).all()
    ids, lengths = pad_batch(ds.encoded, 50256, fixed_length=20)  # the book's fixed padding
    assert ids.shape == (2, 20) and lengths.tolist() == [20, 20]


def test_batch_loader_is_seeded_and_chunks_bound_padding():
    a = BatchLoader(10, 3, list, shuffle=True, drop_last=True, seed=5)
    b = BatchLoader(10, 3, list, shuffle=True, drop_last=True, seed=5)
    ea, eb = list(a), list(b)
    assert ea == eb and len(ea) == 3 and all(len(x) == 3 for x in ea)
    assert len(set(sum(ea, []))) == 9  # drop_last: 9 distinct examples, no repeats
    assert list(a) != ea  # a new order each epoch
    lengths = [5, 1, 9, 3, 7]
    chunks = list(length_sorted_chunks(lengths, max_tokens=10))
    assert sorted(sum(chunks, [])) == [0, 1, 2, 3, 4]
    assert all(max(lengths[i] for i in c) * len(c) <= 10 for c in chunks)


def test_pack_prefix_trees_stores_each_shared_prefix_once():
    seqs = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2], [7, 8], [1, 2, 5], [7, 8, 9, 9, 9]]
    rows = pack_prefix_trees(seqs, row_tokens=100)
    assert len(rows) == 1
    row = rows[0]
    # trie: 1-2-{3-{4,9}, 5} and 7-8-9-9-9: 11 nodes for 20 tokens
    assert len(row.tokens) == 11
    assert sorted(row.members) == list(range(len(seqs)))
    mask = row.mask()
    for j, path in zip(row.members, row.paths):
        assert [row.tokens[n] for n in path] == seqs[j]
        assert [row.positions[n] for n in path] == list(range(len(seqs[j])))  # a node's position is its depth
        last = path[-1]
        assert set(mask[last].nonzero()[0]) == set(path)  # the last token sees exactly its own text
    # small rows: no row holds more than max(row_tokens, longest) nodes, and every text is still whole
    small = pack_prefix_trees(seqs, row_tokens=4)
    assert all(len(r.tokens) <= 5 for r in small)
    assert sorted(j for r in small for j in r.members) == list(range(len(seqs)))
    for r in small:
        for j, path in zip(r.members, r.paths):
            assert [r.tokens[n] for n in path] == seqs[j]


@pytest.mark.parametrize("append_eos", [False, True])
def test_with_max_length_equals_a_freshly_tokenized_dataset(append_eos):
    from conftest import GPT2_TOKENIZER_DIR
    from llmclf.tokenizer import GPT2Tokenizer
    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    tok.append_eos = append_eos
    df = pd.DataFrame({"text": ["hi", "a much longer message than the first one", "mid size text"],
                       "label": ["a", "b", "a"]})
    longest = ClassificationDataset(df, tok, ["a", "b"], limit=1024)
    for n in (longest.max_length, 1024, 3):  # reused (no cut), reused (longer), re-tokenized (cut)
        got, want = longest.with_max_length(n), ClassificationDataset(df, tok, ["a", "b"], n)
        assert got.encoded == want.encoded and got.max_length == want.max_length == n
        assert got.targets == want.targets
    assert longest.with_max_length(3).encoded[1][-1] == (50256 if append_eos else longest.encoded[1][2])


# ---------------------------------------------------------------- splits given as files of their own

def _labelled(n, offset=0):
    return pd.DataFrame({"text": [f"message number {i + offset} {'win cash' if i % 2 else 'see you'}" for i in range(n)],
                         "label": ["spam" if i % 2 else "ham" for i in range(n)]})


def test_given_splits_are_used_as_they_are_and_a_missing_one_is_carved_from_training(tmp_path):
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions
    _labelled(100).to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    _labelled(30, offset=1000).to_csv(tmp_path / "val.csv", index=False)
    data = load_data(FinetuneOptions(out="x", train_file=str(tmp_path / "train.tsv"),
                                     validation_file=str(tmp_path / "val.csv"), balance=False))
    assert list(data.validation["text"]) == list(_labelled(30, offset=1000)["text"])
    # test: its --split share (1 - 0.7 - 0.1 = 20%) of the training file; the rest trains
    assert (len(data.train), len(data.test)) == (80, 20)
    assert sorted(pd.concat([data.train, data.test])["text"]) == sorted(_labelled(100)["text"])
    assert "validation " + str(tmp_path / "val.csv") in data.source and "test carved from it" in data.source
    both = load_data(FinetuneOptions(out="x", train_file=str(tmp_path / "train.tsv"), balance=False,
                                     validation_file=str(tmp_path / "val.csv"), test_file=str(tmp_path / "val.csv")))
    assert len(both.train) == 100 and len(both.test) == 30  # nothing carved: the whole file trains


def test_train_command_writes_the_given_splits(tmp_path):
    from conftest import GPT2_TOKENIZER_DIR, run_cli
    _labelled(60).to_csv(tmp_path / "train.csv", index=False)
    _labelled(20, offset=500).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean",
                "--weights", "random", "--tokenizer-dir", GPT2_TOKENIZER_DIR,
                "--epochs", "1", "--train-file", tmp_path / "train.csv", "--test-file", tmp_path / "test.jsonl",
                "--no-balance", "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    written = {s: pd.read_csv(out / f"{s}.csv") for s in ("train", "validation", "test")}
    assert list(written["test"]["text"]) == list(_labelled(20, offset=500)["text"])
    assert (len(written["train"]), len(written["validation"])) == (54, 6)  # validation: 10% of training
    assert json.loads((out / "metrics.json").read_text())["test"]["num_examples"] == 20


@pytest.mark.parametrize("extra,fragment", [
    (["--data-file", "{d}/train.csv"], "--train-file and --data-file both name the training data"),
    (["--validation-file", "{d}/odd.csv"], "labels ['maybe'] are not in the training data (ham, spam)"),
])
def test_given_split_errors_are_one_line_and_write_nothing(tmp_path, extra, fragment):
    from conftest import run_cli
    _labelled(40).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["perhaps", "who knows"], "label": ["maybe", "ham"]}).to_csv(tmp_path / "odd.csv", index=False)
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean",
                "--weights", "random", "--train-file", tmp_path / "train.csv",
                *[x.format(d=tmp_path) for x in extra], "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert fragment in r.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_validation_file_alone_is_refused():
    from llmclf.options import FinetuneOptions, check_options
    with pytest.raises(LlmclfError, match="--test-file needs the training data as a file too: --train-file FILE"):
        check_options(FinetuneOptions(out="x", test_file="t.csv"))


def test_data_json_reports_rows_skipped_classes_and_what_the_cut_drops(tmp_path, gpt2_tokenizer):
    from conftest import GPT2_TOKENIZER_DIR, run_cli
    words = "the quick brown fox jumps over a lazy dog while rain falls on the quiet town".split()
    rows = [{"review": " ".join(words[: 3 + i % 14] * (1 + i % 3)), "verdict": "good" if i % 2 else "bad"}
            for i in range(80)]
    rows += [{"review": "  ", "verdict": "good"}, {"review": "", "verdict": "bad"},  # two empty texts
             {"review": "no label here", "verdict": None}, {"review": "nor here", "verdict": None},
             {"review": "nor here either", "verdict": None}]
    f = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean",
                "--weights", "random", "--tokenizer-dir", GPT2_TOKENIZER_DIR,
                "--epochs", "1", "--context-length", "16", "--blend", "off", "--no-baseline", "--data-file", f,
                "--out", out)
    assert r.returncode == 0, r.stderr
    d = json.loads((out / "data.json").read_text())
    assert d["read"]["data"]["rows"] == 85 and d["read"]["data"]["kept"] == 80
    assert d["read"]["data"]["skipped"] == {"no label": 3, "empty text": 2}
    assert d["read"]["data"]["columns"] == {"text": "review", "label": "verdict"} and d["max_length"] == 16
    for split in ("train", "validation", "test"):
        df = pd.read_csv(out / f"{split}.csv", dtype=str, keep_default_na=False)
        rep = d["splits"][split]
        assert rep["rows"] == len(df) and rep["class_counts"] == {k: int((df["label"] == k).sum()) for k in ("bad", "good")}
        n = [len(e) for e in gpt2_tokenizer.encode_batch(df["text"].tolist())]
        assert rep["tokens"]["cut"] == sum(x > 16 for x in n) and rep["tokens"]["max"] == max(n)
        assert rep["tokens"]["tokens_dropped_share"] == pytest.approx(sum(max(0, x - 16) for x in n) / sum(n), abs=1e-4)
    t = d["splits"]["train"]["tokens"]
    assert t["cut"] > 0 and f"texts over it: train {t['cut']} of {t['texts']}" in r.stderr


def test_balance_ratio_keeps_the_majority_at_most_r_times_the_minority(sms_file):
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions, check_options
    one = load_data(check_options(FinetuneOptions(out="x", data_file=str(sms_file))))
    three = load_data(check_options(FinetuneOptions(out="x", data_file=str(sms_file), balance_ratio=3.0)))

    def counts(d):
        frames = pd.concat([d.train, d.validation, d.test])
        return frames["label"].value_counts().to_dict()
    assert counts(one) == {"ham": 747, "spam": 747}  # the book's 1:1
    assert counts(three) == {"ham": 3 * 747, "spam": 747}
    with pytest.raises(LlmclfError, match="--balance-ratio must be a number of at least 1"):
        check_options(FinetuneOptions(out="x", balance_ratio=0.5))


def test_split_seed_fixes_the_split_while_seed_varies_the_rest(sms_file):
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions, check_options

    def split(**kw):
        d = load_data(check_options(FinetuneOptions(out="x", data_file=str(sms_file), **kw)))
        return [list(f["text"]) for f in (d.train, d.validation, d.test)]
    book = split()  # seed 123: the book's split
    assert split(seed=7, split_seed=123) == book
    assert split(seed=7) != book  # without it, the seed moves the split too
    with pytest.raises(LlmclfError, match="--split-seed must be from 0 to 2\\*\\*32 - 1, not -1"):
        check_options(FinetuneOptions(out="x", split_seed=-1))


def _sms_frame(sms_file, n_spam, n_ham):
    df = read_table(sms_file)
    return pd.concat([df[df.label == "spam"].head(n_spam), df[df.label == "ham"].head(n_ham)]).reset_index(drop=True)


def _save_dataset(frame, path, names=("ham", "spam")):
    """`frame` written by datasets' save_to_disk, the label a ClassLabel (its integer ids on disk)."""
    from datasets import ClassLabel, Dataset
    ds = Dataset.from_dict({"sms": list(frame["text"]), "label": [names.index(x) for x in frame["label"]]})
    ds = ds.cast_column("label", ClassLabel(names=list(names)))
    ds.save_to_disk(str(path))
    return ds


def test_parquet_files_written_by_pandas_and_pyarrow_are_read_with_their_columns(tmp_path, sms_file):
    import pyarrow as pa
    import pyarrow.parquet as pq
    frame = _sms_frame(sms_file, 30, 40)
    frame.rename(columns={"text": "message", "label": "category"}).to_parquet(tmp_path / "pandas.parquet")
    pq.write_table(pa.table({"id": list(range(70)), "body": list(frame["text"]),
                             "y": [int(x == "spam") for x in frame["label"]]}), tmp_path / "arrow.parquet")
    by_pandas = read_table(tmp_path / "pandas.parquet")
    assert list(by_pandas["text"]) == list(frame["text"]) and list(by_pandas["label"]) == list(frame["label"])
    by_arrow = read_table(tmp_path / "arrow.parquet")
    assert list(by_arrow["text"]) == list(frame["text"])
    assert list(by_arrow["label"]) == [str(int(x == "spam")) for x in frame["label"]]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(LlmclfError, match="bad.parquet: cannot parse as Parquet"):
        read_table(tmp_path / "bad.parquet")


def test_a_saved_dataset_is_read_with_its_label_names_and_unlabelled_rows_skipped(tmp_path, sms_file, capsys):
    frame = _sms_frame(sms_file, 10, 15)
    from datasets import ClassLabel, Dataset
    ds = Dataset.from_dict({"sms": list(frame["text"]) + ["an unlabelled text"], "label": [
        ["ham", "spam"].index(x) for x in frame["label"]] + [-1]}).cast_column("label", ClassLabel(names=["ham", "spam"]))
    ds.save_to_disk(str(tmp_path / "ds"))
    df = read_table(tmp_path / "ds")
    assert list(df["text"]) == list(frame["text"]) and list(df["label"]) == list(frame["label"])  # names, not 0/1
    assert "skipped 1 row(s) with no label" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    with pytest.raises(LlmclfError, match="plain: is a directory, expected a data file or a directory saved by"):
        read_table(tmp_path / "plain")


def test_a_saved_dataset_dict_gives_its_splits_and_a_missing_one_is_carved(tmp_path, sms_file):
    from datasets import DatasetDict
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions, check_options
    frame = _sms_frame(sms_file, 60, 90).sample(frac=1, random_state=0)
    parts = {"train": frame.iloc[:100], "test": frame.iloc[100:]}
    for name, part in parts.items():
        _save_dataset(part, tmp_path / name)
    DatasetDict({name: _save_dataset(part, tmp_path / f"{name}-copy") for name, part in parts.items()}).save_to_disk(
        str(tmp_path / "dd"))
    data = load_data(check_options(FinetuneOptions(out="x", data_file=str(tmp_path / "dd"), balance=False)))
    assert list(data.test["text"]) == list(parts["test"]["text"])  # the saved test split, as it is
    assert (len(data.train), len(data.validation)) == (90, 10)  # validation: --split's 10% of the train split
    assert sorted(pd.concat([data.train, data.validation])["text"]) == sorted(parts["train"]["text"])
    with pytest.raises(LlmclfError, match="holds the splits train, test; pass it as --data-file"):
        read_table(tmp_path / "dd")


def test_an_unlabelled_split_of_a_saved_dataset_dict_is_carved_from_training(tmp_path, sms_file, capsys):
    from datasets import ClassLabel, Dataset, DatasetDict
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions, check_options
    frame = _sms_frame(sms_file, 50, 50).sample(frac=1, random_state=1)
    hidden = Dataset.from_dict({"sms": ["a text", "another"], "label": [-1, -1]}).cast_column(
        "label", ClassLabel(names=["ham", "spam"]))  # how GLUE ships its test splits
    DatasetDict({"train": _save_dataset(frame, tmp_path / "t"), "test": hidden}).save_to_disk(str(tmp_path / "dd"))
    data = load_data(check_options(FinetuneOptions(out="x", data_file=str(tmp_path / "dd"), balance=False)))
    assert (len(data.train), len(data.validation), len(data.test)) == (70, 10, 20)
    assert sorted(pd.concat([data.train, data.validation, data.test])["text"]) == sorted(frame["text"])
    assert "every label is missing (-1); the test split is carved from training instead" in capsys.readouterr().err


def test_train_command_reads_a_saved_dataset_dict(tmp_path, sms_file):
    from datasets import DatasetDict
    from conftest import GPT2_TOKENIZER_DIR, run_cli
    frame = _sms_frame(sms_file, 40, 40).sample(frac=1, random_state=0)
    DatasetDict({"train": _save_dataset(frame.iloc[:60], tmp_path / "a"),
                 "validation": _save_dataset(frame.iloc[60:70], tmp_path / "b"),
                 "test": _save_dataset(frame.iloc[70:], tmp_path / "c")}).save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "run"
    r = run_cli("train", "--model", "gpt2-tiny", "--pooling", "mean", "--weights", "random", "--tokenizer-dir",
                GPT2_TOKENIZER_DIR, "--epochs", "1", "--data-file", tmp_path / "dd", "--no-balance", "--out", out,
                "--quiet")
    assert r.returncode == 0, r.stderr
    for split, part in (("train", frame.iloc[:60]), ("validation", frame.iloc[60:70]), ("test", frame.iloc[70:])):
        written = pd.read_csv(out / f"{split}.csv", dtype=str, keep_default_na=False)
        assert sorted(written["text"]) == sorted(part["text"]) and sorted(written["label"]) == sorted(part["label"])


def test_stratified_split_keeps_every_class_share_in_each_split(sms_file):
    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions, check_options
    opts = dict(out="x", data_file=str(sms_file), balance=False)
    plain = load_data(check_options(FinetuneOptions(**opts)))
    strat = load_data(check_options(FinetuneOptions(**opts, stratify=True)))
    share = 747 / 5572  # spam in the whole file
    for split in ("train", "validation", "test"):
        s = getattr(strat, split)
        assert abs((s["label"] == "spam").sum() - share * len(s)) <= 1, split
    assert abs((plain.validation["label"] == "spam").sum() - share * len(plain.validation)) > 1  # a shuffle drifts
    assert [len(getattr(strat, s)) for s in ("train", "validation", "test")] == [3900, 557, 1115]
    again = load_data(check_options(FinetuneOptions(**opts, stratify=True)))
    assert list(again.test["text"]) == list(strat.test["text"])  # seeded


def test_balanced_sampler_draws_every_class_equally_often():
    from llmclf.data import balanced_weights
    targets = [0] * 90 + [1] * 10
    loader = BatchLoader(100, 10, lambda idx: [targets[i] for i in idx], shuffle=True, seed=3,
                         weights=balanced_weights(targets))
    drawn = [t for _ in range(20) for batch in loader for t in batch]
    assert len(drawn) == 2000 and 0.45 < sum(drawn) / len(drawn) < 0.55  # 10% of the data, half of the batches
    plain = BatchLoader(100, 10, lambda idx: [targets[i] for i in idx], shuffle=True, seed=3)
    assert sum(t for batch in plain for t in batch) == 10  # a permutation: each example once



def test_a_pair_column_joins_two_texts_and_a_row_missing_either_is_skipped(tmp_path, capsys):
    from llmclf.tokenizer import join_pair

    df = pd.DataFrame({"premise": ["A man plays.", "A dog runs.", None, "Rain.", "Sun."],
                       "hypothesis": ["Someone plays.", " ", "x", "It rains.", "Night."],
                       "label": ["entailment", "neutral", "neutral", "entailment", "contradiction"]})
    df.to_parquet(tmp_path / "nli.parquet")
    out = read_table(tmp_path / "nli.parquet", text_column="premise", text_pair_column="hypothesis")
    assert out["text"].tolist() == [join_pair("A man plays.", "Someone plays."), join_pair("Rain.", "It rains."),
                                    join_pair("Sun.", "Night.")]
    assert out.attrs["read"]["columns"] == {"text": "premise", "text_pair": "hypothesis", "label": "label"}
    assert out.attrs["read"]["skipped"]["empty text"] == 2
    assert "pair column 'hypothesis'" in capsys.readouterr().err
    with pytest.raises(LlmclfError, match="no text pair column 'second'"):
        read_table(tmp_path / "nli.parquet", text_column="premise", text_pair_column="second")
    with pytest.raises(LlmclfError, match="is the text column"):
        read_table(tmp_path / "nli.parquet", text_column="premise", text_pair_column="premise")


def test_pair_training_writes_both_texts_into_the_split_files_and_the_report(pair_run):
    from llmclf.data import unpair_frame

    test = pd.read_csv(pair_run / "test.csv", dtype=str, keep_default_na=False)
    assert list(test.columns) == ["text", "text_pair", "label"] and (test["text_pair"] != "").all()
    assert "\x1f" not in "".join(test["text"]) + "".join(test["text_pair"])
    report = json.loads((pair_run / "data.json").read_text())
    assert report["read"]["data"]["columns"] == {"text": "first", "text_pair": "second", "label": "label"}
    assert unpair_frame(pd.DataFrame({"text": ["a\x1fb"], "label": ["x"]}), pair=False)["text"][0] == "a\x1fb"


def test_combine_windows_averages_each_text_s_window_probabilities():
    import torch

    from llmclf.data import combine_windows

    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    out = combine_windows(logits, [0, 0, 1])
    p = torch.softmax(logits, -1)
    assert torch.allclose(torch.exp(out), torch.stack([(p[0] + p[1]) / 2, p[2]]), atol=1e-6)
    assert combine_windows(logits, None) is logits


def test_a_windows_run_trains_on_every_window_and_reports_per_text(windows_run):
    metrics = json.loads((windows_run / "metrics.json").read_text())
    texts = {s: len(pd.read_csv(windows_run / f"{s}.csv")) for s in ("train", "validation", "test")}
    assert metrics["num_examples"] == texts and metrics["test"]["num_examples"] == texts["test"]
    assert all(metrics["windows"][s] >= 3 * texts[s] for s in texts)  # documents of ~6 messages, 32-token windows
    assert metrics["max_length"] == 32


def test_label_sets_are_read_from_json_lists_delimiters_01_columns_and_saved_datasets(tmp_path, sms_file):
    import datasets

    from conftest import sms_tags
    from llmclf.data import is_multi_label, label_counts, label_set_string

    df = sms_tags(20)
    want = [label_set_string(t) for t in df["tags"]]
    df.to_json(tmp_path / "tags.jsonl", orient="records", lines=True)  # a JSON list per row
    df.to_parquet(tmp_path / "tags.parquet")  # a pyarrow list column
    df.assign(tags=df["tags"].map(";".join)).to_csv(tmp_path / "tags.csv", index=False)
    onehot = df[["text"]].assign(**{k: df["tags"].map(lambda t, k=k: int(k in t)) for k in ("spam", "number", "question")})
    onehot.to_csv(tmp_path / "onehot.csv", index=False)
    names = ["number", "question", "spam"]
    feats = datasets.Features({"text": datasets.Value("string"),
                               "tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    datasets.Dataset.from_dict({"text": df["text"].tolist(), "tags": [[names.index(x) for x in t] for t in df["tags"]]},
                               features=feats).save_to_disk(str(tmp_path / "saved"))
    reads = [read_table(tmp_path / "tags.jsonl", label_column="tags"), read_table(tmp_path / "tags.parquet"),
             read_table(tmp_path / "tags.csv", label_column="tags", label_delimiter=";"),
             read_table(tmp_path / "onehot.csv", label_columns=["spam", "number", "question"]),
             read_table(tmp_path / "saved", label_column="tags")]
    for out in reads:
        assert out["label"].tolist() == want and is_multi_label(out)
    assert "[]" in want  # a text with no label is kept, not skipped
    counts = label_counts(reads[0])
    assert counts == {k: sum(k in t for t in df["tags"]) for k in names}
    data = prepare_data(reads[0], "tags", balance=True, split=(0.6, 0.2))
    assert len(data.train) + len(data.validation) + len(data.test) == len(df)  # label sets are never undersampled
    assert data.labels == names and data.multi_label
    with pytest.raises(LlmclfError, match="--stratify"):
        prepare_data(reads[0], "tags", stratify=True)


def test_a_hub_dataset_s_parquet_shards_become_its_splits_and_an_unreachable_hub_is_one_line(tmp_path, sms_file):
    import datasets

    from llmclf.data import _unlabelled, data_files, parquet_splits
    from llmclf.options import FinetuneOptions

    df = pd.read_csv(sms_file, sep="\t", header=None, names=["label", "text"], quoting=3).head(300)
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["ham", "spam"])})
    ids = df["label"].map({"ham": 0, "spam": 1}).tolist()
    repo = tmp_path / "snapshot"
    (repo / "data").mkdir(parents=True)
    for i, (lo, hi) in enumerate(((0, 120), (120, 240))):  # the train split in two shards, as the hub stores it
        datasets.Dataset.from_dict({"text": df["text"][lo:hi].tolist(), "label": ids[lo:hi]}, features=feats).to_parquet(
            str(repo / "data" / f"train-0000{i}-of-00002.parquet"))
    datasets.Dataset.from_dict({"text": df["text"][240:].tolist(), "label": [-1] * 60}, features=feats).to_parquet(
        str(repo / "data" / "test-00000-of-00001.parquet"))  # GLUE-style: labels withheld
    splits = parquet_splits(repo)
    assert sorted(splits) == ["test", "train"] and _unlabelled(splits["test"]) and not _unlabelled(splits["train"])
    train = read_table(splits["train"])
    assert train["text"].tolist() == df["text"][:240].tolist() and train["label"].tolist() == df["label"][:240].tolist()
    (repo / "other" / "train").mkdir(parents=True)
    other = datasets.Dataset.from_dict({"text": ["x"], "label": [0]}, features=feats)
    other.to_parquet(str(repo / "other" / "train" / "0.parquet"))
    with pytest.raises(LlmclfError, match="several configurations"):
        parquet_splits(repo)
    with pytest.raises(LlmclfError, match="could not reach the Hugging Face hub"):  # no network here
        data_files(FinetuneOptions(out="x", data_file="hf:nobody/no-such-dataset"))
