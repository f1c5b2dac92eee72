"""Pieces several test files share: tables of bad kernel calls, corrupted model files, and
the activation ranges of a quantized model."""
import pytest


def bad_call_params(**tables):
    """pytest.param(fn, args, kwargs, exc, match, id=f"{name}{i}") for each table
    name=(fn, [(args, kwargs, exc, match), ...]); for test_bad_call's arguments."""
    return [pytest.param(fn, *case, id=f"{name}{i}")
            for name, (fn, cases) in tables.items() for i, case in enumerate(cases)]


def check_bad_call(fn, args, kwargs, exc, match):
    """fn(*args, **kwargs) raises exc with a message matching match (re.search)."""
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def header_flips(data, rng, count, nbytes):
    """count copies of a safetensors file, each with nbytes random bytes of its header (the
    8-byte length included) replaced by random values."""
    hlen = 8 + int.from_bytes(data[:8], "little")
    for _ in range(count):
        b = bytearray(data)
        for i in rng.integers(0, hlen, nbytes):
            b[i] = int(rng.integers(0, 256))
        yield bytes(b)


def set_quantized_ranges(model, x):
    """A quantized model's activation ranges from fake-quantized training forwards of x at a few
    alphas; leaves the model in eval mode (any model)."""
    if model.regime == "quantized":
        model.train()
        model.set_quantize_inputs(True)
        for a in (0.2, 0.6, 1.0):
            model.set_alpha(a)
            model(x)
    model.eval()
