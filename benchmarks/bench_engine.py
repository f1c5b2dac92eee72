#!/usr/bin/env python3
"""csub's dense engine against PyTorch CPU: convolutions, a training step, matmul.

One run prints, after the machine, versions and thread counts (2 threads each):

1. every distinct conv shape of cPreResNet20 (32x32 inputs, batch 128):
   median time of forward + backward (dw and dx) for csub
   (``_core.conv2d_forward`` + ``_core.conv2d_backward``) and for torch
   (``F.conv2d`` + autograd grads of input and weight), GFLOP/s of each, and
   the ratio torch/csub (> 1: csub faster);
2. one whole training step of cPreResNet20 at batch 128 (forward,
   cross-entropy, backward, SGD momentum 0.9, weight decay 5e-4) with
   norm="gn" and norm="bn", csub against a torch module mirroring it layer
   by layer (same initial weights, checked by the first loss); then csub's
   unstructured line (lcs_l) model at alpha 0.05 (keep 0.05, sparse) against
   alpha 1.0, and their ratio;
3. ``_core.gemm`` GFLOP/s on the matmul shapes the convs produce (per image as
   conv.c calls them, M = K_out, N = P*Q, K = C*R*S, and folded over the batch,
   N = 128*P*Q) and on 2048^3, against NumPy's float32 ``a @ b`` at 2048 as the
   machine's BLAS peak (csub's percentage of it).

Times are medians after warm-up runs (time.perf_counter); a call shorter
than ~2 ms is repeated inside one sample; csub and torch samples alternate. Nothing here asserts a timing.
Environment variables such as OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left
as they are (printed at the top); to run without them, unset them for the
command only: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``.
Timings on a loaded machine are slow and noisy; the ratios are what to read.

    python benchmarks/bench_engine.py [--quick]
"""
import argparse
import ctypes
import glob
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
from common import conv_shapes as common_conv_shapes
from common import out_size, print_machine, train_step

try:
    import csub
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import csub
from csub import _core
from csub.models import cpreresnet20
from csub.nn.layers import Conv2d
from csub.nn.loss import CrossEntropyLoss
from csub.optim import SGD

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_engine.py: PyTorch is required as the speed peer but is not installed; "
             "install the CPU build (pip install torch --index-url https://download.pytorch.org/whl/cpu)")

THREADS = 2
BATCH = 128
IMAGE = 32
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


# ----------------------------------------------------------------- timing

def _prepare(fn, warmup, min_sample):
    """Run the warm-up calls; return how many calls one sample makes (about `min_sample` seconds)."""
    for _ in range(warmup):
        fn()
    if min_sample <= 0:
        return 1
    # calibrate on the fastest of a few calls: one late thread wake-up must not decide it
    single, spent = float("inf"), 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        single, spent = min(single, dt), spent + dt
        if spent > 0.05:
            break
    return max(1, math.ceil(min_sample / max(single, 1e-9)))


