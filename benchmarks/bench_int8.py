#!/usr/bin/env python3
"""Time the integer (8-bit) convolutions of cPreResNet20 against float32 ones.

For every distinct convolution of csub.models.cpreresnet20() at 32x32 input
(shapes taken from a forward pass) and for each batch size, prints the median
of --repeat calls, in milliseconds, of:

    f32      csub._core.conv2d_forward (im2col + OpenBLAS sgemm)
    int8     csub_conv2d_int8_forward with the weight quantized beforehand
             (as inference holds it, once per alpha); the time includes
             quantizing the input and the whole integer product
    int8+w   csub._core.conv2d_int8_forward, which also quantizes the weight
             on every call

the ratios f32 / int8 and f32 / int8+w, and at the end the sums over the
network (each convolution counted as often as it occurs). The fully connected
layer is listed too. 8-bit grids; the input range is its own min/max.
The int8 column calls the C library through ctypes (the functions are
exported by csub._core's shared object). Nothing here asserts a timing.

    python benchmarks/bench_int8.py [--repeat 21] [--batch 1 64] [--bits 8] [--threads T]
"""
import argparse
import ctypes
import os
import sys

import numpy as np
from common import conv_key, median_time, print_machine

try:
    import csub
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import csub
from csub import _core
from csub.models import cpreresnet20
from csub.nn.layers import Conv2d, Linear

F32P = ctypes.POINTER(ctypes.c_float)
I64 = ctypes.c_int64


def clib():
    """csub's C functions (the int8 ones with argument types), from _core's shared object."""
    lib = ctypes.CDLL(_core.__file__)
    lib.csub_qweight_init_conv.argtypes = [ctypes.c_void_p, F32P, I64, I64, I64, I64, ctypes.c_int]
    lib.csub_qweight_init.argtypes = [ctypes.c_void_p, F32P, I64, I64, ctypes.c_int]
    lib.csub_qweight_free.argtypes = [ctypes.c_void_p]
    lib.csub_conv2d_int8_forward.argtypes = [F32P, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p, F32P, F32P,
                                             F32P] + [I64] * 8
    lib.csub_linear_int8_forward.argtypes = [F32P, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p, F32P, F32P,
                                             F32P, I64]
    return lib


def ptr(a):
    return a.ctypes.data_as(F32P)


def layer_shapes():
    """[(kind, (C, K, R, stride, pad, H, W), count)] of the network's conv and linear layers, in order."""
    net = cpreresnet20()
    net.eval()
    net(np.zeros((1, 3, 32, 32), np.float32))
    seen = {}
    for m in net.modules():
        if isinstance(m, Conv2d):
            key = ("conv", conv_key(m))
        elif isinstance(m, Linear):
            key = ("linear", (m.in_features, m.out_features, 1, 1, 0, 1, 1))
        else:
            continue
        seen[key] = seen.get(key, 0) + 1
    return [(k, s, n) for (k, s), n in seen.items()]


def time_layer(lib, kind, shape, N, bits, repeat, rng):
    C, K, R, st, pad, H, W = shape
    qmin = -(2 ** (bits - 1))
    if kind == "conv":
        x = np.maximum(rng.standard_normal((N, C, H, W)), 0).astype(np.float32)  # post-ReLU activations
        w = (rng.standard_normal((K, C, R, R)) * np.sqrt(2.0 / (K * R * R))).astype(np.float32)
    else:
        x = np.maximum(rng.standard_normal((N, C)), 0).astype(np.float32)
        w = (rng.standard_normal((K, C)) * np.sqrt(1.0 / C)).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
    assert xz == qmin
    qw = ctypes.create_string_buffer(256)  # holds a csub_qweight
    if kind == "conv":
        P, Q = (H + 2 * pad - R) // st + 1, (W + 2 * pad - R) // st + 1
        y = np.empty((N, K, P, Q), np.float32)
        assert lib.csub_qweight_init_conv(qw, ptr(w), K, C, R, R, bits) == 0
        f32 = lambda: _core.conv2d_forward(x, w, None, st, pad)  # noqa: E731
        args = (ptr(x), xs, xz, qw, None, None, ptr(y), N, C, H, W, R, R, st, pad)
        i8 = lambda: lib.csub_conv2d_int8_forward(*args)  # noqa: E731
        i8w = lambda: _core.conv2d_int8_forward(x, w, bits, xs, xz, None, None, st, pad)  # noqa: E731
    else:
        y = np.empty((N, K), np.float32)
        assert lib.csub_qweight_init(qw, ptr(w), K, C, bits) == 0
        f32 = lambda: _core.linear_forward(x, w)  # noqa: E731
        args = (ptr(x), xs, xz, qw, None, None, ptr(y), N)
        i8 = lambda: lib.csub_linear_int8_forward(*args)  # noqa: E731
        i8w = lambda: _core.linear_int8_forward(x, w, bits, xs, xz)  # noqa: E731
    try:
        assert i8() == 0
        ref = i8w()
        assert np.array_equal(y, ref), "prepared and per-call weights disagree"
        return median_time(f32, repeat), median_time(i8, repeat), median_time(i8w, repeat)
    finally:
        lib.csub_qweight_free(qw)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="csub threads (default: csub's own count)")
    args = ap.parse_args()

    print_machine()
    if args.threads:
        _core.set_num_threads(args.threads)
    threads = _core.get_num_threads()
    print(f"threads : {threads} (csub), int8 kernel {_core.int8_kernel()}, {args.bits}-bit grids, "
          f"median of {args.repeat} calls, ms")
    lib = clib()
    rng = np.random.default_rng(0)
    layers = layer_shapes()
    for N in args.batch:
        print(f"\nbatch {N}")
        print(f"{'layer':<28}{'x':>3} {'f32':>9} {'int8':>9} {'int8+w':>9} {'f32/int8':>9} {'f32/int8+w':>11}")
        tot = np.zeros(3)
        for kind, shape, count in layers:
            C, K, R, st, pad, H, W = shape
            name = (f"conv {C}->{K} {R}x{R} s{st} @{H}" if kind == "conv" else f"linear {C}->{K}")
            t = np.array(time_layer(lib, kind, shape, N, args.bits, args.repeat, rng)) * 1e3
            tot += count * t
            print(f"{name:<28}{count:>3} {t[0]:9.4f} {t[1]:9.4f} {t[2]:9.4f} {t[0] / t[1]:9.2f} {t[0] / t[2]:11.2f}")
        print(f"{'network (sum)':<28}{'':>3} {tot[0]:9.4f} {tot[1]:9.4f} {tot[2]:9.4f} "
              f"{tot[0] / tot[1]:9.2f} {tot[0] / tot[2]:11.2f}")


if __name__ == "__main__":
    main()
