#!/usr/bin/python3
"""Independent float64 PyTorch reference for ShardLM (DESIGN.md §2, §2.1-2.4, §6).

Written from the spec only. It is deliberately simple: every request is run
one sequence at a time, with a full forward pass over the whole sequence (no KV
cache), and everything is computed in float64.

Usage:
  torch_ref.py score    --model DIR --input IN.jsonl --output OUT.jsonl
  torch_ref.py generate --model DIR --input IN.jsonl --output OUT.jsonl
                        [--max-new-tokens N] [--ignore-max-pos]

The module can also be imported (tests/reference/test_torch_ref.py does):
  cfg = Config.from_dict(json.load(...)); model = Model.load(DIR)
  model.logits(tokens) -> torch.float64 [T, vocab]
"""

import argparse
import glob
import json
import math
import os
import struct
import sys

import numpy as np
import torch

DTYPE = torch.float64


def warn(msg):
    print(f"torch_ref: warning: {msg}", file=sys.stderr)


class RefError(Exception):
    """A bad model directory / config / request, with a readable message."""


# ---------------------------------------------------------------------------
# safetensors: our own parser.
#   [u64 little-endian N][N bytes of JSON header][data ...]
#   header: name -> {"dtype", "shape", "data_offsets": [begin, end)} where the
#   offsets are relative to the first byte after the header; an optional
#   "__metadata__" entry is skipped.
# ---------------------------------------------------------------------------

_ST_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8}


def _decode_tensor(raw: bytes, dtype: str, shape):
    """Raw little-endian bytes -> float32/float64 numpy array of `shape`."""
    if dtype == "F32":
        arr = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F16":
        arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        # bf16 is the top 16 bits of an IEEE f32: widen by shifting left 16.
        u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        arr = (u16 << np.uint32(16)).view(np.float32)
    elif dtype == "F64":
        arr = np.frombuffer(raw, dtype="<f8")
    else:  # checked by the caller
        raise AssertionError(dtype)
    return arr.reshape(shape)


def read_safetensors(path):
    """Return {name: (dtype_str, numpy array)} for one .safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise RefError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise RefError(f"{path}: header length {n} exceeds file size {size}")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RefError(f"{path}: bad JSON header: {e}")
        data_start = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = info.get("dtype")
            shape = [int(s) for s in info.get("shape", [])]
            begin, end = (int(v) for v in info["data_offsets"])
            if dtype not in _ST_ITEMSIZE:
                raise RefError(f"{path}: tensor {name}: unsupported dtype {dtype} "
                               f"(want F32, BF16 or F16)")
            want = int(np.prod(shape, dtype=np.int64)) * _ST_ITEMSIZE[dtype]
            if end - begin != want or begin < 0 or data_start + end > size:
                raise RefError(f"{path}: tensor {name}: data_offsets [{begin},{end}) do not "
                               f"match shape {shape} x {dtype} ({want} bytes) "
                               f"within a data section of {size - data_start} bytes")
            f.seek(data_start + begin)
            raw = f.read(end - begin)
            out[name] = (dtype, _decode_tensor(raw, dtype, shape))
    return out


def load_checkpoint_tensors(model_dir):
    """All tensors of the checkpoint, as float64 torch tensors: the files that
    model.safetensors.index.json names (its weight_map), else every *.safetensors file."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({os.path.join(model_dir, v) for v in weight_map.values()})
    else:
        files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise RefError(f"{model_dir}: no *.safetensors files")
    tensors = {}
    for path in files:
        for name, (_, arr) in read_safetensors(path).items():
            if name in tensors:
                raise RefError(f"tensor {name} appears in more than one file ({path})")
            tensors[name] = torch.from_numpy(np.array(arr, dtype=np.float64))
    return tensors


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------

def _none_if_zero(v):
    return None if v in (None, 0) else v


