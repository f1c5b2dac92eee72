"""csub.random: xoshiro256** streams, state save/restore, distributions and the alpha samplers.

Two kinds of checks: exact equality with a pure-Python twin of the generator
(splitmix64 seeding, xoshiro256**, 53-bit doubles), and distribution tests
(moments, a Kolmogorov-Smirnov statistic computed here, chi-square) at fixed
seeds, so they are deterministic.
"""
import math

import numpy as np
import pytest

import csub
from csub import _core, nn
from csub.random import Generator, default_generator

MASK64 = (1 << 64) - 1


# ------------------------------------------------------------ pure-Python twin


class TwinRNG:
    """xoshiro256** seeded by splitmix64, from the published algorithm."""

    def __init__(self, seed):
        x = seed
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK64

    def next(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def uniform(self):
        return (self.next() >> 11) * 2.0**-53

    def normal(self, n, mean, std):
        out = np.empty(n, np.float64)
        for i in range(0, n, 2):
            u1, u2 = 1.0 - self.uniform(), self.uniform()
            r, th = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
            out[i] = mean + std * r * math.cos(th)
            if i + 1 < n:
                out[i + 1] = mean + std * r * math.sin(th)
        return out

    def alpha_biased(self, lo, hi, p):
        if self.uniform() < p:
            return lo if self.uniform() < 0.5 else hi
        return lo + (hi - lo) * self.uniform()

    def alpha_discrete(self, K):
        limit = MASK64 - MASK64 % K
        while True:
            r = self.next()
            if r < limit:
                return (r % K + 1) / K


# ------------------------------------------------------------- statistic helpers


def ks_statistic(x, cdf):
    """Two-sided one-sample Kolmogorov-Smirnov statistic D_n."""
    x = np.sort(np.asarray(x, np.float64))
    n = x.size
    f = cdf(x)
    i = np.arange(1, n + 1)
    return max(np.max(i / n - f), np.max(f - (i - 1) / n))


def ks_critical(n, level=0.001):
    """Asymptotic critical value of D_n: sqrt(-ln(level / 2) / (2 n))."""
    return math.sqrt(-math.log(level / 2) / (2 * n))


def uniform_cdf(lo, hi):
    return lambda x: np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def normal_cdf(mean, std):
    erf = np.vectorize(math.erf)
    return lambda x: 0.5 * (1.0 + erf((x - mean) / (std * math.sqrt(2.0))))


def test_ks_helper_can_reject():
    # the statistic detects a wrong distribution (guards against a vacuous KS test)
    x = np.random.default_rng(0).random(5000) ** 2
    assert ks_statistic(x, uniform_cdf(0.0, 1.0)) > 5 * ks_critical(5000)
    y = np.random.default_rng(0).random(5000)
    assert ks_statistic(y, uniform_cdf(0.0, 1.0)) < ks_critical(5000)


# --------------------------------------------------------- exact streams, state


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 + 5, 2**64 - 1])
def test_stream_matches_twin(seed):
    g, t = Generator(seed), TwinRNG(seed)
    np.testing.assert_array_equal(g.get_state(), np.array(t.s, np.uint64))
    for _ in range(200):
        assert g.random() == t.uniform()
    np.testing.assert_array_equal(g.get_state(), np.array(t.s, np.uint64))


@pytest.mark.parametrize("n", [1, 2, 3, 8, 101])
def test_normal_matches_twin(n):
    g, t = Generator(7), TwinRNG(7)
    x = g.normal((n,), 0.5, 2.0)
    assert x.dtype == np.float32 and x.shape == (n,)
    np.testing.assert_allclose(x, t.normal(n, 0.5, 2.0).astype(np.float32), rtol=1e-6, atol=1e-6)
    # an odd count uses up a whole pair: the streams stay in step afterwards
    assert g.random() == t.uniform()


def test_uniform_fill_matches_twin():
    g, t = Generator(11), TwinRNG(11)
    x = g.uniform((4, 5), -1.0, 3.0)
    assert x.shape == (4, 5) and x.dtype == np.float32
    want = np.array([-1.0 + 4.0 * t.uniform() for _ in range(20)], np.float32).reshape(4, 5)
    np.testing.assert_array_equal(x, want)


