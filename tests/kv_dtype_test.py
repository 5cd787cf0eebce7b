#!/usr/bin/env python3
"""`--kv-dtype bf16|int8` end to end (attention/kv_cache.h: KvRowFormat):

- held-out perplexity of the trained models (the GQA one, and the GLA-2 default that
  scripts/quickstart.sh converts from it, converted here the same way) stays within
  0.5% (bf16) and 1% (int8) of the f32 cache's, at TP 1 and 2, and is not the f32 figure (the
  narrow cache is really used);
- per attention family (random `make-model` checkpoints of all six): the deviation of every
  scored logprob from the f32 cache's, printed, and bounded loosely enough to be about
  rounding, not about a wrong read;
- capacity: at one --kv-cache-mb the pool holds 2x (bf16) and about 4x (int8) the pages.

usage: kv_dtype_test.py SHARDLM TRAINED_MODEL_DIR WORKDIR
"""
import json
import os
import random
import re
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "training"))
from jobs import heldout_rows, mpirun, perplexity, read_jsonl, write_jsonl  # noqa: E402

SHARDLM = TRAINED = WORK = None
BOUNDS = {"bf16": 0.005, "int8": 0.01}


def score(model, rows, ranks, kv_dtype, tag):
    inp = os.path.join(WORK, f"{tag}.in.jsonl")
    out = os.path.join(WORK, f"{tag}-{kv_dtype}-np{ranks}.jsonl")
    write_jsonl(inp, rows)
    mpirun(SHARDLM, ["score", "--model", model, "--input", inp, "--output", out, "--kv-dtype",
                     kv_dtype], np=ranks, timeout=900)
    return read_jsonl(out)


class KvDType(unittest.TestCase):
    def test_trained_models_keep_their_perplexity(self):
        rows, _ = heldout_rows(TRAINED)
        default = os.path.join(WORK, "default-gla")
        shutil.rmtree(default, ignore_errors=True)
        mpirun(SHARDLM, ["convert", "--model", TRAINED, "--attention", "gla", "--latent-heads", "2",
                         "--kv-lora-rank", "32", "--rope-dim", "32", "--out", default], timeout=900)
        for name, model in (("trained-gqa", TRAINED), ("default-gla", default)):
            base = perplexity(score(model, rows, 1, "f32", name))
            for dtype, bound in BOUNDS.items():
                one = perplexity(score(model, rows, 1, dtype, name))
                two = perplexity(score(model, rows, 2, dtype, name))
                print(f"{name}: held-out perplexity f32 {base:.3f}, {dtype} TP1 {one:.3f} "
                      f"({one / base - 1:+.3%}), TP2 {two:.3f} ({two / base - 1:+.3%})")
                with self.subTest(model=name, dtype=dtype):
                    self.assertLess(abs(one / base - 1), bound)
                    self.assertLess(abs(two / base - 1), bound)
                    self.assertNotEqual(one, base)

    def test_logprob_deviation_per_family(self):
        r = random.Random(3)
        rows = [{"id": i, "tokens": [r.randrange(256) for _ in range(r.randint(20, 200))]}
                for i in range(6)]
        for attention in ("mha", "mqa", "gqa", "gta", "mla", "gla"):
            model = os.path.join(WORK, f"{attention}-f32")
            if not os.path.exists(os.path.join(model, "config.json")):
                mpirun(SHARDLM, ["make-model", "--attention", attention, "--out", model])
            base = score(model, rows, 1, "f32", attention)
            for dtype, worst_allowed in (("bf16", 0.02), ("int8", 0.1)):
                for ranks in (1, 2):
                    got = score(model, rows, ranks, dtype, attention)
                    devs = [abs(a - b) for i in base
                            for a, b in zip(got[i]["logprobs"], base[i]["logprobs"])]
                    print(f"{attention} {dtype} TP{ranks}: |logprob - f32's| max {max(devs):.2e}, "
                          f"mean {sum(devs) / len(devs):.2e} over {len(devs)} tokens")
                    with self.subTest(attention=attention, dtype=dtype, ranks=ranks):
                        self.assertLess(max(devs), worst_allowed)
                        self.assertGreater(max(devs), 0.0)

    def test_capacity_grows_by_the_byte_ratio(self):
        pages = {}
        prompts = os.path.join(WORK, "one.jsonl")
        write_jsonl(prompts, [{"id": "a", "tokens": [1, 2, 3], "max_new_tokens": 2}])
        for dtype in ("f32", "bf16", "int8"):
            out = os.path.join(WORK, f"cap-{dtype}.jsonl")
            res = mpirun(SHARDLM, ["decode", "--model", TRAINED, "--prompts", prompts, "--output",
                                   out, "--kv-dtype", dtype, "--kv-cache-mb", "64"])
            pages[dtype] = int(re.search(r"free pages (\d+)/\d+", res.stderr).group(1))
        print(f"pages in 64 MiB: {pages}")
        self.assertAlmostEqual(pages["bf16"] / pages["f32"], 2.0, delta=0.01)
        # int8: 1 byte per value plus one f32 scale per head's K or V.
        with open(os.path.join(TRAINED, "config.json")) as f:
            config = json.load(f)
        d = config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
        self.assertAlmostEqual(pages["int8"] / pages["f32"], 4 * d / (d + 4), delta=0.02)


if __name__ == "__main__":
    SHARDLM, TRAINED, WORK = sys.argv[1:4]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1], verbosity=2)
