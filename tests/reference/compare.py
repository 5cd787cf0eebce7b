#!/usr/bin/python3
"""Compare two ShardLM result files (score or decode/generate JSONL), keyed by id.

Usage:
  compare.py A.jsonl B.jsonl [--atol X] [--rtol Y] [--tokens-exact]

Checks: the same set of ids; per id, `logprobs` of the same length with
|a - b| <= atol + rtol * |b| elementwise (B is the reference side of rtol);
`prompt_tokens` equal when both lines carry it; with --tokens-exact also
`tokens` identical (and `finish_reason` equal). Lines with
"finish_reason": "error" match only another error line for the same id.
Exit 0 when everything matches, 1 on any mismatch, 2 on unreadable input.
"""

import argparse
import json
import math
import sys


def load(path):
    """{key: record} with key = the id as JSON text (so 1 and "1" differ)."""
    out = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: bad JSON: {e}")
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError(f"{path}:{lineno}: not an object with an 'id'")
            key = json.dumps(rec["id"], sort_keys=True)
            if key in out:
                raise ValueError(f"{path}:{lineno}: duplicate id {key}")
            out[key] = rec
    return out


def close(a, b, atol, rtol):
    if math.isnan(a) or math.isnan(b):
        return False
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--tokens-exact", action="store_true")
    ap.add_argument("--max-report", type=int, default=10, help="mismatches to list (10)")
    args = ap.parse_args(argv)

    try:
        A, B = load(args.a), load(args.b)
    except (OSError, ValueError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2

    problems = []   # human-readable mismatch lines
    n_values = n_errors = 0
    worst = (0.0, None, None, None, None)  # (abs diff, id, position, a, b)

    only_a = sorted(set(A) - set(B))
    only_b = sorted(set(B) - set(A))
    for k in only_a:
        problems.append(f"id {k}: only in {args.a}")
    for k in only_b:
        problems.append(f"id {k}: only in {args.b}")

    for k in sorted(set(A) & set(B)):
        a, b = A[k], B[k]
        # An error line is marked by "finish_reason": "error" (decode) or an "error" key (score).
        ea = a.get("finish_reason") == "error" or "error" in a
        eb = b.get("finish_reason") == "error" or "error" in b
        if ea or eb:
            if ea and eb:
                n_errors += 1
            else:
                which = args.a if ea else args.b
                msg = (a if ea else b).get("error", "")
                problems.append(f"id {k}: error only in {which}: {msg}")
            continue
        if "prompt_tokens" in a and "prompt_tokens" in b and a["prompt_tokens"] != b["prompt_tokens"]:
            problems.append(f"id {k}: prompt_tokens {a['prompt_tokens']} != {b['prompt_tokens']}")
        if args.tokens_exact:
            if a.get("tokens") != b.get("tokens"):
                ta, tb = a.get("tokens") or [], b.get("tokens") or []
                first = next((i for i in range(min(len(ta), len(tb))) if ta[i] != tb[i]),
                             min(len(ta), len(tb)))
                problems.append(f"id {k}: tokens differ at position {first} "
                                f"(lengths {len(ta)} vs {len(tb)}): "
                                f"{ta[first:first + 5]} vs {tb[first:first + 5]}")
            if a.get("finish_reason") != b.get("finish_reason"):
                problems.append(f"id {k}: finish_reason {a.get('finish_reason')!r} != "
                                f"{b.get('finish_reason')!r}")
        la, lb = a.get("logprobs"), b.get("logprobs")
        if not isinstance(la, list) or not isinstance(lb, list):
            problems.append(f"id {k}: missing 'logprobs' in "
                            f"{args.a if not isinstance(la, list) else args.b}")
            continue
        if len(la) != len(lb):
            problems.append(f"id {k}: logprobs lengths differ: {len(la)} vs {len(lb)}")
        bad = 0
        for i, (x, y) in enumerate(zip(la, lb)):
            x, y = float(x), float(y)
            n_values += 1
            d = abs(x - y) if not (math.isinf(x) and x == y) else 0.0
            if math.isnan(d) or d > worst[0]:
                worst = (d if not math.isnan(d) else float("inf"), k, i, x, y)
            if not close(x, y, args.atol, args.rtol):
                bad += 1
                if bad <= 3:
                    problems.append(f"id {k}: logprobs[{i}] {x!r} vs {y!r} (|diff| {d:.3g} > "
                                    f"atol {args.atol:g} + rtol {args.rtol:g}*|b|)")
        if bad > 3:
            problems.append(f"id {k}: ... {bad} logprobs out of tolerance in total")

    n_ids = len(set(A) | set(B))
    print(f"compare: {args.a} vs {args.b}: {n_ids} ids, {n_values} logprobs compared, "
          f"{n_errors} matching error lines")
    if worst[1] is not None:
        print(f"compare: max |diff| {worst[0]:.3g} at id {worst[1]} position {worst[2]} "
              f"({worst[3]!r} vs {worst[4]!r})")
    else:
        print("compare: max |diff| 0")
    if problems:
        for p in problems[: args.max_report]:
            print(f"MISMATCH {p}")
        if len(problems) > args.max_report:
            print(f"MISMATCH ... and {len(problems) - args.max_report} more")
        print(f"compare: FAIL ({len(problems)} problems; atol {args.atol:g}, rtol {args.rtol:g}"
              f"{', tokens exact' if args.tokens_exact else ''})")
        return 1
    print(f"compare: OK (atol {args.atol:g}, rtol {args.rtol:g}"
          f"{', tokens exact' if args.tokens_exact else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
