#!/usr/bin/python3
"""GQA -> MLA / GLA conversion (after TransMLA), the NumPy reference of `shardlm convert`.

  convert_ref.py --model GQA_DIR --attention mla|gla [--latent-heads H] --kv-lora-rank R
                 [--rope-dim D] --out DIR

Per layer, with h_kv KV groups of head dim d_h (RoPE pairs (k, k + d_h/2), rotate_half):

1. RoRoPE. For each RoPE frequency k the h_kv groups' key pairs rotate by the same angle, so any
   orthogonal mixing U_k across groups (applied to both halves of the pair) commutes with RoPE.
   U_k's first row is the top eigenvector u_k of C_k = sum over both halves of W_k,g W_k,g'ᵀ
   (the groups' key rows for that frequency; weight-only, i.e. inputs taken as isotropic). The
   shared RoPE key of the MLA/GLA layout keeps the first component, p_k = Σ_g u_k[g] K_g,k, for
   the frequencies the target's d_r channels can carry (target channel k' has the source
   frequency s·k', s = d_h / d_r, so the two geometric series coincide). Query head h of group g
   reads it with weight u_k[g] (q_rope = u_k[g] · q_h,k, rotated as before).
2. What the shared key cannot carry stays in each group's non-RoPE key: the residual
   K_g,k − u_k[g] p_k for kept frequencies, the whole K_g,k for the others. It loses its
   rotation — the only approximation of the method besides the rank — and pairs with the
   query's unchanged channels (d_n = d_h: the query's nope part is the original q_h).
3. The latent. Latent head j (GLA: the groups its query heads read; MLA: all) compresses its
   groups' residual keys and values, M_j = [K_res of its groups; V of its groups], by SVD:
   M_j ≈ U S Vᵀ, kv_a rows = Vᵀ_R (the latent, rank R = kv_lora_rank), kv_b = U_R S_R (signs
   fixed: each row of Vᵀ has its largest-magnitude entry positive). At full
   rank the latent reproduces M_j exactly. No kv_a_layernorm (the layout allows its absence; a
   norm would rescale every token's latent).
4. Scale: softmax_scale = 1/sqrt(d_h), as the source.

Writes a ShardLM-native config (attention_type, latent dims) and F32 safetensors.
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tiny_ckpt as mk  # noqa: E402
import torch_ref  # noqa: E402


def read_checkpoint(model_dir):
    """Every tensor as float64 numpy (torch_ref's reader: index files, BF16/F16/F32, checks)."""
    return {k: v.numpy() for k, v in torch_ref.load_checkpoint_tensors(model_dir).items()}


def convert_layer(Wq, Wk, Wv, hq, hkv, dh, hc, rank, dr):
    """Returns (q_proj, kv_a_proj_with_mqa, kv_b_proj) for one layer, float64."""
    half, g = dh // 2, hq // hkv
    s = dh // dr
    kept = {s * kk: kk for kk in range(dr // 2)}  # source frequency -> target channel
    d = Wk.shape[1]
    K = Wk.reshape(hkv, dh, d)
    Q = Wq.reshape(hq, dh, d)
    k_rope = np.zeros((dr, d))
    Kres = K.copy()
    q_rope = np.zeros((hq, dr, d))
    for k, kk in kept.items():
        re, im = K[:, k, :], K[:, k + half, :]  # [hkv, d]
        C = re @ re.T + im @ im.T
        w, U = np.linalg.eigh(C)
        u = U[:, -1]
        u = u * (1.0 if u[np.argmax(np.abs(u))] > 0 else -1.0)  # a fixed sign
        k_rope[kk] = u @ re
        k_rope[kk + dr // 2] = u @ im
        Kres[:, k, :] = re - np.outer(u, u @ re)
        Kres[:, k + half, :] = im - np.outer(u, u @ im)
        for h in range(hq):
            q_rope[h, kk] = u[h // g] * Q[h, k]
            q_rope[h, kk + dr // 2] = u[h // g] * Q[h, k + half]
    V = Wv.reshape(hkv, dh, d)
    groups_per_latent = hkv // hc
    kv_a, ups = [], []
    for j in range(hc):
        gs = range(j * groups_per_latent, (j + 1) * groups_per_latent)
        M = np.concatenate([Kres[x] for x in gs] + [V[x] for x in gs])  # [2·|gs|·dh, d]
        U, S, Vt = np.linalg.svd(M, full_matrices=False)
        # Singular vectors are defined up to sign: each Vt row's largest-|entry| positive
        # (U's column flipped with it), as shardlm convert does.
        sign = np.where(Vt[np.arange(S.size), np.argmax(np.abs(Vt), axis=1)] < 0, -1.0, 1.0)
        Vt, U = Vt * sign[:, None], U * sign[None, :]
        r = min(rank, S.size)
        A = np.zeros((rank, d))
        A[:r] = Vt[:r]
        B = np.zeros((M.shape[0], rank))
        B[:, :r] = U[:, :r] * S[:r]
        kv_a.append(A)
        ups.append(B)
    # kv_b rows per query head: [W_UK (d_n = dh rows) ; W_UV (d_v = dh rows)].
    kv_b = []
    n = groups_per_latent * dh
    for h in range(hq):
        grp = h // g
        j, local = grp // groups_per_latent, grp % groups_per_latent
        B = ups[j]
        kv_b.append(B[local * dh:(local + 1) * dh])
        kv_b.append(B[n + local * dh:n + (local + 1) * dh])
    q_proj = np.concatenate([np.concatenate([Q[h], q_rope[h]]) for h in range(hq)])
    return q_proj, np.concatenate(kv_a + [k_rope]), np.concatenate(kv_b)


def convert(cfg, W, attention, hc, rank, dr):
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or cfg["hidden_size"] // hq
    if attention == "mla":
        hc = 1
    if hkv % hc:
        raise SystemExit(f"{hkv} KV groups cannot be split over {hc} latent heads")
    if dr % 2 or dh % dr:
        raise SystemExit(f"--rope-dim {dr} must be even and divide head_dim {dh}")
    out = {}
    for name, a in W.items():
        if ".self_attn." not in name:
            out[name] = a
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        q, a, b = convert_layer(W[p + "q_proj.weight"], W[p + "k_proj.weight"],
                                W[p + "v_proj.weight"], hq, hkv, dh, hc, rank, dr)
        out[p + "q_proj.weight"] = q
        out[p + "kv_a_proj_with_mqa.weight"] = a
        out[p + "kv_b_proj.weight"] = b
        out[p + "o_proj.weight"] = W[p + "o_proj.weight"]
    new = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type",
                                                     "num_key_value_heads", "head_dim")}
    new.update(attention_type=attention, num_latent_heads=hc, kv_lora_rank=rank,
               qk_nope_head_dim=dh, qk_rope_head_dim=dr, v_head_dim=dh, q_lora_rank=None,
               softmax_scale=1.0 / np.sqrt(dh))
    return new, out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--attention", choices=["mla", "gla"], required=True)
    ap.add_argument("--latent-heads", type=int, default=2)
    ap.add_argument("--kv-lora-rank", type=int, required=True)
    ap.add_argument("--rope-dim", type=int, default=0, help="default: head_dim")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    W = read_checkpoint(args.model)
    dh = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    new, out = convert(cfg, W, args.attention, args.latent_heads, args.kv_lora_rank,
                       args.rope_dim or dh)
    mk.write_checkpoint(args.out, new, out, "f32")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        src = os.path.join(args.model, f)
        if os.path.exists(src):
            with open(src, "rb") as a, open(os.path.join(args.out, f), "wb") as b:
                b.write(a.read())


if __name__ == "__main__":
    main()
