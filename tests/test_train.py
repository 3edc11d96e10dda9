"""The frozen-prefix cache gives the same training as recomputing every block (the exactness claim)."""

from dataclasses import replace

import pytest
import torch

from llmclf.classifier import TextClassifier, count_parameters, set_trainable
from llmclf.models import MODELS, build_model
from llmclf.train import PrefixCacheStore, TrainState, compute_prefix_cache, make_loaders, train_classifier_simple


class FakeDataset:
    """Random token lists of varied length, as ClassificationDataset would hold them."""

    def __init__(self, n, vocab, seed, max_len=30):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(1, max_len, (n,), generator=g).tolist()
        self.encoded = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lengths]
        # Templated texts, as in real data: every third text starts with a shared prefix (the cache stores it once).
        shared = torch.randint(0, vocab, (12,), generator=g).tolist()
        for i in range(0, n, 3):
            self.encoded[i] = shared[: 3 + i % 9] + self.encoded[i]
        self.targets = torch.randint(0, 2, (n,), generator=g).tolist()
        self.max_length = max(map(len, self.encoded))
        self.pad_id = 0

    def __len__(self):
        return len(self.encoded)


def _train(arch, trainable, pooling, cache, steps_epochs=2, causal=True, memory_budget=4 << 30):
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS[f"{arch}-tiny"].config, n_layers=3))
    model = TextClassifier(backbone, 2, pooling, causal)
    set_trainable(model, trainable)
    vocab = backbone.cfg.vocab_size
    datasets = {"train": FakeDataset(40, vocab, 1), "validation": FakeDataset(12, vocab, 2),
                "test": FakeDataset(12, vocab, 3)}
    loaders, info = make_loaders(model, datasets, 4, "cpu", seed=3, cache=cache, log=lambda *_: None,
                                 memory_budget=memory_budget)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    state = TrainState()
    train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", steps_epochs, 3, 2,
                            state=state, log=lambda *_: None, progress=False)
    return state.history, info, model


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("trainable,pooling", [("last_block", "last_nonpad"), ("last_two_blocks", "mean"),
                                               ("last_layer", "last_nonpad"), ("last_block", "last")])
def test_cached_training_equals_uncached(arch, trainable, pooling):
    cached, info_c, _ = _train(arch, trainable, pooling, "auto")
    plain, info_p, _ = _train(arch, trainable, pooling, "off")
    expected_start = {"last_block": 2, "last_two_blocks": 1, "last_layer": 3}[trainable]  # of 3 blocks
    assert info_c["cache_start_block"] == expected_start and not info_p["cache"]
    assert len(cached) == len(plain) > 4
    for a, b in zip(cached, plain):
        for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3"])
@pytest.mark.parametrize("pooling", ["last_nonpad", "mean"])
def test_prefix_cache_with_shared_prefixes_equals_each_text_alone(arch, pooling):
    torch.manual_seed(0)
    model = TextClassifier(build_model(replace(MODELS[f"{arch}-tiny"].config, n_layers=3)), 2, pooling).eval()
    ds = FakeDataset(30, model.backbone.cfg.vocab_size, 4)
    texts = ds.encoded + ds.encoded[:3] + [ds.encoded[0][:5], ds.encoded[0][:1]]  # duplicates, a text that is a prefix
    for start in (2, 3):  # states entering the last block; pooled vectors (every block frozen)
        cache = compute_prefix_cache(model, texts, start, "cpu", 0, max_tokens=64)
        with torch.inference_mode():
            for text, got in zip(texts, cache):
                x = model.backbone.embed(torch.tensor([text]))
                for block in list(model.blocks)[:start]:
                    x = block(x)
                want = model.pool(x, torch.tensor([len(text)]))[0] if start == 3 else x[0]
                assert got.shape == want.shape
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("budget", [0, 20_000])
def test_a_cache_past_its_memory_budget_spills_to_a_file_and_reads_back_the_same_bytes(budget):
    """Budget 0: every text's states in the temporary file; 20 kB: the first texts in memory, the rest on disk.
    Either way each text reads back bit for bit what the in-memory cache holds (bfloat16 states too)."""
    torch.manual_seed(0)
    model = TextClassifier(build_model(replace(MODELS["gpt2-tiny"].config, n_layers=3)), 2).eval()
    texts = FakeDataset(40, model.backbone.cfg.vocab_size, 4).encoded
    texts = texts + texts[:5]  # repeated texts are stored once
    held = compute_prefix_cache(model, texts, 2, "cpu", 0)
    spilled = compute_prefix_cache(model, texts, 2, "cpu", 0, memory_budget=budget)
    assert held.disk_bytes == 0 and spilled.memory_bytes <= budget and spilled.disk_bytes > 0
    assert spilled.memory_bytes + spilled.disk_bytes == held.memory_bytes  # nothing stored twice
    assert len(spilled) == len(texts) and all(torch.equal(a, b) for a, b in zip(held, spilled))
    assert [t.shape for t in spilled[3:9]] == [t.shape for t in held[3:9]]  # slices are views of the same store
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [t.to(torch.bfloat16) for t in held]
    from llmclf.cache_states import StateStore
    store = StateStore(len(low), 0)
    for i, t in enumerate(low):
        store.put(i, t)
    assert all(torch.equal(store[i], t) and store[i].dtype == torch.bfloat16 for i, t in enumerate(low))


