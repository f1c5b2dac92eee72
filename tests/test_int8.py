"""Integer (int8) convolution and linear kernels: csub._core.conv2d_int8_forward, linear_int8_forward.

References: tests/reference/int8.py (integer codes, int64 sums, float64
scaling), csub's own float convolution on fake-quantized weight and input,
and PyTorch's fake_quantize_per_tensor_affine + conv2d in float64. The
integer sums are exact, so the results agree to float32 rounding of the
final scaling (relative 1e-6 of the largest output).

Every kernel variant this CPU runs (CSUB_ISA) is run in a
subprocess; all must give bit-identical outputs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import csub
from csub import _core
from reference import int8 as ref
from testkit import bad_call_params, check_bad_call

REPO = Path(__file__).resolve().parent.parent
KERNELS = ["portable", "avx2", "avx512bw", "avx512vnni"]  # each CPU runs a prefix of this list
ISA_OF_KERNEL = dict(zip(KERNELS, ["baseline", "avx2", "avx512", "avx512vnni"]))  # the CSUB_ISA level running it

# (N, C, H, W, K, R, stride, padding): the convolutions of cPreResNet20 (channel
# counts as in the network, small images) and odd sizes
SHAPES = [
    (1, 3, 8, 8, 16, 3, 1, 1),       # stem
    (2, 16, 8, 8, 16, 3, 1, 1),
    (1, 16, 8, 8, 64, 1, 1, 0),
    (3, 64, 6, 6, 16, 1, 1, 0),
    (1, 32, 9, 9, 32, 3, 2, 1),
    (1, 64, 8, 8, 128, 1, 2, 0),
    (2, 128, 4, 4, 32, 1, 1, 0),
    (1, 64, 5, 5, 64, 3, 2, 1),
    (1, 256, 3, 3, 64, 1, 1, 0),
    (1, 64, 3, 3, 256, 1, 1, 0),
    (3, 3, 7, 7, 5, 3, 1, 1),        # odd: C = 3, K = 5, 7x7, batch 3
    (1, 5, 7, 7, 7, 3, 2, 0),
    (2, 6, 7, 5, 9, 1, 2, 0),
]


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


def qrange(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def make_case(rng, shape, bits, wzero=True, xzero=None, oscale=False, bias=False):
    """x, w and the input grid; wzero=False makes the weight range symmetric (zero point 0)."""
    N, C, H, W, K, R, st, pad = shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.uniform(-1.0, 1.0, (K, C, R, R)).astype(np.float32)
    if wzero:
        w += 0.35  # asymmetric range: the weight zero point is not 0
    else:
        w.flat[0], w.flat[-1] = -1.0, 1.0  # symmetric: zero point exactly 0
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
    if xzero is not None:  # a chosen zero point on the same scale
        xz = xzero
    os_ = rng.uniform(0.5, 2.0, K).astype(np.float32) if oscale else None
    b = rng.standard_normal(K).astype(np.float32) if bias else None
    return x, w, xs, xz, os_, b


def assert_close(y, r, what=""):
    r = np.asarray(r, np.float64)
    scale = max(np.abs(r).max(), 1e-30)
    err = np.abs(np.asarray(y, np.float64) - r).max() / scale
    assert err <= 1e-6, f"{what}: relative error {err:.3g}"


# ===================================================================== twin

def test_twin_against_scalar_loops(rng):
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), 5)
    ws, wz = ref.weight_grid(w, 5)
    qx, qw = ref.codes(x, xs, xz, 5), ref.codes(w, ws, wz, 5)
    acc = ref.conv2d_int8_acc(qx, xz, qw, wz, 2, 1)
    for k in range(3):
        for p in range(acc.shape[2]):
            for q in range(acc.shape[3]):
                s = 0
                for c in range(2):
                    for r in range(3):
                        for t in range(3):
                            h, v = 2 * p - 1 + r, 2 * q - 1 + t
                            a = qx[0, c, h, v] if 0 <= h < 4 and 0 <= v < 5 else xz
                            s += (int(qw[k, c, r, t]) - wz) * (int(a) - xz)
                assert acc[0, k, p, q] == s


def test_twin_codes_are_fake_quantization(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    xs, xz = _core.quant_params(-1.5, 2.0, 6)
    y = _core.fake_quantize(x, 6, -1.5, 2.0)
    np.testing.assert_array_equal(((ref.codes(x, xs, xz, 6) - xz) * np.float64(xs)).astype(np.float32), y)


# ==================================================================== conv2d

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv2d_against_twin(rng, shape):
    for bits, wzero, xzero, oscale, bias in [(8, True, None, False, False), (4, False, 0, True, True),
                                             (2, True, None, True, False)]:
        x, w, xs, xz, os_, b = make_case(rng, shape, bits, wzero, xzero, oscale, bias)
        st, pad = shape[6], shape[7]
        y = _core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad)
        assert y.dtype == np.float32 and y.shape == ref.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad).shape
        assert_close(y, ref.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad), f"bits {bits}")


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("wzero", [True, False], ids=["wzp", "wzp0"])
def test_conv2d_every_bit_width(rng, bits, wzero):
    qmin, qmax = qrange(bits)
    for shape, xzero in [((2, 16, 6, 6, 16, 3, 1, 1), None), ((1, 32, 7, 7, 24, 3, 2, 1), qmin),
                         ((1, 20, 5, 5, 8, 1, 1, 0), qmax), ((1, 7, 6, 6, 5, 1, 2, 0), 0)]:
        x, w, xs, xz, os_, b = make_case(rng, shape, bits, wzero, xzero, True, True)
        wz = ref.weight_grid(w, bits)[1]
        assert (wz != 0) == wzero
        st, pad = shape[6], shape[7]
        assert_close(_core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad),
                     ref.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad), f"{shape} bits {bits}")


@pytest.mark.parametrize("shape", SHAPES[:6] + SHAPES[10:], ids=lambda s: "x".join(map(str, s)))
def test_conv2d_against_float_conv_on_fake_quantized(rng, shape):
    """conv2d_forward(fake_quantize(x), fake_quantize(w)) * oscale + b."""
    bits = 8 if shape[1] % 2 else 6
    x, w, xs, xz, os_, b = make_case(rng, shape, bits, True, None, True, True)
    st, pad = shape[6], shape[7]
    xmn, xmx = _core.minmax(x)
    wmn, wmx = _core.minmax(w)
    assert _core.quant_params(xmn, xmx, bits) == (xs, xz)
    fx, fw = _core.fake_quantize(x, bits, xmn, xmx), _core.fake_quantize(w, bits, wmn, wmx)
    want = _core.conv2d_forward(fx, fw, None, st, pad).astype(np.float64)
    want = want * os_[None, :, None, None] + b[None, :, None, None]
    assert_close(_core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad), want)


def away_from_ties(rng, shape, scale, zp, bits):
    """float32 values whose x / scale lies within 0.3 of a code: every rounding rule agrees."""
    qmin, qmax = qrange(bits)
    q = rng.integers(qmin - 2, qmax + 3, shape)
    return ((q - zp + rng.uniform(-0.3, 0.3, shape)) * scale).astype(np.float32)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4], SHAPES[5], SHAPES[10]], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bits", [3, 8])
def test_conv2d_against_torch(rng, torch, shape, bits):
    N, C, H, W, K, R, st, pad = shape
    qmin, qmax = qrange(bits)
    xs, xz = 0.0371, int(rng.integers(qmin, qmax + 1))
    x = away_from_ties(rng, (N, C, H, W), xs, xz, bits)
    w = rng.uniform(-0.5, 0.8, (K, C, R, R)).astype(np.float32)
    ws, wz = _core.quant_params(float(w.min()), float(w.max()), bits)
    w = away_from_ties(rng, w.shape, ws, wz, bits)  # same grid (the range is kept within it)
    w.flat[0], w.flat[1] = (qmin - wz) * np.float32(ws), (qmax - wz) * np.float32(ws)
    ws, wz = _core.quant_params(float(w.min()), float(w.max()), bits)
    os_ = rng.uniform(0.5, 2.0, K).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    tx = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x).double(), xs, xz, qmin, qmax)
    tw = torch.fake_quantize_per_tensor_affine(torch.from_numpy(w).double(), ws, wz, qmin, qmax)
    want = torch.nn.functional.conv2d(tx, tw, None, st, pad).numpy()
    want = want * os_[None, :, None, None] + b[None, :, None, None]
    assert_close(_core.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad), want)


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_conv2d_ties_round_half_to_even(rng, bits):
    """Inputs at, just above and just below x / scale = k + 1/2: codes exactly as the twin's float32 division."""
    qmin, qmax = qrange(bits)
    for scale in (np.float32(0.0625), np.float32(0.0371), np.float32(3.3)):
        zx = int(rng.integers(qmin, qmax + 1))
        k = np.arange(qmin - zx - 2, qmax - zx + 2)
        half = ((k + 0.5) * np.float64(scale)).astype(np.float32)
        v = np.concatenate([half, np.nextafter(half, np.float32(np.inf)), np.nextafter(half, np.float32(-np.inf)),
                            (k * np.float64(scale)).astype(np.float32)])
        v = np.resize(v, 4 * 37)
        x = v.reshape(1, 4, 1, 37)
        w = np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1)  # y[c] = code of x[c] (times constants)
        y = _core.conv2d_int8_forward(x, w, bits, float(scale), zx)
        # one code off would be an error of 1 / (2^bits - 1) of the largest output
        assert_close(y, ref.conv2d_int8_forward(x, w, bits, float(scale), zx), f"scale {scale}")


