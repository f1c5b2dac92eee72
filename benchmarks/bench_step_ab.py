#!/usr/bin/env python3
"""Two builds of csub in one process, their cPreResNet20 training steps alternating.

On a machine shared with other work the load changes within seconds, so
timings of two builds taken one after the other (or in two processes) are
not comparable. This loads the checkout it lives in ("new") and another
built checkout ("base", e.g. an older commit: ``git archive <rev> | tar -x
-C DIR`` and ``python setup.py build_ext --inplace`` there) side by side,
as two packages, and alternates their steps: base, new, base, new, ...
Each configuration is the step of ``bench_engine.py`` (2.) and
``bench_sparse.py`` (b): batch 128 of 32x32x3, forward, cross-entropy,
backward, SGD (momentum 0.9, weight decay 5e-4), group norm:

  dense         ``cpreresnet20(norm="gn")``;
  dense bn      ``cpreresnet20(norm="bn")`` (batch statistics);
  line a=1.0    ``regime="unstructured", subspace="line"`` at alpha 1.0;
  line a=0.05   the same at alpha 0.05 (keep 0.05 of the block convs' weights).

Prints median ms per step of each build, new / base, and each build's
keep-0.05 / alpha-1.0 ratio; the two builds' first losses must agree.
Nothing here asserts a timing.

    python benchmarks/bench_step_ab.py --base DIR [--threads 1 2] [--reps 9]
"""
import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from common import train_step  # benchmarks/common.py (imports no csub)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, IMAGE = 128, 32


def load(tree, name, tmp):
    """The csub package of checkout ``tree`` imported as top-level package ``name``."""
    link = os.path.join(tmp, name)
    os.symlink(os.path.join(os.path.abspath(tree), "csub"), link)
    return importlib.import_module(name)


def steps(pkg, x, y):
    """(label, step function, first loss) of each configuration, built with package pkg."""
    models = importlib.import_module(pkg.__name__ + ".models")
    optim = importlib.import_module(pkg.__name__ + ".optim")
    loss = importlib.import_module(pkg.__name__ + ".nn.loss")
    out = []
    for label, kw, alpha in (("dense", dict(norm="gn"), None),
                             ("dense bn", dict(norm="bn"), None),
                             ("line a=1.0", dict(norm="gn", regime="unstructured", subspace="line"), 1.0),
                             ("line a=0.05", dict(norm="gn", regime="unstructured", subspace="line"), 0.05)):
        pkg.manual_seed(0)
        model = models.cpreresnet20(**kw)
        model.train()
        opt = optim.SGD(model.parameters(), 0.01, 0.9, 5e-4)
        crit = loss.CrossEntropyLoss()
        first = []

        def step(run=train_step(model, opt, crit, x, y, alpha), first=first):
            first.append(run())
        out.append((label, step, first))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="a built checkout of csub to compare against")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=9, help="steps per configuration and build (median)")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.base, "csub")):
        sys.exit(f"--base: {args.base!r} holds no csub package")
    tmp = tempfile.mkdtemp(prefix="csub_ab_")
    sys.path.insert(0, tmp)
    base, new = load(args.base, "csub_base", tmp), load(HERE, "csub_new", tmp)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, IMAGE, IMAGE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int64)
    print(f"base {os.path.abspath(args.base)}, new {HERE}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs (a shared machine: read the ratios)")
    for n in args.threads:
        base.set_num_threads(n)
        new.set_num_threads(n)
        sb, sn = steps(base, x, y), steps(new, x, y)
        times = {(w, lab): [] for w in ("base", "new") for lab, _, _ in sb}
        for (lab, fb, _), (_, fn, _) in zip(sb, sn):  # warm-up
            fb()
            fn()
        for _ in range(args.reps):
            for (lab, fb, _), (_, fn, _) in zip(sb, sn):
                for w, f in (("base", fb), ("new", fn)):
                    t0 = time.perf_counter()
                    f()
                    times[(w, lab)].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n===== {n} thread{'s' if n > 1 else ''}, medians of {args.reps} alternating steps =====")
        print(f"{'config':<12} | {'base ms':>8} | {'new ms':>8} | {'new/base':>8} | first loss base / new")
        for (lab, _, lb), (_, _, ln) in zip(sb, sn):
            flag = "" if abs(lb[0] - ln[0]) <= 1e-5 * max(1.0, abs(lb[0])) else "  MISMATCH"
            print(f"{lab:<12} | {med[('base', lab)] * 1e3:8.1f} | {med[('new', lab)] * 1e3:8.1f} |"
                  f" {med[('new', lab)] / med[('base', lab)]:8.3f} | {lb[0]:.6f} / {ln[0]:.6f}{flag}")
        for w in ("base", "new"):
            print(f"   {w}: keep-0.05 / alpha-1.0 step = {med[(w, 'line a=0.05')] / med[(w, 'line a=1.0')]:.3f}")


if __name__ == "__main__":
    main()
