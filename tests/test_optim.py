"""csub.optim.SGD (and the sgd_step kernel) and the cosine learning-rate schedule."""
import math

import numpy as np
import pytest

from csub import _core
from csub.nn import Parameter
from csub.optim import SGD, cosine_lr
from gradcheck import assert_close
from reference import misc

F32 = np.float32

SETTINGS = [  # (momentum, weight_decay, nesterov)
    (0.0, 0.0, False),
    (0.0, 0.05, False),
    (0.9, 0.0, False),
    (0.9, 5e-4, False),
    (0.5, 0.1, False),
    (0.9, 0.0, True),
    (0.9, 5e-4, True),
    (1.0, 0.01, True),
]

SHAPES = [(5,), (3, 7), (4, 3, 3, 3), (70000,)]  # the last takes the threaded path


def grads_sequence(rng, steps):
    return [[rng.standard_normal(s).astype(F32) for s in SHAPES] for _ in range(steps)]


@pytest.mark.parametrize("momentum,wd,nesterov", SETTINGS)
def test_sgd_kernel_matches_twin(rng, momentum, wd, nesterov):
    w = rng.standard_normal(37).astype(F32)
    v = np.zeros_like(w) if momentum else None
    rw, rv = w.astype(np.float64), None
    for step in range(5):
        g = rng.standard_normal(37).astype(F32)
        _core.sgd_step(w, g, v, 0.1, momentum, wd, nesterov, step == 0)
        rw, rv = misc.sgd_step(rw, g, rv, 0.1, momentum, wd, nesterov, step == 0)
        assert_close(w, rw, 1e-5, 1e-6, name=f"w step {step}")
        if momentum:
            assert_close(v, rv, 1e-5, 1e-6, name=f"velocity step {step}")


def test_sgd_twin_first_step_by_hand():
    w, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    # first step: v = g + wd w; w -= lr (g + m v) with Nesterov
    nw, nv = misc.sgd_step(w, g, None, 0.1, 0.9, 0.1, True, True)
    np.testing.assert_allclose(nv, [0.6, 0.05])
    np.testing.assert_allclose(nw, [1.0 - 0.1 * (0.6 + 0.54), -2.0 - 0.1 * (0.05 + 0.045)])
    nw, nv = misc.sgd_step(nw, g, nv, 0.1, 0.9, 0.0, False, False)
    np.testing.assert_allclose(nv, [0.9 * 0.6 + 0.5, 0.9 * 0.05 + 0.25])


