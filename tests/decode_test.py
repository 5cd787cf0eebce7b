#!/usr/bin/env python3
"""`shardlm decode` invariants for one model (DESIGN §4–§7, issue: decode jobs).

Greedy results of a request must be bit-identical whether it runs alone, in a
batch of 32 mixed-length requests, with page size 1, 16 or 64, with chunked
prefill, and under a KV budget so small that sequences are preempted and
recomputed. At 2 and 4 ranks the tokens must be the same and the logprobs
within the derived tolerance; greedy decode must agree with `score` on the
generated sequences and with the PyTorch reference's greedy generation.

usage: decode_test.py SHARDLM MODEL_DIR WORKDIR
"""
import json
import os
import random
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
from tolerance import tolerance  # noqa: E402

SHARDLM = MODEL = WORK = None
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def config():
    with open(os.path.join(MODEL, "config.json")) as f:
        return json.load(f)


def make_prompts(path, count=32, seed=5):
    """count mixed-length greedy requests: token lists, text, varied max_new_tokens."""
    r = random.Random(seed)
    vocab = min(config()["vocab_size"], 256)
    lines = []
    for i in range(count):
        if i % 5 == 4:
            req = {"id": f"r{i}", "prompt": "".join(r.choice("abcdefgh ") for _ in range(r.randint(1, 40)))}
        else:
            req = {"id": f"r{i}", "tokens": [r.randrange(vocab) for _ in range(r.choice([1, 2, 5, 16, 17, 33, 70]))]}
        req["max_new_tokens"] = r.randint(1, 24)
        lines.append(req)
    with open(path, "w") as f:
        for req in lines:
            f.write(json.dumps(req) + "\n")
    return lines


def decode(name, prompts, np=1, *flags):
    out = os.path.join(WORK, name + ".jsonl")
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", str(np), SHARDLM,
           "decode", "--model", MODEL, "--prompts", prompts, "--output", out] + list(flags)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{r.stderr}")
    summary = [l for l in r.stderr.splitlines() if l.startswith("shardlm decode:")]
    assert len(summary) == 1, r.stderr
    with open(out) as f:
        results = {json.loads(l)["id"]: json.loads(l) for l in f}
    return results, summary[0]


