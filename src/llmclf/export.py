"""`llmclf export RUN_DIR --format hf|onnx --out DIR`. `onnx`: the graph of onnx_graph.py with its tokenizer
and labels. `hf`: a saved classifier as transformers' GPT2ForSequenceClassification,
LlamaForSequenceClassification (Qwen2/Qwen3 alike) or Gemma3TextForSequenceClassification, which
`AutoModelForSequenceClassification` and `AutoTokenizer` load with no custom code and
`pipeline("text-classification")` runs.

The mapping is exact or refused. transformers reads the last real token's final-norm output through `score`,
a Linear without bias. GPT-2: our head has a bias b, and the final LayerNorm a shift beta that only the head
reads, so beta' = beta + W^+ b gives W beta' = W beta + b whenever W (classes x width) has full row rank
(checked). The Llama family and Gemma 3: RMSNorm has no shift, so their heads are trained without a bias
(classifier.py) and map one to one. The calibration temperature T divides the logits, so W / T (and b / T)
carry it. What the format cannot hold (mean or first-token pooling, no causal mask, a TF-IDF blend, a decision
threshold, an appended end-of-text token, a Llama head with a bias) is one line saying why, and nothing is
written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .artifact import load_classifier_parts
from .atomic import default_mode
from .decision import load_decision
from .errors import LlmclfError


def export_hf(run_dir, out) -> Path:
    """Write the classifier of RUN_DIR into the new directory `out` as GPT2ForSequenceClassification or
    LlamaForSequenceClassification, after its backbone."""
    out = _new_dir(out)
    model, tokenizer, cfg, directory = load_classifier_parts(Path(run_dir))
    decision = load_decision(cfg, Path(directory) / "config.json")
    _refuse_what_hf_cannot_hold(model, tokenizer, cfg, decision)
    arch = model.backbone.cfg.arch
    gpt2 = arch == "gpt2"
    state_of, config_of = {"gpt2": (hf_gpt2_state, hf_gpt2_config), "llama": (hf_llama_state, hf_llama_config),
                           "gemma3": (hf_gemma3_state, hf_gemma3_config)}[arch]
    state = state_of(model, decision.temperature)
    config = config_of(model.backbone.cfg, cfg["labels"], tokenizer)

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config)
        if gpt2:
            _write_gpt2_tokenizer(tmp, directory, cfg, tokenizer.pad_id)
        else:
            _write_hf_tokenizer(tmp, tokenizer, cfg["max_length"])

    return _write_new_dir(out, write)


def export_onnx(run_dir, out) -> Path:
    """Write the classifier of RUN_DIR into the new directory `out`: model.onnx (onnx_graph.py), classifier.json
    (labels, inputs and outputs, how to tokenize) and tokenizer.json, which the `tokenizers` library reads."""
    from .onnx_graph import export_graph

    out = _new_dir(out)
    model, tokenizer, cfg, directory = load_classifier_parts(Path(run_dir))
    decision = load_decision(cfg, Path(directory) / "config.json")
    if decision.thresholds is not None:
        raise LlmclfError("cannot export to ONNX: a multi-label classifier (sigmoid per label, a threshold each); "
                          "the graph gives softmax probabilities and one label")
    if cfg.get("blend") is not None:
        raise LlmclfError("cannot export to ONNX: the saved classifier blends the LLM with TF-IDF, which the graph "
                          "cannot hold (train with --blend off, or run it in llmclf with --backend onnx)")

    def write(tmp: Path) -> None:
        export_graph(model, decision, tmp / "model.onnx")
        _hf_tokenizer(tokenizer, directory).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "classifier.json", onnx_card(cfg, tokenizer, decision, model.pooling))

    return _write_new_dir(out, write)


def onnx_card(cfg: dict, tokenizer, decision, pooling: str) -> dict:
    """classifier.json beside model.onnx: all a program needs to feed the graph and read its answer."""
    return {"format": "llmclf-onnx", "labels": cfg["labels"], "model_name": cfg.get("model_name"),
            "inputs": {"input_ids": "int64 [batch, sequence]: tokenizer.json's ids without special tokens, cut "
                                    "at max_length, padded on the right with pad_id",
                       "attention_mask": "int64 [batch, sequence]: 1 on real tokens, 0 on padding"},
            "outputs": {"logits": "float32 [batch, classes]", "probabilities": "float32 [batch, classes], calibrated",
                        "label": "int64 [batch]: index into labels"},
            "max_length": cfg["max_length"], "pad_id": tokenizer.pad_id,
            "pad_to_max_length": pooling == "last",  # the book's pooling reads position max_length - 1
            "bos_id": tokenizer.bos_id,  # when set, every text (and every window) starts with it, within max_length
            "append_eos_id": tokenizer.eos_id if tokenizer.append_eos else None,
            "text_pairs": {"separator_id": tokenizer.eos_id, "how": "first's ids + [separator_id] + second's ids, the "
                           "longer cut first until they fit max_length (the shorter kept whole if it fits in half)"}
            if tokenizer.pair else None,
            "long_texts": {"how": tokenizer.long_texts, "windows": "overlapping windows of max_length tokens, half a "
                           "window apart, at most 16; the text's probabilities are the mean of its windows'"
                           if tokenizer.long_texts == "windows" else None},
            "empty_text": "one pad_id token", "decision": decision.to_config()}


def _hf_tokenizer(tokenizer, directory: Path):
    """The classifier's tokenizer as a `tokenizers.Tokenizer`; GPT-2's BPE files become byte-level BPE, the
    same split as tiktoken's (the same pattern and merges)."""
    if hasattr(tokenizer, "tok"):
        return tokenizer.tok
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(directory / "encoder.json"), str(directory / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _new_dir(out) -> Path:
    out = Path(out)
    if out.exists():
        raise LlmclfError(f"--out {out}: already exists; export writes a new directory")
    if not out.parent.is_dir():
        raise LlmclfError(f"--out {out}: no such folder {out.parent}")
    return out


def _write_new_dir(out: Path, write) -> Path:
    """write(tmp) into a temp folder beside `out`, renamed to `out` when complete: never half a directory."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        write(tmp)
        for p in tmp.iterdir():
            os.chmod(p, default_mode())
        os.chmod(tmp, default_mode(directory=True))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _refuse_what_hf_cannot_hold(model, tokenizer, cfg, decision) -> None:
    why = None
    if decision.thresholds is not None:
        why = "a multi-label classifier: a threshold per label, which transformers' pipeline does not apply"
    elif model.backbone.cfg.arch != "gpt2" and model.backbone.out_head.bias is not None:
        why = ("the class head has a bias, which LlamaForSequenceClassification's bias-free score cannot hold and "
               "RMSNorm has no shift to absorb (Llama-family classifiers trained by llmclf today have none: retrain)")
    elif model.pooling != "last_nonpad":
        why = f"pooling {model.pooling}: transformers reads the last real token (train with --pooling last_nonpad)"
    elif not model.causal:
        why = "no causal mask: transformers' decoders are always causal"
    elif cfg.get("blend") is not None:
        why = "the saved classifier blends the LLM with TF-IDF, which transformers cannot hold (train with --blend off)"
    elif decision.threshold is not None:
        why = ("the classifier decides by a threshold (--operating-point), transformers by the argmax (train with "
               "--operating-point argmax)")
    elif tokenizer.append_eos:
        why = "--append-eos: transformers' pipeline does not append the end-of-text token"
    elif tokenizer.long_texts != "cut":
        why = (f"--long-texts {tokenizer.long_texts}: transformers' tokenizer cuts a long text at its end "
               "(export --format onnx keeps it)")
    elif tokenizer.pair:
        why = ("a text-pair classifier: transformers' tokenizer joins a pair by its own template (GPT-2's with no "
               "separator), llmclf with the end-of-text token (export --format onnx keeps it)")
    if why:
        raise LlmclfError(f"cannot export to the Hugging Face format: {why}")


def hf_gpt2_state(model, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Our GPT-2 names -> transformers' (Conv1D weights are stored (in, out)), with the head folded as above."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.backbone.state_dict().items()}
    cfg = model.backbone.cfg
    w = sd["out_head.weight"].double() / temperature
    b = (sd["out_head.bias"].double() if "out_head.bias" in sd else torch.zeros(len(w), dtype=torch.float64)) / temperature
    shift = sd["final_norm.shift"].double() + torch.linalg.pinv(w) @ b
    if (w @ (shift - sd["final_norm.shift"].double()) - b).abs().max() > 1e-6:
        raise LlmclfError("cannot export to the Hugging Face format: the head's bias does not fold into the final "
                          "norm (its weight rows are linearly dependent)")
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
           "transformer.ln_f.weight": sd["final_norm.scale"], "transformer.ln_f.bias": shift.float(),
           "score.weight": w.float()}
    zeros = torch.zeros(cfg.emb_dim)
    for i in range(cfg.n_layers):
        b_, p = f"trf_blocks.{i}.", f"transformer.h.{i}."
        qkv = [sd[f"{b_}att.W_{n}.weight"] for n in ("query", "key", "value")]
        qkv_bias = [sd.get(f"{b_}att.W_{n}.bias", zeros) for n in ("query", "key", "value")]
        out.update({
            p + "ln_1.weight": sd[b_ + "norm1.scale"], p + "ln_1.bias": sd[b_ + "norm1.shift"],
            p + "attn.c_attn.weight": torch.cat(qkv, 0).t(), p + "attn.c_attn.bias": torch.cat(qkv_bias),
            p + "attn.c_proj.weight": sd[b_ + "att.out_proj.weight"].t(), p + "attn.c_proj.bias": sd[b_ + "att.out_proj.bias"],
            p + "ln_2.weight": sd[b_ + "norm2.scale"], p + "ln_2.bias": sd[b_ + "norm2.shift"],
            p + "mlp.c_fc.weight": sd[b_ + "ff.layers.0.weight"].t(), p + "mlp.c_fc.bias": sd[b_ + "ff.layers.0.bias"],
            p + "mlp.c_proj.weight": sd[b_ + "ff.layers.2.weight"].t(), p + "mlp.c_proj.bias": sd[b_ + "ff.layers.2.bias"],
        })
    return {k: v.contiguous() for k, v in out.items()}


def hf_gpt2_config(cfg, labels: list[str], tokenizer) -> dict:
    pad_id = tokenizer.pad_id
    return {"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.emb_dim,
            "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "summary_type": "cls_index", "id2label": {str(i): x for i, x in enumerate(labels)},
            "label2id": {x: i for i, x in enumerate(labels)}, "pad_token_id": pad_id, "bos_token_id": 50256,
            "eos_token_id": 50256, "tie_word_embeddings": True, "torch_dtype": "float32"}


def _write_gpt2_tokenizer(out: Path, directory: Path, cfg: dict, pad_id: int) -> None:
    """GPT-2's BPE as transformers reads it: encoder.json is vocab.json, vocab.bpe is merges.txt; texts are cut
    at the classifier's max_length (call the pipeline with truncation=True)."""
    files = cfg["tokenizer"]["files"] if "tokenizer" in cfg else []
    if sorted(files) != ["encoder.json", "vocab.bpe"]:
        raise LlmclfError("cannot export to the Hugging Face format: the classifier has no GPT-2 BPE files")
    shutil.copyfile(directory / "encoder.json", out / "vocab.json")
    shutil.copyfile(directory / "vocab.bpe", out / "merges.txt")
    eot = "<|endoftext|>"
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": cfg["max_length"], "add_prefix_space": False,
        "bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot, "padding_side": "right"})


def hf_llama_state(model, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Our Llama names -> transformers' (q/k are in rotate-half order in both); the head is `score` over T."""
    names = {"att.W_query": "self_attn.q_proj", "att.W_key": "self_attn.k_proj", "att.W_value": "self_attn.v_proj",
             "att.out_proj": "self_attn.o_proj", "ff.fc1": "mlp.gate_proj", "ff.fc3": "mlp.up_proj",
             "ff.fc2": "mlp.down_proj", "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    cfg = model.backbone.cfg
    biases = ("att.W_query", "att.W_key", "att.W_value") if cfg.qkv_bias else ()  # Qwen2
    names.update({"att.q_norm": "self_attn.q_norm", "att.k_norm": "self_attn.k_norm"} if cfg.qk_norm else {})  # Qwen3
    return _hf_decoder_state(model, temperature, names, biases)


def hf_gemma3_state(model, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Our Gemma 3 names -> transformers' (weights.hf.GEMMA3_NAMES); the head is `score` over T."""
    from .weights.hf import GEMMA3_NAMES
    return _hf_decoder_state(model, temperature, GEMMA3_NAMES)


def _hf_decoder_state(model, temperature: float, names: dict[str, str], biases=()) -> dict[str, torch.Tensor]:
    """transformers' `model.` naming for a Llama-family or Gemma backbone: embedding, final norm, `score` (the head
    over T), and each block's tensors by `names` (ours -> theirs; `biases`: the modules that also have a bias).
    A tensor with no place there is refused rather than dropped."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.backbone.state_dict().items()}
    out = {"model.embed_tokens.weight": sd.pop("tok_emb.weight"), "model.norm.weight": sd.pop("final_norm.weight"),
           "score.weight": sd.pop("out_head.weight") / temperature}
    for i in range(model.backbone.cfg.n_layers):
        for ours, theirs in names.items():
            out[f"model.layers.{i}.{theirs}.weight"] = sd.pop(f"trf_blocks.{i}.{ours}.weight")
        for ours in biases:
            out[f"model.layers.{i}.{names[ours]}.bias"] = sd.pop(f"trf_blocks.{i}.{ours}.bias")
    if sd:
        raise LlmclfError(f"cannot export to the Hugging Face format: no place for the tensor {sorted(sd)[0]}")
    return {k: v.contiguous() for k, v in out.items()}


def hf_llama_config(cfg, labels: list[str], tokenizer) -> dict:
    """Llama's config; Qwen2's for q/k/v biases (its attention always has them), Qwen3's for QK-norm."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_base}  # transformers 5 reads rope_parameters, 4 rope_theta
    kind = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    architecture = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind] + "ForSequenceClassification"
    return {"architectures": [architecture], "model_type": kind, "use_sliding_window": False,
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length, "hidden_size": cfg.emb_dim,
            "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_groups,
            "head_dim": cfg.head_size, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_base, "rope_parameters": rope, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_embeddings,
            "id2label": {str(i): x for i, x in enumerate(labels)}, "label2id": {x: i for i, x in enumerate(labels)},
            "pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32"}


def hf_gemma3_config(cfg, labels: list[str], tokenizer) -> dict:
    """Gemma3TextConfig's fields for our config; layer kinds written out, RoPE in both spellings (5 and 4.x)."""
    from .weights.hf import gemma3_layer_types
    kinds = gemma3_layer_types(cfg)
    return {"architectures": ["Gemma3TextForSequenceClassification"], "model_type": "gemma3_text",
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length, "hidden_size": cfg.emb_dim,
            "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_groups, "head_dim": cfg.head_dim, "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": cfg.norm_eps, "query_pre_attn_scalar": _int_if_whole(cfg.query_pre_attn_scalar),
            "sliding_window": cfg.sliding_window, "sliding_window_pattern": cfg.sliding_pattern, "layer_types": kinds,
            "rope_theta": cfg.rope_base, "rope_local_base_freq": cfg.rope_local_base,
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_base},
                                "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base}},
            "attention_bias": False, "attention_dropout": 0.0, "final_logit_softcapping": None,
            "attn_logit_softcapping": None, "tie_word_embeddings": cfg.tie_embeddings,
            "id2label": {str(i): x for i, x in enumerate(labels)}, "label2id": {x: i for i, x in enumerate(labels)},
            "pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id, "bos_token_id": tokenizer.bos_id,
            "torch_dtype": "float32"}


def _int_if_whole(x: float):
    """256.0 -> 256 (transformers' config classes check that this field is an int)."""
    return int(x) if float(x).is_integer() else x


def _write_hf_tokenizer(out: Path, tokenizer, max_length: int) -> None:
    """The classifier's tokenizer.json as PreTrainedTokenizerFast reads it. llmclf encodes without the file's own
    special tokens, so its post-processor is replaced: by one adding BOS for the models that read every text
    after it (Gemma), else by none. Texts are cut at max_length, BOS included (call the pipeline with
    truncation=True), and padded on the right with the classifier's pad token."""
    from tokenizers import processors

    spec = json.loads(tokenizer.tok.to_str())
    post = None
    if tokenizer.bos_id is not None:
        bos = tokenizer.tok.id_to_token(tokenizer.bos_id)
        template = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_id)])
        post = json.loads(template.__getstate__())
    spec.update(post_processor=post, truncation=None, padding=None)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    token = tokenizer.tok.id_to_token
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        "pad_token": token(tokenizer.pad_id), "eos_token": token(tokenizer.eos_id), "padding_side": "right",
        **({"bos_token": token(tokenizer.bos_id)} if tokenizer.bos_id is not None else {}),
        "clean_up_tokenization_spaces": False})


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