@pytest.mark.parametrize("momentum,wd,nesterov", SETTINGS)
@pytest.mark.parametrize("lr", [0.1, 0.025])
def test_sgd_matches_torch(torch, rng, momentum, wd, nesterov, lr):
    steps = 6
    init = [rng.standard_normal(s).astype(F32) for s in SHAPES]
    grads = grads_sequence(rng, steps)
    params = [Parameter(a) for a in init]
    opt = SGD(params, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    tparams = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in init]
    topt = torch.optim.SGD(tparams, lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    for step in range(steps):
        opt.zero_grad()
        topt.zero_grad()
        for p, tp, g in zip(params, tparams, grads[step]):
            p.grad += g
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        topt.step()
        for i, (p, tp) in enumerate(zip(params, tparams)):
            assert p.data.dtype == F32
            assert_close(p.data, tp.detach().numpy(), 1e-5, 1e-6, name=f"param {i} step {step}")
    if momentum:
        for v, tp in zip(opt.velocity, tparams):
            assert_close(v, topt.state[tp]["momentum_buffer"].numpy(), 1e-5, 1e-6)
    assert opt.steps == steps


def test_sgd_momentum_zero_has_no_velocity(rng):
    p = Parameter(rng.standard_normal((3, 4)))
    w0 = p.data.copy()
    p.grad[...] = rng.standard_normal((3, 4))
    opt = SGD([p], lr=0.5, weight_decay=0.1)
    assert opt.velocity is None and "velocity.0" not in opt.state_dict()
    opt.step()
    assert_close(p.data, w0 - 0.5 * (p.grad.astype(np.float64) + 0.1 * w0), 1e-6, 1e-7)
    # a second step with the same gradient is plain gradient descent again (no memory)
    w1 = p.data.copy()
    opt.step()
    assert_close(p.data, w1 - 0.5 * (p.grad.astype(np.float64) + 0.1 * w1), 1e-6, 1e-7)


def test_sgd_zero_grad_and_lr_change(rng):
    p = Parameter(np.ones(4))
    p.grad[...] = 1.0
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.zero_grad()
    assert not p.grad.any()
    p.grad[...] = 2.0
    opt.lr = 0.5  # the schedule writes lr between steps
    opt.step()
    np.testing.assert_allclose(p.data, 1.0 - 0.5 * 2.0)


@pytest.mark.parametrize("momentum,wd,nesterov", [(0.9, 5e-4, False), (0.9, 5e-4, True), (0.0, 0.01, False)])
def test_sgd_state_dict_reproduces_continuation(rng, momentum, wd, nesterov):
    init = [rng.standard_normal(s).astype(F32) for s in SHAPES[:3]]
    grads = [[rng.standard_normal(s).astype(F32) for s in SHAPES[:3]] for _ in range(7)]

    def run(params, opt, gs):
        for g_list in gs:
            opt.zero_grad()
            for p, g in zip(params, g_list):
                p.grad += g
            opt.step()

    params = [Parameter(a) for a in init]
    opt = SGD(params, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    run(params, opt, grads[:3])
    saved_w = [p.data.copy() for p in params]
    saved = {k: np.array(v, copy=True) for k, v in opt.state_dict().items()}
    run(params, opt, grads[3:])

    params2 = [Parameter(w) for w in saved_w]
    opt2 = SGD(params2, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    opt2.load_state_dict(saved)
    assert opt2.steps == 3
    run(params2, opt2, grads[3:])
    for p, p2 in zip(params, params2):
        np.testing.assert_array_equal(p.data, p2.data)  # bit for bit
    if momentum:
        for v, v2 in zip(opt.velocity, opt2.velocity):
            np.testing.assert_array_equal(v, v2)
        # without the state the continuation differs: the test can tell the two apart
        params3 = [Parameter(w) for w in saved_w]
        run(params3, SGD(params3, lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov), grads[3:])
        assert not np.array_equal(params3[0].data, params[0].data)


def test_sgd_state_dict_is_a_copy_and_checks_shapes():
    p = Parameter(np.ones(3))
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad[...] = 1.0
    opt.step()
    sd = opt.state_dict()
    sd["velocity.0"][...] = 99.0
    assert not np.any(opt.velocity[0] == 99.0)
    sd["velocity.0"] = np.zeros(4, F32)
    with pytest.raises(ValueError, match="velocity"):
        opt.load_state_dict(sd)


def test_sgd_accepts_numpy_scalars():
    p = Parameter(np.ones(2))
    p.grad[...] = 1.0
    opt = SGD([p], lr=np.float32(0.5), momentum=np.float64(0.5), weight_decay=np.int64(0))
    opt.step()
    np.testing.assert_allclose(p.data, 0.5)


def test_sgd_bad_hyperparameters():
    p = [Parameter(np.zeros(3))]
    for bad in (-0.1, float("nan"), float("inf"), "0.1", None, True):
        with pytest.raises((ValueError, TypeError), match="lr"):
            SGD(p, lr=bad)
    for bad in (-0.5, 1.5, float("nan"), "0.9"):
        with pytest.raises((ValueError, TypeError), match="momentum"):
            SGD(p, lr=0.1, momentum=bad)
    for bad in (-1e-4, float("inf"), [0.1]):
        with pytest.raises((ValueError, TypeError), match="weight_decay"):
            SGD(p, lr=0.1, weight_decay=bad)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="params"):
        SGD([np.zeros(3, F32)], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\]"):
        SGD([p[0], "w"], lr=0.1)


def test_sgd_kernel_bad_input():
    w, g, v = np.zeros(4, F32), np.zeros(4, F32), np.zeros(4, F32)
    with pytest.raises(TypeError, match="w"):
        _core.sgd_step(w.astype(np.float64), g, v, 0.1, 0.9)
    with pytest.raises(TypeError, match="grad"):
        _core.sgd_step(w, [0.0] * 4, v, 0.1, 0.9)
    with pytest.raises(ValueError, match="grad"):
        _core.sgd_step(w, np.zeros(5, F32), v, 0.1, 0.9)
    with pytest.raises(ValueError, match="velocity"):
        _core.sgd_step(w, g, np.zeros(3, F32), 0.1, 0.9)
    with pytest.raises(ValueError, match="velocity"):
        _core.sgd_step(w, g, None, 0.1, 0.9)
    with pytest.raises(ValueError, match="w"):
        _core.sgd_step(np.zeros(8, F32)[::2], g, v, 0.1, 0.9)
    ro = np.zeros(4, F32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="w"):
        _core.sgd_step(ro, g, v, 0.1, 0.9)
    with pytest.raises(ValueError, match="velocity"):
        _core.sgd_step(w, g, ro, 0.1, 0.9)
    with pytest.raises(ValueError, match="lr"):
        _core.sgd_step(w, g, v, float("nan"), 0.9)
    with pytest.raises(ValueError, match="lr"):
        _core.sgd_step(w, g, v, -1.0, 0.9)
    with pytest.raises(ValueError, match="momentum"):
        _core.sgd_step(w, g, v, 0.1, 1.1)
    with pytest.raises(ValueError, match="weight_decay"):
        _core.sgd_step(w, g, v, 0.1, 0.9, -0.1)
    with pytest.raises(ValueError, match="nesterov"):
        _core.sgd_step(w, g, None, 0.1, 0.0, 0.0, True)
    assert not w.any()  # nothing was written by a rejected call
    # a step with a rejected lr written between steps fails naming lr
    p = Parameter(np.zeros(2))
    opt = SGD([p], lr=0.1)
    opt.lr = -1.0
    with pytest.raises(ValueError, match="lr"):
        opt.step()


# ------------------------------------------------------------------ cosine_lr

def spec_lr(base, e, E, warm=5):
    """LCS-SPEC section 7, written out."""
    if e < warm:
        return base * (e + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (e - warm) / (E - warm))) * base


@pytest.mark.parametrize("base,E", [(0.1, 200), (0.025, 200), (0.1, 20), (1.0, 6)])
def test_cosine_lr_matches_spec(base, E):
    for e in sorted({0, 1, 2, 3, 4, 5, 6, E // 2, E - 2, E - 1} & set(range(E))):
        assert cosine_lr(base, e, E) == pytest.approx(spec_lr(base, e, E), rel=1e-12, abs=1e-15)


def test_cosine_lr_landmarks():
    # hand-computed values of the schedule for base 0.1 over 200 epochs
    assert cosine_lr(0.1, 0, 200) == pytest.approx(0.02)
    assert cosine_lr(0.1, 4, 200) == pytest.approx(0.1)          # end of warm-up: the base
    assert cosine_lr(0.1, 5, 200) == pytest.approx(0.1)          # cos(0) = 1
    assert cosine_lr(0.1, 5 + 195 // 2, 200) == pytest.approx(0.05, rel=1e-2)  # half way
    assert cosine_lr(0.1, 199, 200) == pytest.approx(0.05 * (1 + math.cos(math.pi * 194 / 195)))
    assert 0 < cosine_lr(0.1, 199, 200) < 1e-4
    lrs = [cosine_lr(0.1, e, 200) for e in range(200)]
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5]))           # warm-up rises
    assert all(a > b for a, b in zip(lrs[5:-1], lrs[6:]))          # then decays


def test_cosine_lr_custom_warmup():
    assert cosine_lr(0.2, 0, 10, warmup_epochs=0) == pytest.approx(0.2)
    assert cosine_lr(0.2, 5, 10, warmup_epochs=0) == pytest.approx(0.1)
    assert cosine_lr(0.2, 1, 10, warmup_epochs=2) == pytest.approx(0.2)
    assert cosine_lr(0.2, 6, 10, warmup_epochs=2) == pytest.approx(spec_lr(0.2, 6, 10, 2))


def test_cosine_lr_bad_arguments():
    with pytest.raises(ValueError, match="epoch"):
        cosine_lr(0.1, 200, 200)
    with pytest.raises(ValueError, match="epoch"):
        cosine_lr(0.1, -1, 200)
    with pytest.raises(ValueError, match="epochs"):
        cosine_lr(0.1, 0, 0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        cosine_lr(0.1, 0, 10, warmup_epochs=-1)
