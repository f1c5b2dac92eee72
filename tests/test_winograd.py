"""Winograd 3x3 convolution (csrc/conv_winograd.c: F(4x4,3x3) and F(2x2,3x3), pad 1, stride 1,
with the runtime's fused bias, residual and ReLU): against its float64 NumPy twin (the same
transform matrices), against a direct float64 convolution and PyTorch, at every instruction-set
level and thread count; then in the runtime, where it runs the float32 dense 3x3 layers: with it
on and with CSUB_WINOGRAD=0 the logits agree to float32 rounding, and the quantized paths do not
use it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import csub
from csub import _core, models
from csub.nn.quant import alpha_for_bits
from reference import conv as ref
from testkit import randomize_batch_norms

REPO = Path(__file__).resolve().parent.parent
LEVELS = ["baseline", "avx2", "avx512", "avx512vnni"]  # each CPU runs a prefix of this list
SUPPORTED = LEVELS[:LEVELS.index(_core.isa()) + 1] if not os.environ.get("CSUB_ISA") else None

# ------------------------------------------------------------------ the twin

BT = {4: np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
      2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)}
G = {4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
     2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])}
AT = {4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], float),
      2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)}


def winograd_twin(x, w, b=None, res=None, relu=False, m=4):
    """F(m x m, 3x3) in float64: x[N,C,H,W], w[K,C,3,3] -> relu?(conv(x, w, pad 1) + b[K] + res[N,K,H,W]).
    Tiles of m x m outputs read (m + 2)^2 patches of the zero-padded input, as the C kernel."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C, H, W = x.shape
    K, A = w.shape[0], m + 2
    th, tw = -(-H // m), -(-W // m)
    xp = np.zeros((N, C, th * m + 2, tw * m + 2))
    xp[:, :, 1:H + 1, 1:W + 1] = x
    rows = m * np.arange(th)[:, None] + np.arange(A)[None, :]           # [th, A]
    cols = m * np.arange(tw)[:, None] + np.arange(A)[None, :]           # [tw, A]
    d = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]        # [N, C, th, tw, A, A]
    U = np.einsum("ir,kcrs,js->kcij", G[m], w, G[m])                    # [K, C, A, A]
    V = np.einsum("ir,ncyxrs,js->ncyxij", BT[m], d, BT[m])             # [N, C, th, tw, A, A]
    M = np.einsum("kcij,ncyxij->nkyxij", U, V)
    Y = np.einsum("pi,nkyxij,qj->nkypxq", AT[m], M, AT[m])             # [N, K, th, m, tw, m]
    y = Y.reshape(N, K, th * m, tw * m)[:, :, :H, :W]
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    if res is not None:
        y = y + res
    return np.maximum(y, 0) if relu else y


# (N, C, H, W, K): 1x1 and 2x2 planes, H and W off the tile, C and K off the 16-channel block,
# batch 1 and more images than threads, and ResNet18's and cPreResNet20's channel counts; at batch 1
# on two threads, (1, 33, 13, 6, 70) splits the output channels across them (fewer tiles than
# channels) and (1, 24, 37, 41, 16) the tiles
SHAPES = [
    (1, 1, 1, 1, 1), (2, 3, 2, 2, 5), (1, 3, 5, 7, 5), (3, 17, 9, 11, 20), (1, 33, 13, 6, 70),
    (4, 16, 32, 32, 16), (1, 32, 16, 16, 32), (2, 64, 8, 8, 64), (1, 64, 7, 7, 48), (3, 8, 1, 9, 31),
    (1, 40, 30, 3, 24), (1, 24, 37, 41, 16),
]


def _case(rng, N, C, H, W, K):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    res = rng.standard_normal((N, K, H, W)).astype(np.float32)
    return x, w, b, res


@pytest.fixture(autouse=True)
def _threads():
    """Each test sets its thread counts; the session's count comes back after it."""
    old = csub.get_num_threads()
    yield
    csub.set_num_threads(old)


def _err(got, want):
    return float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("m", [2, 4])
def test_twin_is_the_convolution(rng, m):
    """The twin's transforms are exact in float64: it is the direct convolution to 1e-12."""
    for N, C, H, W, K in SHAPES[:6]:
        x, w, b, res = _case(rng, N, C, H, W, K)
        want = ref.conv2d_forward(x, w, b, 1, 1) + res
        assert _err(winograd_twin(x, w, b, res, False, m), want) < 1e-12, (N, C, H, W, K)


