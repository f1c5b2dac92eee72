"""Batch-norm folding and ReLU fusion in the C runtime (csrc/runtime.c): every batch norm that
directly follows a conv or linear layer is folded into it (weights and a bias) at set_alpha,
for every regime, and a ReLU after such a layer (or after its fused residual add) runs in the
layer. Outputs keep matching the training forward; CSUB_FOLD=0 turns folding off, so the
folded and unfolded runtimes are compared in one process."""
import numpy as np
import pytest

import csub
from csub import models
from csub.nn.quant import alpha_for_bits
from test_runtime import RTOL_FLOAT, RTOL_INT, _prepare, _rel

# (factory arguments, input shape, batch norms that follow a conv or linear layer, all batch norms)
BN_CASES = {
    "mlp": (dict(hidden=(32, 24), norm="bn"), (3, 1, 28, 28), 2, 2),
    "cnn": (dict(widths=(8, 16, 16), norm="bn"), (3, 1, 28, 28), 6, 6),
    # pre-activation: n2 and n3 of each block follow conv1 and conv2, the first block's n1 the
    # stem conv; the other n1 and the head follow an add
    "cpreresnet20": (dict(norm="bn"), (2, 3, 16, 16), 13, 19),
    # stem, two per block, one per shortcut
    "resnet18": (dict(norm="bn", num_classes=10), (2, 3, 32, 32), 20, 20),
}
ALPHAS = {None: [1.0], "unstructured": [0.05, 0.3, 0.5, 1.0], "quantized": [alpha_for_bits(b) for b in (3, 5, 8)]}


def _ops(net, x):
    """Names of the runtime's operations (csub.CompressedNet.profile sums them by name)."""
    return [name for name, _ in csub._core.model_profile(net._m, x)]


def _model(name, regime, rng):
    kw, shape, _, _ = BN_CASES[name]
    csub.manual_seed(7)
    model = models.build(name, regime=regime, subspace="line", **kw)
    x = rng.normal(0, 1, shape).astype(np.float32)
    _prepare(model, x, regime, rng)
    return model, x


@pytest.mark.parametrize("regime", [None, "unstructured", "quantized"])
@pytest.mark.parametrize("name", sorted(BN_CASES))
def test_folded_network_matches_the_training_forward(name, regime, rng):
    """(The structured regime takes no batch norm: test_structured_file_with_batch_norm.)"""
    if name == "resnet18" and regime == "unstructured":
        pytest.skip("the same layers as cnn and cpreresnet20; resnet18 is covered dense and quantized")
    model, x = _model(name, regime, rng)
    _, shape, folded, total = BN_CASES[name]
    alphas = ALPHAS[regime]
    net = model.compress(alphas[0], input_shape=shape[1:])
    for a in alphas:
        model.set_alpha(a)
        want = model(x)
        got = net.set_alpha(a)(x)
        ops = _ops(net, x)
        # only the batch norms that follow an add are left
        assert sum(op in ("bn", "bn+relu", "bn+relu/fused") for op in ops) == total - folded, (a, ops)
        if regime == "quantized" and net.info()["bits"] <= 8:
            assert _rel(got, want) < RTOL_INT, a
            assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.5
        else:
            assert _rel(got, want) < RTOL_FLOAT, (a, _rel(got, want))


@pytest.mark.parametrize("name", ["cnn", "cpreresnet20", "mlp"])
@pytest.mark.parametrize("regime", [None, "unstructured", "quantized"])
def test_folded_equals_unfolded(name, regime, rng, monkeypatch):
    """Folding changes float rounding only: the runtime with CSUB_FOLD=0 (every norm and ReLU
    run as its own operation) gives the same logits, and runs more operations."""
    model, x = _model(name, regime, rng)
    shape = BN_CASES[name][1]
    a = {None: 1.0, "unstructured": 0.3, "quantized": alpha_for_bits(4)}[regime]
    folded = model.compress(a, input_shape=shape[1:])
    monkeypatch.setenv("CSUB_FOLD", "0")
    plain = model.compress(a, input_shape=shape[1:])
    got, want = folded(x), plain(x)
    tol = RTOL_INT if regime == "quantized" else RTOL_FLOAT
    assert _rel(got, want) < tol
    n_plain, n_folded = _ops(plain, x), _ops(folded, x)
    assert len(n_plain) == len(n_folded)  # the same graph; folded operations become aliases
    assert n_folded.count("alias") > n_plain.count("alias")
    assert n_plain.count("bn+relu") + n_plain.count("bn") == BN_CASES[name][3]


