#!/usr/bin/env python3
"""Sparse convolution forward, layer by layer: ResNet18 (224x224) and cPreResNet20 (32x32).

For every distinct compressible conv shape of the two networks (the block convs,
stride-2 convs and 1x1 downsamples, found by one forward), at keep 0.10 (90 %
sparse, a top-k mask of a random weight): the median time of
``_core.conv2d_sparse_forward`` with a bias and a fused residual (the form the
compressed runtime calls), at each batch and thread count asked for, and the
network's total (each shape times its count).

To compare two builds, run the same script from each checkout's root (the
working directory's ``csub`` is imported) with ``--json FILE``, then
``--compare BEFORE.json AFTER.json`` prints the ratios after / before.
Read medians and ratios; on a shared machine absolute times drift. Nothing
here asserts a timing.

    python benchmarks/bench_spconv_layers.py [--nets resnet18 cpreresnet20] [--threads 1 2]
        [--reps 7] [--json out.json]
    python benchmarks/bench_spconv_layers.py --compare before.json after.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())  # the checkout run from, before any installed csub
import csub  # noqa: E402
from csub import _core, models  # noqa: E402
from common import conv_shapes, out_size, print_machine  # noqa: E402

KEEP = 0.10
NETS = {"resnet18": (lambda: models.resnet18(regime="unstructured", num_classes=1000), 224, (1, 16)),
        "cpreresnet20": (lambda: models.cpreresnet20(regime="unstructured"), 32, (1, 64))}


def layer_case(rng, C, K, R, s, p, H, W, N):
    P, Q = out_size(H, R, s, p), out_size(W, R, s, p)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    mask = _core.topk_mask(w, KEEP)
    csr = _core.csr_from_mask(_core.apply_mask(w, mask), mask)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32)
    res = rng.standard_normal((N, K, P, Q), dtype=np.float32)
    return lambda: _core.conv2d_sparse_forward(x, *csr, (K, C, R, R), b, s, p, residual=res)


def median_ms(fn, reps):
    fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


def measure(args):
    print_machine()
    print(f"csub    : {csub.__file__}")
    rows = []
    rng = np.random.default_rng(0)
    for net in args.nets:
        build, image, batches = NETS[net]
        shapes = conv_shapes(build(), lambda m: m.compressible_layers(), image)
        for threads in args.threads:
            csub.set_num_threads(threads)
            for N in batches:
                total = 0.0
                print(f"\n{net} batch {N}, {threads} thread(s), keep {KEEP}: ms (median of {args.reps})")
                for (C, K, R, s, p, H, W), count in shapes.items():
                    ms = median_ms(layer_case(rng, C, K, R, s, p, H, W, N), args.reps)
                    total += ms * count
                    key = f"{net} N={N} t={threads} {C}->{K} {R}x{R}/{s} {H}x{W}"
                    rows.append({"key": key, "ms": ms, "count": count})
                    print(f"  {C:4d}->{K:4d} {R}x{R} stride {s} at {H:3d}x{W:3d} x{count}: {ms:9.3f}")
                rows.append({"key": f"{net} N={N} t={threads} total", "ms": total, "count": 1})
                print(f"  total (x counts): {total:9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def compare(before, after):
    with open(before) as f:
        b = {r["key"]: r["ms"] for r in json.load(f)}
    with open(after) as f:
        a = {r["key"]: r["ms"] for r in json.load(f)}
    print(f"{'layer':52s} {'before ms':>10s} {'after ms':>10s} {'after/before':>12s}")
    for k, ms in a.items():
        if k in b:
            print(f"{k:52s} {b[k]:10.3f} {ms:10.3f} {ms / b[k]:12.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", nargs="+", choices=sorted(NETS), default=sorted(NETS, reverse=True))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="write the medians to this file")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print after / before of two --json files")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        measure(args)


if __name__ == "__main__":
    main()
