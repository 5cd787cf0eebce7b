#!/usr/bin/env python3
"""`shardlm quantize` and Q8_0 / Q4_0 models end to end (kernels/quant.h, docs/QUANTIZATION.md):

- the written quants and F16 scales equal a NumPy transcription of llama.cpp's Q8_0 / Q4_0
  quantizers bit for bit, on the trained model and a random one; tensors that are not
  quantized (norms, kv_b_proj, rows that are not whole 32-blocks) keep their dtype and bits;
- held-out perplexity of the trained model: Q8_0 within 1% and Q4_0 within 5% of its BF16
  weights, at TP 1 and TP 2; greedy decode gives the same tokens at TP 1 and 2, for every
  attention family of `make-model --dtype q4_0`;
- what cannot be loaded or quantized is refused with a message naming the reason: a split
  between blocks, missing or non-F16 scales, an already quantized source, --out = source.

usage: quantize_test.py SHARDLM TRAINED_MODEL_DIR WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "training"))
from jobs import ENV, heldout_rows, mpirun, perplexity, read_jsonl, write_jsonl  # noqa: E402

SHARDLM = TRAINED = WORK = None
NP_DTYPES = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16, "I8": np.int8,
             "U8": np.uint8}


def read_safetensors(path):
    """name → (dtype name, array as stored; BF16 as raw uint16)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=NP_DTYPES[t["dtype"]]).reshape(t["shape"])
        out[name] = (t["dtype"], arr)
    return out


