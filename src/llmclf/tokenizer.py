"""Tokenizers behind one small interface: `encode`, `encode_batch`, `decode`, `pad_id`, `eos_id`, `save`.

GPT-2 uses tiktoken with OpenAI's two BPE files; Llama-family models use the `tokenizers` library.
`encode_batch` is the classifier's view of texts: with `append_eos` set, every text ends with the model's
end-of-text token, so pooling at the last real token reads a position that has seen the whole text and
knows it is over (what the book's padding with <|endoftext|> gives GPT-2). `encode` (generation) never
appends it.

A pair classifier (`pair` set; `--text-pair-column`) reads each text as "first PAIR_SEP second": both are
encoded on their own, cut longest-first so that part of each survives `max_length`, and joined by the model's
end-of-text token, the one separator every backbone's vocabulary has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import LlmclfError

LONG_TEXTS = ("cut", "head_tail", "windows")  # what a text longer than max_length becomes (see _Encoder)
MAX_WINDOWS = 16  # windows per text at most: a text is read up to about 8.5 x max_length tokens
PAIR_SEP = "\x1f"  # ASCII unit separator: joins a pair's two texts into the one string the pipeline carries
GPT2_FILES = {"vocab.bpe": "gpt2-vocab.bpe", "encoder.json": "gpt2-encoder.json"}  # file -> assets entry


def _clean(text: str, max_length: int | None = None, longest_token: int = 128, tail: bool = False) -> str:
    """Lone surrogates (not encodable as UTF-8) become '?'. With max_length, the text is first cut to
    max_length * longest_token characters: the first max_length tokens never span more (a token covers at
    most longest_token characters), and BPE on a multi-megabyte text would otherwise take minutes. With
    `tail`, as many characters of the end are kept too (for head+tail: the last tokens are the same)."""
    n = None if max_length is None else max_length * longest_token
    if n is not None and tail and len(text) > 2 * n:
        text = text[:n] + text[-n:]
    elif n is not None:
        text = text[:n]
    return text.encode("utf-8", "replace").decode("utf-8")


def join_pair(first: str, second: str) -> str:
    """The one string a text pair travels as (a separator inside either text becomes a space)."""
    return first.replace(PAIR_SEP, " ") + PAIR_SEP + second.replace(PAIR_SEP, " ")


def split_pair(text: str) -> tuple[str, str]:
    first, _, second = text.partition(PAIR_SEP)
    return first, second


def cut_pair(a: list[int], b: list[int], budget: int | None) -> tuple[list[int], list[int]]:
    """Longest-first truncation of two token lists to `budget` tokens in all: the shorter is kept whole when it
    fits in half the budget, else both get half (the first the odd token)."""
    if budget is None or len(a) + len(b) <= budget:
        return a, b
    budget, half = max(budget, 0), max(budget, 0) // 2
    if len(a) <= half:
        return a, b[: budget - len(a)]
    if len(b) <= half:
        return a[: budget - len(b)], b
    return a[: budget - half], b[:half]


def head_tail(ids: list[int], room: int) -> list[int]:
    """A quarter of `room` from the start, the rest from the end (Sun et al. 2019 keep 128 + 382 of BERT's 512;
    here the end gets more too, where the last-token readout sits)."""
    if len(ids) <= room:
        return ids
    head = room // 4
    return ids[:head] + ids[len(ids) - (room - head):]


def window_starts(n: int, width: int, stride: int) -> list[int]:
    """Starts of windows of `width` tokens every `stride` over n tokens, the last one ending at the end."""
    starts = list(range(0, max(n - width, 0) + 1, stride))
    return starts + [n - width] if starts[-1] + width < n else starts


class _Encoder:
    """`encode_batch` over a subclass's `_ids(texts, max_length, tail)`: single texts, or pairs (see the module
    doc). A text longer than max_length (`long_texts`): cut at the end (the book), cut in the middle
    (head_tail), or read as overlapping windows whose predictions are averaged (windows: `encode_windows`;
    `encode_batch` then gives the first window)."""

    append_eos = False
    pair = False
    long_texts = "cut"
    bos_id: int | None = None  # set for models trained with a beginning-of-text token before every text (Gemma)

    def _bos(self, max_length: int | None) -> tuple[list[int], int | None]:
        """([bos] or [], the room left for the text's own tokens)."""
        bos = [] if self.bos_id is None else [self.bos_id]
        return bos, None if max_length is None else max(max_length - len(bos), 1)

    def encode_batch(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids of each text (after BOS, if the model has one), at most max_length of them when given."""
        bos, room = self._bos(max_length)
        return [bos + ids for ids in self._encode_text(texts, room)]

    def _encode_text(self, texts: list[str], max_length: int | None) -> list[list[int]]:
        eos = self.eos_id if self.append_eos else None
        if not self.pair and self.long_texts == "head_tail" and max_length is not None:
            room = max(max_length - (eos is not None), 0)
            return _finish([head_tail(e, room) for e in self._ids(texts, max_length, tail=True)], max_length, eos)
        if not self.pair:
            return _finish(self._ids(texts, max_length), max_length, eos)
        parts = [split_pair(t) for t in texts]
        firsts, seconds = self._ids([a for a, _ in parts], max_length), self._ids([b for _, b in parts], max_length)
        budget = None if max_length is None else max_length - 1 - (eos is not None)  # room for separator (and eos)
        joined = [x + [self.eos_id] + y for x, y in (cut_pair(a, b, budget) for a, b in zip(firsts, seconds))]
        return _finish(joined, max_length, eos)

    def encode_windows(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[int]]:
        """(windows, owner): each text's overlapping windows of at most max_length tokens (half a window apart,
        at most MAX_WINDOWS), and for every window the index of its text. Each window starts with BOS, if any."""
        eos = self.eos_id if self.append_eos else None
        bos, max_length = self._bos(max_length)
        width = max(max_length - (eos is not None), 1)
        stride = max(width // 2, 1)
        cap = width + stride * (MAX_WINDOWS - 1)
        windows, owner = [], []
        for i, ids in enumerate(self._ids(texts, cap)):
            ids = ids[:cap]
            for start in window_starts(len(ids), width, stride):
                windows.append(bos + ids[start:start + width] + ([eos] if eos is not None else []))
                owner.append(i)
        return windows, owner

    def _config(self) -> dict:
        return {"append_eos": self.append_eos, **({"pair": True} if self.pair else {}),
                **({"bos_id": self.bos_id} if self.bos_id is not None else {}),
                **({"long_texts": self.long_texts} if self.long_texts != "cut" else {})}


class GPT2Tokenizer(_Encoder):
    """GPT-2 byte-level BPE through tiktoken; <|endoftext|> (50256) pads, as in the book."""

    kind = "gpt2-bpe"

    def __init__(self, bpe_dir: str | Path | None = None):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        from .assets import ASSETS, _verify, fetch

        paths = {}
        for fname, asset_name in GPT2_FILES.items():
            if bpe_dir is not None:
                p = Path(bpe_dir) / fname
                problem = "missing" if not p.is_file() else _verify(ASSETS[asset_name], p)
                if problem:
                    raise LlmclfError(f"tokenizer file {p}: {problem}")
                paths[fname] = p
            else:
                paths[fname] = fetch(asset_name)
        ranks = data_gym_to_mergeable_bpe_ranks(str(paths["vocab.bpe"]), str(paths["encoder.json"]))
        self._paths = paths
        self.enc = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                     special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
        self.pad_id = self.eos_id = 50256

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: a message that contains the text "<|endoftext|>" is ordinary text, not a control token.
        return self.enc.encode_ordinary(_clean(text))

    def _ids(self, texts: list[str], max_length: int | None, tail: bool = False) -> list[list[int]]:
        return self.enc.encode_ordinary_batch([_clean(t, max_length, 128, tail) for t in texts])

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def save(self, directory: Path) -> dict:
        for fname, p in self._paths.items():
            shutil.copyfile(p, Path(directory) / fname)
        return {"type": self.kind, "files": sorted(self._paths), **self._config()}


class HFTokenizer(_Encoder):
    """A `tokenizers.Tokenizer` (tokenizer.json or built from GGUF metadata). Its own post-processor is never
    run: BOS (bos_id) is added here, for the models that expect it."""

    kind = "hf"

    def __init__(self, tokenizer, pad_id: int, eos_id: int, bos_id: int | None = None):
        self.tok = tokenizer
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id
        self._longest = None  # longest vocabulary entry, computed on first truncated encode

    @classmethod
    def from_file(cls, path: Path, pad_id: int | None = None, eos_id: int | None = None):
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise LlmclfError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0][:100]})") from None
        if eos_id is None:
            eos_id = _special_id(tok, ["<|im_end|>", "<|endoftext|>", "</s>", "<|end_of_text|>"], default=0)
        return cls(tok, pad_id if pad_id is not None else eos_id, eos_id)

    def encode(self, text: str) -> list[int]:
        return self._bos(None)[0] + self.tok.encode(_clean(text), add_special_tokens=False).ids

    def _ids(self, texts: list[str], max_length: int | None, tail: bool = False) -> list[list[int]]:
        if max_length is not None and self._longest is None:
            self._longest = max(len(t) for t in self.tok.get_vocab())  # byte-level symbols: >= chars covered
        cleaned = [_clean(t, max_length, self._longest or 0, tail) for t in texts]
        return [e.ids for e in self.tok.encode_batch(cleaned, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def save(self, directory: Path) -> dict:
        self.tok.save(str(Path(directory) / "tokenizer.json"))
        return {"type": self.kind, "files": ["tokenizer.json"], "pad_id": self.pad_id, "eos_id": self.eos_id,
                **self._config()}


def _finish(ids: list[list[int]], max_length: int | None, eos_id: int | None) -> list[list[int]]:
    """Truncate to max_length, keeping room for the end-of-text token when one is appended."""
    if eos_id is None:
        return [e[:max_length] for e in ids] if max_length is not None else ids
    keep = None if max_length is None else max_length - 1
    return [e[:keep] + [eos_id] for e in ids]


def _special_id(tok, candidates, default):
    for c in candidates:
        i = tok.token_to_id(c)
        if i is not None:
            return i
    return default


def load_saved_tokenizer(directory: Path, cfg: dict):
    """The tokenizer a saved classifier was trained with (see `save`)."""
    if cfg["type"] == GPT2Tokenizer.kind:
        tok = GPT2Tokenizer(directory)
    elif cfg["type"] == HFTokenizer.kind:
        tok = HFTokenizer.from_file(Path(directory) / "tokenizer.json", cfg["pad_id"], cfg["eos_id"])
        tok.bos_id = cfg.get("bos_id")
    else:
        raise LlmclfError(f"{directory}: unknown tokenizer type {cfg['type']!r}")
    tok.append_eos = bool(cfg.get("append_eos", False))
    tok.pair = bool(cfg.get("pair", False))
    tok.long_texts = cfg.get("long_texts", "cut")
    return tok


def tokenizer_for_dir(path: Path, arch: str, tokenizer_dir=None):
    """Tokenizer of a Hugging Face model directory: its tokenizer.json, else GPT-2's BPE for GPT-2 models."""
    tj = Path(path) / "tokenizer.json"
    if tj.is_file():
        c, cfg_file = {}, Path(path) / "config.json"
        if cfg_file.is_file():
            c = json.loads(cfg_file.read_text())
        eos = c.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        if arch == "gpt2":
            return GPT2Tokenizer(tokenizer_dir)
        tok = HFTokenizer.from_file(tj, None, eos)
        tok.bos_id = c.get("bos_token_id", 2) if arch == "gemma3" else None  # Gemma reads every text after <bos>
        return tok
    if arch == "gpt2":
        return GPT2Tokenizer(tokenizer_dir)
    raise LlmclfError(f"{path}: no tokenizer.json beside the weights")