def test_training_on_a_spilled_cache_equals_training_on_one_in_memory():
    held, info_h, _ = _train("llama", "last_block", "last_nonpad", "auto")
    spilled, info_s, _ = _train("llama", "last_block", "last_nonpad", "auto", memory_budget=0)
    assert info_h["cache_disk_bytes"] == 0 and info_s["cache_disk_bytes"] == info_h["cache_memory_bytes"] > 0
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in held] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in spilled]


def test_cache_store_reuses_a_cache_only_for_the_same_frozen_weights_and_texts():
    cfg = replace(MODELS["gpt2-tiny"].config, n_layers=3)

    def model_(pooling="last_nonpad", trainable="last_block", seed=0):
        torch.manual_seed(seed)
        return set_trainable(TextClassifier(build_model(cfg), 2, pooling), trainable)

    datasets = {"train": FakeDataset(20, cfg.vocab_size, 1), "validation": FakeDataset(6, cfg.vocab_size, 2),
                "test": FakeDataset(6, cfg.vocab_size, 3)}
    store = PrefixCacheStore()

    def reused(model, data=datasets):
        loaders, info = make_loaders(model, data, 4, "cpu", log=lambda *_: None, store=store)
        return info["cache_reused"], loaders

    first, loaders = reused(model_())
    assert first is False
    again = model_()
    with torch.no_grad():  # what trains (the last block, the head) is not part of the key
        again.blocks[-1].att.W_query.weight.add_(1.0)
        again.backbone.out_head.weight.add_(1.0)
    hit, loaders2 = reused(again)
    assert hit is True
    a, b = next(iter(loaders["test"])), next(iter(loaders2["test"]))
    assert a["hidden"] is not b["hidden"] and torch.equal(a["hidden"], b["hidden"])
    assert reused(model_(pooling="mean"))[0] is True  # unpooled states of the same texts: the same cache
    frozen = model_()
    with torch.no_grad():
        frozen.blocks[0].att.W_query.weight[0, 0] += 1e-3
    assert reused(frozen)[0] is False  # a frozen weight differs
    changed = {**datasets, "test": FakeDataset(6, cfg.vocab_size, 3)}
    changed["test"].encoded[0] = changed["test"].encoded[0][:-1] + [(changed["test"].encoded[0][-1] + 1) % 50]
    assert reused(model_(), changed)[0] is False  # one token differs
    assert reused(model_(pooling="last"))[0] is False  # padded to the longest text: other states
    assert reused(model_(trainable="last_two_blocks"))[0] is False  # cache enters another block
    assert reused(model_(trainable="last_layer"))[0] is False  # pooled vectors: last_nonpad
    assert reused(model_(pooling="mean", trainable="last_layer"))[0] is False  # pooled vectors: mean differs
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bfloat16 frozen pass: other states
        assert reused(model_())[0] is False
        assert reused(model_())[0] is True


def test_cache_store_drops_the_oldest_entries_past_its_budget():
    store = PrefixCacheStore(max_bytes=3 * 400)
    for key in "abc":
        store.put(key, [torch.zeros(100)])  # 400 bytes each
    assert all(store.get(k) is not None for k in "abc")
    store.get("a")  # used: now the newest
    store.put("d", [torch.zeros(100)])
    assert store.get("b") is None and all(store.get(k) is not None for k in "acd")
    store.put("huge", [torch.zeros(1000)])  # larger than the whole budget: not kept, nothing dropped
    assert store.get("huge") is None and all(store.get(k) is not None for k in "acd")


def test_cache_is_not_used_when_it_would_not_be_exact():
    _, info, _ = _train("gpt2", "all", "last_nonpad", "auto", steps_epochs=1)
    assert not info["cache"]


