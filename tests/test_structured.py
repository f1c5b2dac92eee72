"""Structured regime: a model at width w equals a plain model built at that width with the sliced weights."""
import numpy as np
import pytest

import csub
from csub import models, nn, train


def _x(n=2, c=3, s=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, s, s)).astype(np.float32)


def _c(n, w):
    return max(1, int(np.floor(n * w + 0.5)))


def _effective(model):
    """name -> tensor at the current alpha, as the network computes with it (line ends interpolated, sliced)."""
    out = {}
    for mname, m in model.named_modules():
        for pname in list(m._parameters):
            if m.__dict__.get("subspace") == "line" and pname.endswith("1") and pname[:-1] in m._parameters:
                continue
            out[f"{mname}.{pname}" if mname else pname] = m._value(pname)
    return out


@pytest.mark.parametrize("w", [1.0, 0.75, 0.5, 0.375, 0.25])
def test_cpreresnet20_at_a_width_equals_a_plain_narrow_network(w):
    csub.manual_seed(0)
    big = models.cpreresnet20(regime="structured", subspace="line", norm="in")
    big.set_alpha((w - 0.25) / 0.75)
    assert big.width == pytest.approx(w)
    small = _narrow_cpreresnet20(w)  # a plain network whose every hidden layer has c(C) channels
    eff = _effective(big)
    small_sd = small.state_dict()
    for k in small_sd:
        if k in ("input_mean", "input_std"):
            continue
        assert eff[k].shape == small_sd[k].shape, (k, eff[k].shape, small_sd[k].shape)
        small_sd[k] = eff[k]
    small.load_state_dict(small_sd)
    x = _x()
    yb, ys = big(x), small(x)
    np.testing.assert_allclose(yb, ys, rtol=1e-5, atol=1e-5)
    dy = np.random.default_rng(1).standard_normal(yb.shape).astype(np.float32)
    big.zero_grad()
    small.zero_grad()
    np.testing.assert_allclose(big.backward(dy), small.backward(dy), rtol=1e-4, atol=1e-5)
    # the big model's gradients, restricted to the slices in use, equal the small model's
    small_grads = dict(small.named_parameters())
    for mname, m in big.named_modules():
        for pname, p in m._parameters.items():
            key = f"{mname}.{pname}"
            base = key[:-1] if key.endswith("1") and key[:-1] in small_grads else key
            if base not in small_grads:
                continue
            sl = m._active.get(pname.rstrip("1") if pname.endswith("1") else pname)
            g = p.grad if sl is None else p.grad[sl]
            if pname.endswith("1"):
                expect = big.alpha * small_grads[base].grad
            elif m.__dict__.get("subspace") == "line" and pname + "1" in m._parameters:
                expect = (1 - big.alpha) * small_grads[base].grad
            else:
                expect = small_grads[base].grad
            np.testing.assert_allclose(g, expect, rtol=1e-3, atol=1e-4, err_msg=key)
            if sl is not None:  # outside the slice nothing moves
                rest = p.grad.copy()
                rest[sl] = 0
                assert not rest.any(), key


def _narrow_cpreresnet20(w):
    """cPreResNet20 whose hidden widths are c(16 w), c(64 w), ... written out explicitly."""
    m = models.cpreresnet20(norm="in")
    stem = nn.Conv2d(3, _c(16, w), 3, padding=1)
    m.stem = stem
    blocks = []
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            b = models.PreActBottleneck(_c(in_planes, w), _c(planes, w), stride, "in", None, lambda l: l)
            b.conv3 = nn.Conv2d(_c(planes, w), _c(planes * 4, w), 1)
            if stride != 1 or in_planes != planes * 4:
                b.shortcut = nn.Conv2d(_c(in_planes, w), _c(planes * 4, w), 1, stride=stride)
            else:
                b.shortcut = None
            blocks.append(b)
            in_planes = planes * 4
    m.blocks = nn.Sequential(*blocks)
    m.head = nn.Sequential(nn.InstanceNorm2d(_c(256, w)), nn.ReLU())
    m.fc = nn.Linear(_c(256, w), 10, bias=False)
    return m


def test_flops_and_parameters_match_a_hand_count():
    m = models.cpreresnet20(regime="structured", subspace="point", norm="in")
    for w in (1.0, 0.5, 0.25):
        m.set_width_factor(w)
        c = lambda n: _c(n, w)  # noqa: E731
        macs = 32 * 32 * 3 * c(16) * 9
        params = 3 * c(16) * 9
        size, inp = 32, 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                out = size // stride
                p, o = c(planes), c(planes * 4)
                macs += size * size * c(inp) * p + out * out * p * p * 9 + out * out * p * o
                params += c(inp) * p + p * p * 9 + p * o + 2 * (c(inp) + p + p)
                if stride != 1 or inp != planes * 4:
                    macs += out * out * c(inp) * o
                    params += c(inp) * o
                size, inp = out, planes * 4
        macs += c(256) * 10
        params += 2 * c(256) + c(256) * 10
        assert m.flops((3, 32, 32)) == 2 * macs
        assert m.active_parameters() == params
    m.set_width_factor(1.0)
    assert m.flops((3, 32, 32)) == 67474432 and m.active_parameters() == 219472


