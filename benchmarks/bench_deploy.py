"""Compressed inference of cPreResNet20 with the C runtime (model.compress / csub_model_*), as ratios in one run.

    python benchmarks/bench_deploy.py [--reps 41] [--threads 2 1] [--batches 1 64] [--no-torch] [--crossover]
                                      [--profile] [--halves] [--norm gn]

For batch 1 and batch 64 at 32x32, on each thread count of --threads:
  unstructured  keep 1.0 (dense) vs keep 0.10 (90 % of the block weights pruned, CSR kernels)
  structured    width 1.0 vs width 0.5 (really smaller layers)
  quantized     8-bit integer products vs the float32 network (regime None)
  dense float32 csub runtime vs PyTorch CPU inference (torch.inference_mode, same network)
and the time of set_alpha (materialising a new alpha) per regime. --norm picks
the networks' norm: group norm (the default, csub's) or batch norm (the structured
pair keeps group norm: batch norm's running statistics hold at one width only).
Each pair is timed interleaved (compressed, peer, compressed, peer, ...), so
that both see the same state of the machine: the medians of --reps forwards
each, and the median of the per-repetition ratios (the speedup printed).
--crossover adds the unstructured network at keep 0.05 .. 0.8 run with CSR
kernels and with dense kernels on the masked weights: where the CSR kernels
stop paying (the runtime's default crossovers, RT_SPARSE_CROSSOVER for whole
images per thread and RT_SPARSE_CROSSOVER_SPLIT for one image split across
threads). --profile adds where the time goes at batch 1 (CompressedNet.profile).
--halves adds the bound of a runtime that gives each thread its own rows of the
image through the whole network: every pair on half images, two per thread.
Targets: 90 % sparse >= 3x faster than dense, width 0.5 >= 3x faster than
width 1.0, 8-bit >= 2x faster than float32, set_alpha under 5 ms.
"""
import argparse
import statistics
import time

import numpy as np
from common import print_machine, torch_mirror

import csub
from csub import models