def test_training_lowers_the_loss():
    history, _, _ = _train("gpt2", "last_block", "last_nonpad", "auto", steps_epochs=6)
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert losses[-1] < losses[0] - 0.05


def test_trainable_parameter_counts_per_option():
    cfg = MODELS["gpt2-tiny"].config
    d = cfg.emb_dim
    block = 4 * (d * d + d) + 2 * (d * 4 * d) + 4 * d + d + 2 * 2 * d  # att + ff + biases + two norms
    head = d * 2 + 2
    norm = 2 * d
    counts = {}
    for option in ("last_layer", "last_block", "last_two_blocks", "all"):
        model = set_trainable(TextClassifier(build_model(cfg), 2), option)
        counts[option] = count_parameters(model)
    assert counts["last_layer"] == head
    assert counts["last_block"] == head + norm + block
    assert counts["last_two_blocks"] == head + norm + 2 * block
    assert counts["all"] == count_parameters(model, trainable_only=False)


def _grads_after_one_epoch(grad_accum, batch_size, n):
    """The first parameter's update from plain SGD (lr 1) over an epoch of n examples: the summed gradients
    of the epoch's optimizer steps, which tells how each step weighed its examples."""
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=2))
    model = TextClassifier(backbone, 2)
    set_trainable(model, "last_layer")
    data = FakeDataset(n, backbone.cfg.vocab_size, 1)
    loaders, _ = make_loaders(model, {"train": data, "validation": data}, batch_size, "cpu", cache="off",
                              log=lambda *_: None)
    loaders["train"].drop_last = False
    head = model.backbone.out_head.weight
    before = head.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", 1, 1000, 1,
                            grad_accum=grad_accum, log=lambda *_: None, progress=False)
    return before - head.detach()


def test_grad_accum_averages_over_the_examples_of_each_step():
    # 12 examples in micro-batches of 4, 2 per step: steps of 8 and 4 examples. The short last step must take a
    # whole step (the mean over its 4 examples), not half of one.
    # Batch size 8 without accumulation takes the same two steps over the same (seeded) order.
    accum = _grads_after_one_epoch(grad_accum=2, batch_size=4, n=12)
    plain = _grads_after_one_epoch(grad_accum=1, batch_size=8, n=12)
    assert accum.abs().sum() > 0
    assert torch.allclose(accum, plain, atol=1e-6), (accum - plain).abs().max()


def test_bfloat16_trains_float32_master_weights_under_autocast():
    """--dtype bfloat16 on a CPU: the weights stay float32 and move by AdamW steps of 5e-5 (which a bfloat16
    weight of |w| >= ~0.016 cannot hold), and the loss falls."""
    from llmclf.finetune import bf16_autocast
    from llmclf.options import FinetuneOptions
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=2))
    model = TextClassifier(backbone, 2)
    set_trainable(model, "last_block")
    data = FakeDataset(32, backbone.cfg.vocab_size, 1)
    frozen, amp = bf16_autocast(FinetuneOptions(out="", dtype="bfloat16"), "cpu")
    assert frozen is not None and bf16_autocast(FinetuneOptions(out="", dtype="float32"), "cpu") == (None, None)
    with amp():
        loaders, info = make_loaders(model, {"train": data, "validation": data}, 8, "cpu", log=lambda *_: None)
    block = model.blocks[-1]
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    state = TrainState()
    train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", 30, 4, 4,
                            state=state, log=lambda *_: None, progress=False, autocast=amp)
    big = [n for n, p in before.items() if p.dim() == 2]
    assert all(p.dtype == torch.float32 for p in block.parameters())
    for n in big:  # every weight matrix has entries with |w| >= 0.016 that moved
        w0, w1 = before[n], dict(block.named_parameters())[n].detach()
        large = w0.abs() >= 0.016
        assert ((w0 - w1)[large] != 0).float().mean() > 0.9, n
    losses = [h["train_loss"] for h in state.history if "train_loss" in h]
    assert losses[-1] < losses[0] - 0.05, losses


def test_lr_schedule_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    from llmclf.train import LrSchedule
    cos = LrSchedule(1e-3, total=100, warmup=0.1, kind="cosine")
    assert [cos.factor(t) for t in (1, 5, 10)] == pytest.approx([0.1, 0.5, 1.0])
    assert cos.factor(55) == pytest.approx(0.5) and cos.factor(100) == pytest.approx(0.0)
    lin = LrSchedule(1e-3, total=100, warmup=0.0, kind="linear")
    assert lin.factor(1) == pytest.approx(0.99) and lin.factor(50) == pytest.approx(0.5)
    assert LrSchedule(1e-3, total=100, warmup=0.2).factor(60) == 1.0