def test_relu_after_a_residual_add_runs_in_the_conv(rng):
    """ResNet18's block ends conv -> bn -> add -> relu: the norm folds into the conv, the add
    and the ReLU run in it; with the norms folded nothing but convs, pools and the classifier
    are left."""
    model, x = _model("resnet18", None, rng)
    net = model.compress(1.0, input_shape=(3, 32, 32))
    ops = _ops(net, x)
    assert set(ops) == {"conv/dense", "alias", "maxpool", "gap", "linear/dense"}, set(ops)
    model.set_alpha(1.0)
    assert _rel(net(x), model(x)) < RTOL_FLOAT


def test_folded_relu_keeps_nan(rng):
    """A NaN input stays NaN through the fused conv + ReLU (as through the ReLU alone)."""
    model, x = _model("cnn", None, rng)
    net = model.compress(1.0)
    x[0, 0, 3, 3] = np.nan
    out = net(x)
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()


def test_structured_file_with_batch_norm(rng):
    """A structured file with batch norms (csub.models refuses to build one) runs folded at the
    full width and refuses the other widths, as the norms would."""
    from test_runtime import _file, _save
    model, x = _model("cnn", None, rng)
    meta, tensors = _file(model, regime="structured")
    net = csub.CompressedNet(_save(meta, tensors), 1.0)
    assert "bn+relu" not in _ops(net, x)
    model.set_alpha(1.0)
    assert _rel(net(x), model(x)) < RTOL_FLOAT
    with pytest.raises(ValueError, match="batch norm"):
        net.set_alpha(0.5)


@pytest.mark.parametrize("name", ["resnet18", "cpreresnet20"])
def test_fused_epilogue_on_thread_counts(name, rng):
    """Batch 1: the threads split each image's rows, and each applies the bias, the residual
    and the ReLU to its own rows; 1 to 3 threads agree with the training forward."""
    model, _ = _model(name, None, rng)
    x = rng.normal(0, 1, (1, 3, 48, 48)).astype(np.float32)
    net = model.compress(1.0, input_shape=(3, 48, 48))
    model.set_alpha(1.0)
    want = model(x)
    old = csub.get_num_threads()
    try:
        for t in (1, 2, 3):
            csub.set_num_threads(t)
            assert _rel(net(x), want) < RTOL_FLOAT, t
    finally:
        csub.set_num_threads(old)


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_wide_bit_widths_fold_after_fake_quantization(name, rng):
    """Above 8 bits the layers run fake-quantized in float; where training quantizes the weight
    without the norm's scale (these networks), the folded norm scales the products and adds its
    shift after them. That changes the float rounding before the next quantizer, as the integer
    products do at <= 8 bits, so a tie can flip a code: the integer tolerance applies (unfolded,
    these outputs equal the training forward's bit for bit)."""
    kw, shape, _, _ = BN_CASES[name]
    csub.manual_seed(7)
    model = models.build(name, regime="quantized", subspace="line", bit_range=(9, 12), **kw)
    x = rng.normal(0, 1, shape).astype(np.float32)
    _prepare(model, x, "quantized", rng)
    net = model.compress(1.0, input_shape=shape[1:])
    assert not any(c.fold_norm for c in model.compressible_layers())
    for a in (0.0, 1.0):
        model.set_alpha(a)
        got = net.set_alpha(a)(x)
        ops = _ops(net, x)
        assert net.info()["bits"] > 8 and any(op.endswith("/fakequant") for op in ops)
        assert "bn" not in ops and "bn+relu" not in ops
        want = model(x)
        assert _rel(got, want) < RTOL_INT, a
        assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.5
