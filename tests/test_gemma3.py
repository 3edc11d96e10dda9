"""Gemma 3 (models/gemma3.py) against transformers' Gemma3ForCausalLM: small random configs saved by
transformers (no download), read from a Hugging Face directory and from a GGUF written as llama.cpp writes one.
The real 270M GGUF is checked the same way by `python bench/gemma3_check.py` (a 253 MB download, and about a
minute of loading, too long for the default suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmclf.errors import LlmclfError
from llmclf.generate import generate_greedy
from llmclf.weights.gguf import load_gguf
from llmclf.weights.hf import GEMMA3_NAMES, load_hf_dir

transformers = pytest.importorskip("transformers")

# Four layers alternating local (a window of 4 positions) and global, a query scale that is not 1/sqrt(head_dim),
# and sequences longer than the window: every Gemma-specific part changes these logits.
GEMMA3 = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=4,
              sliding_window_pattern=2, query_pre_attn_scalar=24, pad_token_id=0)
IDS = torch.randint(1, 128, (3, 13), generator=torch.Generator().manual_seed(1))


def _reference(seed=0, **overrides):
    torch.manual_seed(seed)
    ref = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**{**GEMMA3, **overrides})).eval()
    with torch.no_grad():  # fresh norms are zeros (a scale of 1): make them count, so a dropped one would show
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return ref


@torch.no_grad()
def test_logits_and_greedy_text_match_transformers(tmp_path):
    ref = _reference()
    ref.save_pretrained(tmp_path / "g")
    ours, cfg = load_hf_dir(tmp_path / "g")
    assert (cfg.sliding_window, cfg.sliding_pattern, cfg.query_pre_attn_scalar) == (4, 2, 24.0)
    assert [b.sliding for b in ours.trf_blocks] == [t == "sliding_attention" for t in ref.config.layer_types]
    torch.testing.assert_close(ours.eval()(IDS), ref(IDS).logits, atol=1e-4, rtol=0)
    prompt = IDS[0, :5].tolist()
    expected = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, 5:]
    assert generate_greedy(ours, prompt, max_new_tokens=12) == expected.tolist()


@torch.no_grad()
def test_a_right_padded_batch_matches_transformers_attention_mask(tmp_path):
    ref = _reference(seed=3)
    ref.save_pretrained(tmp_path / "g")
    ours, _ = load_hf_dir(tmp_path / "g")
    lengths = torch.tensor([13, 9, 3])
    mask = (torch.arange(13)[None, :] < lengths[:, None]).long()
    got, want = ours.eval()(IDS, lengths), ref(IDS, attention_mask=mask).logits
    for row, n in enumerate(lengths.tolist()):  # padded positions are never read
        torch.testing.assert_close(got[row, :n], want[row, :n], atol=1e-4, rtol=0)


@torch.no_grad()
def test_the_sliding_window_is_what_makes_the_match(tmp_path):
    """The same weights with the window as long as the sequence give other logits: the comparisons above
    would catch a window that is not applied."""
    _reference().save_pretrained(tmp_path / "g")
    ours, _ = load_hf_dir(tmp_path / "g")
    wide = _reference(sliding_window=64)
    assert (ours.eval()(IDS) - wide(IDS).logits).abs().max() > 1e-2


@pytest.mark.parametrize("setting, value", [("final_logit_softcapping", 30.0), ("attn_logit_softcapping", 50.0),
                                            ("use_bidirectional_attention", True)])
def test_settings_not_implemented_are_refused_by_name(tmp_path, setting, value):
    _reference(**{setting: value}).save_pretrained(tmp_path / "g")
    with pytest.raises(LlmclfError, match=f"the Gemma 3 model here does not implement: {setting}"):
        load_hf_dir(tmp_path / "g")


def test_layer_kinds_other_than_every_nth_global_are_refused(tmp_path):
    import json
    _reference().save_pretrained(tmp_path / "g")
    c = json.loads((tmp_path / "g" / "config.json").read_text())
    c["layer_types"] = ["full_attention"] * 4
    (tmp_path / "g" / "config.json").write_text(json.dumps(c))
    with pytest.raises(LlmclfError, match="layer_types: .* \\(implemented: every 2th layer global\\)"):
        load_hf_dir(tmp_path / "g")


def _write_gguf(path, ref):
    """ref as llama.cpp's converter writes a gemma3 GGUF: norms stored as 1 + weight, q/k rows not permuted,
    a SentencePiece vocabulary of tokens, scores and types (no merges), BOS added."""
    import gguf
    sd = {k: v.float().numpy() for k, v in ref.state_dict().items()}
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["\u2581", "a", "b", "  ", "\u2581a", "ab", "\u2581ab"]  # "  ": as Gemma's file spells "▁▁"
    tokens += [f"<unused{i}>" for i in range(GEMMA3["vocab_size"] * 3 - len(tokens))]
    w = gguf.GGUFWriter(str(path), "gemma3")
    for add, v in (("context_length", 64), ("embedding_length", 32), ("block_count", 4), ("feed_forward_length", 64),
                   ("head_count", 4), ("head_count_kv", 2), ("key_length", 16), ("value_length", 16),
                   ("layer_norm_rms_eps", 1e-6), ("rope_freq_base", 1e6), ("sliding_window", 4)):
        getattr(w, f"add_{add}")(v)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(len(tokens))])
    w.add_token_types([3, 3, 3, 2] + [6] * 256 + [1, 1, 1, 4, 1, 1, 1] + [3] * (len(tokens) - 267))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    vocab = GEMMA3["vocab_size"] * 3
    emb = np.concatenate([sd["model.embed_tokens.weight"]] * 3)[:vocab]  # the vocabulary above, 384 tokens
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", sd["model.norm.weight"] + 1)
    theirs = {h: g for g, h in {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
              "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm"}.items()}
    assert set(theirs) == set(GEMMA3_NAMES.values())
    for i in range(4):
        for h, g in theirs.items():
            t = sd[f"model.layers.{i}.{h}.weight"]
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(t + 1 if "norm" in h else t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def test_a_gguf_written_as_llama_cpp_writes_one_gives_the_models_logits(tmp_path):
    # llama.cpp's gemma3 hard-codes every 6th layer global (this file's 4 layers all slide), the local RoPE base,
    # and the query scale 1/sqrt(key_length) (transformers' GGUF reader keeps its default 256 instead, which is the
    # same number for the real 270M file only; so the reference here is the model the file was written from).
    ref = _reference(seed=5, vocab_size=GEMMA3["vocab_size"] * 3, sliding_window_pattern=6, query_pre_attn_scalar=16)
    _write_gguf(tmp_path / "tiny.gguf", ref)
    ours, cfg, tok, special = load_gguf(tmp_path / "tiny.gguf")
    assert (cfg.sliding_pattern, cfg.rope_local_base, cfg.query_pre_attn_scalar) == (6, 10_000.0, 16.0)
    assert special == {"eos_id": 1, "pad_id": 0, "bos_id": 2, "add_bos": True}
    torch.testing.assert_close(ours.eval()(IDS), ref(IDS).logits, atol=1e-4, rtol=0)
    assert tok.encode("ab ab  a", add_special_tokens=False).tokens == ["ab", "\u2581ab", "\u2581\u2581", "a"]
    assert tok.encode("é", add_special_tokens=False).tokens == ["<0xC3>", "<0xA9>"]  # byte fallback
    assert tok.decode(tok.encode("ab ab  a é", add_special_tokens=False).ids) == "ab ab  a é"
