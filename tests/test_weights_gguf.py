"""GGUF loading (SmolLM2-135M-Instruct Q4_1) against transformers' own GGUF loader, plus the HF
safetensors loader against transformers' LlamaForCausalLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmclf.assets import fetch
from llmclf.errors import LlmclfError
from llmclf.generate import generate_greedy
from llmclf.weights.gguf import _unpermute, load_gguf, load_gguf_tokenizer
from llmclf.weights.hf import load_hf_dir

PROMPTS = [
    "The capital of France is",
    "Hello, my name is",
    "def fib(n):\n    return fib(n - 1) + fib(n - 2)",
    "Numbers 12345 and émojis 😀 ünïcödé",
]

# Measured on CPU (torch 2.13, transformers 5.23): our logits equal transformers' bit for bit (max abs
# diff 0.0: same dequantized float32 weights, same op order). Rows of a right-padded batch go through the
# masked SDPA kernel instead and differ by up to 5e-5; switching the reference to "eager" attention moves
# logits by up to 6e-5. Logits reach ~35, so these are float32 re-association noise (~2e-6 relative);
# a real mapping bug is far outside them (skipping the q un-permute in one layer moves logits by ~16).
LOGIT_ATOL = 1e-4         # same batch shape as the reference: room for a different kernel or op order
PADDED_LOGIT_ATOL = 2e-4  # masked (padded) path: 4x the measured 5e-5


@pytest.fixture(scope="module")
def gguf_path():
    return fetch("smollm2-135m-instruct-q4")


@pytest.fixture(scope="module")
def ours(gguf_path):
    model, cfg, tok, special = load_gguf(gguf_path)
    return model.eval(), cfg, tok, special


@pytest.fixture(scope="module")
def reference(gguf_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def reference_tokenizer(gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def test_config_and_special_ids(ours):
    _, cfg, tok, special = ours
    assert (cfg.vocab_size, cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_groups, cfg.hidden_dim) == \
        (49152, 576, 30, 9, 3, 1536)
    assert cfg.rope_base == 100000.0 and cfg.norm_eps == 1e-5 and cfg.tie_embeddings
    assert special == {"eos_id": 2, "pad_id": 2, "bos_id": 1, "add_bos": False}  # SmolLM2 reads texts without BOS
    assert tok.id_to_token(2) == "<|im_end|>" and tok.id_to_token(1) == "<|im_start|>"


def test_logits_match_transformers(ours, reference):
    model, _, tok, special = ours
    enc = [_encode(tok, p) for p in PROMPTS]
    T = max(map(len, enc))
    batch = torch.tensor([e + [special["pad_id"]] * (T - len(e)) for e in enc])
    with torch.no_grad():
        padded = model(batch, torch.tensor([len(e) for e in enc]))  # right-padded batch, masked by lengths
        for i, ids in enumerate(enc):
            want = reference(torch.tensor([ids])).logits[0]
            got = model(torch.tensor([ids]))[0]
            torch.testing.assert_close(got, want, atol=LOGIT_ATOL, rtol=0)
            torch.testing.assert_close(padded[i, :len(ids)], want, atol=PADDED_LOGIT_ATOL, rtol=0)


def test_tokenizer_matches_transformers(ours, reference_tokenizer):
    _, _, tok, _ = ours
    texts = PROMPTS + [
        "  leading spaces,\ttabs\t\tand\n\nnewlines   ",
        "trailing   ",
        "It's 3.14159 o'clock; we're paying $1,000,000!",
        "日本語のテキスト, 中文, русский, العربية, ελληνικά",
        "emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
        "<|im_start|>user\nhi<|im_end|>\n",  # control tokens stay whole
        "",
    ]
    for text in texts:
        ids = _encode(tok, text)
        assert ids == reference_tokenizer(text)["input_ids"], text
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_splits_digits_like_llama_cpp(ours):
    # The file's pre-tokenizer type is "smollm": llama.cpp (and SmolLM2's own tokenizer.json) split every
    # digit off before the GPT-2 regex, so whitespace before a digit stays one run. transformers' GGUF
    # loader does not know "smollm" and falls back to the plain GPT-2 regex, giving ['x', 'Ġ', 'Ġ', '1', '2'];
    # the vocabulary has no multi-digit tokens, so this is the only kind of text where the two differ.
    _, _, tok, _ = ours
    assert tok.encode("x  12", add_special_tokens=False).tokens == ["x", "ĠĠ", "1", "2"]
    assert tok.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]


def test_greedy_generation_knows_paris(ours):
    model, _, tok, special = ours
    new = generate_greedy(model, _encode(tok, "The capital of France is"), max_new_tokens=8, eos_id=special["eos_id"])
    assert "Paris" in tok.decode(new)


def test_tokenizer_alone(gguf_path, ours):
    tok, special = load_gguf_tokenizer(gguf_path)
    assert special == ours[3]
    assert _encode(tok, PROMPTS[3]) == _encode(ours[2], PROMPTS[3])


def _llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k weights."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llamacpp_permute():
    w = np.random.default_rng(0).standard_normal((3 * 64, 40)).astype(np.float32)
    assert torch.equal(_unpermute(torch.from_numpy(_llamacpp_permute(w, 3)), 3), torch.from_numpy(w))


# --- random tiny transformers models -------------------------------------------------------------------


def _tiny_hf_model(tie: bool, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights well away from the init values, so a swapped or skipped tensor shows
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


@torch.no_grad()
def _hf_greedy(model, ids, n):
    ids = torch.tensor([ids])
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -n:].tolist()


def _assert_same_model(ours_model, hf_model, seed=1):
    torch.manual_seed(seed)
    batch = torch.randint(0, 1000, (3, 17))
    with torch.no_grad():
        torch.testing.assert_close(ours_model.eval()(batch), hf_model(batch).logits, atol=1e-4, rtol=0)
    prompt = batch[0, :5].tolist()
    assert generate_greedy(ours_model, prompt, max_new_tokens=12) == _hf_greedy(hf_model, prompt, 12)


@pytest.mark.parametrize("tie", [True, False])
def test_save_pretrained_round_trip(tmp_path, tie):
    hf_model = _tiny_hf_model(tie)
    hf_model.save_pretrained(tmp_path)  # safetensors: the default since transformers 4.35, the only format in 5
    model, cfg = load_hf_dir(tmp_path)
    assert cfg.tie_embeddings == tie and cfg.rope_base == 50000.0 and cfg.n_kv_groups == 2
    _assert_same_model(model, hf_model)


def test_synthetic_gguf_untied_with_kv_heads(tmp_path):
    """An F32 GGUF written the way llama.cpp converts a model (q/k permuted, separate output.weight)."""
    gguf = pytest.importorskip("gguf")
    hf_model = _tiny_hf_model(tie=False, seed=2)
    sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    byte_chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 173)] + \
        [chr(c) for c in range(174, 256)] + [chr(256 + i) for i in range(68)]  # GPT-2's byte-to-unicode alphabet
    tokens = ["<|endoftext|>"] + byte_chars + ["Ġt"]
    tokens += [f"filler{i}" for i in range(1000 - len(tokens))]
    w = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "llama")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(["Ġ t"])
    w.add_eos_token_id(0)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    gg = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(2):
        for g, h in gg.items():
            t = sd[f"model.layers.{i}.{h}.weight"]
            t = _llamacpp_permute(t, 4) if g == "attn_q" else _llamacpp_permute(t, 2) if g == "attn_k" else t
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    model, cfg, tok, special = load_gguf(tmp_path / "tiny.gguf")
    assert not cfg.tie_embeddings and cfg.n_kv_groups == 2 and cfg.norm_eps == 1e-6
    assert special == {"eos_id": 0, "pad_id": 0, "bos_id": None, "add_bos": False}
    assert tok.encode(" t<|endoftext|>", add_special_tokens=False).tokens == ["Ġt", "<|endoftext|>"]
    _assert_same_model(model, hf_model)


# --- bad files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["head", "tail", "garbage", "empty", "missing"])
def test_bad_gguf_is_a_clear_error(tmp_path, gguf_path, kind):
    bad = tmp_path / "bad.gguf"
    if kind in ("head", "tail"):
        with open(gguf_path, "rb") as src, open(bad, "wb") as dst:
            size = gguf_path.stat().st_size
            dst.write(src.read(1_000_000 if kind == "head" else size - 4096))  # cut in metadata / tensor data
    elif kind == "garbage":
        bad.write_bytes(b"not a gguf file at all\n" * 100)
    elif kind == "empty":
        bad.touch()
    with pytest.raises(LlmclfError, match="bad.gguf") as e:
        load_gguf(bad)
    assert "\n" not in str(e.value)



def test_smollm2_classifier_is_padding_invariant(ours):
    """The real SmolLM2 backbone as a classifier: a message alone and inside a batch of much longer
    messages gets the same label and a probability within 1e-4 (right padding, last real token)."""
    import copy

    from llmclf.classifier import TextClassifier
    from llmclf.predict import Classifier, predict_texts
    from llmclf.tokenizer import HFTokenizer

    model, _cfg, tok, ids = ours
    torch.manual_seed(0)
    clf_model = TextClassifier(copy.deepcopy(model), 2).eval()
    clf = Classifier(clf_model, HFTokenizer(tok, ids["pad_id"], ids["eos_id"]), {"labels": ["ham", "spam"],
                                                                                "max_length": 256})
    short = "Ok lar... Joking wif u oni..."
    longs = ["Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. " * 3,
             "URGENT! Your mobile number has been awarded with a 2000 prize GUARANTEED. Call 09058094455 " * 2]
    alone = predict_texts(clf, [short])[0]
    batched = predict_texts(clf, [longs[0], short, longs[1]], batch_size=8)[1]
    assert int(alone.argmax()) == int(batched.argmax())
    assert torch.allclose(alone, batched, atol=1e-4)
