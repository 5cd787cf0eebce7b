#!/usr/bin/python3
"""Train ShardLM's built-in model: a small Llama-style GQA model on the Brown corpus.

  /usr/bin/python3 training/train.py --out models/brown-gqa [--steps N] [--threads 2]

Deterministic (seeded, fixed step count, deterministic torch kernels). Writes a Hugging Face
style directory: config.json, generation_config.json, model.safetensors (BF16), tokenizer.json,
tokenizer_config.json, and training.json (the held-out perplexity and bits per byte of the
exported BF16 weights, the figures `shardlm score` must reproduce), train.log and loss.png.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import brown  # noqa: E402
import make_tiny_ckpt  # noqa: E402  (its safetensors writer)

SHAPE = dict(hidden_size=256, intermediate_size=640, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=4, head_dim=32, rope_theta=10000.0, rms_norm_eps=1e-5)
VOCAB = 4096
SEQ = 256
EVAL_SUBSET_CHUNKS = 32  # the first chunks of the held-out stream, checked by ctest


class Model(torch.nn.Module):
    """Llama: pre-norm, RoPE (rotate_half pairs), GQA, SwiGLU MLP, tied embeddings."""

    def __init__(self, vocab, s):
        super().__init__()
        d, f, L = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
        self.s = s
        self.hq, self.hkv, self.dh = s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]
        self.embed = torch.nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            m = torch.nn.Module()
            m.attn_norm = torch.nn.Parameter(torch.ones(d))
            m.q = torch.nn.Linear(d, self.hq * self.dh, bias=False)
            m.k = torch.nn.Linear(d, self.hkv * self.dh, bias=False)
            m.v = torch.nn.Linear(d, self.hkv * self.dh, bias=False)
            m.o = torch.nn.Linear(self.hq * self.dh, d, bias=False)
            m.mlp_norm = torch.nn.Parameter(torch.ones(d))
            m.gate = torch.nn.Linear(d, f, bias=False)
            m.up = torch.nn.Linear(d, f, bias=False)
            m.down = torch.nn.Linear(f, d, bias=False)
            for lin in (m.q, m.k, m.v, m.gate, m.up):
                torch.nn.init.normal_(lin.weight, std=0.02)
            for lin in (m.o, m.down):
                torch.nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * L))
            self.layers.append(m)
        self.norm = torch.nn.Parameter(torch.ones(d))
        inv = 1.0 / (s["rope_theta"] ** (torch.arange(0, self.dh, 2, dtype=torch.float64) / self.dh))
        ang = torch.arange(SEQ, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", torch.cat([ang.cos(), ang.cos()], -1).float(), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin(), ang.sin()], -1).float(), persistent=False)

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.s["rms_norm_eps"]))

    def rope(self, x):
        T = x.shape[-2]
        h = self.dh // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * self.cos[:T] + rot * self.sin[:T]

    def forward(self, ids):
        B, T = ids.shape
        x = self.embed[ids]
        mask = torch.full((T, T), float("-inf")).triu(1)
        scale = 1.0 / math.sqrt(self.dh)
        g = self.hq // self.hkv
        for m in self.layers:
            u = self.rms(x, m.attn_norm)
            q = m.q(u).view(B, T, self.hq, self.dh).transpose(1, 2)
            k = m.k(u).view(B, T, self.hkv, self.dh).transpose(1, 2)
            v = m.v(u).view(B, T, self.hkv, self.dh).transpose(1, 2)
            q, k = self.rope(q) * scale, self.rope(k)
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            a = q @ k.transpose(-1, -2) + mask
            o = (a.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
            x = x + m.o(o)
            u = self.rms(x, m.mlp_norm)
            x = x + m.down(F.silu(m.gate(u)) * m.up(u))
        return self.rms(x, self.norm) @ self.embed.t()

    def hf_tensors(self):
        """Hugging Face Llama names -> float32 numpy arrays."""
        t = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        for i, m in enumerate(self.layers):
            p = f"model.layers.{i}."
            t[p + "input_layernorm.weight"] = m.attn_norm
            t[p + "post_attention_layernorm.weight"] = m.mlp_norm
            for short, lin in (("q_proj", m.q), ("k_proj", m.k), ("v_proj", m.v), ("o_proj", m.o)):
                t[p + "self_attn." + short + ".weight"] = lin.weight
            for short, lin in (("gate_proj", m.gate), ("up_proj", m.up), ("down_proj", m.down)):
                t[p + "mlp." + short + ".weight"] = lin.weight
        return {k: v.detach().float().numpy() for k, v in t.items()}


def bf16_round_(model):
    """Round every parameter to bfloat16 (nearest even) in place: the exported weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


