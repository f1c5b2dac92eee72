"""csub's compressed inference against onnxruntime and PyTorch on cPreResNet20, and what batch-norm folding saves.

    python benchmarks/bench_peers.py [--reps 31] [--rounds 2] [--threads 2 1] [--batches 1 64] [--out benchmarks/peers.md]
    python benchmarks/bench_peers.py --fold [--reps 41] [--threads 2] [--batches 1 64]

Peers: cPreResNet20 at 32x32 with group norm and with batch norm, dense and
90 % sparse (keep 0.10 of the block convs' weights, csub's unstructured
regime at alpha 0.1; the first conv and the classifier stay dense), at each
batch of --batches. Every runtime runs the same network: the csub model at
alpha, with the same weights and the same zeros; onnxruntime runs an ONNX
file (``csub.interop.to_onnx`` where the package has it, else the export of a
PyTorch mirror of the network by ``torch.onnx.export``), PyTorch the mirror
under ``torch.inference_mode``. DeepSparse is optional and is skipped with a
note where it is not installed. Each runtime is timed in its own process (the
thread pools of torch and onnxruntime keep spinning after a call and would
slow the others), for --rounds rounds; a cell is the median of --reps
forwards after two warm-up calls, and the table shows the range over the
rounds. Every runtime's logits are checked against csub's first. The table
is written to --out.

--fold: csub alone, with the batch norms that follow a conv folded into it
(the default) and with CSUB_FOLD=0 (every norm and ReLU its own operation),
both loaded in one process and timed interleaved: the medians and the median
of the per-repetition ratios, for cPreResNet20 with batch norm (dense, 90 %
sparse, 8-bit) and the batch-norm CNN, at each of --threads; written as the
last section of --out (replacing an earlier one; the peers' table stays).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_machine, torch_mirror  # noqa: E402

import csub  # noqa: E402
from csub import models  # noqa: E402

KEEP = 0.10  # 90 % sparse


def build(norm, sparse, seed=0):
    """cPreResNet20 (unstructured regime) at alpha KEEP or 1, with non-trivial norms and statistics."""
    csub.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = models.cpreresnet20(regime="unstructured", norm=norm)
    for m in model.modules():
        if isinstance(m, (csub.nn.BatchNorm2d, csub.nn.GroupNorm)):
            c = m.num_channels
            m.weight.data[...] = 1.0 + rng.normal(0, 0.2, c)
            m.bias.data[...] = rng.normal(0, 0.2, c)
            if isinstance(m, csub.nn.BatchNorm2d):
                m.running_mean[...] = rng.normal(0, 0.1, c)
                m.running_var[...] = rng.uniform(0.5, 2.0, c)
    model.eval()
    model.set_alpha(KEEP if sparse else 1.0)
    return model


def median_ms(fn, reps):
    fn(), fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


# ------------------------------------------------------------------ mirror

def onnx_file(model, path, torch):
    """ONNX of the network at its alpha: csub.interop.to_onnx (the [onnx] extra), else the mirror's export."""
    try:
        from csub import interop
        interop.to_onnx(model, path, model.alpha, input_shape=(3, 32, 32))
        return "csub.interop.to_onnx"
    except ImportError:  # onnx is not installed
        pass
    x = torch.zeros(1, 3, 32, 32)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and still the one that runs here
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_mirror(model, torch), (x,), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return "torch.onnx.export of a PyTorch mirror"


# ------------------------------------------------------------------ one runtime, own process

def run_one(spec):
    """Time one runtime on one network (in this process): {batch: ms}, and the max relative logit error."""
    threads, reps = spec["threads"], spec["reps"]
    model = build(spec["norm"], spec["sparse"])
    rng = np.random.default_rng(1)
    xs = {b: rng.normal(0, 1, (b, 3, 32, 32)).astype(np.float32) for b in spec["batches"]}
    ref = {b: np.load(spec["ref"] + f".{b}.npy") for b in spec["batches"]}
    rt = spec["runtime"]
    if rt == "csub":
        csub.set_num_threads(threads)
        net = model.compress(KEEP if spec["sparse"] else 1.0)
        fns = {b: (lambda x=xs[b]: net(x)) for b in xs}
    elif rt == "torch":
        import torch
        torch.set_num_threads(threads)
        tm = torch_mirror(model, torch)

        def f(x):
            with torch.inference_mode():
                return tm(torch.from_numpy(x)).numpy()
        fns = {b: (lambda x=xs[b]: f(x)) for b in xs}
    elif rt == "onnxruntime":
        import onnxruntime as ort
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(spec["onnx"], o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fns = {b: (lambda x=xs[b]: sess.run(None, {name: x})[0]) for b in xs}
    elif rt == "deepsparse":
        from deepsparse import compile_model
        engines = {b: compile_model(spec["onnx"], batch_size=b, num_cores=threads) for b in xs}
        fns = {b: (lambda x=xs[b], e=engines[b]: e.run([x])[0]) for b in xs}
    else:
        raise ValueError(f"runtime: unknown {rt!r}")
    err = max(float(np.max(np.abs(fns[b]() - ref[b])) / np.max(np.abs(ref[b]))) for b in xs)
    return {"ms": {b: median_ms(fns[b], reps) for b in xs}, "err": err}


def available(rt):
    mod = {"csub": "csub", "torch": "torch", "onnxruntime": "onnxruntime", "deepsparse": "deepsparse"}[rt]
    r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True)
    return r.returncode == 0


