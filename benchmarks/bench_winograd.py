"""Winograd 3x3 convolutions against the direct kernel: per layer and in the whole runtime.

    python benchmarks/bench_winograd.py [--reps 9] [--threads 1 2] [--layers-only | --nets-only]

Per layer: the direct kernel (csrc/conv_direct.c) against Winograd F(4x4,3x3) and F(2x2,3x3)
(csrc/conv_winograd.c), each with its weight packed beforehand and the runtime's fused epilogue
(bias, residual, ReLU), on the 3x3 stride-1 shapes of ResNet18 at 224x224 (64 channels at 55x55,
128 at 28x28, 256 at 14x14, 512 at 7x7; batch 1, 2 (the runtime's chunk of images per thread) and
16) and of cPreResNet20 at 32x32 (16 channels at 32x32, 32 at 16x16, 64 at 8x8; batch 1, 2 and 64).
The three kernels are timed interleaved in one process, medians of --reps calls.

Whole network: ResNet18 with batch norm (224x224, batch 16) and cPreResNet20 with batch norm
(32x32, batch 1 and 64), dense, as benchmarks/bench_peers.py builds them; two runtimes of one
model in one process, compressed with CSUB_WINOGRAD unset and with CSUB_WINOGRAD=0 (read at
set_alpha), timed interleaved (which runs first alternates), medians of --reps forwards, the
median of the per-repetition ratios, and the largest difference of their logits relative to the
largest logit.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's csub, built in place
import csub  # noqa: E402
from csub import _core  # noqa: E402
from common import print_machine  # noqa: E402
from bench_peers import build  # noqa: E402

# (network, channels, plane, batches)
LAYERS = [("ResNet18", 64, 55, (1, 2, 16)), ("ResNet18", 128, 28, (1, 2, 16)), ("ResNet18", 256, 14, (1, 2, 16)),
          ("ResNet18", 512, 7, (1, 2, 16)), ("cPreResNet20", 16, 32, (1, 2, 64)),
          ("cPreResNet20", 32, 16, (1, 2, 64)), ("cPreResNet20", 64, 8, (1, 2, 64))]
NETS = [("resnet18-bn", (3, 224, 224), 16), ("cpreresnet20-bn", (3, 32, 32), 1), ("cpreresnet20-bn", (3, 32, 32), 64)]


def interleaved_ms(fns, reps):
    """Median ms of each of fns, timed in turns (the order rotates each repetition), and the
    per-repetition times."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for i in range(reps):
        order = list(range(len(fns)))
        order = order[i % len(fns):] + order[:i % len(fns)]
        for j in order:
            t = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times], times


def layers(args):
    rng = np.random.default_rng(0)
    print("\n## Per layer: direct kernel against Winograd (ms, medians; speed-up = direct / Winograd)\n")
    print("| network | C=K | plane | batch | threads | direct | F(4x4) | F(2x2) | F(4x4) speed-up | F(2x2) speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for net, C, H, batches in LAYERS:
        w = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        pd, p4, p2 = _core.conv3x3_pack(w), _core.conv3x3_pack(w, 4), _core.conv3x3_pack(w, 2)
        for N in batches:
            x = rng.standard_normal((N, C, H, H)).astype(np.float32)
            res = rng.standard_normal((N, C, H, H)).astype(np.float32)
            reps = args.reps if N * C * H * H * C < 2e8 else max(3, args.reps // 2)
            for threads in args.threads:
                csub.set_num_threads(threads)
                (td, t4, t2), _ = interleaved_ms([
                    lambda: _core.conv3x3_forward(x, w, b, res, True, packed=pd),
                    lambda: _core.conv3x3_forward(x, w, b, res, True, winograd=4, packed=p4),
                    lambda: _core.conv3x3_forward(x, w, b, res, True, winograd=2, packed=p2)], reps)
                print(f"| {net} | {C} | {H}x{H} | {N} | {threads} | {td:.3f} | {t4:.3f} | {t2:.3f} | "
                      f"{td / t4:.2f}x | {td / t2:.2f}x |", flush=True)


def nets(args):
    print("\n## Whole network: CSUB_WINOGRAD unset (on) against CSUB_WINOGRAD=0 (ms, medians; two runtimes "
          "in one process, timed interleaved)\n")
    print("| network | batch | threads | off | on | speed-up | logits differ by |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for net, shape, batch in NETS:
        model = build(net, False)
        os.environ.pop("CSUB_WINOGRAD", None)
        on = model.compress(1.0, input_shape=shape)
        os.environ["CSUB_WINOGRAD"] = "0"
        off = model.compress(1.0, input_shape=shape)
        os.environ.pop("CSUB_WINOGRAD", None)
        x = np.random.default_rng(1).normal(0, 1, (batch,) + shape).astype(np.float32)
        err = float(np.max(np.abs(on(x) - off(x))) / np.max(np.abs(off(x))))
        reps = args.reps if batch * np.prod(shape) < 1e6 else max(3, args.reps // 2)
        for threads in args.threads:
            csub.set_num_threads(threads)
            (t_off, t_on), (a, b) = interleaved_ms([lambda: off(x), lambda: on(x)], reps)
            ratio = statistics.median(ta / tb for ta, tb in zip(a, b))
            print(f"| {net} | {batch} | {threads} | {t_off:.3f} | {t_on:.3f} | {ratio:.2f}x | {err:.1e} |",
                  flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--layers-only", action="store_true")
    g.add_argument("--nets-only", action="store_true")
    args = ap.parse_args()
    print_machine()
    print(f"csub ISA level: {_core.isa()}")
    if not args.nets_only:
        layers(args)
    if not args.layers_only:
        nets(args)


if __name__ == "__main__":
    main()
