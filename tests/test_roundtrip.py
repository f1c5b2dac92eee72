"""Every network of csub.models survives export and load: every constructor x regime x
subspace x norm, with bit-identical outputs before and after, in training form and
compressed. Small inputs keep the whole matrix to seconds per model."""
import inspect

import numpy as np
import pytest

import csub
from csub import models

# (factory kwargs that keep the network small, one sample's (C, H, W)); the factories' own
# arguments only, so the matrix also proves that what they record builds them again
SMALL = {
    "mlp": (dict(in_features=48, hidden=(12, 8), num_classes=5, in_channels=3), (3, 4, 4)),
    "cnn": (dict(in_channels=2, num_classes=5, widths=(4, 6), image_size=8), (2, 8, 8)),
    "cpreresnet20": (dict(in_channels=3, num_classes=5), (3, 8, 8)),
    "resnet18": (dict(in_channels=3, num_classes=5), (3, 16, 16)),
}
NORMS = {"mlp": (None, "bn", "gn", "in"), "cnn": ("bn", "gn", "in"), "cpreresnet20": ("bn", "gn", "in"),
         "resnet18": ("bn", "gn", "in")}
REGIMES = (None, "unstructured", "structured", "quantized")
SUBSPACES = (None, "point", "line")
ALPHAS = {None: (1.0,), "unstructured": (0.3, 1.0), "structured": (0.0, 0.6), "quantized": (0.2, 1.0)}


def _combos():
    for name in models.MODELS:
        for regime in REGIMES:
            for subspace in SUBSPACES:
                for norm in NORMS[name]:
                    ok = not (regime == "structured" and norm == "bn")  # refused at construction (tested below)
                    yield pytest.param(name, regime, subspace, norm, ok, id=f"{name}-{regime}-{subspace}-{norm}")


def test_matrix_covers_every_constructor():
    assert set(SMALL) == set(models.MODELS) == set(models.CLASSES) == set(NORMS)
    assert set(REGIMES) == set(models.REGIMES)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_factory_arguments_are_the_class_arguments(name):
    """The factory takes a subset of its class's arguments with the same defaults, and the class's
    others have defaults: a config recorded from either builds through ``build``."""
    fp = inspect.signature(models.MODELS[name]).parameters
    cp = inspect.signature(models.CLASSES[name].__init__).parameters
    for k, p in fp.items():
        assert k in cp and cp[k].default == p.default, k
    assert all(p.default is not inspect.Parameter.empty for k, p in cp.items() if k != "self")


def _perturb(model, rng):
    """Move the norm scales off 1 and the biases off 0 (the two ends of a line apart); the
    weights are random already, each end of a line drawn on its own."""
    for p in model.parameters():
        if p.data.ndim == 1:
            p.data += rng.normal(0.0, 0.05, p.shape).astype(np.float32)


@pytest.mark.parametrize("name, regime, subspace, norm, ok", list(_combos()))
def test_load_of_export_is_the_same_network(tmp_path, name, regime, subspace, norm, ok):
    kwargs, shape = SMALL[name]
    if not ok:
        with pytest.raises(ValueError, match="norm"):
            models.MODELS[name](regime=regime, subspace=subspace, norm=norm, **kwargs)
        return
    rng = np.random.default_rng(0)
    model = models.MODELS[name](regime=regime, subspace=subspace, norm=norm, **kwargs)
    _perturb(model, rng)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    model.train()
    model.set_alpha(ALPHAS[regime][0])(x)  # batch-norm statistics and activation ranges get a state
    path = csub.export(model, str(tmp_path / "m.safetensors"), input_shape=shape)
    back = csub.load(path)

    assert type(back) is type(model) and back.config == model.config
    assert not back.training and back.alpha == 1.0
    sd0, sd1 = model.state_dict(), back.state_dict()
    assert list(sd0) == list(sd1)
    for k in sd0:
        assert sd0[k].tobytes() == sd1[k].tobytes(), k
    with open(path, "rb") as f:
        exported = f.read()
    assert csub.modelfile.to_bytes(back, shape) == exported  # so compress() of either runs the same file

    model.eval()
    net0, net1 = model.compress(ALPHAS[regime][0], shape), back.compress(ALPHAS[regime][0], shape)
    for a in ALPHAS[regime]:
        y0 = model.set_alpha(a)(x)
        y1 = back.set_alpha(a)(x)
        assert y0.tobytes() == y1.tobytes(), a
        z0 = net0.set_alpha(a)(x)  # compress(a): the same file at a
        z1 = net1.set_alpha(a)(x)
        assert z0.tobytes() == z1.tobytes(), a
        assert np.all(np.isfinite(z1))


def test_cpreresnet20_at_its_defaults_round_trips(tmp_path):
    """The reproducer: the paper's network at its defaults, with nothing made smaller."""
    m = models.cpreresnet20()
    back = csub.load(csub.export(m, str(tmp_path / "m.safetensors")))
    assert back.config == m.config and back.config["n"] == 2
    deeper = models.CPreResNet20(n=1, num_classes=4)  # a class argument the factory does not take
    back = csub.load(csub.export(deeper, str(tmp_path / "d.safetensors")))
    assert back.config["n"] == 1 and back.num_parameters() == deeper.num_parameters()


def test_recorded_config_is_plain_json(tmp_path):
    """NumPy scalars and tuples become int/float and lists, so export writes them (they used to fail
    in json.dumps)."""
    m = models.cnn(in_channels=np.int64(1), num_classes=np.int32(3), widths=(np.int64(4), 6), image_size=8,
                   width_range=(np.float32(0.5), 1.0), regime="structured")
    assert m.config["widths"] == [4, 6] and type(m.config["in_channels"]) is int
    assert type(m.config["width_range"][0]) is float
    back = csub.load(csub.export(m, str(tmp_path / "m.safetensors")))
    assert back.config == m.config
