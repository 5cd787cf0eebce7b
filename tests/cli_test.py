#!/usr/bin/env python3
"""End-to-end checks of the `shardlm` command line: start-up errors end every
rank with one clear message and a non-zero exit (never a hang: every launch has
a timeout), and `inspect` reports the per-rank cache bytes the engine allocates.

usage: cli_test.py SHARDLM WORKDIR
"""
import json
import os
import re
import shutil
import subprocess
import sys
import unittest

SHARDLM = None
WORK = None
PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "score_prompts.jsonl")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def run(args, np=None, timeout=120):
    cmd = [SHARDLM] + args
    if np is not None:
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", str(np)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def make_model(name, *args):
    out = os.path.join(WORK, name)
    if not os.path.exists(out):
        r = run(["make-model", "--out", out] + list(args))
        assert r.returncode == 0, r.stderr
    return out


def run_two_checkpoints(command, model, other):
    """`command` on 2 ranks, rank 0 given `model` and rank 1 `other`."""
    out = os.path.join(WORK, "x.jsonl")
    inputs = ["--prompts"] if command == "decode" else ["--input"]
    rank = lambda m: [SHARDLM, command, "--model", m] + inputs + [PROMPTS, "--output", out]
    return subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", "1"] +
                          rank(model) + [":", "-np", "1"] + rank(other),
                          capture_output=True, text=True, timeout=120, env=ENV)


