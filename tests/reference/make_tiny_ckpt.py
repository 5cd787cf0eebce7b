#!/usr/bin/python3
"""Write small random checkpoints (config.json + *.safetensors) for every attention family.

Self-test helper for torch_ref.py, written with numpy only (its own safetensors
writer). Tensors follow DESIGN.md §2 / §6 names and shapes.

Usage:
  make_tiny_ckpt.py --out DIR [--preset NAME ...] [--dtype f32 bf16 f16] [--seed S] [--files N]
  make_tiny_ckpt.py --list
Writes DIR/<preset>-<dtype>/ for each preset and dtype (default: all presets, f32 and bf16).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

# Shared small dimensions: a byte-level vocab (0..255) plus a few special ids.
_BASE = {
    "vocab_size": 260,
    "bos_token_id": 256,
    "eos_token_id": 257,
    "tokenizer": "bytes",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "intermediate_size": 40,
}

# name -> (config overrides, options). Options select optional tensors:
#   bias: list of attention projection names (within self_attn) that get a .bias
#   mlp_bias / lm_head_bias: add biases to the MLP linears / LM head
#   kv_a_layernorm: write self_attn.kv_a_layernorm.weight (latent families)
PRESETS = {
    # MHA, tied embeddings, Qwen-style q/k/v biases.
    "mha_tied": ({"attention_type": "mha", "num_attention_heads": 4, "num_key_value_heads": 4,
                  "tie_word_embeddings": True},
                 {"bias": ["q_proj", "k_proj", "v_proj"]}),
    # MQA with an explicit head_dim that is not hidden/h_q, eos as a list.
    "mqa": ({"attention_type": "mqa", "num_attention_heads": 4, "num_key_value_heads": 1,
             "head_dim": 12, "eos_token_id": [257, 258]}, {}),
    # GQA with no attention_type key (inferred), odd group size 3, sliding window 5.
    "gqa_swa": ({"num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8,
                 "sliding_window": 5}, {}),
    # GQA with interleaved RoPE pairs and a non-default theta.
    "gqa_interleave": ({"attention_type": "gqa", "num_attention_heads": 4, "num_key_value_heads": 2,
                        "rope_interleave": True, "rope_theta": 500000.0}, {}),
    # GTA: d_h 16, d_r default (d_h/2 = 8), k_rope_proj with bias.
    "gta": ({"attention_type": "gta", "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16}, {"bias": ["k_rope_proj"]}),
    # MLA (DeepSeek-V2 style): q LoRA + q_a_layernorm, kv_a_layernorm, interleaved RoPE, d_v != d_n.
    "mla": ({"attention_type": "mla", "num_attention_heads": 4, "num_latent_heads": 1,
             "kv_lora_rank": 24, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
             "v_head_dim": 12, "q_lora_rank": 16, "rope_interleave": True},
            {"kv_a_layernorm": True}),
    # GLA: 2 latent heads, no q LoRA, kv_a_layernorm, kv_b_proj bias, explicit softmax_scale.
    "gla": ({"attention_type": "gla", "num_attention_heads": 4, "num_latent_heads": 2,
             "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
             "v_head_dim": 8, "q_lora_rank": None, "softmax_scale": 0.2},
            {"kv_a_layernorm": True, "bias": ["kv_b_proj"]}),
    # Checkpoints in Hugging Face's published layouts, recognised by "architectures".
    # Llama 3.2 style: llama3 RoPE scaling whose bands fall inside 128 positions, tied
    # embeddings, sharded over two files with model.safetensors.index.json.
    "hf_llama3": ({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0,
                   "hidden_act": "silu", "tie_word_embeddings": True, "attention_bias": False,
                   "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16}},
                  {"files": 2}),
    # Mistral: a uniform sliding window, one KV head, linear RoPE scaling in the old "type" key.
    "hf_mistral": ({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                    "num_attention_heads": 4, "num_key_value_heads": 1, "sliding_window": 6,
                    "rope_scaling": {"type": "linear", "factor": 2.0}}, {}),
    # Qwen2: q/k/v biases; sliding_window present but off (use_sliding_window false).
    "hf_qwen2": ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                  "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1000000.0,
                  "use_sliding_window": False, "sliding_window": 4, "max_window_layers": 2},
                 {"bias": ["q_proj", "k_proj", "v_proj"]}),
    # Qwen3: per-head q/k RMSNorm, head_dim 12 (not hidden / heads), tied, three files.
    "hf_qwen3": ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
                  "tie_word_embeddings": True, "attention_bias": False},
                 {"files": 3}),
    # DeepSeek V2, dense: MLA with q LoRA, interleaved RoPE by default, yarn with
    # DeepSeek's softmax correction (mscale_all_dim).
    "hf_deepseek_v2": ({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
                        "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 24,
                        "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12,
                        "q_lora_rank": 16, "n_routed_experts": None,
                        "rope_scaling": {"type": "yarn", "factor": 4.0,
                                         "original_max_position_embeddings": 32,
                                         "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                         "mscale_all_dim": 0.707}},
                       {"kv_a_layernorm": True, "files": 2}),
}


def family(cfg):
    """The attention family a config describes (its own key, or the architecture's)."""
    arch = (cfg.get("architectures") or [None])[0]
    if arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        return "mla"
    return cfg.get("attention_type") or "gqa"


def preset_config(name):
    over, opts = PRESETS[name]
    cfg = dict(_BASE)
    cfg.update(over)
    return cfg, dict(opts)


def tensor_shapes(cfg, opts):
    """Ordered {name: shape} of every tensor a checkpoint with this config holds."""
    d, ff, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h_q = cfg["num_attention_heads"]
    attn = family(cfg)
    qk_norm = (cfg.get("architectures") or [None])[0] == "Qwen3ForCausalLM"
    bias = set(opts.get("bias", []))
    shapes = {"model.embed_tokens.weight": [V, d]}

    def lin(prefix, short, out_dim, in_dim, with_bias=None):
        shapes[f"{prefix}.weight"] = [out_dim, in_dim]
        if with_bias if with_bias is not None else short in bias:
            shapes[f"{prefix}.bias"] = [out_dim]

    for i in range(cfg["num_hidden_layers"]):
        L = f"model.layers.{i}"
        A = f"{L}.self_attn"
        shapes[f"{L}.input_layernorm.weight"] = [d]
        if attn in ("mha", "mqa", "gqa", "gta"):
            h_kv = cfg.get("num_key_value_heads") or h_q
            d_h = cfg.get("head_dim") or d // h_q
            lin(f"{A}.q_proj", "q_proj", h_q * d_h, d)
            if attn == "gta":
                d_r = cfg.get("qk_rope_head_dim") or d_h // 2
                lin(f"{A}.kv_proj", "kv_proj", h_kv * d_h, d)
                lin(f"{A}.k_rope_proj", "k_rope_proj", d_r, d)
            else:
                lin(f"{A}.k_proj", "k_proj", h_kv * d_h, d)
                lin(f"{A}.v_proj", "v_proj", h_kv * d_h, d)
            lin(f"{A}.o_proj", "o_proj", d, h_q * d_h)
            if qk_norm:
                shapes[f"{A}.q_norm.weight"] = [d_h]
                shapes[f"{A}.k_norm.weight"] = [d_h]
        else:
            h_c = cfg.get("num_latent_heads") or 1
            d_c, d_n = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"]
            d_r, d_v = cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            qr = cfg.get("q_lora_rank")
            if qr:
                lin(f"{A}.q_a_proj", "q_a_proj", qr, d)
                shapes[f"{A}.q_a_layernorm.weight"] = [qr]
                lin(f"{A}.q_b_proj", "q_b_proj", h_q * (d_n + d_r), qr)
            else:
                lin(f"{A}.q_proj", "q_proj", h_q * (d_n + d_r), d)
            lin(f"{A}.kv_a_proj_with_mqa", "kv_a_proj_with_mqa", h_c * d_c + d_r, d)
            if opts.get("kv_a_layernorm"):
                shapes[f"{A}.kv_a_layernorm.weight"] = [h_c * d_c]
            lin(f"{A}.kv_b_proj", "kv_b_proj", h_q * (d_n + d_v), d_c)
            lin(f"{A}.o_proj", "o_proj", d, h_q * d_v)
        shapes[f"{L}.post_attention_layernorm.weight"] = [d]
        mb = bool(opts.get("mlp_bias"))
        lin(f"{L}.mlp.gate_proj", "gate_proj", ff, d, mb)
        lin(f"{L}.mlp.up_proj", "up_proj", ff, d, mb)
        lin(f"{L}.mlp.down_proj", "down_proj", d, ff, mb)
    shapes["model.norm.weight"] = [d]
    if not cfg.get("tie_word_embeddings"):
        lin("lm_head", "lm_head", V, d, bool(opts.get("lm_head_bias")))
    return shapes


def random_tensors(cfg, opts, seed):
    """Deterministic random float32 weights: linears ~ N(0, 1/in), norms ~ 1 + 0.1 N, biases 0.1 N."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in tensor_shapes(cfg, opts).items():
        if name.endswith("norm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            a = 0.1 * rng.standard_normal(shape)
        elif name == "model.embed_tokens.weight":
            a = rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(shape[-1])
        out[name] = a.astype(np.float32)
    return out


def f32_to_bf16_bits(a):
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def round_to_dtype(a, dtype):
    """The float32 values a tensor takes after storing it as `dtype` (f32, bf16, f16)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "bf16":
        return (f32_to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32).reshape(a.shape)
    if dtype == "f16":
        return a.astype(np.float16).astype(np.float32)
    return a


def write_safetensors(path, tensors, dtype, metadata=None):
    """Our own writer: u64 LE header length, JSON header, raw little-endian data."""
    st_dtype = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dtype]
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        a = np.asarray(a, dtype=np.float32)
        if dtype == "f32":
            raw = a.astype("<f4").tobytes()
        elif dtype == "f16":
            raw = a.astype("<f2").tobytes()
        else:
            raw = f32_to_bf16_bits(a).astype("<u2").tobytes()
        header[name] = {"dtype": st_dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hb = json.dumps(header).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)  # pad header to 8 bytes, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def write_checkpoint(out_dir, cfg, tensors, dtype="f32", files=1):
    """config.json + tensors split round-robin over `files` safetensors files."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    names = list(tensors)
    weight_map = {}
    for k in range(files):
        part = {n: tensors[n] for n in names[k::files]}
        fname = "model.safetensors" if files == 1 else f"model-{k + 1:05d}-of-{files:05d}.safetensors"
        write_safetensors(os.path.join(out_dir, fname), part, dtype,
                          metadata={"format": "pt", "writer": "make_tiny_ckpt"})
        weight_map.update({n: fname for n in part})
    if files > 1:
        # As Hugging Face publishes sharded checkpoints.
        size = sum(t.size * (4 if dtype == "f32" else 2) for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": int(size)}, "weight_map": weight_map}, f,
                      indent=1)


def make_preset(out_dir, name, dtype="f32", seed=0, files=1):
    cfg, opts = preset_config(name)
    tensors = random_tensors(cfg, opts, seed + 1000 * sorted(PRESETS).index(name))
    write_checkpoint(out_dir, cfg, tensors, dtype, max(files, opts.get("files", 1)))
    return cfg, tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory (one subdirectory per preset and dtype)")
    ap.add_argument("--preset", nargs="*", choices=sorted(PRESETS), help="default: all")
    ap.add_argument("--dtype", nargs="*", choices=["f32", "bf16", "f16"], default=["f32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=1, help="number of safetensors files per checkpoint")
    ap.add_argument("--list", action="store_true", help="list presets and exit")
    args = ap.parse_args(argv)
    if args.list:
        for n in sorted(PRESETS):
            print(n, json.dumps(PRESETS[n][0]), json.dumps(PRESETS[n][1]))
        return 0
    if not args.out:
        ap.error("--out is required")
    for name in args.preset or sorted(PRESETS):
        for dt in args.dtype:
            d = os.path.join(args.out, f"{name}-{dt}")
            make_preset(d, name, dt, args.seed, args.files)
            print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
