#!/usr/bin/env python3
"""Masked sparse against dense: per-layer crossover densities and the cPreResNet20 training step.

One run prints, after the machine, its load and the thread counts:

(a) every compressible conv shape of cPreResNet20 (32x32 inputs, batch 128)
    and a few Linear shapes: median time of forward + backward (dx and dw)
    on the dense path (``conv2d_forward`` + ``conv2d_backward`` on the masked
    weight) and the ratio sparse / dense of the sparse path
    (``csr_from_mask`` + ``conv2d_sparse_forward`` + ``conv2d_sparse_backward``,
    dw at the kept positions) at each keep fraction, and the crossover: the
    keep fraction at which the ratio reaches 1 (linear interpolation between
    the measured fractions). "net" sums the convs over the network (each shape
    times its count): its crossover is the one that minimises the network's
    conv time, and the one ``csub.nn.layers.SPARSE_CROSSOVER`` records.
(b) one training step of cPreResNet20 (regime="unstructured",
    subspace="line", group norm, batch 128, SGD momentum 0.9, wd 5e-4) at
    alpha = 1.0, 0.10, 0.05 (``model.set_alpha``): forward, cross-entropy,
    backward, optimizer step; ratio to the alpha = 1.0 step (dense: nothing
    masked), and the same alphas with the sparse path switched off (dense
    kernels on the masked weights).

Times are medians of samples that alternate between the configurations
compared (so a background load hits all of them alike); read the ratios, not
the absolute times, on a busy machine. Nothing here asserts a timing.

    python benchmarks/bench_sparse.py [--quick] [--threads 1 2] [--skip-layers] [--skip-step]
"""
import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
from common import conv_shapes as common_conv_shapes
from common import out_size, print_machine

try:
    import csub
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import csub
from csub import _core
from csub.models import cpreresnet20
from csub.nn import layers
from csub.nn.loss import CrossEntropyLoss
from csub.optim import SGD

BATCH = 128
IMAGE = 32
KEEPS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
ALPHAS = (1.0, 0.10, 0.05)
LINEAR_SHAPES = ((300, 100), (512, 512), (2048, 2048))  # (in, out); MLP's hidden layer first


# ----------------------------------------------------------------- timing

def _inner(fn, min_sample):
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(min_sample / max(time.perf_counter() - t0, 1e-9)))


def bench_alternating(fns, reps, min_sample=0.02):
    """Median seconds per call of each fn; one sample of each in turn, `reps` rounds."""
    inner = [_inner(f, min_sample) for f in fns]
    times = [[] for _ in fns]
    for _ in range(reps):
        for f, n, t in zip(fns, inner, times):
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            t.append((time.perf_counter() - t0) / n)
    return [statistics.median(t) for t in times]


def crossover(keeps, ratios):
    """Keep fraction where ratio sparse/dense reaches 1, interpolating between measured points;
    keeps are decreasing. ">= k" when even the densest is faster, "< k" when none is."""
    if ratios[0] <= 1.0:
        return keeps[0], f">={keeps[0]:.2f}"
    for i in range(1, len(keeps)):
        if ratios[i] <= 1.0:
            k0, k1, r0, r1 = keeps[i - 1], keeps[i], ratios[i - 1], ratios[i]
            k = k1 + (k0 - k1) * (1.0 - r1) / (r0 - r1)
            return k, f"{k:.2f}"
    return 0.0, f"<{keeps[-1]:.2f}"


# ---------------------------------------------------------------- machine

def header(args):
    print_machine()
    print(f"versions: csub {csub.__version__}, numpy {np.__version__}, python {platform.python_version()}")
    print(f"threads : csub {', '.join(map(str, args.threads))} (each section runs once per count)")
    env = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "OPENBLAS_", "GOMP_"))}
    print(f"env     : {env if env else 'no MALLOC_* / OMP_* / OPENBLAS_* / GOMP_* set'}")
    print(f"mode    : {'--quick' if args.quick else 'full'}; batch {BATCH}; times are medians in ms;"
          f" SPARSE_CROSSOVER now {layers.SPARSE_CROSSOVER}")


# -------------------------------------------------------------- (a) layers

def conv_shapes():
    """Distinct (C, K, R, stride, padding, H, W) of cPreResNet20's compressible convs, with counts."""
    return common_conv_shapes(cpreresnet20(norm="gn", regime="unstructured"), lambda m: m.compressible_layers(), IMAGE)


