#!/usr/bin/python3
"""End-to-end test of `shardlm bench` on the tiny preset (ctest bench.np1, bench.np2).

Runs the bench for four families under `mpirun -np N` and checks the structure
of its table, CSV and JSON Lines, and the invariants that hold for any timing:
cache bytes per token equal the allocation and `shardlm inspect`, capacity
follows from the budget, shares lie in [0, 1], derived figures match their
definitions. With --np 2 it also compares with the np1 run's output (the np1
test is its fixture): GLA's per-rank cache shrinks by the DESIGN §3 ratio, MLA's
does not. Timings are never asserted.
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys

FAMILIES = ["gqa", "gta", "mla", "gla"]
CONTEXTS = [16, 100]  # 100 is not a multiple of the page size
BATCHES = [1, 3]
PAGE = 7
BUDGET_MB = 1.0
PREFILL = 32

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def run(cmd):
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


def mpirun(args, np_):
    return [args.mpirun, "--oversubscribe", "--bind-to", "none", "-np", str(np_), args.shardlm]


def cache_row_floats(config, tp):
    """Cache floats per token per layer on one rank: the table of DESIGN §3."""
    t = config["attention_type"]
    if t in ("mla", "gla"):
        h_c = config.get("num_latent_heads", 1)
        return config["kv_lora_rank"] * max(h_c // tp, 1) + config["qk_rope_head_dim"]
    h_kv, d_h = config["num_key_value_heads"], config["head_dim"]
    if t == "gta":
        return d_h * max(h_kv // tp, 1) + config["qk_rope_head_dim"]
    return 2 * d_h * max(h_kv // tp, 1)


def inspect(args, model_dir, tp):
    """(parameters, rank 0's "cache B/token" column) from `shardlm inspect --tp`."""
    out = run([args.shardlm, "inspect", "--model", model_dir, "--tp", str(tp)])
    check(out.returncode == 0, f"inspect {model_dir} --tp {tp}: {out.stderr}")
    params, cache = -1, -1
    for line in out.stdout.splitlines():
        cells = line.split()
        if cells and cells[0] == "parameters":
            params = int(cells[1])
        if cells and cells[0] == "0":
            cache = int(cells[-1])
    check(params > 0 and cache > 0, f"inspect output not understood: {out.stdout}")
    return params, cache


def check_table(stdout, family):
    lines = [l for l in stdout.splitlines() if l.startswith("|")]
    check(len(lines) == 2 + len(CONTEXTS) * len(BATCHES), f"{family}: table has {len(lines)} lines")
    if len(lines) < 2:
        return
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for want in ["step ms", "p90 ms", "bound ms", "tok/s", "pp tok/s", "cache B/tok/rank",
                 "weights MiB/rank", "read MiB/step/rank", "GB/s/rank", "% roof", "AR %", "seqs fit"]:
        check(want in header, f"{family}: table lacks column {want!r}")
    check(all(re.fullmatch(r"-+:?", c.strip()) for c in lines[1].strip("|").split("|")),
          f"{family}: second table line is not a markdown rule: {lines[1]}")
    for line in lines[2:]:
        check(len(line.strip("|").split("|")) == len(header), f"{family}: ragged row {line}")


def load_outputs(prefix):
    with open(prefix + ".csv") as f:
        rows = list(csv.DictReader(f))
    with open(prefix + ".jsonl") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return rows, records


def check_record(r, config, np_, family):
    tag = f"{family} np{np_} ctx {r['context']} B {r['batch']}"
    i = lambda k: int(r[k])  # int64 fields are JSON strings (proto3 JSON mapping)
    layers, d, vocab = config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]
    ctx, batch, page = i("context"), i("batch"), i("page_size")
    pages_per_seq = -(-ctx // page)
    check(r["attention"] == family and i("tp") == np_ and page == PAGE, f"{tag}: identity fields")
    check(i("layers") == layers and i("hidden_size") == d, f"{tag}: model dims")
    # The timed pool holds exactly the B contexts, and its bytes are the allocation.
    check(i("cache_pages_per_rank") == batch * pages_per_seq, f"{tag}: pages {r['cache_pages_per_rank']}")
    per_token = i("cache_bytes_per_token_per_rank")
    check(per_token == layers * 4 * cache_row_floats(config, np_), f"{tag}: cache B/token {per_token}")
    check(i("cache_bytes_per_rank") == per_token * i("cache_pages_per_rank") * page,
          f"{tag}: cache bytes {r['cache_bytes_per_rank']} != allocation")
    # Bytes a step reads: weights but the rank's slice of the (untied, vocab-sharded) embedding
    # table, B rows of it, the pool. Rank 0 holds the largest slice and is the largest reader.
    vocab_rank0 = -(-vocab // np_)
    expect_read = (i("weight_bytes_per_rank") - vocab_rank0 * d * 4 + batch * d * 4 +
                   i("cache_bytes_per_rank"))
    check(i("bytes_read_per_step_per_rank") == expect_read, f"{tag}: bytes read per step")
    all_ranks = i("bytes_read_per_step_all_ranks")
    check(i("bytes_read_per_step_per_rank") <= all_ranks <= np_ * i("bytes_read_per_step_per_rank"),
          f"{tag}: bytes read over all ranks {all_ranks}")
    if np_ == 1:
        check(all_ranks == i("bytes_read_per_step_per_rank"), f"{tag}: one rank reads it all")
    # Capacity: decode's PagesForBudget at this rank's row width.
    budget = math.floor(BUDGET_MB * 1024 * 1024 / (page * per_token))
    check(i("budget_pages") == budget, f"{tag}: budget pages {r['budget_pages']} != {budget}")
    check(i("capacity_sequences") == budget // pages_per_seq, f"{tag}: capacity")
    check(i("capacity_sequences") * pages_per_seq * page * per_token <= BUDGET_MB * 2**20,
          f"{tag}: capacity exceeds the budget")
    # Figures and their definitions; shares in [0, 1]. No timing is compared to a number.
    med, p90, mn = r["step_ms_median"], r["step_ms_p90"], r["step_ms_min"]
    check(0 < mn <= med <= p90, f"{tag}: step times min {mn} median {med} p90 {p90}")
    check(close(r["tokens_per_s"], batch * 1e3 / med), f"{tag}: tokens/s")
    bw = r["bandwidth_gbs_per_rank"]
    check(bw > 0 and r["bandwidth_source"] == "probe", f"{tag}: roofline {bw}")
    read = i("bytes_read_per_step_per_rank")
    check(close(r["achieved_gbs_per_rank"], read / med / 1e6), f"{tag}: achieved GB/s")
    check(close(r["roofline_fraction"], r["achieved_gbs_per_rank"] / bw), f"{tag}: roofline fraction")
    check(close(r["bound_step_ms"], read / (bw * 1e9) * 1e3), f"{tag}: bound ms")
    for share in ("allreduce_share", "gather_share"):
        check(0 <= r[share] <= 1, f"{tag}: {share} {r[share]}")
    check(r["allreduce_ms_per_step"] >= 0, f"{tag}: all-reduce ms")
    # The transfer alone: per call the least any rank spent, so never more than the share
    # with the waiting (proto3 JSON leaves out a field that is 0).
    transfer = r.get("allreduce_transfer_share", 0.0)
    check(0 <= transfer <= r["allreduce_share"] + 1e-12,
          f"{tag}: transfer share {transfer} vs all-reduce share {r['allreduce_share']}")
    check(i("prefill_tokens") == PREFILL and r["prefill_tokens_per_s"] > 0, f"{tag}: prefill")
    # The compute bound: the attention's multiply-adds from the config (DESIGN §2), the
    # matmuls' from the weights; at the measured FMA rate for this F32 model. The bound is the
    # slowest rank's, and rank 0 (the largest vocab slice) is it.
    h_q = config["num_attention_heads"] // np_
    if config["attention_type"] in ("mla", "gla"):
        per_position = h_q * (2 * config["kv_lora_rank"] + config["qk_rope_head_dim"])
    else:
        per_position = h_q * 2 * config["head_dim"]
    attn_macs = i("attention_macs_per_step_per_rank")
    check(attn_macs == batch * ctx * layers * per_position, f"{tag}: attention MACs {attn_macs}")
    matmul_macs = i("matmul_macs_per_step_per_rank")
    check(matmul_macs >= batch * vocab_rank0 * d, f"{tag}: matmul MACs {matmul_macs}")
    fma = r.get("fma_per_ns", 0.0)
    if fma > 0:
        # Rounded to whole ns across ranks; the max over ranks is at least rank 0's.
        got, expect = r["compute_bound_step_ms"], (matmul_macs + attn_macs) / 16 / fma / 1e6
        ok = got >= expect - 1e-6 if np_ > 1 else abs(got - expect) <= 1e-6
        check(ok, f"{tag}: compute bound {got} ms, rank 0's arithmetic {expect} ms")
    check(i("parameters") > 0 and r["host"] != "", f"{tag}: provenance")


def bench_family(args, family, np_, outdir):
    prefix = os.path.join(outdir, family)
    out = run(mpirun(args, np_) + [
        "bench", "--preset", "tiny", "--attention", family, "--model-cache",
        os.path.join(args.out, "models"), "--contexts", ",".join(map(str, CONTEXTS)),
        "--batches", ",".join(map(str, BATCHES)), "--page-size", str(PAGE), "--warmup", "1",
        "--steps", "3", "--prefill-tokens", str(PREFILL), "--prefill-reps", "1",
        "--kv-cache-mb", str(BUDGET_MB), "--probe-mb", "16", "--probe-passes", "2",
        "--csv", prefix + ".csv", "--json", prefix + ".jsonl"])
    check(out.returncode == 0, f"{family} np{np_}: exit {out.returncode}: {out.stderr}")
    if out.returncode != 0:
        return None
    check_table(out.stdout, family)
    m = re.search(r"bench: loaded (\S+) on (\d+) rank", out.stderr)
    check(m is not None and int(m.group(2)) == np_, f"{family}: no load line in {out.stderr}")
    model_dir = m.group(1)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    rows, records = load_outputs(prefix)
    check(len(records) == len(CONTEXTS) * len(BATCHES), f"{family}: {len(records)} JSON records")
    check(len(rows) == len(records), f"{family}: {len(rows)} CSV rows")
    with open(prefix + ".csv") as f:
        header = f.readline().strip().split(",")
    for row, rec in zip(rows, records):
        check(list(rec.keys()) == header, f"{family}: JSON keys differ from CSV columns")
        for k in header:
            if isinstance(rec[k], float):
                check(close(float(row[k]), rec[k], 1e-7), f"{family}: CSV {k} {row[k]} vs JSON {rec[k]}")
            else:
                check(row[k] == str(rec[k]), f"{family}: CSV {k} {row[k]} vs JSON {rec[k]}")
    check([(int(r["context"]), int(r["batch"])) for r in records] ==
          [(c, b) for c in CONTEXTS for b in BATCHES], f"{family}: configuration order")
    for r in records:
        check_record(r, config, np_, family)
    params, cache = inspect(args, model_dir, np_)
    check(int(records[0]["cache_bytes_per_token_per_rank"]) == cache,
          f"{family}: bench and inspect disagree on cache bytes per token")
    check(int(records[0]["parameters"]) == params, f"{family}: bench and inspect disagree on parameters")
    return records


def compare_with_np1(args, results):
    """np2 against np1: DESIGN §3's per-rank cache ratios and what they do to capacity."""
    for family, recs2 in results.items():
        prefix1 = os.path.join(args.out, "np1", family)
        if not os.path.exists(prefix1 + ".jsonl"):
            check(False, f"{family}: no np1 output at {prefix1}.jsonl (run bench.np1 first)")
            continue
        _, recs1 = load_outputs(prefix1)
        with open(os.path.join(args.out, "models", f"tiny-{family}-L2-I101-F32-s0", "config.json")) as f:
            config = json.load(f)
        want = cache_row_floats(config, 2) / cache_row_floats(config, 1)
        for r1, r2 in zip(recs1, recs2):
            tag = f"{family} ctx {r1['context']} B {r1['batch']}"
            b1, b2 = int(r1["cache_bytes_per_token_per_rank"]), int(r2["cache_bytes_per_token_per_rank"])
            check(close(b2 / b1, want), f"{tag}: np2/np1 cache bytes {b2}/{b1}, want {want:.3f}")
            if family == "mla":
                check(b2 == b1, f"{tag}: MLA's latent is duplicated, per-rank cache must not shrink")
                check(r2["capacity_sequences"] == r1["capacity_sequences"], f"{tag}: MLA capacity")
            if family == "gla":
                check(b2 < b1 and int(r2["capacity_sequences"]) >= int(r1["capacity_sequences"]),
                      f"{tag}: GLA per-rank cache {b1}->{b2}, capacity "
                      f"{r1['capacity_sequences']}->{r2['capacity_sequences']}")
            check(int(r2["weight_bytes_per_rank"]) < int(r1["weight_bytes_per_rank"]),
                  f"{tag}: weights per rank must shrink at np2")


def check_errors_and_probe(args):
    out = run(mpirun(args, 1) + ["bench", "--preset", "tiny", "--model-cache",
                                 os.path.join(args.out, "models"), "--contexts", "600"])
    check(out.returncode == 1 and "max_position_embeddings" in out.stderr,
          f"context beyond the model: exit {out.returncode}, {out.stderr}")
    out = run(mpirun(args, 1) + ["bench", "--preset", "tiny", "--model", "/nonexistent"])
    check(out.returncode == 1 and "exactly one of" in out.stderr, f"--model with --preset: {out.stderr}")
    probe = os.path.join(args.out, f"probe.np{args.np}.json")
    out = run(mpirun(args, args.np) + ["bench", "--probe-only", "--probe-mb", "16",
                                       "--probe-passes", "2", "--json", probe])
    check(out.returncode == 0 and "GB/s" in out.stdout, f"--probe-only: {out.stderr}")
    if out.returncode == 0:
        with open(probe) as f:
            p = json.load(f)
        check(p["tp"] == args.np and p["solo_gbs"] > 0 and
              close(p["per_rank_gbs"] * args.np, p["total_gbs"], 1e-3), f"probe JSON {p}")
    # --bandwidth-gbs skips the probe and is the roofline as given.
    prefix = os.path.join(args.out, f"flag.np{args.np}")
    out = run(mpirun(args, args.np) + [
        "bench", "--preset", "tiny", "--attention", "gla", "--model-cache",
        os.path.join(args.out, "models"), "--contexts", "8", "--batches", "2", "--steps", "1",
        "--warmup", "0", "--prefill-tokens", "0", "--bandwidth-gbs", "12.5", "--json",
        prefix + ".jsonl"])
    check(out.returncode == 0, f"--bandwidth-gbs: {out.stderr}")
    if out.returncode == 0:
        with open(prefix + ".jsonl") as f:
            r = json.loads(f.readline())
        check(r["bandwidth_source"] == "flag" and r["bandwidth_gbs_per_rank"] == 12.5 and
              r["prefill_tokens"] == 0 and r["timed_steps"] == 1, f"--bandwidth-gbs record {r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shardlm", required=True)
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--np", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    outdir = os.path.join(args.out, f"np{args.np}")
    os.makedirs(outdir, exist_ok=True)
    results = {}
    for family in FAMILIES:
        recs = bench_family(args, family, args.np, outdir)
        if recs is not None:
            results[family] = recs
    if args.np == 2:
        compare_with_np1(args, results)
    check_errors_and_probe(args)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print(f"bench np{args.np}: all checks passed ({len(results)} families)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