def test_conv2d_zero_scale_gives_bias(rng):
    x, w, _, _, os_, b = make_case(rng, SHAPES[1], 8, True, None, True, True)
    np.testing.assert_array_equal(_core.conv2d_int8_forward(x, w, 8, 0.0, 0, os_, b, 1, 1),
                                  np.broadcast_to(b[None, :, None, None], (2, 16, 8, 8)))
    np.testing.assert_array_equal(_core.conv2d_int8_forward(x, w, 8, 0.0, 5, padding=1), 0.0)
    np.testing.assert_array_equal(_core.conv2d_int8_forward(x, np.zeros_like(w), 8, 0.1, 5, None, b, 1, 1),
                                  np.broadcast_to(b[None, :, None, None], (2, 16, 8, 8)))


def test_conv2d_clipping_and_infinities(rng):
    x = (5 * rng.standard_normal((1, 8, 6, 6))).astype(np.float32)
    x[0, 0, 0, :3] = (np.inf, -np.inf, 1e30)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    y = _core.conv2d_int8_forward(x, w, 4, 0.25, 3, padding=1)  # most inputs beyond the 4-bit range
    np.testing.assert_array_equal(np.isfinite(y), True)
    assert_close(y, ref.conv2d_int8_forward(x, w, 4, 0.25, 3, padding=1))


