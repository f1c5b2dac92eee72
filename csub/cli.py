"""Command line: ``python -m csub train|eval|export|budget|demo|import-reference|onnx``.

  python -m csub train --method lcs_l --model cnn --dataset fashion-mnist --epochs 10 --out runs/lcs_l
  python -m csub eval runs/lcs_l --alphas 0.05 0.1 0.5 1
  python -m csub export runs/lcs_l runs/lcs_l/model.safetensors
  python -m csub budget runs/lcs_l/model.safetensors --latency-ms 2 0.5 1
  python -m csub demo
  python -m csub import-reference model_200 ref.safetensors --model cpreresnet20 --regime unstructured
  python -m csub onnx ref.safetensors ref_0.1.onnx --alpha 0.1
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, checkpoint, data, modelfile, models, regimes, train

DATASETS = {
    "fashion-mnist": lambda split: data.fashion_mnist(split),
    "fashion-mnist-bundled": lambda split: data.fashion_mnist(split, bundled=True),
    "mnist": lambda split: data.mnist(split),
    "cifar10": lambda split: data.cifar10(split),
}
SUBSPACE_OF = {name: m.subspace for name, m in regimes.METHODS.items()}
CURVE_X = {name: r.curve_x for name, r in regimes.REGIMES.items()}
DEFAULT_NORM = {"mlp": None, "cnn": "gn", "cpreresnet20": "gn", "resnet18": "bn"}


class CLIError(Exception):
    """A problem with the command's arguments or files, reported without a traceback."""


def check_writable_file(path: str, what: str) -> str:
    """Before any work: refuse a file path csub could not write later (its directory missing or not
    a directory, a directory in its place, a directory that refuses new files). Raises the OSError
    subclass the write itself would raise, naming ``what`` and the path."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"{what}: {path} is a directory, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise type(e)(e.errno, f"{what}: cannot write {path}: {e.strerror}") from None
    return path


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CLIError(f"{path}: not valid JSON ({e})") from None


def _model_kwargs(args, images):
    in_channels, size = images.shape[1], images.shape[2]
    norm = args.norm if args.norm is not None else DEFAULT_NORM[args.model]
    if norm is None and args.regime == "structured" and args.method != "standard":
        norm = "gn"  # a structured line lives in its norms: the MLP gets group norm (one group)
    kw = dict(regime=None if args.method == "standard" else args.regime, subspace=SUBSPACE_OF[args.method],
              norm=norm)
    if args.model == "mlp":
        kw.update(in_features=int(images[0].size), in_channels=in_channels)
    elif args.model == "cnn":
        kw.update(in_channels=in_channels, image_size=size)
    else:
        kw.update(in_channels=in_channels, num_classes=10)
    return kw


def build_model(config: Dict[str, Any], images: np.ndarray) -> models.SubspaceNet:
    """The model a run's config.json describes (model, regime, method, norm, optional widths), for
    images shaped like ``images`` (N, C, H, W)."""
    args = argparse.Namespace(**config)
    kw = _model_kwargs(args, images)
    if "widths" in config:
        kw["widths"] = tuple(config["widths"])
    return models.build(args.model, **kw)


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: check --out, write config.json, fit (data-parallel under mpiexec), print the results."""
    import csub
    from . import distributed as dist

    csub.manual_seed(args.seed)
    if dist.launched():  # under mpiexec: one data-parallel run over the ranks
        dist.init(args.threads or None)
    elif args.threads:
        csub.set_num_threads(args.threads)
    config = {k: getattr(args, k) for k in ("model", "dataset", "regime", "method", "norm", "seed", "topk",
                                            "num_bits")}
    cfg_path = os.path.join(args.out, "config.json")
    if os.path.exists(cfg_path):
        old = _read_json(cfg_path)
        if not args.resume:
            raise CLIError(f"--out: {args.out} already holds a run; use --resume to continue it or another --out")
        if old != config:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            raise CLIError(f"--resume: {args.out} was trained with other settings (old, new): {diff}")
    train.check_out(args.out, ("config.json", train.CHECKPOINT, "history.json", "eval.json", "eval.csv"),
                    create=False)  # nothing is created before the arguments are checked
    tr, te = DATASETS[args.dataset]("train"), DATASETS[args.dataset]("test")
    model = build_model(config, tr[0])
    train.check_method(model, args.method, args.regime, args.topk, args.num_bits)
    dist.barrier()  # every rank has looked at --out before rank 0 writes to it
    if dist.rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        checkpoint.atomic_write(cfg_path, json.dumps(config, indent=1).encode())
    extra = dict(alpha_per_rank=True) if args.alpha_per_rank else {}
    train.fit(model, tr, te, method=args.method, regime=args.regime, epochs=args.epochs,
              batch_size=args.batch_size, lr=args.lr, seed=args.seed, out=args.out, resume=args.resume,
              topk=args.topk, num_bits=args.num_bits, progress=not args.quiet,
              sync_batchnorm=args.sync_batchnorm, **extra)
    if dist.rank() == 0:
        with open(os.path.join(args.out, "eval.json")) as f:
            print(train.format_table(json.load(f)))
    return 0