def attention_family():
    """The engine's attention family of MODEL (`shardlm inspect`: HF configs such as DeepSeek's
    name it by model_type, not attention_type)."""
    r = subprocess.run([SHARDLM, "inspect", "--model", MODEL], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    return re.search(r"^attention\s+(\w+)", r.stdout, re.M).group(1)


def weights_dtype():
    """The dtype of the checkpoint's tensors (make-model writes one dtype throughout)."""
    import struct
    for name in sorted(os.listdir(MODEL)):
        if name.endswith(".safetensors"):
            with open(os.path.join(MODEL, name), "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            return next(v["dtype"] for k, v in header.items() if k != "__metadata__")
    raise AssertionError("no .safetensors in " + MODEL)


def cpu_has_avx512_bf16():
    with open("/proc/cpuinfo") as f:
        return "avx512_bf16" in f.read()


def page_budget_mb(pages, page_size, np=1, kv_dtype="f32"):
    """--kv-cache-mb holding `pages` pages on every one of np ranks (from `shardlm inspect`: the
    rank with the widest cache rows has the fewest pages)."""
    r = subprocess.run([SHARDLM, "inspect", "--model", MODEL, "--tp", str(np), "--kv-dtype",
                        kv_dtype], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    per_token = max(int(l.split()[-1]) for l in r.stdout.splitlines() if re.match(r"^\d+\s", l))
    return (pages + 0.5) * page_size * per_token / 2 ** 20


class DecodeInvariants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.prompts = os.path.join(WORK, "prompts.jsonl")
        cls.requests = make_prompts(cls.prompts)
        cls.base, cls.base_summary = decode("base", cls.prompts)
        cls.atol, cls.rtol = tolerance(config())

    def assertIdentical(self, results, ids=None):
        for rid in ids or self.base:
            self.assertEqual(results[rid]["tokens"], self.base[rid]["tokens"], rid)
            self.assertEqual(results[rid]["logprobs"], self.base[rid]["logprobs"], rid)
            self.assertEqual(results[rid]["finish_reason"], self.base[rid]["finish_reason"], rid)

    def assertClose(self, results):
        for rid, want in self.base.items():
            got = results[rid]
            self.assertEqual(got["tokens"], want["tokens"], rid)
            for a, b in zip(got["logprobs"], want["logprobs"]):
                self.assertLessEqual(abs(a - b), self.atol + self.rtol * abs(b), rid)

    def test_all_requests_finish_and_pages_return(self):
        self.assertEqual(len(self.base), len(self.requests))
        for req in self.requests:
            res = self.base[req["id"]]
            self.assertIn(res["finish_reason"], ("stop", "length"))
            self.assertEqual(len(res["tokens"]), len(res["logprobs"]))
            self.assertLessEqual(len(res["tokens"]), req["max_new_tokens"])
            if res["finish_reason"] == "length":
                self.assertEqual(len(res["tokens"]), req["max_new_tokens"])
        m = re.search(r"free pages (\d+)/(\d+)", self.base_summary)
        self.assertEqual(m.group(1), m.group(2), self.base_summary)

    def test_alone_equals_batched(self):
        for req in self.requests[:6]:
            path = os.path.join(WORK, f"alone-{req['id']}.jsonl.in")
            with open(path, "w") as f:
                f.write(json.dumps(req) + "\n")
            alone, _ = decode(f"alone-{req['id']}", path)
            self.assertIdentical(alone, [req["id"]])

    def test_page_sizes_chunked_prefill_and_threads(self):
        for flags in (["--page-size", "1"], ["--page-size", "64"],
                      ["--max-batch", "3", "--max-batch-tokens", "8"],
                      ["--threads", "3", "--page-size", "7"]):
            results, _ = decode("pages" + "".join(flags), self.prompts, 1, *flags)
            self.assertIdentical(results)

    def test_preemption_recomputes_identically(self):
        c = config()
        max_len_pages = -(-c["max_position_embeddings"] // 16)
        mb = page_budget_mb(max_len_pages + 2, 16)
        results, summary = decode("preempt", self.prompts, 1, "--kv-cache-mb", f"{mb:.6f}")
        preemptions = int(re.search(r"(\d+) preemptions", summary).group(1))
        self.assertGreater(preemptions, 0, summary)
        m = re.search(r"free pages (\d+)/(\d+)", summary)
        self.assertEqual(m.group(1), m.group(2), summary)
        self.assertIdentical(results)

    def test_prefix_cache_keeps_bits(self):
        """Requests that share prefixes (a long common one, shorter ones among themselves, one
        prompt that is another's prefix, exact repeats) take cached pages and prefill the rest:
        every result equals the run with --prefix-cache off, at 1 and 2 ranks, with several
        page sizes and under preemption; the summary counts the reused tokens."""
        r = random.Random(9)
        vocab = min(config()["vocab_size"], 256)
        common = [r.randrange(vocab) for _ in range(37)]
        lines = []
        for i in range(14):
            if i % 4 == 3:
                tokens = common[: r.randint(1, len(common))]  # a prefix of the others
            elif i % 5 == 4:
                tokens = lines[-1]["tokens"]  # an exact repeat
            else:
                tokens = common + [r.randrange(vocab) for _ in range(r.randint(1, 20))]
            lines.append({"id": f"p{i}", "tokens": tokens, "max_new_tokens": r.randint(1, 20)})
        prompts = os.path.join(WORK, "prefix.jsonl")
        with open(prompts, "w") as f:
            for req in lines:
                f.write(json.dumps(req) + "\n")
        c = config()
        budget = page_budget_mb(-(-c["max_position_embeddings"] // 16) + 2, 16)
        runs = [(1, ["--page-size", "16", "--max-batch", "3"]),
                (1, ["--page-size", "3", "--max-batch", "2", "--max-batch-tokens", "11"]),
                (1, ["--page-size", "16", "--kv-cache-mb", f"{budget:.6f}"])]
        if c["num_attention_heads"] % 2 == 0:
            runs.append((2, ["--page-size", "5", "--max-batch", "4"]))
        for np, flags in runs:
            tag = f"prefix-np{np}" + "".join(flags)
            off, off_summary = decode(tag + "-off", prompts, np, "--prefix-cache", "off", *flags)
            on, on_summary = decode(tag + "-on", prompts, np, *flags)
            self.assertEqual(set(on), {req["id"] for req in lines})
            for rid in on:
                self.assertEqual(on[rid]["tokens"], off[rid]["tokens"], (tag, rid))
                self.assertEqual(on[rid]["logprobs"], off[rid]["logprobs"], (tag, rid))
                self.assertEqual(on[rid]["finish_reason"], off[rid]["finish_reason"], (tag, rid))
            hits = re.search(r"prefix cache (\d+) of (\d+) prompt tokens", on_summary)
            self.assertGreater(int(hits.group(1)), 0, on_summary)
            self.assertIn("prefix cache 0 of", off_summary)
            m = re.search(r"free pages (\d+)/(\d+)", on_summary)
            self.assertEqual(m.group(1), m.group(2), on_summary)

    def test_swap_and_its_faults_keep_bits(self):
        """Preemption under a small KV budget: swapped-out pages come back bit for bit (memory
        and file slots), and a page corrupted in swap (a flipped bit in memory or in the file, a
        truncated file) is refused by its CRC32C check and the request recomputed: at 1 and 2
        ranks every result equals the run without preemption, and the summary counts the swaps,
        the refusals and the recomputed tokens."""
        c = config()
        pages = -(-c["max_position_embeddings"] // 16) + 2
        nps = (1, 2) if c["num_attention_heads"] % 2 == 0 else (1,)
        for np in nps:
            want = self.base if np == 1 else decode("swap-np2-ref", self.prompts, np)[0]
            budget = f"{page_budget_mb(pages, 16, np):.6f}"
            for name, flags, refused in (
                    ("memory", [], False),
                    ("recompute", ["--swap-mb", "0"], False),
                    ("flip-memory", ["--swap-fault", "flip-memory"], True),
                    ("file", ["--swap-mb", "0", "--swap-dir", WORK], False),
                    ("flip-file", ["--swap-mb", "0", "--swap-dir", WORK, "--swap-fault", "flip-file"], True),
                    ("truncate-file", ["--swap-mb", "0", "--swap-dir", WORK, "--swap-fault",
                                       "truncate-file"], True)):
                tag = f"swap-np{np}-{name}"
                results, summary = decode(tag, self.prompts, np, "--kv-cache-mb", budget, *flags)
                m = re.search(r"(\d+) preemptions \((\d+) swapped out, (\d+) swap-ins refused\), "
                              r"(\d+) tokens recomputed", summary)
                preempted, swapped, bad, recomputed = map(int, m.groups())
                self.assertGreater(preempted, 0, (tag, summary))
                if name == "recompute":
                    self.assertEqual(swapped, 0, (tag, summary))
                    self.assertGreater(recomputed, 0, (tag, summary))
                else:
                    self.assertEqual(swapped, preempted, (tag, summary))
                if refused:
                    self.assertEqual(bad, 1, (tag, summary))
                    self.assertGreater(recomputed, 0, (tag, summary))
                elif name != "recompute":
                    self.assertEqual((bad, recomputed), (0, 0), (tag, summary))
                m = re.search(r"free pages (\d+)/(\d+)", summary)
                self.assertEqual(m.group(1), m.group(2), summary)
                for rid in want:
                    self.assertEqual(results[rid]["tokens"], want[rid]["tokens"], (tag, rid))
                    self.assertEqual(results[rid]["logprobs"], want[rid]["logprobs"], (tag, rid))
        self.assertEqual([f for f in os.listdir(WORK) if f.startswith("shardlm-swap")], [],
                         "swap files left behind")

    def test_narrow_kv_cache_keeps_the_invariants(self):
        """--kv-dtype bf16 and int8: results are their own (the cache is really narrow) but stay
        bit-identical across batching, page sizes, prefix sharing and preemption with swap, and
        greedy tokens at 2 ranks equal those at 1."""
        c = config()
        pages = -(-c["max_position_embeddings"] // 16) + 2
        for dtype in ("bf16", "int8"):
            budget = page_budget_mb(pages, 16, 1, dtype)
            base, _ = decode(f"kv-{dtype}", self.prompts, 1, "--kv-dtype", dtype)
            self.assertNotEqual([base[r]["logprobs"] for r in self.base],
                                [self.base[r]["logprobs"] for r in self.base], dtype)
            for flags in (["--page-size", "3", "--max-batch", "5"],
                          ["--max-batch", "3", "--max-batch-tokens", "8", "--prefix-cache", "off"],
                          ["--kv-cache-mb", f"{budget:.6f}"]):
                tag = f"kv-{dtype}" + "".join(flags)
                results, summary = decode(tag, self.prompts, 1, "--kv-dtype", dtype, *flags)
                if "--kv-cache-mb" in flags:
                    self.assertNotIn(" 0 preemptions", summary)
                for rid in base:
                    self.assertEqual(results[rid]["tokens"], base[rid]["tokens"], (tag, rid))
                    self.assertEqual(results[rid]["logprobs"], base[rid]["logprobs"], (tag, rid))
            if c["num_attention_heads"] % 2 == 0:
                tp2, _ = decode(f"kv-{dtype}-np2", self.prompts, 2, "--kv-dtype", dtype)
                small, _ = decode(f"kv-{dtype}-np2-small", self.prompts, 2, "--kv-dtype", dtype,
                                  "--page-size", "3", "--max-batch", "5")
                for rid in base:
                    self.assertEqual(tp2[rid]["tokens"], base[rid]["tokens"], (dtype, rid))
                    self.assertEqual(small[rid]["logprobs"], tp2[rid]["logprobs"], (dtype, rid))

    def test_tensor_parallel_matches_one_rank(self):
        heads = config()["num_attention_heads"]
        for np in (2, 4):
            if heads % np:
                continue
            results, _ = decode(f"np{np}", self.prompts, np)
            self.assertClose(results)
            # Batching invariance also holds at np ranks (bitwise against itself).
            small, _ = decode(f"np{np}-small", self.prompts, np, "--page-size", "3",
                              "--max-batch", "5")
            for rid in results:
                self.assertEqual(small[rid]["tokens"], results[rid]["tokens"])
                self.assertEqual(small[rid]["logprobs"], results[rid]["logprobs"])

    def test_replicas_keep_bits(self):
        # --tp T under -np T·R: R replicas, each request on one of them; every result is the
        # bits of the same request at --tp T alone (batch invariance makes the split invisible).
        total = int(re.search(r"(\d+) tokens generated", self.base_summary).group(1))
        for np, tp in ((2, 1), (4, 1), (4, 2)):
            if config()["num_attention_heads"] % tp:
                continue
            want = self.base if tp == 1 else decode(f"tp{tp}", self.prompts, tp)[0]
            results, summary = decode(f"replicas{np // tp}x{tp}", self.prompts, np, "--tp", str(tp))
            self.assertEqual(set(results), set(want))
            for rid in want:
                self.assertEqual(results[rid]["tokens"], want[rid]["tokens"], rid)
                self.assertEqual(results[rid]["logprobs"], want[rid]["logprobs"], rid)
            m = re.search(r"(\d+) replicas of (\d+) ranks \(requests ([\d/]+)\)", summary)
            self.assertEqual((int(m.group(1)), int(m.group(2))), (np // tp, tp), summary)
            per_replica = [int(n) for n in m.group(3).split("/")]
            self.assertEqual(sum(per_replica), len(want), summary)
            self.assertGreater(min(per_replica), 0, summary)  # every replica ran requests
            self.assertIn(f"{total} tokens generated", summary)
            m = re.search(r"free pages (\d+)/(\d+)", summary)
            self.assertEqual(m.group(1), m.group(2), summary)
        # Preempting replicas (a tiny cache each) and score through replicas.
        max_len_pages = -(-config()["max_position_embeddings"] // 16)
        mb = page_budget_mb(max_len_pages + 2, 16)
        results, summary = decode("replicas-preempt", self.prompts, 2, "--tp", "1",
                                  "--kv-cache-mb", f"{mb:.6f}")
        self.assertGreater(int(re.search(r"(\d+) preemptions", summary).group(1)), 0, summary)
        self.assertIdentical(results)
        score_in = os.path.join(WORK, "replicas-score-in.jsonl")
        rows = [{"id": rid, "tokens": self.base[rid]["tokens"] + [1, 2, 3]}
                for rid in sorted(self.base)]
        with open(score_in, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        scored = {}
        for np, tp in ((1, 1), (2, 1)):
            out = os.path.join(WORK, f"replicas-score-{np}.jsonl")
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", str(np),
                   SHARDLM, "score", "--model", MODEL, "--input", score_in, "--output", out,
                   "--tp", str(tp)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(out) as f:
                scored[np] = {json.loads(l)["id"]: json.loads(l) for l in f}
        self.assertEqual(scored[2], scored[1])

    def test_mla_data_parallel_attention(self):
        # --mla-attention dp: each sequence's latent on one rank, which attends for it; the MLP
        # stays tensor-parallel. Greedy tokens equal one rank's (logprobs within TP's rounding);
        # the bits do not depend on batching, page size or preemption (nor on the rank that owns
        # a sequence, which all of those change).
        if attention_family() != "mla":
            cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", "2", SHARDLM,
                   "decode", "--model", MODEL, "--prompts", self.prompts, "--output",
                   os.path.join(WORK, "dp-refused.jsonl"), "--mla-attention", "dp"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("is for MLA models", r.stderr)
            return
        runs = {}
        for np in (2, 4):
            runs[np], summary = decode(f"dp{np}", self.prompts, np, "--mla-attention", "dp")
            self.assertClose(runs[np])
            m = re.search(r"free pages (\d+)/(\d+)", summary)
            self.assertEqual(m.group(1), m.group(2), summary)
        small, _ = decode("dp2-small", self.prompts, 2, "--mla-attention", "dp", "--page-size",
                          "3", "--max-batch", "5")
        self.assertEqual(small, runs[2])
        # A pool per rank that holds one longest sequence: preemptions (in two pools).
        max_len_pages = -(-config()["max_position_embeddings"] // 16)
        mb = page_budget_mb(max_len_pages, 16)
        tight, summary = decode("dp2-preempt", self.prompts, 2, "--mla-attention", "dp",
                                "--kv-cache-mb", f"{mb:.6f}")
        self.assertGreater(int(re.search(r"(\d+) preemptions", summary).group(1)), 0, summary)
        self.assertEqual(tight, runs[2])

    def test_bf16_dot_math(self):
        """--bf16-math dot: a BF16 checkpoint's results change (x is rounded to bf16) but stay
        batch-invariant, and TP 2 matches TP 1 as in the exact mode; other dtypes keep their
        bits. Without AVX512-BF16 the job must fail with a clear message instead."""
        if not cpu_has_avx512_bf16():
            r = subprocess.run(["mpirun", "--oversubscribe", "-q", "-np", "1", SHARDLM, "decode",
                                "--model", MODEL, "--prompts", self.prompts, "--output",
                                os.path.join(WORK, "dot.jsonl"), "--bf16-math", "dot"],
                               capture_output=True, text=True, timeout=120, env=ENV)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--bf16-math dot needs AVX512-BF16", r.stderr)
            return
        dot, _ = decode("dot", self.prompts, 1, "--bf16-math", "dot")
        if weights_dtype() != "BF16":
            self.assertIdentical(dot)
            return
        self.assertNotEqual([dot[r]["logprobs"] for r in self.base],
                            [self.base[r]["logprobs"] for r in self.base], "dot math not in use")
        small, _ = decode("dot-small", self.prompts, 1, "--bf16-math", "dot", "--page-size", "3",
                          "--max-batch", "5")
        for rid in dot:
            self.assertEqual(small[rid]["tokens"], dot[rid]["tokens"], rid)
            self.assertEqual(small[rid]["logprobs"], dot[rid]["logprobs"], rid)
        if config()["num_attention_heads"] % 2 == 0:
            tp2, _ = decode("dot-np2", self.prompts, 2, "--bf16-math", "dot")
            for rid, want in dot.items():
                self.assertEqual(tp2[rid]["tokens"], want["tokens"], rid)
                for a, b in zip(tp2[rid]["logprobs"], want["logprobs"]):
                    self.assertLessEqual(abs(a - b), self.atol + self.rtol * abs(b), rid)

    def test_decode_agrees_with_score(self):
        # score(prompt + generated) gives log p(generated_t | prefix) by the prefill path.
        score_in = os.path.join(WORK, "score-in.jsonl")
        prompt_tokens = {}
        with open(score_in, "w") as f:
            for req in self.requests:
                res = self.base[req["id"]]
                if "tokens" in req:
                    prompt = req["tokens"]
                else:
                    prompt = [config()["bos_token_id"]] + list(req["prompt"].encode())
                self.assertEqual(len(prompt), res["prompt_tokens"])
                prompt_tokens[req["id"]] = len(prompt)
                f.write(json.dumps({"id": req["id"], "tokens": prompt + res["tokens"]}) + "\n")
        out = os.path.join(WORK, "score-out.jsonl")
        r = subprocess.run([SHARDLM, "score", "--model", MODEL, "--input", score_in, "--output", out],
                           capture_output=True, text=True, timeout=300, env=ENV)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            scored = {json.loads(l)["id"]: json.loads(l) for l in f}
        for rid, res in self.base.items():
            tail = scored[rid]["logprobs"][prompt_tokens[rid] - 1:]
            self.assertEqual(len(tail), len(res["logprobs"]), rid)
            for a, b in zip(res["logprobs"], tail):
                self.assertLessEqual(abs(a - b), self.atol + self.rtol * abs(b), rid)

    def test_matches_pytorch_greedy(self):
        out = os.path.join(WORK, "torch-gen.jsonl")
        r = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "reference", "torch_ref.py"),
                            "generate", "--model", MODEL, "--input", self.prompts, "--output", out],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            ref = {json.loads(l)["id"]: json.loads(l) for l in f}
        for rid, want in ref.items():
            got = self.base[rid]
            self.assertEqual(got["tokens"], want["tokens"], rid)
            self.assertEqual(got["finish_reason"], want["finish_reason"], rid)
            for a, b in zip(got["logprobs"], want["logprobs"]):
                self.assertLessEqual(abs(a - b), self.atol + self.rtol * abs(b), rid)


if __name__ == "__main__":
    SHARDLM, MODEL, WORK = sys.argv[1:4]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1], verbosity=2)
