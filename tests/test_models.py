"""Our GPT-2 and its loader against transformers' GPT2LMHeadModel (random weights, no download)."""

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, run_cli
from llmclf.generate import generate_greedy
from llmclf.models import MODELS, build_model
from llmclf.models.common import Attend
from llmclf.weights.hf import load_hf_dir

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=128, n_layer=3, n_head=4, n_positions=256, vocab_size=50257)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("hf_gpt2")
    ref.save_pretrained(d, safe_serialization=True)
    return d, ref


def test_gpt2_logits_match_transformers(hf_gpt2_dir):
    d, ref = hf_gpt2_dir
    ours, cfg = load_hf_dir(d)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length) == (128, 3, 4, 256)
    ids = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours.eval()(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_gpt2_greedy_generation_matches_transformers(hf_gpt2_dir):
    d, ref = hf_gpt2_dir
    ours, _ = load_hf_dir(d)
    prompt = [464, 3139, 286, 4881, 318]  # "The capital of France is"
    with torch.no_grad():
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                pad_token_id=50256)[0, len(prompt):].tolist()
    got = generate_greedy(ours, prompt, max_new_tokens=12)
    assert got == expected[: len(got)] and len(got) == 12


def test_cli_generate_from_saved_directory_equals_transformers(hf_gpt2_dir, gpt2_tokenizer):
    d, ref = hf_gpt2_dir
    prompt = "Every effort moves you"
    ids = gpt2_tokenizer.encode(prompt)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=50256)
    expected = prompt + gpt2_tokenizer.decode(out[0, len(ids):].tolist())
    r = run_cli("generate", "--model", d, "--tokenizer-dir", GPT2_TOKENIZER_DIR, "--max-new-tokens", "10", prompt)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == expected


def test_mismatched_weights_are_refused(hf_gpt2_dir, tmp_path):
    import json
    import shutil

    from llmclf.errors import LlmclfError
    d, _ = hf_gpt2_dir
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_embd"] = 256
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlmclfError, match="do not match the config"):
        load_hf_dir(bad)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
def test_a_block_called_alone_equals_the_models_run_blocks(arch):
    """block(x) without a mask is a causal forward; a Llama block without the model's RoPE tables builds the
    same ones."""
    torch.manual_seed(0)
    model = build_model(MODELS[f"{arch}-tiny"].config).eval()
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = model.embed(ids)
        want = model.run_blocks(x, Attend.full())
        for block in model.trf_blocks:
            x = block(x)
    torch.testing.assert_close(x, want, atol=0, rtol=0)

