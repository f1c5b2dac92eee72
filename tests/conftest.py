import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference, tests/gradcheck


@pytest.fixture
def torch():
    """PyTorch (CPU) as an independent reference; the test skips where it is absent."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
