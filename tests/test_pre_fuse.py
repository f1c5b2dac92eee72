"""A batch norm and its ReLU applied by the sparse layers that read them.

The kernels (csrc/csr.c, ``csub_pre``): ``_core.conv2d_sparse_forward(..., pre_scale=a, pre_shift=b)``
reads max(0, x * a[c] + b[c]) for input channel c, a 1x1 stride-1 layer in place (per kept weight),
any other layer without padding as it lays out its planes. Checked against the float64 twin of the
sparse convolution on the transformed input, at every instruction-set level, with NaN kept.

The runtime (csrc/runtime_alpha.c, ``fuse_pre``): a batch norm with its ReLU whose every reader is
such a layer or the global average pool runs in them; CSUB_PRE_FUSE=0 keeps it a pass of its own.
Both give the same logits to a rounding, at several alphas in turn and thread counts.
"""
import json

import numpy as np
import pytest

import csub
from csub import _core
from gradcheck import assert_close
from reference import spconv as sref
from test_fold import _model, _ops
from testkit import run_json_at_isa, supported_isa_levels

# (N, C, H, W, K, R, stride, keep): 1x1 stride 1 read in place (64-pixel blocks; one block; 16-pixel
# vectors and single pixels), 1x1 stride 2 and 3x3 without padding (laid-out planes)
SHAPES = [
    (1, 16, 32, 32, 64, 1, 1, 0.1), (2, 64, 8, 8, 16, 1, 1, 0.3), (1, 5, 5, 7, 9, 1, 1, 0.5),
    (2, 32, 16, 16, 12, 1, 2, 0.2), (1, 7, 9, 11, 6, 3, 1, 0.4), (1, 6, 12, 12, 10, 3, 2, 0.5),
]


def case(rng, N, C, H, W, K, R, keep):
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    mask = _core.topk_mask(w, keep)
    wm = _core.apply_mask(w, mask)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    a = (1.0 + rng.normal(0, 0.3, C)).astype(np.float32)
    a[0] = -a[0]  # a negative scale (a negative gamma) too
    b = rng.normal(0, 0.5, C).astype(np.float32)
    return x, wm, _core.csr_from_mask(wm, mask), a, b


def transformed(x, a, b):
    """max(0, x a + b) per channel, float64"""
    return np.maximum(0.0, x.astype(np.float64) * a[:, None, None] + b[:, None, None])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("N,C,H,W,K,R,stride,keep", SHAPES)
def test_pre_against_twin(rng, N, C, H, W, K, R, stride, keep, jit):
    if jit and not _core.sparse_jit_available():
        pytest.skip("no AVX-512 here: the code is not made")
    x, wm, csr, a, b = case(rng, N, C, H, W, K, R, keep)
    bias = rng.standard_normal(K).astype(np.float32)
    want = sref.conv2d_forward(transformed(x, a, b), *csr, wm.shape, bias, stride, 0)
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, bias, stride, 0, jit=jit, pre_scale=a, pre_shift=b)
    assert_close(y, want, 1e-5, 1e-5, "y")
    res = rng.standard_normal(y.shape).astype(np.float32)
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, bias, stride, 0, residual=res, relu=True, jit=jit,
                                    pre_scale=a, pre_shift=b)
    assert_close(y, np.maximum(want + res, 0.0), 1e-5, 1e-5, "relu(y + residual)")