def test_alpha_samplers_match_twin():
    g, t = Generator(3), TwinRNG(3)
    for _ in range(300):
        assert g.alpha_biased(0.025, 1.0, 0.5) == t.alpha_biased(0.025, 1.0, 0.5)
    for K in (1, 2, 6, 7):
        for _ in range(50):
            assert g.alpha_discrete(K) == t.alpha_discrete(K)
    for _ in range(20):
        a = g.alpha_sandwich(5)
        assert a == [0.0, 1.0, t.uniform(), t.uniform(), t.uniform()]


def test_same_seed_same_streams():
    a, b = Generator(123), Generator(123)
    xa = [a.random() for _ in range(10)] + list(a.normal(7)) + [a.alpha_biased() for _ in range(10)]
    xb = [b.random() for _ in range(10)] + list(b.normal(7)) + [b.alpha_biased() for _ in range(10)]
    assert xa == xb
    np.testing.assert_array_equal(a.get_state(), b.get_state())


def test_different_seeds_differ():
    seeds = [0, 1, 2, 3, 1000, 2**32, 2**63, 2**64 - 1]
    firsts = [tuple(Generator(s).random() for _ in range(4)) for s in seeds]
    assert len(set(firsts)) == len(seeds)
    states = {tuple(Generator(s).get_state()) for s in seeds}
    assert len(states) == len(seeds)


def test_reseed_restarts_stream():
    g = Generator(9)
    first = [g.random() for _ in range(5)]
    assert g.manual_seed(9) is g
    assert [g.random() for _ in range(5)] == first


def test_state_roundtrip_resumes_exactly():
    g = Generator(5)
    for _ in range(17):
        g.random()
    s = g.get_state()
    assert s.dtype == np.uint64 and s.shape == (4,)
    want = [g.random() for _ in range(5)] + list(g.normal(5)) + [g.alpha_discrete(6) for _ in range(5)]
    g.set_state(s)
    got = [g.random() for _ in range(5)] + list(g.normal(5)) + [g.alpha_discrete(6) for _ in range(5)]
    assert got == want
    # into a different generator too
    h = Generator(999)
    h.set_state(s)
    assert [h.random() for _ in range(5)] == want[:5]


def test_state_copies_do_not_alias():
    g = Generator(5)
    s = g.get_state()
    before = s.copy()
    g.random()
    np.testing.assert_array_equal(s, before)  # get_state returned a copy
    assert not np.array_equal(g.get_state(), before)  # the state advanced
    src = before.copy()
    g.set_state(src)
    src[:] = 1  # changing the source afterwards must not change the generator
    np.testing.assert_array_equal(g.get_state(), before)


def test_manual_seed_default_generator():
    assert csub.manual_seed(21) is default_generator
    a = [default_generator.random() for _ in range(5)]
    g = Generator(21)
    assert a == [g.random() for _ in range(5)]
    t = TwinRNG(21)
    assert a == [t.uniform() for _ in range(5)]
    csub.manual_seed(22)
    assert default_generator.random() != a[0]


def test_manual_seed_makes_init_reproducible():
    csub.manual_seed(4)
    w1 = nn.Linear(5, 3).weight.data.copy()
    csub.manual_seed(4)
    w2 = nn.Linear(5, 3).weight.data.copy()
    csub.manual_seed(5)
    w3 = nn.Linear(5, 3).weight.data.copy()
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)


# ------------------------------------------------------------------ distributions