def peers(args):
    print_machine()
    import torch
    runtimes = [rt for rt in ("csub", "onnxruntime", "torch", "deepsparse") if available(rt)]
    notes = [f"{rt} is not installed: skipped" for rt in ("onnxruntime", "torch", "deepsparse") if rt not in runtimes]
    tables = []
    for threads in args.threads:
        source, table = peers_table(args, threads, runtimes, notes, torch)
        tables += [f"{threads} thread{'s' if threads > 1 else ''}:", "", table, ""]
    la = os.getloadavg()
    doc = [
        "# csub against its peers: cPreResNet20 inference",
        "",
        "Written by `python benchmarks/bench_peers.py` (its docstring says what is timed and how).",
        f"Milliseconds per forward, medians of {args.reps} forwards after two warm-up calls, the range over "
        f"{args.rounds} rounds; each runtime in its own process; 32x32 inputs; "
        f"90 % sparse = keep {KEEP} of the block convs' weights (the same zeros in every runtime). "
        f"ONNX from {source}. The last column: the best peer's median over csub's (above 1: csub is faster).",
        "",
    ] + tables + [
        f"Machine: {csub_machine()}; load average at the end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}. The machine was "
        "shared with other work while this ran (a load above its 2 cores slows the runtimes whose threads "
        "wait for each other most): compare within a row, not across runs.",
    ]
    if notes:
        doc += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    with open(args.out, "w") as f:
        f.write("\n".join(doc) + "\n")
    print(f"wrote {args.out}")


def peers_table(args, threads, runtimes, notes, torch):
    """Time every runtime on the four networks at `threads` threads: (ONNX source, markdown table)."""
    tmp = tempfile.mkdtemp(prefix="bench_peers-")
    results = {}  # (norm, sparse, runtime) -> {batch: [ms per round]}
    source = None
    for norm in ("gn", "bn"):
        for sparse in (False, True):
            model = build(norm, sparse)
            rng = np.random.default_rng(1)
            ref = os.path.join(tmp, f"{norm}-{int(sparse)}")
            for b in args.batches:
                np.save(ref + f".{b}.npy", model(rng.normal(0, 1, (b, 3, 32, 32)).astype(np.float32)))
            onnx = ref + ".onnx"
            source = onnx_file(model, onnx, torch)
            for rnd in range(args.rounds):
                for rt in runtimes:
                    spec = dict(runtime=rt, norm=norm, sparse=sparse, batches=args.batches, threads=threads,
                                reps=args.reps, ref=ref, onnx=onnx)
                    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
                                       capture_output=True, text=True)
                    if r.returncode != 0:
                        notes.append(f"{rt} {norm} sparse={sparse}: failed ({r.stderr.strip().splitlines()[-1]})")
                        continue
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    if out["err"] > 1e-3:
                        notes.append(f"{rt} {norm} sparse={sparse}: logits differ from csub's training forward by "
                                     f"{out['err']:.1e} (relative)")
                    for b, ms in out["ms"].items():
                        results.setdefault((norm, sparse, rt), {}).setdefault(int(b), []).append(ms)
                    print(f"  {threads} threads, round {rnd + 1} {norm} {'sparse' if sparse else 'dense '} {rt:12s} "
                          + " ".join(f"b{b}: {ms:8.3f} ms" for b, ms in out["ms"].items()), flush=True)

    def cell(key, b):
        v = results.get(key, {}).get(b)
        if not v:
            return "-"
        return f"{min(v):.2f}" if max(v) - min(v) < 0.005 else f"{min(v):.2f}-{max(v):.2f}"

    lines = ["| network | batch | " + " | ".join(f"{rt} dense" for rt in runtimes) + " | "
             + " | ".join(f"{rt} 90 % sparse" for rt in runtimes) + " | csub vs best peer (dense, sparse) |",
             "| --- | --- |" + " --- |" * (2 * len(runtimes) + 1)]
    for norm, label in (("gn", "group norm"), ("bn", "batch norm")):
        for b in args.batches:
            row = [label, str(b)] + [cell((norm, False, rt), b) for rt in runtimes] \
                + [cell((norm, True, rt), b) for rt in runtimes]
            speed = []
            for sparse in (False, True):
                mine = results.get((norm, sparse, "csub"), {}).get(b)
                best = [statistics.median(results[(norm, sparse, rt)][b]) for rt in runtimes
                        if rt != "csub" and b in results.get((norm, sparse, rt), {})]
                speed.append(f"{min(best) / statistics.median(mine):.2f}x" if mine and best else "-")
            lines.append("| " + " | ".join(row + [", ".join(speed)]) + " |")
    table = "\n".join(lines)
    print(table)
    return source, table


