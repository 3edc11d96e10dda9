"""llmclf.book against the book's own chapter-6 code (PyPI llms-from-scratch==1.0.19, llms_from_scratch.ch06).

Every function of ch06 exists in llmclf.book with the same signature, and the chapter's code, run once with
ch06's functions and once with llmclf.book's, gives the same numbers on the same model and loaders: data
frames, datasets, losses, accuracies, a few training steps (with dropout on, so the two must also draw the
same random numbers in the same order), and single-text classification.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR

try:  # the reference; not a test extra, since its metadata pins numpy<2.1 and pulls tensorflow and jupyterlab
    from llms_from_scratch import ch04, ch06
except ImportError:  # a missing reference fails the tests: skipping would pass them untested
    raise ImportError("tests/test_book.py needs the book's code: pip install --no-deps llms-from-scratch==1.0.19") \
        from None

from llmclf import book  # noqa: E402
from llmclf.classifier import TextClassifier  # noqa: E402
from llmclf.models import MODELS, GPTModel  # noqa: E402

DEVICE = torch.device("cpu")
TOL = 1e-6


def book_functions():
    """The public functions and classes that ch06 itself defines (not the ones it imports)."""
    return sorted(name for name, obj in vars(ch06).items()
                  if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == ch06.__name__
                  and not name.startswith("_"))


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """tiktoken.get_encoding("gpt2"), as the book makes it, read offline: tiktoken's cache names each of
    OpenAI's two files by the sha1 of its URL."""
    import tiktoken
    cache = tmp_path_factory.mktemp("tiktoken")
    for name, sha1 in (("vocab.bpe", "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"),
                       ("encoder.json", "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")):
        (cache / sha1).write_bytes((GPT2_TOKENIZER_DIR / name).read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def sms_frame(sms_file):
    """The UCI file read as the book reads it."""
    return pd.read_csv(sms_file, sep="\t", header=None, names=["Label", "Text"])


@pytest.fixture(scope="module")
def csvs(sms_frame, tmp_path_factory):
    """Small train/validation/test CSVs cut from the book's balanced 70/10/20 split, written as the book writes
    them (Label mapped ham -> 0, spam -> 1)."""
    balanced = book.create_balanced_dataset(sms_frame)
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    train, val, test = book.random_split(balanced, 0.7, 0.1)
    out = tmp_path_factory.mktemp("csv")
    paths = {}
    for name, df, n in (("train", train, 64), ("validation", val, 20), ("test", test, 20)):
        paths[name] = out / f"{name}.csv"
        df[:n].to_csv(paths[name], index=None)
    return paths


@pytest.fixture(scope="module")
def datasets(csvs, tokenizer):
    train = book.SpamDataset(csv_file=csvs["train"], max_length=None, tokenizer=tokenizer)
    val = book.SpamDataset(csv_file=csvs["validation"], max_length=train.max_length, tokenizer=tokenizer)
    test = book.SpamDataset(csv_file=csvs["test"], max_length=train.max_length, tokenizer=tokenizer)
    return train, val, test


def make_loaders(datasets, seed=123, batch_size=8):
    """The book's DataLoaders."""
    train, val, test = datasets
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader
    return (loader(train, batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True),
            loader(val, batch_size=batch_size, num_workers=0, drop_last=False),
            loader(test, batch_size=batch_size, num_workers=0, drop_last=False))


def tiny_gpt2(drop_rate=0.0, seed=123):
    """llmclf's gpt2-tiny with random weights and the book's class head."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(MODELS["gpt2-tiny"].config, drop_rate=drop_rate)
    model = GPTModel(cfg)
    model.out_head = torch.nn.Linear(cfg.emb_dim, 2)
    return model


def book_gpt2_like(model: GPTModel):
    """The book's own GPTModel (ch04) holding the same weights as llmclf's `model`."""
    c = model.cfg
    theirs = ch04.GPTModel({"vocab_size": c.vocab_size, "context_length": c.context_length, "emb_dim": c.emb_dim,
                            "n_heads": c.n_heads, "n_layers": c.n_layers, "drop_rate": c.drop_rate,
                            "qkv_bias": c.qkv_bias})
    theirs.out_head = torch.nn.Linear(c.emb_dim, 2)
    missing, unexpected = theirs.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("att.mask") for k in missing), (missing, unexpected)
    return theirs


# ---------------------------------------------------------------- (2) the book's names and argument lists

def test_every_ch06_function_is_in_llmclf_book_with_the_same_signature():
    names = book_functions()
    assert {"SpamDataset", "calc_accuracy_loader", "calc_loss_batch", "calc_loss_loader", "classify_review",
            "create_balanced_dataset", "download_and_unzip_spam_data", "evaluate_model", "plot_values",
            "random_split", "train_classifier_simple"} <= set(names)
    for name in names:
        theirs, ours = getattr(ch06, name), getattr(book, name)
        assert inspect.signature(ours) == inspect.signature(theirs), name
        assert name in book.__all__


def test_llmclf_top_level_exposes_book_module():
    import llmclf
    assert llmclf.book is book


# ---------------------------------------------------------------- (1) same numbers: data

def test_balance_and_split_are_the_books_row_for_row(sms_frame):
    ours, theirs = book.create_balanced_dataset(sms_frame), ch06.create_balanced_dataset(sms_frame)
    pd.testing.assert_frame_equal(ours, theirs)
    assert len(ours) == 2 * 747
    for a, b in zip(book.random_split(ours, 0.7, 0.1), ch06.random_split(theirs, 0.7, 0.1)):
        pd.testing.assert_frame_equal(a, b)


def test_balance_keeps_other_columns_and_a_non_default_index(sms_frame):
    df = sms_frame.sample(400, random_state=7).assign(extra=lambda d: d["Text"].str.len())
    df.index = df.index * 3 + 1
    df.loc[df.index[::50], "Label"] = "other"  # a label the book does not know: dropped
    pd.testing.assert_frame_equal(book.create_balanced_dataset(df), ch06.create_balanced_dataset(df))


@pytest.mark.parametrize("max_length", [None, 12, 300])
def test_spam_dataset_items_equal_the_books(csvs, tokenizer, max_length):
    ours = book.SpamDataset(csvs["train"], tokenizer, max_length=max_length)
    theirs = ch06.SpamDataset(csvs["train"], tokenizer, max_length=max_length)
    assert ours.max_length == theirs.max_length
    assert ours._longest_encoded_length() == theirs._longest_encoded_length()
    assert ours.encoded_texts == theirs.encoded_texts
    assert len(ours) == len(theirs)
    for i in range(len(theirs)):
        (a, y), (b, z) = ours[i], theirs[i]
        assert a.dtype == b.dtype == torch.long and y.dtype == z.dtype == torch.long
        assert torch.equal(a, b) and torch.equal(y, z)
    pd.testing.assert_frame_equal(ours.data, theirs.data)


def test_spam_dataset_other_pad_token_and_llmclf_tokenizer(csvs):
    from llmclf.tokenizer import GPT2Tokenizer
    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR)  # llmclf's tokenizer also has the book's `encode`
    ours = book.SpamDataset(csvs["validation"], tok, max_length=40, pad_token_id=0)
    theirs = ch06.SpamDataset(csvs["validation"], tok, max_length=40, pad_token_id=0)
    assert ours.encoded_texts == theirs.encoded_texts


def test_spam_dataset_refuses_unmapped_labels(tmp_path, tokenizer):
    path = tmp_path / "raw.csv"
    pd.DataFrame({"Label": ["ham", "spam"], "Text": ["hi", "win"]}).to_csv(path, index=None)
    with pytest.raises(ValueError, match="Label"):
        book.SpamDataset(path, tokenizer)


# ---------------------------------------------------------------- (1) same numbers: loss, accuracy

@pytest.mark.parametrize("num_batches", [None, 2])
def test_loss_and_accuracy_loaders_equal_the_books(datasets, num_batches):
    model = tiny_gpt2()
    train_loader, val_loader, test_loader = make_loaders(datasets)
    for loader in (train_loader, val_loader, test_loader):
        for ours_fn, theirs_fn in ((book.calc_loss_loader, ch06.calc_loss_loader),
                                   (book.calc_accuracy_loader, ch06.calc_accuracy_loader)):
            torch.manual_seed(1)  # the shuffled train loader draws its order from the global generator
            theirs = theirs_fn(loader, model, DEVICE, num_batches=num_batches)
            torch.manual_seed(1)
            ours = ours_fn(loader, model, DEVICE, num_batches=num_batches)
            assert ours == pytest.approx(theirs, abs=TOL), (ours_fn.__name__, loader is train_loader)
    # positional num_batches, more than the loader has
    for ours_fn, theirs_fn in ((book.calc_loss_loader, ch06.calc_loss_loader),
                               (book.calc_accuracy_loader, ch06.calc_accuracy_loader)):
        assert ours_fn(val_loader, model, DEVICE, 100) == pytest.approx(theirs_fn(val_loader, model, DEVICE, 100),
                                                                        abs=TOL)


def test_loss_batch_equals_the_books_and_has_its_gradient(datasets):
    model = tiny_gpt2()
    _, val_loader, _ = make_loaders(datasets)
    inputs, targets = next(iter(val_loader))
    ours = book.calc_loss_batch(inputs, targets, model, DEVICE)
    ours.backward()
    g_ours = model.out_head.weight.grad.clone()
    model.zero_grad()
    theirs = ch06.calc_loss_batch(inputs, targets, model, DEVICE)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), abs=TOL)
    assert torch.allclose(g_ours, model.out_head.weight.grad, atol=TOL)


def test_modes_match_the_books(datasets):
    """The book's calc_accuracy_loader leaves the model in eval mode, calc_loss_loader leaves the mode alone,
    evaluate_model ends in train mode."""
    model = tiny_gpt2()
    train_loader, val_loader, _ = make_loaders(datasets)
    for m in (book, ch06):
        model.train()
        m.calc_accuracy_loader(val_loader, model, DEVICE, 1)
        assert not model.training, m.__name__
        model.train()
        m.calc_loss_loader(val_loader, model, DEVICE, 1)
        assert model.training, m.__name__
        model.eval()
        m.calc_loss_loader(val_loader, model, DEVICE, 1)
        assert not model.training, m.__name__
        m.evaluate_model(model, train_loader, val_loader, DEVICE, 1)
        assert model.training, m.__name__


def test_evaluate_model_equals_the_books(datasets):
    model = tiny_gpt2(drop_rate=0.2)
    train_loader, val_loader, _ = make_loaders(datasets)
    torch.manual_seed(5)
    theirs = ch06.evaluate_model(model, train_loader, val_loader, DEVICE, eval_iter=2)
    torch.manual_seed(5)
    ours = book.evaluate_model(model, train_loader, val_loader, DEVICE, eval_iter=2)
    assert ours == pytest.approx(theirs, abs=TOL)


def test_empty_loaders(datasets):
    model = tiny_gpt2()
    empty = torch.utils.data.DataLoader(torch.utils.data.Subset(datasets[1], []), batch_size=8)
    assert pd.isna(book.calc_loss_loader(empty, model, DEVICE)) and pd.isna(ch06.calc_loss_loader(empty, model, DEVICE))
    assert pd.isna(book.calc_accuracy_loader(empty, model, DEVICE))  # the book divides by zero here


# ---------------------------------------------------------------- (1) same numbers: training

def run_chapter(m, datasets, model, num_epochs=2):
    """Chapter 6's training code as the book writes it, with the functions of module `m`."""
    train_loader, val_loader, _ = make_loaders(datasets)
    for p in model.parameters():  # the book's recipe: the last block, the final norm and the head train
        p.requires_grad = False
    for part in (model.trf_blocks[-1], model.final_norm, model.out_head):
        for p in part.parameters():
            p.requires_grad = True
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    train_losses, val_losses, train_accs, val_accs, examples_seen = m.train_classifier_simple(
        model, train_loader, val_loader, optimizer, DEVICE, num_epochs=num_epochs, eval_freq=3, eval_iter=2)
    accuracies = [m.calc_accuracy_loader(loader, model, DEVICE) for loader in (train_loader, val_loader)]
    return train_losses, val_losses, train_accs, val_accs, examples_seen, accuracies


def test_train_classifier_simple_equals_the_books(datasets, capsys):
    """Same seed, same model: the same losses, accuracies, printed lines and final weights. Dropout is on, so
    this holds only if both draw the same random numbers in the same order (loader shuffles, dropout masks)
    and switch train/eval mode at the same points."""
    start = tiny_gpt2(drop_rate=0.1)
    m_theirs, m_ours = copy.deepcopy(start), copy.deepcopy(start)
    theirs = run_chapter(ch06, datasets, m_theirs)
    out_theirs = capsys.readouterr().out
    ours = run_chapter(book, datasets, m_ours)
    out_ours = capsys.readouterr().out
    assert out_ours == out_theirs
    assert out_theirs.count("Training accuracy") == 2 and out_theirs.count("Train loss") == 6  # 16 steps / 3
    tl, vl, ta, va, seen, accs = theirs
    assert ours[4] == seen == 2 * 64
    for a, b in zip(ours[:4] + ours[5:], (tl, vl, ta, va, accs)):
        assert a == pytest.approx(b, abs=TOL)
    assert tl[0] != pytest.approx(tl[-1], abs=1e-3)  # the weights really moved
    for (name, p), q in zip(m_ours.named_parameters(), m_theirs.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


# ---------------------------------------------------------------- (1) same numbers: one text

class Recorder(torch.nn.Module):
    """Wraps a model, keeping every input and output (and the book's `pos_emb`, which classify_review reads)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []
        self.pos_emb = model.pos_emb

    def forward(self, x):
        out = self.model(x)
        self.seen.append((x.clone(), out.clone()))
        return out


@pytest.mark.parametrize("max_length", [8, 40, 120])
def test_classify_review_equals_the_books(datasets, tokenizer, max_length):
    texts = list(datasets[2].data["Text"]) + [
        "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
        "Hey, just wanted to check if we're still on for dinner tonight? Let me know!", ""]
    model = tiny_gpt2()
    probe = Recorder(model)
    for t in texts:
        ch06.classify_review(t, probe, tokenizer, DEVICE, max_length=max_length)
    margins = torch.stack([out[0, -1, 1] - out[0, -1, 0] for _, out in probe.seen])
    with torch.no_grad():  # move the decision boundary to the median text, so that both labels occur
        model.out_head.bias[1] -= margins.median() + 1e-4
    ours_rec, theirs_rec = Recorder(model), Recorder(model)
    ours = [book.classify_review(t, ours_rec, tokenizer, DEVICE, max_length=max_length) for t in texts]
    theirs = [ch06.classify_review(t, theirs_rec, tokenizer, DEVICE, max_length=max_length) for t in texts]
    assert ours == theirs
    assert len(ours_rec.seen) == len(texts)
    for (x, y), (u, v) in zip(ours_rec.seen, theirs_rec.seen):
        assert torch.equal(x, u) and x.shape == (1, max_length)
        assert torch.allclose(y, v, atol=TOL)
    assert set(ours) == {"spam", "not spam"}


def test_classify_review_max_length_none_uses_the_texts_length(tokenizer):
    rec = Recorder(tiny_gpt2())
    book.classify_review("Lunch tomorrow?", rec, tokenizer, DEVICE)
    assert rec.seen[0][0].tolist() == [tokenizer.encode("Lunch tomorrow?")]
    long_text = "spam " * 400  # 400 tokens; gpt2-tiny takes 256
    assert book.classify_review(long_text, rec, tokenizer, DEVICE) in ("spam", "not spam")
    assert rec.seen[1][0].shape == (1, 256)


# ---------------------------------------------------------------- other models: the book's GPTModel, TextClassifier

def test_book_gpt_model_and_llmclf_text_classifier_give_the_books_numbers(datasets, tokenizer):
    """llmclf.book on the book's own ch04.GPTModel, on llmclf's GPTModel and on llmclf's TextClassifier (pooled
    (B, C) logits) gives what ch06 gives on the book's GPTModel holding the same weights."""
    backbone = tiny_gpt2()
    clf = TextClassifier(backbone, 2)  # a fresh class head on the same backbone
    theirs_model = book_gpt2_like(backbone)
    _, val_loader, test_loader = make_loaders(datasets)
    for loader in (val_loader, test_loader):
        want_loss = ch06.calc_loss_loader(loader, theirs_model, DEVICE)
        want_acc = ch06.calc_accuracy_loader(loader, theirs_model, DEVICE)
        for model in (theirs_model, backbone, clf):
            assert book.calc_loss_loader(loader, model, DEVICE) == pytest.approx(want_loss, abs=1e-5)
            assert book.calc_accuracy_loader(loader, model, DEVICE) == want_acc
    inputs, targets = next(iter(test_loader))
    want = ch06.calc_loss_batch(inputs, targets, theirs_model, DEVICE)
    assert book.calc_loss_batch(inputs, targets, clf, DEVICE).item() == pytest.approx(want.item(), abs=1e-5)
    text = datasets[2].data["Text"][0]
    want_label = ch06.classify_review(text, theirs_model, tokenizer, DEVICE, max_length=datasets[0].max_length)
    assert book.classify_review(text, clf, tokenizer, DEVICE, max_length=datasets[0].max_length) == want_label
    with pytest.raises(IndexError):  # why llmclf.book exists: the book's code cannot read pooled logits
        ch06.calc_loss_batch(inputs, targets, clf, DEVICE)


def test_text_classifier_trains_with_the_books_loop(datasets):
    clf = TextClassifier(tiny_gpt2(), 2)
    train_loader, val_loader, _ = make_loaders(datasets)
    optimizer = torch.optim.AdamW(clf.parameters(), lr=5e-4)
    tl, vl, ta, va, seen = book.train_classifier_simple(clf, train_loader, val_loader, optimizer, DEVICE,
                                                        num_epochs=1, eval_freq=4, eval_iter=2)
    assert len(tl) == len(vl) == 2 and len(ta) == len(va) == 1 and seen == 64


# ---------------------------------------------------------------- plots and the download

def test_plot_values_writes_the_books_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    epochs, seen = torch.linspace(0, 2, 4), torch.linspace(0, 128, 4)
    book.plot_values(epochs, seen, [0.7, 0.6, 0.5, 0.4], [0.7, 0.65, 0.6, 0.55])
    book.plot_values(epochs, seen, [0.5, 0.6, 0.7, 0.8], [0.5, 0.55, 0.6, 0.65], label="accuracy")
    for name in ("loss-plot.pdf", "accuracy-plot.pdf"):
        assert (tmp_path / name).read_bytes().startswith(b"%PDF")


def test_download_skips_an_existing_file_as_the_book_does(tmp_path, capsys):
    target = tmp_path / "SMSSpamCollection.tsv"
    target.write_text("ham\thi\n")
    for m in (book, ch06):
        m.download_and_unzip_spam_data("http://unused.invalid/x.zip", tmp_path / "x.zip", tmp_path, target)
    ours, theirs = capsys.readouterr().out.splitlines()
    assert ours == theirs and "Skipping" in ours
    assert target.read_text() == "ham\thi\n"


def test_download_other_url_unzips_as_the_book_does(tmp_path, sms_file, capsys):
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("SMSSpamCollection", sms_file.read_bytes()[:5000])
        z.writestr("readme", "x")
    for m in (book, ch06):
        d = tmp_path / m.__name__
        m.download_and_unzip_spam_data(archive.as_uri(), d.with_suffix(".zip"), d, d / "SMSSpamCollection.tsv")
    a, b = (tmp_path / m.__name__ for m in (book, ch06))
    assert (a / "SMSSpamCollection.tsv").read_bytes() == (b / "SMSSpamCollection.tsv").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    ours, theirs = capsys.readouterr().out.splitlines()
    assert ours.replace(str(a), "D") == theirs.replace(str(b), "D")


def test_download_books_url_goes_through_llmclf_fetch(tmp_path, sms_file, monkeypatch):
    import llmclf.assets
    asked = []
    monkeypatch.setattr(llmclf.assets, "fetch", lambda asset, **kw: asked.append(asset.name) or Path(sms_file))
    url = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"  # the book's URL
    target = tmp_path / "sms_spam_collection" / "SMSSpamCollection.tsv"
    book.download_and_unzip_spam_data(url, tmp_path / "sms_spam_collection.zip", tmp_path / "sms_spam_collection",
                                      target)
    assert asked == ["SMSSpamCollection"]
    assert target.read_bytes() == sms_file.read_bytes()
    df = pd.read_csv(target, sep="\t", header=None, names=["Label", "Text"])
    assert len(df) == 5572 and df["Label"].value_counts()["spam"] == 747
