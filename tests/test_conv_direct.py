"""The direct 3x3 convolution (csrc/conv_direct.c: pad 1, stride 1 or 2), which the dense conv
forward and the runtime's fused dense convs run, at every instruction-set level (CSUB_ISA):
against the float64 NumPy twin, against the im2col path (the same convolution with the padding
done outside, pad 0, which the direct kernel does not take), against PyTorch, and in the runtime
(the fused bias, residual and ReLU epilogue) against the training forward; and the input
gradient, which at stride 1 is the direct convolution of the output gradient with the flipped,
transposed weight."""
import json

import numpy as np
import pytest

import csub
from csub import _core, models
from gradcheck import assert_close
from reference import conv as ref
from testkit import run_json_at_isa, supported_isa_levels

# (N, C, H, W, K, stride): odd and tiny planes, channel counts off every vector and group size
# (K not a multiple of 8 or 16), cPreResNet20's shapes, one image with more rows than threads, a
# stride-2 row of 67 values (its phases split 32 values at a time on AVX-512: two whole steps and a
# part), and (last) a weight too large to pack for so few pixels, which the dense forward leaves to
# im2col
SHAPES = [
    (1, 1, 1, 1, 1, 1), (2, 3, 1, 5, 2, 2), (1, 3, 5, 7, 5, 1), (3, 7, 9, 11, 13, 2), (2, 5, 2, 3, 9, 2),
    (1, 16, 32, 32, 16, 1), (2, 16, 32, 32, 32, 2), (1, 32, 16, 16, 32, 1), (2, 32, 16, 16, 64, 2),
    (1, 64, 8, 8, 64, 1), (1, 33, 17, 15, 70, 1), (2, 24, 13, 6, 17, 2), (1, 8, 40, 3, 24, 1), (1, 4, 9, 67, 8, 2),
    (1, 96, 3, 4, 96, 1),
]

_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import csub
from csub import _core
from reference import conv as ref

shapes = json.loads(sys.argv[1])
rng = np.random.default_rng(3)
out = {"isa": _core.isa(), "err": {}, "digest": {}}
for N, C, H, W, K, st in shapes:
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = ref.conv2d_forward(x, w, b, st, 1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for threads in (1, 2):
        _core.set_num_threads(threads)
        y = _core.conv2d_forward(x, w, b, st, 1)
        im2col = _core.conv2d_forward(xp, w, b, st, 0)
        scale = max(1.0, float(np.abs(want).max()))
        key = f"{N}x{C}x{H}x{W}/{K}/s{st}/t{threads}"
        out["err"][key] = [float(np.abs(y - want).max()) / scale, float(np.abs(y - im2col).max()) / scale,
                           list(y.shape) == list(want.shape)]
        out["digest"][key] = hashlib.sha1(y.tobytes()).hexdigest()
        # the input gradient (direct at stride 1: the flipped transposed weight) and the weight gradient
        dy = rng.standard_normal(want.shape).astype(np.float32)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx = _core.conv2d_backward(x, w, dy, dw, db, st, 1)
        edx, edw, edb = ref.conv2d_backward(x, w, dy, st, 1)
        out["digest"]["dx/" + key] = hashlib.sha1(dx.tobytes()).hexdigest()
        out["err"]["dx/" + key] = [float(np.abs(dx - edx).max()) / max(1.0, float(np.abs(edx).max())), 0.0,
                                   dx.shape == edx.shape]
        out["err"]["dw/" + key] = [float(np.abs(dw - edw).max()) / max(1.0, float(np.abs(edw).max())), 0.0,
                                   dw.shape == edw.shape]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def levels():
    return supported_isa_levels()


def test_every_level_matches_the_twins_and_the_im2col_path(levels):
    digests = {}
    for isa in levels:
        res = run_json_at_isa(isa, _SCRIPT, json.dumps(SHAPES))
        digests[isa] = res["digest"]
        assert res["isa"] == isa
        assert len(res["err"]) == 6 * len(SHAPES)
        for key, (e_twin, e_im2col, shape_ok) in res["err"].items():
            assert shape_ok, (isa, key)
            # float32 rounding over sums of up to 9 * 70 products of O(1) values (dw: of up to 2 * 1024)
            assert e_twin < (1e-5 if key.startswith("dw/") else 2e-6), (isa, key, e_twin)
            assert e_im2col < 2e-6, (isa, key, e_im2col)
    # no contraction, one summation order: every level computes the baseline's bits (internal.h)
    for isa in levels:
        assert digests[isa] == digests["baseline"], isa


@pytest.mark.parametrize("N,C,H,W,K,stride", SHAPES[2:8])
def test_direct_conv_against_torch(rng, torch, N, C, H, W, K, stride):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    want = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                      torch.from_numpy(b).double(), stride=stride, padding=1).numpy()
    assert_close(_core.conv2d_forward(x, w, b, stride, 1), want, 1e-5, 1e-5, "y")


def test_non_finite_inputs_propagate(rng):
    """A NaN or infinity reaches exactly the outputs whose window holds it (no padding value leaks)."""
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for stride in (1, 2):
        y = _core.conv2d_forward(x, w, None, stride, 1)
        want = ref.conv2d_forward(np.isnan(x).astype(np.float64), np.ones_like(w), None, stride, 1) > 0
        assert np.array_equal(np.isnan(y), want), stride


_NET = r"""
import hashlib, json, sys
import numpy as np
import csub
from csub import models
from testkit import randomize_batch_norms

rng = np.random.default_rng(5)
csub.manual_seed(5)
model = randomize_batch_norms(models.cpreresnet20(norm="bn"), rng)
net = model.compress(1.0)
ops = sorted({name for name, _ in csub._core.model_profile(net._m, np.zeros((1, 3, 32, 32), np.float32))})
err = {}
for threads in (1, 2):
    csub.set_num_threads(threads)
    for batch in (1, 3):
        x = rng.normal(0, 1, (batch, 3, 32, 32)).astype(np.float32)
        want = model(x)
        err[f"b{batch}/t{threads}"] = float(np.abs(net(x) - want).max() / np.abs(want).max())
print(json.dumps({"err": err, "ops": ops}))
"""


def test_runtime_fused_direct_convs_match_the_training_forward(levels):
    """cPreResNet20 with batch norm: its 3x3 convs run direct with the folded norm, the residual add and
    the ReLU in the epilogue, each image whole (batch 3) or split by rows across threads (batch 1)."""
    for isa in levels:
        res = run_json_at_isa(isa, _NET)
        assert "conv/dense" in res["ops"]
        for key, e in res["err"].items():
            assert e < 1e-5, (isa, key, e)


def test_packing_follows_set_alpha(rng):
    """Width changes at set_alpha re-pack the direct kernel's weight (structured regime)."""
    csub.manual_seed(2)
    model = models.cpreresnet20(regime="structured", subspace="line")
    model.eval()
    x = rng.normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    net = model.compress(1.0)
    for a in (1.0, 0.5, 0.25, 1.0):
        model.set_alpha(a)
        want = model(x)
        got = net.set_alpha(a)(x)
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5, a
