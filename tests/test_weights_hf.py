"""The Hugging Face loader is strict (unimplemented settings and tensors are refused by name), follows
model.safetensors.index.json for sharded checkpoints, and verifies hub downloads before caching them.
Checkpoints are transformers models with random weights, saved here (no download)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from llmclf.assets import git_blob_sha1, sha256_file
from llmclf.errors import LlmclfError
from llmclf.weights.hf import INDEX, SOURCE, download_hf, load_hf_dir

transformers = pytest.importorskip("transformers")

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
GPT2 = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)


def _save(tmp_path, name, arch="llama", shard=None, **overrides):
    """A transformers model with random weights saved to tmp_path/name; returns (dir, reference model)."""
    torch.manual_seed(0)
    if arch == "llama":
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **overrides}))
    else:
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2, **overrides}))
    d = tmp_path / name
    ref.eval().save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
    return d, ref


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sharded_checkpoint_follows_the_index_and_matches_unsharded(tmp_path, arch):
    whole, ref = _save(tmp_path, "whole", arch)
    sharded, _ = _save(tmp_path, "sharded", arch, shard="20KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert (sharded / INDEX).is_file() and len(shards) > 3
    a, b = load_hf_dir(whole)[0].eval(), load_hf_dir(sharded)[0].eval()
    torch.testing.assert_close(_logits(b, IDS), _logits(a, IDS), atol=0, rtol=0)
    torch.testing.assert_close(_logits(b, IDS), _logits(ref, IDS), atol=1e-4, rtol=0)


def test_stray_safetensors_beside_the_index_is_refused(tmp_path):
    d, _ = _save(tmp_path, "m", shard="20KB")
    first = sorted(d.glob("model-*.safetensors"))[0]
    shutil.copyfile(first, d / "extra.safetensors")  # holds a second copy of some tensors
    with pytest.raises(LlmclfError, match=r"extra\.safetensors not listed in model\.safetensors\.index\.json"):
        load_hf_dir(d)


def test_missing_shard_is_refused_by_name(tmp_path):
    d, _ = _save(tmp_path, "m", shard="20KB")
    gone = sorted(d.glob("model-*.safetensors"))[1]
    gone.unlink()
    with pytest.raises(LlmclfError, match=rf"shard\(s\) that are missing: {gone.name}"):
        load_hf_dir(d)


def test_tensor_in_two_shards_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    d, _ = _save(tmp_path, "m", shard="20KB")
    index = json.loads((d / INDEX).read_text())["weight_map"]
    name, home = "model.norm.weight", index["model.norm.weight"]
    other = next(p for p in sorted(d.glob("model-*.safetensors")) if p.name != home)
    tensors = load_file(other)
    tensors[name] = torch.zeros(LLAMA["hidden_size"])  # a second, different copy
    save_file(tensors, other)
    with pytest.raises(LlmclfError, match=rf"{other.name}: holds model\.norm\.weight, which .* puts in another shard"):
        load_hf_dir(d)


def test_several_files_without_an_index_are_refused(tmp_path):
    d, _ = _save(tmp_path, "m", shard="20KB")
    (d / INDEX).unlink()
    with pytest.raises(LlmclfError, match=r"\*\.safetensors files .* and no model\.safetensors\.index\.json"):
        load_hf_dir(d)


@pytest.mark.parametrize("overrides,named", [
    ({"attention_bias": True}, "attention_bias: true"),
    ({"mlp_bias": True}, "mlp_bias: true"),
    ({"hidden_act": "gelu"}, 'hidden_act: "gelu"'),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
     'rope_parameters.rope_type: "linear"'),
])
def test_llama_settings_not_implemented_are_refused_by_name(tmp_path, overrides, named):
    d, _ = _save(tmp_path, "m", **overrides)
    with pytest.raises(LlmclfError, match="does not implement") as e:
        load_hf_dir(d)
    assert named in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("changes,named", [
    ({"sliding_window": 16}, "sliding_window: 16"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 'rope_scaling.rope_type: "dynamic"'),
])
def test_llama_config_edits_not_implemented_are_refused(tmp_path, changes, named):
    d, _ = _save(tmp_path, "m")
    _edit_config(d, **changes)
    with pytest.raises(LlmclfError, match="does not implement") as e:
        load_hf_dir(d)
    assert named in str(e.value)


def test_sliding_window_as_long_as_the_context_or_switched_off_is_accepted(tmp_path):
    d, ref = _save(tmp_path, "m")
    _edit_config(d, sliding_window=64)  # = max_position_embeddings: never limits attention
    torch.testing.assert_close(_logits(load_hf_dir(d)[0].eval(), IDS), _logits(ref, IDS), atol=1e-4, rtol=0)
    _edit_config(d, sliding_window=16, use_sliding_window=False)
    load_hf_dir(d)


def test_bias_tensors_the_config_does_not_declare_are_refused_by_name(tmp_path):
    d, _ = _save(tmp_path, "m", attention_bias=True)
    _edit_config(d, attention_bias=False)  # the tensors are still there
    with pytest.raises(LlmclfError, match=r"tensors that the Llama model here does not implement: "
                                          r"model\.layers\.0\.self_attn\.k_proj\.bias"):
        load_hf_dir(d)


@pytest.mark.parametrize("overrides,named", [
    ({"activation_function": "gelu"}, 'activation_function: "gelu"'),
    ({"n_inner": 100}, "n_inner: 100"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon: 1e-06"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx: true"),
])
def test_gpt2_settings_not_implemented_are_refused_by_name(tmp_path, overrides, named):
    d, _ = _save(tmp_path, "m", "gpt2", **overrides)
    with pytest.raises(LlmclfError, match="GPT-2 model here does not implement") as e:
        load_hf_dir(d)
    assert named in str(e.value)


def test_gpt2_mask_buffers_are_ignored_but_unknown_tensors_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    d, ref = _save(tmp_path, "m", "gpt2")
    f = d / "model.safetensors"
    tensors = load_file(f)
    tensors["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # old checkpoints' buffers
    tensors["transformer.h.1.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, f)
    torch.testing.assert_close(_logits(load_hf_dir(d)[0].eval(), IDS), _logits(ref, IDS), atol=1e-4, rtol=0)
    tensors["transformer.h.0.attn.c_attn.lora_A"] = torch.zeros(4, 32)
    save_file(tensors, f)
    with pytest.raises(LlmclfError, match=r"GPT-2 model here does not implement: transformer\.h\.0\.attn\.c_attn\.lora_A"):
        load_hf_dir(d)


def test_tied_head_that_differs_from_the_embedding_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    d, _ = _save(tmp_path, "m")
    _edit_config(d, tie_word_embeddings=True)  # but lm_head.weight is a separate, different tensor
    with pytest.raises(LlmclfError, match="lm_head.weight differs from the input embedding"):
        load_hf_dir(d)
    tensors = load_file(d / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, d / "model.safetensors")
    load_hf_dir(d)  # an equal copy is what tying means: accepted


# ------------------------------------------------------------------------ hub downloads, verified

class FakeHub:
    """huggingface_hub's HfApi.model_info and hf_hub_download, serving a local folder (the hub is
    unreachable here). `corrupt` names a file whose served bytes differ from what its metadata promises."""

    def __init__(self, remote, revision="0123456789abcdef0123456789abcdef01234567", datasets=None):
        self.remote, self.revision, self.corrupt, self.offline, self.downloads = remote, revision, None, False, []
        self.datasets = datasets  # a folder served as the dataset repositories' files (any depth)

    def dataset_info(self, repo, files_metadata=False):
        if self.offline:
            raise OSError("name resolution failed")
        files = sorted(p for p in self.datasets.rglob("*") if p.is_file())
        return SimpleNamespace(sha=self.revision, siblings=[SimpleNamespace(
            rfilename=p.relative_to(self.datasets).as_posix(), size=p.stat().st_size, blob_id=git_blob_sha1(p),
            lfs=SimpleNamespace(sha256=sha256_file(p), size=p.stat().st_size) if p.suffix == ".parquet" else None)
            for p in files])

    def model_info(self, repo, files_metadata=False):
        if self.offline:
            raise OSError("name resolution failed")
        siblings = []
        for p in sorted(self.remote.iterdir()):
            lfs = SimpleNamespace(sha256=sha256_file(p), size=p.stat().st_size) if p.suffix == ".safetensors" else None
            siblings.append(SimpleNamespace(rfilename=p.name, size=p.stat().st_size, blob_id=git_blob_sha1(p), lfs=lfs))
        siblings.append(SimpleNamespace(rfilename="pytorch_model.bin", size=3, blob_id="x", lfs=None))  # not wanted
        return SimpleNamespace(sha=self.revision, siblings=siblings)

    def hf_hub_download(self, repo, filename, revision=None, local_dir=None, repo_type="model"):
        assert revision == self.revision and filename != "pytorch_model.bin"
        self.downloads.append(filename)
        data = bytearray(((self.datasets if repo_type == "dataset" else self.remote) / filename).read_bytes())
        if filename == self.corrupt:
            data[len(data) // 2] ^= 1
        (local_dir / filename).parent.mkdir(parents=True, exist_ok=True)
        (local_dir / filename).write_bytes(bytes(data))
        (local_dir / ".cache").mkdir(exist_ok=True)  # what huggingface_hub leaves in a local_dir
        return str(local_dir / filename)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub
    remote, _ = _save(tmp_path, "remote")
    fake = FakeHub(remote, datasets=tmp_path / "datasets-remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setenv("LLMCLF_CACHE_DIR", str(tmp_path / "cache"))
    return fake


def test_hub_download_is_verified_recorded_and_reused_offline(hub, tmp_path):
    local = download_hf("org/tiny")
    assert local == tmp_path / "cache" / "hf" / "org--tiny" / hub.revision
    assert sorted(p.name for p in local.iterdir()) == sorted(["config.json", "generation_config.json",
                                                              "model.safetensors", SOURCE])
    source = json.loads((local / SOURCE).read_text())
    assert source["repo"] == "org/tiny" and source["revision"] == hub.revision
    assert source["files"]["model.safetensors"]["sha256"] == sha256_file(hub.remote / "model.safetensors")
    assert source["files"]["config.json"]["git_sha1"] == git_blob_sha1(hub.remote / "config.json")
    load_hf_dir(local)
    hub.downloads.clear()
    assert download_hf("org/tiny") == local and hub.downloads == []  # verified cache: nothing fetched again
    hub.offline = True
    assert download_hf("org/tiny") == local  # no hub: the cached copy, checked against source.json
    (local / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(LlmclfError, match="could not download org/tiny"):
        download_hf("org/tiny")


def test_corrupted_hub_download_is_refused_and_never_cached(hub, tmp_path):
    hub.corrupt = "model.safetensors"
    with pytest.raises(LlmclfError, match=r"downloaded model\.safetensors: sha256 .* not cached"):
        download_hf("org/tiny")
    root = tmp_path / "cache" / "hf" / "org--tiny"
    assert list(root.iterdir()) == []  # neither the snapshot nor a temp folder
    hub.corrupt = "config.json"
    with pytest.raises(LlmclfError, match=r"downloaded config\.json: git blob sha1"):
        download_hf("org/tiny")
    hub.corrupt = None
    assert (download_hf("org/tiny") / "model.safetensors").is_file()


def test_a_hub_dataset_is_downloaded_verified_split_and_trained_on(hub, tmp_path, sms_file):
    import datasets
    import pandas as pd

    from llmclf.data import load_data
    from llmclf.options import FinetuneOptions

    df = pd.read_csv(sms_file, sep="\t", header=None, names=["label", "text"], quoting=3)
    df = pd.concat([df[df.label == "spam"].head(60), df[df.label == "ham"].head(60)]).sample(frac=1, random_state=0)
    feats = datasets.Features({"sms": datasets.Value("string"), "label": datasets.ClassLabel(names=["ham", "spam"])})
    data_dir = hub.datasets / "data"
    data_dir.mkdir(parents=True)
    for name, part in (("train-00000-of-00002", df[:50]), ("train-00001-of-00002", df[50:100]),
                       ("validation-00000-of-00001", df[100:])):
        datasets.Dataset.from_dict({"sms": part["text"].tolist(), "label": part["label"].map({"ham": 0, "spam": 1}).tolist()},
                                   features=feats).to_parquet(str(data_dir / f"{name}.parquet"))
    (hub.datasets / "README.md").write_text("a dataset card: not downloaded")
    opts = FinetuneOptions(out="x", data_file="hf:org/sms", split=(0.8, 0.1), balance=False)
    data = load_data(opts)
    assert sorted(hub.downloads) == sorted(f"data/{n}" for n in (p.name for p in data_dir.iterdir()))
    assert data.labels == ["ham", "spam"] and len(data.validation) == 20  # the hub's validation split, as it is
    assert len(data.train) + len(data.test) == 100 and set(data.test["text"]) <= set(df["text"][:100])  # both shards
    hub.downloads.clear()
    hub.offline = True  # offline: the verified copy in the cache
    assert len(load_data(opts).validation) == 20 and hub.downloads == []
    hub.offline, hub.corrupt = False, "data/train-00001-of-00002.parquet"
    hub.revision = "f" * 40  # a new revision: downloaded again, and this time one shard is damaged
    with pytest.raises(LlmclfError, match=r"train-00001-of-00002\.parquet: sha256 .* not cached"):
        load_data(opts)


# ------------------------------------------------------------------ transformers sequence classifiers, imported

TEXTS = ["WINNER!! You have won a prize, call now", "see you at lunch?", "ok"]


def _hf_classifier(tmp_path, arch):
    """A GPT2/LlamaForSequenceClassification with random weights and three named labels, saved by transformers."""
    from llmclf.weights import _gguf_tokenizer

    labels = {"id2label": {0: "neg", 1: "neutral", 2: "pos"}, "label2id": {"neg": 0, "neutral": 1, "pos": 2}}
    d = tmp_path / arch
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(**{**GPT2, "vocab_size": 50257}, pad_token_id=50256, **labels)
        ref = transformers.GPT2ForSequenceClassification(cfg)
    else:
        tok = _gguf_tokenizer("smollm2-135m-instruct-q4")  # SmolLM2's, written beside the weights as the model's tokenizer.json
        cfg = transformers.LlamaConfig(**{**LLAMA, "vocab_size": 49152}, pad_token_id=tok.eos_id,
                                       eos_token_id=tok.eos_id, **labels)
        ref = transformers.LlamaForSequenceClassification(cfg)
    ref.eval().save_pretrained(d)
    if arch == "llama":
        tok.save(d)
    return d, ref


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_transformers_sequence_classifier_predicts_as_transformers_does(tmp_path, arch):
    from conftest import run_cli
    from llmclf.predict import load_classifier, predict_texts

    d, ref = _hf_classifier(tmp_path, arch)
    clf = load_classifier(d, "cpu")
    assert clf.labels == ["neg", "neutral", "pos"] and clf.model.pooling == "last_nonpad"
    got = predict_texts(clf, TEXTS)  # one padded batch
    with torch.no_grad():
        want = torch.cat([ref(torch.tensor([ids])).logits.softmax(-1)
                          for ids in clf.tokenizer.encode_batch(TEXTS, clf.max_length)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    r = run_cli("predict", d, *TEXTS)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.strip().splitlines()] == [clf.labels[i] for i in want.argmax(-1)]


def test_a_sequence_classifier_without_its_score_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    d, _ = _hf_classifier(tmp_path, "gpt2")
    weights = load_file(d / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlmclfError, match="no tensor score.weight"):
        from llmclf.predict import load_classifier
        load_classifier(d, "cpu")


def test_fine_tuning_a_sequence_classifier_starts_from_its_score(tmp_path):
    from conftest import GPT2_TOKENIZER_DIR, sms_subset
    from llmclf.finetune import finetune
    from llmclf.options import FinetuneOptions
    from llmclf.predict import load_classifier

    torch.manual_seed(0)
    labels = {"id2label": {0: "spam", 1: "ham"}, "label2id": {"spam": 0, "ham": 1}}  # not the order llmclf sorts
    ref = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(**{**GPT2, "vocab_size": 50257},
                                                                             pad_token_id=50256, **labels))
    ref.eval().save_pretrained(tmp_path / "hf")
    finetune(FinetuneOptions(out=str(tmp_path / "run"), model=str(tmp_path / "hf"), tokenizer_dir=str(GPT2_TOKENIZER_DIR),
                             data_file=str(sms_subset(tmp_path, 30)), epochs=1, lr=1e-9, warmup=0.0, weight_decay=0.0,
                             pooling="last_nonpad", baseline=False, blend="off", calibrate=False, quiet=True))
    clf = load_classifier(tmp_path / "run", "cpu")
    assert clf.labels == ["ham", "spam"]
    head = clf.model.backbone.out_head  # after one epoch at lr 1e-9: still the score it started from, rows reordered
    torch.testing.assert_close(head.weight, ref.score.weight.detach()[[1, 0]], atol=1e-6, rtol=0)
    assert head.bias.abs().max() < 1e-6


QWEN = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, rope_theta=1e6)


@pytest.mark.parametrize("kind, extra", [("qwen2", {}), ("qwen3", {"head_dim": 16})])  # Qwen3: head_dim != 32 / 4
def test_qwen_logits_and_greedy_text_match_transformers(tmp_path, kind, extra):
    """Qwen2.5 (q/k/v biases) and Qwen3 (QK-norm, its own head_dim) from small random configs, as transformers
    saves them: our Llama-family model gives the same logits and the same greedy continuation."""
    from llmclf.generate import generate_greedy

    torch.manual_seed(0)
    config, model_cls = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                         "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]
    ref = model_cls(config(**QWEN, **extra)).eval()
    with torch.no_grad():  # fresh biases are zeros and norms ones: make them count, so a dropped one would show
        for name, p in ref.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
            elif "norm" in name:
                p.normal_(1, 0.3)
    ref.save_pretrained(tmp_path / kind)
    ours, cfg = load_hf_dir(tmp_path / kind)
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.head_size) == (kind == "qwen2", kind == "qwen3", extra.get("head_dim", 8))
    torch.testing.assert_close(_logits(ours.eval(), IDS), _logits(ref, IDS), atol=1e-4, rtol=0)
    prompt = IDS[0, :5].tolist()
    with torch.no_grad():
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                pad_token_id=0)[0, len(prompt):].tolist()
    assert generate_greedy(ours, prompt, max_new_tokens=10) == expected


def test_qwen3_with_attention_bias_is_refused_by_name(tmp_path):
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**QWEN, attention_bias=True)).save_pretrained(tmp_path / "q")
    with pytest.raises(LlmclfError, match="the Qwen3 model here does not implement: attention_bias: true"):
        load_hf_dir(tmp_path / "q")
