"""Sparse convolutions as compiled code (csrc/sparse_jit.c) against the gather kernels (csrc/csr.c),
in the whole runtime.

    python benchmarks/bench_sparse_jit.py [--reps 11] [--threads 1 2] [--nets resnet18-bn ...] [--layers]

For each network of benchmarks/bench_peers.py (its weights, batch norms and statistics), 90 %
sparse (keep 0.1 of the block convs' weights): two runtimes of one model in one process,
compressed with CSUB_SPARSE_JIT unset (the 3x3 and larger sparse convs as code) and with
CSUB_SPARSE_JIT=0 (read at set_alpha), timed interleaved (which runs first alternates), medians
of --reps forwards, the median of the per-repetition ratios (above 1: the code is faster), the
largest difference of their logits relative to the largest logit, the time set_alpha takes (the
median over switches between keep 0.1 and 0.2: top-k, CSR and, for the code, compiling it) and
the memory each holds (memory_bytes at the batch). --layers adds, per network at batch 1 on one
thread, each sparse conv's time in both runtimes (``_core.model_profile``, medians of --reps).
Nothing here asserts a timing.
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
from bench_peers import KEEP, NETS, build  # noqa: E402
from bench_winograd import interleaved_ms  # noqa: E402
from common import print_machine  # noqa: E402

BATCHES = {"cpreresnet20-gn": (1, 64), "cpreresnet20-bn": (1, 64), "resnet18-bn": (1, 16)}


def compressed(model, shape, jit):
    """The runtime at KEEP with the code (jit) or the gather, and the median seconds of its set_alpha
    (CSUB_SPARSE_JIT is read there) switching between KEEP and 2 KEEP."""
    if jit:
        os.environ.pop("CSUB_SPARSE_JIT", None)
    else:
        os.environ["CSUB_SPARSE_JIT"] = "0"
    net = model.compress(KEEP, input_shape=shape)
    times = []
    for alpha in (2 * KEEP, KEEP) * 3:
        t = time.perf_counter()
        net.set_alpha(alpha)
        times.append(time.perf_counter() - t)
    os.environ.pop("CSUB_SPARSE_JIT", None)
    return net, statistics.median(times)


def layers(name, gather, code, shape, reps):
    """Each sparse conv's ms in both runtimes at batch 1, one thread (the profiles alternate)."""
    csub.set_num_threads(1)
    x = np.random.default_rng(1).normal(0, 1, (1,) + shape).astype(np.float32)
    runs = [[], []]
    for _ in range(reps):
        for i, net in enumerate((gather, code)):
            runs[i].append([ms for _, ms in _core.model_profile(net._m, x)])
    names = [n for n, _ in _core.model_profile(code._m, x)]
    tg, tc = np.median(runs[0], axis=0), np.median(runs[1], axis=0)
    print(f"\n{NETS[name][0]}, batch 1, 1 thread: each sparse conv (graph index), ms\n")
    print("| op | gather | code | speed-up |")
    print("| --- | --- | --- | --- |")
    for i, n in enumerate(names):
        if n == "conv/sparse":
            print(f"| {i} | {tg[i]:.3f} | {tc[i]:.3f} | {tg[i] / tc[i]:.2f}x |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nets", nargs="+", default=list(BATCHES), choices=list(BATCHES))
    ap.add_argument("--layers", action="store_true", help="also each sparse conv's time at batch 1")
    args = ap.parse_args()
    print_machine()
    print(f"csub ISA level: {_core.isa()}; code can be made here: {_core.sparse_jit_available()}")
    print("\n## 90 % sparse networks: the gather kernels (CSUB_SPARSE_JIT=0) against the code (ms, medians; "
          "two runtimes in one process, timed interleaved)\n")
    print("| network | batch | threads | gather | code | speed-up | logits differ by | set_alpha ms (gather, code) "
          "| memory MB (gather, code) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    later = []  # --layers: the networks whose convs get a table after this one
    for name in args.nets:
        shape = NETS[name][1]
        model = build(name, True)
        gather, tg = compressed(model, shape, False)
        code, tc = compressed(model, shape, True)
        for batch in BATCHES[name]:
            x = np.random.default_rng(1).normal(0, 1, (batch,) + shape).astype(np.float32)
            want = gather(x)
            err = float(np.max(np.abs(code(x) - want)) / np.max(np.abs(want)))
            reps = args.reps if batch * np.prod(shape) < 1e6 else max(3, args.reps // 2)
            for threads in args.threads:
                csub.set_num_threads(threads)
                (t_g, t_c), (a, b) = interleaved_ms([lambda: gather(x), lambda: code(x)], reps)
                ratio = statistics.median(ta / tb for ta, tb in zip(a, b))
                print(f"| {NETS[name][0]} | {batch} | {threads} | {t_g:.3f} | {t_c:.3f} | {ratio:.2f}x | {err:.1e} | "
                      f"{tg * 1e3:.1f}, {tc * 1e3:.1f} | {gather.memory_bytes(batch) / 1e6:.1f}, "
                      f"{code.memory_bytes(batch) / 1e6:.1f} |", flush=True)
        if args.layers:
            later.append((name, gather, code, shape))
    for name, gather, code, shape in later:
        layers(name, gather, code, shape, args.reps)


if __name__ == "__main__":
    main()
