"""The few-taps convolution kernel (csrc/conv_stem.c), which the dense conv forward runs for a
conv with C R S <= 160 taps per output (more than one) on output rows of 32 or more pixels, other
than the 3x3 ones the direct kernel takes (ResNet18's 7x7 stride-2 stem): at every
instruction-set level (CSUB_ISA) against the float64 NumPy twin, the same bits at every level and
thread count (one fused multiply-add per tap, in tap order), the bias, residual and ReLU applied
in the tiles with the same bits as applied after the product, against PyTorch (with the backward
the training conv pairs it with), and non-finite inputs."""

import numpy as np
import pytest

from csub import _core
from gradcheck import assert_close
from testkit import check_every_level

# (N, C, H, W, K, R, stride, pad): ResNet18's stem (at 64x64 and, one image, 224x224: the rows of
# one image split across threads), K off every group of 8, rows of 32 (two vectors) and of 37
# and 45 pixels (a vector's part left), a single input channel, 5x5, stride 2 and 3, no padding
SHAPES = [
    (2, 3, 64, 64, 64, 7, 2, 3), (1, 3, 224, 224, 64, 7, 2, 3), (2, 3, 64, 74, 13, 7, 2, 3),
    (1, 1, 40, 37, 9, 5, 1, 2), (2, 2, 47, 45, 8, 5, 1, 0), (1, 3, 100, 99, 5, 4, 3, 1),
    (3, 4, 34, 40, 17, 5, 1, 2),
]

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from csub import _core
from reference import conv as ref

shapes = json.loads(sys.argv[1])
rng = np.random.default_rng(5)
out = {"isa": _core.isa(), "err": {}, "digest": {}, "fused": {}}
for N, C, H, W, K, R, st, pad in shapes:
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = ref.conv2d_forward(x, w, b, st, pad)
    for threads in (1, 2):
        _core.set_num_threads(threads)
        y = _core.conv2d_forward(x, w, b, st, pad)
        key = f"{N}x{C}x{H}x{W}/{K}/{R}/s{st}p{pad}/t{threads}"
        out["err"][key] = [float(np.abs(y - want).max()) / max(1.0, float(np.abs(want).max())),
                           list(y.shape) == list(want.shape)]
        out["digest"][key] = hashlib.sha1(y.tobytes()).hexdigest()
        res = rng.standard_normal(y.shape).astype(np.float32)
        yf = _core.conv2d_forward(x, w, b, st, pad, residual=res, relu=True)
        v = y + res
        y0 = _core.conv2d_forward(x, w, None, st, pad)
        out["fused"][key] = [bool(np.array_equal(yf, np.where(v <= 0, np.float32(0), v))),
                             bool(np.array_equal(_core.conv2d_forward(x, w, None, st, pad, relu=True),
                                                 np.where(y0 <= 0, np.float32(0), y0)))]
print(json.dumps(out))
"""


def test_every_level_matches_the_twin_with_the_same_bits():
    # float32 rounding over sums of up to 147 O(1) products
    d = check_every_level(_SCRIPT, SHAPES, 2 * len(SHAPES), 2e-6)
    for key in d:  # the split across threads (by images, or by one image's rows) changes no bit
        if key.endswith("/t1"):
            assert d[key] == d[key[:-3] + "/t2"], key


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [s for s in SHAPES if s[2] * s[3] <= 64 * 74])
def test_stem_conv_against_torch(rng, torch, N, C, H, W, K, R, stride, pad):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    res = rng.standard_normal((N, K, (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1))
    res = res.astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                      torch.from_numpy(b).double(), stride=stride, padding=pad).numpy()
    assert_close(_core.conv2d_forward(x, w, b, stride, pad), want, 1e-5, 1e-5, "y")
    assert_close(_core.conv2d_forward(x, w, b, stride, pad, residual=res, relu=True), np.maximum(want + res, 0),
                 1e-5, 1e-5, "relu(y + residual)")


def test_non_finite_inputs_reach_their_window_only(rng):
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    x[0, 1, 20, 30] = np.nan
    w = np.abs(rng.standard_normal((8, 3, 7, 7))).astype(np.float32) + 0.1
    y = _core.conv2d_forward(x, w, None, 2, 3, relu=True)  # the ReLU keeps NaN, as csub's
    # output (p, q) reads rows 2p - 3 .. 2p + 3: the NaN at (20, 30) reaches p in 9..11, q in 14..16
    bad = np.zeros(y.shape[2:], bool)
    bad[9:12, 14:17] = True
    assert np.isnan(y[0][:, bad]).all() and np.isfinite(y[0][:, ~bad]).all()


def test_training_pair_against_torch_autograd(rng, torch):
    """A training conv of a shape the stem kernel takes (Q = 32): its forward (this kernel) and
    backward (_core.conv2d_backward: dx, dw and db) against PyTorch's autograd in float64."""
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    w = rng.standard_normal((12, 3, 7, 7)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    dy = rng.standard_normal((2, 12, 32, 32)).astype(np.float32)
    xt, wt, bt = (torch.from_numpy(a).double().requires_grad_() for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=2, padding=3)
    (yt * torch.from_numpy(dy).double()).sum().backward()
    assert_close(_core.conv2d_forward(x, w, b, 2, 3), yt.detach().numpy(), 1e-5, 1e-5, "y")
    dw, db = np.zeros_like(w), np.zeros_like(b)
    dx = _core.conv2d_backward(x, w, dy, dw, db, 2, 3)
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-5, "dw")
    assert_close(db, bt.grad.numpy(), 1e-5, 1e-5, "db")