def test_random_uniform_distribution():
    g = Generator(2024)
    n = 50000
    u = np.array([g.random() for _ in range(n)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 4.5 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 4.5 * math.sqrt((1 / 80 - 1 / 144) / n)
    assert ks_statistic(u, uniform_cdf(0.0, 1.0)) < ks_critical(n)


def test_uniform_fill_distribution():
    g = Generator(8)
    n = 100000
    x = g.uniform(n, -2.0, 3.0)
    assert x.min() >= -2.0 and x.max() < 3.0
    assert abs(x.mean() - 0.5) < 4.5 * 5 * math.sqrt(1 / 12 / n)
    assert ks_statistic(x, uniform_cdf(-2.0, 3.0)) < ks_critical(n)


def test_uniform_fill_never_reaches_high():
    # float32 rounding of lo + (hi - lo) u can land on hi; the kernel must not return it
    g = Generator(1)
    x = g.uniform(200000, 1.0, 1.0000001)  # one float32 ulp wide
    assert (x == np.float32(1.0)).all()
    x = g.uniform(5, 2.5, 2.5)
    assert (x == np.float32(2.5)).all()


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-3.0, 0.25)])
def test_normal_distribution(mean, std):
    g = Generator(77)
    n = 60001
    x = g.normal((n,), mean, std).astype(np.float64)
    assert abs(x.mean() - mean) < 4.5 * std / math.sqrt(n)
    assert abs(x.std() / std - 1.0) < 4.5 / math.sqrt(2 * n)
    assert ks_statistic(x, normal_cdf(mean, std)) < ks_critical(n)


def test_normal_std_zero():
    x = Generator(0).normal((2, 3), 1.5, 0.0)
    assert x.shape == (2, 3) and (x == 1.5).all()


def test_alpha_biased_distribution():
    g = Generator(31)
    lo, hi, p, n = 0.025, 1.0, 0.5, 40000
    a = np.array([g.alpha_biased(lo, hi, p) for _ in range(n)])
    at_lo, at_hi = np.mean(a == lo), np.mean(a == hi)
    sd = math.sqrt(0.25 * 0.75 / n)
    assert abs(at_lo - p / 2) < 4.5 * sd
    assert abs(at_hi - p / 2) < 4.5 * sd
    rest = a[(a != lo) & (a != hi)]
    assert rest.size == n - np.sum(a == lo) - np.sum(a == hi)
    assert rest.min() > lo and rest.max() < hi
    assert ks_statistic(rest, uniform_cdf(lo, hi)) < ks_critical(rest.size)


def test_alpha_biased_defaults_and_edges():
    g = Generator(2)
    t = TwinRNG(2)
    assert [g.alpha_biased() for _ in range(50)] == [t.alpha_biased(0.025, 1.0, 0.5) for _ in range(50)]
    assert all(g.alpha_biased(0.2, 0.7, 1.0) in (0.2, 0.7) for _ in range(200))
    v = [g.alpha_biased(0.2, 0.7, 0.0) for _ in range(200)]
    assert all(0.2 <= x < 0.7 for x in v) and len(set(v)) == 200
    assert all(g.alpha_biased(0.4, 0.4, 0.3) == 0.4 for _ in range(20))


@pytest.mark.parametrize("K", [6, 3])
def test_alpha_discrete_distribution(K):
    g = Generator(100 + K)
    n = 6000 * K
    a = np.array([g.alpha_discrete(K) for _ in range(n)])
    values = [k / K for k in range(1, K + 1)]
    assert set(a.tolist()) == set(values)  # exactly k/K, each one occurring
    counts = np.array([np.sum(a == v) for v in values])
    assert counts.sum() == n
    chi2 = float(np.sum((counts - n / K) ** 2 / (n / K)))
    crit = {5: 20.52, 2: 13.82}[K - 1]  # chi-square 0.999 quantiles
    assert chi2 < crit


def test_alpha_discrete_one():
    g = Generator(0)
    assert all(g.alpha_discrete(1) == 1.0 for _ in range(20))


