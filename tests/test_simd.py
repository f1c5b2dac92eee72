"""Every instruction-set variant of the SIMD kernels, forced with CSUB_ISA, against the float64 twins.

The kernels with variants (csrc/internal.h: CSUB_VARIANTS and the int8
table) are the activations and residual add (act.c), the norms (norm.c,
including group norm's AVX-512 form for short groups and the row-band split
of one image), the CSR kernels (csr.c) and the integer kernels (int8.c).
A process runs one level, chosen once, so each level the CPU runs gets its
own short subprocess, which compares every kernel with its NumPy twin from
tests/reference and reports the largest error and a digest of the outputs.
Floating-point contraction is off except in the CSR kernels, so every level
must give the same bits as the baseline for the other kernels; the CSR
kernels fuse multiply-adds from avx2 up and agree to float rounding.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csub import _core

REPO = Path(__file__).resolve().parent.parent
LEVELS = ["baseline", "avx2", "avx512", "avx512vnni"]  # each CPU runs a prefix of this list
SUPPORTED = LEVELS[:LEVELS.index(_core.isa()) + 1] if not os.environ.get("CSUB_ISA") else None

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from csub import _core
from reference import misc, norm as nref, spconv as sref, int8 as iref

out = {"isa": _core.isa(), "int8_kernel": _core.int8_kernel(), "err": {}, "digest": {}}
rng = np.random.default_rng(0)


def f32(*shape, loc=0.0, scale=1.0):
    return (rng.normal(loc, scale, shape)).astype(np.float32)


def check(name, got, want, tol):
    # error relative to the reference's magnitude, as tests/gradcheck.assert_close
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    err = float(np.abs(got - want).max()) / scale if want.size else 0.0
    out["err"][name] = [err, tol]
    out["digest"][name] = hashlib.sha1(np.ascontiguousarray(got, np.float32).tobytes()).hexdigest()


for threads in (1, 2):
    _core.set_num_threads(threads)
    t = f"/t{threads}"
    # act.c: chunks of 16384, a tail, and enough values for the threads to share them
    x, dy, z = f32(70001), f32(70001), f32(70001)
    x[::97] = 0.0
    check("relu" + t, _core.relu_forward(x), misc.relu_forward(x), 0)
    check("relu_back" + t, _core.relu_backward(x, dy), misc.relu_backward(x, dy), 0)
    check("add" + t, _core.add(x, z), misc.add_forward(x, z), 1e-7)

    # norm.c, training kernels: batch norm (training and evaluation) and group norm, forward and backward
    for shape, G in (((4, 6, 9, 7), 3), ((2, 16, 33, 5), 4), ((3, 5, 17), 5)):
        C = shape[1]
        x, dy = f32(*shape, loc=2.0, scale=1.5), f32(*shape)
        g, b = f32(C, loc=1.0, scale=0.3), f32(C, scale=0.3)
        rm, rv = f32(C, loc=2.0, scale=0.3), rng.uniform(0.5, 3, C).astype(np.float32)
        s = "x".join(map(str, shape))
        for training in (True, False):
            y, mean, invstd = _core.batchnorm_forward(x, g, b, rm.copy(), rv.copy(), 0.1, 1e-5, training)
            ey = nref.batchnorm_forward(x, g, b, rm, rv, eps=1e-5, training=training)[0]
            check(f"bn_fwd/{s}/{training}{t}", y, ey, 1e-5)
            dg, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
            dx = _core.batchnorm_backward(x, g, dy, mean, invstd, dg, db, training)
            edx, edg, edb = nref.batchnorm_backward(x, g, dy, rm, rv, eps=1e-5, training=training)
            check(f"bn_dx/{s}/{training}{t}", dx, edx, 1e-4)
            check(f"bn_dg/{s}/{training}{t}", dg, edg, 1e-4)
            check(f"bn_db/{s}/{training}{t}", db, edb, 1e-5)
        y, mean, invstd = _core.groupnorm_forward(x, g, b, G, 1e-5)
        check(f"gn_fwd/{s}{t}", y, nref.groupnorm_forward(x, g, b, G, eps=1e-5)[0], 1e-5)
        dg, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
        dx = _core.groupnorm_backward(x, g, dy, mean, invstd, dg, db)
        edx, edg, edb = nref.groupnorm_backward(x, g, dy, G, eps=1e-5)
        check(f"gn_dx/{s}{t}", dx, edx, 1e-4)
        check(f"gn_dg/{s}{t}", dg, edg, 1e-4)
        check(f"gn_db/{s}{t}", db, edb, 1e-5)

    # norm.c, inference kernels: generic groups, the AVX-512 form's shapes (whole 32-value blocks up to
    # 1024 values per group), and one image split into row bands across the threads (N < threads)
    for shape, G in (((2, 6, 5, 3), 3), ((2, 24, 8, 8), 24), ((1, 32, 4, 16), 8), ((3, 40, 4, 8), 40),
                     ((1, 4, 32, 48), 4), ((1, 8, 130, 128), 8)):
        C = shape[1]
        x = f32(*shape, loc=3.0, scale=2.0)
        g, b = f32(C, loc=1.0, scale=0.3), f32(C, scale=0.3)
        rm, rv = f32(C, loc=3.0, scale=0.5), rng.uniform(0.5, 4, C).astype(np.float32)
        s = "x".join(map(str, shape))
        for relu in (False, True):
            act = (lambda v: np.maximum(v, 0)) if relu else (lambda v: v)
            check(f"gn_infer/{s}/{relu}{t}", _core.groupnorm_infer(x, g, b, G, relu=relu),
                  act(nref.groupnorm_forward(x, g, b, G)[0]), 1e-5)
            check(f"bn_infer/{s}/{relu}{t}", _core.batchnorm_infer(x, g, b, rm, rv, relu=relu),
                  act(nref.batchnorm_forward(x, g, b, rm, rv, training=False)[0]), 1e-5)

    # csr.c: CSR convolution forward (gather; the stride-2 layout copies every other value) and
    # backward (dots for the weight, gather for the input gradient), and the CSR linear layer
    for N, C, H, W, K, R, st, pad, keep in ((2, 8, 9, 9, 16, 3, 1, 1, 0.3), (3, 6, 12, 11, 8, 3, 2, 1, 0.5),
                                            (2, 16, 7, 7, 12, 1, 1, 0, 0.2), (1, 16, 40, 40, 16, 3, 1, 1, 0.6)):
        w = f32(K, C, R, R)
        mask = _core.topk_mask(w, keep)
        rowptr, colidx, values = _core.csr_from_mask(_core.apply_mask(w, mask), mask)
        x, b = f32(N, C, H, W), f32(K)
        y = _core.conv2d_sparse_forward(x, rowptr, colidx, values, w.shape, b, st, pad)
        s = f"{N}x{C}x{H}x{W}/{K}x{R}/{st}"
        check(f"spconv_fwd/{s}{t}", y, sref.conv2d_forward(x, rowptr, colidx, values, w.shape, b, st, pad), 1e-5)
        dy = f32(*y.shape)
        dv, db = np.zeros(values.size, np.float32), np.zeros(K, np.float32)
        dx = _core.conv2d_sparse_backward(x, rowptr, colidx, values, w.shape, dy, dv, db, st, pad)
        edx, edv, edb = sref.conv2d_backward(x, rowptr, colidx, values, w.shape, dy, st, pad)
        check(f"spconv_dx/{s}{t}", dx, edx, 1e-5)
        check(f"spconv_dv/{s}{t}", dv, edv, 1e-5)
    w = f32(33, 70)
    mask = _core.topk_mask(w, 0.3)
    rowptr, colidx, values = _core.csr_from_mask(_core.apply_mask(w, mask), mask)
    x, b, dy = f32(9, 70), f32(33), f32(9, 33)
    check("splinear_fwd" + t, _core.linear_sparse_forward(x, rowptr, colidx, values, w.shape, b),
          sref.linear_forward(x, rowptr, colidx, values, b), 1e-5)
    dv, db = np.zeros(values.size, np.float32), np.zeros(33, np.float32)
    dx = _core.linear_sparse_backward(x, rowptr, colidx, values, w.shape, dy, dv, db)
    edx, edv, edb = sref.linear_backward(x, rowptr, colidx, values, dy)
    check("splinear_dx" + t, dx, edx, 1e-5)
    check("splinear_dv" + t, dv, edv, 1e-5)

    # int8.c: convolutions (strided, padded, an image shared by the threads) and a linear layer
    for i, (N, C, H, W, K, R, st, pad, bits) in enumerate(((3, 5, 7, 7, 11, 3, 1, 1, 8), (1, 16, 9, 9, 16, 3, 2, 1, 4),
                                                          (2, 64, 12, 12, 40, 1, 1, 0, 8),
                                                          (1, 64, 32, 32, 64, 3, 1, 1, 6))):
        x, w = f32(N, C, H, W), (rng.uniform(-1, 1, (K, C, R, R)) + 0.2).astype(np.float32)
        xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
        os_, b = rng.uniform(0.5, 2, K).astype(np.float32), f32(K)
        y = _core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad)
        want = iref.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad)
        check(f"int8_conv/{i}{t}", y, want, 1e-6)
        res = f32(*y.shape)  # the residual and the ReLU as the tiles are stored
        check(f"int8_conv_res_relu/{i}{t}", _core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad, res, True),
              np.maximum(want + res, 0), 1e-6)
    x, w = f32(17, 100), f32(30, 100)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), 7)
    check("int8_linear" + t, _core.linear_int8_forward(x, w, 7, xs, xz),
          iref.linear_int8_forward(x, w, 7, xs, xz), 1e-6)
print(json.dumps(out))
"""

