"""The module system: Module, Parameter, Sequential, Residual, Flatten, and a whole network.

The whole-network gradient (conv -> groupnorm -> relu -> residual blocks ->
pool -> flatten -> linear, every weight a line) is checked against the same
network written in PyTorch float64 with copied weights, and against central
differences of the csub network's own loss.
"""
import math

import numpy as np
import pytest

from csub import nn
from csub.nn import Parameter
from gradcheck import assert_close
from reference import misc

F32 = np.float32


class Scale(nn.Module):
    """A user-defined module: y = a * x + b with scalar-per-feature parameters and a child."""

    def __init__(self, n):
        super().__init__()
        self.a = Parameter(np.full(n, 2.0))
        self.inner = nn.Linear(n, n, bias=False)
        self.b = Parameter(np.zeros(n))
        self.note = "not a parameter"

    def forward(self, x):
        self._x = x
        return self.inner(x * self.a.data + self.b.data)

    def backward(self, dy):
        d = self.inner.backward(dy)
        self.a.grad += (d * self._x).sum(0)
        self.b.grad += d.sum(0)
        return d * self.a.data


def small_net(subspace="line"):
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1, subspace=subspace),
        nn.GroupNorm(1, 5, subspace=subspace),
        nn.ReLU(),
        nn.Residual(nn.Sequential(
            nn.Conv2d(5, 5, 3, padding=1, subspace=subspace),
            nn.GroupNorm(5, 5, subspace=subspace),
            nn.ReLU(),
            nn.Conv2d(5, 5, 3, padding=1, bias=True, subspace=subspace))),
        nn.Residual(nn.Sequential(
            nn.Conv2d(5, 6, 3, stride=2, padding=1, subspace=subspace),
            nn.GroupNorm(2, 6, subspace=subspace),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1, subspace=subspace)),
            shortcut=nn.Conv2d(5, 6, 1, stride=2, subspace=subspace)),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 4, subspace=subspace))


def randomise(net, rng, scale=0.4):
    """Every parameter (both ends of each line) drawn independently, norms away from 1/0."""
    for name, p in net.named_parameters():
        if name.split(".")[-1].startswith("weight") and p.data.ndim == 1:  # norm scale
            p.data[...] = 1.0 + 0.3 * rng.standard_normal(p.shape)
        else:
            p.data[...] = scale * rng.standard_normal(p.shape)


# --------------------------------------------------------------- names, traversal

def test_named_parameters_order_and_names():
    lin = nn.Linear(3, 2, subspace="line")
    assert [n for n, _ in lin.named_parameters()] == ["weight", "weight1", "bias", "bias1"]
    assert [n for n, _ in nn.Linear(3, 2, bias=False).named_parameters()] == ["weight"]
    assert [n for n, _ in nn.Linear(3, 2, subspace="point").named_parameters()] == ["weight", "bias"]
    net = small_net()
    names = [n for n, _ in net.named_parameters()]
    expect = ["0.weight", "0.weight1", "1.weight", "1.weight1", "1.bias", "1.bias1",
              "3.body.0.weight", "3.body.0.weight1",
              "3.body.1.weight", "3.body.1.weight1", "3.body.1.bias", "3.body.1.bias1",
              "3.body.3.weight", "3.body.3.weight1", "3.body.3.bias", "3.body.3.bias1",
              "4.body.0.weight", "4.body.0.weight1",
              "4.body.1.weight", "4.body.1.weight1", "4.body.1.bias", "4.body.1.bias1",
              "4.body.3.weight", "4.body.3.weight1",
              "4.shortcut.weight", "4.shortcut.weight1",
              "7.weight", "7.weight1", "7.bias", "7.bias1"]
    assert names == expect
    params = net.parameters()
    assert len(params) == len(expect)
    assert all(p is q for p, (_, q) in zip(params, net.named_parameters()))
    assert net[0].weight1 is params[1] and net[4].shortcut.weight is params[24]
    assert net.num_parameters() == sum(p.size for p in params)
    assert net.num_parameters() == 2 * (5 * 3 * 9 + 10 + 25 * 9 + 10 + 25 * 9 + 5 + 30 * 9 + 12 + 36 * 9
                                        + 30 + 4 * 24 + 4)
    # endpoints are distinct tensors drawn independently
    assert not np.array_equal(net[0].weight.data, net[0].weight1.data)
    # line_pairs: (theta0, theta1) pairs of a module itself
    pairs = net[7].line_pairs()
    assert [(a is net[7].weight, b is net[7].weight1) for a, b in pairs[:1]] == [(True, True)]
    assert len(pairs) == 2 and net.line_pairs() == []


