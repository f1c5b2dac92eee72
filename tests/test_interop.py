"""csub.interop.from_reference against an independent PyTorch twin of the reference code
(tests/torch_lcs.py): checkpoints in the reference's key layout convert, csub's forward equals
the float64 twin at several alphas, the compressed runtime runs them, and every mismatch is a
ValueError that names the keys."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

import csub  # noqa: E402
from csub import models  # noqa: E402
from csub.interop import from_reference, read_checkpoint  # noqa: E402

import torch_lcs  # noqa: E402

# Float regimes: the float64 twin and csub's float32 forward differ by float32 rounding only;
# logits agree to RTOL_FLOAT of their scale. Quantized: compared with the twin in float32, the
# precision the reference code itself computes in (in float64 activations move across rounding
# steps: the float32 and float64 twins differ by up to 35 % of the logit scale at 3 bits); an
# activation one float rounding away from a step can still land on the other side, so logits
# agree to RTOL_INT of their scale (the compressed runtime's stated tolerance,
# tests/test_runtime.py) and the classes mostly.
RTOL_FLOAT = 1e-5
RTOL_INT = 0.05

CASES = [("unstructured", "line", "gn"), ("unstructured", "line", "bn"), ("unstructured", "point", "gn"),
         ("structured", "line", "in"), ("structured", "point", "in"),
         ("quantized", "line", "gn"), ("quantized", "line", "bn"), ("quantized", "point", "gn")]
ALPHAS = {"unstructured": [0.05, 0.1, 0.5, 1.0], "structured": [0.0, 0.3, 0.5, 0.9, 1.0],
          "quantized": [0.0, 0.4, 0.7, 1.0]}


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, 16, generator=g)


def _checkpoint(tmp_path, regime, subspace, norm, x, seed=0):
    net = torch_lcs.build(regime, subspace, norm, seed=seed, calibration=2 * x)
    path = os.path.join(tmp_path, "model_200")  # the reference's file name: no extension
    torch.save(torch_lcs.reference_state_dict(net), path)
    return (net if regime == "quantized" else net.double()), path


@pytest.mark.parametrize("regime,subspace,norm", CASES)
def test_forward_equals_reference(tmp_path, x, regime, subspace, norm):
    ref, path = _checkpoint(tmp_path, regime, subspace, norm, x)
    model = from_reference(path, regime=regime, subspace=subspace, norm=norm)
    assert isinstance(model, models.CPreResNet20) and model.config["layout"] == "reference"
    xn = x.numpy()
    net = model.compress(ALPHAS[regime][0], input_shape=(3, 16, 16))
    for a in ALPHAS[regime]:
        with torch.no_grad():
            want = ref.set_alpha(a)(x.to(ref.fc.weight.dtype)).numpy()
        model.set_alpha(a)
        got = model(xn)
        fast = net.set_alpha(a)(xn)
        if regime == "quantized":
            assert _rel(got, want) < RTOL_INT, a
            assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.5
            assert _rel(fast, got) < RTOL_INT, a
        else:
            assert _rel(got, want) < RTOL_FLOAT, a
            assert _rel(fast, got) < 2e-4, a  # the runtime's float tolerance (tests/test_runtime.py)


def test_sources_agree_and_prefixes_are_removed(tmp_path, x):
    from safetensors.numpy import save_file

    ref, path = _checkpoint(tmp_path, "unstructured", "line", "gn", x)
    state = read_checkpoint(path)
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    st = os.path.join(tmp_path, "m.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, st)
    nested = {"state_dict": {"module._orig_mod." + k: v for k, v in state.items()}}
    outs = []
    for src in (path, st, state, nested):
        m = from_reference(src).set_alpha(0.3)
        outs.append(m(x.numpy()))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    m = from_reference(state)
    np.testing.assert_allclose(m.input_mean, [0.4914, 0.4822, 0.4465], rtol=1e-6)


def test_converted_line_compresses_like_a_csub_line(tmp_path, x, monkeypatch):
    """The converted reference line runs the same compressed kernels as a csub-trained line of the
    same shapes: same keep fraction, FLOPs and bytes per alpha (speed ratios: README). The bytes
    with the sparse convs on the gather kernels (CSUB_SPARSE_JIT=0, read at set_alpha): compiled,
    their code's length depends on which weights are kept, not only on how many."""
    monkeypatch.setenv("CSUB_SPARSE_JIT", "0")
    _, path = _checkpoint(tmp_path, "unstructured", "line", "gn", x)
    conv = from_reference(path)
    own = models.cpreresnet20(regime="unstructured", subspace="line")
    a_net, b_net = conv.compress(1.0), own.compress(1.0)
    for a in (0.05, 0.1, 0.5, 1.0):
        ia, ib = a_net.set_alpha(a).info(), b_net.set_alpha(a).info()
        for k in ("keep", "flops", "weight_bytes", "subspace_bytes"):
            assert ia[k] == ib[k], (a, k)
    assert conv.set_alpha(0.1).sparsity() > 0.85


