"""Central finite differences in float64, the independent reference for every backward."""
import numpy as np


def numerical_grad(f, x, dy, eps=1e-6):
    """d <f(x), dy> / dx by central differences; f maps a float64 array to a float64 array."""
    x = np.array(x, dtype=np.float64, copy=True)
    dy = np.asarray(dy, dtype=np.float64)
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = np.sum(f(x) * dy)
        flat[i] = old - eps
        fm = np.sum(f(x) * dy)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def assert_close(actual, expected, rtol=1e-4, atol=1e-5, name="value"):
    """Compare with a tolerance scaled to the reference's magnitude."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= atol * scale + rtol * scale, f"{name}: max abs error {err:.3g} (scale {scale:.3g})"