def test_user_module_registration():
    m = Scale(3)
    # a module's own parameters come first, then its children's, in assignment order
    assert [n for n, _ in m.named_parameters()] == ["a", "b", "inner.weight"]
    assert [n for n, _ in m.named_modules()] == ["", "inner"]
    assert list(m.children()) == [m.inner]
    # re-assigning a parameter name to something else unregisters it
    m.b = None
    assert [n for n, _ in m.named_parameters()] == ["a", "inner.weight"]
    m.b = Parameter(np.ones(3))
    assert [n for n, _ in m.named_parameters()] == ["a", "b", "inner.weight"]
    assert m.b.data[0] == 1.0


def test_setattr_before_init_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = Parameter(np.zeros(2))

    with pytest.raises(RuntimeError, match="__init__"):
        Bad()


def test_parameter_is_float32_contiguous():
    p = Parameter(np.arange(12, dtype=np.float64).reshape(3, 4).T)
    assert p.data.dtype == F32 and p.data.flags.c_contiguous and p.shape == (4, 3) and p.size == 12
    assert p.grad.dtype == F32 and p.grad.shape == (4, 3) and not p.grad.any()


def test_zero_grad(rng):
    net = small_net()
    for p in net.parameters():
        p.grad[...] = 1.0
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())


def test_train_eval_recurse():
    net = nn.Sequential(nn.Linear(2, 2), nn.Residual(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(2))))
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert len(list(net.modules())) == 6
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net[1].train(False)
    assert net.training and net[0].training and not net[1].body[1].training


def test_set_alpha_recurses_and_validates():
    net = small_net()
    assert net.set_alpha(0.25) is net
    assert all(m.alpha == 0.25 for m in net.modules())
    net.set_alpha(np.float32(0.5))
    assert net[4].shortcut.alpha == 0.5 and isinstance(net[4].shortcut.alpha, float)
    net.set_alpha(1)
    assert net[3].body[0].alpha == 1.0
    net.set_alpha(0)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), -1e-12, np.float64(1.0000001)):
        with pytest.raises(ValueError, match="alpha"):
            net.set_alpha(bad)
    for bad in ("0.5", None, [0.5], True):
        with pytest.raises(TypeError, match="alpha"):
            net.set_alpha(bad)
    assert all(m.alpha == 0.0 for m in net.modules())  # a rejected value changes nothing


