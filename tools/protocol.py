"""The LCS paper's cPreResNet20 CIFAR-10 table as one command, on one process or N MPI ranks.

    mpiexec -n N python tools/protocol.py --out runs/paper                   # the whole table, 200 epochs
    python tools/protocol.py --out runs/paper --regimes quantized --epochs 50
    python tools/protocol.py --out runs/small --dataset fashion-mnist-bundled --model cnn --epochs 2

Runs, per regime (LCS-SPEC sections 6, 7 and 9), every method of the table with the spec's
settings (SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 for sparsity and 0.025 for
quantization, cosine schedule with 5 warm-up epochs, compression warm-up over 80 % of the
iterations, crop + flip augmentation, seed 0):

  unstructured  standard, lcs_l, lcs_p, target_topk at each --topk
  structured    standard, lcs_l, lcs_p, us, ns
  quantized     standard (lr 0.025), lcs_l, lcs_p, target_bits at 3..8 bits

one after another, each one ``train.fit`` over all ranks (``mpiexec -n N``: data-parallel,
global batch ``--batch-size``). Resumable: a run whose ``eval.json`` exists is skipped, a
partial one continues from its last checkpoint (``fit(resume=True)``), so the same command
finishes an interrupted table, on any number of ranks. Each run lives in
``OUT/<regime>/<run>/`` (``config.json``, checkpoint, ``history.json``, ``eval.json/csv``,
as ``python -m csub train`` writes it, so ``python -m csub eval/export`` read it). Rank 0
writes ``OUT/<regime>/table.md``, ``table.csv`` and ``accuracy.png`` after each regime and
``OUT/README.md`` (all regimes) at the end. ``--dry-run`` lists the runs and their state.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from csub import checkpoint, cli, train  # noqa: E402
from csub import distributed as dist  # noqa: E402

TOPK = (0.025, 0.05, 0.1, 0.2, 0.5)
X = {"unstructured": "sparsity", "structured": "width", "quantized": "bits"}


def runs_of(regime, topks):
    """(name, method, topk, num_bits) of every run of a regime's table."""
    runs = [("standard", "standard", None, None), ("lcs_l", "lcs_l", None, None), ("lcs_p", "lcs_p", None, None)]
    if regime == "unstructured":
        runs += [(f"target_topk_{t:g}", "target_topk", t, None) for t in topks]
    elif regime == "structured":
        runs += [("us", "us", None, None), ("ns", "ns", None, None)]
    else:
        runs += [(f"target_bits_{b}", "target_bits", None, b) for b in range(3, 9)]
    return runs


def state_of(path):
    if os.path.exists(os.path.join(path, "eval.json")):
        return "done"
    ckpt = os.path.join(path, train.CHECKPOINT)
    if os.path.exists(ckpt):
        return f"epoch {checkpoint.load(ckpt)['meta']['epoch']}"
    return "to do"


def run_path(out, regime, method, name):
    # the dense network of the structured table is the unstructured one (same settings, lr 0.1)
    return os.path.join(out, "unstructured" if (regime, method) == ("structured", "standard") else regime, name)