def write_safetensors(path, tensors):
    """tensors: name → (dtype name, array)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def to_f32(dtype, arr):
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def quantize_ref(fmt, x):
    """llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref in float32 NumPy."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    if fmt == "q8_0":
        amax = np.max(np.abs(blocks), axis=2)
        d = (amax / np.float32(127)).astype(np.float32)
        with np.errstate(divide="ignore"):
            idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        v = (blocks * idv[..., None]).astype(np.float32)
        q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf
        return q.reshape(x.shape[0], -1), d.astype(np.float16)
    idx = np.argmax(np.abs(blocks), axis=2)  # first of the largest magnitudes
    m = np.take_along_axis(blocks, idx[..., None], axis=2)[..., 0]
    d = (m / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (blocks * idv[..., None] + np.float32(8.5)).astype(np.float32)
    q = np.minimum(15, np.trunc(v).astype(np.int32)).astype(np.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return packed.reshape(x.shape[0], -1), d.astype(np.float16)


class Quantize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.out = {}
        for fmt in ("q8_0", "q4_0"):
            out = os.path.join(WORK, f"trained-{fmt}")
            mpirun(SHARDLM, ["quantize", "--model", TRAINED, "--dtype", fmt, "--out", out])
            cls.out[fmt] = out

    def check_against_reference(self, src_dir, got_dir, fmt, head_fmt):
        src = read_safetensors(os.path.join(src_dir, "model.safetensors"))
        got = read_safetensors(os.path.join(got_dir, "model.safetensors"))
        quantized = 0
        for name, (dtype, arr) in src.items():
            scale = name[: -len("weight")] + "weight_scale"
            if scale not in got:
                self.assertEqual(got[name][0], dtype, name)
                self.assertTrue(np.array_equal(got[name][1], arr), name)
                continue
            head = name in ("lm_head.weight", "model.embed_tokens.weight")
            want_fmt = head_fmt if head else fmt
            self.assertNotIn("kv_b_proj", name)
            self.assertEqual(got[name][0], "I8" if want_fmt == "q8_0" else "U8", name)
            q, d = quantize_ref(want_fmt, to_f32(dtype, arr))
            self.assertTrue(np.array_equal(got[name][1], q), name)
            self.assertEqual(got[scale][0], "F16")
            self.assertTrue(np.array_equal(got[scale][1].view(np.uint16), d.view(np.uint16)), scale)
            quantized += 1
        self.assertEqual(sorted(got), sorted(set(src) | {n[:-6] + "weight_scale" for n in src
                                                          if n[:-6] + "weight_scale" in got}))
        return quantized

    def test_tensors_equal_llama_cpp_quantizers(self):
        for fmt in ("q8_0", "q4_0"):
            with self.subTest(fmt=fmt):
                # 6 layers × 7 linears + the tied embedding.
                self.assertEqual(self.check_against_reference(TRAINED, self.out[fmt], fmt, "q8_0"), 43)
                with open(os.path.join(self.out[fmt], "config.json")) as f:
                    config = json.load(f)
                self.assertEqual(config["quantization_config"]["format"], fmt)
                self.assertTrue(os.path.exists(os.path.join(self.out[fmt], "tokenizer.json")))
        # A random F32 MLA: kv_b_proj stays F32, the tiny preset's MLP rows (101 wide) too.
        src = os.path.join(WORK, "mla-f32")
        mpirun(SHARDLM, ["make-model", "--attention", "mla", "--out", src])
        out = os.path.join(WORK, "mla-q4all")
        mpirun(SHARDLM, ["quantize", "--model", src, "--dtype", "q4_0", "--head-dtype", "q4_0",
                         "--out", out])
        self.assertGreater(self.check_against_reference(src, out, "q4_0", "q4_0"), 5)
        got = read_safetensors(os.path.join(out, "model.safetensors"))
        self.assertEqual(got["model.layers.0.self_attn.kv_b_proj.weight"][0], "F32")
        self.assertEqual(got["model.layers.0.mlp.down_proj.weight"][0], "F32")

    def score(self, model, rows, ranks):
        inp = os.path.join(WORK, "score.in.jsonl")
        out = os.path.join(WORK, f"score-{os.path.basename(model)}-{ranks}.jsonl")
        write_jsonl(inp, rows)
        mpirun(SHARDLM, ["score", "--model", model, "--input", inp, "--output", out], np=ranks)
        got = read_jsonl(out)
        return perplexity(got), got

    def test_perplexity_stays_close_to_bf16(self):
        rows, _ = heldout_rows(TRAINED)
        base, _ = self.score(TRAINED, rows, 1)
        for fmt, bound in (("q8_0", 0.01), ("q4_0", 0.05)):
            one, got1 = self.score(self.out[fmt], rows, 1)
            two, got2 = self.score(self.out[fmt], rows, 2)
            print(f"held-out perplexity: BF16 {base:.3f}, {fmt} TP1 {one:.3f} "
                  f"({one / base - 1:+.2%}), TP2 {two:.3f}")
            self.assertLess(abs(one / base - 1), bound, fmt)
            self.assertNotEqual(one, base, fmt)  # the quantized weights are really used
            # x is rounded to int8 per block, so the all-reduce's last-bit differences between
            # TP 1 and 2 now and then move a quant by one step: a little more than float noise.
            self.assertLess(abs(two / one - 1), 1e-3, fmt)
            for i in got1:
                np.testing.assert_allclose(got2[i]["logprobs"], got1[i]["logprobs"], atol=2e-2)

    def test_greedy_decode_tp2_equals_tp1_for_every_family(self):
        prompts = os.path.join(WORK, "prompts.jsonl")
        write_jsonl(prompts, [{"id": "a", "tokens": [1, 2, 3, 4, 5], "max_new_tokens": 16},
                              {"id": "b", "tokens": [200, 7, 9], "max_new_tokens": 16}])
        models = {"trained": self.out["q4_0"]}
        for attention in ("mha", "mqa", "gqa", "gta", "mla", "gla"):
            out = os.path.join(WORK, f"{attention}-q4")
            mpirun(SHARDLM, ["make-model", "--attention", attention, "--dtype", "q4_0",
                             "--intermediate-size", "128", "--out", out])
            models[attention] = out
        for name, model in models.items():
            with self.subTest(model=name):
                outs = []
                for ranks in (1, 2):
                    out = os.path.join(WORK, f"decode-{name}-{ranks}.jsonl")
                    mpirun(SHARDLM, ["decode", "--model", model, "--prompts", prompts,
                                     "--output", out], np=ranks)
                    outs.append(read_jsonl(out))
                for rid in ("a", "b"):
                    self.assertEqual(outs[0][rid]["tokens"], outs[1][rid]["tokens"], rid)
                    self.assertGreater(len(outs[0][rid]["tokens"]), 0)

    def fails(self, command, args, words, ranks=1):
        full = ["mpirun", "--oversubscribe", "-q", "-np", str(ranks), SHARDLM, command] + args
        r = subprocess.run(full, capture_output=True, text=True, timeout=120, env=ENV)
        self.assertNotEqual(r.returncode, 0, args)
        for w in words:
            self.assertIn(w, r.stderr, args)
        self.assertNotIn("CHECK failed", r.stderr)
        self.assertNotIn("Segmentation", r.stderr)

    def test_bad_models_and_flags_are_refused_by_name(self):
        out = ["--out", os.path.join(WORK, "refused")]
        self.fails("quantize", ["--model", TRAINED, "--dtype", "q5_1"] + out, ["q5_1", "Q4_0"])
        self.fails("quantize", ["--model", TRAINED, "--dtype", "q8_0", "--out", TRAINED],
                   ["source directory"])
        self.fails("quantize", ["--model", self.out["q8_0"], "--dtype", "q4_0"] + out,
                   ["already quantized"])
        # An MLP of 96 columns split over 2 ranks: 48 each, not whole blocks of 32.
        split = os.path.join(WORK, "gqa-q8-96")
        mpirun(SHARDLM, ["make-model", "--attention", "gqa", "--dtype", "q8_0",
                         "--intermediate-size", "96", "--out", split])
        prompts = os.path.join(WORK, "prompts1.jsonl")
        write_jsonl(prompts, [{"id": "a", "tokens": [1, 2], "max_new_tokens": 2}])
        dec = ["--prompts", prompts, "--output", os.path.join(WORK, "refused.jsonl")]
        self.fails("decode", ["--model", split] + dec, ["down_proj", "[0, 48) of 96", "between blocks"],
                   ranks=2)
        # Scales removed, or stored as BF16.
        tensors = read_safetensors(os.path.join(self.out["q4_0"], "model.safetensors"))
        for case in ("missing", "bf16"):
            bad = os.path.join(WORK, f"bad-scale-{case}")
            shutil.rmtree(bad, ignore_errors=True)
            shutil.copytree(self.out["q4_0"], bad)
            t = dict(tensors)
            name = "model.layers.2.mlp.up_proj.weight_scale"
            if case == "missing":
                del t[name]
            else:
                t[name] = ("BF16", t[name][1].view(np.uint16))
            write_safetensors(os.path.join(bad, "model.safetensors"), t)
            words = ["up_proj.weight_scale", "missing"] if case == "missing" else \
                ["up_proj.weight_scale is BF16", "F16"]
            self.fails("decode", ["--model", bad] + dec, words)


if __name__ == "__main__":
    SHARDLM, TRAINED, WORK = sys.argv[1:4]
    os.makedirs(WORK, exist_ok=True)
    unittest.main(argv=sys.argv[:1] + sys.argv[4:], verbosity=2)