# F(4x4): the input transform scales by up to 4 + 5 + 1 per direction, the output transform by up to
# 1 + 8 + 8 + 1, so its float32 sums carry more rounding: measured max 2.6e-6 of the output's magnitude
# over these shapes at every level (F(2x2) 2.3e-7, the direct kernel 5.7e-7 against the same twin).
TOL = {4: 2e-5, 2: 3e-6}


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("N,C,H,W,K", SHAPES)
def test_kernel_against_twin_and_direct(rng, m, N, C, H, W, K):
    x, w, b, res = _case(rng, N, C, H, W, K)
    packed = _core.conv3x3_pack(w, m)
    for bias, r, relu in [(None, None, False), (b, None, True), (b, res, False), (b, res, True), (None, res, True)]:
        want = winograd_twin(x, w, bias, r, relu, m)
        direct = ref.conv2d_forward(x, w, bias, 1, 1) + (0 if r is None else r)
        direct = np.maximum(direct, 0) if relu else direct
        for threads in (1, 2):
            csub.set_num_threads(threads)
            got = _core.conv3x3_forward(x, w, bias, r, relu, 1, m, packed)
            tiny = _core.conv3x3_forward(x, w, bias, r, relu, winograd=m, tiles_per_block=1)
            assert got.shape == (N, K, H, W)
            assert _err(got, want) < TOL[m], (threads, bias is None, r is None, relu, _err(got, want))
            assert _err(got, direct) < TOL[m]
            assert _err(tiny, got) < TOL[m]  # blocks of one tile: the same sums
            if relu:
                assert (got >= 0).all()


def test_against_torch(rng, torch):
    for N, C, H, W, K in SHAPES[3:8]:
        x, w, b, res = _case(rng, N, C, H, W, K)
        want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                                     torch.from_numpy(b).double(), padding=1)
                          + torch.from_numpy(res).double()).numpy()
        for m in (2, 4):
            assert _err(_core.conv3x3_forward(x, w, b, res, True, winograd=m), want) < TOL[m]


