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


# -- fit / evaluate arguments --------------------------------------------------------------

def _data(n=16, c=1, s=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, c, s, s), dtype=np.uint8), rng.integers(0, 10, n)


def _line_mlp():
    return models.mlp(in_features=64, hidden=(8,), regime="unstructured", subspace="line")


FIT_CASES = [
    (dict(batch_size=32), ValueError, "batch_size"),  # more than the 16 images: was ZeroDivisionError
    (dict(warmup="a"), TypeError, "warmup"),
    (dict(warmup=float("nan")), ValueError, "warmup"),
    (dict(lr_warmup_epochs=float("nan")), ValueError, "lr_warmup_epochs"),
    (dict(lr_warmup_epochs=-1), ValueError, "lr_warmup_epochs"),
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(beta=float("inf")), ValueError, "beta"),
    (dict(alpha_sampling=(0.1, 1.0)), TypeError, "alpha_sampling"),
    (dict(alpha_sampling=None), TypeError, "alpha_sampling"),
    (dict(alpha_sampling=(float("nan"), 1.0, 0.5)), ValueError, r"alpha_sampling\[0\]"),
    (dict(eval_alphas=[]), ValueError, "eval_alphas"),
    (dict(eval_alphas=0.5), TypeError, "eval_alphas"),
    (dict(eval_alphas=[0.5, 2.0]), ValueError, r"eval_alphas\[1\]"),
    (dict(eval_alphas=[0.0]), ValueError, r"eval_alphas\[0\]"),  # unstructured: alpha 0 keeps nothing
    (dict(resume="yes", out="unused"), TypeError, "resume"),
    (dict(out=123), TypeError, "out"),
]


@pytest.mark.parametrize("kwargs, err, match", FIT_CASES)
def test_fit_arguments_are_checked_before_training(kwargs, err, match):
    m = _line_mlp()
    before = m.state_dict()
    with pytest.raises(err, match=f"^{match}"):
        train.fit(m, _data(), _data(seed=1), epochs=1, batch_size=kwargs.pop("batch_size", 8), progress=False,
                  **kwargs)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing trained, no statistics set


def test_fit_refuses_images_the_model_cannot_take():
    with pytest.raises(ValueError, match=r"^train: images of shape \(3, 8, 8\)"):
        train.fit(_line_mlp(), _data(c=3), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"^test: images of shape \(1, 6, 6\)"):
        train.fit(_line_mlp(), _data(), _data(s=6), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"^data: images of shape"):
        train.evaluate(_line_mlp(), _data(s=6), [1.0])


def test_fit_refuses_a_loader_without_batches():
    images, labels = _data(n=4)
    loader = csub.data.DataLoader(images, labels, batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match="^train: the DataLoader yields no batches"):
        train.fit(_line_mlp(), loader, epochs=1, progress=False)


def test_evaluate_alphas_are_checked():
    m = _line_mlp()
    for alphas, err, match in (([], ValueError, "alphas"), (None, TypeError, "alphas"), (0.5, TypeError, "alphas"),
                               ([float("nan")], ValueError, r"alphas\[0\]"), (["a"], TypeError, r"alphas\[0\]")):
        with pytest.raises(err, match=f"^{match}"):
            train.evaluate(m, _data(), alphas)


def test_fit_with_enough_images_still_trains():
    hist = train.fit(_line_mlp(), _data(), epochs=1, batch_size=16, progress=False)
    assert len(hist) == 1 and math.isfinite(hist[0]["train_loss"])


# -- backward before forward -------------------------------------------------------------------

CACHED = [lambda: nn.Linear(4, 3), lambda: nn.Conv2d(2, 3, 3), lambda: nn.BatchNorm2d(3),
          lambda: nn.GroupNorm(1, 3), lambda: nn.InstanceNorm2d(3), lambda: nn.ReLU(), lambda: nn.MaxPool2d(2),
          lambda: nn.AvgPool2d(2), lambda: nn.GlobalAvgPool2d(), lambda: nn.Flatten(),
          lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU()), lambda: nn.Residual(nn.ReLU()),
          lambda: models.mlp(in_features=4, hidden=(3,)), lambda: models.cnn(widths=(4,), image_size=8),
          lambda: models.cpreresnet20(norm="in"), lambda: models.resnet18(num_classes=3)]