def test_conv2d_thread_count_invariance(rng, threads):
    """Whole images per thread, images shared by threads (large ones), and both in one call
    (calls under 2^20 multiply-adds run on one thread)."""
    for shape in [(5, 16, 16, 16, 32, 3, 1, 1), (1, 64, 32, 32, 64, 3, 1, 1), (3, 64, 32, 32, 40, 3, 2, 1),
                  (1, 256, 16, 16, 256, 1, 1, 0), (1, 30, 33, 31, 100, 3, 1, 1)]:
        x, w, xs, xz, os_, b = make_case(rng, shape, 8, True, None, True, True)
        out = []
        for n in (1, 2, 3):
            threads(n)
            out.append(_core.conv2d_int8_forward(x, w, 8, xs, xz, os_, b, shape[6], shape[7]))
        np.testing.assert_array_equal(out[0], out[1])
        np.testing.assert_array_equal(out[0], out[2])
    assert_close(out[0], ref.conv2d_int8_forward(x, w, 8, xs, xz, os_, b, shape[6], shape[7]))


@pytest.mark.parametrize("shape", [(2, 16, 9, 9, 16, 3, 1, 1), (1, 20, 11, 13, 24, 3, 2, 1), (3, 64, 8, 8, 40, 1, 1, 0),
                                   (2, 16, 9, 9, 32, 1, 2, 0), (1, 64, 32, 32, 64, 3, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_conv2d_residual_and_relu_as_stored(rng, threads, shape):
    """The residual and the ReLU applied as each tile is stored (the runtime's fused epilogue) give
    the bits of the product, then + res, then max(0, .) (NaN stays NaN), on the wide rows of a 3x3
    conv, the plain ones of a 1x1, strided, an image shared by two threads (the last shape), and
    at a zero scale (every code the zero point: the bias)."""
    x, w, xs, xz, os_, b = make_case(rng, shape, 8, True, None, True, True)
    st, pad = shape[6], shape[7]
    for n in (1, 2):
        threads(n)
        for scale in (xs, 0.0):
            plain = _core.conv2d_int8_forward(x, w, 8, scale, xz, os_, b, st, pad)
            res = rng.standard_normal(plain.shape).astype(np.float32)
            res.flat[::7] = -plain.flat[::7]  # sums of exactly 0
            res.flat[5] = np.nan
            got = _core.conv2d_int8_forward(x, w, 8, scale, xz, os_, b, st, pad, res)
            np.testing.assert_array_equal(got, plain + res)
            relu = _core.conv2d_int8_forward(x, w, 8, scale, xz, os_, b, st, pad, res, True)
            want = plain + res
            want = np.where(want <= 0, np.float32(0), want)
            np.testing.assert_array_equal(relu, want)
            assert np.isnan(relu.flat[5])
            np.testing.assert_array_equal(_core.conv2d_int8_forward(x, w, 8, scale, xz, os_, b, st, pad, relu=True),
                                          np.maximum(plain, 0))
    with pytest.raises(ValueError, match="res"):
        _core.conv2d_int8_forward(x, w, 8, xs, xz, os_, b, st, pad, res[:, :1].copy())


def test_int8_kernel_name():
    assert _core.int8_kernel() in KERNELS


def test_c_api_weight_made_for_taps_1_is_regrouped(rng):
    """A conv weight from csub_qweight_init (the linear layout) gives the result of csub_qweight_init_conv."""
    import ctypes
    lib = ctypes.CDLL(_core.__file__)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.csub_qweight_init.argtypes = [ctypes.c_void_p, fp, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.csub_qweight_init_conv.argtypes = [ctypes.c_void_p, fp] + [ctypes.c_int64] * 4 + [ctypes.c_int]
    lib.csub_qweight_free.argtypes = [ctypes.c_void_p]
    lib.csub_qweight_bytes.argtypes = [ctypes.c_void_p]
    lib.csub_qweight_bytes.restype = ctypes.c_int64
    lib.csub_conv2d_int8_forward.argtypes = [fp, ctypes.c_float, ctypes.c_int32, ctypes.c_void_p, fp, fp, fp] + \
        [ctypes.c_int64] * 8
    x = rng.standard_normal((2, 6, 7, 7)).astype(np.float32)
    w = (rng.standard_normal((5, 6, 3, 3)) + 0.2).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), 7)
    ptr = lambda a: a.ctypes.data_as(fp)  # noqa: E731
    q1, q9 = ctypes.create_string_buffer(256), ctypes.create_string_buffer(256)
    assert lib.csub_qweight_init(q1, ptr(w), 5, 54, 7) == 0
    assert lib.csub_qweight_init_conv(q9, ptr(w), 5, 6, 3, 3, 7) == 0
    try:
        # 8 rows (5 padded to a block) x 4 * ceil(6/4) * 9 codes, and 5 row sums
        assert lib.csub_qweight_bytes(q9) == 8 * 72 + 4 * 5
        assert lib.csub_qweight_bytes(q1) == 8 * 56 + 4 * 5
        want = _core.conv2d_int8_forward(x, w, 7, xs, xz, None, None, 2, 1)
        for q in (q1, q9):
            y = np.empty_like(want)
            assert lib.csub_conv2d_int8_forward(ptr(x), xs, xz, q, None, None, ptr(y), 2, 6, 7, 7, 3, 3, 2, 1) == 0
            np.testing.assert_array_equal(y, want)
        # a weight whose cols do not match C*R*S is refused
        y = np.empty_like(want)
        assert lib.csub_conv2d_int8_forward(ptr(x), xs, xz, q9, None, None, ptr(y), 2, 6, 7, 7, 1, 1, 1, 0) == -1
    finally:
        lib.csub_qweight_free(q1)
        lib.csub_qweight_free(q9)


# ======================================================== kernel variants

_VARIANT_SCRIPT = r"""
import json, sys
import numpy as np
from csub import _core
cases = json.loads(sys.argv[1])
out = {"kernel": _core.int8_kernel()}
for i, (shape, bits, xzero, wshift, threads) in enumerate(cases):
    N, C, H, W, K, R, st, pad = shape
    rng = np.random.default_rng(i)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.uniform(-1, 1, (K, C, R, R)) + wshift).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
    if xzero is not None:
        xz = xzero
    _core.set_num_threads(threads)
    y = _core.conv2d_int8_forward(x, w, bits, xs, xz, rng.uniform(0.5, 2, K).astype(np.float32),
                                  rng.standard_normal(K).astype(np.float32), st, pad)
    out[str(i)] = y.tobytes().hex()
    if i == 0:
        x2, w2 = x.reshape(N, -1)[:, :37], w.reshape(K, -1)[:, :37].copy()
        out["linear"] = _core.linear_int8_forward(np.ascontiguousarray(x2), w2, bits, xs, xz).tobytes().hex()
print(json.dumps(out))
"""

_VARIANT_CASES = [
    [[3, 5, 7, 7, 11, 3, 1, 1], 8, None, 0.3, 1],
    [[1, 16, 9, 9, 16, 3, 2, 1], 4, 0, 0.0, 2],
    [[4, 64, 12, 12, 128, 1, 1, 0], 8, -128, 0.4, 2],
    [[1, 32, 11, 13, 24, 1, 2, 0], 2, 1, -0.2, 1],
    [[1, 3, 17, 17, 16, 3, 1, 1], 7, None, 0.1, 2],
    [[1, 64, 32, 32, 64, 3, 1, 1], 8, None, 0.25, 2],  # an image shared by threads
]


def _run_variant(name):
    env = dict(os.environ)
    env["CSUB_ISA"] = ISA_OF_KERNEL[name]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT, json.dumps(_VARIANT_CASES)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_every_kernel_variant_gives_identical_results():
    best = _core.int8_kernel()
    supported = KERNELS[:KERNELS.index(best) + 1]
    results = {name: _run_variant(name) for name in supported}
    for name in supported:
        assert results[name]["kernel"] == name, f"CSUB_ISA={ISA_OF_KERNEL[name]} ran {results[name]['kernel']}"
        for key in results[best]:
            if key != "kernel":
                assert results[name][key] == results[best][key], f"{name} differs from {best} in case {key}"
    # the reference result agrees with the twin
    shape, bits, xzero, wshift, _ = _VARIANT_CASES[0]
    N, C, H, W, K, R, st, pad = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.uniform(-1, 1, (K, C, R, R)) + wshift).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
    os_, b = rng.uniform(0.5, 2, K).astype(np.float32), rng.standard_normal(K).astype(np.float32)
    y = np.frombuffer(bytes.fromhex(results[best]["0"]), np.float32).reshape(N, K, H, W)
    assert_close(y, ref.conv2d_int8_forward(x, w, bits, xs, xz, os_, b, st, pad))


# ==================================================================== linear

@pytest.mark.parametrize("N,I,O", [(1, 256, 10), (5, 37, 11), (64, 256, 10), (3, 1, 1), (17, 64, 33)])
def test_linear_against_twin(rng, N, I, O):
    for bits, xzero, wshift, opt in [(8, None, 0.2, True), (3, 0, 0.0, False), (6, -1, -0.4, True)]:
        x = rng.standard_normal((N, I)).astype(np.float32)
        w = (rng.uniform(-1, 1, (O, I)) + wshift).astype(np.float32)
        xs, xz = _core.quant_params(float(x.min()), float(x.max()), bits)
        xz = xz if xzero is None else xzero
        os_ = rng.uniform(0.5, 2, O).astype(np.float32) if opt else None
        b = rng.standard_normal(O).astype(np.float32) if opt else None
        y = _core.linear_int8_forward(x, w, bits, xs, xz, os_, b)
        assert y.shape == (N, O) and y.dtype == np.float32
        assert_close(y, ref.linear_int8_forward(x, w, bits, xs, xz, os_, b), f"bits {bits}")
        # the same as a 1x1 convolution of a 1x1 image
        yc = _core.conv2d_int8_forward(x.reshape(N, I, 1, 1), w.reshape(O, I, 1, 1), bits, xs, xz, os_, b)
        np.testing.assert_array_equal(y, yc.reshape(N, O))


def test_linear_thread_count_invariance(rng, threads):
    x = rng.standard_normal((300, 200)).astype(np.float32)  # 3e6 multiply-adds: a team of threads
    w = (rng.uniform(-1, 1, (50, 200)) + 0.3).astype(np.float32)
    xs, xz = _core.quant_params(float(x.min()), float(x.max()), 8)
    threads(1)
    y1 = _core.linear_int8_forward(x, w, 8, xs, xz)
    threads(2)
    np.testing.assert_array_equal(y1, _core.linear_int8_forward(x, w, 8, xs, xz))


def test_linear_empty_batch(rng):
    w = rng.standard_normal((3, 4)).astype(np.float32)
    assert _core.linear_int8_forward(np.zeros((0, 4), np.float32), w, 8, 0.1, 0).shape == (0, 3)


# ============================================================= bad arguments

def _bad_cases():
    x = np.ones((2, 3, 5, 5), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    xn = x.copy()
    xn[1, 2, 3, 4] = np.nan
    wn = w.copy()
    wn[0, 0, 0, 0] = np.inf
    conv = [
        ((x.astype(np.float64), w, 8, 0.1, 0), {}, TypeError, "x"),
        ((x[0], w, 8, 0.1, 0), {}, ValueError, "x"),
        ((x, w[:, :2], 8, 0.1, 0), {}, ValueError, "weight"),
        ((x, w.astype(np.float16), 8, 0.1, 0), {}, TypeError, "weight"),
        ((x, w, 1, 0.1, 0), {}, ValueError, "bits"),
        ((x, w, 9, 0.1, 0), {}, ValueError, "bits"),
        ((x, w, 8.0, 0.1, 0), {}, TypeError, "bits"),
        ((x, w, 8, -0.1, 0), {}, ValueError, "xscale"),
        ((x, w, 8, float("nan"), 0), {}, ValueError, "xscale"),
        ((x, w, 8, float("inf"), 0), {}, ValueError, "xscale"),
        ((x, w, 8, "a", 0), {}, TypeError, "xscale"),
        ((x, w, 8, 0.1, 128), {}, ValueError, "xzero_point"),
        ((x, w, 4, 0.1, -9), {}, ValueError, "xzero_point"),
        ((x, w, 8, 0.1, 2 ** 70), {}, ValueError, "xzero_point"),
        ((x, w, 8, 0.1, 0.5), {}, TypeError, "xzero_point"),
        ((x, w, 8, 0.1, 0, np.ones(3, np.float32)), {}, ValueError, "oscale"),
        ((x, w, 8, 0.1, 0, np.ones(4)), {}, TypeError, "oscale"),
        ((x, w, 8, 0.1, 0, None, np.ones(5, np.float32)), {}, ValueError, "b"),
        ((x, w, 8, 0.1, 0), {"stride": 0}, ValueError, "stride"),
        ((x, w, 8, 0.1, 0), {"padding": -1}, ValueError, "padding"),
        ((np.ones((1, 3, 2, 2), np.float32), w, 8, 0.1, 0), {}, ValueError, "x"),
        ((xn, w, 8, 0.1, 0), {"padding": 1}, ValueError, "x: .*NaN"),
        ((x, wn, 8, 0.1, 0), {}, ValueError, "weight"),
        ((x, np.full_like(w, np.nan), 8, 0.1, 0), {}, ValueError, "weight"),
        ((np.ones((1, 4000, 3, 3), np.float32), np.ones((1, 4000, 3, 3), np.float32), 8, 0.1, 0), {},
         ValueError, "weight"),  # 36000 inputs per output: the accumulators could overflow
    ]
    xl, wl = np.ones((2, 5), np.float32), np.ones((3, 5), np.float32)
    lin = [
        ((xl, wl[:, :4], 8, 0.1, 0), {}, ValueError, "weight"),
        ((xl[0], wl, 8, 0.1, 0), {}, ValueError, "x"),
        ((xl, wl, 0, 0.1, 0), {}, ValueError, "bits"),
        ((xl, wl, 8, -1.0, 0), {}, ValueError, "xscale"),
        ((xl, wl, 2, 0.1, 2), {}, ValueError, "xzero_point"),
        ((xl, wl, 8, 0.1, 0, np.ones(2, np.float32)), {}, ValueError, "oscale"),
        ((xl, wl, 8, 0.1, 0, None, np.ones((3, 1), np.float32)), {}, ValueError, "b"),
        ((np.full_like(xl, np.nan), wl, 8, 0.1, 0), {}, ValueError, "x: .*NaN"),
    ]
    return bad_call_params(conv=(_core.conv2d_int8_forward, conv), linear=(_core.linear_int8_forward, lin))


@pytest.mark.parametrize("fn,args,kwargs,exc,match", _bad_cases())
def test_bad_arguments_name_the_argument(fn, args, kwargs, exc, match):
    check_bad_call(fn, args, kwargs, exc, match)