@pytest.mark.parametrize("m", [2, 4])
def test_packed_weight_layout(rng, m):
    """u[A^2][Kp/16][Cp][16] = G w G^T rounded from float64, zeros past K and C; the same bits on one
    and two threads (the packing splits blocks of output channels)."""
    K, C, A = 70, 65, m + 2
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    want = np.zeros((A * A, 80 // 16, 80, 16), np.float32)
    U = np.einsum("ir,kcrs,js->ijkc", G[m], w.astype(np.float64), G[m]).reshape(A * A, K, C)
    for k in range(K):
        want[:, k // 16, :C, k % 16] = U[:, k, :].astype(np.float32)
    csub.set_num_threads(1)
    one = _core.conv3x3_pack(w, m)
    csub.set_num_threads(2)
    two = _core.conv3x3_pack(w, m)
    np.testing.assert_allclose(one.reshape(want.shape), want, rtol=1e-6, atol=1e-7)
    assert np.array_equal(one, two)


def test_bad_arguments(rng):
    x, w, b, res = _case(rng, 2, 3, 5, 5, 4)
    with pytest.raises(ValueError, match="m: expected 2 or 4"):
        _core.conv3x3_forward(x, w, winograd=3)
    with pytest.raises(ValueError, match="m: expected 2 or 4"):
        _core.conv3x3_pack(w, 6)
    with pytest.raises(ValueError, match="stride"):
        _core.conv3x3_forward(x, w, stride=2, winograd=4)
    with pytest.raises(ValueError, match="packed"):
        _core.conv3x3_forward(x, w, winograd=4, packed=_core.conv3x3_pack(w, 2))
    with pytest.raises(ValueError, match="res"):
        _core.conv3x3_forward(x, w, res=res[:, :2], winograd=4)
    with pytest.raises(ValueError, match="b"):
        _core.conv3x3_forward(x, w, b=b[:3], winograd=4)
    with pytest.raises(ValueError, match="3x3"):
        _core.conv3x3_forward(x, np.zeros((4, 3, 5, 5), np.float32), winograd=4)
    with pytest.raises(ValueError, match="tiles_per_block"):
        _core.conv3x3_forward(x, w, winograd=4, tiles_per_block=-1)
    with pytest.raises(TypeError):
        _core.conv3x3_forward(x.astype(np.float64), w, winograd=4)


_LEVEL_SCRIPT = r"""
import json, sys
import numpy as np
import csub
from csub import _core
from test_winograd import SHAPES, _case, _err, winograd_twin
rng = np.random.default_rng(5)
out = {"isa": _core.isa(), "err": {}}
for N, C, H, W, K in SHAPES:
    x, w, b, res = _case(rng, N, C, H, W, K)
    for m in (2, 4):
        want = winograd_twin(x, w, b, res, True, m)
        for t in (1, 2):
            csub.set_num_threads(t)
            got = _core.conv3x3_forward(x, w, b, res, True, winograd=m)
            out["err"][f"{N}x{C}x{H}x{W}/{K}/m{m}/t{t}"] = [m, _err(got, want)]
print(json.dumps(out))
"""


def test_every_level_matches_the_twin():
    """The products' register-blocked variants (AVX-512: 12 tiles x 32 channels, AVX2: 6 x 16,
    baseline: 3 x 16) and the transforms at each level the CPU runs."""
    if SUPPORTED is None:
        pytest.skip("CSUB_ISA is set for the whole run")
    for isa in SUPPORTED:
        env = dict(os.environ, CSUB_ISA=isa)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
        r = subprocess.run([sys.executable, "-c", _LEVEL_SCRIPT], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["isa"] == isa
        assert len(res["err"]) == 4 * len(SHAPES)
        for key, (m, e) in res["err"].items():
            assert e < TOL[m], (isa, key, e)


# ------------------------------------------------------------------ the runtime

def _bn_model(name, regime=None, num_classes=10, **kw):
    csub.manual_seed(3)
    rng = np.random.default_rng(3)
    if name == "resnet18":
        kw["num_classes"] = num_classes
    return randomize_batch_norms(models.build(name, regime=regime, subspace="line", norm="bn", **kw), rng)


def _pair(model, alpha, shape, monkeypatch):
    """The runtime at alpha with Winograd on and with CSUB_WINOGRAD=0 (read at set_alpha)."""
    monkeypatch.delenv("CSUB_WINOGRAD", raising=False)
    on = model.compress(alpha, input_shape=shape)
    monkeypatch.setenv("CSUB_WINOGRAD", "0")
    off = model.compress(alpha, input_shape=shape)
    monkeypatch.delenv("CSUB_WINOGRAD")
    return on, off


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


# The logits with Winograd on and off: each F(4x4) layer adds float32 errors of a few 1e-6 of its
# output's magnitude (TOL above), which the following layers carry; measured max relative
# difference 2.2e-7 (cPreResNet20, 32x32) and 1.1e-6 (ResNet18, 64x64; at 224x224, 6e-7 in
# benchmarks/bench_winograd.py), against 1e-5 here. The
# runtime-vs-training tolerance of tests/test_runtime.py (2e-4) holds with it on.
RTOL_WINO = 1e-5


@pytest.mark.parametrize("name,shape,batch", [("cpreresnet20", (3, 32, 32), 1), ("cpreresnet20", (3, 32, 32), 5),
                                              ("resnet18", (3, 64, 64), 1), ("resnet18", (3, 64, 64), 3)])
def test_runtime_on_and_off_agree(name, shape, batch, monkeypatch):
    model = _bn_model(name)
    x = np.random.default_rng(0).normal(0, 1, (batch,) + shape).astype(np.float32)
    on, off = _pair(model, 1.0, shape, monkeypatch)
    model.set_alpha(1.0)
    want = model(x)
    for t in (1, 2):
        csub.set_num_threads(t)
        y_on, y_off = on(x), off(x)
        # Winograd ran: the sums differ in their last bits, and agree to its tolerance
        assert not np.array_equal(y_on, y_off), t
        assert _rel(y_on, y_off) < RTOL_WINO, (t, _rel(y_on, y_off))
        assert _rel(y_on, want) < 2e-4


def test_runtime_quantized_paths_do_not_use_it(monkeypatch):
    """Fake-quantized (bits > 8) and integer layers keep the direct kernel's bits: the same logits on and off."""
    model = _bn_model("cpreresnet20", regime="quantized", bit_range=(3, 12))
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    for bits in (4, 8, 12):
        on, off = _pair(model, alpha_for_bits(bits, 3, 12), (3, 32, 32), monkeypatch)
        ops = [name for name, _ in _core.model_profile(on._m, x)]
        assert any(op.endswith("/fakequant" if bits > 8 else "/int8") for op in ops), (bits, ops)
        assert np.array_equal(on(x), off(x)), bits


def test_runtime_sparse_dense_crossover(monkeypatch):
    """Unstructured at a keep above the crossover runs the masked weight dense: by Winograd where on."""
    model = _bn_model("cpreresnet20", regime="unstructured")
    x = np.random.default_rng(2).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    on, off = _pair(model, 0.8, (3, 32, 32), monkeypatch)
    model.set_alpha(0.8)
    assert not np.array_equal(on(x), off(x))
    assert _rel(on(x), off(x)) < RTOL_WINO
    assert _rel(on(x), model(x)) < 2e-4


def test_runtime_reports_the_transformed_weight(monkeypatch):
    """The Winograd weight replaces the direct kernel's packed copy: F(4x4) holds 36 floats per
    channel pair instead of 9 (plus the 16-channel padding), which the reported weight bytes count."""
    model = _bn_model("cpreresnet20")
    on, off = _pair(model, 1.0, (3, 32, 32), monkeypatch)
    # cPreResNet20's 3x3 stride-1 convs with 32 or more channels: the second bottleneck's 32 -> 32
    # and 64 -> 64 (each stage's first strides); 4 bytes x (36 - 9) per weight more with it on
    extra = 4 * 27 * (32 * 32 + 64 * 64)
    assert on.info()["weight_bytes"] - off.info()["weight_bytes"] == extra


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_runtime_structured_widths(alpha, monkeypatch):
    """The structured regime at a narrower width transforms the active block of each weight (at 0.5,
    cPreResNet20's 64-channel convs run 32 channels: still Winograd)."""
    csub.manual_seed(4)
    model = models.build("cpreresnet20", regime="structured", subspace="line")
    model.eval()
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    on, off = _pair(model, alpha, (3, 32, 32), monkeypatch)
    model.set_alpha(alpha)
    assert on.info()["weight_bytes"] > off.info()["weight_bytes"]
    assert _rel(on(x), off(x)) < RTOL_WINO
    assert _rel(on(x), model(x)) < 2e-4