def hf_to_spec(c):
    """A Hugging Face config of a supported architecture in the keys of DESIGN §6, as
    transformers' modeling code reads it: Llama/Mistral as GQA, Qwen2 with its window only under
    use_sliding_window, Qwen3 with per-head q/k norms, DeepSeek V2/V3 (dense) as MLA with
    interleaved RoPE and its yarn softmax correction."""
    arch = (c.get("architectures") or [None])[0]
    if arch is None:
        return c
    c = dict(c)
    if arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        pass
    elif arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        if not c.get("use_sliding_window"):
            c.pop("sliding_window", None)
        if arch == "Qwen3ForCausalLM":
            c["qk_norm"] = True
    elif arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        if c.get("n_routed_experts") and c.get("first_k_dense_replace", 0) < c["num_hidden_layers"]:
            raise RefError("config.json: mixture-of-experts layers")
        c["attention_type"] = "mla"
        c["num_latent_heads"] = 1
        c.setdefault("rope_interleave", True)
        c.pop("head_dim", None)
        rs = c.get("rope_scaling") or {}
        scale = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5
        if rs.get("mscale_all_dim"):
            m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
            scale = scale * m * m
        c["softmax_scale"] = scale
    else:
        raise RefError(f"config.json: architecture {arch} not supported by the reference")
    return c


