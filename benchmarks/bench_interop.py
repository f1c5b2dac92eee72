"""Compressed-runtime speed-ups of a reference-code line converted by csub.interop.from_reference
against a csub-built line of the same shapes (cPreResNet20, 32x32, batch 1 and 16).

For each regime the speed-up is latency(peer) / latency(compressed) with the peer the same
network's uncompressed end (unstructured keep 1.0 vs 0.1, structured width 1.0 vs 0.5) or, for
8 bits, the float32 network without a regime. The networks of one row are timed interleaved,
``--reps`` forwards each; figures are medians of the per-forward ratios.

  python benchmarks/bench_interop.py --threads 1 --reps 41
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import csub  # noqa: E402
from csub import models  # noqa: E402
from csub.interop import from_reference  # noqa: E402


def reference_line(regime, norm):
    import torch
    import torch_lcs

    torch.set_num_threads(1)
    net = torch_lcs.build(regime, "line", norm, calibration=torch.randn(8, 3, 32, 32))
    return from_reference(torch_lcs.reference_state_dict(net), regime=regime, norm=norm)


def own_line(regime, norm, x):
    m = models.cpreresnet20(regime=regime, subspace="line", norm=norm)
    if regime == "quantized":
        m.train()
        m.set_quantize_inputs(True)
        for a in (0.2, 0.6, 1.0):
            m.set_alpha(a)(x)
    return m.eval()


def time_pair(peer, fast, x, reps):
    for _ in range(3):
        peer(x), fast(x)
    ratios, tp, tf = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        peer(x)
        t1 = time.perf_counter()
        fast(x)
        t2 = time.perf_counter()
        tp.append(t1 - t0)
        tf.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return np.median(ratios), np.median(tp) * 1e3, np.median(tf) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=41)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = p.parse_args()
    csub.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x_cal = rng.normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"median of {args.reps} interleaved forwards")
    print(f"{'regime':<13} {'batch':>5} {'line':<10} {'peer ms':>8} {'compressed ms':>14} {'speed-up':>9}")
    rows = (("unstructured", "gn", 1.0, 0.1), ("structured", "in", 1.0, 1 / 3), ("quantized", "gn", None, 1.0))
    for regime, norm, hi, lo in rows:
        nets = {"reference": reference_line(regime, norm), "csub": own_line(regime, norm, x_cal)}
        for batch in args.batch:
            x = rng.normal(0, 1, (batch, 3, 32, 32)).astype(np.float32)
            for name, m in nets.items():
                fast = m.compress(lo)
                if hi is None:  # 8 bits against the same network in float32
                    dense = models.cpreresnet20(norm=norm, layout=m.config["layout"])
                    peer = dense.compress(1.0)
                else:
                    peer = m.compress(hi)
                r, tp, tf = time_pair(peer, fast, x, args.reps)
                print(f"{regime:<13} {batch:>5} {name:<10} {tp:8.3f} {tf:14.3f} {r:8.2f}x")


if __name__ == "__main__":
    main()