class AlphaScaled(nn.Module):
    """A user module overriding set_alpha and train: y = (1 + alpha) * x, counting the calls."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.scale = 2.0

    def set_alpha(self, alpha):
        super().set_alpha(alpha)
        self.calls.append(("set_alpha", alpha))
        self.scale = 1.0 + self.alpha
        return self

    def train(self, mode=True):
        self.calls.append(("train", mode))
        return super().train(mode)

    def forward(self, x):
        return (self.scale * x).astype(F32)


def test_set_alpha_and_train_call_submodule_overrides():
    """set_alpha and train reach a submodule through its own method (an override runs), at any depth."""
    deep = AlphaScaled()
    net = nn.Sequential(nn.Linear(2, 2), nn.Residual(nn.Sequential(nn.ReLU(), deep)))
    net.set_alpha(0.25)
    assert deep.calls == [("set_alpha", 0.25)] and deep.scale == 1.25 and deep.alpha == 0.25
    x = np.ones((1, 2), F32)
    np.testing.assert_array_equal(net[1].body(x), np.full((1, 2), 1.25, F32))
    net.eval()
    assert deep.calls[-1] == ("train", False) and not deep.training
    net.train()
    assert deep.calls[-1] == ("train", True) and deep.training
    with pytest.raises(ValueError, match="alpha"):
        net.set_alpha(2.0)
    assert deep.calls[-1] == ("train", True) and deep.scale == 1.25  # a rejected alpha reaches no child


def test_network_set_alpha_calls_block_overrides():
    """A csub network's set_alpha (regime levels included) runs a block's own set_alpha."""
    from csub import models

    net = models.cpreresnet20(regime="unstructured", subspace="line", n=1)
    seen = []

    class Probe(nn.Module):
        def set_alpha(self, alpha):
            seen.append(alpha)
            return super().set_alpha(alpha)

    net.blocks[0].probe = Probe()
    net.set_alpha(0.5)
    assert seen == [0.5] and net.blocks[0].probe.alpha == 0.5 and net.blocks[0].conv1.topk == 0.5


# ----------------------------------------------------------------- state_dict

def bn_net(seed_rng):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, subspace="line"), nn.BatchNorm2d(3, subspace="line"),
                        nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))
    randomise(net, seed_rng)
    return net


def test_state_dict_contents_and_copies(rng):
    net = bn_net(rng)
    net(rng.standard_normal((2, 2, 4, 4)).astype(F32))  # updates the running statistics
    sd = net.state_dict()
    assert list(sd) == [n for n, _ in net.named_parameters()] + ["1.running_mean", "1.running_var"]
    for n, p in net.named_parameters():
        np.testing.assert_array_equal(sd[n], p.data)
        assert sd[n] is not p.data
    assert not np.array_equal(sd["1.running_mean"], np.zeros(3))
    sd["0.weight"][...] = 7.0
    sd["1.running_var"][...] = 7.0
    assert not np.any(net[0].weight.data == 7.0) and not np.any(net[1].running_var == 7.0)


def test_state_dict_round_trip(rng):
    net, other = bn_net(rng), bn_net(rng)
    x = rng.standard_normal((2, 2, 4, 4)).astype(F32)
    net(x)
    net.eval().set_alpha(0.3)
    other.eval().set_alpha(0.3)
    assert not np.allclose(net(x), other(x))
    assert other.load_state_dict(net.state_dict()) is other
    np.testing.assert_array_equal(other(x), net(x))
    for (n, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b)
    # float64 arrays are accepted and stored as float32, in place
    w = net[0].weight
    net.load_state_dict({k: np.asarray(v, np.float64) for k, v in other.state_dict().items()})
    assert net[0].weight is w and w.data.dtype == F32


def test_load_state_dict_errors_name_keys(rng):
    net = bn_net(rng)
    sd = net.state_dict()
    missing = dict(sd)
    del missing["1.bias1"]
    with pytest.raises(KeyError, match=r"1\.bias1"):
        net.load_state_dict(missing)
    extra = dict(sd, **{"9.weight": np.zeros(2, F32)})
    with pytest.raises(KeyError, match=r"9\.weight"):
        net.load_state_dict(extra)
    # non-strict: missing and unexpected keys are skipped, the rest is loaded
    before = net[1].bias1.data.copy()
    partial = {k: np.full_like(v, 0.5) for k, v in sd.items() if k != "1.bias1"}
    partial["unused"] = np.zeros(1)
    net.load_state_dict(partial, strict=False)
    np.testing.assert_array_equal(net[0].weight.data, 0.5)
    np.testing.assert_array_equal(net[1].bias1.data, before)
    # a wrong shape fails naming the key, and nothing is loaded
    net2 = bn_net(rng)
    snapshot = net2.state_dict()
    bad = {k: np.zeros_like(v) for k, v in snapshot.items()}
    bad["4.weight"] = np.zeros((2, 3), F32)
    with pytest.raises(ValueError, match=r"4\.weight"):
        net2.load_state_dict(bad)
    for k, v in net2.state_dict().items():
        np.testing.assert_array_equal(v, snapshot[k])
    bad = {k: np.zeros_like(v) for k, v in snapshot.items()}
    bad["1.running_mean"] = np.zeros(3, np.complex64)
    with pytest.raises(TypeError, match=r"1\.running_mean"):
        net2.load_state_dict(bad)
    for k, v in net2.state_dict().items():
        np.testing.assert_array_equal(v, snapshot[k])


def test_state_dict_endpoint_to_plain_network(rng):
    """alpha = 0 / 1 of a line network equals a plain network holding that end's tensors."""
    line = small_net("line")
    randomise(line, rng)
    plain = small_net(None)
    x = rng.standard_normal((2, 3, 9, 9)).astype(F32)
    sd = line.state_dict()
    for end, alpha in (("", 0.0), ("1", 1.0)):
        plain.load_state_dict({k: sd[k + end] for k, _ in plain.named_parameters()})
        line.set_alpha(alpha)
        assert_close(line(x), plain(x), 1e-6, 1e-6, name=f"alpha={alpha}")
    line.set_alpha(0.5)
    assert not np.allclose(line(x), plain(x), atol=1e-3)


# ------------------------------------------------------------ containers