def test_training_follows_the_schedule_step_by_step():
    """The loop sets each step's learning rate before it steps: the rates AdamW used are the schedule's."""
    from llmclf.train import LrSchedule
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=2))
    model = set_trainable(TextClassifier(backbone, 2), "last_layer")
    data = FakeDataset(24, backbone.cfg.vocab_size, 1)
    loaders, _ = make_loaders(model, {"train": data, "validation": data}, 4, "cpu", cache="off", log=lambda *_: None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=123.0)
    used = []
    step = opt.step
    opt.step = lambda *a, **k: (used.append(opt.param_groups[0]["lr"]), step(*a, **k))[1]
    sched = LrSchedule(1e-2, total=2 * len(loaders["train"]), warmup=0.25, kind="cosine")
    train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", 2, 1000, 1,
                            log=lambda *_: None, progress=False, schedule=sched)
    assert len(used) == sched.total == 12
    assert used == pytest.approx([1e-2 * sched.factor(t) for t in range(1, 13)])
    assert used[2] == pytest.approx(1e-2) and used[-1] == pytest.approx(0.0)


def test_keep_best_restores_the_best_epoch_and_patience_stops_an_overfitting_run():
    """Random labels (FakeDataset) and every weight trainable at a high rate: the model learns the training
    split by heart and validation loss rises after the first epochs. KeepBest scores every epoch on the whole
    validation split, keeps the best one's weights and stops once `patience` epochs have not beaten it."""
    from llmclf.metrics import predict_loader
    from llmclf.train import KeepBest
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=2))
    model = set_trainable(TextClassifier(backbone, 2), "all")
    vocab = backbone.cfg.vocab_size
    loaders, _ = make_loaders(model, {"train": FakeDataset(48, vocab, 1), "validation": FakeDataset(40, vocab, 2)}, 4,
                              "cpu", cache="off", log=lambda *_: None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    state, keeper = TrainState(), KeepBest("loss", patience=2)
    train_classifier_simple(model, loaders["train"], loaders["validation"], opt, "cpu", 30, 1000, 1, state=state,
                            log=lambda *_: None, progress=False, keeper=keeper)
    scores = [h["val_score"] for h in state.history if "val_score" in h]
    assert state.stopped_early and state.epoch < 30 and len(scores) == state.epoch  # it did stop, early
    assert state.best_epoch == 1 + scores.index(min(scores)) and state.epoch - state.best_epoch == 2
    assert scores[-1] > min(scores)  # it had started to overfit
    keeper.restore(model)
    logits, targets = predict_loader(loaders["validation"], model)
    assert keeper.score(logits, targets) == pytest.approx(state.best_value, abs=1e-6)  # the best epoch's weights


def test_frozen_pass_shows_tokens_done_and_rate_when_asked(capsys):
    torch.manual_seed(0)
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=3))
    model = set_trainable(TextClassifier(backbone, 2), "last_block")
    data = FakeDataset(30, backbone.cfg.vocab_size, 1)
    quiet = compute_prefix_cache(model, data.encoded, 2, "cpu", 0)
    assert "frozen pass" not in capsys.readouterr().err  # off by default (and under --quiet, or without a tty)
    shown = compute_prefix_cache(model, data.encoded, 2, "cpu", 0, progress=True)
    err = capsys.readouterr().err
    assert "frozen pass" in err and "tok/s" in err
    assert all(torch.equal(a, b) for a, b in zip(quiet, shown))  # the bar changes nothing


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_balanced_sampler_draws_the_minority_half_the_time_cached_or_not(cache):
    backbone = build_model(replace(MODELS["gpt2-tiny"].config, n_layers=2))
    model = TextClassifier(backbone, 2, "mean", True)
    set_trainable(model, "last_block")
    data = FakeDataset(200, backbone.cfg.vocab_size, 4)
    data.targets = [int(i % 10 == 0) for i in range(200)]  # 10% positive
    for sampler, low, high in (("balanced", 0.4, 0.6), ("shuffle", 0.1, 0.1)):
        loaders, info = make_loaders(model, {"train": data}, 8, "cpu", seed=5, cache=cache, sampler=sampler,
                                     log=lambda *_: None)
        assert info["cache"] is (cache == "auto")
        drawn = [int(t) for _ in range(3) for batch in loaders["train"] for t in batch["labels"]]
        assert len(drawn) == 600 and low <= sum(drawn) / len(drawn) <= high, sampler