def _state(tmp_path, x, regime="unstructured", subspace="line", norm="gn"):
    _, path = _checkpoint(tmp_path, regime, subspace, norm, x)
    return read_checkpoint(path)


def test_missing_and_extra_keys_are_listed(tmp_path, x):
    state = _state(tmp_path, x)
    bad = dict(state)
    del bad["layer2.0.conv2.weight1"]
    bad["layer9.extra"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \[layer2\.0\.conv2\.weight1\].*unexpected keys \[layer9"):
        from_reference(bad)


def test_wrong_shape_and_non_finite_are_listed(tmp_path, x):
    state = _state(tmp_path, x)
    bad = dict(state, **{"layer1.1.bn2.bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match=r"wrong shapes.*layer1\.1\.bn2\.bias: \(5,\) \(expected \(16,\)\)"):
        from_reference(bad)
    bad = dict(state)
    bad["fc.weight1"] = state["fc.weight1"].copy()
    bad["fc.weight1"][3, 7] = np.nan
    bad["layer3.0.bn1.weight"] = np.full_like(state["layer3.0.bn1.weight"], np.inf)
    with pytest.raises(ValueError, match=r"non-finite.*\[fc\.weight1, layer3\.0\.bn1\.weight\]"):
        from_reference(bad)


def test_wrong_regime_subspace_or_norm_says_what_the_file_looks_like(tmp_path, x):
    q = _state(tmp_path, x, "quantized")
    with pytest.raises(ValueError, match="missing keys.*quantized checkpoint"):
        from_reference(q, regime="unstructured")
    u = _state(tmp_path, x)
    with pytest.raises(ValueError, match="no activation quantizers"):
        from_reference(u, regime="quantized")
    with pytest.raises(ValueError, match="subspace='line'"):
        from_reference(u, subspace="point")
    p = _state(tmp_path, x, subspace="point")
    with pytest.raises(ValueError, match="subspace='point'"):
        from_reference(p, subspace="line")
    with pytest.raises(ValueError, match="norm='bn'"):
        from_reference(_state(tmp_path, x, norm="bn"), norm="gn")


def test_what_csub_cannot_express_is_refused(tmp_path, x):
    s = _state(tmp_path, x, "structured", "line", "in")
    lines = dict(s, **{"layer1.0.conv1.weight1": s["layer1.0.conv1.weight"]})
    with pytest.raises(ValueError, match="share the conv weights"):
        from_reference(lines, regime="structured", norm="in")
    with pytest.raises(ValueError, match="instance norm"):
        from_reference(s, regime="structured", norm="gn")
    u = _state(tmp_path, x)
    sel = dict(u, **{"layer2.1.select.indexes": np.r_[np.zeros(1), np.ones(127)].astype(np.float32)})
    with pytest.raises(ValueError, match=r"channel selection.*layer2\.1\.select\.indexes"):
        from_reference(sel)
    with pytest.raises(ValueError, match="padding 1"):
        from_reference(u, model="resnet18")
    with pytest.raises(ValueError, match="model"):
        from_reference(u, model="cnn")
    q = _state(tmp_path, x, "quantized")
    q["layer1.0.conv2.quantize_input.running_min_value"] = np.float32(0.5)
    with pytest.raises(ValueError, match=r"hold 0.*layer1\.0\.conv2\.quantize_input"):
        from_reference(q, regime="quantized")


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        from_reference(os.path.join(tmp_path, "none.pt"))
    junk = os.path.join(tmp_path, "junk.pt")
    with open(junk, "wb") as f:
        f.write(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        from_reference(junk)
    with pytest.raises(TypeError, match="checkpoint"):
        from_reference(42)
    with pytest.raises(ValueError, match="no dict of tensors"):
        from_reference({})


def test_export_and_load_round_trip(tmp_path, x):
    _, path = _checkpoint(tmp_path, "quantized", "line", "bn", x)
    m = from_reference(path, regime="quantized", norm="bn")
    out = os.path.join(tmp_path, "q.safetensors")
    csub.export(m, out, input_shape=(3, 16, 16))
    back = csub.load(out)
    assert isinstance(back.blocks[0], models.PostNormBottleneck)
    for a in (0.0, 1.0):
        np.testing.assert_array_equal(back.set_alpha(a)(x.numpy()), m.set_alpha(a)(x.numpy()))


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A 40-image CIFAR-10 test batch (binary format) where csub looks for CIFAR-10."""
    d = tmp_path / "data" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rec = np.concatenate([rng.integers(0, 10, (40, 1)), rng.integers(0, 256, (40, 3072))], 1).astype(np.uint8)
    rec.tofile(d / "test_batch.bin")
    monkeypatch.setenv("CSUB_DATA", str(tmp_path / "data"))
    return d


@pytest.mark.parametrize("regime,norm", [("unstructured", None), ("quantized", "bn"), ("structured", None)])
def test_cli_import_reference_then_eval_export_budget(tmp_path, x, cifar, capsys, regime, norm):
    from csub import cli, modelfile

    _, path = _checkpoint(tmp_path, regime, "line", norm or ("in" if regime == "structured" else "gn"), x)
    out = os.path.join(tmp_path, "ref.safetensors")
    args = ["import-reference", path, out, "--model", "cpreresnet20", "--regime", regime]
    assert cli.main(args + (["--norm", norm] if norm else [])) == 0
    assert "ref.safetensors" in capsys.readouterr().out
    with open(out, "rb") as f:
        meta = modelfile.read_meta(f.read())
    assert meta["dataset"] == "cifar10" and meta["input_shape"] == [3, 32, 32] and meta["regime"] == regime
    model = from_reference(path, regime=regime, norm=norm or ("in" if regime == "structured" else "gn"))
    net = csub.CompressedNet(out, alpha=0.5)  # the C library's loader
    xn = np.random.default_rng(2).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    tol = 0.05 if regime == "quantized" else 2e-4
    assert _rel(net(xn), model.set_alpha(0.5)(xn)) < tol

    assert cli.main(["eval", out, "--alphas", "0.5", "1"]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table and os.path.exists(os.path.join(tmp_path, "eval_cli.json"))
    out2 = os.path.join(tmp_path, "again.safetensors")
    assert cli.main(["export", out, out2]) == 0
    with open(out2, "rb") as f:
        assert len(modelfile.read_meta(f.read())["levels"]) > 2
    assert cli.main(["budget", out2, "--latency-ms", "1000", "--dataset", "cifar10", "--reps", "2"]) == 0
    assert "budget" in capsys.readouterr().out


def test_cli_import_reference_errors(tmp_path, x, capsys):
    from csub import cli

    _, path = _checkpoint(tmp_path, "unstructured", "line", "gn", x)
    out = os.path.join(tmp_path, "ref.safetensors")
    assert cli.main(["import-reference", path, out, "--regime", "quantized"]) == 2
    err = capsys.readouterr().err
    assert "import-reference: error" in err and "quantize_input" in err and not os.path.exists(out)
    assert cli.main(["import-reference", os.path.join(tmp_path, "none.pt"), out]) == 1  # a file problem
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("regime,norm,alpha", [("unstructured", "gn", 0.3), ("structured", "in", 0.5),
                                               ("quantized", "gn", 0.7), (None, "gn", 0.6)])
def test_backward_equals_reference_autograd(tmp_path, x, regime, norm, alpha):
    """csub's backward through the reference layout (input shortcut, post-norm blocks with
    straight-through quantizers) against autograd on the twin: input and parameter gradients."""
    from csub.interop.reference import _reference_names

    twin_regime = regime or "unstructured"
    ref, path = _checkpoint(tmp_path, twin_regime, "line", norm, x)
    model = from_reference(path, regime=regime, norm=norm)
    model.train()
    if regime == "quantized":
        model.set_quantize_inputs(False)  # the warm-up: weights quantized, inputs not
        for q in ref.modules():
            if isinstance(q, torch_lcs.Quantizer):
                q.calibrating = True
    model.set_alpha(alpha)
    ref.set_alpha(alpha)
    if regime is None:
        for m in ref.modules():
            if isinstance(m, torch_lcs.Conv):
                m.topk = 1.0
    dtype = ref.fc.weight.dtype
    dy = np.random.default_rng(3).normal(0, 1, (2, 10)).astype(np.float32)
    xt = x.to(dtype).clone().requires_grad_(True)
    ref.zero_grad()
    (ref(xt) * torch.from_numpy(dy).to(dtype)).sum().backward()
    model.zero_grad()
    model(x.numpy())
    dx = model.backward(dy)
    tol = 1e-4  # float32 rounding (quantized: the float32 twin, whose codes are csub's)
    assert _rel(dx, xt.grad.numpy()) < tol
    names = _reference_names(model)
    checked = 0
    for path_, m in model.named_modules():
        if path_ not in names or not m._parameters:
            continue
        for pname, p in m._parameters.items():
            want = ref.get_parameter(f"{names[path_]}.{pname}").grad.numpy().reshape(p.shape)
            assert _rel(p.grad, want) < tol, (path_, pname)
            checked += 1
    assert checked == len(model.parameters())