def yarn_get_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(r, theta, scaling):
    """The RoPE frequencies [r/2] and the cos/sin multiplier, as transformers'
    modeling_rope_utils computes them for rope_type default, linear, llama3 and yarn."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, r, 2, dtype=DTYPE) / r))
    if not scaling:
        return inv_freq, 1.0
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = scaling["factor"]
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        out = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return torch.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        old = scaling.get("original_max_position_embeddings")
        if old is None:
            raise RefError("config.json: yarn without original_max_position_embeddings")
        mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        att = scaling.get("attention_factor")
        if att is None:
            att = (yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all)
                   if mscale and mscale_all else yarn_get_mscale(factor))
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

        def corr_dim(n_rot):
            return (r * math.log(old / (n_rot * 2 * math.pi))) / (2 * math.log(theta))
        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, r - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(r // 2, dtype=DTYPE) - lo) / (hi - lo)).clamp(0, 1)
        extrapolation = 1 - ramp
        freq_inter = inv_freq / factor
        return freq_inter * (1 - extrapolation) + inv_freq * extrapolation, att
    raise RefError(f"config.json: rope_scaling type {kind} not supported by the reference")


class Config:
    """The config.json keys of DESIGN §6 with their defaults, validated."""

    @staticmethod
    def from_dict(c):
        self = Config()
        self.raw = dict(c)
        c = hf_to_spec(c)

        def need(key):
            if c.get(key) is None:
                raise RefError(f"config.json: missing required key '{key}'")
            return c[key]

        self.d = int(need("hidden_size"))
        self.d_ff = int(need("intermediate_size"))
        self.n_layers = int(need("num_hidden_layers"))
        self.h_q = int(need("num_attention_heads"))
        self.vocab = int(need("vocab_size"))
        self.eps = float(c.get("rms_norm_eps") if c.get("rms_norm_eps") is not None else 1e-6)
        self.rope_theta = float(c.get("rope_theta") if c.get("rope_theta") is not None else 10000.0)
        self.max_pos = c.get("max_position_embeddings")
        self.tie = bool(c.get("tie_word_embeddings") or False)
        self.bos = c.get("bos_token_id")
        eos = c.get("eos_token_id")
        self.eos = set() if eos is None else set(eos if isinstance(eos, list) else [eos])
        self.rope_interleave = bool(c.get("rope_interleave") or False)
        self.window = _none_if_zero(c.get("sliding_window"))
        if self.window is not None:
            self.window = int(self.window)
            if self.window < 0:
                raise RefError(f"config.json: sliding_window {self.window} < 0")
        self.softmax_scale = c.get("softmax_scale")
        self.tokenizer = c.get("tokenizer")
        self.rope_scaling = c.get("rope_scaling") or None
        self.qk_norm = bool(c.get("qk_norm") or False)

        h_kv = c.get("num_key_value_heads")
        attn = c.get("attention_type")
        if attn is None:
            # Absent: plain gqa (mha when h_kv == h_q); identical math.
            attn = "gqa"
        attn = str(attn).lower()
        if attn not in ("mha", "mqa", "gqa", "gta", "mla", "gla"):
            raise RefError(f"config.json: unknown attention_type '{attn}'")
        self.attn = attn

        if attn == "mqa":
            # MQA is h_kv = 1; an explicit num_key_value_heads must agree.
            self.h_kv = 1 if h_kv is None else int(h_kv)
            if self.h_kv != 1:
                raise RefError(f"config.json: mqa needs num_key_value_heads 1, got {self.h_kv}")
        else:
            self.h_kv = self.h_q if h_kv is None else int(h_kv)
        if attn == "mha" and self.h_kv != self.h_q:
            raise RefError(f"config.json: mha needs num_key_value_heads == num_attention_heads "
                           f"({self.h_kv} != {self.h_q})")

        if attn in ("mha", "mqa", "gqa", "gta"):
            if self.h_q % self.h_kv:
                raise RefError(f"config.json: num_attention_heads {self.h_q} not divisible by "
                               f"num_key_value_heads {self.h_kv}")
            if c.get("head_dim") is not None:
                self.d_h = int(c["head_dim"])
            else:
                if self.d % self.h_q:
                    raise RefError("config.json: no head_dim and hidden_size not divisible by heads")
                self.d_h = self.d // self.h_q
            if attn == "gta":
                dr = c.get("qk_rope_head_dim")
                self.d_r = self.d_h // 2 if dr is None else int(dr)
                if not 0 < self.d_r <= self.d_h:
                    raise RefError(f"config.json: gta qk_rope_head_dim {self.d_r} not in (0, head_dim]")
            else:
                self.d_r = self.d_h  # RoPE over all head channels
            self.default_scale = 1.0 / math.sqrt(self.d_h)
        else:  # mla / gla
            for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                need(k)
            self.d_c = int(c["kv_lora_rank"])
            self.d_n = int(c["qk_nope_head_dim"])
            self.d_r = int(c["qk_rope_head_dim"])
            self.d_v = int(c["v_head_dim"])
            hc = c.get("num_latent_heads")
            self.h_c = 1 if hc is None else int(hc)
            if attn == "mla" and self.h_c != 1:
                raise RefError(f"config.json: mla has exactly one latent head, got "
                               f"num_latent_heads {self.h_c} (use gla)")
            if self.h_q % self.h_c:
                raise RefError(f"config.json: num_attention_heads {self.h_q} not divisible by "
                               f"num_latent_heads {self.h_c}")
            self.q_lora_rank = _none_if_zero(c.get("q_lora_rank"))
            self.default_scale = 1.0 / math.sqrt(self.d_n + self.d_r)
        if self.d_r % 2:
            raise RefError(f"config.json: rotated dimension {self.d_r} must be even")
        self.scale = self.default_scale if self.softmax_scale is None else float(self.softmax_scale)
        return self

    @staticmethod
    def load(model_dir):
        path = os.path.join(model_dir, "config.json")
        try:
            with open(path) as f:
                return Config.from_dict(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            raise RefError(f"{path}: {e}")


# ---------------------------------------------------------------------------
# Math helpers
# ---------------------------------------------------------------------------

def rms_norm(x, w, eps):
    """RMSNorm(x) = w * x / sqrt(mean(x^2) + eps), over the last dim."""
    return w * x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)


def rope(x, positions, theta, interleave, scaling=None):
    """Rotate the last dim (r channels) of x [T, ..., r]; positions [T].

    theta_k = theta^(-2k/r), k < r/2; angle = p * theta_k.
    rotate_half pairs (k, k + r/2); interleave pairs (2k, 2k+1). Each pair
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
    """
    r = x.shape[-1]
    inv_freq, mscale = rope_inv_freq(r, theta, scaling)            # [r/2]
    ang = positions.to(DTYPE)[:, None] * inv_freq[None, :]          # [T, r/2]
    ang = ang.reshape(ang.shape[0], *([1] * (x.dim() - 2)), r // 2)  # broadcast over heads
    cos, sin = torch.cos(ang) * mscale, torch.sin(ang) * mscale
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return torch.stack([y1, y2], dim=-1).flatten(-2)
    x1, x2 = x[..., : r // 2], x[..., r // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention_mask(T, window):
    """allowed[p, s]: causal (s <= p), and with a window W also s > p - W."""
    p = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    allowed = s <= p
    if window is not None:
        allowed = allowed & (s > p - window)
    return allowed


def attend(q, k, v, scale, window):
    """softmax(scale * q k^T + mask) v per head. q,k [H,T,dk], v [H,T,dv] -> [T, H*dv]."""
    H, T, _ = q.shape
    scores = scale * torch.matmul(q, k.transpose(1, 2))             # [H, T, T]
    scores = scores.masked_fill(~attention_mask(T, window), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    o = torch.matmul(probs, v)                                      # [H, T, dv]
    return o.transpose(0, 1).reshape(T, H * v.shape[-1])            # head-major columns


def greedy_argmax(logits):
    """Index of the maximum; ties resolve to the lowest token id."""
    m = torch.max(logits)
    return int(torch.nonzero(logits == m)[0, 0])


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------

class Model:
    def __init__(self, cfg, tensors):
        self.cfg = cfg
        self.t = tensors
        self.used = set()
        self._validate()
        unused = sorted(set(tensors) - self.used)
        if unused:
            warn(f"{len(unused)} checkpoint tensors not used by the model: "
                 f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")

    @staticmethod
    def load(model_dir):
        return Model(Config.load(model_dir), load_checkpoint_tensors(model_dir))

    # -- tensor access with shape checks --------------------------------------
    def _expect(self, name, shape, required=True):
        if name not in self.t:
            if required:
                raise RefError(f"checkpoint: missing tensor {name} (expected shape {list(shape)})")
            return
        got = list(self.t[name].shape)
        if got != list(shape):
            raise RefError(f"checkpoint: tensor {name} has shape {got}, expected {list(shape)}")
        self.used.add(name)

    def _expect_linear(self, prefix, out_dim, in_dim, required=True):
        self._expect(prefix + ".weight", [out_dim, in_dim], required)
        if prefix + ".weight" in self.t:
            self._expect(prefix + ".bias", [out_dim], required=False)

    def _validate(self):
        c = self.cfg
        self._expect("model.embed_tokens.weight", [c.vocab, c.d])
        self._expect("model.norm.weight", [c.d])
        if c.tie:
            # Tied: the LM head is the embedding (a stored lm_head.weight is ignored,
            # as HF does when it re-ties the weights).
            if "lm_head.weight" in self.t:
                warn("tie_word_embeddings is true; ignoring stored lm_head.weight")
            self._expect("lm_head.bias", [c.vocab], required=False)
        else:
            self._expect_linear("lm_head", c.vocab, c.d)
        for i in range(c.n_layers):
            L = f"model.layers.{i}"
            A = f"{L}.self_attn"
            self._expect(f"{L}.input_layernorm.weight", [c.d])
            self._expect(f"{L}.post_attention_layernorm.weight", [c.d])
            self._expect_linear(f"{L}.mlp.gate_proj", c.d_ff, c.d)
            self._expect_linear(f"{L}.mlp.up_proj", c.d_ff, c.d)
            self._expect_linear(f"{L}.mlp.down_proj", c.d, c.d_ff)
            if c.attn in ("mha", "mqa", "gqa"):
                self._expect_linear(f"{A}.q_proj", c.h_q * c.d_h, c.d)
                self._expect_linear(f"{A}.k_proj", c.h_kv * c.d_h, c.d)
                self._expect_linear(f"{A}.v_proj", c.h_kv * c.d_h, c.d)
                self._expect_linear(f"{A}.o_proj", c.d, c.h_q * c.d_h)
                if c.qk_norm:
                    self._expect(f"{A}.q_norm.weight", [c.d_h])
                    self._expect(f"{A}.k_norm.weight", [c.d_h])
            elif c.attn == "gta":
                self._expect_linear(f"{A}.q_proj", c.h_q * c.d_h, c.d)
                self._expect_linear(f"{A}.kv_proj", c.h_kv * c.d_h, c.d)
                self._expect_linear(f"{A}.k_rope_proj", c.d_r, c.d)
                self._expect_linear(f"{A}.o_proj", c.d, c.h_q * c.d_h)
            else:
                dq = c.d_n + c.d_r
                if c.q_lora_rank is None:
                    self._expect_linear(f"{A}.q_proj", c.h_q * dq, c.d)
                else:
                    self._expect_linear(f"{A}.q_a_proj", c.q_lora_rank, c.d)
                    self._expect(f"{A}.q_a_layernorm.weight", [c.q_lora_rank])
                    self._expect_linear(f"{A}.q_b_proj", c.h_q * dq, c.q_lora_rank)
                self._expect_linear(f"{A}.kv_a_proj_with_mqa", c.h_c * c.d_c + c.d_r, c.d)
                self._expect(f"{A}.kv_a_layernorm.weight", [c.h_c * c.d_c], required=False)
                self._expect_linear(f"{A}.kv_b_proj", c.h_q * (c.d_n + c.d_v), c.d_c)
                self._expect_linear(f"{A}.o_proj", c.d, c.h_q * c.d_v)

    def linear(self, x, prefix):
        """y = x W^T (+ b when the checkpoint has prefix.bias)."""
        y = x @ self.t[prefix + ".weight"].T
        b = self.t.get(prefix + ".bias")
        return y if b is None else y + b

    # -- attention families ---------------------------------------------------
    def attn_gqa(self, A, x, pos):
        """MHA/MQA/GQA (§2.1): RoPE on all d_h channels; head i reads KV head i // g."""
        c = self.cfg
        T = x.shape[0]
        g = c.h_q // c.h_kv
        q = self.linear(x, f"{A}.q_proj").view(T, c.h_q, c.d_h)
        k = self.linear(x, f"{A}.k_proj").view(T, c.h_kv, c.d_h)
        v = self.linear(x, f"{A}.v_proj").view(T, c.h_kv, c.d_h)
        if c.qk_norm:  # Qwen3: each head RMS-normed over d_h before RoPE
            q = rms_norm(q, self.t[f"{A}.q_norm.weight"], c.eps)
            k = rms_norm(k, self.t[f"{A}.k_norm.weight"], c.eps)
        q = rope(q, pos, c.rope_theta, c.rope_interleave, c.rope_scaling)
        k = rope(k, pos, c.rope_theta, c.rope_interleave, c.rope_scaling)
        # Expand KV heads to query heads: contiguous groups, head i -> i // g.
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        o = attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), c.scale, c.window)
        return self.linear(o, f"{A}.o_proj")

    def attn_gta(self, A, x, pos):
        """GTA (§2.2).
        q_i = [q_nope (d_h-d_r) | RoPE(q_rope) (d_r)]
        k_i = [kv_j[0:d_h-d_r] | RoPE(k_rope)]  (k_rope shared by all heads)
        v_i = kv_j (all d_h channels, unrotated), j = i // g.
        """
        c = self.cfg
        T = x.shape[0]
        g = c.h_q // c.h_kv
        dn = c.d_h - c.d_r
        q = self.linear(x, f"{A}.q_proj").view(T, c.h_q, c.d_h)
        kv = self.linear(x, f"{A}.kv_proj").view(T, c.h_kv, c.d_h)
        kr = self.linear(x, f"{A}.k_rope_proj")                        # [T, d_r]
        q = torch.cat([q[..., :dn], rope(q[..., dn:], pos, c.rope_theta, c.rope_interleave, c.rope_scaling)], -1)
        kr = rope(kr, pos, c.rope_theta, c.rope_interleave, c.rope_scaling)
        k = torch.cat([kv[..., :dn], kr[:, None, :].expand(T, c.h_kv, c.d_r)], -1)
        v = kv
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        o = attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), c.scale, c.window)
        return self.linear(o, f"{A}.o_proj")

    def attn_latent(self, A, x, pos):
        """MLA/GLA (§2.3), materialized (non-absorbed) form.
        q per head = [q_nope (d_n) | RoPE(q_rope) (d_r)]
        [c_0 | ... | c_{h_c-1} | k_rope] = kv_a_proj_with_mqa(x); each c_j RMS-normed
        with its slice of kv_a_layernorm; k_rope rotated.
        k_i = [W_UK,i c_j (+b_K,i) | k_rope], v_i = W_UV,i c_j (+b_V,i), j = i // (h_q/h_c).
        """
        c = self.cfg
        T = x.shape[0]
        g = c.h_q // c.h_c
        if c.q_lora_rank is None:
            q = self.linear(x, f"{A}.q_proj")
        else:
            qa = self.linear(x, f"{A}.q_a_proj")
            qa = rms_norm(qa, self.t[f"{A}.q_a_layernorm.weight"], c.eps)
            q = self.linear(qa, f"{A}.q_b_proj")
        q = q.view(T, c.h_q, c.d_n + c.d_r)
        q = torch.cat([q[..., :c.d_n], rope(q[..., c.d_n:], pos, c.rope_theta, c.rope_interleave, c.rope_scaling)], -1)

        ckv = self.linear(x, f"{A}.kv_a_proj_with_mqa")               # [T, h_c*d_c + d_r]
        lat = ckv[:, : c.h_c * c.d_c].reshape(T, c.h_c, c.d_c)
        kr = rope(ckv[:, c.h_c * c.d_c:], pos, c.rope_theta, c.rope_interleave, c.rope_scaling)  # [T, d_r]
        w_norm = self.t.get(f"{A}.kv_a_layernorm.weight")
        if w_norm is not None:
            # per-latent-head RMSNorm, each chunk with its own weight slice
            lat = rms_norm(lat, w_norm.view(c.h_c, c.d_c), c.eps)

        wb = self.t[f"{A}.kv_b_proj.weight"].view(c.h_q, c.d_n + c.d_v, c.d_c)
        bb = self.t.get(f"{A}.kv_b_proj.bias")
        bb = torch.zeros(c.h_q, c.d_n + c.d_v, dtype=DTYPE) if bb is None else bb.view(c.h_q, c.d_n + c.d_v)
        lat_per_head = lat.repeat_interleave(g, dim=1)                  # [T, h_q, d_c]
        # kvb[t,i,:] = W_b,i @ c_{j(i),t} + b_i
        kvb = torch.einsum("ird,tid->tir", wb, lat_per_head) + bb[None]
        k_nope, v = kvb[..., :c.d_n], kvb[..., c.d_n:]
        k = torch.cat([k_nope, kr[:, None, :].expand(T, c.h_q, c.d_r)], -1)
        o = attend(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), c.scale, c.window)
        return self.linear(o, f"{A}.o_proj")

    # -- full model -----------------------------------------------------------
    def logits(self, tokens):
        """Logits [T, vocab] (float64) for every position of one sequence."""
        c = self.cfg
        tokens = torch.as_tensor(list(tokens), dtype=torch.long)
        T = tokens.shape[0]
        pos = torch.arange(T)
        x = self.t["model.embed_tokens.weight"][tokens]                 # [T, d]
        attn = {"mha": self.attn_gqa, "mqa": self.attn_gqa, "gqa": self.attn_gqa,
                "gta": self.attn_gta, "mla": self.attn_latent, "gla": self.attn_latent}[c.attn]
        for i in range(c.n_layers):
            L = f"model.layers.{i}"
            h = x + attn(f"{L}.self_attn", rms_norm(x, self.t[f"{L}.input_layernorm.weight"], c.eps), pos)
            y = rms_norm(h, self.t[f"{L}.post_attention_layernorm.weight"], c.eps)
            mlp = self.linear(torch.nn.functional.silu(self.linear(y, f"{L}.mlp.gate_proj"))
                              * self.linear(y, f"{L}.mlp.up_proj"), f"{L}.mlp.down_proj")
            x = h + mlp
        x = rms_norm(x, self.t["model.norm.weight"], c.eps)
        if c.tie:
            out = x @ self.t["model.embed_tokens.weight"].T
            b = self.t.get("lm_head.bias")
            return out if b is None else out + b
        return self.linear(x, "lm_head")


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