def csub_machine():
    from common import cpu_model
    versions = [f"csub {getattr(csub, '__version__', '?')}"]
    for mod in ("onnxruntime", "torch"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return f"{cpu_model()}, {os.cpu_count()} logical cores; " + ", ".join(versions)


# ------------------------------------------------------------------ folding

def paired_ms(fa, fb, reps):
    """Interleaved timings of fa and fb: (median ms of fa, median ms of fb, median of tb / ta).
    Which runs first alternates: the second of a pair runs a few per cent faster here
    (two copies of one network read 0.96-0.98x), which would bias the ratio."""
    fa(), fb(), fa(), fb()
    ta, tb = [], []
    for i in range(reps):
        pair = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for f, out in pair:
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3, statistics.median(b / a for a, b in zip(ta, tb))


FOLD_SECTION = "## Batch-norm folding"


def fold(args):
    print_machine()
    rng = np.random.default_rng(0)
    cases = [("cPreResNet20 bn dense", build("bn", False), 1.0, (3, 32, 32)),
             ("cPreResNet20 bn 90 % sparse", build("bn", True), KEEP, (3, 32, 32))]
    q = models.cpreresnet20(regime="quantized", norm="bn")
    q.train()
    q.set_quantize_inputs(True)
    q.set_alpha(1.0)
    q(rng.normal(0, 1, (8, 3, 32, 32)).astype(np.float32))
    q.eval()
    cases.append(("cPreResNet20 bn 8-bit", q, 1.0, (3, 32, 32)))
    csub.manual_seed(0)
    cases.append(("CNN bn (32, 64, 128) dense", models.cnn(norm="bn", image_size=32, in_channels=3), 1.0, (3, 32, 32)))
    nets = []
    for name, model, alpha, shape in cases:
        os.environ.pop("CSUB_FOLD", None)
        folded = model.compress(alpha, input_shape=shape)
        os.environ["CSUB_FOLD"] = "0"
        plain = model.compress(alpha, input_shape=shape)
        os.environ.pop("CSUB_FOLD", None)
        nets.append((name, shape, folded, plain))
    lines = [FOLD_SECTION, "",
             f"`python benchmarks/bench_peers.py --fold --reps {args.reps} --threads "
             f"{' '.join(map(str, args.threads))}`: csub with the batch norms that follow a conv folded into it "
             "(and the ReLU, residual add in its epilogue) against the same file loaded with CSUB_FOLD=0, in one "
             f"process, timed interleaved; medians of {args.reps} forwards, and the median of the per-repetition "
             "ratios. The machine was shared with other work while this ran: two copies of one network, timed "
             "this way, read 0.96-1.05x, the noise floor of a ratio here.", ""]
    for threads in args.threads:
        csub.set_num_threads(threads)
        lines += [f"| network ({threads} thread{'s' if threads > 1 else ''}) | batch | unfolded ms | folded ms "
                  "| speed-up | logits differ by |", "| --- | --- | --- | --- | --- | --- |"]
        for name, shape, folded, plain in nets:
            for b in args.batches:
                x = rng.normal(0, 1, (b,) + shape).astype(np.float32)
                err = float(np.max(np.abs(folded(x) - plain(x))) / np.max(np.abs(plain(x))))
                tf, tp, ratio = paired_ms(lambda: folded(x), lambda: plain(x), args.reps)
                lines.append(f"| {name} | {b} | {tp:.3f} | {tf:.3f} | {ratio:.3f}x | {err:.1e} |")
                print(lines[-1], flush=True)
        lines.append("")
    old = open(args.out).read() if os.path.exists(args.out) else ""
    if FOLD_SECTION in old:
        old = old[:old.index(FOLD_SECTION)]
    with open(args.out, "w") as f:
        f.write(old.rstrip("\n") + ("\n\n" if old else "") + "\n".join(lines))
    print(f"wrote the folding section of {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=31)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.md"))
    ap.add_argument("--fold", action="store_true", help="csub folded vs unfolded, in one process")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one runtime, in a child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
    elif args.fold:
        fold(args)
    else:
        peers(args)


if __name__ == "__main__":
    main()
