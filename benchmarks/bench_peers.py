"""csub's compressed inference against onnxruntime, DeepSparse and PyTorch, and what batch-norm folding saves.

    python benchmarks/bench_peers.py [--nets cpreresnet20-gn cpreresnet20-bn resnet18-bn] [--threads 2 1]
        [--reps 31] [--batches 1 64] [--reps-resnet18 11] [--batches-resnet18 1 16] [--rounds 2]
        [--deepsparse-python benchmarks/.venv-deepsparse/bin/python] [--out benchmarks/peers.md]
    python benchmarks/bench_peers.py --fold [--reps 41] [--threads 2] [--batches 1 64]

Peers: cPreResNet20 at 32x32 with group norm and with batch norm (batches
--batches, --reps forwards a cell) and ResNet18 at 224x224 with batch norm and
1000 classes (batches --batches-resnet18, --reps-resnet18 forwards a cell),
each dense and 90 % sparse (keep 0.10 of the block convs' weights, csub's
unstructured regime at alpha 0.1; the first conv and the classifier stay
dense). Every runtime runs the same network: the csub model at alpha, with the
same weights and the same zeros; onnxruntime and DeepSparse run one ONNX file
(``csub.interop.to_onnx`` where the onnx package is installed, else the
export of a PyTorch mirror of the network by ``torch.onnx.export``), PyTorch
the mirror under ``torch.inference_mode``. Each runtime is timed in its own
process (the thread pools of torch and onnxruntime keep spinning after a call
and would slow the others) on the same inputs, for --rounds rounds; a cell is
the median of its reps forwards after two warm-up calls, and the table shows
the range over the rounds; one table per thread count of --threads. Every
runtime's logits are checked against csub's training forward first. The last
columns: the best peer's median over csub's, and whether it reaches the goal
of 1.25x. The tables are written to --out (a --fold section there stays).

A full default run (three networks, 2 threads, two rounds, four runtimes)
takes an estimated 10-15 minutes on a quiet 2-core machine: about 11 minutes
of forwards at one thread (from the forward times of a short run), less with
two, plus about 3 minutes of process starts, network builds, ONNX exports and
DeepSparse compiles. --threads 1 2 about doubles it; --reps, --reps-resnet18
and --rounds scale the forwards (ResNet18 at batch 16, about 29 G multiply-adds a
forward, and the group-norm networks under DeepSparse are the slowest cells).

DeepSparse pins numpy 1.26, so it lives in its own virtual environment and
runs in a child process of that interpreter (``peers_deepsparse.py``, which
does not import csub) on the same ONNX file. Create it once:

    python -m venv benchmarks/.venv-deepsparse
    benchmarks/.venv-deepsparse/bin/pip install deepsparse==1.8.0 onnx

The interpreter is --deepsparse-python, else $CSUB_DEEPSPARSE_PYTHON, else
benchmarks/.venv-deepsparse/bin/python; where it is missing or cannot import
deepsparse, DeepSparse is skipped with a note saying why.

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's csub, built in place
from common import mirror_conv, mirror_norm, print_machine, torch_mirror  # noqa: E402

import csub  # noqa: E402
from csub import models  # noqa: E402

KEEP = 0.10  # 90 % sparse
GOAL = 1.25  # csub's goal: this much faster than the best peer in every cell
# Network name -> (row label, one sample's (C, H, W)).
NETS = {"cpreresnet20-gn": ("cPreResNet20 group norm", (3, 32, 32)),
        "cpreresnet20-bn": ("cPreResNet20 batch norm", (3, 32, 32)),
        "resnet18-bn": ("ResNet18 batch norm, 224x224", (3, 224, 224))}
RUNTIMES = ("csub", "onnxruntime", "torch", "deepsparse")
DEEPSPARSE_VENV = os.path.join(HERE, ".venv-deepsparse", "bin", "python")
DEEPSPARSE_SETUP = ("python -m venv benchmarks/.venv-deepsparse && "
                    "benchmarks/.venv-deepsparse/bin/pip install deepsparse==1.8.0 onnx")


def build(net, sparse, seed=0):
    """The network `net` of NETS (unstructured regime) at alpha KEEP or 1, with non-trivial norms,
    statistics (and classifier bias): the same weights in every process."""
    arch, norm = net.rsplit("-", 1)
    csub.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if arch == "cpreresnet20":
        model = models.cpreresnet20(regime="unstructured", norm=norm)
    elif arch == "resnet18":
        model = models.resnet18(regime="unstructured", num_classes=1000, norm=norm)
        model.fc.bias.data[...] = rng.normal(0, 0.1, model.fc.out_features)
    else:
        raise ValueError(f"net: expected one of {sorted(NETS)}, got {net!r}")
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

def resnet18_mirror(model, torch):
    """ResNet18 at its current alpha in PyTorch: the effective (masked) weights, the same batch norms,
    the unpadded 3/2 max pool of csub's stem (55x55 at 224x224)."""
    tnn = torch.nn

    def conv(c):
        return mirror_conv(c, torch)

    def norm(n):
        if n.__class__.__name__ != "BatchNorm2d":
            raise ValueError(f"resnet18_mirror: expected batch norms, got {n.__class__.__name__}")
        return mirror_norm(n, torch)

    class Block(tnn.Module):
        def __init__(self, b):
            super().__init__()
            self.c1, self.n1, self.c2, self.n2 = conv(b.conv1), norm(b.n1), conv(b.conv2), norm(b.n2)
            self.shortcut = None if b.shortcut is None else tnn.Sequential(conv(b.shortcut[0]), norm(b.shortcut[1]))

        def forward(self, x):
            h = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
            return torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))

    fc = tnn.Linear(model.fc.in_features, model.fc.out_features)
    fc.weight.data = torch.from_numpy(np.array(model.fc.effective_weight(), np.float32))
    fc.bias.data = torch.from_numpy(np.array(model.fc.bias.data, np.float32))
    stem = model.stem
    net = tnn.Sequential(conv(stem[0]), norm(stem[1]), tnn.ReLU(), tnn.MaxPool2d(3, 2),
                         *[Block(b) for b in model.blocks], tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), fc)
    return net.eval()