def test_sequential_container(rng):
    a, b = nn.Linear(4, 3), nn.ReLU()
    s = nn.Sequential(a, b)
    assert len(s) == 2 and s[0] is a and s[-1] is b and list(s) == [a, b]
    x = rng.standard_normal((5, 4)).astype(F32)
    y = s(x)
    assert_close(y, misc.relu_forward(x.astype(np.float64) @ a.weight.data.T.astype(np.float64)
                                      + a.bias.data), 1e-5, 1e-6)
    dy = rng.standard_normal((5, 3)).astype(F32)
    dx = s.backward(dy)
    pre = x.astype(np.float64) @ a.weight.data.T + a.bias.data
    g = misc.relu_backward(pre, dy)
    assert_close(dx, g @ a.weight.data.astype(np.float64), 1e-5, 1e-6)
    assert_close(a.weight.grad, g.T @ x, 1e-5, 1e-6)
    with pytest.raises(TypeError, match=r"modules\[1\]"):
        nn.Sequential(a, "relu")
    assert "Linear(4, 3" in repr(s) and repr(nn.Sequential()).startswith("Sequential(")


def test_residual_identity(rng):
    body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    r = nn.Residual(body)
    assert r.shortcut is None and [n for n, _ in r.named_parameters()] == ["body.0.weight", "body.0.bias"]
    x = rng.standard_normal((3, 4)).astype(F32)
    W, b = body[0].weight.data.astype(np.float64), body[0].bias.data
    pre = x @ W.T + b
    assert_close(r(x), misc.add_forward(misc.relu_forward(pre), x), 1e-5, 1e-6)
    dy = rng.standard_normal((3, 4)).astype(F32)
    dx = r.backward(dy)
    d_body, d_short = misc.add_backward(dy)
    assert_close(dx, misc.relu_backward(pre, d_body) @ W + d_short, 1e-5, 1e-6)


def test_residual_conv_shortcut(rng):
    r = nn.Residual(nn.Conv2d(3, 5, 3, stride=2, padding=1), shortcut=nn.Conv2d(3, 5, 1, stride=2))
    x = rng.standard_normal((2, 3, 5, 5)).astype(F32)
    y = r(x)
    body, short = nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(3, 5, 1, stride=2)
    body.weight.data[...] = r.body.weight.data
    short.weight.data[...] = r.shortcut.weight.data
    assert_close(y, body(x).astype(np.float64) + short(x), 1e-5, 1e-6)
    dy = rng.standard_normal(y.shape).astype(F32)
    dx = r.backward(dy)
    assert_close(dx, body.backward(dy).astype(np.float64) + short.backward(dy), 1e-5, 1e-6)
    assert_close(r.shortcut.weight.grad, short.weight.grad, 1e-5, 1e-6)


def test_residual_bad_arguments(rng):
    with pytest.raises(TypeError, match="body"):
        nn.Residual("conv")
    with pytest.raises(TypeError, match="shortcut"):
        nn.Residual(nn.ReLU(), shortcut=lambda x: x)
    r = nn.Residual(nn.Conv2d(3, 4, 1))  # 3 -> 4 channels, identity shortcut: shapes differ
    with pytest.raises(ValueError, match="shortcut"):
        r(rng.standard_normal((1, 3, 2, 2)).astype(F32))


# ------------------------------------------------------------- whole network