def _sample(fn, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def bench(fn, reps, warmup, min_sample=0.002, budget=None):
    """Median seconds per call of fn() over `reps` samples after `warmup` calls.

    A sample repeats fn enough times to last about `min_sample` seconds;
    with `budget` (seconds) the sampling stops early once 3 samples are in.
    """
    inner = _prepare(fn, warmup, min_sample)
    times, start = [], time.perf_counter()
    for i in range(reps):
        times.append(_sample(fn, inner))
        if budget is not None and i >= 2 and time.perf_counter() - start > budget:
            break
    return statistics.median(times)


def bench_pair(fa, fb, reps, warmup, min_sample=0.002, budget=None):
    """Medians of fa() and fb() as in ``bench``, their samples alternating so that both see
    the same background load (the ratio is what stays meaningful on a busy machine)."""
    ia = _prepare(fa, warmup, min_sample)
    ib = _prepare(fb, warmup, min_sample)
    ta, tb, start = [], [], time.perf_counter()
    for i in range(reps):
        ta.append(_sample(fa, ia))
        tb.append(_sample(fb, ib))
        if budget is not None and i >= 2 and time.perf_counter() - start > budget:
            break
    return statistics.median(ta), statistics.median(tb)


def fmt_time(s):
    return f"{s * 1e3:9.2f}" if s < 10 else f"{s:8.1f}s"


# ---------------------------------------------------------------- machine

def _corename(lib, symbol):
    try:
        fn = getattr(lib, symbol)
    except AttributeError:
        return None
    fn.restype = ctypes.c_char_p
    v = fn()
    return v.decode() if v else None


def numpy_blas():
    """(description, ctypes handle or None, thread setter name) of the BLAS numpy uses."""
    desc = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        desc = f"{cfg.get('name')} {cfg.get('version')}"
        extra = cfg.get("openblas configuration")
        if extra:
            desc += f" ({' '.join(extra.split())})"
    except Exception:  # older numpy: no dicts mode
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*"))
    lib = None
    if libs:
        try:
            lib = ctypes.CDLL(libs[0])
        except OSError:
            lib = None
    return desc, lib


def csub_blas():
    try:
        import scipy_openblas32
        path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
        lib = ctypes.CDLL(path)
        ver = getattr(scipy_openblas32, "__version__", "")
        return f"scipy-openblas32 {ver}".strip(), lib
    except Exception:
        return "scipy-openblas32", None


def numpy_blas_threads(lib, n):
    """Set the thread count of numpy's OpenBLAS (when it can be reached) and return what it reports."""
    if lib is None:
        return None
    for setter, getter in (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                           ("openblas_set_num_threads", "openblas_get_num_threads")):
        if hasattr(lib, setter) and hasattr(lib, getter):
            getattr(lib, setter)(n)
            return getattr(lib, getter)()
    return None


def header(args, np_desc, np_lib, cs_desc, cs_lib, np_threads):
    print_machine()
    print(f"versions: csub {csub.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"threads : csub {csub.get_num_threads()}, torch {torch.get_num_threads()} "
          f"(interop {torch.get_num_interop_threads()}), numpy BLAS "
          f"{np_threads if np_threads is not None else 'default (not reachable)'}")
    core = _corename(cs_lib, "scipy_openblas_get_corename") if cs_lib else None
    print(f"csub gemm : {cs_desc}" + (f", kernel {core}" if core else ""))
    core = _corename(np_lib, "scipy_openblas_get_corename64_") if np_lib else None
    print(f"numpy BLAS: {np_desc}" + (f", kernel {core}" if core else ""))
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
           if k in os.environ}
    print(f"env     : {env if env else 'no OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE / OMP_NUM_THREADS set'}")
    print(f"mode    : {'--quick' if args.quick else 'full'}; times are medians in ms")


# ----------------------------------------------------------- torch mirror

def _tnorm(norm, c):
    if norm == "gn":
        return tnn.GroupNorm(c, c)
    if norm == "bn":
        return tnn.BatchNorm2d(c)
    raise ValueError(norm)