@pytest.mark.parametrize("N,C,H,W,K,R,stride,keep", [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_pre_keeps_nan(rng, N, C, H, W, K, R, stride, keep):
    """A NaN input stays NaN through the transform's ReLU (as through the norm's): every output
    whose kept weights read it is NaN, the others are finite."""
    x, wm, csr, a, b = case(rng, N, C, H, W, K, R, 1.0)  # every weight kept: every output reads the pixel
    a[0] = abs(a[0])
    x[0, 0, 2, 4] = np.nan
    y = _core.conv2d_sparse_forward(x, *csr, wm.shape, None, stride, 0, pre_scale=a, pre_shift=b)
    reads = np.zeros(y.shape[2:], bool)
    if stride == 1:
        reads[max(0, 2 - R + 1):3, max(0, 4 - R + 1):5] = True
    else:
        reads[1, 2] = True
    assert np.isnan(y[0][:, reads]).all() and np.isfinite(y[0][:, ~reads]).all() and np.isfinite(y[1:]).all()


def test_pre_at_every_isa(rng):
    """The AVX-512 form (a max) and the portable one (a compare) agree with the twin at every level."""
    N, C, H, W, K, R, _, keep = SHAPES[2]
    x, wm, csr, a, b = case(rng, N, C, H, W, K, R, keep)
    want = sref.conv2d_forward(transformed(x, a, b), *csr, wm.shape, None, 1, 0)
    code = """
import json, sys
import numpy as np
from csub import _core
d = json.loads(sys.argv[1])
arr = lambda k, t: np.array(d[k], t)
csr = (arr("rowptr", np.int64), arr("colidx", np.int32), arr("values", np.float32))
y = _core.conv2d_sparse_forward(arr("x", np.float32), *csr, tuple(d["shape"]), pre_scale=arr("a", np.float32),
                                pre_shift=arr("b", np.float32))
print(json.dumps({"isa": _core.isa(), "y": y.tolist()}))
"""
    arg = json.dumps({"x": x.tolist(), "rowptr": csr[0].tolist(), "colidx": csr[1].tolist(),
                      "values": csr[2].tolist(), "shape": list(wm.shape), "a": a.tolist(), "b": b.tolist()})
    for isa in supported_isa_levels():
        res = run_json_at_isa(isa, code, arg)
        assert res["isa"] == isa
        assert_close(np.array(res["y"], np.float32), want, 1e-5, 1e-5, f"y at {isa}")


def test_pre_bad_input(rng):
    x, wm, csr, a, b = case(rng, 1, 4, 6, 6, 5, 3, 0.5)
    with pytest.raises(ValueError, match="pre_scale.*padding"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, None, 1, 1, pre_scale=a, pre_shift=b)
    with pytest.raises(ValueError, match="pre_scale, pre_shift"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, None, 1, 0, pre_scale=a)
    with pytest.raises(ValueError, match="pre_shift"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, None, 1, 0, pre_scale=a, pre_shift=b[:3])
    with pytest.raises(ValueError, match="pre_scale"):
        _core.conv2d_sparse_forward(x, *csr, wm.shape, None, 1, 0, pre_scale=np.ones((4, 1), np.float32),
                                    pre_shift=b)


@pytest.fixture
def threads():
    old = csub.get_num_threads()
    yield csub.set_num_threads
    csub.set_num_threads(old)


@pytest.mark.parametrize("regime", ["unstructured", None])
def test_runtime_fused_equals_unfused(rng, monkeypatch, threads, regime):
    """cPreResNet20 with batch norm: the norms after each residual add (6) run in the sparse 1x1
    layers and the pool that read them at keep 0.1 and 0.3; at keep 0.8 (dense kernels) and in a
    dense network only the last, in the pool. The logits match CSUB_PRE_FUSE=0's at each alpha in
    turn, on one and two threads, at batch 1 (an image split across threads) and 5."""
    model, _ = _model("cpreresnet20", regime, rng)
    alphas = [0.1, 0.8, 0.3, 0.1] if regime else [1.0]
    fused = model.compress(alphas[0], input_shape=(3, 16, 16))
    monkeypatch.setenv("CSUB_PRE_FUSE", "0")
    plain = model.compress(alphas[0], input_shape=(3, 16, 16))
    for alpha in alphas:
        plain.set_alpha(alpha)
        monkeypatch.delenv("CSUB_PRE_FUSE")
        fused.set_alpha(alpha)
        monkeypatch.setenv("CSUB_PRE_FUSE", "0")
        for n in (1, 5):
            x = rng.normal(0, 1, (n, 3, 16, 16)).astype(np.float32)
            for t in (1, 2):
                threads(t)
                assert_close(fused(x), plain(x), 1e-5, 1e-5, f"logits at alpha {alpha}, batch {n}, {t} threads")
        ops, ops_plain = _ops(fused, x), _ops(plain, x)
        assert ops.count("bn+relu/fused") == (6 if alpha <= 0.3 else 1), (alpha, ops)
        assert "bn+relu/fused" not in ops_plain
        assert ops.count("bn+relu/fused") + ops.count("bn+relu") == ops_plain.count("bn+relu") == 6
    assert fused.memory_bytes() == plain.memory_bytes()
