#!/usr/bin/python3
"""Self-checks for torch_ref.py, compare.py and make_tiny_ckpt.py.

Run: /usr/bin/python3 tests/reference/test_torch_ref.py   (plain unittest)

The main check is against a second, deliberately different implementation
written here in numpy: per-position, per-head Python loops, RoPE through
complex multiplication, and the *absorbed* form for MLA/GLA (DESIGN §2.3):
  q~_i = W_UK,i^T q_nope,i;  s_t = scale (q~_i . c_j,t + q_rope,i . k_rope,t)
  o_i = W_UV,i sum_t softmax(s)_t c_j,t + b_V,i
torch_ref uses vectorized torch, rotate-by-slicing RoPE and the materialized
per-head keys/values. The remaining checks are structural identities (weight
replication, row permutation, tying, dtype rounding, ...) that hold exactly
for a correct implementation of the spec.
"""

import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_tiny_ckpt as mk  # noqa: E402
import torch_ref as tr  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
TOKENS = [256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100, 33, 7, 200]  # 16 tokens
TOL = 1e-10  # float64 vs float64: only summation order differs


# ---------------------------------------------------------------------------
# The independent numpy reference (loops; absorbed latent attention).
# ---------------------------------------------------------------------------

def np_rope_freqs(r, theta, scaling):
    """RoPE frequencies and the cos/sin multiplier, one pair at a time, from the definitions of
    transformers' rope types (linear, llama3, yarn)."""
    freqs = [theta ** (-2.0 * k / r) for k in range(r // 2)]
    if not scaling:
        return np.array(freqs), 1.0
    kind = scaling.get("rope_type") or scaling.get("type")
    f = scaling["factor"]
    out, mult = [], 1.0
    if kind == "linear":
        out = [w / f for w in freqs]
    elif kind == "llama3":
        old = scaling["original_max_position_embeddings"]
        lo_f, hi_f = scaling["low_freq_factor"], scaling["high_freq_factor"]
        for w in freqs:
            wavelen = 2 * math.pi / w
            if wavelen < old / hi_f:
                out.append(w)
            elif wavelen > old / lo_f:
                out.append(w / f)
            else:
                t = (old / wavelen - lo_f) / (hi_f - lo_f)
                out.append((1 - t) * w / f + t * w)
    elif kind == "yarn":
        old = scaling["original_max_position_embeddings"]
        dim_at = lambda rot: r * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(theta))
        lo = max(math.floor(dim_at(scaling.get("beta_fast", 32))), 0)
        hi = min(math.ceil(dim_at(scaling.get("beta_slow", 1))), r - 1)
        if lo == hi:
            hi += 0.001
        for k, w in enumerate(freqs):
            ramp = min(max((k - lo) / (hi - lo), 0.0), 1.0)
            out.append(w / f * ramp + w * (1 - ramp))
        ms = lambda m: 1.0 if f <= 1 else 0.1 * m * math.log(f) + 1.0
        m1, m2 = scaling.get("mscale"), scaling.get("mscale_all_dim")
        mult = ms(m1) / ms(m2) if m1 and m2 else ms(1.0)
    else:
        raise ValueError(kind)
    return np.array(out), mult


def np_rope(x, p, theta, interleave, scaling=None):
    """Rotate vector x (r channels) to position p using complex numbers."""
    r = len(x)
    freqs, mult = np_rope_freqs(r, theta, scaling)
    ang = p * freqs
    e = mult * np.exp(1j * ang)
    out = np.empty(r)
    if interleave:
        z = (x[0::2] + 1j * x[1::2]) * e
        out[0::2], out[1::2] = z.real, z.imag
    else:
        z = (x[: r // 2] + 1j * x[r // 2:]) * e
        out[: r // 2], out[r // 2:] = z.real, z.imag
    return out


def np_softmax_weights(scores):
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return [v / z for v in e]


def naive_logits(cfg, W, tokens):
    """Logits [T, V] from config dict + {name: float64 array}, written from DESIGN §2."""
    W = {k: np.asarray(v, dtype=np.float64) for k, v in W.items()}
    cfg = tr.hf_to_spec(cfg)  # a published architecture in the spec's keys
    scaling = cfg.get("rope_scaling") or None
    qk_norm = bool(cfg.get("qk_norm"))
    eps = cfg.get("rms_norm_eps") or 1e-6
    theta = cfg.get("rope_theta") or 10000.0
    inter = bool(cfg.get("rope_interleave"))
    window = cfg.get("sliding_window") or None
    attn = cfg.get("attention_type") or "gqa"
    h_q = cfg["num_attention_heads"]
    T = len(tokens)

    def lin(name, x):
        y = W[name + ".weight"] @ x
        return y + W[name + ".bias"] if name + ".bias" in W else y

    def norm(x, w):
        return w * x / math.sqrt(float(np.mean(x * x)) + eps)

    def visible(p):
        return [s for s in range(p + 1) if window is None or s > p - window]

    def attention(A, u):  # u: list of T normalized input vectors -> list of T outputs
        outs = []
        if attn in ("mha", "mqa", "gqa", "gta"):
            h_kv = cfg.get("num_key_value_heads") or h_q
            if attn == "mqa":
                h_kv = 1
            d_h = cfg.get("head_dim") or cfg["hidden_size"] // h_q
            g = h_q // h_kv
            scale = cfg.get("softmax_scale") or 1 / math.sqrt(d_h)
            if attn == "gta":
                d_r = cfg.get("qk_rope_head_dim") or d_h // 2
                dn = d_h - d_r
                kv = [lin(A + ".kv_proj", x) for x in u]
                kr = [np_rope(lin(A + ".k_rope_proj", u[s]), s, theta, inter, scaling) for s in range(T)]
            else:
                ks = [lin(A + ".k_proj", x) for x in u]
                vs = [lin(A + ".v_proj", x) for x in u]
                if qk_norm:  # Qwen3: every KV head RMS-normed over d_h
                    ks = [np.concatenate([norm(k[j * d_h:(j + 1) * d_h], W[A + ".k_norm.weight"])
                                          for j in range(h_kv)]) for k in ks]
            for p in range(T):
                qall = lin(A + ".q_proj", u[p])
                heads = []
                for i in range(h_q):
                    j = i // g
                    q = qall[i * d_h:(i + 1) * d_h]
                    sl = slice(j * d_h, (j + 1) * d_h)
                    vis = visible(p)
                    if attn == "gta":
                        qn, qr = q[:dn], np_rope(q[dn:], p, theta, inter, scaling)
                        sc = [scale * (qn @ kv[s][sl][:dn] + qr @ kr[s]) for s in vis]
                        vals = [kv[s][sl] for s in vis]
                    else:
                        if qk_norm:
                            q = norm(q, W[A + ".q_norm.weight"])
                        qr = np_rope(q, p, theta, inter, scaling)
                        sc = [scale * (qr @ np_rope(ks[s][sl], s, theta, inter, scaling)) for s in vis]
                        vals = [vs[s][sl] for s in vis]
                    w = np_softmax_weights(sc)
                    heads.append(sum(wt * v for wt, v in zip(w, vals)))
                outs.append(lin(A + ".o_proj", np.concatenate(heads)))
            return outs
        # MLA / GLA, absorbed form
        h_c = cfg.get("num_latent_heads") or 1
        d_c, d_n = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"]
        d_r, d_v = cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        g = h_q // h_c
        scale = cfg.get("softmax_scale") or 1 / math.sqrt(d_n + d_r)
        lat, kr = [], []
        for s in range(T):
            ckv = lin(A + ".kv_a_proj_with_mqa", u[s])
            cs = []
            for j in range(h_c):
                cj = ckv[j * d_c:(j + 1) * d_c]
                if A + ".kv_a_layernorm.weight" in W:
                    cj = norm(cj, W[A + ".kv_a_layernorm.weight"][j * d_c:(j + 1) * d_c])
                cs.append(cj)
            lat.append(cs)
            kr.append(np_rope(ckv[h_c * d_c:], s, theta, inter, scaling))
        Wb = W[A + ".kv_b_proj.weight"]
        bb = W.get(A + ".kv_b_proj.bias")
        for p in range(T):
            if cfg.get("q_lora_rank"):
                qall = lin(A + ".q_b_proj", norm(lin(A + ".q_a_proj", u[p]), W[A + ".q_a_layernorm.weight"]))
            else:
                qall = lin(A + ".q_proj", u[p])
            heads = []
            for i in range(h_q):
                j = i // g
                q = qall[i * (d_n + d_r):(i + 1) * (d_n + d_r)]
                qn, qr = q[:d_n], np_rope(q[d_n:], p, theta, inter, scaling)
                rows = Wb[i * (d_n + d_v):(i + 1) * (d_n + d_v)]
                W_UK, W_UV = rows[:d_n], rows[d_n:]
                qt = W_UK.T @ qn                       # q~ (d_c); b_K only shifts all scores equally
                vis = visible(p)
                sc = [scale * (qt @ lat[s][j] + qr @ kr[s]) for s in vis]
                w = np_softmax_weights(sc)
                obar = sum(wt * lat[s][j] for wt, s in zip(w, vis))
                o = W_UV @ obar
                if bb is not None:
                    o = o + bb[i * (d_n + d_v) + d_n:(i + 1) * (d_n + d_v)]
                heads.append(o)
            outs.append(lin(A + ".o_proj", np.concatenate(heads)))
        return outs

    xs = [W["model.embed_tokens.weight"][t].copy() for t in tokens]
    for li in range(cfg["num_hidden_layers"]):
        L = f"model.layers.{li}"
        a = attention(L + ".self_attn", [norm(x, W[L + ".input_layernorm.weight"]) for x in xs])
        hs = [x + y for x, y in zip(xs, a)]
        xs = []
        for h in hs:
            v = norm(h, W[L + ".post_attention_layernorm.weight"])
            gt, up = lin(L + ".mlp.gate_proj", v), lin(L + ".mlp.up_proj", v)
            xs.append(h + lin(L + ".mlp.down_proj", gt / (1 + np.exp(-gt)) * up))
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    out = []
    for x in xs:
        y = head @ norm(x, W["model.norm.weight"])
        out.append(y + W["lm_head.bias"] if "lm_head.bias" in W else y)
    return np.stack(out)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class Base(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name
        self._n = 0

    def tearDown(self):
        self._tmp.cleanup()

    def build(self, cfg, tensors, dtype="f32", files=1):
        """Write a checkpoint to a fresh directory and load it with torch_ref."""
        self._n += 1
        d = os.path.join(self.tmp, f"m{self._n}")
        mk.write_checkpoint(d, cfg, tensors, dtype, files)
        return tr.Model.load(d), d

    def preset(self, name, seed=0):
        cfg, opts = mk.preset_config(name)
        return cfg, mk.random_tensors(cfg, opts, seed)

    def logits(self, cfg, tensors, tokens=TOKENS, dtype="f32", files=1):
        with torch.no_grad():
            return self.build(cfg, tensors, dtype, files)[0].logits(tokens).numpy()

    def assertClose(self, a, b, tol=TOL, msg=""):
        a, b = np.asarray(a), np.asarray(b)
        self.assertEqual(a.shape, b.shape, msg)
        err = float(np.max(np.abs(a - b) / (1 + np.abs(b)))) if a.size else 0.0
        self.assertLessEqual(err, tol, f"{msg}: max rel err {err:.3g}")


def permute_rows_per_head(w, n_heads, head_rows, offset, r, perm):
    """Reorder, inside each head's block of rows, the r rows starting at `offset` by perm."""
    w = w.copy()
    for i in range(n_heads):
        base = i * head_rows + offset
        w[base:base + r] = w[base:base + r][perm]
    return w


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

class SafetensorsTest(Base):
    def test_dtypes_metadata_and_known_bits(self):
        a = np.array([[1.0, -2.5, 3.140625], [0.0, 65504.0, -1e-3]], dtype=np.float32)
        for dt in ("f32", "bf16", "f16"):
            p = os.path.join(self.tmp, f"t_{dt}.safetensors")
            mk.write_safetensors(p, {"x": a, "y": a[0]}, dt, metadata={"k": "v"})
            got = tr.read_safetensors(p)
            self.assertEqual(set(got), {"x", "y"})  # __metadata__ skipped
            self.assertEqual(got["x"][0], {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dt])
            np.testing.assert_array_equal(got["x"][1], mk.round_to_dtype(a, dt))
            np.testing.assert_array_equal(got["y"][1], mk.round_to_dtype(a[0], dt))
        # BF16 = top 16 bits of f32: hand-written bit patterns
        p = os.path.join(self.tmp, "raw.safetensors")
        bits = np.array([0x3F80, 0xC020, 0x4049, 0x0000, 0x8000, 0x7F80], dtype="<u2")
        hdr = json.dumps({"b": {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]}}).encode()
        with open(p, "wb") as f:
            f.write(len(hdr).to_bytes(8, "little") + hdr + bits.tobytes())
        got = tr.read_safetensors(p)["b"][1]
        np.testing.assert_array_equal(got, np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], np.float32))

    def test_bad_offsets_and_dtype_rejected(self):
        for entry in ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]},
                      {"dtype": "F32", "shape": [4], "data_offsets": [0, 160]},
                      {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}):
            p = os.path.join(self.tmp, "bad.safetensors")
            hdr = json.dumps({"x": entry}).encode()
            with open(p, "wb") as f:
                f.write(len(hdr).to_bytes(8, "little") + hdr + bytes(16))
            with self.assertRaises(tr.RefError):
                tr.read_safetensors(p)

    def test_multifile_equals_single_and_duplicates_rejected(self):
        cfg, t = self.preset("gla")
        one = self.logits(cfg, t)
        three = self.logits(cfg, t, files=3)
        np.testing.assert_array_equal(one, three)
        d = os.path.join(self.tmp, "dup")
        mk.write_checkpoint(d, cfg, t)
        mk.write_safetensors(os.path.join(d, "extra.safetensors"),
                             {"model.norm.weight": t["model.norm.weight"]}, "f32")
        with self.assertRaises(tr.RefError):
            tr.Model.load(d)


