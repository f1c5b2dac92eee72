#!/usr/bin/env python3
"""Time DataLoader batch preparation with augmentation on CIFAR-sized data.

One epoch over 50000 random uint8 images of shape (3, 32, 32) at batch size
128 with shuffle + random crop (pad 4) + horizontal flip; prints the median
and mean milliseconds per batch (each batch timed separately), and the same
for the plain (no augmentation) path.

    python benchmarks/bench_data.py [--n 50000] [--batch-size 128] [--epochs 1]
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np


def _load_data_module():
    try:
        from csub import data
        return data
    except ImportError:
        # Fall back to the source file, e.g. when the compiled core is not built.
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "csub", "data.py")
        spec = importlib.util.spec_from_file_location("_csub_data_bench", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def time_epoch(loader):
    times = []
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    data = _load_data_module()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.n)
    for augment in (True, False):
        loader = data.DataLoader(images, labels, batch_size=args.batch_size, shuffle=True,
                                 augment=augment, mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD)
        ms = np.concatenate([time_epoch(loader) for _ in range(args.epochs)])
        label = "augment (crop+flip)" if augment else "no augmentation    "
        print(f"{label}: {np.median(ms):.3f} ms/batch median, {ms.mean():.3f} mean, "
              f"{ms.sum() / 1e3 / args.epochs:.2f} s/epoch "
              f"({len(ms) // args.epochs} batches of {args.batch_size}x3x32x32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