def copy_model(src, name):
    dst = os.path.join(WORK, name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def edit_config(model, edit):
    path = os.path.join(model, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)


def edit_safetensors(model, edit):
    """edit(header dict, data bytearray) -> (header, data); rewrites the file."""
    path = os.path.join(model, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header, data = edit(json.loads(blob[8:8 + n]), bytearray(blob[8 + n:]))
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + bytes(data))


def set_header_length(model, value):
    path = os.path.join(model, "model.safetensors")
    with open(path, "r+b") as f:
        f.write(value.to_bytes(8, "little", signed=value < 0))


def offsets_past_end(header, data):
    a, b = header["model.norm.weight"]["data_offsets"]
    header["model.norm.weight"]["data_offsets"] = [len(data) + a, len(data) + b]
    return header, data


def put_nan_in_norm(header, data):
    begin = header["model.norm.weight"]["data_offsets"][0]
    data[begin:begin + 4] = b"\x00\x00\xc0\x7f"  # F32 NaN
    return header, data


def rename_tensor(old, new):
    def edit(header, data):
        header[new] = header.pop(old)
        return header, data
    return edit


def add_empty_tensor(name):
    def edit(header, data):
        header[name] = {"dtype": "F32", "shape": [0], "data_offsets": [len(data), len(data)]}
        return header, data
    return edit


def set_dtype(name, dtype):
    def edit(header, data):
        header[name]["dtype"] = dtype
        return header, data
    return edit


def overlap_offsets(header, data):
    a, b = header["model.norm.weight"]["data_offsets"]
    header["model.layers.0.input_layernorm.weight"]["data_offsets"] = [a, b]
    return header, data


# Bad checkpoints (issue 6): (name, how to break a copy of the gqa model, expected
# substrings of the one error line). Each runs at 2 ranks under cli_test's timeout.
BAD_CHECKPOINTS = [
    ("no-weights", lambda m: os.remove(os.path.join(m, "model.safetensors")),
     ["no *.safetensors file"]),
    ("missing-key", lambda m: edit_config(m, lambda c: c.pop("hidden_size")), ["hidden_size"]),
    ("unknown-attention", lambda m: edit_config(m, lambda c: c.update(attention_type="xla")),
     ["attention_type", "xla"]),
    ("head-dim-vs-proj", lambda m: edit_config(m, lambda c: c.update(head_dim=c["head_dim"] * 2)),
     ["q_proj", "shape"]),
    ("huge-header", lambda m: set_header_length(m, 1 << 40), ["model.safetensors", "header length"]),
    ("negative-header", lambda m: set_header_length(m, -5), ["model.safetensors", "negative"]),
    ("overlap", lambda m: edit_safetensors(m, overlap_offsets), ["model.safetensors", "overlaps"]),
    ("offsets-out-of-range", lambda m: edit_safetensors(m, offsets_past_end),
     ["model.safetensors", "beyond the"]),
    ("bad-dtype", lambda m: edit_safetensors(m, set_dtype("model.norm.weight", "I16")),
     ["unsupported dtype", "I16"]),
    # I8 is a dtype the format has (Q8_0 quants), but not for a norm: its byte count is wrong.
    ("int-dtype", lambda m: edit_safetensors(m, set_dtype("model.norm.weight", "I8")),
     ["model.norm.weight", "I8 [64] needs 64 bytes"]),
    ("missing-tensor", lambda m: edit_safetensors(
        m, rename_tensor("model.norm.weight", "model.norm.weight.renamed")),
     ["missing tensor model.norm.weight"]),
    ("extra-tensor", lambda m: edit_safetensors(m, add_empty_tensor("model.extra.weight")),
     ["does not use", "model.extra.weight"]),
    ("nan-norm", lambda m: edit_safetensors(m, put_nan_in_norm),
     ["model.norm.weight", "non-finite"]),
]


class StartupErrors(unittest.TestCase):
    def assertOneError(self, result, *needles):
        self.assertNotEqual(result.returncode, 0, result.stderr)
        errors = [l for l in result.stderr.splitlines() if "error" in l]
        self.assertEqual(len(errors), 1, result.stderr)
        for needle in needles:
            self.assertIn(needle, errors[0])

    def test_rank_count_that_cannot_split(self):
        model = make_model("gla", "--attention", "gla")
        r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl")], np=3)
        self.assertOneError(r, "h_q=4", "3 ranks", "rank counts that work: 1, 2, 4")

    def test_missing_model(self):
        r = run(["score", "--model", os.path.join(WORK, "nope"), "--input", PROMPTS,
                 "--output", os.path.join(WORK, "x.jsonl")], np=2)
        self.assertOneError(r, "cannot open", "nope/config.json")

    def test_malformed_config(self):
        model = copy_model(make_model("gqa", "--attention", "gqa"), "bad-config")
        with open(os.path.join(model, "config.json"), "w") as f:
            f.write('{"hidden_size": 64,')
        r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl")], np=2)
        self.assertOneError(r, "config.json", "not a valid JSON")

    def test_truncated_weights(self):
        model = copy_model(make_model("gqa", "--attention", "gqa"), "truncated")
        path = os.path.join(model, "model.safetensors")
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)
        r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl")], np=2)
        self.assertOneError(r, "model.safetensors")

    def test_shape_contradicts_config(self):
        model = copy_model(make_model("gqa", "--attention", "gqa"), "contradict")
        cfg_path = os.path.join(model, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["num_key_value_heads"] = 4  # the tensors were written for 2
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl")], np=2)
        self.assertOneError(r, "k_proj", "shape")

    def test_unwritable_output(self):
        model = make_model("gqa", "--attention", "gqa")
        r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                 "/proc/nonexistent/out.jsonl"], np=2)
        self.assertOneError(r, "cannot open output")

    def test_cache_too_small_for_one_request(self):
        model = make_model("gqa", "--attention", "gqa")
        r = run(["decode", "--model", model, "--prompts", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl"), "--kv-cache-mb", "0.01"], np=2)
        self.assertOneError(r, "maximum length (512 tokens)", "use --kv-cache-mb")

    def test_max_model_len_caps_the_context(self):
        # A budget too small for the model's 512 positions runs once the context is capped;
        # a request longer than the cap gets its own error line.
        model = make_model("gqa", "--attention", "gqa")
        out = os.path.join(WORK, "capped.jsonl")
        r = run(["decode", "--model", model, "--prompts", PROMPTS, "--output", out,
                 "--kv-cache-mb", "0.05", "--max-model-len", "48", "--max-new-tokens", "4"], np=2)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            results = {json.loads(l)["id"]: json.loads(l) for l in f}
        self.assertIn("context length 48", results["long"]["error"])
        done = [v for v in results.values() if v["finish_reason"] != "error"]
        self.assertGreater(len(done), 0)
        for v in done:
            self.assertLessEqual(v["prompt_tokens"] + len(v["tokens"]), 48)

    def test_cache_beyond_memory(self):
        # 10^9 MiB per rank is past any address space: a clear error, not std::bad_alloc.
        model = make_model("gqa", "--attention", "gqa")
        r = run(["decode", "--model", model, "--prompts", PROMPTS, "--output",
                 os.path.join(WORK, "x.jsonl"), "--kv-cache-mb", "1000000000"], np=2)
        self.assertOneError(r, "cannot map the KV cache", "lower --kv-cache-mb")

    def test_mismatched_checkpoints_across_ranks(self):
        # Same shapes, another rope_theta: only the Hello fingerprint can tell.
        model = make_model("gqa", "--attention", "gqa")
        other = copy_model(model, "other-theta")
        cfg_path = os.path.join(other, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["rope_theta"] = cfg.get("rope_theta", 10000.0) * 2
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        r = run_two_checkpoints("decode", model, other)
        self.assertOneError(r, "rank 1: checkpoint mismatch", "differs from rank 0's",
                            "same checkpoint on every host")

    def test_score_runs_the_handshake(self):
        # `score` starts up like `decode`: ranks with other weights behind the same config.json
        # are caught by the Hello before any request runs.
        model = make_model("gqa", "--attention", "gqa")
        other = make_model("gqa-seed1", "--attention", "gqa", "--seed", "1")
        r = run_two_checkpoints("score", model, other)
        self.assertOneError(r, "rank 1: checkpoint mismatch", "weights", "differ from rank 0's")

    def test_bad_checkpoint_table(self):
        base = make_model("gqa", "--attention", "gqa")
        for name, damage, needles in BAD_CHECKPOINTS:
            with self.subTest(name):
                model = copy_model(base, "bad-" + name)
                damage(model)
                r = run(["score", "--model", model, "--input", PROMPTS, "--output",
                         os.path.join(WORK, "x.jsonl")], np=2)
                self.assertOneError(r, *needles)

    def test_mismatched_weights_across_ranks(self):
        # Same config.json, other random weights: the Hello weights fingerprint.
        model = make_model("gqa", "--attention", "gqa")
        other = make_model("gqa-seed1", "--attention", "gqa", "--seed", "1")
        r = run_two_checkpoints("decode", model, other)
        self.assertOneError(r, "rank 1: checkpoint mismatch", "weights", "differ from rank 0's")

    def test_unknown_flag(self):
        r = run(["score", "--modle", "x"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown flag --modle", r.stderr)

    def test_bad_thread_count(self):
        for value in ["0", "many", "2000"]:
            r = run(["decode", "--model", "x", "--prompts", "p", "--output", "o", "--threads", value])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(f'--threads must be an integer in [1, 1024] or auto, got "{value}"', r.stderr)


    def test_bad_bf16_math(self):
        r = run(["decode", "--model", "x", "--prompts", "p", "--output", "o", "--bf16-math", "fast"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('--bf16-math must be exact or dot, got "fast"', r.stderr)
        r = run(["bench", "--preset", "tiny", "--bf16-math", "fast"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn('--bf16-math must be exact or dot, got "fast"', r.stderr)

    def test_a_flag_error_is_reported_once(self):
        # Every rank reads the same command line: at 2 ranks one line, not one per rank, and
        # not named "rank 0". A rank with a command line of its own (an app context) is named.
        cases = [
            (["decode", "--model", "x", "--prompts", "p", "--output", "o", "--max-batch", "0"],
             "--max-batch must be an integer"),
            (["decode", "--model", "x", "--output", "o"], "missing required flag --prompts"),
            (["score", "--model", "x", "--input", "i", "--output", "o", "--threads", "0"],
             "--threads must be an integer"),
            (["serve", "--model", "x", "--port", "70000"], "--port must be an integer"),
            (["make-model", "--out", os.path.join(WORK, "never"), "--layers", "-1"],
             "--layers must be an integer"),
            (["quantize", "--model", "x", "--out", "y"], "missing required flag --dtype"),
            (["inspect", "--model", "x", "--kv-dtype", "int4"], "int4"),
            (["tokenize", "--model", "x", "--output", "o"], "missing required flag --input"),
            (["convert", "--model", "x", "--out", "y", "--attention", "gla"],
             "missing required flag --kv-lora-rank"),
        ]
        for args, needle in cases:
            r = run(args, np=2)
            self.assertOneError(r, needle)
            self.assertNotRegex(r.stderr, r"\brank \d+:", args)
        base = [SHARDLM, "decode", "--model", "x", "--prompts", "p", "--output", "o"]
        r = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-q", "-np", "1"] +
                           base + [":", "-np", "1"] + base + ["--top-p", "2"],
                           capture_output=True, text=True, timeout=120, env=ENV)
        self.assertOneError(r, "rank 1: --top-p must be")

    def test_bad_prefix_cache(self):
        for command in (["decode", "--prompts", "p", "--output", "o"],
                        ["serve", "--port", "0"]):
            r = run([command[0], "--model", "x"] + command[1:] + ["--prefix-cache", "yes"])
            self.assertNotEqual(r.returncode, 0)
            self.assertIn('--prefix-cache must be on or off, got "yes"', r.stderr)


class Inspect(unittest.TestCase):
    def cache_bytes(self, model, tp):
        r = run(["inspect", "--model", model, "--tp", str(tp)])
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [l.split() for l in r.stdout.splitlines() if re.match(r"^\d+\s", l)]
        self.assertEqual(len(rows), tp, r.stdout)
        return [int(row[-1]) for row in rows]

    def test_gla_halves_mla_duplicates(self):
        gla = make_model("gla", "--attention", "gla")
        mla = make_model("mla", "--attention", "mla")
        gla1, gla2 = self.cache_bytes(gla, 1), self.cache_bytes(gla, 2)
        mla1, mla2 = self.cache_bytes(mla, 1), self.cache_bytes(mla, 2)
        # GLA-2 per-rank latents halve; the shared RoPE key (d_r) stays on both ranks.
        with open(os.path.join(gla, "config.json")) as f:
            c = json.load(f)
        layers, dc, dr = c["num_hidden_layers"], c["kv_lora_rank"], c["qk_rope_head_dim"]
        self.assertEqual(gla1[0], layers * (2 * dc + dr) * 4)
        self.assertEqual(gla2, [layers * (dc + dr) * 4] * 2)
        self.assertEqual(mla2, mla1 * 2)  # duplicated: every rank holds the full latent

    def test_paper_preset_table(self):
        # The paper-m shapes: GLA-2 per-rank latent halves at TP 2, MLA does not.
        out = {}
        for fam in ("gla", "mla", "gta", "gqa"):
            # inspect needs tensors; a 1-layer paper-m checkpoint keeps this fast.
            model = make_model(f"paper-{fam}", "--attention", fam, "--preset", "paper-m",
                               "--layers", "1")
            out[fam] = (self.cache_bytes(model, 1)[0], self.cache_bytes(model, 2)[0])
        self.assertEqual(out["gla"], ((256 + 32) * 4, (128 + 32) * 4))
        self.assertEqual(out["mla"], ((256 + 32) * 4, (256 + 32) * 4))
        self.assertEqual(out["gta"], ((4 * 64 + 32) * 4, (2 * 64 + 32) * 4))
        self.assertEqual(out["gqa"], (2 * 4 * 64 * 4, 2 * 2 * 64 * 4))


if __name__ == "__main__":
    SHARDLM, WORK = sys.argv[1], sys.argv[2]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1], verbosity=2)