class TorchPreActBottleneck(tnn.Module):
    """Mirror of csub.models.PreActBottleneck (same attribute names, so state dicts line up)."""

    def __init__(self, in_planes, planes, stride, norm):
        super().__init__()
        out = planes * 4
        self.n1 = _tnorm(norm, in_planes)
        self.conv1 = tnn.Conv2d(in_planes, planes, 1, bias=False)
        self.n2 = _tnorm(norm, planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.n3 = _tnorm(norm, planes)
        self.conv3 = tnn.Conv2d(planes, out, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != out:
            self.shortcut = tnn.Conv2d(in_planes, out, 1, stride=stride, bias=False)

    def forward(self, x):
        a = F.relu(self.n1(x))
        s = x if self.shortcut is None else self.shortcut(a)  # shortcut on the first pre-activation
        h = self.conv1(a)
        h = self.conv2(F.relu(self.n2(h)))
        h = self.conv3(F.relu(self.n3(h)))
        return h + s


class TorchCPreResNet20(tnn.Module):
    """Mirror of csub.models.CPreResNet20: stem conv3x3 -> 6 bottlenecks -> norm, relu -> GAP -> Linear."""

    def __init__(self, in_channels=3, num_classes=10, norm="gn", n=2):
        super().__init__()
        self.stem = tnn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks, in_planes = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(TorchPreActBottleneck(in_planes, planes, stride, norm))
                in_planes = planes * 4
        self.blocks = tnn.Sequential(*blocks)
        self.head = tnn.Sequential(_tnorm(norm, in_planes), tnn.ReLU())
        self.fc = tnn.Linear(in_planes, num_classes, bias=False)

    def forward(self, x):
        h = self.head(self.blocks(self.stem(x)))
        return self.fc(h.mean(dim=(2, 3)))


def copy_weights(cmodel, tmodel):
    """Load csub's parameters and buffers into the torch mirror; every csub tensor must find its twin.

    input_mean / input_std are the data loader's normalisation statistics, not part of forward.
    """
    csd = {k: v for k, v in cmodel.state_dict().items() if k not in ("input_mean", "input_std")}
    tsd = tmodel.state_dict()
    missing = [k for k in csd if k not in tsd or tuple(tsd[k].shape) != tuple(csd[k].shape)]
    cparams = {n for n, _ in cmodel.named_parameters()}
    tparams = {n for n, _ in tmodel.named_parameters()}
    if missing or cparams != tparams:
        sys.exit(f"bench_engine.py: the torch mirror does not match csub's CPreResNet20 "
                 f"(unmatched: {missing or sorted(cparams ^ tparams)})")
    with torch.no_grad():
        for k, v in csd.items():
            tsd[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))


# ---------------------------------------------------------- 1. conv shapes

def conv_shapes():
    """Distinct (C, K, R, stride, padding, H, W) of cPreResNet20's convs, with their counts, in order."""
    return common_conv_shapes(cpreresnet20(norm="gn"), lambda m: [c for c in m.modules() if isinstance(c, Conv2d)],
                              IMAGE)


def bench_convs(shapes, reps, warmup, budget):
    print()
    print(f"1. conv forward + backward (dw, dx), batch {BATCH}, float32; ratio = torch / csub (> 1: csub faster)")
    print(f"{'C':>4} {'K':>4} {'R':>2} {'s':>2} {'p':>2} {'HxW':>6} {'n':>2} | {'csub ms':>9} {'GF/s':>6} |"
          f" {'torch ms':>9} {'GF/s':>6} | {'ratio':>5}")
    rng = np.random.default_rng(0)
    tot_c = tot_t = 0.0
    for (C, K, R, s, p, H, W), count in shapes.items():
        P, Q = out_size(H, R, s, p), out_size(W, R, s, p)
        x = rng.standard_normal((BATCH, C, H, W), dtype=np.float32)
        w = (rng.standard_normal((K, C, R, R), dtype=np.float32) * np.float32(math.sqrt(2.0 / (K * R * R))))
        dy = rng.standard_normal((BATCH, K, P, Q), dtype=np.float32)
        dw = np.zeros_like(w)
        flops = 3 * 2.0 * BATCH * K * C * R * R * P * Q  # forward, dW and dX: one matmul each

        def csub_step():
            _core.conv2d_forward(x, w, None, s, p)
            _core.conv2d_backward(x, w, dy, dw, None, s, p, need_dx=True)

        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w.copy()).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def torch_step():
            y = F.conv2d(tx, tw, None, s, p)
            torch.autograd.grad(y, (tx, tw), tdy)

        # same numbers first: one csub pass against torch (y, dx, dw)
        dw_c = np.zeros_like(w)
        got = (_core.conv2d_forward(x, w, None, s, p),
               _core.conv2d_backward(x, w, dy, dw_c, None, s, p, need_dx=True), dw_c)
        y_t = F.conv2d(tx, tw, None, s, p)
        want = (y_t.detach().numpy(), *(g.numpy() for g in torch.autograd.grad(y_t, (tx, tw), tdy)))
        for name, g, r in zip(("y", "dx", "dw"), got, want):
            err = float(np.max(np.abs(g - r)) / (np.max(np.abs(r)) + 1e-30))
            if err > 1e-4:
                print(f"   warning: csub and torch {name} differ (relative {err:.1e})")

        tc, tt = bench_pair(csub_step, torch_step, reps, warmup, budget=budget)
        tot_c += tc * count
        tot_t += tt * count
        print(f"{C:>4} {K:>4} {R:>2} {s:>2} {p:>2} {f'{H}x{W}':>6} {count:>2} | {fmt_time(tc)} "
              f"{flops / tc / 1e9:6.1f} | {fmt_time(tt)} {flops / tt / 1e9:6.1f} | {tt / tc:5.2f}")
    n = sum(shapes.values())
    print(f"{'sum over the ' + str(n) + ' convs (x n)':>28} | {fmt_time(tot_c)} {'':>6} |"
          f" {fmt_time(tot_t)} {'':>6} | {tot_t / tot_c:5.2f}")