class FamiliesVsNaiveTest(Base):
    def test_every_preset_and_dtype_matches_naive(self):
        """Vectorized torch_ref (materialized) == numpy loops (absorbed for latent)."""
        for name in sorted(mk.PRESETS):
            for dt in ("f32", "bf16"):
                with self.subTest(preset=name, dtype=dt):
                    cfg, t = self.preset(name, seed=3)
                    got = self.logits(cfg, t, dtype=dt)
                    want = naive_logits(cfg, {k: mk.round_to_dtype(v, dt) for k, v in t.items()}, TOKENS)
                    self.assertClose(got, want, msg=f"{name}-{dt}")

    def test_gqa_with_full_kv_equals_naive_mha(self):
        cfg, t = self.preset("gqa_interleave")
        cfg.update(num_key_value_heads=4, rope_interleave=False)
        opts = {"bias": ["q_proj", "o_proj"]}
        t = mk.random_tensors(cfg, opts, 7)
        got = self.logits(cfg, t)
        self.assertClose(got, naive_logits(dict(cfg, attention_type="mha"), t, TOKENS))
        # and the same checkpoint declared as mha, or with attention_type absent
        self.assertClose(self.logits(dict(cfg, attention_type="mha"), t), got, 0)
        c2 = dict(cfg)
        del c2["attention_type"]
        self.assertClose(self.logits(c2, t), got, 0)

    def test_mla_materialized_equals_absorbed_variants(self):
        """MLA with q LoRA, kv_a_layernorm present/absent, kv_b_proj bias on K and V rows."""
        for with_norm in (True, False):
            for interleave in (True, False):
                with self.subTest(kv_a_layernorm=with_norm, interleave=interleave):
                    cfg, _ = self.preset("mla")
                    cfg["rope_interleave"] = interleave
                    t = mk.random_tensors(cfg, {"kv_a_layernorm": with_norm,
                                                "bias": ["kv_b_proj", "q_b_proj", "kv_a_proj_with_mqa"]}, 11)
                    self.assertClose(self.logits(cfg, t), naive_logits(cfg, t, TOKENS))

    def test_gta_variants(self):
        """GTA with explicit d_r, with/without k_rope bias, vs naive."""
        for d_r, bias in ((4, ["k_rope_proj"]), (16, []), (8, ["kv_proj", "q_proj"])):
            with self.subTest(d_r=d_r, bias=bias):
                cfg, _ = self.preset("gta")
                cfg["qk_rope_head_dim"] = d_r
                t = mk.random_tensors(cfg, {"bias": bias}, 5)
                self.assertClose(self.logits(cfg, t), naive_logits(cfg, t, TOKENS))


