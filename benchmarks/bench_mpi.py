"""Data-parallel training throughput: 2 ranks x 1 thread against 1 rank x 2 threads (cPreResNet20).

    python benchmarks/bench_mpi.py [--batch 128] [--steps 8] [--repeats 3] [--method lcs_l]
    python benchmarks/bench_mpi.py --scaling [--threads 2]     # the step-time model for N ranks
    python benchmarks/bench_mpi.py --alpha-per-rank [--epochs 3] [--seeds 0 1]   # what per-rank alphas do

Runs ``train.fit`` on random 32x32 RGB images (the same data and seed in every run) as
one process with 2 threads and as ``mpiexec -n 2`` with 1 thread per rank, alternating
the two ``--repeats`` times (and 1 rank x 1 thread, the compute the model below starts
from), and prints medians: images per second of the training steps
(epoch time from fit's history, evaluation excluded), the time per step spent in the
gradient all-reduce (waiting for the other rank included), the same all-reduce timed alone
(both ranks ready: the cost of moving the bytes), and the 2-rank/1-rank throughput ratio.
As root, set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (done here for the
mpiexec child only). ``--worker`` is the process the script launches.

Model of a step on N ranks without overlap (benchmarks/mpi.md): ``T(N) = c B / N + A(N)`` with
c the compute time per image of one rank, B the global batch and ``A(N) = 2 (N - 1) / N * G / bw
+ 2 (N - 1) * lat`` a ring all-reduce of G gradient bytes; efficiency ``E(N) = c B / (N T(N))``.
It is checked here against the 2-rank run (c from 1 rank x 1 thread, A(2) the all-reduce
timed alone); ``--scaling`` measures c of cPreResNet20 (32x32) and ResNet18 (224x224) with
``--threads`` threads as one rank and prints E(N) at 10 and 100 Gbit/s.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def worker(args):
    import csub
    from csub import distributed as dist
    from csub import models, train

    made = []
    create = dist.Trainer.create

    def keep(distributed):  # the Trainer fit makes, to read its all-reduce timer
        t = create(distributed)
        made.append(t)
        return t

    dist.Trainer.create = staticmethod(keep)
    if dist.launched():
        dist.init(threads=args.threads)
    else:
        csub.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    csub.manual_seed(0)
    subspace = {"lcs_l": "line", "lcs_p": "point"}.get(args.method)
    model = models.cpreresnet20(regime=None if args.method == "standard" else "unstructured", subspace=subspace)
    train.fit(model, (images[:args.batch], labels[:args.batch]), method=args.method, epochs=1,
              batch_size=args.batch, progress=False, warmup=1.0)  # warm-up run: caches, pages
    model = models.cpreresnet20(regime=None if args.method == "standard" else "unstructured", subspace=subspace)
    made.clear()
    hist = train.fit(model, (images, labels), method=args.method, epochs=1, batch_size=args.batch,
                     progress=False, warmup=1.0)
    seconds = hist[0]["seconds"]
    res = dict(ranks=dist.world_size(), threads=csub.get_num_threads(), images_per_s=n / seconds,
               step_s=seconds / args.steps, grad_bytes=4 * model.num_parameters())
    trainer = made[-1]
    if trainer:
        res["reduce_s"] = trainer.reducer.seconds / args.steps
        times = []
        for _ in range(20):
            dist.barrier()
            t = time.perf_counter()
            trainer.reducer.reduce()
            times.append(time.perf_counter() - t)
        res["allreduce_alone_s"] = statistics.median(times)
    if dist.rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)


def step_time_per_image(name, batch, threads, reps=3):
    """Median seconds per image of a dense training step (forward, backward, SGD) of a network."""
    import csub
    from csub import models, nn, optim

    csub.set_num_threads(threads)
    csub.manual_seed(0)
    model, size = {"cpreresnet20": (lambda: models.cpreresnet20(), 32),
                   "resnet18": (lambda: models.resnet18(num_classes=1000), 224)}[name]
    model = model()
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    y = np.arange(batch) % 10
    crit, opt = nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.01, momentum=0.9)
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        crit(model(x), y)
        model.backward(crit.backward())
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) / batch, 4 * model.num_parameters()


def ring_allreduce_s(nbytes, n, gbit, latency):
    return 2 * (n - 1) / n * nbytes * 8 / (gbit * 1e9) + 2 * (n - 1) * latency if n > 1 else 0.0


def efficiency(c, batch, nbytes, n, gbit, latency):
    compute = c * batch / n
    return compute / (compute + ring_allreduce_s(nbytes, n, gbit, latency))


def scaling(args):
    from common import print_machine

    print_machine()
    links = ((10, 20e-6), (100, 5e-6))  # Gbit/s, per-message latency (TCP on 10 GbE; RDMA on 100 Gbit)
    print(f"one rank = this machine with {args.threads} thread(s); ring all-reduce, no overlap with backward; "
          f"latency per message {', '.join(f'{lat * 1e6:g} us at {g} Gbit/s' for g, lat in links)}\n")
    for name, batch, mbatch in (("cpreresnet20", 128, 32), ("resnet18", 256, 2)):
        ranks = [2 ** k for k in range(20) if 2 ** k <= batch]  # at least one image per rank
        c, g = step_time_per_image(name, mbatch, args.threads)
        for kind, nbytes in (("standard", g), ("lcs_l line (2 endpoints)", 2 * g)):
            print(f"{name}, {kind}: compute {1e3 * c:.2f} ms per image, gradients {nbytes / 1e6:.2f} MB per step, "
                  f"global batch {batch}")
            for gbit, lat in links:
                effs = [efficiency(c, batch, nbytes, n, gbit, lat) for n in ranks]
                below = next((n for n, e in zip(ranks, effs) if e < 0.8), None)
                print(f"  {gbit:>3} Gbit/s: " + " ".join(f"N={n}:{e:.2f}" for n, e in zip(ranks, effs))
                      + f"  -> below 80 % from N = {below if below else f'never up to {batch} (one image per rank)'}")
                for speedup in (16,):
                    effs = [efficiency(c / speedup, batch, nbytes, n, gbit, lat) for n in ranks]
                    below = next((n for n, e in zip(ranks, effs) if e < 0.8), None)
                    print(f"      ranks {speedup}x faster (a 32-core node): below 80 % from N = "
                          f"{below if below else f'never up to {batch} (one image per rank)'}")
        print()


def alpha_worker(args):
    """One lcs_l line (cnn 16-32-64, bundled Fashion-MNIST) on the job's ranks; rank 0 prints its grid."""
    import csub
    from csub import data, distributed as dist, models, train

    dist.init(threads=1)
    csub.manual_seed(args.seed)
    tr, te = data.fashion_mnist("train", bundled=True), data.fashion_mnist("test", bundled=True)
    model = models.cnn(widths=(16, 32, 64), regime="unstructured", subspace="line")
    train.fit(model, tr, None, method="lcs_l", epochs=args.epochs, batch_size=args.batch, seed=args.seed,
              progress=False, alpha_per_rank=args.own_alpha)
    res = dist.evaluate(model, te, [0.025, 0.05, 0.1, 0.25, 0.5, 1.0])
    if dist.rank() == 0:
        print("RESULT " + json.dumps({r["alpha"]: r["accuracy"] for r in res}), flush=True)