# ---------------------------------------------------------- 2. train step

def bench_steps(reps, warmup, budget):
    print()
    print(f"2. training step of cPreResNet20, batch {BATCH}, 32x32x3, 10 classes: forward, cross-entropy,"
          f" backward, SGD (momentum {MOMENTUM}, wd {WEIGHT_DECAY})")
    print(f"{'norm':<34} | {'csub ms':>9} {'img/s':>6} | {'torch ms':>9} {'img/s':>6} | {'ratio':>5}"
          f" | first loss csub / torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BATCH, 3, IMAGE, IMAGE), dtype=np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int64)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for norm, label in (("gn", "gn (GroupNorm, 1 group/channel)"), ("bn", "bn (BatchNorm, batch stats)")):
        csub.manual_seed(0)
        cmodel = cpreresnet20(norm=norm)
        cmodel.train()
        tmodel = TorchCPreResNet20(norm=norm)
        copy_weights(cmodel, tmodel)
        tmodel.train()
        copt = SGD(cmodel.parameters(), LR, MOMENTUM, WEIGHT_DECAY)
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        crit = CrossEntropyLoss()
        losses = {}

        def csub_step():
            copt.zero_grad()
            loss = crit(cmodel(x), y)
            cmodel.backward(crit.backward())
            copt.step()
            losses.setdefault("csub", loss)

        def torch_step():
            topt.zero_grad()
            loss = F.cross_entropy(tmodel(tx), ty)
            loss.backward()
            topt.step()
            losses.setdefault("torch", loss.item())

        tc, tt = bench_pair(csub_step, torch_step, reps, warmup, min_sample=0, budget=budget)
        lc, lt = losses["csub"], losses["torch"]
        flag = "" if abs(lc - lt) <= 1e-3 * max(1.0, abs(lt)) else "  MISMATCH"
        print(f"{label:<34} | {fmt_time(tc)} {BATCH / tc:6.0f} | {fmt_time(tt)} {BATCH / tt:6.0f} |"
              f" {tt / tc:5.2f} | {lc:.5f} / {lt:.5f}{flag}")
    print("   (ratio = torch / csub; DESIGN.md budget: >= 1, goal 1.5)")
    bench_sparse_step(x, y, reps, warmup, budget)


def bench_sparse_step(x, y, reps, warmup, budget):
    """The unstructured line (lcs_l) step at alpha 0.05 (keep 0.05 of the block convs' weights:
    top-k mask, CSR kernels) against the same model at alpha 1.0 (nothing masked), alternating."""
    csub.manual_seed(0)
    model = cpreresnet20(norm="gn", regime="unstructured", subspace="line")
    model.train()
    opt = SGD(model.parameters(), LR, MOMENTUM, WEIGHT_DECAY)
    crit = CrossEntropyLoss()

    t1, t05 = bench_pair(train_step(model, opt, crit, x, y, 1.0), train_step(model, opt, crit, x, y, 0.05), reps,
                         warmup, min_sample=0, budget=budget)
    print(f"{'gn, unstructured line, alpha 1.0':<34} | {fmt_time(t1)} {BATCH / t1:6.0f} |")
    print(f"{'gn, unstructured line, alpha 0.05':<34} | {fmt_time(t05)} {BATCH / t05:6.0f} |"
          f" keep-0.05 step / alpha-1.0 step {t05 / t1:.2f} (goal < 0.35)")


# ----------------------------------------------------------------- 3. gemm

def gemm_shapes(shapes):
    """(label, M, N, K) of the forward matmuls of the convs, per image and folded over the batch."""
    per_image, folded = {}, {}
    for (C, K, R, s, p, H, W) in shapes:
        P, Q = out_size(H, R, s, p), out_size(W, R, s, p)
        per_image.setdefault((K, P * Q, C * R * R), f"conv {C}->{K} {R}x{R}/{s} {H}x{W}")
        folded.setdefault((K, BATCH * P * Q, C * R * R), f"conv {C}->{K} {R}x{R}/{s} x{BATCH}")
    big = sorted(folded, key=lambda m: -m[0] * m[1] * m[2])
    rows = [("image", lab, *mnk) for mnk, lab in per_image.items()]
    rows += [("batch", folded[mnk], *mnk) for mnk in big]
    rows.append(("square", "2048^3", 2048, 2048, 2048))
    return rows


def bench_gemm(shapes, reps, warmup, budget):
    print()
    print("3. dense matmul C = A B, float32, 2 threads: csub _core.gemm vs numpy a @ b; peak = numpy at 2048^3")
    rows = gemm_shapes(shapes)
    rng = np.random.default_rng(2)
    data = {}
    for _, _, M, N, K in rows:
        if (M, N, K) not in data:
            data[(M, N, K)] = (rng.standard_normal((M, K), dtype=np.float32),
                               rng.standard_normal((K, N), dtype=np.float32))
    # csub first, then numpy: numpy's OpenBLAS threads spin after each call and would
    # steal cycles from csub's threads if the two alternated.
    t_c = {}
    for _, _, M, N, K in rows:
        a, b = data[(M, N, K)]
        if (M, N, K) not in t_c:
            t_c[(M, N, K)] = bench(lambda: _core.gemm(a, b), reps, warmup, budget=budget)
    # conv.c calls the per-image matmul serially, one image per thread: time that too
    t_1 = {}
    csub.set_num_threads(1)
    try:
        for kind, _, M, N, K in rows:
            a, b = data[(M, N, K)]
            if kind == "image" and (M, N, K) not in t_1:
                t_1[(M, N, K)] = bench(lambda: _core.gemm(a, b), reps, warmup, budget=budget)
    finally:
        csub.set_num_threads(THREADS)
    t_n = {}
    for _, _, M, N, K in rows:
        a, b = data[(M, N, K)]
        if (M, N, K) not in t_n:
            t_n[(M, N, K)] = bench(lambda: a @ b, reps, warmup, budget=budget)
    a, b = data[(2048, 2048, 2048)]
    err = float(np.max(np.abs(_core.gemm(a, b) - a @ b)) / np.max(np.abs(a @ b)))
    peak = 2.0 * 2048 ** 3 / t_n[(2048, 2048, 2048)] / 1e9
    print(f"   BLAS peak (numpy 2048^3): {peak:.1f} GFLOP/s; csub vs numpy at 2048: max rel. diff {err:.1e}")
    print(f"{'':<6} {'from':<26} {'M':>5} {'N':>7} {'K':>5} | {'csub ms':>9} {'GF/s':>6} {'%peak':>5} |"
          f" {'1 thr':>6} | {'numpy ms':>9} {'GF/s':>6}")
    for kind, lab, M, N, K in rows:
        flops = 2.0 * M * N * K
        tc, tn = t_c[(M, N, K)], t_n[(M, N, K)]
        gc = flops / tc / 1e9
        g1 = f"{flops / t_1[(M, N, K)] / 1e9:6.1f}" if (M, N, K) in t_1 else f"{'-':>6}"
        print(f"{kind:<6} {lab:<26} {M:>5} {N:>7} {K:>5} | {fmt_time(tc)} {gc:6.1f} {100 * gc / peak:4.0f}% |"
              f" {g1} | {fmt_time(tn)} {flops / tn / 1e9:6.1f}")
    print("   (image: one image's forward matmul as conv.c computes it, M=K_out, N=P*Q, K=C*R*S;"
          f" batch: the same folded over {BATCH} images;\n"
          "    1 thr: csub GFLOP/s on one thread, the way conv.c calls it, one image per thread;"
          " %peak: csub on 2 threads / numpy 2048^3)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes on 2 cores)")
    args = ap.parse_args()
    if args.quick:
        conv_r, step_r, gemm_r = (5, 1, 1.5), (3, 1, 8.0), (5, 1, 1.0)
    else:
        conv_r, step_r, gemm_r = (15, 3, None), (10, 2, None), (15, 3, None)

    csub.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    np_desc, np_lib = numpy_blas()
    cs_desc, cs_lib = csub_blas()
    np_threads = numpy_blas_threads(np_lib, THREADS)
    header(args, np_desc, np_lib, cs_desc, cs_lib, np_threads)
    t0 = time.perf_counter()
    shapes = conv_shapes()
    bench_convs(shapes, *conv_r)
    bench_steps(*step_r)
    bench_gemm(shapes, *gemm_r)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
