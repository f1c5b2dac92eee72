#!/usr/bin/env python3
"""One image on one thread or two: where splitting an image across the threads pays.

The runtime splits each image across the threads layer by layer when a batch
has fewer images than threads and the network cannot run as row bands
(csrc/runtime_bands.c; CSUB_BANDS=0 in the environment measures the split
alone), unless the forward is below RT_SPLIT_MIN_FLOPS float operations
(csrc/runtime_internal.h): then it runs on the calling thread. This
times the batch-1 forward of cPreResNet20 and ResNet18 (batch norm, dense and
90 % sparse, the networks of bench_peers.py) at several input sizes with
csub.set_num_threads(1) and (2), alternating, and prints the medians and the
2-thread / 1-thread ratio with the forward's MFLOP: below the threshold the
ratio is 1 (both run on one thread), above it the split should be below 1.

    python benchmarks/bench_split.py [--rounds 3]
"""
import argparse
import os
import sys
import time

import numpy as np

try:
    import csub
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import csub
import bench_peers  # noqa: E402 (benchmarks/ is on the path: this script's folder)

CASES = [("cpreresnet20-bn", False, 32), ("cpreresnet20-bn", True, 32), ("cpreresnet20-gn", False, 32),
         ("cpreresnet20-bn", False, 64), ("resnet18-bn", True, 64), ("resnet18-bn", False, 64),
         ("resnet18-bn", False, 128), ("resnet18-bn", True, 224), ("resnet18-bn", False, 224)]


def median_ms(rt, x, seconds=0.3):
    for _ in range(3):
        rt(x)
    t0 = time.perf_counter()
    rt(x)
    reps = max(5, int(seconds / max(1e-5, time.perf_counter() - t0)))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        rt(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternations of 1 and 2 threads (the best median of each)")
    args = ap.parse_args()
    before = csub.get_num_threads()
    print("| network | input | MFLOP | 1 thread ms | 2 threads ms | 2 / 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for net, sparse, side in CASES:
        model = bench_peers.build(net, sparse)
        rt = model.compress(bench_peers.KEEP if sparse else 1.0, input_shape=(3, side, side))
        x = np.random.default_rng(0).normal(size=(1, 3, side, side)).astype(np.float32)
        best = {}
        for _ in range(args.rounds):
            for t in (1, 2):
                csub.set_num_threads(t)
                ms = median_ms(rt, x)
                best[t] = min(best.get(t, ms), ms)
        name = f"{net}{' 90 % sparse' if sparse else ''}"
        print(f"| {name} | {side}x{side} | {rt.info()['flops'] / 1e6:.0f} | {best[1]:.3f} | {best[2]:.3f} | "
              f"{best[2] / best[1]:.2f} |")
    csub.set_num_threads(before)


if __name__ == "__main__":
    main()