def conv_case(rng, C, K, R, s, p, H, W):
    P, Q = out_size(H, R, s, p), out_size(W, R, s, p)
    x = rng.standard_normal((BATCH, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32) * np.float32(math.sqrt(2.0 / (K * R * R)))
    dy = rng.standard_normal((BATCH, K, P, Q), dtype=np.float32)
    dw = np.zeros_like(w)

    def make(keep):
        mask = _core.topk_mask(w, keep) if keep < 1.0 else np.ones(w.shape, np.uint8)
        wm = _core.apply_mask(w, mask)

        def dense():
            _core.conv2d_forward(x, wm, None, s, p)
            _core.conv2d_backward(x, wm, dy, dw, None, s, p)

        def sparse():
            csr = _core.csr_from_mask(wm, mask)
            _core.conv2d_sparse_forward(x, *csr, wm.shape, None, s, p)
            _core.conv2d_sparse_backward(x, *csr, wm.shape, dy, dw, None, s, p)

        return dense, sparse

    return make


def linear_case(rng, IN, O):
    x = rng.standard_normal((BATCH, IN), dtype=np.float32)
    w = rng.standard_normal((O, IN), dtype=np.float32)
    dy = rng.standard_normal((BATCH, O), dtype=np.float32)
    dw = np.zeros_like(w)

    def make(keep):
        mask = _core.topk_mask(w, keep) if keep < 1.0 else np.ones(w.shape, np.uint8)
        wm = _core.apply_mask(w, mask)

        def dense():
            _core.linear_forward(x, wm)
            _core.linear_backward(x, wm, dy, dw)

        def sparse():
            csr = _core.csr_from_mask(wm, mask)
            _core.linear_sparse_forward(x, *csr, wm.shape)
            _core.linear_sparse_backward(x, *csr, wm.shape, dy, dw)

        return dense, sparse

    return make


def bench_layers(reps):
    print()
    print(f"(a) forward + backward (dx, dw), batch {BATCH}: dense ms, then sparse / dense at each keep"
          " fraction, and the crossover keep fraction (sparse faster at or below it)")
    head = f"{'layer':<27} {'n':>2} | {'dense ms':>8} |" + "".join(f" {k:>5}" for k in KEEPS) + " | cross"
    print(head)
    rng = np.random.default_rng(0)
    net_dense = [0.0] * len(KEEPS)
    net_sparse = [0.0] * len(KEEPS)
    per_kind = {}
    rows = [("conv", f"conv {C}->{K} {R}x{R}/{s} {H}x{W}", cnt, conv_case(rng, C, K, R, s, p, H, W))
            for (C, K, R, s, p, H, W), cnt in conv_shapes().items()]
    rows += [("linear", f"linear {i}->{o}", 1, linear_case(rng, i, o)) for i, o in LINEAR_SHAPES]
    for kind, label, count, make in rows:
        ratios, dense_ms = [], []
        for j, keep in enumerate(KEEPS):
            dense, sparse = make(keep)
            td, ts = bench_alternating([dense, sparse], reps)
            ratios.append(ts / td)
            dense_ms.append(td)
            if kind == "conv":
                net_dense[j] += td * count
                net_sparse[j] += ts * count
        k, txt = crossover(KEEPS, ratios)
        per_kind.setdefault(kind, []).append(k)
        print(f"{label:<27} {count:>2} | {statistics.median(dense_ms) * 1e3:8.2f} |"
              + "".join(f" {r:5.2f}" for r in ratios) + f" | {txt}", flush=True)
    net = [s / d for s, d in zip(net_sparse, net_dense)]
    k, txt = crossover(KEEPS, net)
    print(f"{'net: sum of the convs (x n)':<27} {'':>2} | {statistics.median(net_dense) * 1e3:8.2f} |"
          + "".join(f" {r:5.2f}" for r in net) + f" | {txt}")
    lo = min(per_kind["conv"])
    print(f"   conv crossover: network {txt}, smallest single shape {lo:.2f};"
          f" linear crossovers: {', '.join(f'{v:.2f}' for v in per_kind['linear'])}")


# ---------------------------------------------------------------- (b) step

def bench_step(reps):
    print()
    print(f"(b) training step of cPreResNet20, unstructured line, group norm, batch {BATCH}, 32x32x3:"
          " median ms and ratio to the alpha = 1.0 step")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, IMAGE, IMAGE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int64)
    csub.manual_seed(0)
    model = cpreresnet20(norm="gn", regime="unstructured", subspace="line")
    model.train()
    opt = SGD(model.parameters(), 0.01, 0.9, 5e-4)
    crit = CrossEntropyLoss()
    saved = dict(layers.SPARSE_CROSSOVER)

    def step_at(alpha, sparse):
        def step():
            model.set_alpha(alpha)
            layers.SPARSE_CROSSOVER.update(saved if sparse else {k: 0.0 for k in saved})
            opt.zero_grad()
            crit(model(x), y)
            model.backward(crit.backward())
            opt.step()
        return step

    configs = [(1.0, True)] + [(a, s) for a in ALPHAS[1:] for s in (True, False)]
    try:
        times = bench_alternating([step_at(a, s) for a, s in configs], reps, min_sample=0)
    finally:
        layers.SPARSE_CROSSOVER.update(saved)
    base = times[0]
    print(f"{'alpha':>6} {'path':<26} | {'ms':>8} {'img/s':>6} | {'ratio':>5}")
    for (a, s), t in zip(configs, times):
        path = "dense (nothing masked)" if a == 1.0 else ("sparse (auto)" if s else "dense kernels, masked w")
        print(f"{a:6.2f} {path:<26} | {t * 1e3:8.1f} {BATCH / t:6.0f} | {t / base:5.2f}")
    print("   (targets: alpha 0.05 <= 0.50, alpha 0.10 <= 0.65 of the alpha = 1.0 step)")


def region_cost(n):
    """Median ms of one tiny parallel kernel on n threads (70000 floats: ReLU splits it over the
    threads). Tens of microseconds on an idle machine; on a loaded one each parallel region
    waits for a time slice, which then dominates many-threaded timings."""
    csub.set_num_threads(n)
    x = np.ones(70000, np.float32)
    return bench_alternating([lambda: _core.relu_forward(x)], 15, min_sample=0)[0] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="csub thread counts to run (default 2)")
    ap.add_argument("--skip-layers", action="store_true", help="skip (a)")
    ap.add_argument("--skip-step", action="store_true", help="skip (b)")
    args = ap.parse_args()
    layer_reps, step_reps = (3, 3) if args.quick else (7, 7)
    header(args)
    t0 = time.perf_counter()
    for n in args.threads:
        cost = region_cost(n)
        csub.set_num_threads(n)
        print(f"\n===== {n} thread{'s' if n > 1 else ''} ===== (one tiny parallel kernel: {cost:.3f} ms)")
        if not args.skip_layers:
            bench_layers(layer_reps)
        if not args.skip_step:
            bench_step(step_reps)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