def request_tokens(cfg, req):
    """`tokens` used exactly as given; `prompt`/`text` -> [bos] + UTF-8 bytes (bytes tokenizer)."""
    has_tokens = "tokens" in req
    text_keys = [k for k in ("prompt", "text") if k in req]
    if has_tokens and text_keys:
        raise RefError(f"request has both 'tokens' and '{text_keys[0]}'")
    if len(text_keys) > 1:
        raise RefError("request has both 'prompt' and 'text'")
    if has_tokens:
        toks = req["tokens"]
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise RefError("'tokens' must be a list of integers")
    elif text_keys:
        text = req[text_keys[0]]
        if not isinstance(text, str):
            raise RefError(f"'{text_keys[0]}' must be a string")
        if cfg.tokenizer != "bytes":
            raise RefError("text input needs \"tokenizer\": \"bytes\" in config.json "
                           "(the reference has no tokenizer.json support)")
        if cfg.bos is None:
            raise RefError("text input needs bos_token_id in config.json")
        toks = [int(cfg.bos)] + list(text.encode("utf-8"))
    else:
        raise RefError("request has none of 'tokens', 'prompt', 'text'")
    if not toks:
        raise RefError("empty token list")
    bad = [t for t in toks if not 0 <= t < cfg.vocab]
    if bad:
        raise RefError(f"token id {bad[0]} out of range [0, {cfg.vocab})")
    return toks


