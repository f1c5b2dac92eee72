"""Pieces several test files share: tables of bad kernel calls, corrupted model files, the
activation ranges of a quantized model, and scripts run at each instruction-set level."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ISA_LEVELS = ["baseline", "avx2", "avx512", "avx512vnni"]  # each CPU runs a prefix of this list


def supported_isa_levels():
    """The levels this CPU runs (a prefix of ISA_LEVELS); skips the test where CSUB_ISA is set for the run."""
    from csub import _core
    if os.environ.get("CSUB_ISA"):
        pytest.skip("CSUB_ISA is set for the whole run")
    return ISA_LEVELS[:ISA_LEVELS.index(_core.isa()) + 1]


def run_json_at_isa(isa, code, *args):
    """Run Python `code` (with args) in a fresh interpreter under CSUB_ISA=isa, the repository and
    tests/ on its path; return the JSON its last printed line holds."""
    env = dict(os.environ, CSUB_ISA=isa)
    paths = [str(REPO), str(REPO / "tests")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def randomize_batch_norms(model, rng):
    """Give every BatchNorm2d of model non-trivial affine parameters and running statistics
    (gamma ~ 1 + N(0, 0.2), beta ~ N(0, 0.2), mean ~ N(0, 0.1), var ~ U(0.5, 2)), so that a folded
    or fused norm is exercised; returns model in eval mode."""
    import csub
    for m in model.modules():
        if isinstance(m, csub.nn.BatchNorm2d):
            c = m.num_channels
            m.weight.data[...] = 1.0 + rng.normal(0, 0.2, c)
            m.bias.data[...] = rng.normal(0, 0.2, c)
            m.running_mean[...] = rng.normal(0, 0.1, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
    return model.eval()


def check_every_level(code, shapes, n_results, tol):
    """Run a kernel test script (its JSON: "isa"; "err": key -> [relative error against the float64
    twin, shape ok]; "digest": key -> the output's hash; "fused": key -> [bools]) at every level
    this CPU runs: n_results errors each under tol, every fused check true, and every level the
    same digests as the baseline's (one summation order, fused everywhere). Returns them."""
    levels = supported_isa_levels()
    digests = {}
    for isa in levels:
        res = run_json_at_isa(isa, code, json.dumps(shapes))
        assert res["isa"] == isa
        assert len(res["err"]) == n_results
        assert all(all(ok) for ok in res["fused"].values()), (isa, res["fused"])
        for key, (err, shape_ok) in res["err"].items():
            assert shape_ok, (isa, key)
            assert err < tol, (isa, key, err)
        digests[isa] = res["digest"]
    for isa in levels:
        assert digests[isa] == digests["baseline"], isa
    return digests["baseline"]


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
