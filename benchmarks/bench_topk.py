#!/usr/bin/env python3
"""Time magnitude top-k selection against NumPy for n = 1e4 .. 1e7.

For each n, random normal float32 weights and a keep fraction (default 0.1),
prints nanoseconds per element (best of --repeat runs) for:

    csub     csub._core.topk_mask (radix selection, exact, ties to the lower index)
    argpart  numpy.argpartition on -|w| plus building the mask (selection, O(n))
    sort     numpy.argsort on -|w| (stable) plus building the mask (O(n log n))

A flat csub column across n is what "O(n) selection" looks like; the sort
column grows like log n. Nothing here asserts a timing.

    python benchmarks/bench_topk.py [--topk 0.1] [--repeat 3] [--max-exp 7]
"""
import os
import sys

import numpy as np
from common import arg_parser, best_time

try:
    from csub import _core
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from csub import _core


def mask_argpartition(w, keep):
    idx = np.argpartition(-np.abs(w), keep - 1)[:keep]
    m = np.zeros(w.size, np.uint8)
    m[idx] = 1
    return m


def mask_sort(w, keep):
    idx = np.argsort(-np.abs(w), kind="stable")[:keep]
    m = np.zeros(w.size, np.uint8)
    m[idx] = 1
    return m


def main():
    ap = arg_parser(__doc__, repeat=3)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--max-exp", type=int, default=7)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    print(f"keep fraction {args.topk}; ns per element, best of {args.repeat}")
    print(f"{'n':>10} {'keep':>9} {'csub':>8} {'argpart':>8} {'sort':>8}  csub mask == sort mask")
    for e in range(4, args.max_exp + 1):
        n = 10 ** e
        w = rng.standard_normal(n).astype(np.float32)
        keep = _core.topk_count(n, args.topk)
        t_c = best_time(lambda: _core.topk_mask(w, args.topk), args.repeat)
        t_p = best_time(lambda: mask_argpartition(w, keep), args.repeat)
        t_s = best_time(lambda: mask_sort(w, keep), args.repeat)
        same = np.array_equal(_core.topk_mask(w, args.topk), mask_sort(w, keep))
        print(f"{n:>10} {keep:>9} {t_c / n * 1e9:8.2f} {t_p / n * 1e9:8.2f} {t_s / n * 1e9:8.2f}  {same}")


if __name__ == "__main__":
    main()