def score_request(model, req, check_max_pos=True):
    toks = request_tokens(model.cfg, req)
    mp = model.cfg.max_pos
    if check_max_pos and mp is not None and len(toks) > mp:
        raise RefError(f"sequence of {len(toks)} tokens exceeds max_position_embeddings {mp}")
    logp = torch.log_softmax(model.logits(toks), dim=-1)               # [T, V]
    # log p(token_t | tokens_<t) for t >= 1 is row t-1 at column token_t
    lps = [float(logp[t - 1, toks[t]]) for t in range(1, len(toks))]
    s = float(sum(lps))
    ppl = math.exp(-s / len(lps)) if lps else 1.0
    return {"id": req.get("id"), "logprobs": lps, "sum_logprob": s, "perplexity": ppl}


def generate_request(model, req, default_max_new=16, check_max_pos=True):
    cfg = model.cfg
    toks = request_tokens(cfg, req)
    max_new = req.get("max_new_tokens")
    max_new = default_max_new if max_new is None else max_new
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 0:
        raise RefError(f"max_new_tokens must be a non-negative integer, got {max_new!r}")
    stop_ids = req.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(isinstance(t, int) for t in stop_ids):
        raise RefError("stop_token_ids must be a list of integers")
    stops = set(cfg.eos) | set(stop_ids)
    mp = cfg.max_pos if check_max_pos else None
    if mp is not None and len(toks) > mp:
        raise RefError(f"prompt of {len(toks)} tokens exceeds max_position_embeddings {mp}")
    seq = list(toks)
    out, lps, reason = [], [], "length"
    while len(out) < max_new:
        if mp is not None and len(seq) >= mp:
            break  # no room for another position: finish as "length"
        logp = torch.log_softmax(model.logits(seq)[-1], dim=-1)        # full recompute
        tok = greedy_argmax(logp)
        out.append(tok)
        lps.append(float(logp[tok]))
        seq.append(tok)
        if tok in stops:
            reason = "stop"
            break
    return {"id": req.get("id"), "prompt_tokens": len(toks), "tokens": out,
            "logprobs": lps, "finish_reason": reason}