def test_alpha_sandwich():
    g = Generator(17)
    us = []
    for _ in range(5000):
        a = g.alpha_sandwich(4)
        assert isinstance(a, list) and len(a) == 4
        assert a[0] == 0.0 and a[1] == 1.0
        assert 0.0 <= a[2] < 1.0 and 0.0 <= a[3] < 1.0 and a[2] != a[3]
        us += a[2:]
    assert ks_statistic(us, uniform_cdf(0.0, 1.0)) < ks_critical(len(us))
    assert g.alpha_sandwich(2) == [0.0, 1.0]
    assert len(g.alpha_sandwich(1024)) == 1024
    assert len(g.alpha_sandwich()) == 4


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize("seed, exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                                       ("3", TypeError), (None, TypeError), (True, TypeError)])
def test_bad_seed(seed, exc):
    with pytest.raises(exc, match="seed"):
        Generator(seed)
    with pytest.raises(exc, match="seed"):
        csub.manual_seed(seed)


@pytest.mark.parametrize("state", [
    np.ones(3, np.uint64), np.ones(5, np.uint64), np.ones((2, 2), np.uint64),
    np.ones(4, np.int64), np.ones(4, np.float64), np.ones(4, np.uint32), [1, 2, 3, 4],
    np.zeros(4, np.uint64),
])
def test_bad_state(state):
    g = Generator(1)
    before = g.get_state()
    with pytest.raises((ValueError, TypeError), match="state"):
        g.set_state(state)
    np.testing.assert_array_equal(g.get_state(), before)


@pytest.mark.parametrize("fn", [_core.rng_uniform, lambda s: _core.sample_alpha_discrete(s, 3),
                                lambda s: _core.sample_alpha_sandwich(s, 4),
                                lambda s: _core.sample_alpha_biased(s, 0.1, 0.9, 0.5),
                                lambda s: _core.rng_normal(s, np.zeros(3, np.float32), 0.0, 1.0)])
def test_core_bad_state(fn):
    with pytest.raises(ValueError, match="state"):
        fn(np.zeros(4, np.uint64))
    with pytest.raises(ValueError, match="state"):
        fn(np.ones(3, np.uint64))
    with pytest.raises(TypeError, match="state"):
        fn(np.ones(4, np.int64))
    with pytest.raises(TypeError, match="state"):
        fn([1, 2, 3, 4])
    ro = np.ones(4, np.uint64)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="state"):
        fn(ro)


@pytest.mark.parametrize("K, exc", [(0, ValueError), (-2, ValueError), (2.5, TypeError), ("6", TypeError),
                                    (None, TypeError)])
def test_bad_K(K, exc):
    with pytest.raises(exc, match="K"):
        Generator(0).alpha_discrete(K)


@pytest.mark.parametrize("kw, name", [
    (dict(lo=0.8, hi=0.2), "lo"), (dict(lo=-0.1), "lo"), (dict(hi=1.5), "hi"),
    (dict(lo=float("nan")), "lo"), (dict(p=-0.1), "p"), (dict(p=1.01), "p"), (dict(p=float("nan")), "p"),
])
def test_bad_alpha_biased(kw, name):
    g = Generator(0)
    before = g.get_state()
    with pytest.raises(ValueError, match=name):
        g.alpha_biased(**kw)
    np.testing.assert_array_equal(g.get_state(), before)  # nothing drawn


@pytest.mark.parametrize("kw, name", [(dict(lo="0"), "lo"), (dict(hi=None), "hi"), (dict(p=[0.5]), "p")])
def test_alpha_biased_types(kw, name):
    with pytest.raises(TypeError, match=name):
        Generator(0).alpha_biased(**kw)


@pytest.mark.parametrize("n, exc", [(1, ValueError), (0, ValueError), (-4, ValueError), (1025, ValueError),
                                    (2.5, TypeError), ("4", TypeError)])
def test_bad_sandwich_n(n, exc):
    with pytest.raises(exc, match="n"):
        Generator(0).alpha_sandwich(n)


def test_bad_fill_arguments():
    g = Generator(0)
    with pytest.raises(ValueError, match="std"):
        g.normal(3, 0.0, -1.0)
    with pytest.raises(ValueError, match="std"):
        g.normal(3, float("nan"), 1.0)
    with pytest.raises(ValueError, match="high"):
        g.uniform(3, 2.0, 1.0)
    with pytest.raises(ValueError, match="high"):
        g.uniform(3, 0.0, float("inf"))
    with pytest.raises(TypeError, match="mean"):
        g.normal(3, "0", 1.0)
    with pytest.raises(TypeError, match="std"):
        g.normal(3, 0.0, None)
    with pytest.raises(TypeError, match="low"):
        g.uniform(3, [0.0], 1.0)
    with pytest.raises(TypeError, match="out"):
        _core.rng_normal(g.state, np.zeros(3), 0.0, 1.0)
    with pytest.raises(ValueError, match="out"):
        _core.rng_uniform_fill(g.state, np.zeros((4, 4), np.float32)[:, ::2], 0.0, 1.0)
