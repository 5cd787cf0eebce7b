#!/usr/bin/python3
"""Self-checks of convert_ref.py (the GQA -> MLA/GLA conversion) through torch_ref.py.

- At full latent rank the only approximation is the lost rotation of the RoPE residual, so
  logits are exact where no rotation happens: a one-token sequence (angle 0), and any sequence
  when each latent head reads a single KV group whose keys carry no residual (h_kv = 1).
- A lower rank changes the logits (so the checks above can fail).
"""
import os
import sys
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_ref as cv  # noqa: E402
import make_tiny_ckpt as mk  # noqa: E402
from test_torch_ref import Base  # noqa: E402

TOKENS = [3, 141, 59, 26, 53, 58, 97, 93, 23, 84]


def gqa(hkv, seed):
    cfg = dict(mk._BASE, num_attention_heads=4, num_key_value_heads=hkv, head_dim=8,
               attention_type="gqa")
    return cfg, mk.random_tensors(cfg, {}, seed)


class ConvertRef(Base):
    def converted(self, cfg, W, attention, hc, rank, dr):
        W64 = {k: np.asarray(v, dtype=np.float64) for k, v in W.items()}
        return cv.convert(cfg, W64, attention, hc, rank, dr)

    def test_one_token_is_exact_at_full_rank(self):
        for seed in (0, 1, 2):
            cfg, W = gqa(2, seed)
            want = self.logits(cfg, W, tokens=[TOKENS[seed]])
            for attention, hc, rank in (("mla", 1, 32), ("gla", 2, 16)):
                for dr in (8, 4, 2):
                    c2, W2 = self.converted(cfg, W, attention, hc, rank, dr)
                    got = self.logits(c2, W2, tokens=[TOKENS[seed]])
                    self.assertClose(got, want, 1e-4, f"{attention} dr {dr} seed {seed}")

    def test_one_kv_group_is_exact_at_full_rank_and_rope_width(self):
        cfg, W = gqa(1, 5)
        want = self.logits(cfg, W)
        c2, W2 = self.converted(cfg, W, "mla", 1, 16, 8)
        self.assertClose(self.logits(c2, W2), want, 1e-4)

    def test_lower_rank_changes_the_logits(self):
        cfg, W = gqa(2, 3)
        want = self.logits(cfg, W, tokens=[TOKENS[0]])
        c2, W2 = self.converted(cfg, W, "mla", 1, 8, 8)
        got = self.logits(c2, W2, tokens=[TOKENS[0]])
        self.assertGreater(float(np.max(np.abs(got - want))), 1e-3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
