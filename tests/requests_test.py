#!/usr/bin/env python3
"""Hostile request lines: each gets an `error` result naming the problem, while
the valid requests around them complete (decode and score, at 2 ranks).

usage: requests_test.py SHARDLM MODEL_DIR WORKDIR
"""
import json
import os
import subprocess
import sys
import unittest

SHARDLM = MODEL = WORK = None
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

# (raw line, expected substring of the error). The model is make-model's tiny preset:
# vocab 259, max_position_embeddings 512.
BAD_DECODE = [
    ('not json', "not a JSON object"),
    ('[1, 2, 3]', "not a JSON object"),
    ('{"id": "no-prompt"}', "exactly one of"),
    ('{"id": "both", "prompt": "a", "tokens": [1]}', "exactly one of"),
    ('{"prompt": "no id"}', 'missing "id"'),
    ('{"id": [1], "prompt": "a"}', '"id" must be a string or an integer'),
    ('{"id": "unknown", "prompt": "a", "colour": "red"}', 'unknown field "colour"'),
    ('{"id": "type", "tokens": "abc"}', '"tokens" must be a list of integers'),
    ('{"id": "float-tok", "tokens": [1.5]}', '"tokens" must be a list of integers'),
    ('{"id": "range", "tokens": [1, 259]}', "outside the vocabulary"),
    ('{"id": "neg", "tokens": [-1]}', "outside the vocabulary"),
    ('{"id": "empty", "tokens": []}', "empty prompt"),
    ('{"id": "long", "tokens": ' + json.dumps([5] * 512) + '}', "leaves no room"),
    ('{"id": "mnt0", "prompt": "a", "max_new_tokens": 0}', "max_new_tokens"),
    ('{"id": "mnt-neg", "prompt": "a", "max_new_tokens": -3}', "max_new_tokens"),
    ('{"id": "mnt-huge", "prompt": "a", "max_new_tokens": 1e12}', "max_new_tokens"),
    ('{"id": "temp", "prompt": "a", "temperature": -1}', "temperature"),
    ('{"id": "temp-str", "prompt": "a", "temperature": "hot"}', "temperature"),
    ('{"id": "topk", "prompt": "a", "top_k": -2}', "top_k"),
    ('{"id": "topp0", "prompt": "a", "top_p": 0}', "top_p"),
    ('{"id": "topp2", "prompt": "a", "top_p": 1.5}', "top_p"),
    ('{"id": "seed", "prompt": "a", "seed": -1}', "seed"),
    ('{"id": "stop", "prompt": "a", "stop_token_ids": [999]}', "stop token id 999"),
    ('{"id": "ok-1", "prompt": "a", "max_new_tokens": 3}', None),
    ('{"id": "ok-1", "prompt": "b", "max_new_tokens": 3}', "duplicate id"),
]
GOOD_DECODE = [
    '{"id": "ok-2", "tokens": [256, 65], "max_new_tokens": 4, "temperature": 0.7, "top_k": 10, "top_p": 0.9, "seed": 3}',
    '{"id": 17, "text": "numeric id", "max_new_tokens": 2}',
]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


class HostileRequests(unittest.TestCase):
    def test_decode_error_lines_and_survivors(self):
        path = os.path.join(WORK, "bad-decode.jsonl")
        with open(path, "w") as f:
            for line, _ in BAD_DECODE:
                f.write(line + "\n")
            f.write("\n")  # blank lines are skipped
            for line in GOOD_DECODE:
                f.write(line + "\n")
        out = os.path.join(WORK, "bad-decode-out.jsonl")
        r = run(["mpirun", "--oversubscribe", "-q", "-np", "2", SHARDLM, "decode", "--model", MODEL,
                 "--prompts", path, "--output", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            results = [json.loads(l) for l in f]
        errors = [x for x in results if x["finish_reason"] == "error"]
        done = [x for x in results if x["finish_reason"] != "error"]
        expected_errors = [msg for _, msg in BAD_DECODE if msg]
        self.assertEqual(len(errors), len(expected_errors), json.dumps(errors, indent=1))
        for (line_no, msg), err in zip(
                [(i + 1, m) for i, (_, m) in enumerate(BAD_DECODE) if m], errors):
            self.assertIn(msg, err["error"])
            self.assertTrue(err["error"].startswith(f"line {line_no}:"), err["error"])
        self.assertEqual(sorted(str(x["id"]) for x in done), ["17", "ok-1", "ok-2"])

    def test_score_error_lines(self):
        path = os.path.join(WORK, "bad-score.jsonl")
        with open(path, "w") as f:
            f.write('{"id": "x", "tokens": [1, 999]}\n{"id": "y"}\n{"id": "z", "tokens": [1, 2]}\n'
                    '{"id": "w", "tokens": [1], "max_new_tokens": 3}\n')
        out = os.path.join(WORK, "bad-score-out.jsonl")
        r = run(["mpirun", "--oversubscribe", "-q", "-np", "2", SHARDLM, "score", "--model", MODEL,
                 "--input", path, "--output", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            results = {x["id"]: x for x in map(json.loads, f)}
        self.assertIn("outside the vocabulary", results["x"]["error"])
        self.assertIn("exactly one of", results["y"]["error"])
        self.assertIn("unknown field", results["w"]["error"])
        self.assertEqual(len(results["z"]["logprobs"]), 1)


if __name__ == "__main__":
    SHARDLM, MODEL, WORK = sys.argv[1:4]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1], verbosity=2)
