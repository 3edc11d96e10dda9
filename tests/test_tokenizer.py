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