def alpha_experiment(args, mpiexec, mpi_env):
    print(f"lcs_l line, cnn 16-32-64, bundled Fashion-MNIST (6000 / 1000), {args.epochs} epochs, global batch "
          f"{args.batch}, 2 ranks: one alpha per step (shared) or one per rank (own); test accuracy %\n")
    me = [sys.executable, os.path.abspath(__file__), "--alpha-worker", "--epochs", str(args.epochs),
          "--batch", str(args.batch)]
    rows = {}
    for seed in args.seeds:
        for own in (False, True):
            r = launch([mpiexec, "-n", "2"] + me + ["--seed", str(seed)] + (["--own-alpha"] if own else []), mpi_env)
            rows[(seed, own)] = r
            print(f"seed {seed} {'own   ' if own else 'shared'}: "
                  + "  ".join(f"a={float(a):g}: {100 * v:5.1f}" for a, v in r.items()), flush=True)
    for own in (False, True):
        mean = {a: statistics.mean(rows[(s, own)][a] for s in args.seeds) for a in rows[(args.seeds[0], own)]}
        print(f"mean {'own   ' if own else 'shared'}: "
              + "  ".join(f"a={float(a):g}: {100 * v:5.1f}" for a, v in mean.items()))


def launch(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="lcs_l", choices=["standard", "lcs_l", "lcs_p"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--scaling", action="store_true", help="measure compute per image, print the N-rank model")
    ap.add_argument("--alpha-per-rank", action="store_true", help="accuracy with one alpha per rank vs shared")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--own-alpha", action="store_true")
    ap.add_argument("--alpha-worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.alpha_worker:
        return alpha_worker(args)
    if args.scaling:
        return scaling(args)

    from common import print_machine

    print_machine()
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.access(mpiexec, os.X_OK) else shutil.which("mpiexec")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_COMM", "PMI"))}
    env.pop("OMP_NUM_THREADS", None)
    mpi_env = dict(env, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if args.alpha_per_rank:
        return alpha_experiment(args, mpiexec, mpi_env)
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch), "--steps",
          str(args.steps), "--method", args.method]
    print(f"cPreResNet20 {args.method} (unstructured), global batch {args.batch}, {args.steps} steps per run, "
          f"{args.repeats} alternating runs, medians\n")
    one, two, single = [], [], []
    for _ in range(args.repeats):
        one.append(launch(me + ["--threads", "2"], env))
        two.append(launch([mpiexec, "-n", "2"] + me + ["--threads", "1"], mpi_env))
        single.append(launch(me + ["--threads", "1"], env))
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    ips1, ips2 = med(one, "images_per_s"), med(two, "images_per_s")
    step2, red2, alone2 = med(two, "step_s"), med(two, "reduce_s"), med(two, "allreduce_alone_s")
    print(f"{'configuration':<22} {'images/s':>9} {'step ms':>8} {'all-reduce ms':>14} {'alone ms':>9}")
    print(f"{'1 rank x 1 thread':<22} {med(single, 'images_per_s'):9.1f} {1e3 * med(single, 'step_s'):8.1f} "
          f"{'-':>14} {'-':>9}")
    print(f"{'1 rank x 2 threads':<22} {ips1:9.1f} {1e3 * med(one, 'step_s'):8.1f} {'-':>14} {'-':>9}")
    print(f"{'2 ranks x 1 thread':<22} {ips2:9.1f} {1e3 * step2:8.1f} {1e3 * red2:14.2f} {1e3 * alone2:9.2f}")
    print(f"\ngradient bytes per step: {two[0]['grad_bytes']:,} (one all-reduce call)")
    print(f"2 ranks / 1 rank throughput: {ips2 / ips1:.3f} (goal >= 0.90); per run: "
          + " ".join(f"{b['images_per_s'] / a['images_per_s']:.3f}" for a, b in zip(one, two)))
    print(f"share of a 2-rank step in the all-reduce: {red2 / step2:.1%} (waiting for the other rank included), "
          f"moving the bytes alone: {alone2 / step2:.2%}")
    c1 = med(single, "step_s") / args.batch
    pred = c1 * args.batch / 2 + alone2
    print(f"model: T(2) = c B / 2 + A(2) = {1e3 * c1 * args.batch / 2:.1f} + {1e3 * alone2:.2f} = {1e3 * pred:.1f} ms "
          f"(c from 1 rank x 1 thread), measured {1e3 * step2:.1f} ms ({step2 / pred - 1:+.1%})")


if __name__ == "__main__":
    main()