def torch_forward(torch, m, x, T):
    """The same network in PyTorch float64; T maps id(Parameter) -> leaf tensor."""
    F = torch.nn.functional

    def val(name):
        t0 = T[id(getattr(m, name))]
        if m.subspace == "line":
            return (1 - m.alpha) * t0 + m.alpha * T[id(getattr(m, name + "1"))]
        return t0

    if isinstance(m, nn.Sequential):
        for c in m:
            x = torch_forward(torch, c, x, T)
        return x
    if isinstance(m, nn.Residual):
        s = x if m.shortcut is None else torch_forward(torch, m.shortcut, x, T)
        return torch_forward(torch, m.body, x, T) + s
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, val("weight"), None if m.bias is None else val("bias"), m.stride, m.padding)
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(x, m.num_groups, val("weight"), val("bias"), m.eps)
    if isinstance(m, nn.ReLU):
        return F.relu(x)
    if isinstance(m, nn.MaxPool2d):
        return F.max_pool2d(x, m.kernel_size, m.stride)
    if isinstance(m, nn.Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(m, nn.Linear):
        return F.linear(x, val("weight"), None if m.bias is None else val("bias"))
    raise AssertionError(type(m))


def run_net(net, x, labels):
    crit = nn.CrossEntropyLoss()
    net.zero_grad()
    loss = crit(net(x), labels)
    dx = net.backward(crit.backward())
    return loss, dx


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_network_gradient_matches_torch(torch, rng, alpha):
    net = small_net()
    randomise(net, rng)
    net.set_alpha(alpha)
    x = rng.standard_normal((3, 3, 9, 9)).astype(F32)
    labels = np.array([0, 3, 1])
    loss, dx = run_net(net, x, labels)

    T = {id(p): torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for p in net.parameters()}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(torch_forward(torch, net, xt, T), torch.tensor(labels))
    lt.backward()
    assert abs(loss - lt.item()) <= 1e-4 * max(1.0, abs(lt.item()))
    assert_close(dx, xt.grad.numpy(), 2e-3, 1e-4, name="dx")
    for name, p in net.named_parameters():
        tg = T[id(p)].grad
        ref = np.zeros(p.shape) if tg is None else tg.numpy()
        assert_close(p.grad, ref, 2e-3, 1e-4, name=name)
    # the endpoint gradients are (1 - alpha) g and alpha g of one gradient g
    w0, w1 = net[7].weight.grad, net[7].weight1.grad
    if 0 < alpha < 1:
        assert_close(w0 / (1 - alpha), w1 / alpha, 1e-5, 1e-6)
    elif alpha == 0:
        assert not w1.any() and w0.any()
    else:
        assert not w0.any() and w1.any()


def test_network_gradient_matches_finite_differences(rng):
    net = small_net()
    randomise(net, rng)
    net.set_alpha(0.3)
    x = rng.standard_normal((2, 3, 9, 9)).astype(F32)
    labels = np.array([2, 1])
    _, dx = run_net(net, x, labels)
    crit = nn.CrossEntropyLoss()
    eps = 1e-3

    def loss_at():
        return crit(net(x), labels)

    def fd(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        fp = loss_at()
        arr[idx] = old - eps
        fm = loss_at()
        arr[idx] = old
        return (fp - fm) / (2 * eps)

    checks = []
    for name in ("0.weight", "0.weight1", "1.bias1", "3.body.3.bias", "4.body.0.weight1",
                 "4.shortcut.weight", "7.weight1", "7.bias"):
        p = dict(net.named_parameters())[name]
        g = p.grad.copy()
        for idx in (np.unravel_index(int(np.argmax(np.abs(g))), g.shape), (0,) * g.ndim):
            checks.append((name, fd(p.data, idx), float(g[idx])))
    for idx in ((0, 0, 4, 4), (1, 2, 0, 8), (1, 1, 3, 5)):
        checks.append(("x", fd(x, idx), float(dx[idx])))
    scale = max(abs(g) for _, _, g in checks)
    for name, num, ana in checks:
        assert abs(num - ana) <= 1e-2 * abs(ana) + 1e-3 * scale, (name, num, ana)
    # the check has teeth: the analytic values are not all tiny
    assert scale > 1e-2


def test_network_training_steps_reduce_loss(rng):
    from csub.optim import SGD
    net = small_net()
    randomise(net, rng, scale=0.3)
    x = rng.standard_normal((4, 3, 9, 9)).astype(F32)
    labels = np.array([0, 1, 2, 3])
    opt = SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        net.set_alpha(0.5)
        loss, _ = run_net(net, x, labels)
        losses.append(loss)
        opt.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_subspace_is_an_attribute_of_every_module():
    """``subspace`` reads on any module: the layers' own kind, None where a module has no subspace tensors."""
    from csub import models
    from csub.subspace import line_pairs

    assert nn.Linear(2, 3, subspace="line").subspace == "line"
    assert nn.Conv2d(2, 3, 1, subspace="point").subspace == "point"
    assert nn.GroupNorm(1, 3, subspace="line").subspace == "line"
    assert nn.BatchNorm2d(3).subspace is None
    for m in (nn.ReLU(), nn.Flatten(), nn.MaxPool2d(2), nn.Sequential(), Scale(2)):
        assert m.subspace is None
    net = models.cpreresnet20(regime="structured", subspace="line", n=1)
    assert net.subspace == "line" and net.blocks[0].subspace is None
    assert net.blocks[0].conv1.subspace == "point" and net.blocks[0].n1.subspace == "line"
    kinds = {type(m).__name__: m.subspace for m in net.modules()}
    assert kinds["ReLU"] is None and kinds["PreActBottleneck"] is None
    assert len(line_pairs(net, "norms")) == 2 * sum(isinstance(m, nn.GroupNorm) for m in net.modules())
    assert line_pairs(net, "weights") == []
