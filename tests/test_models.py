"""Model construction: shapes, parameter counts, which layers are compressible."""
import numpy as np
import pytest

import csub
from csub import models


def _x(n, c, s):
    return np.random.default_rng(0).standard_normal((n, c, s, s)).astype(np.float32)


def test_cpreresnet20_matches_the_spec():
    m = models.cpreresnet20()
    # hand count: stem 3*16*9; per bottleneck in->p (1x1), p->p (3x3), p->4p (1x1), shortcut in->4p;
    # norms 2 per channel; classifier 256*10
    def block(i, p, sc):
        return i * p + p * p * 9 + p * 4 * p + (i * 4 * p if sc else 0) + 2 * (i + p + p)
    n = 3 * 16 * 9 + block(16, 16, True) + block(64, 16, False) + block(64, 32, True) + block(128, 32, False) \
        + block(128, 64, True) + block(256, 64, False) + 2 * 256 + 256 * 10
    assert m.num_parameters() == n == 219472
    y = m(_x(2, 3, 32))
    assert y.shape == (2, 10)
    assert m.backward(np.ones_like(y)).shape == (2, 3, 32, 32)
    assert all(layer.bias is None for layer in m.weight_layers())
    # 3 convs per block + 3 shortcuts are compressible; stem and classifier stay dense
    assert len(m.compressible_layers()) == 6 * 3 + 3
    assert len(m.weight_layers()) == len(m.compressible_layers()) + 2


@pytest.mark.parametrize("subspace", [None, "point", "line"])
def test_models_build_and_run(subspace):
    for m, x in ((models.mlp(subspace=subspace, regime="unstructured"), _x(3, 1, 28)),
                 (models.cnn(widths=(8, 16), subspace=subspace, regime="unstructured"), _x(3, 1, 28)),
                 (models.cnn(in_channels=3, image_size=32, widths=(8, 16), subspace=subspace), _x(2, 3, 32)),
                 (models.cpreresnet20(subspace=subspace, norm="in"), _x(2, 3, 32))):
        m.set_alpha(0.5)
        y = m(x)
        assert y.shape == (x.shape[0], 10) and np.all(np.isfinite(y))
        assert m.backward(np.ones_like(y)).shape == x.shape


def test_line_model_has_two_endpoints_and_point_one():
    line, point = models.cnn(widths=(8, 16), subspace="line"), models.cnn(widths=(8, 16), subspace="point")
    assert line.num_parameters() == 2 * point.num_parameters() - 2 * 0
    names = [n for n, _ in line.named_parameters()]
    assert "body.0.weight1" in names and "body.1.weight1" in names


def test_resnet18_shapes():
    m = models.resnet18(num_classes=7)
    y = m(_x(1, 3, 64))
    assert y.shape == (1, 7)
    assert m.backward(np.ones_like(y)).shape == (1, 3, 64, 64)
    assert 11.0e6 < m.num_parameters() < 11.8e6


def test_unstructured_alpha_sets_topk():
    m = models.cnn(widths=(8, 16), regime="unstructured", subspace="line")
    m.set_alpha(0.3)
    assert all(layer.topk == 0.3 for layer in m.compressible_layers())
    m.set_alpha(0.3, topk=0.8)
    assert all(layer.topk == 0.8 for layer in m.compressible_layers())
    dense = models.cnn(widths=(8, 16))
    dense.set_alpha(0.3)
    assert dense.sparsity() == 0.0


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="regime"):
        models.cnn(regime="structured-ish")
    with pytest.raises(ValueError, match="subspace"):
        models.cnn(subspace="plane")
    with pytest.raises(ValueError, match="norm"):
        models.cpreresnet20(norm="ln")
    with pytest.raises(ValueError, match="model"):
        models.build("vgg99")
    with pytest.raises(ValueError, match="x"):
        models.cnn()(_x(2, 3, 28))
    with pytest.raises(ValueError, match="alpha"):
        models.cnn().set_alpha(1.5)


def test_seed_makes_models_reproducible():
    csub.manual_seed(7)
    a = models.cnn(widths=(8, 16), subspace="line").state_dict()
    csub.manual_seed(7)
    b = models.cnn(widths=(8, 16), subspace="line").state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["body.0.weight"], a["body.0.weight1"])  # endpoints drawn independently