def load_run(run: str) -> Tuple[models.SubspaceNet, Dict[str, Any], Tuple[np.ndarray, np.ndarray]]:
    """(model, config, test data) of a finished or interrupted run directory, or of a model file;
    the test data are (images uint8 (N, C, H, W), labels int64 (N,))."""
    if os.path.isfile(run):
        return load_model_file(run)
    for name in ("config.json", train.CHECKPOINT):
        if not os.path.exists(os.path.join(run, name)):
            raise CLIError(f"run: {run} has no {name} (not a csub run directory?)")
    config = _read_json(os.path.join(run, "config.json"))
    if not isinstance(config, dict):
        raise CLIError(f"{os.path.join(run, 'config.json')}: expected a JSON object")
    config.setdefault("num_bits", None)
    te = DATASETS[config["dataset"]]("test")
    model = build_model(config, te[0])
    state = checkpoint.load(os.path.join(run, train.CHECKPOINT))
    model.load_state_dict(state["model"])
    return model, config, te


# The datasets whose test images fit a model file's input shape, when the file does not name one.
DATASET_OF_SHAPE = {(1, 28, 28): "fashion-mnist", (3, 32, 32): "cifar10"}


def load_model_file(path: str) -> Tuple[models.SubspaceNet, Dict[str, Any], Tuple[np.ndarray, np.ndarray]]:
    """(model, config, test data) of a model file (``csub.export``, ``import-reference``); the test
    data is the dataset the file names (``dataset`` in its metadata) or the one its input fits."""
    with open(path, "rb") as f:
        meta = modelfile.read_meta(f.read())
    model = models.load(path)
    dataset = meta.get("dataset") or DATASET_OF_SHAPE.get(tuple(meta["input_shape"]))
    if dataset not in DATASETS:
        raise CLIError(f"run: {path} names no dataset csub has for its input {meta['input_shape']}")
    method = {"line": "lcs_l", "point": "lcs_p"}.get(model.subspace, "standard") if model.regime else "standard"
    config = dict(model=meta["model"], dataset=dataset, regime=model.regime, method=method, norm=model.norm,
                  topk=None, num_bits=None)
    return model, config, DATASETS[dataset]("test")


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: evaluate a run or model file over an alpha grid, print, save (and plot) the results."""
    # a run directory holds its results; a model file's go beside it
    out = args.run if os.path.isdir(args.run) else os.path.dirname(os.path.abspath(args.run))
    for name in ("eval_cli.json", "eval_cli.csv"):  # where the results go, checked before the work
        check_writable_file(os.path.join(out, name), "run")
    if args.plot:
        check_writable_file(args.plot, "--plot")
    model, config, te = load_run(args.run)
    alphas = args.alphas or train.default_alphas(config["method"], config.get("topk"), config["regime"],
                                                 model.bit_range, config.get("num_bits"), model.width_range)
    results = train.evaluate(model, te, alphas)
    print(train.format_table(results), flush=True)  # shown even if saving fails below
    train.save_results(out, results, name="eval_cli")
    if args.plot:
        from . import plot

        x = CURVE_X[config["regime"]] if config["method"] != "standard" else "alpha"
        print("plot:", plot.accuracy_curve({config["method"]: results}, args.plot, x=x))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Evaluate a run over its alpha grid and export the subspace with those accuracy levels."""
    check_writable_file(args.out, "out")  # before the evaluation, not after
    model, config, te = load_run(args.run)
    alphas = train.default_alphas(config["method"], config.get("topk"), config["regime"], model.bit_range,
                                  config.get("num_bits"), model.width_range)
    results = train.evaluate(model, te, alphas)
    print(train.format_table(results), flush=True)
    modelfile.export(model, args.out, input_shape=te[0].shape[1:], levels=results)
    print(f"exported: {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


def follow_budget(net: Any, images: np.ndarray, labels: np.ndarray, latencies_ms: Sequence[float],
                  memory_bytes: Optional[int] = None, batch_size: int = 1, reps: int = 10,
                  out: Callable[[str], Any] = print, cal: Any = None) -> List[Optional[float]]:
    """Calibrate ``net`` (a CompressedNet) on this machine (or take ``cal``, its calibration), then for
    each latency budget (milliseconds) in turn pick the most accurate alpha that fits (and fits in
    ``memory_bytes``), move there and classify the first ``batch_size`` of ``images`` uint8
    (N, C, H, W) against ``labels`` (N,). Returns the picked alphas (None where nothing fits)."""
    cal = cal if cal is not None else net.calibrate(batch_size=batch_size, reps=reps)
    out(f"calibration (batch {batch_size}, median of {reps}):")
    out(cal.table())
    mean, std = net.meta_input_stats()
    x = ((images[:batch_size] / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]).astype("float32")
    picks = []
    for budget in latencies_ms:
        alpha = cal.pick_alpha(latency_ms=budget, memory_bytes=memory_bytes)
        if alpha is None:
            out(f"budget {budget:8.3f} ms: nothing fits")
            picks.append(None)
            continue
        net.set_alpha(alpha)
        t = time.perf_counter()
        pred = net.predict(x)
        ms = (time.perf_counter() - t) * 1e3
        info = net.info()
        level = dict(unstructured=f"keep {info['keep']:.3f}", structured=f"width {info['width']:.3f}",
                     quantized=f"{info['bits']} bits").get(info["regime"], "dense")
        out(f"budget {budget:8.3f} ms: alpha {alpha:.4f} ({level}), {ms:.3f} ms, "
            f"{int((pred == labels[:batch_size]).sum())}/{batch_size} correct")
        picks.append(alpha)
    return picks


def cmd_budget(args: argparse.Namespace) -> int:
    """``budget``: follow a changing latency budget with an exported model on this machine."""
    import csub

    net = csub.CompressedNet(args.model)
    te = DATASETS[args.dataset]("test")
    if tuple(te[0].shape[1:]) != tuple(net.info()["input_shape"]):
        raise CLIError(f"--dataset {args.dataset}: images {te[0].shape[1:]} do not fit the model's "
                       f"input {net.info()['input_shape']}")
    memory = int(args.memory_mb * 1e6) if args.memory_mb else None
    follow_budget(net, te[0], te[1], args.latency_ms, memory, args.batch, args.reps)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small lcs_l line on the bundled Fashion-MNIST subset, print and plot the curve."""
    import csub

    out = args.out
    train.check_out(out, ("config.json", train.CHECKPOINT, "history.json", "eval.json", "eval.csv",
                          "accuracy.png", "model.safetensors"))
    csub.manual_seed(0)
    tr = data.fashion_mnist("train", bundled=True)
    te = data.fashion_mnist("test", bundled=True)
    print(f"csub {__version__} demo: an LCS line for unstructured sparsity on the bundled "
          f"Fashion-MNIST subset ({len(tr[1])} train / {len(te[1])} test images), "
          f"{args.epochs} epochs, {csub.get_num_threads()} threads. Output: {out}/")
    t0 = time.time()
    model = models.cnn(widths=(16, 32, 64), regime="unstructured", subspace="line")
    config = dict(model="cnn", dataset="fashion-mnist-bundled", regime="unstructured", method="lcs_l",
                  norm="gn", seed=0, topk=None, num_bits=None, widths=[16, 32, 64])
    checkpoint.atomic_write(os.path.join(out, "config.json"), json.dumps(config, indent=1).encode())
    train.fit(model, tr, te, method="lcs_l", epochs=args.epochs, lr=0.1, out=out, progress=not args.quiet,
              eval_alphas=train.UNSTRUCTURED_ALPHAS)
    with open(os.path.join(out, "eval.json")) as f:
        results = json.load(f)
    print(train.format_table(results))
    print(f"trained and evaluated in {time.time() - t0:.0f} s")
    try:
        from . import plot

        print("plot:", plot.accuracy_curve({"lcs_l (demo)": results}, os.path.join(out, "accuracy.png")))
    except ImportError as e:
        print(f"no plot: {e}")
    path = modelfile.export(model, os.path.join(out, "model.safetensors"), levels=results)
    print(f"\nexported the line: {path}; the C runtime follows a changing latency budget:")
    from .runtime import CompressedNet

    net = CompressedNet(path)
    cal = net.calibrate(batch_size=1, reps=10)  # the budgets are set from the calibration that answers them
    fastest = min(r["latency_ms"] for r in cal.levels)
    follow_budget(net, te[0], te[1], [fastest * f for f in (100, 1.05, 1.6, 100)], batch_size=1, cal=cal)
    return 0


def cmd_import_reference(args: argparse.Namespace) -> int:
    """Convert a checkpoint of the method's PyTorch reference code (CIFAR-10) into a csub model file."""
    from safetensors.numpy import save as st_save

    from .interop import from_reference

    norm = args.norm or ("in" if args.regime == "structured" else "gn")
    kw = {}
    if args.bit_range:
        kw["bit_range"] = tuple(args.bit_range)
    if args.width_range:
        kw["width_range"] = tuple(args.width_range)
    try:
        model = from_reference(args.checkpoint, model=args.model, regime=args.regime, subspace=args.subspace,
                               norm=norm, **kw)
    except ImportError as e:
        raise CLIError(str(e)) from None
    meta = modelfile.describe(model, (model.in_channels, 32, 32))
    meta["dataset"] = "cifar10"  # the reference's data: the test set eval and export use with the file
    tensors = {k: v.astype("float32") for k, v in model.state_dict().items()}
    checkpoint.atomic_write(args.out, st_save(tensors, metadata={"csub": json.dumps(meta)}))
    print(f"{args.checkpoint}: reference {args.model} ({args.regime}, {args.subspace}, {norm}) -> {args.out} "
          f"({model.num_parameters()} parameter values, {os.path.getsize(args.out)} bytes)")
    return 0


def cmd_onnx(args: argparse.Namespace) -> int:
    """Write the network of a run or model file at one alpha as ONNX."""
    from .interop import to_onnx

    if os.path.isfile(args.run):  # a model file knows its input shape: no data needed
        with open(args.run, "rb") as f:
            shape = modelfile.read_meta(f.read())["input_shape"]
        model = models.load(args.run)
    else:
        model, _, te = load_run(args.run)
        shape = te[0].shape[1:]
    shape = tuple(args.input_shape or shape)
    try:
        to_onnx(model, args.out, args.alpha, input_shape=shape, opset=args.opset)
    except (OSError, ImportError, TypeError) as e:
        raise CLIError(str(e)) from None
    print(f"{args.out}: {model.config['model']} ({model.regime}, {model.subspace}) at alpha {args.alpha}, "
          f"input (N, {', '.join(map(str, shape))}), {os.path.getsize(args.out)} bytes")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python -m csub`` with ``argv`` (default: sys.argv[1:]); returns the exit status: 0, 1
    for a file problem, 2 for bad arguments or data (argparse exits on its own errors)."""
    p = argparse.ArgumentParser(prog="python -m csub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"csub {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a subspace or a baseline")
    t.add_argument("--model", choices=sorted(models.MODELS), default="cnn")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist")
    t.add_argument("--regime", choices=train.REGIMES, default="unstructured")
    t.add_argument("--method", choices=train.METHODS, default="lcs_l")
    t.add_argument("--norm", choices=["bn", "gn", "in"], default=None,
                   help="default: gn for cnn and cpreresnet20, bn for resnet18; for mlp none "
                        "(gn with one group in the structured regime)")
    t.add_argument("--topk", type=float, default=None, help="keep fraction for target_topk")
    t.add_argument("--num-bits", type=int, default=None, help="bit width for target_bits")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=None, help="default 0.1 (unstructured, structured), 0.025 (quantized)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--alpha-per-rank", action="store_true",
                   help="under mpiexec: each rank samples its own alpha per step (default: one alpha per step)")
    t.add_argument("--sync-batchnorm", action="store_true",
                   help="under mpiexec: batch-norm statistics over the global batch (default: per rank)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run over an alpha grid")
    e.add_argument("run")
    e.add_argument("--alphas", type=float, nargs="+")
    e.add_argument("--plot", help="write a PNG of accuracy against the regime's level (sparsity, width or bits)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="evaluate a run over its alpha grid and export it to one model file")
    x.add_argument("run")
    x.add_argument("out")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("budget", help="run an exported model under a changing latency budget")
    b.add_argument("model")
    b.add_argument("--latency-ms", type=float, nargs="+", required=True, help="budgets in turn, milliseconds")
    b.add_argument("--memory-mb", type=float, default=None)
    b.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist-bundled")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--reps", type=int, default=10)
    b.set_defaults(func=cmd_budget)

    d = sub.add_parser("demo", help="train a small line on the bundled data, print and plot the curve")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--out", default="csub_demo")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("import-reference", help="convert a checkpoint of the method's PyTorch reference code "
                                                 "into a model file")
    r.add_argument("checkpoint", help="the reference's torch.save(state_dict) file, or a .safetensors file")
    r.add_argument("out", help="the model file to write (.safetensors)")
    r.add_argument("--model", default="cpreresnet20", choices=["cpreresnet20", "resnet18"])
    r.add_argument("--regime", default="unstructured", choices=list(regimes.REGIMES))
    r.add_argument("--subspace", default="line", choices=["line", "point"])
    r.add_argument("--norm", default=None, choices=["gn", "bn", "in"], help="default gn (structured: in)")
    r.add_argument("--bit-range", type=int, nargs=2, metavar=("MIN", "MAX"), help="quantized: default 3 8")
    r.add_argument("--width-range", type=float, nargs=2, metavar=("LO", "HI"), help="structured: default 0.25 1")
    r.set_defaults(func=cmd_import_reference)

    o = sub.add_parser("onnx", help="write a run or model file at one alpha as an ONNX graph")
    o.add_argument("run", help="a run directory or a model file")
    o.add_argument("out", help="the .onnx file to write")
    o.add_argument("--alpha", type=float, required=True)
    o.add_argument("--opset", type=int, default=None, help="default 17")
    o.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="default: the images of the run's dataset")
    o.set_defaults(func=cmd_onnx)

    args = p.parse_args(argv)
    if getattr(args, "epochs", 1) < 1:
        p.error("--epochs must be >= 1")
    if getattr(args, "method", None) == "target_topk" and args.topk is None:
        p.error("--method target_topk needs --topk")
    if getattr(args, "method", None) == "target_bits" and args.num_bits is None:
        p.error("--method target_bits needs --num-bits")
    try:
        return args.func(args)
    except (CLIError, ValueError) as e:  # exit 2: the arguments or the data they name
        return _fail(args.command, str(e), 2)
    except OSError as e:  # exit 1: every file problem (missing, permissions, a directory in a file's place, ...)
        return _fail(args.command, _os_error(e), 1)


def _fail(command, message, code):
    """Report an error in one line and return its exit code; under mpiexec end every rank with it
    (the others must not wait for this one)."""
    print(f"python -m csub {command}: error: {message}", file=sys.stderr)
    from . import distributed

    distributed.abort(code)
    return code


def _os_error(e):
    """One line for an OSError: its message and the file(s) it names."""
    msg = e.strerror or str(e)
    names = [os.fspath(f) for f in (e.filename, e.filename2) if f is not None]
    if names and not any(n in msg for n in names):
        msg = f"{msg}: " + " -> ".join(names)
    return msg.replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())
