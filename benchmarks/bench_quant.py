#!/usr/bin/env python3
"""Time fake quantization against a plain memory copy for n = 1e5 .. 1e7.

For each n, random normal float32 x and an 8-bit range [-3, 3], prints
nanoseconds per element (best of --repeat runs) for:

    fq/1     csub._core.fake_quantize into a preallocated out, 1 thread
    fq/T     the same with csub's default thread count T
    copyto   numpy.copyto of the same array (one read, one write: the floor)
    numpy    the same fake quantization written in NumPy expressions
    minmax   csub._core.minmax, 1 thread (one read)
    np.mm    x.min() and x.max()

and the ratio fq/1 : copyto. One fake-quantization pass reads x and writes y
once, like the copy; in cache it is bound by the float division x / scale
(the method's formula, kept exactly), out of cache by memory. Nothing here
asserts a timing.

    python benchmarks/bench_quant.py [--repeat 7] [--min-exp 5] [--max-exp 7]
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


def numpy_fake_quantize(x, y, scale, zp, qmin, qmax):
    np.divide(x, np.float32(scale), out=y)
    np.round(y, out=y)
    y += zp
    np.clip(y, qmin, qmax, out=y)
    y -= zp
    y *= np.float32(scale)


def main():
    ap = arg_parser(__doc__, repeat=7)
    ap.add_argument("--min-exp", type=int, default=5)
    ap.add_argument("--max-exp", type=int, default=7)
    args = ap.parse_args()

    threads = _core.get_num_threads()
    bits, rmin, rmax = 8, -3.0, 3.0
    scale, zp = _core.quant_params(rmin, rmax, bits)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rng = np.random.default_rng(0)
    print(f"{bits} bits, range [{rmin}, {rmax}]; ns per element, best of {args.repeat}; T = {threads}")
    print(f"{'n':>10} {'fq/1':>7} {'fq/T':>7} {'copyto':>7} {'numpy':>7} {'minmax':>7} {'np.mm':>7}"
          f"  fq/1 : copyto")
    try:
        for e in range(args.min_exp, args.max_exp + 1):
            n = 10 ** e
            x = rng.standard_normal(n).astype(np.float32)
            y = np.empty_like(x)
            _core.set_num_threads(1)
            t_1 = best_time(lambda: _core.fake_quantize(x, bits, rmin, rmax, out=y), args.repeat)
            t_mm = best_time(lambda: _core.minmax(x), args.repeat)
            _core.set_num_threads(threads)
            t_t = best_time(lambda: _core.fake_quantize(x, bits, rmin, rmax, out=y), args.repeat)
            t_c = best_time(lambda: np.copyto(y, x), args.repeat)
            t_n = best_time(lambda: numpy_fake_quantize(x, y, scale, zp, qmin, qmax), args.repeat)
            t_nm = best_time(lambda: (x.min(), x.max()), args.repeat)
            ns = [t / n * 1e9 for t in (t_1, t_t, t_c, t_n, t_mm, t_nm)]
            print(f"{n:>10} " + " ".join(f"{v:7.3f}" for v in ns) + f"  {t_1 / t_c:5.2f}")
    finally:
        _core.set_num_threads(threads)


if __name__ == "__main__":
    main()
