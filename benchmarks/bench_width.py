"""Training step and inference time of cPreResNet20 at widths 1.0, 0.75, 0.5, 0.25, as ratios to width 1.0.

    python benchmarks/bench_width.py [--batch 128] [--infer-batch 64] [--reps 5] [--threads 2]

All numbers come from one run (medians); the structured model computes with
the first channels of every hidden layer, so the matmuls really shrink. The
ideal ratios are the FLOP ratios, printed beside the measured ones.
"""
import argparse

import numpy as np
from common import median_time, print_machine

import csub
from csub import models, nn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    csub.set_num_threads(args.threads)
    print_machine()
    print(f"csub {csub.__version__}, {csub.get_num_threads()} threads")
    print(f"cPreResNet20 (structured, instance norm), training batch {args.batch}, inference batch "
          f"{args.infer_batch}, median of {args.reps}\n")
    csub.manual_seed(0)
    m = models.cpreresnet20(regime="structured", subspace="line", norm="in")
    rng = np.random.default_rng(0)
    xt = rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32)
    yt = rng.integers(0, 10, args.batch)
    xi = rng.standard_normal((args.infer_batch, 3, 32, 32)).astype(np.float32)
    crit = nn.CrossEntropyLoss()
    rows = []
    for w in (1.0, 0.75, 0.5, 0.25):
        m.set_alpha((w - 0.25) / 0.75)
        flops = m.flops((3, 32, 32))

        def step():
            m.train()
            m.zero_grad()
            crit(m(xt), yt)
            m.backward(crit.backward())

        def infer():
            m.eval()
            m(xi)

        rows.append((w, flops, median_time(step, args.reps), median_time(infer, args.reps)))
    f1, s1, i1 = rows[0][1:]
    print(f"{'width':>6} {'MFLOP':>8} {'ideal':>6} | {'train ms':>9} {'ratio':>6} | {'infer ms':>9} {'ratio':>6}")
    for w, f, s, i in rows:
        print(f"{w:6.2f} {f / 1e6:8.2f} {f / f1:6.3f} | {s * 1e3:9.1f} {s / s1:6.3f} | {i * 1e3:9.1f} {i / i1:6.3f}")
    print("\ngoal: width 0.5 at most 0.4x, width 0.25 at most 0.15x of width 1.0")


if __name__ == "__main__":
    main()
