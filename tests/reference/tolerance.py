#!/usr/bin/env python3
"""Prints "atol rtol" for comparing logprobs of two correct fp32 runs of a model.

Derivation: the engine computes in f32 (unit roundoff u = 2^-24). Two correct
runs (different rank counts, chunking, or an f64 reference) differ only in the
order of floating-point sums. A length-K dot product of O(1) terms carries an
error of about sqrt(K)·u relative to its magnitude under random rounding, at
most K·u. Each layer does dot products of length hidden (projections) and
intermediate (down_proj), and errors add over layers; the final logits add one
more length-hidden product. We take the worst-case K·u per layer with a factor
4 margin for the softmax/attention steps, times the typical logit scale (~10).
"""
import json
import sys

U = 2.0 ** -24


def tolerance(config):
    layers = config["num_hidden_layers"]
    k = config["hidden_size"] + config["intermediate_size"]
    bound = 4 * (layers + 1) * k * U * 10
    return bound, bound


if __name__ == "__main__":
    with open(sys.argv[1] + "/config.json") as f:
        atol, rtol = tolerance(json.load(f))
    print(f"{atol:.3g} {rtol:.3g}")
