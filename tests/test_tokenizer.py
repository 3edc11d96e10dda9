"""Tokenizers: offline GPT-2 BPE from local files, truncation, --append-eos, save/load round trip."""

import pytest

from conftest import GPT2_TOKENIZER_DIR
from llmclf.errors import LlmclfError
from llmclf.tokenizer import GPT2Tokenizer, load_saved_tokenizer


def test_gpt2_bpe_from_local_files_matches_known_ids(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Hello, world!") == [15496, 11, 995, 0]
    assert gpt2_tokenizer.encode("<|endoftext|>") != [50256]  # special-token text is plain text
    assert gpt2_tokenizer.pad_id == gpt2_tokenizer.eos_id == 50256


def test_tampered_bpe_file_is_refused(tmp_path):
    (tmp_path / "vocab.bpe").write_bytes((GPT2_TOKENIZER_DIR / "vocab.bpe").read_bytes()[:-10])
    (tmp_path / "encoder.json").write_bytes((GPT2_TOKENIZER_DIR / "encoder.json").read_bytes())
    with pytest.raises(LlmclfError, match="vocab.bpe"):
        GPT2Tokenizer(tmp_path)


def test_append_eos_keeps_room_for_the_end_token_and_survives_saving(tmp_path):
    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    plain = tok.encode_batch(["a b c d e f g"])[0]
    tok.append_eos = True
    assert tok.encode_batch(["a b c d e f g"])[0] == plain + [50256]
    assert tok.encode_batch(["a b c d e f g"], max_length=4)[0] == plain[:3] + [50256]
    assert tok.encode("a b c") == plain[:3]  # generation never appends
    cfg = tok.save(tmp_path)
    again = load_saved_tokenizer(tmp_path, cfg)
    assert again.append_eos and again.encode_batch(["a b"])[0][-1] == 50256


def test_text_pairs_are_joined_by_the_end_token_and_cut_longest_first(tmp_path):
    from llmclf.tokenizer import cut_pair, join_pair

    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    a, b = tok.encode("one two three four five six seven eight"), tok.encode("nine ten")
    tok.pair = True
    pair = join_pair("one two three four five six seven eight", "nine ten")
    assert tok.encode_batch([pair])[0] == a + [50256] + b
    # 6 tokens: one for the separator, the short second text whole (2), the long first cut to the rest (3)
    assert tok.encode_batch([pair], max_length=6)[0] == a[:3] + [50256] + b
    assert cut_pair(list(range(10)), list(range(9)), 7) == (list(range(4)), list(range(3)))  # both long: halves
    assert cut_pair([1], list(range(9)), 4) == ([1], [0, 1, 2])
    assert cut_pair([1, 2], [3], None) == ([1, 2], [3])
    tok.append_eos = True  # room for both the separator and the end token
    assert tok.encode_batch([pair], max_length=6)[0] == a[:2] + [50256] + b + [50256]
    assert tok.encode_batch([pair], max_length=1)[0] == [50256]
    assert join_pair("x\x1fy", "z") == "x y\x1fz"  # a separator inside a text never splits it again
    again = load_saved_tokenizer(tmp_path, tok.save(tmp_path))
    assert again.pair and again.encode_batch([pair], max_length=6) == tok.encode_batch([pair], max_length=6)
    tok.pair = False  # a single-text classifier reads the separator as text
    assert tok.encode_batch([pair])[0] != a + [50256] + b


def test_long_texts_head_tail_and_windows():
    from llmclf.tokenizer import MAX_WINDOWS

    tok = GPT2Tokenizer(GPT2_TOKENIZER_DIR)
    text = " ".join(f"w{i}" for i in range(100))
    ids = tok.encode(text)
    tok.long_texts = "head_tail"
    assert tok.encode_batch([text], 20)[0] == ids[:5] + ids[-15:]  # a quarter from the start, the rest from the end
    assert tok.encode_batch(["w1 w2"], 20)[0] == tok.encode("w1 w2")  # a short text is whole
    huge = "x" * 5000 + " " + text  # the end survives the pre-cut of characters
    assert tok.encode_batch([huge], 20)[0][-15:] == ids[-15:]
    tok.long_texts = "windows"
    windows, owner = tok.encode_windows([" ".join(f"w{i}" for i in range(25)), "short"], 20)
    short = tok.encode(" ".join(f"w{i}" for i in range(25)))
    assert windows == [short[0:20], short[10:30], short[20:40], short[30:50], tok.encode("short")]
    assert owner == [0, 0, 0, 0, 1]
    windows, owner = tok.encode_windows([text], 20)
    assert len(windows) == MAX_WINDOWS and windows[-1] == ids[150:170]  # at most 16 windows, half overlapping
    tok.append_eos = True
    windows, _ = tok.encode_windows([text], 20)
    assert windows[1] == ids[9:28] + [50256]  # every window ends with the end-of-text token


def test_a_bos_token_starts_every_text_and_window_within_max_length_and_survives_saving(tmp_path):
    """Gemma reads every text after <bos>: encode, encode_batch, windows and pairs all start with it, and it
    counts toward max_length."""
    from llmclf.export import _hf_tokenizer
    from llmclf.tokenizer import HFTokenizer, join_pair

    tok = HFTokenizer(_hf_tokenizer(None, GPT2_TOKENIZER_DIR), pad_id=0, eos_id=50256, bos_id=7)
    text = " ".join(f"w{i}" for i in range(25))
    ids = tok.tok.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == [7] + ids
    assert tok.encode_batch([text], max_length=5) == [[7] + ids[:4]]
    tok.append_eos = True
    assert tok.encode_batch([text], max_length=5) == [[7] + ids[:3] + [50256]]
    tok.append_eos, tok.long_texts = False, "windows"
    windows, _ = tok.encode_windows([text], 11)
    assert windows[0] == [7] + ids[:10] and windows[1] == [7] + ids[5:15]
    tok.long_texts, tok.pair = "cut", True
    assert tok.encode_batch([join_pair("w1", "w2")])[0] == [7] + tok.tok.encode("w1").ids + [50256] + tok.tok.encode("w2").ids
    again = load_saved_tokenizer(tmp_path, tok.save(tmp_path))
    assert again.bos_id == 7 and again.encode_batch([text], 5) == tok.encode_batch([text], 5)