def paired_ms(fa, fb, reps):
    """Interleaved timings of fa and fb: (median ms of fa, median ms of fb, median of tb / ta)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(reps):
        for f, out in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    ratio = statistics.median(b / a for a, b in zip(ta, tb))
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3, ratio


def set_alpha_ms(net, alphas, reps=5):
    times = []
    for _ in range(reps):
        for a in alphas:
            t = time.perf_counter()
            net.set_alpha(a)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


ST_LABEL = "structured width 0.5 vs 1.0"


def halves(models_by_name, x64, args):
    """The best a runtime could do at batch 1 by giving each thread its own rows of every
    activation (a strip of the image through the whole network): each network on images of
    half the height (3 x 16 x 32), two per thread, the threads running at once with no halo
    and no synchronisation. Both networks of a pair gain from it, so the ratio is the bound."""
    nt = max(args.threads)
    csub.set_num_threads(nt)
    h = np.ascontiguousarray(x64[:2 * nt, :, :16, :])
    print(f"\nbound of a per-thread strip runtime at batch 1 ({nt} threads, each network on {2 * nt} half images "
          f"3x16x32, two per thread):")
    for what, a, p, target in (("unstructured keep 0.10 vs dense", "uns", "uns_dense", 3.0),
                               (ST_LABEL + (" (gn)" if args.norm != "gn" else ""), "st", "st_full", 3.0),
                               ("quantized 8-bit vs float32", "q", "dense", 2.0)):
        (ma, aa), (mp, pa) = models_by_name[a], models_by_name[p]
        na, npeer = ma.compress(aa, input_shape=(3, 16, 32)), mp.compress(pa, input_shape=(3, 16, 32))
        t, ref, ratio = paired_ms(lambda: na(h), lambda: npeer(h), args.reps)
        print(f"  {what:<42} {t / 2:8.3f} {ref / 2:8.3f} ms per half image {ratio:7.2f}x {target:6.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=41)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--profile", action="store_true", help="where the time goes: ms per operation kind, batch 1")
    ap.add_argument("--norm", choices=("gn", "bn"), default="gn", help="the networks' norm")
    ap.add_argument("--halves", action="store_true",
                    help="the bound of a per-thread strip runtime at batch 1: each pair on half images")
    args = ap.parse_args()
    print_machine()
    print(f"csub {csub.__version__}, int8 kernel {csub._core.int8_kernel()}")
    norm = dict(gn="group norm", bn="batch norm")[args.norm]
    print(f"cPreResNet20, 32x32 inputs, {norm}, {args.reps} interleaved forwards of each network\n")
    csub.manual_seed(0)
    rng = np.random.default_rng(0)
    uns = models.cpreresnet20(regime="unstructured", subspace="line", norm=args.norm)
    st = models.cpreresnet20(regime="structured", subspace="line", norm="gn")
    q = models.cpreresnet20(regime="quantized", subspace="line", norm=args.norm)
    x64 = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    q.train()
    q.set_quantize_inputs(True)
    q.set_alpha(1.0)
    q(x64[:16])  # record activation ranges
    q.eval()
    dense = models.cpreresnet20(norm=args.norm)
    dense.load_state_dict({k: v for k, v in uns.state_dict().items() if k in dense.state_dict()}, strict=False)
    # (model, alpha) of each network; one network object per side of each pair, so that the pair can be interleaved
    models_by_name = dict(uns=(uns, 0.1), uns_dense=(uns, 1.0), st=(st, 1 / 3), st_full=(st, 1.0), q=(q, 1.0),
                          dense=(dense, 1.0))
    nets = {name: model.compress(alpha) for name, (model, alpha) in models_by_name.items()}
    torch = None
    if not args.no_torch:
        try:
            import torch
            tnet = torch_mirror(dense, torch)
        except ImportError:
            torch = None

    print(f"{'threads':>7} {'batch':>5} | {'what':<42} {'ms':>8} {'peer ms':>8} {'speedup':>8} {'target':>7}")
    for nt in args.threads:
        csub.set_num_threads(nt)
        if torch is not None:
            torch.set_num_threads(nt)
        for b in args.batches:
            x = np.ascontiguousarray(x64[:b]) if b <= 64 else rng.standard_normal((b, 3, 32, 32)).astype(np.float32)

            def pair(a, p):
                return paired_ms(lambda: nets[a](x), lambda: nets[p](x), args.reps)

            rows = [("unstructured keep 0.10 vs dense", pair("uns", "uns_dense"), 3.0),
                    (ST_LABEL + (" (gn)" if args.norm != "gn" else ""), pair("st", "st_full"), 3.0),
                    ("quantized 8-bit vs float32", pair("q", "dense"), 2.0)]
            if torch is not None:
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    err = float(np.max(np.abs(tnet(xt).numpy() - nets["dense"](x))))
                    rows.append((f"dense float32 vs PyTorch (|diff| {err:.1e})",
                                 paired_ms(lambda: nets["dense"](x), lambda: tnet(xt), args.reps), 1.0))
            for what, (t, ref, ratio), target in rows:
                print(f"{nt:7d} {b:5d} | {what:<42} {t:8.3f} {ref:8.3f} {ratio:7.2f}x {target:6.1f}x")
    if args.crossover:
        csub.set_num_threads(args.threads[0])
        print(f"\nunstructured, CSR kernels vs dense kernels on the masked weights ({args.threads[0]} threads; "
              "ratio > 1: CSR faster)")
        keeps = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
        csr = csub.CompressedNet(csub.modelfile.to_bytes(uns), 1.0, sparse_crossover=1.0)
        dense_k = csub.CompressedNet(csub.modelfile.to_bytes(uns), 1.0, sparse_crossover=0.0)
        for b in args.batches:
            x = np.ascontiguousarray(x64[:b])
            row = []
            for k in keeps:
                csr.set_alpha(k)
                dense_k.set_alpha(k)
                row.append(paired_ms(lambda: csr(x), lambda: dense_k(x), args.reps)[2])
            print(f"  batch {b:3d}: " + "  ".join(f"{k:.2f}:{r:.2f}" for k, r in zip(keeps, row)))
    if args.profile:
        x = np.ascontiguousarray(x64[:1])
        for nt in args.threads:
            csub.set_num_threads(nt)
            print(f"\nwhere the time goes, batch 1, {nt} threads (ms per operation kind, medians of {args.reps}):")
            for name in ("uns_dense", "uns", "st", "q"):
                runs = [nets[name].profile(x) for _ in range(args.reps)]
                kinds = sorted({k for r in runs for k in r})
                med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in kinds}
                label = dict(uns_dense="dense", uns="keep 0.10", st="width 0.5", q="8-bit")[name]
                print(f"  {label:<10} total {sum(med.values()):6.3f}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in sorted(med.items(), key=lambda kv: -kv[1]) if v >= 0.002))
    if args.halves:
        halves(models_by_name, x64, args)
    print("\nset_alpha (materialise a new alpha), median ms (target < 5 ms):")
    for name, alphas in (("uns", [0.1, 0.5, 1.0, 0.05]), ("st", [0.0, 1 / 3, 1.0]), ("q", [0.0, 0.5, 1.0])):
        print(f"  {dict(uns='unstructured', st='structured', q='quantized')[name]:<13} "
              f"{set_alpha_ms(nets[name], alphas):7.3f}")


if __name__ == "__main__":
    main()