def run_one(args, regime, name, method, topk, num_bits, data):
    if (regime, method) == ("structured", "standard"):
        regime = "unstructured"
    path = run_path(args.out, regime, method, name)
    config = dict(model=args.model, dataset=args.dataset, regime=regime, method=method, norm=None, seed=args.seed,
                  topk=topk, num_bits=num_bits)
    tr, te = data
    model = cli.build_model(config, tr[0])
    config.update(train_size=len(tr[1]), batch_size=args.batch_size, epochs=args.epochs)
    cfg = os.path.join(path, "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            old = json.load(f)
        if old != config:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            raise ValueError(f"{path} was started with other settings (old, new): {diff}; use another --out")
    if os.path.exists(os.path.join(path, "eval.json")):
        return path
    dist.barrier()  # every rank has read config.json before rank 0 writes it
    if dist.rank() == 0:
        os.makedirs(path, exist_ok=True)
        checkpoint.atomic_write(cfg, json.dumps(config, indent=1).encode())
        print(f"[{time.strftime('%H:%M:%S')}] {regime}/{name}: {state_of(path)}", flush=True)
    dist.barrier()
    train.fit(model, tr, te, method=method, regime=regime, epochs=args.epochs, batch_size=args.batch_size,
              seed=args.seed, out=path, resume=True, topk=topk, num_bits=num_bits, progress=not args.quiet,
              alpha_per_rank=args.alpha_per_rank)
    return path


def table(args, regime):
    """Rank 0: the regime's table (markdown and csv) and plot from the runs' eval.json."""
    rows, curves = [], {}
    for name, method, topk, bits in runs_of(regime, args.topk):
        f = os.path.join(run_path(args.out, regime, method, name), "eval.json")
        if not os.path.exists(f):
            continue
        with open(f) as fh:
            results = json.load(fh)
        label = method if method in ("target_topk", "target_bits") else name
        curves.setdefault(label, []).extend(results)
        for r in results:  # the dense float network: width 1, 32 bits
            level = r.get(X[regime], {"sparsity": 0.0, "width": 1.0, "bits": 32}[X[regime]])
            rows.append((name, r["alpha"], level, r["accuracy"]))
    if not rows:
        return None
    d = os.path.join(args.out, regime)
    lines = [f"| run | alpha | {X[regime]} | test accuracy (%) |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {a:.4g} | {lv:.4g} | {100 * acc:.2f} |" for n, a, lv, acc in rows]
    md = f"### {regime} ({args.model}, {args.dataset}, {args.epochs} epochs)\n\n" + "\n".join(lines) + "\n"
    checkpoint.atomic_write(os.path.join(d, "table.md"), md.encode())
    csv = "run,alpha," + X[regime] + ",accuracy\n" + "".join(f"{n},{a:.6g},{lv:.6g},{acc:.6g}\n"
                                                            for n, a, lv, acc in rows)
    checkpoint.atomic_write(os.path.join(d, "table.csv"), csv.encode())
    try:
        from csub import plot

        if "standard" in curves and regime == "structured":
            curves["standard"] = [dict(r, width=1.0) for r in curves["standard"]]
        if "standard" in curves and regime == "quantized":  # float32, drawn just past the widest bits
            curves["standard (float32)"] = [dict(r, bits=9) for r in curves.pop("standard")]
        plot.accuracy_curve(curves, os.path.join(d, "accuracy.png"), x=X[regime],
                            title=f"{args.model} {args.dataset}: {regime}")
    except ImportError as e:
        print(f"no plot: {e}", flush=True)
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--regimes", nargs="+", choices=train.REGIMES, default=list(train.REGIMES))
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=128, help="global batch (all ranks together)")
    ap.add_argument("--model", choices=sorted(cli.DEFAULT_NORM), default="cpreresnet20")
    ap.add_argument("--dataset", choices=sorted(cli.DATASETS), default="cifar10")
    ap.add_argument("--topk", type=float, nargs="+", default=list(TOPK), help="target_topk keep fractions")
    ap.add_argument("--train-size", type=int, default=0, help="first N training images only (reduced scale)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha-per-rank", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")

    if args.dry_run:
        for regime in args.regimes:
            for name, method, *_ in runs_of(regime, args.topk):
                print(f"{regime}/{name}: {state_of(run_path(args.out, regime, method, name))}")
        return 0
    if dist.launched():
        dist.init()
    if dist.rank() == 0:  # one rank fetches (or finds) the data set first
        cli.DATASETS[args.dataset]("train")
    dist.barrier()
    tr, te = cli.DATASETS[args.dataset]("train"), cli.DATASETS[args.dataset]("test")
    if args.train_size:
        tr = (tr[0][:args.train_size], tr[1][:args.train_size])
    if dist.rank() == 0:
        print(f"protocol: {args.model} on {args.dataset} ({len(tr[1])} train / {len(te[1])} test images), "
              f"{args.epochs} epochs, global batch {args.batch_size}, {dist.world_size()} rank(s); "
              f"regimes {', '.join(args.regimes)}; output {args.out}/", flush=True)
    tables = []
    for regime in args.regimes:
        for name, method, topk, bits in runs_of(regime, args.topk):
            run_one(args, regime, name, method, topk, bits, (tr, te))
        if dist.rank() == 0:
            md = table(args, regime)
            tables.append(md)
            print(md, flush=True)
    if dist.rank() == 0:
        head = (f"# {args.model} on {args.dataset}: the LCS table\n\n`{' '.join(sys.argv)}` "
                f"({dist.world_size()} rank(s), {args.epochs} epochs, global batch {args.batch_size}"
                + (f", first {args.train_size} training images" if args.train_size else "") + ")\n\n")
        checkpoint.atomic_write(os.path.join(args.out, "README.md"), (head + "\n".join(tables)).encode())
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
