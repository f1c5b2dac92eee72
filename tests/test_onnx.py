"""csub.interop.to_onnx: for every network of csub.models and every regime at three alphas,
onnxruntime runs the written file and its logits equal csub's forward at that alpha; the graph
holds what the regime means (zeros, narrower layers, QDQ pairs with csub's scales); bad input
is refused before any work."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import csub  # noqa: E402
from csub import _core, models  # noqa: E402
from csub.interop import to_onnx  # noqa: E402
from testkit import set_quantized_ranges  # noqa: E402

# Float paths (dense, zeros, narrower layers): onnxruntime and csub differ in summation order
# only: logits agree to RTOL_FLOAT of their scale. Quantized: the codes are csub's, but an input
# one float rounding away from a quantization step can land on the other side; logits agree to
# RTOL_INT of their scale (the compressed runtime's stated tolerance, tests/test_runtime.py).
RTOL_FLOAT = 1e-5
RTOL_INT = 0.05

CASES = [
    ("mlp", dict(hidden=(64, 48, 32), norm="gn"), (1, 28, 28)),
    ("mlp", dict(hidden=(40, 30), norm="bn"), (1, 28, 28)),
    ("cnn", dict(widths=(8, 16, 24)), (1, 28, 28)),
    ("cpreresnet20", dict(norm="gn"), (3, 16, 16)),
    ("cpreresnet20", dict(norm="bn"), (3, 16, 16)),
    ("cpreresnet20", dict(norm="gn", layout="reference"), (3, 16, 16)),
    ("resnet18", dict(num_classes=10), (3, 64, 64)),
]
ALPHAS = {None: [0.0, 0.5, 1.0], "unstructured": [0.1, 0.5, 1.0], "structured": [0.0, 0.5, 1.0],
          "quantized": [0.0, 0.5, 1.0]}


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _prepare(model, x, rng):
    """Norms away from the identity, running statistics, activation ranges (as trained)."""
    for m in model.modules():
        if isinstance(m, (csub.nn.GroupNorm, csub.nn.BatchNorm2d)):
            for name, p in m._parameters.items():
                p.data[...] = (1.0 if name.startswith("weight") else 0.0) + rng.normal(0, 0.2, p.shape)
        if isinstance(m, csub.nn.BatchNorm2d):
            m.running_mean[...] = rng.normal(0, 0.1, m.num_channels)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_channels)
    set_quantized_ranges(model, x)


def _build(name, kw, regime):
    kw = dict(kw)
    if regime == "structured" and kw.get("norm", "bn" if name == "resnet18" else None) == "bn":
        kw["norm"] = "gn"  # batch norm's statistics hold at one width only
    if regime == "structured" and kw.get("layout") == "reference":
        kw["norm"] = "in"  # as the reference trains it (its min(C, 32) groups do not narrow)
    return models.build(name, regime=regime, subspace="line", **kw)


@pytest.mark.parametrize("name,kw,shape", CASES)
@pytest.mark.parametrize("regime", [None, "unstructured", "structured", "quantized"])
def test_onnxruntime_equals_csub(tmp_path, rng, name, kw, shape, regime):
    if kw.get("layout") == "reference" and regime is None:
        pytest.skip("the reference layout is the same graph as csub's without a regime")
    csub.manual_seed(5)
    model = _build(name, kw, regime)
    x = rng.normal(0, 1, (2 if name == "resnet18" else 3,) + shape).astype(np.float32)
    _prepare(model, x, rng)
    path = os.path.join(tmp_path, "m.onnx")
    for a in ALPHAS[regime]:
        assert to_onnx(model, path, a, input_shape=shape) == path
        sess = _session(path)
        got = sess.run(None, {"x": x})[0]
        one = sess.run(None, {"x": x[:1]})[0]  # the batch dimension is dynamic
        model.set_alpha(a)
        want = model(x)
        assert got.shape == want.shape and one.shape == (1, want.shape[1])
        if regime == "quantized" and model.num_bits <= 8:
            assert _rel(got, want) < RTOL_INT, a
            assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.5
        else:
            assert _rel(got, want) < RTOL_FLOAT, a
    assert not [f for f in os.listdir(tmp_path) if f != "m.onnx"]  # written atomically, nothing left over


def _inits(path):
    m = onnx.load(path)
    return m, {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}


def test_unstructured_is_dense_weights_holding_the_zeros(tmp_path):
    model = models.cpreresnet20(regime="unstructured", subspace="line")
    path = to_onnx(model, os.path.join(tmp_path, "u.onnx"), 0.1)
    assert model.alpha == 1.0 and model.topk == 1.0  # the model itself stays where it was
    m, inits = _inits(path)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    ws = [inits[n.input[1]] for n in convs] + [inits[n.input[1]] for n in m.graph.node if n.op_type == "Gemm"]
    zeros = sum(int(w.size - np.count_nonzero(w)) for w in ws)
    total = sum(w.size for w in ws)
    model.set_alpha(0.1)
    assert zeros / total == pytest.approx(model.sparsity())


def test_structured_layers_are_narrower(tmp_path):
    model = models.cpreresnet20(regime="structured", subspace="line", norm="in")
    m, inits = _inits(to_onnx(model, os.path.join(tmp_path, "s.onnx"), 0.0))
    shapes = [inits[n.input[1]].shape for n in m.graph.node if n.op_type == "Conv"]
    assert shapes[0] == (4, 3, 3, 3)          # stem: max(1, round(16 * 0.25)) outputs
    assert max(s[0] for s in shapes) == 64    # the widest conv at width 0.25: 256 -> 64
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][0]
    assert inits[gemm.input[1]].shape == (10, 64)
    params = sum(v.size for v in inits.values() if v.ndim == 4) + inits[gemm.input[1]].size
    model.set_alpha(0.0)
    assert params < 0.1 * sum(w.weight.size for w in model.weight_layers())


def test_quantized_is_qdq_pairs_with_csubs_scales(tmp_path, rng):
    model = models.cpreresnet20(regime="quantized", subspace="line", norm="gn")
    _prepare(model, rng.normal(0, 1, (2, 3, 16, 16)).astype(np.float32), rng)
    path = to_onnx(model, os.path.join(tmp_path, "q.onnx"), 0.5, input_shape=(3, 16, 16))
    m, inits = _inits(path)
    ops = [n.op_type for n in m.graph.node]
    layers = model.compressible_layers()
    assert ops.count("QuantizeLinear") == len(layers)            # one per quantized input
    assert ops.count("DequantizeLinear") == 2 * len(layers)      # inputs and int8 weights
    assert ops.count("Clip") == len(layers)                      # 5 bits: codes held to [-16, 15]
    bits = model.set_alpha(0.5).num_bits
    assert bits == 5
    conv1 = model.blocks[0].conv1
    want_s, want_z = _core.quant_params(conv1.observer.running_min, conv1.observer.running_max, bits)
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and "blocks_0_conv1" in n.input[1]][0]
    assert float(inits[q.input[1]]) == want_s
    assert int(inits[q.input[2]]) == want_z and inits[q.input[2]].dtype == np.int8
    codes = [v for k, v in inits.items() if k.startswith("blocks_0_conv1_w_q")][0]
    assert codes.dtype == np.int8 and codes.min() >= -16 and codes.max() <= 15


def test_bad_input_is_refused_before_the_work(tmp_path):
    model = models.cpreresnet20(regime="quantized", subspace="line")  # no activation ranges yet
    ok = os.path.join(tmp_path, "m.onnx")
    with pytest.raises(ValueError, match="alpha"):
        to_onnx(model, ok, 1.5)
    with pytest.raises(TypeError, match="alpha"):
        to_onnx(model, ok, "0.5")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # before the missing ranges
        to_onnx(model, os.path.join(tmp_path, "no", "m.onnx"), 0.5)
    with pytest.raises(IsADirectoryError, match="directory"):
        to_onnx(model, str(tmp_path), 0.5)
    with pytest.raises(ValueError, match=r"blocks\.0\.shortcut has no recorded activation range"):
        to_onnx(model, ok, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        to_onnx(models.cnn(regime="unstructured", subspace="line"), ok, 0.0)
    with pytest.raises(TypeError, match="model"):
        to_onnx(object(), ok, 0.5)
    assert not os.listdir(tmp_path)


def test_opset_too_old_names_the_operators(tmp_path, rng):
    model = models.cnn(widths=(8, 16, 24), regime="quantized", subspace="line")
    _prepare(model, rng.normal(0, 1, (2, 1, 28, 28)).astype(np.float32), rng)
    path = os.path.join(tmp_path, "m.onnx")
    with pytest.raises(ValueError, match=r"opset: 9 is too old for .*DequantizeLinear \(needs >= 10\).*"
                                         r"QuantizeLinear \(needs >= 10\)"):
        to_onnx(model, path, 0.5, opset=9)
    with pytest.raises(ValueError, match=r"opset: 10 is too old for Clip \(needs >= 11\)"):
        to_onnx(model, path, 0.5, opset=10)
    to_onnx(model, path, 1.0, opset=10)  # 8 bits: no Clip needed
    assert onnx.load(path).opset_import[0].version == 10
    with pytest.raises(ValueError, match="newer than"):
        to_onnx(model, path, 0.5, opset=10_000)
    with pytest.raises(TypeError, match="opset"):
        to_onnx(model, path, 0.5, opset=17.0)


def test_read_only_target_is_refused(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    path = os.path.join(tmp_path, "m.onnx")
    open(path, "wb").close()
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="read-only"):
        to_onnx(models.mlp(hidden=(8,)), path, 1.0)


def test_cli_onnx_from_model_file_and_run(tmp_path, rng, capsys):
    import json

    from csub import checkpoint, cli

    model = models.cnn(widths=(8, 16, 24), regime="structured", subspace="line")
    x = rng.normal(0, 1, (2, 1, 28, 28)).astype(np.float32)
    _prepare(model, x, rng)
    mfile = csub.export(model, os.path.join(tmp_path, "m.safetensors"))
    out = os.path.join(tmp_path, "m.onnx")
    assert cli.main(["onnx", mfile, out, "--alpha", "0.1"]) == 0
    assert "alpha 0.1" in capsys.readouterr().out
    assert _rel(_session(out).run(None, {"x": x})[0], model.set_alpha(0.1)(x)) < RTOL_FLOAT

    # a run directory: config.json and checkpoint.safetensors as `train` writes them
    run = tmp_path / "run"
    run.mkdir()
    config = dict(model="mlp", dataset="fashion-mnist-bundled", regime="unstructured", method="lcs_l", norm=None,
                  seed=0, topk=None, num_bits=None)
    (run / "config.json").write_text(json.dumps(config))
    mlp = models.mlp(in_features=784, in_channels=1, regime="unstructured", subspace="line")
    checkpoint.save(str(run / "checkpoint.safetensors"), {"model": mlp.state_dict()}, {"epoch": 1})
    assert cli.main(["onnx", str(run), out, "--alpha", "0.25", "--opset", "13"]) == 0
    assert onnx.load(out).opset_import[0].version == 13
    assert _rel(_session(out).run(None, {"x": x})[0], mlp.set_alpha(0.25)(x)) < RTOL_FLOAT

    assert cli.main(["onnx", mfile, out, "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert cli.main(["onnx", mfile, str(tmp_path / "no" / "m.onnx"), "--alpha", "0.5"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["onnx", mfile, out, "--alpha", "0.5", "--opset", "4"]) == 2
    assert "opset: 4 is too old" in capsys.readouterr().err


def test_wide_bit_widths_are_int16_codes(tmp_path, rng):
    model = models.cnn(widths=(8, 16, 24), regime="quantized", subspace="line", bit_range=(3, 12))
    x = rng.normal(0, 1, (2, 1, 28, 28)).astype(np.float32)
    _prepare(model, x, rng)
    path = to_onnx(model, os.path.join(tmp_path, "w.onnx"), 1.0)  # 12 bits
    m, inits = _inits(path)
    assert m.opset_import[0].version == 21
    assert any(v.dtype == np.int16 for v in inits.values())
    assert _rel(_session(path).run(None, {"x": x})[0], model.set_alpha(1.0)(x)) < RTOL_INT
    with pytest.raises(ValueError, match=r"QuantizeLinear \(int16 codes\) \(needs >= 21\)"):
        to_onnx(model, path, 1.0, opset=17)
