"""The classifier's forward: the last block computes one query per row, and it equals the full forward."""

import pytest
import torch

from llmclf.classifier import POOLINGS, TextClassifier
from llmclf.models import MODELS, build_model
from llmclf.models.common import Attend


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_single_query_last_block_equals_pooling_the_full_forward(arch, pooling, causal):
    torch.manual_seed(0)
    model = TextClassifier(build_model(MODELS[f"{arch}-tiny"].config), 2, pooling, causal).eval()
    ids = torch.randint(0, 1000, (3, 11), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([11, 6, 2])
    with torch.no_grad():
        bb = model.backbone
        x = bb.run_blocks(bb.embed(ids), Attend.full(lengths, causal))  # every position of every block
        want = model.head(model.pool(x, lengths))
        got = model(ids, lengths)
        hidden = bb.run_blocks(bb.embed(ids), Attend.full(lengths, causal), 0, 1)
        from_block_1 = model.from_hidden(hidden, lengths, start=1)  # as from the frozen-prefix cache
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_block_1, got, atol=0, rtol=0)


def _tiny(pooling="last_nonpad", causal=True):
    torch.manual_seed(0)
    return TextClassifier(build_model(MODELS["gpt2-tiny"].config), 2, pooling, causal)


def test_first_token_pooling_reads_position_zero_and_causal_flag_controls_attention():
    ids = torch.tensor([[11, 22, 33, 44, 55]])
    other = torch.tensor([[11, 99, 98, 97, 96]])  # same first token, different rest
    causal = _tiny(pooling="first", causal=True).eval()
    full = _tiny(pooling="first", causal=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(causal(ids), causal(other), rtol=0, atol=0)  # position 0 sees only itself
        assert not torch.allclose(full(ids), full(other), atol=1e-6)  # without the mask it sees later tokens
        last = _tiny(pooling="last_nonpad").eval()
        assert not torch.allclose(last(ids), last(other), atol=1e-6)  # the last token does see them


def test_mean_last_pooling_reads_the_mean_and_the_last_real_token_each_normed_alone():
    model = _tiny(pooling="mean_last").eval()
    bb, d = model.backbone, model.backbone.cfg.emb_dim
    assert bb.out_head.in_features == 2 * d
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        x = bb.run_blocks(bb.embed(ids), Attend.full(lengths, True))
        rows = []
        for i, n in enumerate(lengths.tolist()):
            mean, last = x[i, :n].mean(0), x[i, n - 1]
            rows.append(torch.cat([bb.final_norm(mean), bb.final_norm(last)]))
        want = bb.out_head(torch.stack(rows))
        torch.testing.assert_close(model(ids, lengths), want, atol=1e-5, rtol=0)
        # padding beyond a row's length changes nothing
        padded = torch.tensor([[5, 6, 7, 8], [9, 10, 77, 78]])
        torch.testing.assert_close(model(padded, lengths), want, atol=1e-5, rtol=0)
