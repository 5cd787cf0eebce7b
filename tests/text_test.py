#!/usr/bin/env python3
"""Text in, text out, with a real tokenizer: a small random model whose vocabulary is Llama 3's
(written in Hugging Face's layout by tests/reference/make_tiny_ckpt.py) gets Llama 3's
tokenizer.json from the npm fixtures. `decode` and `score` take "prompt"/"text" and return text;
token ids and texts agree with the independent JavaScript tokenizer (@lenml/tokenizers); stop
strings end generation and are cut from the text; TP 2 gives the same results as TP 1;
`shardlm tokenize` round-trips.

usage: text_test.py SHARDLM WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import make_tiny_ckpt as mk  # noqa: E402
from jobs import mpirun, read_jsonl  # noqa: E402

SHARDLM = WORK = None
CACHE = os.environ.get("SHARDLM_NPM_CACHE", os.path.expanduser("~/.cache/shardlm/npm"))
MODULES = os.path.join(CACHE, "node_modules")
TOKDIR = os.path.join(MODULES, "@lenml", "tokenizer-llama3", "models")
PROMPTS = ["The quick brown fox", "Hello, world! 👋 Привет", "def f(x):\n    return x"]


def js(expr_lines):
    """Runs a snippet with the Llama 3 reference tokenizer `tok`; returns its JSON output."""
    code = ("const {fromPreTrained}=require(%s); const tok=fromPreTrained();\n" %
            json.dumps(os.path.join(MODULES, "@lenml", "tokenizer-llama3")) + expr_lines)
    r = subprocess.run(["node", "-e", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(r.stderr[-2000:])
    return json.loads(r.stdout)


def run(cmd, np=1):
    return mpirun(SHARDLM, cmd, np)


class TextInTextOut(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = os.path.join(WORK, "llama3-vocab")
        cfg = dict(mk._BASE, architectures=["LlamaForCausalLM"], model_type="llama",
                   vocab_size=128256, bos_token_id=128000, eos_token_id=128001,
                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                   rope_theta=500000.0, max_position_embeddings=256)
        del cfg["tokenizer"]
        mk.write_checkpoint(cls.model, cfg, mk.random_tensors(cfg, {}, 7), "bf16")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(TOKDIR, f), cls.model)

    def decode(self, name, requests, np=1, *flags):
        inp, out = os.path.join(WORK, name + ".in.jsonl"), os.path.join(WORK, name + ".jsonl")
        with open(inp, "w") as f:
            for r in requests:
                f.write(json.dumps(r) + "\n")
        run(["decode", "--model", self.model, "--prompts", inp, "--output", out] + list(flags),
            np)
        return read_jsonl(out)

    def test_text_prompts_give_text(self):
        reqs = [{"id": i, "prompt": p, "max_new_tokens": 12} for i, p in enumerate(PROMPTS)]
        one = self.decode("text-np1", reqs)
        two = self.decode("text-np2", reqs, 2)
        want = js("console.log(JSON.stringify(%s.map(p => Array.from(tok.encode(p)))));" %
                  json.dumps(PROMPTS))
        for i, p in enumerate(PROMPTS):
            r = one[i]
            self.assertEqual(r["prompt_tokens"], len(want[i]), p)
            self.assertEqual(two[i]["tokens"], r["tokens"])
            self.assertEqual(two[i]["text"], r["text"])
            # The text is the reference tokenizer's decoding of the tokens (special ones skipped).
            ref = js("console.log(JSON.stringify(tok.decode(%s, {skip_special_tokens: true})));" %
                     json.dumps(r["tokens"])) if r["tokens"] else ""
            self.assertEqual(r["text"], ref)

    def test_stop_strings_end_generation_and_are_cut(self):
        base = self.decode("stop-base", [{"id": "a", "prompt": PROMPTS[0], "max_new_tokens": 16}])
        text = base["a"]["text"]
        # A stop string that the unconstrained output contains after its first few characters.
        stop = next((text[i:i + 3] for i in range(2, len(text) - 3) if text[i:i + 3].strip()), None)
        self.assertIsNotNone(stop, f"16 random tokens gave too little text: {text!r}")
        first = text.find(stop)
        # Whatever the list order, the earliest match of any of them ends the text.
        stops = [text[first + 1:first + 6], "never appears", stop]
        first = min(text.find(x) for x in stops if x in text)
        got = self.decode("stop", [{"id": "a", "prompt": PROMPTS[0], "max_new_tokens": 16,
                                    "stop": stops}])["a"]
        self.assertEqual(got["finish_reason"], "stop")
        self.assertEqual(got["text"], text[:first])
        self.assertLessEqual(len(got["tokens"]), len(base["a"]["tokens"]))
        self.assertEqual(got["tokens"], base["a"]["tokens"][:len(got["tokens"])])

    def test_score_takes_text(self):
        inp, out = os.path.join(WORK, "score.in.jsonl"), os.path.join(WORK, "score.jsonl")
        with open(inp, "w") as f:
            f.write(json.dumps({"id": "t", "text": PROMPTS[1]}) + "\n")
        run(["score", "--model", self.model, "--input", inp, "--output", out], 2)
        want = js("console.log(JSON.stringify(Array.from(tok.encode(%s))));" %
                  json.dumps(PROMPTS[1]))
        self.assertEqual(len(read_jsonl(out)["t"]["logprobs"]), len(want) - 1)

    def test_tokenize_round_trip(self):
        inp, out = os.path.join(WORK, "tok.in.jsonl"), os.path.join(WORK, "tok.jsonl")
        with open(inp, "w") as f:
            for i, p in enumerate(PROMPTS):
                f.write(json.dumps({"id": i, "text": p}) + "\n")
            f.write(json.dumps({"id": "ids", "tokens": [9906, 11, 1917, 0]}) + "\n")
            f.write("not json\n")
            f.write(json.dumps({"id": "bad", "tokens": [-1]}) + "\n")
        run(["tokenize", "--model", self.model, "--input", inp, "--output", out])
        with open(out) as f:
            got = [json.loads(l) for l in f]
        by_id = {g.get("id"): g for g in got}
        want = js("console.log(JSON.stringify(%s.map(p => Array.from(tok.encode(p, "
                  "{add_special_tokens: false})))));" % json.dumps(PROMPTS))
        for i in range(len(PROMPTS)):
            self.assertEqual(by_id[i]["tokens"], want[i])
        self.assertEqual(by_id["ids"]["text"], "Hello, world!")
        self.assertIn("error", by_id["bad"])
        self.assertEqual(sum(1 for g in got if "error" in g), 2)


if __name__ == "__main__":
    SHARDLM, WORK = sys.argv[1:3]
    if not os.path.isdir(TOKDIR):
        sys.exit(f"tokenizer fixtures are missing from {CACHE}; run scripts/install-deps.sh")
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1] + sys.argv[3:], verbosity=2)
