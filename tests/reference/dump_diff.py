#!/usr/bin/env python3
"""Compares SHARDLM_DUMP trees of two runs (e.g. rank 0 at -np 1 and at -np 2) and
prints, in forward/layer order, the max |a - b| of each named tensor, so the first
place where rank counts disagree stands out.

usage: dump_diff.py DUMP_A/rank0 DUMP_B/rank0 [--top N]
"""
import os
import re
import sys

import numpy as np


def tensors(root):
    out = {}
    for fwd in os.listdir(root):
        for name in os.listdir(os.path.join(root, fwd)):
            if name.endswith(".f32"):
                out[(fwd, name[:-4])] = os.path.join(root, fwd, name)
    return out


def key(k):
    fwd, name = k
    layer = int(re.match(r"layer(\d+)", name).group(1))
    return (int(fwd[3:]), layer, name)


def main():
    a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
    for k in sorted(set(a) & set(b), key=key):
        x, y = np.fromfile(a[k], np.float32), np.fromfile(b[k], np.float32)
        if x.shape != y.shape:
            print(f"{k[0]} {k[1]}: shapes differ {x.shape} vs {y.shape}")
            continue
        diff = float(np.max(np.abs(x - y))) if x.size else 0.0
        print(f"{k[0]:>6} {k[1]:<24} max|diff| {diff:.3e}  max|a| {float(np.max(np.abs(x))):.3e}")
    for k in sorted(set(a) ^ set(b), key=key):
        print(f"{k[0]} {k[1]}: only in {'A' if k in a else 'B'}")


if __name__ == "__main__":
    main()
