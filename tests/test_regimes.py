"""The table of regimes and methods (csub.regimes) agrees with what the models and fit do."""
import pytest

from csub import models, regimes, train
from csub.nn.quant import alpha_for_bits, bits_for_alpha


def test_levels_follow_the_table():
    for name in regimes.REGIMES:
        kw = dict(regime=name, subspace="line", norm="gn" if name == "structured" else None)
        if name == "structured":
            kw["width_range"] = (0.25, 1.0)
        net = models.MLP(hidden=(8, 8), **kw)
        for a in (0.1, 0.5, 5 / 6, 1.0):
            net.set_alpha(a)
            level = regimes.REGIMES[name].level(a, bit_range=net.bit_range, width_range=net.width_range)
            if name == "unstructured":
                assert all(layer.topk == level for layer in net.compressible_layers())
            elif name == "quantized":
                assert net.num_bits == level == bits_for_alpha(a, *net.bit_range)
            else:
                assert level == pytest.approx(0.25 + 0.75 * a)
                assert net.width == pytest.approx(level)


def test_grids_and_ends():
    assert train.default_alphas("lcs_l") == list(regimes.UNSTRUCTURED_ALPHAS)
    assert train.default_alphas("lcs_l", regime="quantized", bit_range=(3, 5)) == [
        alpha_for_bits(b, 3, 5) for b in (3, 4, 5)]
    assert train.default_alphas("us", regime="structured", width_range=(0.5, 1.0)) == pytest.approx(
        [0.0, 0.25, 0.5, 0.75, 1.0])
    assert train.default_alphas("standard", regime="structured") == [1.0]
    assert train.default_alphas("target_topk", topk=0.2) == [0.2]
    assert train._end_alphas("lcs_l", 0.025, None) == [0.025, 1.0]
    assert train._end_alphas("lcs_p", 0.025, None, "structured") == [0.0, 1.0]
    assert train._end_alphas("target_bits", None, None, "quantized", (3, 8), 4) == [alpha_for_bits(4, 3, 8)]


def test_methods_table():
    assert train.METHODS == ("standard", "lcs_l", "lcs_p", "target_topk", "target_bits", "ns", "us")
    assert train.REGIMES == ("unstructured", "quantized", "structured")
    assert train.DEFAULT_LR == {"unstructured": 0.1, "quantized": 0.025, "structured": 0.1}
    net = models.MLP(hidden=(8,), regime="unstructured", subspace="point")
    with pytest.raises(ValueError, match="method: 'ns' does not belong"):
        train.check_method(net, "ns", "unstructured")
    with pytest.raises(ValueError, match="subspace='line'"):
        train.check_method(net, "lcs_l", "unstructured")
    with pytest.raises(ValueError, match="method: expected one of"):
        regimes.method("nope")
    with pytest.raises(ValueError, match="regime: expected one of"):
        regimes.regime("nope")