class StructuralTest(Base):
    def test_gqa_equals_mha_with_replicated_kv(self):
        """GQA head i reads KV head i // g: same as MHA whose K/V rows are repeated g times."""
        for name in ("gqa_swa", "mqa"):
            with self.subTest(preset=name):
                cfg, t = self.preset(name)
                h_q, h_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
                d_h = cfg.get("head_dim") or cfg["hidden_size"] // h_q
                g = h_q // h_kv
                t2 = dict(t)
                for li in range(cfg["num_hidden_layers"]):
                    for pr in ("k_proj", "v_proj"):
                        n = f"model.layers.{li}.self_attn.{pr}.weight"
                        t2[n] = np.repeat(t[n].reshape(h_kv, d_h, -1), g, axis=0).reshape(h_q * d_h, -1)
                cfg2 = dict(cfg, attention_type="mha", num_key_value_heads=h_q)
                self.assertClose(self.logits(cfg2, t2), self.logits(cfg, t), 0)

    def test_gla_with_one_latent_equals_mla(self):
        cfg, t = self.preset("mla")
        gla = dict(cfg, attention_type="gla", num_latent_heads=1)
        self.assertClose(self.logits(gla, t), self.logits(cfg, t), 0)

    def test_gla_two_identical_latents_equals_mla(self):
        """GLA h_c=2 whose two latent chunks are copies of one MLA latent == that MLA."""
        cfg, t = self.preset("gla")
        d_c, d_r = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
        mla = dict(cfg, attention_type="mla", num_latent_heads=1)
        tm = mk.random_tensors(mla, {"kv_a_layernorm": True, "bias": ["kv_b_proj"]}, 9)
        tg = dict(tm)
        for li in range(cfg["num_hidden_layers"]):
            A = f"model.layers.{li}.self_attn"
            wa = tm[A + ".kv_a_proj_with_mqa.weight"]           # [d_c + d_r, d]
            tg[A + ".kv_a_proj_with_mqa.weight"] = np.concatenate([wa[:d_c], wa[:d_c], wa[d_c:]])
            wn = tm[A + ".kv_a_layernorm.weight"]
            tg[A + ".kv_a_layernorm.weight"] = np.concatenate([wn, wn])
        self.assertClose(self.logits(cfg, tg), self.logits(mla, tm), 1e-12)
        self.assertEqual(len(tg[A + ".kv_a_proj_with_mqa.weight"]), 2 * d_c + d_r)

    def test_rope_interleave_equals_permuted_rotate_half(self):
        """Interleaved pairs (2k,2k+1) == rotate_half pairs (k,k+r/2) after permuting q/k rows."""
        # GQA: r = d_h, permute all rows of every q and k head.
        cfg, t = self.preset("gqa_interleave")
        h_q, h_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        d_h = cfg["hidden_size"] // h_q
        perm = np.concatenate([np.arange(0, d_h, 2), np.arange(1, d_h, 2)])
        t2 = dict(t)
        for li in range(cfg["num_hidden_layers"]):
            A = f"model.layers.{li}.self_attn"
            t2[A + ".q_proj.weight"] = permute_rows_per_head(t[A + ".q_proj.weight"], h_q, d_h, 0, d_h, perm)
            t2[A + ".k_proj.weight"] = permute_rows_per_head(t[A + ".k_proj.weight"], h_kv, d_h, 0, d_h, perm)
        self.assertClose(self.logits(dict(cfg, rope_interleave=False), t2), self.logits(cfg, t))
        # MLA: r = d_r, the last d_r rows of each q_b head and the k_rope rows of kv_a.
        cfg, t = self.preset("mla")
        d_n, d_r, d_c = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["kv_lora_rank"]
        perm = np.concatenate([np.arange(0, d_r, 2), np.arange(1, d_r, 2)])
        t2 = dict(t)
        for li in range(cfg["num_hidden_layers"]):
            A = f"model.layers.{li}.self_attn"
            t2[A + ".q_b_proj.weight"] = permute_rows_per_head(
                t[A + ".q_b_proj.weight"], cfg["num_attention_heads"], d_n + d_r, d_n, d_r, perm)
            t2[A + ".kv_a_proj_with_mqa.weight"] = permute_rows_per_head(
                t[A + ".kv_a_proj_with_mqa.weight"], 1, 0, d_c, d_r, perm)
        self.assertClose(self.logits(dict(cfg, rope_interleave=False), t2), self.logits(cfg, t))

    def test_rope_properties(self):
        """RoPE: identity at p=0, norm-preserving, scores depend only on p - s; matches complex form."""
        g = torch.Generator().manual_seed(0)
        for r, inter in ((8, False), (8, True), (6, False)):
            q = torch.randn(1, r, generator=g, dtype=torch.float64)
            k = torch.randn(1, r, generator=g, dtype=torch.float64)

            def rot(x, p):
                return tr.rope(x, torch.tensor([p]), 10000.0, inter)[0]
            self.assertClose(rot(q, 0), q[0], 0)
            self.assertClose(torch.linalg.norm(rot(q, 37)), torch.linalg.norm(q), 1e-14)
            self.assertClose(rot(q, 9) @ rot(k, 4), rot(q, 105) @ rot(k, 100), 1e-12)
            self.assertClose(rot(q, 13), np_rope(q[0].numpy(), 13, 10000.0, inter), 1e-14)

    def test_sliding_window(self):
        cfg, t = self.preset("gqa_swa")
        full = self.logits(dict(cfg, sliding_window=None), t)
        # W >= T and W = 0 mean no restriction
        self.assertClose(self.logits(dict(cfg, sliding_window=len(TOKENS)), t), full, 0)
        self.assertClose(self.logits(dict(cfg, sliding_window=0), t), full, 0)
        # W = 5 really changes late positions but not the first 5
        w5 = self.logits(cfg, t)
        self.assertClose(w5[:5], full[:5], 0)
        self.assertGreater(np.max(np.abs(w5[5:] - full[5:])), 1e-3)
        # W = 1: a position sees only itself, so its logits ignore every earlier token
        for name in ("gqa_swa", "gta", "gla"):
            c, tt = self.preset(name)
            c = dict(c, sliding_window=1)
            other = [t_ ^ 1 for t_ in TOKENS[:-1]] + TOKENS[-1:]
            a, b = self.logits(c, tt), self.logits(c, tt, tokens=other)
            self.assertClose(a[-1], b[-1], 0, msg=name)
            self.assertGreater(np.max(np.abs(a[-2] - b[-2])), 1e-6)

    def test_tied_equals_untied_copy(self):
        cfg, t = self.preset("mha_tied")
        t2 = dict(t, **{"lm_head.weight": t["model.embed_tokens.weight"].copy()})
        self.assertClose(self.logits(dict(cfg, tie_word_embeddings=False), t2), self.logits(cfg, t), 0)

    def test_stored_dtype_equals_rounded_f32(self):
        cfg, t = self.preset("gta")
        for dt in ("bf16", "f16"):
            rounded = {k: mk.round_to_dtype(v, dt) for k, v in t.items()}
            np.testing.assert_array_equal(self.logits(cfg, t, dtype=dt), self.logits(cfg, rounded))

    def test_softmax_scale_override(self):
        for name in ("gqa_interleave", "mla", "gta"):
            with self.subTest(preset=name):
                cfg, t = self.preset(name)
                base = self.logits(cfg, t)
                m = tr.Config.from_dict(cfg)
                self.assertClose(self.logits(dict(cfg, softmax_scale=m.default_scale), t), base, 0)
                other = self.logits(dict(cfg, softmax_scale=0.05), t)
                self.assertGreater(np.max(np.abs(other - base)), 1e-4)
                self.assertClose(other, naive_logits(dict(cfg, softmax_scale=0.05), t, TOKENS))

    def test_zero_bias_equals_no_bias(self):
        cfg, t = self.preset("mqa")
        t2 = dict(t)
        for n in list(t):
            if n.endswith(".weight") and "norm" not in n and "embed" not in n:
                t2[n[:-len(".weight")] + ".bias"] = np.zeros(t[n].shape[0], np.float32)
        self.assertClose(self.logits(cfg, t2), self.logits(cfg, t), 0)

    def test_config_defaults(self):
        c = tr.Config.from_dict({"hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 1,
                                 "num_attention_heads": 4, "vocab_size": 10})
        self.assertEqual((c.attn, c.h_kv, c.d_h, c.eps, c.rope_theta, c.tie, c.window),
                         ("gqa", 4, 8, 1e-6, 10000.0, False, None))
        c = tr.Config.from_dict({"hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 1,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                                 "vocab_size": 10, "attention_type": "gta"})
        self.assertEqual((c.d_h, c.d_r, c.scale), (16, 8, 0.25))
        cfg, _ = self.preset("gla")
        for q in (0, None):
            self.assertIsNone(tr.Config.from_dict(dict(cfg, q_lora_rank=q)).q_lora_rank)
        with self.assertRaises(tr.RefError):
            tr.Config.from_dict(dict(cfg, num_attention_heads=3))   # 3 % 2 latent heads
        with self.assertRaises(tr.RefError):
            tr.Config.from_dict(dict(cfg, attention_type="mla"))    # mla with 2 latents

    def test_missing_or_misshaped_tensor_rejected(self):
        cfg, t = self.preset("gla")
        t2 = dict(t)
        del t2["model.layers.1.self_attn.kv_b_proj.weight"]
        with self.assertRaises(tr.RefError):
            self.build(cfg, t2)
        t3 = dict(t, **{"model.norm.weight": np.ones(31, np.float32)})
        with self.assertRaises(tr.RefError):
            self.build(cfg, t3)


class RequestsTest(Base):
    def test_generate_logprobs_equal_score_logprobs(self):
        for name in sorted(mk.PRESETS):
            with self.subTest(preset=name):
                cfg, t = self.preset(name)
                model, _ = self.build(cfg, t)
                prompt = TOKENS[:6]
                with torch.no_grad():
                    g = tr.generate_request(model, {"id": 1, "tokens": prompt, "max_new_tokens": 8})
                    s = tr.score_request(model, {"id": 1, "tokens": prompt + g["tokens"]})
                    full = torch.log_softmax(model.logits(prompt + g["tokens"]), -1)
                self.assertEqual(g["prompt_tokens"], 6)
                self.assertEqual(len(g["tokens"]), len(g["logprobs"]))
                self.assertClose(g["logprobs"], s["logprobs"][len(prompt) - 1:], 1e-12)
                for k, tok in enumerate(g["tokens"]):   # each token is the greedy argmax
                    self.assertEqual(tok, int(torch.argmax(full[len(prompt) - 1 + k])))
                self.assertAlmostEqual(s["sum_logprob"], sum(s["logprobs"]), places=10)
                self.assertAlmostEqual(s["perplexity"], math.exp(-s["sum_logprob"] / len(s["logprobs"])))

    def test_generate_stopping(self):
        cfg, t = self.preset("mqa")   # eos_token_id is the list [257, 258]
        model, _ = self.build(cfg, t)
        with torch.no_grad():
            g = tr.generate_request(model, {"id": "x", "tokens": TOKENS[:4]})
            self.assertEqual(len(g["tokens"]), 16)        # default max_new_tokens
            toks = g["tokens"]
            if toks[2] not in cfg["eos_token_id"] and not set(toks[:2]) & set(cfg["eos_token_id"]):
                s = tr.generate_request(model, {"id": "x", "tokens": TOKENS[:4], "stop_token_ids": [toks[2]]})
                self.assertEqual((s["tokens"], s["finish_reason"]), (toks[:3], "stop"))
            z = tr.generate_request(model, {"id": "x", "tokens": TOKENS[:4], "max_new_tokens": 0})
            self.assertEqual((z["tokens"], z["logprobs"], z["finish_reason"]), ([], [], "length"))
            # EOS: make the first generated token an EOS by declaring it one
            model.cfg.eos = {toks[0]}
            e = tr.generate_request(model, {"id": "x", "tokens": TOKENS[:4]})
            self.assertEqual((e["tokens"], e["finish_reason"]), (toks[:1], "stop"))
            model.cfg.eos = set()
            # max_position_embeddings caps prompt + generated tokens
            model.cfg.max_pos = 6
            c = tr.generate_request(model, {"id": "x", "tokens": TOKENS[:4]})
            self.assertEqual((c["tokens"], c["finish_reason"]), (toks[:2], "length"))
            with self.assertRaises(tr.RefError):
                tr.score_request(model, {"id": "x", "tokens": TOKENS[:7]})

    def test_greedy_tie_breaks_to_lowest_id(self):
        self.assertEqual(tr.greedy_argmax(torch.tensor([0.1, 0.7, 0.2, 0.7, 0.7], dtype=torch.float64)), 1)
        self.assertEqual(tr.greedy_argmax(torch.tensor([3.0, 3.0], dtype=torch.float64)), 0)

    def test_text_and_bad_requests(self):
        cfg, _ = self.preset("gta")
        c = tr.Config.from_dict(cfg)
        self.assertEqual(tr.request_tokens(c, {"text": "Hé"}), [256, 72, 0xC3, 0xA9])
        self.assertEqual(tr.request_tokens(c, {"prompt": ""}), [256])
        self.assertEqual(tr.request_tokens(c, {"tokens": [1, 2]}), [1, 2])   # no BOS added
        for bad in ({"tokens": []}, {"tokens": [260]}, {"tokens": [1], "text": "a"}, {},
                    {"tokens": "abc"}):
            with self.assertRaises(tr.RefError, msg=str(bad)):
                tr.request_tokens(c, bad)
        with self.assertRaises(tr.RefError):
            tr.request_tokens(tr.Config.from_dict(dict(cfg, tokenizer=None)), {"text": "a"})
        self.assertEqual(tr.score_request(self.build(cfg, mk.random_tensors(cfg, {}, 1))[0],
                                          {"id": 1, "tokens": [5]})["perplexity"], 1.0)


class CliTest(Base):
    def run_py(self, *args):
        return subprocess.run([PY, *args], capture_output=True, text=True)

    def write_jsonl(self, name, rows):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return p

    def read_jsonl(self, p):
        with open(p) as f:
            return [json.loads(l) for l in f if l.strip()]

    def test_cli_and_compare(self):
        d = os.path.join(self.tmp, "ck")
        cfg, t = mk.make_preset(d, "mla", "bf16")
        inp = self.write_jsonl("in.jsonl", [
            {"id": "t", "text": "abc"}, {"id": 2, "tokens": TOKENS[:5], "max_new_tokens": 3},
            {"id": "bad", "tokens": [99999]}])
        ref = os.path.join(HERE, "torch_ref.py")
        cmp_ = os.path.join(HERE, "compare.py")
        so, go = os.path.join(self.tmp, "s.jsonl"), os.path.join(self.tmp, "g.jsonl")
        r = self.run_py(ref, "score", "--model", d, "--input", inp, "--output", so)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_py(ref, "generate", "--model", d, "--input", inp, "--output", go,
                        "--max-new-tokens", "4")
        self.assertEqual(r.returncode, 0, r.stderr)
        s, g = self.read_jsonl(so), self.read_jsonl(go)
        self.assertEqual([x["id"] for x in s], ["t", 2, "bad"])
        self.assertEqual(len(s[0]["logprobs"]), 3)          # [bos, a, b, c] -> 3 logprobs
        self.assertEqual(s[2]["finish_reason"], "error")
        self.assertEqual((len(g[0]["tokens"]), g[0]["prompt_tokens"]), (4, 4))
        self.assertEqual(len(g[1]["tokens"]), 3)
        # in-process score of the same request agrees with the CLI
        with torch.no_grad():
            m = tr.Model.load(d)
            self.assertClose(s[1]["logprobs"], tr.score_request(m, {"id": 2, "tokens": TOKENS[:5]})["logprobs"], 0)

        def cmp(a, b, *extra):
            return self.run_py(cmp_, a, b, *extra)
        for p in (so, go):
            r = cmp(p, p, "--tokens-exact", "--atol", "0", "--rtol", "0")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # perturb one logprob by 1e-3
        g2 = copy.deepcopy(g)
        g2[1]["logprobs"][2] += 1e-3
        p2 = self.write_jsonl("g2.jsonl", g2)
        self.assertEqual(cmp(go, p2).returncode, 1)
        r = cmp(go, p2, "--atol", "2e-3")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("position 2", r.stdout)
        # different tokens only caught by --tokens-exact
        g3 = copy.deepcopy(g)
        g3[0]["tokens"][1] += 1
        p3 = self.write_jsonl("g3.jsonl", g3)
        self.assertEqual(cmp(go, p3).returncode, 0)
        self.assertEqual(cmp(go, p3, "--tokens-exact").returncode, 1)
        # missing id, error vs result, length mismatch
        self.assertEqual(cmp(go, self.write_jsonl("g4.jsonl", g[:2])).returncode, 1)
        g5 = copy.deepcopy(g)
        g5[2] = {"id": "bad", "tokens": [1], "logprobs": [-1.0], "finish_reason": "length"}
        self.assertEqual(cmp(go, self.write_jsonl("g5.jsonl", g5)).returncode, 1)
        g6 = copy.deepcopy(g)
        g6[1]["logprobs"].pop()
        self.assertEqual(cmp(go, self.write_jsonl("g6.jsonl", g6)).returncode, 1)
        # id 2 and id "2" are different ids
        g7 = copy.deepcopy(g)
        g7[1]["id"] = "2"
        self.assertEqual(cmp(go, self.write_jsonl("g7.jsonl", g7)).returncode, 1)

    def test_make_tiny_ckpt_cli(self):
        r = self.run_py(os.path.join(HERE, "make_tiny_ckpt.py"), "--out", self.tmp,
                        "--preset", "gqa_swa", "--dtype", "f16", "--files", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        d = os.path.join(self.tmp, "gqa_swa-f16")
        self.assertEqual(len([f for f in os.listdir(d) if f.endswith(".safetensors")]), 2)
        tr.Model.load(d)


if __name__ == "__main__":
    torch.set_num_threads(1)
    unittest.main(verbosity=2)