def run_file(model, in_path, out_path, fn):
    n_ok = n_err = 0
    with open(in_path) as fin, open(out_path, "w") as fout:
        for lineno, line in enumerate(fin, 1):
            if not line.strip():
                continue
            rid = None
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise RefError("request is not a JSON object")
                rid = req.get("id")
                if rid is None:
                    raise RefError("request has no 'id'")
                res = fn(req)
                n_ok += 1
            except (RefError, json.JSONDecodeError) as e:
                res = {"id": rid, "finish_reason": "error", "error": f"line {lineno}: {e}"}
                warn(f"{in_path}:{lineno}: {e}")
                n_err += 1
            fout.write(json.dumps(res) + "\n")
            fout.flush()
    print(f"torch_ref: {n_ok} requests done, {n_err} errors -> {out_path}", file=sys.stderr)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("score", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True, help="checkpoint directory")
        p.add_argument("--input", required=True, help="requests, JSONL")
        p.add_argument("--output", required=True, help="results, JSONL")
        p.add_argument("--ignore-max-pos", action="store_true",
                       help="do not limit sequences to max_position_embeddings")
        if name == "generate":
            p.add_argument("--max-new-tokens", type=int, default=16,
                           help="default for requests without max_new_tokens (16)")
    args = ap.parse_args(argv)
    try:
        model = Model.load(args.model)
    except RefError as e:
        print(f"torch_ref: error: {e}", file=sys.stderr)
        return 2
    check = not args.ignore_max_pos
    if args.cmd == "score":
        fn = lambda req: score_request(model, req, check_max_pos=check)
    else:
        fn = lambda req: generate_request(model, req, args.max_new_tokens, check_max_pos=check)
    with torch.no_grad():
        run_file(model, args.input, args.output, fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
