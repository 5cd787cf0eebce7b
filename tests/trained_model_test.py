#!/usr/bin/env python3
"""The committed trained model (models/brown-gqa, written by training/train.py) runs exactly:

- the engine's tokenizer (tokenizer.json through `shardlm tokenize`) gives the same ids as the
  training script's own tokenizer (training/brown.py) on held-out Brown documents, and decodes
  them back to the same text;
- `shardlm score` on the first held-out chunks gives the perplexity the training script computed
  for its exported BF16 weights (training.json, `subset_perplexity`) within 0.5%, at TP 1 and 2,
  and TP 2 equals TP 1 within float tolerance;
- greedy `decode` of an English prompt gives the same tokens at TP 1 and 2.

usage: trained_model_test.py SHARDLM MODEL_DIR WORKDIR
"""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "training"))
import brown  # noqa: E402
from jobs import mpirun, perplexity, read_jsonl, write_jsonl  # noqa: E402

SHARDLM = MODEL = WORK = None


def run(cmd, np=1):
    return mpirun(SHARDLM, cmd, np, timeout=900)


class TrainedModel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(MODEL, "training.json")) as f:
            cls.record = json.load(f)
        cls.tok = brown.Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
        _, cls.heldout_docs = brown.split_documents()
        stream = brown.token_stream(cls.tok, cls.heldout_docs)
        cls.chunks = brown.chunks(stream, cls.record["seq"])[:cls.record["subset_chunks"]]

    def test_tokenizer_matches_the_training_script(self):
        docs = self.heldout_docs[:6]
        inp, out = os.path.join(WORK, "tok.in.jsonl"), os.path.join(WORK, "tok.jsonl")
        write_jsonl(inp, [{"id": i, "text": d} for i, d in enumerate(docs)])
        run(["tokenize", "--model", MODEL, "--input", inp, "--output", out])
        got = read_jsonl(out)
        for i, d in enumerate(docs):
            self.assertEqual(got[i]["tokens"], self.tok.encode(d), f"document {i}")
        write_jsonl(inp, [{"id": i, "tokens": self.tok.encode(d)} for i, d in enumerate(docs)])
        run(["tokenize", "--model", MODEL, "--input", inp, "--output", out])
        got = read_jsonl(out)
        for i, d in enumerate(docs):
            self.assertEqual(got[i]["text"], d, f"document {i}")

    def score(self, np):
        inp, out = os.path.join(WORK, "score.in.jsonl"), os.path.join(WORK, f"score.np{np}.jsonl")
        write_jsonl(inp, [{"id": i, "tokens": c} for i, c in enumerate(self.chunks)])
        run(["score", "--model", MODEL, "--input", inp, "--output", out], np)
        got = read_jsonl(out)
        self.assertEqual(len(got), len(self.chunks))
        n = sum(len(got[i]["logprobs"]) for i in range(len(self.chunks)))
        self.assertEqual(n, sum(len(c) - 1 for c in self.chunks))
        return perplexity(got), got

    def test_score_reproduces_the_training_perplexity(self):
        want = self.record["subset_perplexity"]
        ppl1, got1 = self.score(1)
        ppl2, got2 = self.score(2)
        print(f"held-out subset perplexity: training script {want:.4f}, "
              f"shardlm score TP1 {ppl1:.4f}, TP2 {ppl2:.4f}")
        self.assertLess(abs(ppl1 / want - 1), 0.005)
        self.assertLess(abs(ppl2 / want - 1), 0.005)
        for i in range(len(self.chunks)):
            for a, b in zip(got1[i]["logprobs"], got2[i]["logprobs"]):
                self.assertAlmostEqual(a, b, delta=2e-3 + 2e-3 * abs(a))

    def test_greedy_decode_tp2_equals_tp1(self):
        inp = os.path.join(WORK, "decode.in.jsonl")
        write_jsonl(inp, [{"id": "p", "prompt": "The committee said that the", "max_new_tokens": 24,
                           "temperature": 0}])
        outs = []
        for np in (1, 2):
            out = os.path.join(WORK, f"decode.np{np}.jsonl")
            run(["decode", "--model", MODEL, "--prompts", inp, "--output", out], np)
            outs.append(read_jsonl(out)["p"])
        self.assertEqual(len(outs[0]["tokens"]), 24)
        self.assertEqual(outs[0]["tokens"], outs[1]["tokens"])
        self.assertEqual(outs[0]["text"], self.tok.decode(outs[0]["tokens"]))


if __name__ == "__main__":
    SHARDLM, MODEL, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1], verbosity=2)
