#!/usr/bin/python3
"""Held-out perplexity of the trained GQA model and of its MLA / GLA conversions, against the KV
cache bytes per token per rank at TP 1, 2 and 4.

  /usr/bin/python3 training/convert_sweep.py --model models/brown-gqa --shardlm build/launch/shardlm \
      --work /tmp/sweep [--chunks 32] [--plot docs/conversion.png]

Conversions come from tests/reference/convert_ref.py (the reference of `shardlm convert`);
perplexity from `shardlm score` on the first held-out chunks (training/brown.py); cache bytes from
`shardlm inspect --tp T` (rank 0's column: MLA's latent is the same on every rank).
Prints a Markdown table.
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import brown  # noqa: E402
import convert_ref  # noqa: E402


def cache_bytes(shardlm, model, tp):
    out = subprocess.run([shardlm, "inspect", "--model", model, "--tp", str(tp)], check=True,
                         capture_output=True, text=True).stdout
    rows = [l.split() for l in out.splitlines() if re.match(r"^0\s", l)]
    return int(rows[0][-1])


def perplexity(shardlm, model, chunks, work):
    inp, out = os.path.join(work, "score.in.jsonl"), os.path.join(work, "score.out.jsonl")
    with open(inp, "w") as f:
        for i, c in enumerate(chunks):
            f.write(json.dumps({"id": i, "tokens": c}) + "\n")
    subprocess.run([shardlm, "score", "--model", model, "--input", inp, "--output", out],
                   check=True, capture_output=True)
    nll = n = 0
    with open(out) as f:
        for line in f:
            r = json.loads(line)
            nll -= r["sum_logprob"]
            n += len(r["logprobs"])
    return math.exp(nll / n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--shardlm", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--plot")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(args.model, "training.json")) as f:
        seq = json.load(f)["seq"]
    tok = brown.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    _, heldout = brown.split_documents()
    chunks = brown.chunks(brown.token_stream(tok, heldout), seq)[:args.chunks]
    hkv, dh = cfg["num_key_value_heads"], cfg["head_dim"]

    runs = [("GQA (source)", args.model, None)]
    full = 2 * dh * hkv  # K residual + V rows of every group
    for name, attention, hc in (("MLA", "mla", 1), ("GLA-2", "gla", 2), ("GLA-4", "gla", 4)):
        top = full // hc
        for rank in (top, top // 2, top // 4, top // 8):
            for dr in (dh, dh // 2):
                if dr != dh and rank != top:
                    continue
                runs.append((f"{name} R {rank} d_r {dr}", None, (attention, hc, rank, dr)))
    rows = []
    for label, path, spec in runs:
        if spec is not None:
            attention, hc, rank, dr = spec
            path = os.path.join(args.work, f"{attention}{hc}-r{rank}-d{dr}")
            convert_ref.main(["--model", args.model, "--attention", attention, "--latent-heads",
                              str(hc), "--kv-lora-rank", str(rank), "--rope-dim", str(dr),
                              "--out", path])
        ppl = perplexity(args.shardlm, path, chunks, args.work)
        cache = [cache_bytes(args.shardlm, path, tp) for tp in (1, 2, 4)]
        rows.append((label, ppl, cache))
        print(f"{label:24s} ppl {ppl:8.3f}  cache B/token/rank TP1 {cache[0]} TP2 {cache[1]} "
              f"TP4 {cache[2]}", flush=True)
    base = rows[0][1]
    print()
    print("| model | held-out perplexity | vs GQA | cache B/token/rank TP 1 | TP 2 | TP 4 |")
    print("|---|---|---|---|---|---|")
    for label, ppl, cache in rows:
        print(f"| {label} | {ppl:.3f} | {100 * (ppl / base - 1):+.1f}% | {cache[0]} | {cache[1]} | "
              f"{cache[2]} |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
        for ax, tp, k in zip(axes, (1, 2, 4), range(3)):
            for fam, marker in (("GQA", "s"), ("MLA", "o"), ("GLA-2", "^"), ("GLA-4", "v")):
                pts = sorted((c[k], p) for l, p, c in rows if l.startswith(fam) and "d_r 16" not in l)
                if pts:
                    ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, label=fam)
            ax.set_xscale("log", base=2)
            ax.set_title(f"TP {tp}")
            ax.set_xlabel("KV cache bytes / token / rank (f32)")
        axes[0].set_ylabel("held-out perplexity")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)


if __name__ == "__main__":
    main()