# outputs that may differ between levels: the CSR kernels fuse multiply-adds where the level has FMA
_FUSED = ("spconv_", "splinear_")


def _env(isa):
    env = dict(os.environ, CSUB_ISA=isa)
    paths = [str(REPO), str(REPO / "tests")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _run(isa):
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=_env(isa), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def results():
    if SUPPORTED is None:
        pytest.skip("CSUB_ISA is set for the whole run")
    return {isa: _run(isa) for isa in SUPPORTED}


def test_each_level_runs_its_variants(results):
    int8 = {"baseline": "portable", "avx2": "avx2", "avx512": "avx512bw", "avx512vnni": "avx512vnni"}
    for isa, res in results.items():
        assert res["isa"] == isa
        assert res["int8_kernel"] == int8[isa]


def test_every_level_matches_the_twins(results):
    for isa, res in results.items():
        bad = {k: v for k, v in res["err"].items() if not v[0] <= v[1]}
        assert not bad, f"CSUB_ISA={isa}: error above tolerance in {bad}"
        assert len(res["err"]) > 100


def test_levels_agree_bit_for_bit_outside_the_fused_kernels(results):
    base = results["baseline"]["digest"]
    for isa, res in results.items():
        assert res["digest"].keys() == base.keys()
        differ = sorted(k for k in base if res["digest"][k] != base[k])
        assert all(k.startswith(_FUSED) for k in differ), f"CSUB_ISA={isa} differs from baseline in {differ}"


@pytest.mark.parametrize("value", ["avx9", "AVX2", "sse", " avx2"])
def test_an_unknown_level_is_refused_clearly(value):
    r = subprocess.run([sys.executable, "-c", "import csub"], env=_env(value), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert f"CSUB_ISA={value}: unknown instruction set (expected baseline, avx2, avx512 or avx512vnni)" in r.stderr


@pytest.mark.parametrize("level", LEVELS)
def test_a_level_this_cpu_lacks_is_refused_clearly(level):
    if SUPPORTED is None or level in SUPPORTED:
        pytest.skip(f"this CPU runs {level}")
    r = subprocess.run([sys.executable, "-c", "import csub"], env=_env(level), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and f"CSUB_ISA={level}: this CPU cannot run it" in r.stderr


def test_the_runtime_refuses_an_unknown_level(tmp_path):
    """The C model loader reports the refusal as an error (the import already refused it for Python)."""
    script = ("import ctypes, glob, os, sys\n"
              "import scipy_openblas32 as sb\n"
              "ctypes.CDLL(os.path.join(sb.get_lib_dir(), sb.get_library(fullname=True)), mode=ctypes.RTLD_GLOBAL)\n"
              "lib = ctypes.CDLL(glob.glob(sys.argv[1] + '/csub/_core*.so')[0])\n"
              "err = ctypes.create_string_buffer(256)\n"
              "m = ctypes.c_void_p()\n"
              "st = lib.csub_model_load_memory(b'', ctypes.c_size_t(0), ctypes.byref(m), err, ctypes.c_size_t(256))\n"
              "lib.csub_isa.restype = ctypes.c_char_p\n"
              "print(st, err.value.decode(), lib.csub_isa())\n")
    r = subprocess.run([sys.executable, "-c", script, str(REPO)], env=_env("avx1024"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("-5 CSUB_ISA=avx1024: unknown instruction set") and r.stdout.strip().endswith("None")
