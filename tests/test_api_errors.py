"""Bad arguments to the public Python API get a TypeError/ValueError/RuntimeError that names the
argument: input layouts, factory arguments, fit/evaluate/calibrate arguments, backward before
forward. And the read-only calls (evaluate, flops, sparsity) leave the model as they found it."""
import math

import numpy as np
import pytest

import csub
from csub import models, nn, train


def _z(*shape):
    return np.zeros(shape, np.float32)


# -- input layout --------------------------------------------------------------------------

LAYOUT_CASES = [
    # (model, right input, inputs of the right size per image in a wrong layout)
    (lambda: models.mlp(in_features=3 * 8 * 8, hidden=(6,), in_channels=3), _z(2, 3, 8, 8),
     [_z(2, 8, 8, 3), _z(2, 3, 64), _z(2, 192, 1), _z(0, 192)]),
    (lambda: models.cnn(in_channels=3, widths=(4,), image_size=8), _z(2, 3, 8, 8),
     [_z(2, 8, 8, 3), _z(2, 192), _z(2, 3, 4, 16), _z(0, 3, 8, 8)]),
    (lambda: models.cpreresnet20(in_channels=3, norm="in"), _z(2, 3, 8, 8),
     [_z(2, 8, 8, 3), _z(2, 192), _z(3, 8, 8)]),
    (lambda: models.resnet18(in_channels=3, num_classes=4, norm="in"), _z(1, 3, 16, 16),
     [_z(1, 16, 16, 3), _z(1, 768)]),
]


@pytest.mark.parametrize("case", range(len(LAYOUT_CASES)))
def test_training_model_refuses_other_layouts(case):
    build, good, bad = LAYOUT_CASES[case]
    m = build()
    assert m(good).shape[0] == good.shape[0]
    for x in bad:
        with pytest.raises(ValueError, match=r"^x: expected \(N, ") as e:
            m(x)
        assert str(x.shape) in str(e.value)


@pytest.mark.parametrize("case", range(len(LAYOUT_CASES)))
def test_compressed_net_refuses_other_layouts(case):
    build, good, bad = LAYOUT_CASES[case]
    m = build().eval()
    net = m.compress(1.0, good.shape[1:])
    y = net(good)
    np.testing.assert_allclose(y, m(good), rtol=1e-4, atol=1e-5)
    assert net.predict(good).shape == (good.shape[0],) and net.profile(good)
    for x in bad:
        for call in (net.forward, net.predict, net.profile):
            with pytest.raises(ValueError, match=r"^x: expected \(N, "):
                call(x)


def test_channels_last_reproducer():
    """A (2, 32, 32, 3) batch to a 3-channel model used to run with wrong results."""
    m = models.cnn(in_channels=3, widths=(4, 8), image_size=32).eval()
    net = m.compress(1.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"expected \(N, 3, 32, 32\).*got shape \(2, 32, 32, 3\)"):
        net(x.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"expected \(N, 3, 32, 32\)"):
        m(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def test_mlp_compressed_net_takes_flat_features_too():
    m = models.mlp(in_features=64, hidden=(8,), in_channels=1).eval()
    net = m.compress(1.0)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(net(x), net(x.reshape(3, 64)))
    with pytest.raises(ValueError, match="x: expected"):
        net(x.reshape(3, 8, 8))


def test_compressed_net_refuses_non_arrays():
    net = models.mlp(in_features=4, hidden=(3,), in_channels=1).compress(1.0)
    with pytest.raises(TypeError, match="^x: "):
        net("abc")


def test_calibrate_and_memory_arguments():
    net = models.mlp(in_features=4, hidden=(3,), in_channels=1).compress(1.0)
    for kw, err in ((dict(batch_size=0), ValueError), (dict(batch_size=1.5), TypeError), (dict(reps=0), ValueError),
                    (dict(reps=True), TypeError), (dict(alphas=[]), ValueError), (dict(alphas=0.5), TypeError),
                    (dict(alphas=[float("nan")]), ValueError)):
        name = next(iter(kw))
        with pytest.raises(err, match=f"^{name}"):
            net.calibrate(**kw)
    with pytest.raises(ValueError, match="^batch_size"):
        net.memory_bytes(0)
    with pytest.raises(TypeError, match="^batch_size"):
        net.memory_bytes(2.5)
    assert net.memory_bytes(2) > 0


# -- factories -----------------------------------------------------------------------------

FACTORY_CASES = [
    ("cnn", dict(widths=()), ValueError, "widths"),
    ("cnn", dict(widths=8), TypeError, "widths"),
    ("cnn", dict(widths=None), TypeError, "widths"),
    ("cnn", dict(widths=(8, 0)), ValueError, r"widths\[1\]"),
    ("cnn", dict(widths=(8.5,)), TypeError, r"widths\[0\]"),
    ("cnn", dict(image_size=28.0), TypeError, "image_size"),
    ("cnn", dict(image_size=float("nan")), TypeError, "image_size"),
    ("cnn", dict(image_size=0), ValueError, "image_size"),
    ("cnn", dict(image_size=3), ValueError, "image_size"),
    ("cnn", dict(num_classes=0), ValueError, "num_classes"),
    ("cnn", dict(num_classes="10"), TypeError, "num_classes"),
    ("cnn", dict(in_channels=True), TypeError, "in_channels"),
    ("cnn", dict(bit_range=(3,)), TypeError, "bit_range"),
    ("cnn", dict(bit_range=None), TypeError, "bit_range"),
    ("cnn", dict(width_range=None), TypeError, "width_range"),
    ("cnn", dict(width_range="ab"), TypeError, "width_range"),
    ("cnn", dict(width_range=(0.5,)), TypeError, "width_range"),
    ("cnn", dict(width_range=(float("nan"), 1.0)), ValueError, "width_range"),
    ("cnn", dict(regime=[]), ValueError, "regime"),
    ("mlp", dict(hidden=300), TypeError, "hidden"),
    ("mlp", dict(hidden=(0,)), ValueError, r"hidden\[0\]"),
    ("mlp", dict(in_features=0), ValueError, "in_features"),
    ("mlp", dict(in_features=784.0), TypeError, "in_features"),
    ("mlp", dict(in_channels=0), ValueError, "in_channels"),
    ("mlp", dict(in_channels=3), ValueError, "in_channels"),
    ("cpreresnet20", dict(in_channels=0), ValueError, "in_channels"),
    ("cpreresnet20", dict(num_classes=-1), ValueError, "num_classes"),
    ("cpreresnet20", dict(in_channels=True), TypeError, "in_channels"),
    ("resnet18", dict(num_classes=0), ValueError, "num_classes"),
]


@pytest.mark.parametrize("name, kwargs, err, match", FACTORY_CASES)
def test_factory_arguments_are_checked_by_name(name, kwargs, err, match):
    with pytest.raises(err, match=f"^{match}"):
        models.MODELS[name](**kwargs)


def test_build_names_unknown_arguments():
    with pytest.raises(TypeError, match="cnn: unexpected arguments \\['foo'\\]"):
        models.build("cnn", foo=1)
    assert models.build("cpreresnet20", n=1).config["n"] == 1
    with pytest.raises(ValueError, match="^n"):
        models.CPreResNet20(n=0)
