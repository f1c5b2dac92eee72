#!/usr/bin/env python3
"""Two builds' compressed runtimes in one process, their forwards alternating.

The peers' table (``bench_peers.py``) times each runtime in its own process, minutes apart; on
a machine whose speed drifts with its host's load, a few percent between two csub builds is
lost in that drift. This loads the checkout it runs from ("new") and another built checkout
("base", e.g. a detached worktree of an older commit, built with ``python setup.py build_ext
--inplace``) side by side, loads the same model file into each (``bench_peers.build``'s
networks: the same weights, norms and statistics, dense or 90 % sparse) and alternates their
forwards: new, base, base, new, ... Prints each build's median ms, the median of the per-pair
ratios base / new (above 1: new is faster) and the largest difference of their logits.
Nothing here asserts a timing.

    python benchmarks/bench_runtime_ab.py --base DIR [--nets cpreresnet20-bn resnet18-bn]
        [--cases d1 s1 d64 s64] [--threads 1 2] [--reps 301]

A case is d (dense) or s (90 % sparse) and a batch; ResNet18 takes d1 s1 d16 s16 by default and
reps / 10 forwards.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.getcwd())  # the checkout run from, before any installed csub
from csub import _core, modelfile  # noqa: E402
from common import load_core, print_machine  # noqa: E402
import bench_peers as bp  # noqa: E402


def compare(cores, net, sparse, batch, threads, reps):
    model = bp.build(net, sparse)
    shape = bp.NETS[net][1]
    alpha = bp.KEEP if sparse else 1.0
    model.set_alpha(alpha)
    data = modelfile.to_bytes(model, shape)
    nets = {}
    for name, core in cores.items():
        core.set_num_threads(threads)
        m = core.model_load(data)
        core.model_set_alpha(m, alpha)
        nets[name] = (core, m)
    x = np.random.default_rng(0).normal(size=(batch,) + shape).astype(np.float32)
    outs = {k: c.model_forward(m, x) for k, (c, m) in nets.items()}
    diff = float(np.abs(outs["base"] - outs["new"]).max())
    t = {"base": [], "new": []}
    for r in range(reps):
        for k in (("new", "base") if r % 2 == 0 else ("base", "new")):
            core, m = nets[k]
            t0 = time.perf_counter()
            core.model_forward(m, x)
            t[k].append(time.perf_counter() - t0)
    b, n = np.array(t["base"]), np.array(t["new"])
    return np.median(b) * 1e3, np.median(n) * 1e3, float(np.median(b / n)), diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a checkout with its extension built in place")
    ap.add_argument("--nets", nargs="+", choices=["cpreresnet20-gn", "cpreresnet20-bn", "resnet18-bn"],
                    default=["cpreresnet20-bn", "resnet18-bn"])
    ap.add_argument("--cases", nargs="+", help="d or s and a batch, e.g. d1 s64 (default per network)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=301, help="forwards of each build a case (ResNet18: a tenth)")
    args = ap.parse_args()
    for c in args.cases or []:
        if c[:1] not in ("d", "s") or not c[1:].isdigit() or int(c[1:]) < 1:
            ap.error(f"--cases: expected d or s and a batch (e.g. d1, s64), got {c!r}")
    print_machine()
    cores = {"base": load_core(args.base), "new": _core}
    print(f"base: {args.base}\nnew:  {os.getcwd()}")
    print(f"{'network':16s} {'case':>5s} {'thr':>3s} | {'base ms':>9s} {'new ms':>9s} | base/new | max |diff|")
    for net in args.nets:
        r18 = net.startswith("resnet18")
        cases = args.cases or (["d1", "s1", "d16", "s16"] if r18 else ["d1", "s1", "d64", "s64"])
        for threads in args.threads:
            for c in cases:
                reps = max(5, args.reps // 10) if r18 else args.reps
                bms, nms, ratio, diff = compare(cores, net, c[0] == "s", int(c[1:]), threads, reps)
                print(f"{net:16s} {c:>5s} {threads:3d} | {bms:9.3f} {nms:9.3f} | {ratio:8.3f} | {diff:.1e}",
                      flush=True)


if __name__ == "__main__":
    main()
