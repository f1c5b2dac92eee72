"""One image as row bands on several threads (csrc/runtime_bands.c): each thread runs its band of
rows through the whole network, reading its neighbours' edge rows before each 3x3 conv and every
band's sums before a group norm.

The kernels: the direct and Winograd 3x3 convs on a band of an image's rows with the rows just
above and below held apart (_core.conv3x3_forward_rows) against a float64 convolution, the
direct one bit for bit against its whole-image forward. The runtime: which networks run as bands
(CompressedNet.plan), and their logits against one thread's and the training forward."""
import os

import numpy as np
import pytest

import csub
from csub import _core, models
from gradcheck import assert_close
from reference import conv as ref
from test_runtime import RTOL_FLOAT, RTOL_INT, _prepare, _rel


def band_case(rng, C, K, H, W):
    x = rng.normal(0, 1, (C, H, W)).astype(np.float32)
    w = (rng.normal(0, 1, (K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.normal(0, 1, K).astype(np.float32)
    return x, w, b


def rows_for(x, stride, p0, p1):
    """The band of x's rows output rows [p0, p1) own at `stride` (their first input row on), and the
    rows above and below it: (band, lo, up, dn)"""
    H = x.shape[1]
    lo = min(p0 * stride, H - 1)
    hi = max(min((p1 - 1) * stride + 1, H), lo + 1)
    up = np.ascontiguousarray(x[:, lo - 1]) if lo > 0 else None
    dn = np.ascontiguousarray(x[:, hi]) if hi < H else None
    return np.ascontiguousarray(x[:, lo:hi]), lo, up, dn


SHAPES = [(16, 16, 32, 32), (3, 16, 32, 32), (40, 24, 15, 13), (20, 24, 9, 19), (64, 64, 8, 8)]


@pytest.mark.parametrize("C,K,H,W", SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
def test_direct_rows_equal_the_whole_image(rng, C, K, H, W, stride):
    """Every output band [p0, p1), from its own input rows and the neighbours' edge rows: the same
    bits as those rows of the whole image's forward (bias, residual and ReLU included), and within
    float32 rounding of a float64 convolution."""
    x, w, b = band_case(rng, C, K, H, W)
    whole = _core.conv3x3_forward(x[None], w, b, None, False, stride)[0]
    want = ref.conv2d_forward(x[None].astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, 1)[0]
    P = whole.shape[1]
    for p0 in range(P):
        for p1 in range(p0 + 1, P + 1):
            band, lo, up, dn = rows_for(x, stride, p0, p1)
            res = rng.normal(0, 1, (K, p1 - p0, whole.shape[2])).astype(np.float32)
            got = _core.conv3x3_forward_rows(band, w, H, lo, p0, p1, up, dn, b, res, True, stride)
            assert np.array_equal(got, np.maximum(whole[:, p0:p1] + res, 0)), (p0, p1)
            plain = _core.conv3x3_forward_rows(band, w, H, lo, p0, p1, up, dn, b, stride=stride)
            assert_close(plain, want[:, p0:p1], 1e-5, 1e-5, f"rows [{p0}, {p1})")


@pytest.mark.parametrize("C,K,H,W", SHAPES)
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_rows_against_float64(rng, C, K, H, W, m):
    """Winograd's tiles start at the band's first row: every band within float32 rounding of a
    float64 convolution, and of the whole image's Winograd rows."""
    x, w, b = band_case(rng, C, K, H, W)
    whole = _core.conv3x3_forward(x[None], w, b, None, False, 1, m)[0]
    want = ref.conv2d_forward(x[None].astype(np.float64), w.astype(np.float64), b.astype(np.float64), 1, 1)[0]
    for p0 in range(H):
        for p1 in range(p0 + 1, H + 1):
            band, lo, up, dn = rows_for(x, 1, p0, p1)
            res = rng.normal(0, 1, (K, p1 - p0, W)).astype(np.float32)
            got = _core.conv3x3_forward_rows(band, w, H, lo, p0, p1, up, dn, b, res, True, 1, m)
            assert_close(got, np.maximum(want[:, p0:p1] + res, 0), 2e-5, 2e-5, f"F({m}) rows [{p0}, {p1})")
            plain = _core.conv3x3_forward_rows(band, w, H, lo, p0, p1, up, dn, b, winograd=m)
            assert_close(plain, whole[:, p0:p1], 2e-5, 2e-5, f"F({m}) rows [{p0}, {p1}) against the whole image")


INT8_SHAPES = [(16, 16, 32, 32), (3, 16, 12, 12), (21, 24, 15, 13), (20, 8, 9, 19)]


@pytest.mark.parametrize("C,K,H,W", INT8_SHAPES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("wzero", [True, False], ids=["wzp", "wzp0"])
def test_int8_rows_equal_the_whole_image(rng, C, K, H, W, stride, wzero):
    """The integer 3x3 conv on every output band [p0, p1), from its own input rows and the
    neighbours' edge rows (the codes of the rows above and below the band laid out with its own):
    the same bits as those rows of the whole image's integer forward, whose sums are exact, with a
    weight zero point (the column terms) and without, and the input grid's zero point inside and at
    the grid's end (the padding's code)."""
    x, w, _ = band_case(rng, C, K, H, W)
    if wzero:
        w += 0.3
    b = rng.normal(0, 1, K).astype(np.float32)
    oscale = rng.uniform(0.5, 2.0, K).astype(np.float32)
    for xz in (None, -128):
        xs, z = _core.quant_params(float(x.min()), float(x.max()), 8)
        z = z if xz is None else xz
        whole = _core.conv2d_int8_forward(x[None], w, 8, xs, z, oscale, b, stride, 1)[0]
        P = whole.shape[1]
        for p0 in range(P):
            for p1 in range(p0 + 1, P + 1):
                band, lo, up, dn = rows_for(x, stride, p0, p1)
                got = _core.conv2d_int8_forward_rows(band, w, 8, xs, z, H, lo, p0, p1, up, dn, oscale, b, stride)
                assert np.array_equal(got, whole[:, p0:p1]), (xz, p0, p1)
                res = rng.normal(0, 1, got.shape).astype(np.float32)
                fused = _core.conv2d_int8_forward_rows(band, w, 8, xs, z, H, lo, p0, p1, up, dn, oscale, b, stride,
                                                       res, True)
                assert np.array_equal(fused, np.maximum(got + res, 0)), (xz, p0, p1)


def test_int8_rows_bad_input(rng):
    x, w, b = band_case(rng, 8, 8, 12, 12)
    band, lo, up, dn = rows_for(x, 1, 4, 8)
    xs, xz = _core.quant_params(-3.0, 3.0, 8)
    with pytest.raises(ValueError, match="x, up, dn"):
        _core.conv2d_int8_forward_rows(band, w, 8, xs, xz, 12, lo, 4, 8, None, dn)
    with pytest.raises(ValueError, match="p0, p1"):
        _core.conv2d_int8_forward_rows(band, w, 8, xs, xz, 12, lo, 5, 13, up, dn)
    with pytest.raises(ValueError, match="lo, height"):
        _core.conv2d_int8_forward_rows(band, w, 8, xs, xz, 6, lo, 0, 2)
    with pytest.raises(ValueError, match="weight"):
        _core.conv2d_int8_forward_rows(band, w[:, :4].copy(), 8, xs, xz, 12, lo, 4, 8, up, dn)
    with pytest.raises(ValueError, match="stride"):
        _core.conv2d_int8_forward_rows(band, w, 8, xs, xz, 12, lo, 2, 4, up, dn, stride=3)
    with pytest.raises(ValueError, match="bits"):
        _core.conv2d_int8_forward_rows(band, w, 9, xs, xz, 12, lo, 4, 8, up, dn)
    with pytest.raises(ValueError, match="NaN"):
        bad = band.copy()
        bad[1, 2, 3] = np.nan
        _core.conv2d_int8_forward_rows(bad, w, 8, xs, xz, 12, lo, 4, 8, up, dn)
    with pytest.raises(ValueError, match="res"):  # the residual of other rows than the output's
        _core.conv2d_int8_forward_rows(band, w, 8, xs, xz, 12, lo, 4, 8, up, dn, res=np.zeros((8, 3, 12), np.float32))


def test_rows_bad_input(rng):
    x, w, b = band_case(rng, 8, 8, 12, 12)
    band, lo, up, dn = rows_for(x, 1, 4, 8)
    with pytest.raises(ValueError, match="x, up, dn"):  # the row above not given
        _core.conv3x3_forward_rows(band, w, 12, lo, 4, 8, None, dn)
    with pytest.raises(ValueError, match="x, up, dn"):  # outputs past the rows held
        _core.conv3x3_forward_rows(band, w, 12, lo, 4, 10, up, dn)
    with pytest.raises(ValueError, match="lo, height"):
        _core.conv3x3_forward_rows(band, w, 6, lo, 0, 2)
    with pytest.raises(ValueError, match="p0, p1"):
        _core.conv3x3_forward_rows(band, w, 12, lo, 5, 13, up, dn)
    with pytest.raises(ValueError, match="up"):
        _core.conv3x3_forward_rows(band, w, 12, lo, 4, 8, up[:, :5].copy(), dn)
    with pytest.raises(ValueError, match="w"):
        _core.conv3x3_forward_rows(band, w[:, :4].copy(), 12, lo, 4, 8, up, dn)
    with pytest.raises(ValueError, match="res"):
        _core.conv3x3_forward_rows(band, w, 12, lo, 4, 8, up, dn, b, np.zeros((8, 3, 12), np.float32))
    with pytest.raises(ValueError, match="stride"):
        _core.conv3x3_forward_rows(band, w, 12, lo, 4, 8, up, dn, stride=2, winograd=4)


# ------------------------------------------------------------------ the runtime


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


def bn_net(rng, shape, regime="unstructured", norm="bn"):
    csub.manual_seed(3)
    model = models.cpreresnet20(regime=regime, norm=norm)
    x = rng.normal(0, 1, (1,) + shape).astype(np.float32)
    _prepare(model, x, regime, rng)
    model.eval()
    return model, x


@pytest.mark.parametrize("alphas", [(1.0, 0.8), (0.1, 0.3)], ids=["dense", "sparse"])
@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 24, 24), (3, 64, 64)])
def test_bands_match_one_thread_and_training(rng, threads, monkeypatch, shape, norm, alphas):
    """cPreResNet20 with batch norm or group norm, dense kernels (alpha 1, and keep 0.8 on the
    masked dense weights) or sparse ones (keep 0.1 and 0.3: the gather, the compiled code, a batch
    norm applied by the 1x1 layers that read it): at batch 1 on two threads it runs as bands (at
    64x64 too, above the layer-by-layer split's threshold); the logits agree with one thread's,
    with CSUB_BANDS=0's and with the training forward."""
    model, x = bn_net(rng, shape, norm=norm)
    for alpha in alphas:
        model.set_alpha(alpha)
        want = model(x)
        threads(1)
        net = model.compress(alpha, input_shape=shape)
        one = net(x)
        assert net.plan(1) == "serial"
        threads(2)
        assert net.plan(1) == "bands" and net.plan(2) == "images"
        got = net(x)
        assert_close(got, one, 1e-5, 1e-5, f"bands against one thread at alpha {alpha}")
        assert _rel(got, want) < RTOL_FLOAT, alpha
        assert np.array_equal(net(x), got)  # the same bits call after call
        monkeypatch.setenv("CSUB_BANDS", "0")
        net.set_alpha(alpha)
        assert net.plan(1) != "bands"
        assert_close(net(x), one, 1e-5, 1e-5, f"CSUB_BANDS=0 at alpha {alpha}")
        monkeypatch.delenv("CSUB_BANDS")
        net.set_alpha(alpha)
        assert net.plan(1) == "bands"


def bands_of(t):
    """cPreResNet20 at 32x32 on t threads: the bands it runs as, one a processor at most, or 0. Its
    32-row values halve into 16 and 8 rows with the bands: 2 or 4 of them (3 do not split 32 rows
    as twice 16; 8 would leave a row of 8 values a band)."""
    n = min(t, len(os.sched_getaffinity(0)))
    return n if n in (2, 4) else 0


def test_bands_follow_set_alpha_and_threads(rng, threads):
    """The plan is remade at each alpha and thread count: where the thread count gives no bands
    the network runs as before, and the bands come back with two threads; more threads than
    processors run as bands of one a processor."""
    model, x = bn_net(rng, (3, 32, 32))
    threads(2)
    net = model.compress(1.0, input_shape=(3, 32, 32))
    seen = {}
    many = len(os.sched_getaffinity(0)) + 2
    steps = [(1.0, 2), (0.1, 2), (1.0, 3), (1.0, 2), (0.1, 3), (0.1, 2), (1.0, many), (0.1, many)]
    for alpha, t in steps:
        plan = "bands" if bands_of(t) else "serial"
        threads(t)
        net.set_alpha(alpha)
        model.set_alpha(alpha)
        assert net.plan(1) == plan, (alpha, t)
        got = net(x)
        assert _rel(got, model(x)) < RTOL_FLOAT, (alpha, t)
        if (alpha, t) in seen:
            assert np.array_equal(got, seen[(alpha, t)])
        seen[(alpha, t)] = got


def test_small_planes_keep_their_plan(rng, threads):
    """Bands of fewer than 16 values a plane (16x16 inputs: the last stage's 4 x 4 planes in halves)
    would run the kernels' one-value-at-a-time tails: the network runs on one thread at batch 1, as
    before, with the same bits as one thread."""
    model, x = bn_net(rng, (3, 16, 16))
    threads(1)
    net = model.compress(1.0, input_shape=(3, 16, 16))
    one = net(x)
    threads(2)
    assert net.plan(1) == "serial"
    assert np.array_equal(net(x), one)


@pytest.mark.parametrize("norm", ["bn", "gn"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 48, 40)])
def test_quantized_bands(rng, threads, monkeypatch, norm, shape):
    """The 8-bit network (integer products on activation grids recorded in training) on bands: its
    integer sums are exact and each band's codes are the whole image's, so with batch norm the
    logits are one thread's but for the pool's order of adding; with group norm the bands' sums
    move a normalised value by a rounding, which can cross a quantization step (RTOL_INT, as the
    runtime against training: test_runtime.py). A grid never recorded (each batch's own range)
    needs the whole image: no bands."""
    csub.manual_seed(3)
    model = models.cpreresnet20(regime="quantized", subspace="line", norm=norm)
    x = rng.normal(0, 1, (1,) + shape).astype(np.float32)
    _prepare(model, rng.normal(0, 1, (4,) + shape).astype(np.float32), "quantized", rng)
    model.eval()
    for alpha in (1.0, 0.0):
        model.set_alpha(alpha)
        want = model(x)
        threads(1)
        net = model.compress(alpha, input_shape=shape)
        one = net(x)
        threads(2)
        assert net.plan(1) == "bands" and net.info()["bits"] <= 8
        got = net(x)
        if norm == "bn":
            assert_close(got, one, 1e-5, 1e-5, f"bands against one thread at alpha {alpha}")
        assert _rel(got, one) < RTOL_INT and _rel(got, want) < RTOL_INT, alpha
        assert np.array_equal(net(x), got)
        monkeypatch.setenv("CSUB_BANDS", "0")
        net.set_alpha(alpha)
        assert net.plan(1) != "bands"
        assert _rel(net(x), got) < RTOL_INT
        monkeypatch.delenv("CSUB_BANDS")
    fresh = models.cpreresnet20(regime="quantized", subspace="line", norm=norm)
    fresh.eval()
    threads(2)
    assert fresh.compress(1.0, input_shape=shape).plan(1) != "bands"


def test_resnet18_and_cnn_are_not_bands(rng, threads):
    """A max pool (ResNet18's stem, the CNN's stages) is not run on bands."""
    threads(2)
    for name, kw, shape in [("resnet18", dict(norm="bn", num_classes=10), (3, 32, 32)),
                            ("cnn", dict(widths=(8, 16, 16), norm="bn"), (1, 28, 28))]:
        model = models.build(name, regime="unstructured", **kw)
        model.eval()
        net = model.compress(1.0, input_shape=shape)
        assert net.plan(1) in ("serial", "layers"), name


def test_bands_memory(rng, threads):
    """memory_bytes counts a workspace per band."""
    model, x = bn_net(rng, (3, 32, 32))
    threads(2)
    net = model.compress(1.0, input_shape=(3, 32, 32))
    banded = net.memory_bytes(1)
    threads(1)
    net.set_alpha(1.0)
    assert banded > net.memory_bytes(1)
    with pytest.raises(ValueError, match="batch_size"):
        net.plan(0)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_sparse_bands_on_the_gather(rng, threads, monkeypatch, norm):
    """The sparse 3x3 layers on the gather kernels (CSUB_SPARSE_JIT=0) instead of compiled code, on
    bands: the logits agree with one thread's."""
    monkeypatch.setenv("CSUB_SPARSE_JIT", "0")
    model, x = bn_net(rng, (3, 32, 32), norm=norm)
    threads(1)
    net = model.compress(0.1, input_shape=(3, 32, 32))
    one = net(x)
    threads(2)
    assert net.plan(1) == "bands"
    assert_close(net(x), one, 1e-5, 1e-5, "gather bands against one thread")


def test_structured_widths_on_bands(rng, threads):
    """The structured regime (group norm) at widths whose channel counts are not the stored ones:
    bands at every alpha, the logits as one thread's and the training forward's."""
    model, x = bn_net(rng, (3, 32, 32), regime="structured", norm="gn")
    threads(1)
    net = model.compress(1.0, input_shape=(3, 32, 32))
    for alpha in (0.0, 0.3, 0.7, 1.0):
        model.set_alpha(alpha)
        want = model(x)
        threads(1)
        net.set_alpha(alpha)
        one = net(x)
        threads(2)
        assert net.plan(1) == "bands", alpha
        got = net(x)
        assert_close(got, one, 1e-5, 1e-5, f"bands against one thread at alpha {alpha}")
        assert _rel(got, want) < RTOL_FLOAT, alpha