@torch.no_grad()
def evaluate(model, tok, chunks):
    """Sum of -log p over every chunk's tokens 1..n-1, the token count and their bytes."""
    nll, n, nbytes = 0.0, 0, 0
    for k in range(0, len(chunks), 8):
        batch = torch.tensor(chunks[k:k + 8])
        logp = model(batch).double().log_softmax(-1)
        tgt = batch[:, 1:]
        nll -= logp[:, :-1].gather(-1, tgt[..., None]).sum().item()
        n += tgt.numel()
        nbytes += sum(len(tok.id_to_bytes[i]) for i in tgt.flatten().tolist())
    return nll, n, nbytes


def export(model, tok, out, result):
    """The Hugging Face style directory."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": tok.vocab_size,
           **SHAPE, "max_position_embeddings": SEQ, "tie_word_embeddings": True,
           "eos_token_id": tok.eos_id, "hidden_act": "silu", "attention_bias": False,
           "mlp_bias": False, "torch_dtype": "bfloat16"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": tok.eos_id}, f, indent=2)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok.tokenizer_json(), f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": brown.EOS,
                   "bos_token": None, "add_bos_token": False, "model_max_length": SEQ,
                   "clean_up_tokenization_spaces": False}, f, indent=2)
    make_tiny_ckpt.write_safetensors(os.path.join(out, "model.safetensors"), model.hf_tensors(),
                                     "bf16", metadata={"format": "pt"})
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(result, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "train.log"), "w")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    t0 = time.time()
    train_docs, heldout_docs = brown.split_documents()
    tok = brown.Tokenizer(brown.train_bpe(train_docs, VOCAB))
    train_ids = torch.tensor(brown.token_stream(tok, train_docs))
    heldout = brown.chunks(brown.token_stream(tok, heldout_docs), SEQ)
    say(f"corpus: {len(train_docs)} train / {len(heldout_docs)} held-out documents, "
        f"{len(train_ids)} train tokens, {len(heldout)} held-out chunks of {SEQ}; "
        f"BPE vocab {tok.vocab_size} ({time.time() - t0:.1f} s)")

    model = Model(tok.vocab_size, SHAPE)
    nparams = sum(p.numel() for p in model.parameters())
    say(f"model: {nparams / 1e6:.2f} M parameters, {json.dumps(SHAPE)}")
    decay = [p for p in model.parameters() if p.dim() == 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = max(1, args.steps // 30)
    gen = torch.Generator().manual_seed(args.seed)
    train_curve, eval_curve = [], []  # (step, loss)
    for step in range(1, args.steps + 1):
        lr = args.lr * (step / warmup if step <= warmup else
                        0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - SEQ - 1, (args.batch,), generator=gen)
        batch = torch.stack([train_ids[s:s + SEQ + 1] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls, f32 master weights
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_curve.append((step, loss.item()))
        if step % 10 == 0 or step == 1:
            say(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  {time.time() - t0:7.1f} s")
        if step % 100 == 0 or step == args.steps:
            model.eval()
            nll, n, nb = evaluate(model, tok, heldout[:32])
            say(f"step {step:5d}  held-out (32 chunks) loss {nll / n:.4f}  "
                f"bits/byte {nll / math.log(2) / nb:.3f}")
            eval_curve.append((step, nll / n))
            model.train()

    bf16_round_(model)
    model.eval()
    nll, n, nb = evaluate(model, tok, heldout)
    snll, sn, _ = evaluate(model, tok, heldout[:EVAL_SUBSET_CHUNKS])
    result = {
        "parameters": nparams, "steps": args.steps, "batch": args.batch, "seq": SEQ,
        "train_tokens_seen": args.steps * args.batch * SEQ, "seconds": round(time.time() - t0, 1),
        "heldout_chunks": len(heldout), "heldout_tokens_scored": n,
        "heldout_perplexity": math.exp(nll / n), "heldout_bits_per_byte": nll / math.log(2) / nb,
        "subset_chunks": EVAL_SUBSET_CHUNKS, "subset_perplexity": math.exp(snll / sn),
        "torch": torch.__version__, "threads": args.threads, "seed": args.seed,
    }
    say("final (BF16 weights): " + json.dumps(result))

    export(model, tok, args.out, result)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(*zip(*train_curve), lw=0.6, label="train (batch)")
        ax.plot(*zip(*eval_curve), "o-", label="held-out (32 chunks)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"Brown GQA {nparams / 1e6:.1f} M: training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "loss.png"), dpi=90)
    except ImportError:
        say("matplotlib missing: no loss.png")


if __name__ == "__main__":
    main()
