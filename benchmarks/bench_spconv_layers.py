#!/usr/bin/env python3
"""Sparse convolution forward, layer by layer: ResNet18 (224x224) and cPreResNet20 (32x32).

For every distinct compressible conv shape of the two networks (the block convs,
stride-2 convs and 1x1 downsamples, found by one forward), at keep 0.10 (90 %
sparse, a top-k mask of a random weight): the median time of
``_core.conv2d_sparse_forward`` with a bias and a fused residual (the form the
compressed runtime calls), at each batch and thread count asked for, and the
network's total (each shape times its count).

To compare two builds: ``--base DIR`` loads the extension built in another
checkout (DIR/csub/_core*.so, e.g. a detached worktree of an older commit) into
the same process and alternates the two call by call, so that a background load
hits both alike; it prints base ms, this build's ms and their ratio. Or run the
script from each checkout's root (the working directory's ``csub`` is imported)
with ``--json FILE``, then ``--compare BEFORE.json AFTER.json`` prints the
ratios after / before. Read medians and ratios; on a shared machine absolute
times drift. Nothing here asserts a timing.

    python benchmarks/bench_spconv_layers.py [--nets resnet18 cpreresnet20] [--threads 1 2]
        [--reps 7] [--base DIR] [--json out.json]
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
from common import conv_shapes, load_core, out_size, print_machine  # noqa: E402

KEEP = 0.10
NETS = {"resnet18": (lambda: models.resnet18(regime="unstructured", num_classes=1000), 224, (1, 16)),
        "cpreresnet20": (lambda: models.cpreresnet20(regime="unstructured"), 32, (1, 64))}


def layer_case(core, rng, C, K, R, s, p, H, W, N):
    P, Q = out_size(H, R, s, p), out_size(W, R, s, p)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    mask = _core.topk_mask(w, KEEP)
    csr = _core.csr_from_mask(_core.apply_mask(w, mask), mask)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32)
    res = rng.standard_normal((N, K, P, Q), dtype=np.float32)
    return [lambda m=m: m.conv2d_sparse_forward(x, *csr, (K, C, R, R), b, s, p, residual=res) for m in core]


def median_ms(fns, reps):
    """Median ms of each of fns, called in turn reps times (after one warm-up call each)."""
    for fn in fns:
        fn()
    t = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            t[i].append(time.perf_counter() - t0)
    return [statistics.median(ti) * 1e3 for ti in t]


def measure(args):
    print_machine()
    print(f"csub    : {csub.__file__}")
    core = [_core]
    if args.base:
        core.insert(0, load_core(args.base))
        print(f"base    : {core[0].__file__} (alternating with this build)")
    rows = []
    rng = np.random.default_rng(0)
    for net in args.nets:
        build, image, batches = NETS[net]
        shapes = conv_shapes(build(), lambda m: m.compressible_layers(), image)
        for threads in args.threads:
            for m in core:
                m.set_num_threads(threads)
            for N in batches:
                total = [0.0] * len(core)
                head = "base ms, ms, ratio" if args.base else "ms"
                print(f"\n{net} batch {N}, {threads} thread(s), keep {KEEP}: {head} (medians of {args.reps})")
                for (C, K, R, s, p, H, W), count in shapes.items():
                    ms = median_ms(layer_case(core, rng, C, K, R, s, p, H, W, N), args.reps)
                    total = [a + b * count for a, b in zip(total, ms)]
                    key = f"{net} N={N} t={threads} {C}->{K} {R}x{R}/{s} {H}x{W}"
                    rows.append({"key": key, "ms": ms[-1], "count": count})
                    print(f"  {C:4d}->{K:4d} {R}x{R} stride {s} at {H:3d}x{W:3d} x{count}: "
                          + fmt(ms))
                rows.append({"key": f"{net} N={N} t={threads} total", "ms": total[-1], "count": 1})
                print("  total (x counts):" + " " * 21 + fmt(total))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def fmt(ms):
    """ms (one build) or base ms, ms, ratio"""
    if len(ms) == 1:
        return f"{ms[0]:9.3f}"
    return f"{ms[0]:9.3f} {ms[1]:9.3f} {ms[1] / ms[0]:6.3f}"


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
    ap.add_argument("--base", metavar="DIR", help="alternate with the extension built in this checkout")
    ap.add_argument("--json", help="write the medians (this build's) to this file")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print after / before of two --json files")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        measure(args)


if __name__ == "__main__":
    main()