@pytest.mark.parametrize("i", range(len(CACHED)))
def test_backward_before_forward_is_a_runtime_error(i):
    m = CACHED[i]()
    with pytest.raises(RuntimeError, match="backward: called before forward"):
        m.backward(_z(2, 4))


def test_every_layer_with_a_cache_declares_it():
    """Each layer class whose forward stores something for backward lists it in ``_cache``: run a
    forward on every leaf of the networks and compare what it stored with what it declares."""
    for m in (models.cnn(widths=(4, 8), image_size=8, norm="bn", regime="quantized"),
              models.cpreresnet20(norm="gn", regime="unstructured"), models.mlp(in_features=16, hidden=(4,))):
        fresh = {name: set(mod.__dict__) for name, mod in m.named_modules()}
        m.set_alpha(0.5)
        m(_z(2, 16) if isinstance(m, models.MLP) else _z(2, m.in_channels, 8, 8))
        for name, mod in m.named_modules():
            stored = {k for k in set(mod.__dict__) - fresh[name] if k in ("_x", "_w", "_g", "_shape", "_argmax")}
            assert stored == set(type(mod)._cache), name


# -- evaluate, flops and sparsity leave the model as they found it -----------------------------

def _snapshot(model):
    """Every module's attributes (by identity) and active slices."""
    return [(name, {k: id(v) for k, v in m.__dict__.items()}, dict(m._active)) for name, m in model.named_modules()]


@pytest.mark.parametrize("regime", ["unstructured", "structured", "quantized"])
def test_evaluate_restores_alpha_mode_and_caches(regime):
    m = models.cnn(widths=(4, 8), image_size=8, regime=regime, subspace="line", norm="in")
    m.set_alpha(0.7, topk=0.9) if regime == "unstructured" else m.set_alpha(0.7)
    level = (m.topk, m.width, m.num_bits)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    y = m(x)
    before = _snapshot(m)
    images, labels = _data(n=8)
    train.evaluate(m, (images, labels), [0.3, 1.0])
    assert m.training and m.alpha == 0.7 and (m.topk, m.width, m.num_bits) == level
    assert _snapshot(m) == before
    assert all(mod.alpha == 0.7 and mod.training for mod in m.modules())
    np.testing.assert_array_equal(m(x), y)


def test_flops_does_not_touch_the_caches():
    m = models.cpreresnet20(norm="gn", regime="structured", subspace="line").set_alpha(0.5)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((2, 10)).astype(np.float32)
    m(x)
    dx_ref = m.backward(dy)
    grads_ref = [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    m(x)
    before = _snapshot(m)
    assert m.flops((3, 32, 32)) > 0  # another input size: its forward used to replace the caches
    assert _snapshot(m) == before and m.training
    np.testing.assert_array_equal(m.backward(dy), dx_ref)
    for p, g in zip(m.parameters(), grads_ref):
        np.testing.assert_array_equal(p.grad, g)


def test_flops_before_any_forward_leaves_no_cache():
    m = models.cnn(widths=(4,), image_size=8)
    m.flops((1, 8, 8))
    with pytest.raises(RuntimeError, match="before forward"):
        m.backward(_z(1, 10))


def test_sparsity_is_read_only():
    m = models.cnn(widths=(4, 8), image_size=8, regime="unstructured", subspace="line", norm="in").set_alpha(0.3)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    m(x)
    before = _snapshot(m)
    masks = [layer._mask for layer in m.compressible_layers()]
    m.set_alpha(0.8)
    s = m.sparsity()
    assert 0.0 < s < 1.0
    m.set_alpha(0.3)
    assert _snapshot(m) == before
    assert all(layer._mask is mk for layer, mk in zip(m.compressible_layers(), masks))


def test_other_public_arguments_are_named():
    m = models.mlp(in_features=4, hidden=(3,), in_channels=1, regime="unstructured")
    data = csub.modelfile.to_bytes(m)
    for sc in ("a", 2.0, float("nan"), (0.3, "x"), (0.5,)):
        with pytest.raises(ValueError, match="^sparse_crossover"):
            csub.CompressedNet(data, 0.5, sparse_crossover=sc)
    with pytest.raises(TypeError, match="^w: "):
        m.set_width_factor("a")
    for shape in ((1, 2), "abc", (0, 2, 2), (1, 2.0, 2)):
        with pytest.raises(ValueError, match="^input_shape"):
            m.flops(shape)