def test_width_one_is_the_plain_model():
    csub.manual_seed(3)
    s = models.cnn(widths=(8, 16), regime="structured", subspace="point")
    csub.manual_seed(3)
    p = models.cnn(widths=(8, 16))
    s.set_alpha(1.0)
    x = _x(2, 1, 28)
    np.testing.assert_array_equal(s(x), p(x))


def test_against_torch_at_half_width(torch):
    csub.manual_seed(0)
    m = models.mlp(hidden=(32, 16), regime="structured", subspace="line", norm="gn")
    m.set_alpha(1 / 3)  # width 0.5
    x = _x(3, 1, 28)
    y = m(x)
    lin = [l for l in m.weight_layers()]
    t = torch.tensor(x.reshape(3, -1), dtype=torch.float64)
    h = t
    norms = [mod for mod in m.modules() if isinstance(mod, nn.GroupNorm)]
    for i, layer in enumerate(lin):
        W = torch.tensor(layer._value("weight"), dtype=torch.float64)
        h = h @ W.T
        if layer.bias is not None:
            h = h + torch.tensor(layer._value("bias"), dtype=torch.float64)
        if i < len(norms):
            g = torch.tensor(norms[i]._value("weight"), dtype=torch.float64)
            be = torch.tensor(norms[i]._value("bias"), dtype=torch.float64)
            h = torch.relu(torch.nn.functional.group_norm(h, 1, g, be, 1e-5))
    np.testing.assert_allclose(y, h.numpy(), rtol=1e-4, atol=1e-5)
    assert [l.weight.shape[0] if i == len(lin) - 1 else l._w.shape[0] for i, l in enumerate(lin)] == [16, 8, 10]


def test_structured_training_runs_and_reports(tmp_path):
    from csub import data

    tr = data.fashion_mnist("train", bundled=True)
    idx = np.arange(512) * 10
    csub.manual_seed(0)
    m = models.mlp(hidden=(64, 32), regime="structured", subspace="line", norm="gn")
    train.fit(m, (tr[0][idx], tr[1][idx]), data.fashion_mnist("test", bundled=True), method="lcs_l",
              regime="structured", epochs=1, batch_size=64, out=str(tmp_path), progress=False)
    import json
    with open(tmp_path / "eval.json") as f:
        res = json.load(f)
    assert [r["width"] for r in res] == list(train.STRUCTURED_WIDTHS)
    flops = [r["flops"] for r in res]
    assert flops == sorted(flops) and flops[0] < flops[-1] / 2
    # only the norms form the line; the weights are shared between its ends
    names = [n for n, _ in m.named_parameters()]
    assert "body.1.weight" in names and "body.1.weight1" not in names and "body.2.weight1" in names


def test_sandwich_and_ns_schedules():
    gen = csub.random.Generator(0)
    s = train.AlphaSchedule("lcs_l", 10, gen, regime="structured")
    a = [x for x, _ in s.samples(0)]
    assert len(a) == 4 and a[:2] == [0.0, 1.0] and all(0 <= v <= 1 for v in a[2:])
    ns = train.AlphaSchedule("ns", 10, gen, regime="structured")
    assert [x for x, _ in ns.samples(0)] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_structured_rejects_batch_norm_and_bad_widths():
    with pytest.raises(ValueError, match="norm"):
        models.cpreresnet20(regime="structured", norm="bn")
    bn = nn.BatchNorm2d(8)
    with pytest.raises(ValueError, match="batch norm"):
        bn.set_width(4)
    with pytest.raises(ValueError, match="channels"):
        nn.GroupNorm(2, 8).set_width(3)
    m = models.cnn(widths=(8, 16), regime="structured")
    with pytest.raises(ValueError, match="w"):
        m.set_width_factor(0.0)
    with pytest.raises(ValueError, match="width_range"):
        models.cnn(regime="structured", width_range=(0.0, 1.0))
    conv = nn.Conv2d(4, 4, 3)
    with pytest.raises(ValueError, match="in_active"):
        conv.set_width(5, 4)
    conv.set_width(2, 3)
    with pytest.raises(ValueError, match="x"):
        conv(np.zeros((1, 4, 5, 5), np.float32))  # the layer now takes 2 input channels
    with pytest.raises(ValueError, match="method"):
        train.fit(models.cnn(widths=(8, 16), regime="structured", subspace="point"),
                  (np.zeros((4, 1, 28, 28), np.uint8), np.zeros(4, np.int64)), method="ns", regime="quantized",
                  progress=False)
