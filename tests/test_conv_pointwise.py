"""The 1x1 convolution kernel (csrc/conv_pointwise.c), which the dense conv forward runs for a
1x1 conv without padding whose weight has at most 32768 values (stride 1 on x itself, a larger
stride on the gathered rows and columns): at every instruction-set level (CSUB_ISA) against
the float64 NumPy twin, the same bits at every level and thread count (one fused multiply-add
per term, summed in channel order), against PyTorch, the bias, residual and ReLU applied in the
tiles with the same bits as applied after the product, and in the runtime against the training
forward."""

import numpy as np
import pytest

import csub
from csub import _core, models
from gradcheck import assert_close
from testkit import check_every_level, randomize_batch_norms

# (N, C, H, W, K, stride): one output channel, K off every group of 8, planes under one vector
# and off every vector (7x9 = 63 pixels), a single input channel, cPreResNet20's bottleneck
# shapes, strided shortcuts (odd sizes: the last row and column read; rows of two vectors and a
# part of one: stride 2 gathers 16 columns a permute on AVX-512), ResNet18's 14 x 14 and
# 7 x 7 planes (196 and 49 pixels: the last ones by a vector shifted back, at batch 1 on two
# threads inside the second thread's pixels), and a weight past the kernel's limit (256 x 256:
# sgemm), which must agree all the same
SHAPES = [
    (1, 3, 1, 1, 1, 1), (2, 5, 3, 3, 13, 1), (1, 7, 7, 9, 9, 1), (3, 1, 4, 5, 8, 1), (2, 16, 32, 32, 64, 1),
    (1, 64, 32, 32, 16, 1), (2, 256, 8, 8, 64, 1), (1, 64, 8, 8, 256, 1), (1, 130, 5, 11, 17, 1),
    (2, 64, 32, 32, 128, 2), (1, 9, 7, 5, 10, 2), (2, 6, 9, 9, 4, 3), (1, 128, 14, 14, 32, 1),
    (1, 96, 14, 14, 40, 2), (1, 120, 7, 7, 200, 1), (2, 8, 69, 70, 12, 2), (1, 256, 4, 4, 256, 1),
]

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
from csub import _core
from reference import conv as ref

shapes = json.loads(sys.argv[1])
rng = np.random.default_rng(11)
out = {"isa": _core.isa(), "err": {}, "digest": {}, "fused": {}}
for N, C, H, W, K, st in shapes:
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = ref.conv2d_forward(x, w, b, st, 0)
    for threads in (1, 2):
        _core.set_num_threads(threads)
        y = _core.conv2d_forward(x, w, b, st, 0)
        key = f"{N}x{C}x{H}x{W}/{K}/s{st}/t{threads}"
        out["err"][key] = [float(np.abs(y - want).max()) / max(1.0, float(np.abs(want).max())),
                           list(y.shape) == list(want.shape)]
        out["digest"][key] = hashlib.sha1(y.tobytes()).hexdigest()
        # the epilogue in the tiles: (sum + b) + residual, then the ReLU, the same bits as numpy's
        # float32 ops on the bare product; and the ReLU alone on a product without a bias
        res = rng.standard_normal(y.shape).astype(np.float32)
        yf = _core.conv2d_forward(x, w, b, st, 0, residual=res, relu=True)
        v = y + res
        y0 = _core.conv2d_forward(x, w, None, st, 0)
        out["fused"][key] = [bool(np.array_equal(yf, np.where(v <= 0, np.float32(0), v))),
                             bool(np.array_equal(_core.conv2d_forward(x, w, None, st, 0, relu=True),
                                                 np.where(y0 <= 0, np.float32(0), y0)))]
        out["digest"][key + "/fused"] = hashlib.sha1(yf.tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_every_level_matches_the_twin_with_the_same_bits():
    # float32 rounding over sums of up to 256 O(1) products
    d = check_every_level(_SCRIPT, SHAPES, 2 * len(SHAPES), 2e-6)
    for N, C, H, W, K, st in SHAPES[:-1]:  # the split across threads changes no bit (the last: sgemm's)
        key = f"{N}x{C}x{H}x{W}/{K}/s{st}"
        assert d[key + "/t1"] == d[key + "/t2"], key


@pytest.mark.parametrize("N,C,H,W,K,stride", SHAPES[1:11])
def test_pointwise_conv_against_torch(rng, torch, N, C, H, W, K, stride):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                      torch.from_numpy(b).double(), stride=stride).numpy()
    assert_close(_core.conv2d_forward(x, w, b, stride, 0), want, 1e-5, 1e-5, "y")


def test_non_finite_inputs_reach_their_pixel_only(rng):
    x = rng.standard_normal((1, 12, 5, 7)).astype(np.float32)
    x[0, 4, 2, 3] = np.nan
    x[0, 7, 4, 6] = np.inf
    w = np.abs(rng.standard_normal((11, 12, 1, 1))).astype(np.float32) + 0.1
    y = _core.conv2d_forward(x, w, None, 1, 0)
    assert np.isnan(y[0, :, 2, 3]).all() and np.isposinf(y[0, :, 4, 6]).all()
    mask = np.ones((5, 7), bool)
    mask[2, 3] = mask[4, 6] = False
    assert np.isfinite(y[0][:, mask]).all()
    res = np.zeros_like(y)
    res[0, 3, 1, 1] = np.nan
    yf = _core.conv2d_forward(x, w, None, 1, 0, residual=res, relu=True)  # the ReLU keeps NaN, as csub's
    assert np.isnan(yf[0, :, 2, 3]).all() and np.isnan(yf[0, 3, 1, 1]) and np.isposinf(yf[0, :, 4, 6]).all()
    with pytest.raises(ValueError, match="residual"):
        _core.conv2d_forward(x, w, None, 1, 0, residual=res[:, :2].copy())


def test_runtime_epilogue_matches_training_forward(rng):
    """cPreResNet20 with batch norm: its 1x1 convs run with the folded norm's bias, the residual
    add and the ReLU fused into the tiles; the logits match the training forward."""
    csub.manual_seed(2)
    model = randomize_batch_norms(models.cpreresnet20(norm="bn"), rng)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = model(x)
    before = csub.get_num_threads()
    try:
        for threads in (1, 2):
            csub.set_num_threads(threads)
            for n in (1, 3):  # one image split across the threads; whole images per thread
                assert_close(model.compress(1.0, input_shape=(3, 32, 32))(x[:n]), want[:n], 1e-4, 1e-4,
                             f"logits ({threads} threads, batch {n})")
    finally:
        csub.set_num_threads(before)
