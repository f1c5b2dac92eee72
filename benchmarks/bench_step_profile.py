#!/usr/bin/env python3
"""Where one cPreResNet20 training step spends its time, by kind of kernel.

The step is the one of ``bench_engine.py`` (2.) and ``bench_sparse.py`` (b):
batch 128 of 32x32x3, forward, cross-entropy, backward, SGD (momentum 0.9,
weight decay 5e-4), group norm. Configurations:

  dense         ``cpreresnet20(norm="gn")``, nothing masked;
  line a=1.0    ``regime="unstructured", subspace="line"`` at alpha 1.0 (the
                baseline ``bench_sparse.py`` divides by: keep 1.0, nothing masked);
  line a=0.05   the same model at alpha 0.05: keep 0.05 of the block convs'
                weights (top-k mask every step, CSR kernels below the crossover);
  line a=...    --alphas adds more: at 0.002 (a few hundred kept weights in the
                whole network) the step is the floor of the sparse steps, what
                the CSR kernels' memory traffic, the norms and the rest cost with
                almost no multiply-adds left.

Every function of ``csub._core`` is wrapped by a timer for the run, so each
row is the time spent inside that family of C kernels per step (medians over
the steps; the sparse convolutions apart by kernel size); "python + numpy" is the step's wall time less all of them (layer
bookkeeping, ``np.zeros`` of gradient buffers, ``grad +=`` and ``zero_grad``).
The configurations' steps alternate, so a background load hits all alike.
Nothing here asserts a timing.

    python benchmarks/bench_step_profile.py [--threads 1 2] [--steps 7] [--alphas 0.01 0.002]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    import csub
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import csub
from csub import _core
from csub.models import cpreresnet20
from csub.nn.loss import CrossEntropyLoss
from csub.optim import SGD
from common import train_step  # noqa: E402 (benchmarks/ is on the path: this script's folder)

BATCH = 128
IMAGE = 32

# kernel family -> row label (anything else lands in "other kernels")
KINDS = [
    ("conv dense (fwd, bwd)", ("conv2d_forward", "conv2d_backward")),
    ("conv sparse CSR 1x1 (fwd, bwd)", ("conv2d_sparse_forward/1x1", "conv2d_sparse_backward/1x1")),
    ("conv sparse CSR 3x3 (fwd, bwd)", ("conv2d_sparse_forward/3x3", "conv2d_sparse_backward/3x3")),
    ("CSR build from mask", ("csr_from_mask",)),
    ("top-k mask + apply", ("topk_mask", "apply_mask")),
    ("group norm (fwd, bwd)", ("groupnorm_forward", "groupnorm_backward", "groupnorm_relu_forward",
                               "groupnorm_relu_backward")),
    ("relu (fwd, bwd)", ("relu_forward", "relu_backward")),
    ("residual add", ("add",)),
    ("line interpolate (fwd, bwd)", ("line_forward", "line_backward")),
    ("linear, pool, loss", ("linear_forward", "linear_backward", "gap_forward", "gap_backward",
                            "cross_entropy_forward", "cross_entropy_backward")),
    ("SGD update", ("sgd_step",)),
]


class Profiler:
    """Wraps every callable of csub._core with a timer accumulating per name."""

    def __init__(self):
        self.acc = {}
        self.saved = {}

    def install(self):
        for name in dir(_core):
            fn = getattr(_core, name)
            if name.startswith("_") or not callable(fn) or isinstance(fn, type):
                continue
            self.saved[name] = fn
            setattr(_core, name, self._wrap(name, fn))

    def uninstall(self):
        for name, fn in self.saved.items():
            setattr(_core, name, fn)

    def _wrap(self, name, fn):
        acc = self.acc
        by_kernel = name in ("conv2d_sparse_forward", "conv2d_sparse_backward")  # apart by kernel size

        def timed(*args, **kw):
            key = name
            if by_kernel:
                shape = args[4] if len(args) > 4 else kw["weight_shape"]
                key = f"{name}/{shape[2]}x{shape[3]}"
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0
        return timed


def make_step(model, alpha, x, y):
    model.train()
    return train_step(model, SGD(model.parameters(), 0.01, 0.9, 5e-4), CrossEntropyLoss(), x, y, alpha)


def profile(threads, steps, alphas=()):
    csub.set_num_threads(threads)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, IMAGE, IMAGE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int64)
    csub.manual_seed(0)
    dense = cpreresnet20(norm="gn")
    csub.manual_seed(0)
    line = cpreresnet20(norm="gn", regime="unstructured", subspace="line")
    configs = [("dense", make_step(dense, None, x, y)), ("line a=1.0", make_step(line, 1.0, x, y)),
               ("line a=0.05", make_step(line, 0.05, x, y))]
    configs += [(f"line a={a:g}", make_step(line, a, x, y)) for a in alphas if a not in (1.0, 0.05)]
    for _, fn in configs:  # warm-up
        fn()
    prof = Profiler()
    prof.install()
    rec = {name: [] for name, _ in configs}
    try:
        for _ in range(steps):
            for name, fn in configs:
                prof.acc.clear()
                t0 = time.perf_counter()
                fn()
                rec[name].append((time.perf_counter() - t0, dict(prof.acc)))
    finally:
        prof.uninstall()

    def rows_of(samples):
        out = {}
        for wall, acc in samples:
            known = 0.0
            for label, names in KINDS:
                t = sum(acc.get(n, 0.0) for n in names)
                out.setdefault(label, []).append(t)
                known += t
            other = sum(acc.values()) - known
            out.setdefault("other kernels", []).append(other)
            out.setdefault("python + numpy", []).append(wall - sum(acc.values()))
            out.setdefault("step (wall)", []).append(wall)
        return {k: statistics.median(v) for k, v in out.items()}

    table = {name: rows_of(s) for name, s in rec.items()}
    labels = [k for k, _ in KINDS] + ["other kernels", "python + numpy", "step (wall)"]
    print(f"\n===== {threads} thread{'s' if threads > 1 else ''}, medians of {steps} steps, ms per step"
          " (share of the step) =====")
    print(f"{'kind':<30}" + "".join(f" | {name:>16}" for name, _ in configs))
    for lab in labels:
        cells = []
        for name, _ in configs:
            t, wall = table[name][lab], table[name]["step (wall)"]
            cells.append(f"{t * 1e3:8.1f} ({100 * t / wall:3.0f}%)" if lab != "step (wall)" else f"{t * 1e3:16.1f}")
        print(f"{lab:<30}" + "".join(f" | {c:>16}" for c in cells))
    for name, _ in configs[2:]:
        r = table[name]["step (wall)"] / table["line a=1.0"]["step (wall)"]
        print(f"   keep-{name[len('line a='):]} step / alpha-1.0 step: {r:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--alphas", type=float, nargs="*", default=[],
                    help="more alphas of the line model to profile (in (0, 1])")
    args = ap.parse_args()
    if any(not 0.0 < a <= 1.0 for a in args.alphas):
        ap.error("--alphas: each in (0, 1]")
    print(f"csub {csub.__version__} from {os.path.dirname(csub.__file__)}; load average {os.getloadavg()[0]:.1f}"
          f" on {os.cpu_count()} CPUs (a shared machine: read the shares and ratios)")
    for n in args.threads:
        profile(n, args.steps, args.alphas)


if __name__ == "__main__":
    main()