def mirror(net, model, torch):
    return resnet18_mirror(model, torch) if net.startswith("resnet18") else torch_mirror(model, torch)


def onnx_file(net, model, path, torch):
    """ONNX of the network at its alpha: csub.interop.to_onnx (the [onnx] extra), else the mirror's export."""
    shape = NETS[net][1]
    try:
        from csub import interop
        interop.to_onnx(model, path, model.alpha, input_shape=shape)
        return "csub.interop.to_onnx"
    except ImportError:  # onnx is not installed
        pass
    x = torch.zeros((1,) + shape)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and still the one that runs here
        warnings.simplefilter("ignore")
        torch.onnx.export(mirror(net, model, torch), (x,), path, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return "torch.onnx.export of a PyTorch mirror"


# ------------------------------------------------------------------ one runtime, own process

def run_one(spec):
    """Time one runtime on one network (in this process): {"ms": {batch: ms}, "err": max relative logit
    error against csub's training forward, "version": the runtime's}. The inputs and reference logits
    are the files spec["data"] + ".x{batch}.npy" and ".y{batch}.npy"."""
    threads, reps = spec["threads"], spec["reps"]
    xs = {b: np.load(spec["data"] + f".x{b}.npy") for b in spec["batches"]}
    ref = {b: np.load(spec["data"] + f".y{b}.npy") for b in spec["batches"]}
    rt = spec["runtime"]
    if rt == "csub":
        model = build(spec["net"], spec["sparse"])
        csub.set_num_threads(threads)
        net = model.compress(KEEP if spec["sparse"] else 1.0, input_shape=NETS[spec["net"]][1])
        fns = {b: (lambda x=xs[b]: net(x)) for b in xs}
        version = getattr(csub, "__version__", "?")
    elif rt == "torch":
        import torch
        torch.set_num_threads(threads)
        tm = mirror(spec["net"], build(spec["net"], spec["sparse"]), torch)

        def f(x):
            with torch.inference_mode():
                return tm(torch.from_numpy(x)).numpy()
        fns = {b: (lambda x=xs[b]: f(x)) for b in xs}
        version = torch.__version__
    elif rt == "onnxruntime":
        import onnxruntime as ort
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(spec["onnx"], o, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fns = {b: (lambda x=xs[b]: sess.run(None, {name: x})[0]) for b in xs}
        version = ort.__version__
    else:  # deepsparse runs under its own interpreter: peers_deepsparse.py
        raise ValueError(f"runtime: unknown {rt!r}")
    err = max(float(np.max(np.abs(fns[b]() - ref[b])) / np.max(np.abs(ref[b]))) for b in xs)
    return {"ms": {b: median_ms(fns[b], reps) for b in xs}, "err": err, "version": version}


def deepsparse_python(args):
    """(interpreter, None) of the DeepSparse environment, or (None, why it is skipped)."""
    py = args.deepsparse_python or os.environ.get("CSUB_DEEPSPARSE_PYTHON") or DEEPSPARSE_VENV
    if not os.path.exists(py):
        return None, f"deepsparse: no interpreter at {py}: skipped (create it with `{DEEPSPARSE_SETUP}`)"
    r = subprocess.run([py, "-c", "import deepsparse"], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"deepsparse: `{py} -c 'import deepsparse'` failed ({last}): skipped"
    return py, None


def child_command(rt, spec, ds_python):
    if rt == "deepsparse":
        return [ds_python, os.path.join(HERE, "peers_deepsparse.py"), json.dumps(spec)]
    return [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)]


def peers(args):
    print_machine()
    t_start, la0 = time.perf_counter(), os.getloadavg()
    import torch
    notes = []
    runtimes = []
    for rt in RUNTIMES:
        if rt == "deepsparse":
            ds_python, why = deepsparse_python(args)
            if why:
                notes.append(why)
            else:
                runtimes.append(rt)
        elif subprocess.run([sys.executable, "-c", f"import {rt}"], capture_output=True).returncode == 0:
            runtimes.append(rt)
        else:
            notes.append(f"{rt} is not installed: skipped")
    tmp = tempfile.mkdtemp(prefix="bench_peers-")
    data, sources = prepare(args, tmp, torch)
    versions = {}
    tables = []
    for threads in args.threads:
        table = peers_table(args, threads, runtimes, ds_python, data, notes, versions)
        tables += [f"{threads} thread{'s' if threads > 1 else ''}:", "", table, ""]
    minutes = (time.perf_counter() - t_start) / 60
    la = os.getloadavg()
    reps = ", ".join(f"{NETS[n][0]}: {net_reps(args, n)} forwards at batch "
                     f"{' and '.join(map(str, net_batches(args, n)))}" for n in args.nets)
    src = "; ".join(f"{NETS[n][0]}: {sources[n]}" for n in args.nets)
    doc = [
        "# csub against its peers: cPreResNet20 and ResNet18 inference",
        "",
        "Written by `python benchmarks/bench_peers.py` (its docstring says what is timed and how): "
        f"`{' '.join(['python', 'benchmarks/bench_peers.py'] + sys.argv[1:])}`, {minutes:.1f} minutes.",
        f"Milliseconds per forward, medians ({reps}) after two warm-up calls, the range over "
        f"{args.rounds} round{'s' if args.rounds > 1 else ''}; each runtime in its own process; "
        f"90 % sparse = keep {KEEP} of the block convs' weights (the same zeros in every runtime). "
        f"ONNX ({src}). The last columns: the best peer's median over csub's (above 1: csub is faster), "
        f"and whether that reaches the goal of {GOAL}x.",
        "",
    ] + tables + [
        f"Machine: {machine(versions)}; load average at the start {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f}, "
        f"at the end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
        + (f". **The machine was shared with other work while this ran** (a load above its {os.cpu_count()} "
           "cores slows the runtimes whose threads wait for each other most, the 2-thread cells above all): "
           "compare within a row, not across runs." if max(la0[:2] + la[:2]) > os.cpu_count() else "."),
        "",
        f"DeepSparse runs from its own virtual environment (it pins numpy 1.26): `{DEEPSPARSE_SETUP}`.",
    ]
    if notes:
        doc += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    old = open(args.out).read() if os.path.exists(args.out) else ""
    fold_section = old[old.index(FOLD_SECTION):] if FOLD_SECTION in old else ""  # --fold's, kept
    with open(args.out, "w") as f:
        f.write("\n".join(doc) + "\n" + ("\n" + fold_section if fold_section else ""))
    print(f"wrote {args.out} ({minutes:.1f} minutes)")


def net_reps(args, net):
    return args.reps_resnet18 if net.startswith("resnet18") else args.reps


def net_batches(args, net):
    return args.batches_resnet18 if net.startswith("resnet18") else args.batches


def prepare(args, tmp, torch):
    """For each network of --nets, dense and sparse: the ONNX file, the inputs and csub's training-forward
    logits at each batch, under tmp: ({(net, sparse): (data prefix, onnx path)}, {net: ONNX source})."""
    data, sources = {}, {}
    for net in args.nets:
        shape = NETS[net][1]
        for sparse in (False, True):
            model = build(net, sparse)
            rng = np.random.default_rng(1)
            prefix = os.path.join(tmp, f"{net}-{int(sparse)}")
            for b in net_batches(args, net):
                x = rng.normal(0, 1, (b,) + shape).astype(np.float32)
                np.save(prefix + f".x{b}.npy", x)
                np.save(prefix + f".y{b}.npy", model(x))
            onnx = prefix + ".onnx"
            sources[net] = onnx_file(net, model, onnx, torch)
            data[(net, sparse)] = (prefix, onnx)
    return data, sources


def peers_table(args, threads, runtimes, ds_python, data, notes, versions):
    """Time every runtime on the networks of --nets at `threads` threads: a markdown table."""
    results = {}  # (net, sparse, runtime) -> {batch: [ms per round]}
    for net in args.nets:
        for sparse in (False, True):
            prefix, onnx = data[(net, sparse)]
            for rnd in range(args.rounds):
                for rt in runtimes:
                    spec = dict(runtime=rt, net=net, sparse=sparse, batches=net_batches(args, net), threads=threads,
                                reps=net_reps(args, net), data=prefix, onnx=onnx)
                    r = subprocess.run(child_command(rt, spec, ds_python), capture_output=True, text=True)
                    what = f"{rt} {NETS[net][0]} {'90 % sparse' if sparse else 'dense'} {threads} threads"
                    if r.returncode != 0:
                        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
                        notes.append(f"{what}: failed ({last})")
                        print(f"  {what}: failed\n{r.stderr}", flush=True)
                        continue
                    out = json.loads(r.stdout.strip().splitlines()[-1])
                    versions[rt] = out["version"]
                    if out["err"] > 1e-3:
                        notes.append(f"{what}: logits differ from csub's training forward by "
                                     f"{out['err']:.1e} (relative)")
                    for b, ms in out["ms"].items():
                        results.setdefault((net, sparse, rt), {}).setdefault(int(b), []).append(ms)
                    print(f"  {threads} threads, round {rnd + 1} {net} {'sparse' if sparse else 'dense '} {rt:12s} "
                          + " ".join(f"b{b}: {ms:9.3f} ms" for b, ms in out["ms"].items()), flush=True)

    def cell(key, b):
        v = results.get(key, {}).get(b)
        if not v:
            return "-"
        return f"{min(v):.2f}" if max(v) - min(v) < 0.005 else f"{min(v):.2f}-{max(v):.2f}"

    def versus(net, sparse, b):
        """(best peer's median / csub's, as text; goal met, as text)."""
        mine = results.get((net, sparse, "csub"), {}).get(b)
        best = [(statistics.median(results[(net, sparse, rt)][b]), rt) for rt in runtimes
                if rt != "csub" and b in results.get((net, sparse, rt), {})]
        if not mine or not best:
            return "-", "-"
        ms, rt = min(best)
        ratio = ms / statistics.median(mine)
        return f"{ratio:.2f}x ({rt})", "yes" if ratio >= GOAL else "no"

    lines = ["| network | batch | " + " | ".join(f"{rt} dense" for rt in runtimes) + " | "
             + " | ".join(f"{rt} 90 % sparse" for rt in runtimes)
             + f" | best peer / csub, dense | best peer / csub, sparse | goal {GOAL}x met? (dense, sparse) |",
             "| --- | --- |" + " --- |" * (2 * len(runtimes) + 3)]
    for net in args.nets:
        for b in net_batches(args, net):
            row = [NETS[net][0], str(b)] + [cell((net, False, rt), b) for rt in runtimes] \
                + [cell((net, True, rt), b) for rt in runtimes]
            (rd, gd), (rs, gs) = versus(net, False, b), versus(net, True, b)
            lines.append("| " + " | ".join(row + [rd, rs, f"{gd}, {gs}"]) + " |")
    table = "\n".join(lines)
    print(table)
    return table


def machine(versions):
    from common import cpu_model
    names = [f"{rt} {versions[rt]}" for rt in RUNTIMES if rt in versions]
    return f"{cpu_model()}, {os.cpu_count()} logical cores; " + ", ".join(names)


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
    cases = [("cPreResNet20 bn dense", build("cpreresnet20-bn", False), 1.0, (3, 32, 32)),
             ("cPreResNet20 bn 90 % sparse", build("cpreresnet20-bn", True), KEEP, (3, 32, 32))]
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
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS), help="networks to time")
    ap.add_argument("--reps", type=int, default=31, help="forwards a cell, cPreResNet20 (and --fold)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="cPreResNet20's batches (and --fold's)")
    ap.add_argument("--reps-resnet18", type=int, default=11, help="forwards a cell, ResNet18")
    ap.add_argument("--batches-resnet18", type=int, nargs="+", default=[1, 16], help="ResNet18's batches")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--deepsparse-python", help="the interpreter of DeepSparse's environment (default "
                    "$CSUB_DEEPSPARSE_PYTHON, else benchmarks/.venv-deepsparse/bin/python)")
    ap.add_argument("--out", default=os.path.join(HERE, "peers.md"))
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
