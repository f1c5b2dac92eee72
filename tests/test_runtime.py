"""The C runtime (csrc/runtime.c) against the training-mode networks: every regime, alphas across
the range, export round trips, bad model files, the budget controller."""
import json
import os

import numpy as np
import pytest

import csub
from csub import modelfile, models
from testkit import header_flips, set_quantized_ranges

# Float paths (dense, CSR sparse, narrower layers) differ from the training-mode forward only in
# summation order: logits agree to RTOL_FLOAT of their scale. Integer paths are exact in int32,
# but a layer input that differs by one float rounding can land on the other side of a
# quantization step (a tie: test_quantized_paths_pick_the_same_codes_up_to_ties), and the
# later quantized layers amplify it; logits then agree to RTOL_INT and the classes almost
# always. Measured over 20 seeds of the quantized CASES and the batch-norm cnn and
# cPreResNet20 at 3..8 bits: 39 of 600 met a tie, worst 3.0e-2; the others under 6e-7.
RTOL_FLOAT = 2e-4
RTOL_INT = 0.04


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def _prepare(model, x, regime, rng):
    """Give the model non-trivial state: running statistics, activation ranges, distinct line ends."""
    if model.norm == "bn":
        for m in model.modules():
            if isinstance(m, csub.nn.BatchNorm2d):
                m.running_mean[...] = rng.normal(0, 0.1, m.num_channels)
                m.running_var[...] = rng.uniform(0.5, 2.0, m.num_channels)
    for m in model.modules():  # norms away from the identity, line ends apart
        for name, p in m._parameters.items():
            if "weight" not in name and "bias" not in name:
                continue
            if isinstance(m, (csub.nn.GroupNorm, csub.nn.BatchNorm2d)):
                p.data[...] = (1.0 if name.startswith("weight") else 0.0) + rng.normal(0, 0.2, p.shape)
    set_quantized_ranges(model, x)  # model.regime is regime


CASES = [
    ("mlp", dict(hidden=(64, 48, 32), norm="gn"), (4, 1, 28, 28)),
    ("mlp", dict(hidden=(40, 30), norm=None), (3, 1, 28, 28)),
    ("cnn", dict(widths=(8, 16, 24)), (3, 1, 28, 28)),
    ("cpreresnet20", dict(norm="gn"), (2, 3, 16, 16)),
]


def _build(name, kw, regime, subspace):
    return models.build(name, regime=regime, subspace=subspace, **kw)


@pytest.mark.parametrize("name,kw,shape", CASES)
@pytest.mark.parametrize("regime", [None, "unstructured", "structured", "quantized"])
@pytest.mark.parametrize("subspace", ["line", "point"])
def test_compressed_equals_training_forward(name, kw, shape, regime, subspace, rng):
    csub.manual_seed(3)
    model = _build(name, kw, regime, subspace)
    x = rng.normal(0, 1, shape).astype(np.float32)
    _prepare(model, x, regime, rng)
    alphas = {None: [0.0, 0.5, 1.0], "unstructured": [0.025, 0.05, 0.1, 0.3, 0.6, 1.0],
              "structured": [0.0, 0.2, 0.5, 0.8, 1.0], "quantized": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}[regime]
    net = model.compress(alphas[0], input_shape=shape[1:])
    for a in alphas:
        model.set_alpha(a)
        want = model(x)
        got = net.set_alpha(a)(x)
        assert got.shape == want.shape
        info = net.info()
        if regime == "quantized" and info["bits"] <= 8:
            assert _rel(got, want) < RTOL_INT, (a, info)
            assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.5
        else:
            assert _rel(got, want) < RTOL_FLOAT, (a, info)


@pytest.mark.parametrize("regime,alphas", [(None, [1.0]), ("unstructured", [0.3, 1.0]), ("structured", [0.5, 1.0])])
def test_one_large_image_on_thread_counts(regime, alphas, rng):
    """Batch 1 on a 96 x 96 image: the layers are large enough that the threads split the image
    by rows (dense and CSR convolutions, norms, fused residual adds; every alpha here is above
    the runtime's 1e8 FLOP for a split); 1 to 3 threads agree with the training forward."""
    csub.manual_seed(4)
    model = _build("cpreresnet20", dict(norm="gn"), regime, "line")
    x = rng.normal(0, 1, (1, 3, 96, 96)).astype(np.float32)
    _prepare(model, x, regime, rng)
    net = model.compress(alphas[0], input_shape=(3, 96, 96))
    assert min(net.set_alpha(a).info()["flops"] for a in alphas) > 1e8
    old = csub.get_num_threads()
    try:
        for a in alphas:
            model.set_alpha(a)
            want = model(x)
            for t in (1, 2, 3):
                csub.set_num_threads(t)
                assert _rel(net.set_alpha(a)(x), want) < RTOL_FLOAT, (a, t)
    finally:
        csub.set_num_threads(old)


def test_a_small_forward_runs_on_one_thread_and_leaves_the_count(rng):
    """Under 1e8 FLOP, fewer images than threads run on the calling thread (the same bits as one
    thread); the process-wide thread count is the same afterwards, after a failed call too."""
    csub.manual_seed(5)
    model = models.cpreresnet20(norm="bn", regime="quantized", subspace="line")
    x = rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    net = model.compress(1.0, input_shape=(3, 32, 32))
    assert net.info()["flops"] < 1e8
    old = csub.get_num_threads()
    try:
        csub.set_num_threads(1)
        one = net(x)
        csub.set_num_threads(2)
        np.testing.assert_array_equal(net(x), one)
        assert csub.get_num_threads() == 2
        net.set_alpha(0.0)  # integer codes: a NaN input is refused mid-forward
        bad = x.copy()
        bad[0, 0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            net(bad)
        assert csub.get_num_threads() == 2
    finally:
        csub.set_num_threads(old)


def test_levels_follow_alpha():
    csub.manual_seed(0)
    m = models.cnn(widths=(8, 16, 24), regime="unstructured", subspace="line")
    net = m.compress(0.1)
    i = net.info()
    assert i["keep"] == pytest.approx(0.1) and i["regime"] == "unstructured"
    dense = net.set_alpha(1.0).info()
    assert i["weight_bytes"] < dense["weight_bytes"] and i["flops"] < dense["flops"]
    q = models.cpreresnet20(regime="quantized", subspace="line").compress(0.0, input_shape=(3, 8, 8))
    assert q.info()["bits"] == 3 and q.set_alpha(1.0).info()["bits"] == 8
    assert q.set_alpha(0.5).info()["bits"] == csub.nn.quant.bits_for_alpha(0.5)
    s = models.cpreresnet20(regime="structured", subspace="line", norm="gn").compress(0.0, input_shape=(3, 8, 8))
    assert s.info()["width"] == pytest.approx(0.25)
    small = s.info()["flops"]
    assert small < 0.1 * s.set_alpha(1.0).info()["flops"]
    # the flops the runtime counts are the model's own count at that width
    model = models.cpreresnet20(regime="structured", norm="gn")
    model.set_alpha(0.0)
    assert small == model.flops((3, 8, 8))


def test_bits_for_alpha_matches_python():
    from csub.nn.quant import alpha_for_bits, bits_for_alpha
    for lo, hi in [(3, 8), (2, 16), (4, 4), (2, 3)]:
        for a in list(np.linspace(0, 1, 101)) + [alpha_for_bits(b, lo, hi) for b in range(lo, hi + 1)]:
            assert csub._core.bits_for_alpha(float(a), lo, hi) == bits_for_alpha(float(a), lo, hi)
            assert csub._core.bits_for_alpha(float(np.float32(a)), lo, hi) == bits_for_alpha(np.float32(a), lo, hi)


def test_export_load_round_trip(tmp_path, rng):
    csub.manual_seed(5)
    model = models.cnn(widths=(8, 16, 24), regime="quantized", subspace="line", norm="bn")
    x = rng.normal(0, 1, (3, 1, 28, 28)).astype(np.float32)
    _prepare(model, x, "quantized", rng)
    levels = [dict(alpha=0.5, accuracy=0.7), dict(alpha=1.0, accuracy=0.9)]
    path = csub.export(model, str(tmp_path / "m.safetensors"), levels=levels)
    back = csub.load(path)
    assert type(back) is type(model) and back.config == model.config and back.levels == levels
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and np.array_equal(a, b)
    for a in (0.0, 0.5, 1.0):
        model.set_alpha(a)
        back.set_alpha(a)
        np.testing.assert_array_equal(back(x), model(x))
    # the file and the in-memory export hold the same bytes; the runtime reads both
    with open(path, "rb") as f:
        data = f.read()
    assert data == modelfile.to_bytes(model, levels=levels)
    net = csub.CompressedNet(path, 0.5)
    np.testing.assert_array_equal(net(x), model.compress(0.5)(x))


def test_export_rejects_what_it_cannot_describe(tmp_path):
    with pytest.raises(TypeError, match="model"):
        modelfile.describe(csub.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="input_shape"):
        modelfile.describe(models.mlp(), input_shape=(0, 1, 1))


# ---------------------------------------------------------------- bad files

def _file(model=None, **changes):
    """A small exported model's (meta, tensors), with meta entries replaced."""
    model = model or models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line")
    meta = modelfile.describe(model)
    meta.update(changes)
    return meta, {k: np.ascontiguousarray(v, np.float32) for k, v in model.state_dict().items()}


def _save(meta, tensors):
    from safetensors.numpy import save
    return save(tensors, metadata={"csub": json.dumps(meta)})


def _load_error(data):
    with pytest.raises(ValueError) as e:
        csub._core.model_load(data)
    return str(e.value)


def test_bad_model_files_raise():
    meta, t = _file()
    good = _save(meta, t)
    csub._core.model_load(good)
    cases = []
    for key, value, what in (("x", 5, "graph[0].x"), ("op", "softmax", "unknown op"), ("cin", 3, "expected"),
                             ("cout", 2 ** 30, "graph[0]"), ("w", "nope.weight", "nope.weight"),
                             ("k", 1.5, "graph[0].k")):
        g = json.loads(json.dumps(meta["graph"]))  # the first op with one field changed
        g[0][key] = value
        cases.append((what, _save(dict(meta, graph=g), t)))
    cases.append(("input_shape", _save(dict(meta, input_shape=[1, 28]), t)))
    cases.append(("input_shape", _save(dict(meta, input_shape=[1, 2 ** 40, 1]), t)))
    cases.append(("graph[", _save(dict(meta, input_shape=[1, 2, 2]), t)))
    cases.append(("regime", _save(dict(meta, regime="pruned"), t)))
    cases.append(("version", _save(dict(meta, version=2), t)))
    cases.append(("format", _save(dict(meta, format="other"), t)))
    cases.append(("bit_range", _save(dict(meta, bit_range=[1, 8]), t)))
    cases.append(("width_range", _save(dict(meta, width_range=[0, 1]), t)))
    cases.append(("output", _save(dict(meta, output=10 ** 6), t)))
    cases.append(("num_classes", _save(dict(meta, num_classes=11), t)))
    cases.append(("levels", _save(dict(meta, levels=[dict(alpha=2, accuracy=1)]), t)))
    cases.append(("graph", _save(dict(meta, graph=[]), t)))
    t2 = dict(t)
    w = meta["graph"][0]["w"]
    t2[w] = t2[w][:2]
    cases.append((w, _save(meta, t2)))
    t3 = dict(t)
    t3[w] = t3[w].astype(np.float64)
    cases.append(("float32", _save(meta, t3)))
    from safetensors.numpy import save
    cases.append(("metadata", save(t)))
    cases.append(("json", save(t, metadata={"csub": "{not json"})))
    for what, data in cases:
        msg = _load_error(data)
        assert what in msg, (what, msg)


def test_truncated_and_flipped_model_files_never_crash():
    meta, t = _file()
    data = _save(meta, t)
    for n in list(range(0, 200)) + list(range(200, len(data), max(1, len(data) // 300))):
        with pytest.raises(ValueError):
            csub._core.model_load(data[:n])
    for b in header_flips(data, np.random.default_rng(0), 300, 3):
        try:
            net = csub._core.model_load(b)
        except (ValueError, MemoryError):
            continue
        csub._core.model_set_alpha(net, 0.5)  # a file that loads runs
        csub._core.model_forward(net, np.zeros((1, 1, 28, 28), np.float32))


def test_runtime_bad_arguments():
    net = models.mlp(hidden=(16, 8), regime="unstructured").compress(1.0)
    with pytest.raises(ValueError, match="alpha"):
        net.set_alpha(1.5)
    with pytest.raises(ValueError, match="alpha"):
        net.set_alpha(0.0)  # unstructured alpha 0 keeps nothing
    with pytest.raises(ValueError, match="x"):
        net(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="x"):
        net(np.zeros((0, 784), np.float32))
    with pytest.raises(TypeError, match="model"):
        csub._core.model_forward("not a model", np.zeros((1, 784), np.float32))
    with pytest.raises(TypeError, match="x"):
        csub._core.model_forward(net._m, np.zeros((1, 784), np.float64))
    with pytest.raises(ValueError, match="batch"):
        net.memory_bytes(0)
    out = net(np.zeros((2, 1, 28, 28), np.float32))
    assert out.shape == (2, 10)
    np.testing.assert_array_equal(out, net(np.zeros((2, 784), np.float32)))


def test_structured_batch_norm_model_is_refused_at_other_widths():
    m = models.cnn(widths=(4, 8, 8), regime=None, norm="bn")
    meta, t = _file(m, regime="structured")
    net = csub._core.model_load(_save(meta, t))  # alpha 1 is the full width: fine
    with pytest.raises(ValueError, match="batch norm"):
        csub._core.model_set_alpha(net, 0.0)
    with pytest.raises(ValueError, match="no alpha"):
        csub._core.model_forward(net, np.zeros((1, 1, 28, 28), np.float32))
    csub._core.model_set_alpha(net, 1.0)
    csub._core.model_forward(net, np.zeros((1, 1, 28, 28), np.float32))


# --------------------------------------------------------------- budget

def test_pick_alpha_semantics():
    a = np.array([0.1, 0.5, 1.0])
    lat = np.array([1.0, 2.0, 4.0])
    mem = np.array([100, 200, 400], np.int64)
    nan = np.full(3, np.nan)
    pick = csub._core.pick_alpha
    assert pick(a, lat, mem, nan, 0.0, 0) == 1.0
    assert pick(a, lat, mem, nan, 3.0, 0) == 0.5
    assert pick(a, lat, mem, nan, 3.0, 150) == 0.1
    assert pick(a, lat, mem, nan, 0.5, 0) is None
    acc = np.array([0.8, 0.9, 0.85])  # measured accuracy ranks the levels when every one has it
    assert pick(a, lat, mem, acc, 0.0, 0) == 0.5
    cal = csub.runtime.Calibration([dict(alpha=float(x), latency_ms=float(t), memory_bytes=int(m),
                                         accuracy=float("nan"), set_alpha_ms=0.1)
                                    for x, t, m in zip(a, lat, mem)], 1)
    assert cal.pick_alpha(latency_ms=2.5) == 0.5 and cal.pick_alpha() == 1.0
    with pytest.raises(ValueError, match="latency_ms"):
        cal.pick_alpha(latency_ms=-1)
    assert cal.pick_alpha(latency_ms=0.5) is None
    with pytest.raises(csub.BudgetError, match=r"latency_ms=0.5.*fastest level: 1.000 ms at alpha 0.1"):
        cal.pick_alpha(latency_ms=0.5, strict=True)
    assert cal.pick_alpha(latency_ms=2.5, strict=True) == 0.5
    with pytest.raises(TypeError, match="strict"):
        cal.pick_alpha(latency_ms=2.5, strict="yes")


def test_calibrate_measures_every_level():
    csub.manual_seed(0)
    model = models.cnn(widths=(8, 16, 24), regime="structured", subspace="line", norm="gn")
    net = model.compress(0.5)
    cal = net.calibrate([0.0, 0.5, 1.0], batch_size=4, reps=3)
    assert net.alpha == 0.5  # left where it was
    assert [r["alpha"] for r in cal.levels] == [0.0, 0.5, 1.0]
    mem = [r["memory_bytes"] for r in cal.levels]
    assert mem[0] < mem[1] < mem[2]
    assert all(r["latency_ms"] > 0 and r["set_alpha_ms"] >= 0 for r in cal.levels)
    assert cal.pick_alpha(memory_bytes=mem[1]) == 0.5
    assert "latency ms" in cal.table()


def test_sparse_crossover_changes_the_path_not_the_result(rng):
    csub.manual_seed(2)
    model = models.cnn(widths=(8, 16, 24), regime="unstructured", subspace="line")
    x = rng.normal(0, 1, (3, 1, 28, 28)).astype(np.float32)
    csr = model.compress(0.3)
    dense = csub.CompressedNet(modelfile.to_bytes(model), 0.3, sparse_crossover=0.0)
    assert csr.info()["weight_bytes"] != dense.info()["weight_bytes"]
    assert _rel(csr(x), dense(x)) < RTOL_FLOAT
    with pytest.raises(ValueError, match="keep"):
        csub._core.model_set_sparse_crossover(csr._m, 1.5)
    with pytest.raises(ValueError, match="keep_split"):
        csub._core.model_set_sparse_crossover(csr._m, 0.5, -1.0)
    with pytest.raises(ValueError, match="sparse_crossover"):
        csub.CompressedNet(modelfile.to_bytes(model), 0.3, sparse_crossover=(0.5, 0.5, 0.5))


def test_split_crossover_picks_the_kernels_by_batch(rng):
    """CSR kernels for whole images, dense ones for an image split across threads: both forms
    held at once, the kernels chosen per forward, the same results. A forward under 1e8 FLOP
    does not split its image: CSR at batch 1 too."""
    csub.manual_seed(2)
    model = models.cpreresnet20(regime="unstructured", subspace="line")
    x = rng.normal(0, 1, (3, 3, 96, 96)).astype(np.float32)
    data = modelfile.to_bytes(model, input_shape=(3, 96, 96))
    both = csub.CompressedNet(data, 0.3, sparse_crossover=(1.0, 0.0))
    csr = csub.CompressedNet(data, 0.3, sparse_crossover=1.0)
    dense = csub.CompressedNet(data, 0.3, sparse_crossover=0.0)
    assert both.info()["weight_bytes"] > max(csr.info()["weight_bytes"], dense.info()["weight_bytes"])
    assert both.info()["flops"] > 1e8
    small = csub.CompressedNet(modelfile.to_bytes(model, input_shape=(3, 32, 32)), 0.3, sparse_crossover=(1.0, 0.0))
    assert small.info()["flops"] < 1e8
    old = csub.get_num_threads()
    try:
        csub.set_num_threads(2)
        one, three = both.profile(x[:1]), both.profile(x)
        assert "conv/sparse" not in one
        assert "conv/sparse" in three
        assert _rel(both(x[:1]), dense(x[:1])) < RTOL_FLOAT and _rel(both(x), csr(x)) < RTOL_FLOAT
        assert "conv/sparse" in small.profile(x[:1, :, :32, :32])
        csub.set_num_threads(1)  # one thread runs whole images: CSR
        assert "conv/sparse" in both.profile(x[:1])
    finally:
        csub.set_num_threads(old)


def test_nan_input_is_an_error_on_integer_paths_and_propagates_on_float_ones(rng):
    x = np.zeros((2, 1, 28, 28), np.float32)
    x[0, 0, 3, 3] = np.nan
    q = models.cnn(widths=(4, 8, 8), regime="quantized", subspace="line")
    for observed in (False, True):  # the batch's own range, then a recorded one
        if observed:
            _prepare(q, rng.normal(0, 1, (4, 1, 28, 28)).astype(np.float32), "quantized", rng)
        with pytest.raises(ValueError, match="NaN"):
            q.compress(1.0)(x)
    out = models.cnn(widths=(4, 8, 8), regime="unstructured").compress(0.1)(x)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_wide_bit_widths_run_fake_quantized_in_float(rng):
    """Above 8 bits there is no int8 product: the runtime fake-quantizes in float, as training does."""
    csub.manual_seed(4)
    model = models.cnn(widths=(8, 16, 16), regime="quantized", subspace="line", norm="bn", bit_range=(8, 12))
    x = rng.normal(0, 1, (3, 1, 28, 28)).astype(np.float32)
    _prepare(model, x, "quantized", rng)
    net = model.compress(1.0)
    for a, bits in ((1.0, 12), (0.5, 10), (0.0, 8)):
        model.set_alpha(a)
        got = net.set_alpha(a)(x)
        assert net.info()["bits"] == bits
        assert _rel(got, model(x)) < (RTOL_FLOAT if bits > 8 else RTOL_INT)


def test_corrupt_activation_range_is_refused(rng):
    model = models.cnn(widths=(4, 8, 8), regime="quantized", subspace="line")
    _prepare(model, rng.normal(0, 1, (4, 1, 28, 28)).astype(np.float32), "quantized", rng)
    meta, t = _file(model)
    name = next(op["act"] for op in meta["graph"] if op.get("act"))
    for bad in ([np.nan, 1.0, 1.0], [2.0, 1.0, 1.0], [0.0, np.inf, 1.0]):
        t2 = dict(t, **{name: np.array(bad, np.float32)})
        assert "activation range" in _load_error(_save(meta, t2))


def _runtime_values(model, shape, values, alpha, x):
    """The runtime's value ids `values` on x at alpha: the file's graph output moved to each value."""
    meta = modelfile.describe(model, shape)
    tensors = {k: np.ascontiguousarray(t, dtype=np.float32) for k, t in model.state_dict().items()}
    out = {}
    for v, size in values:
        meta.update(output=v, num_classes=size)
        out[v] = csub.CompressedNet(_save(meta, tensors), alpha)(x)
    return out


def test_quantized_paths_pick_the_same_codes_up_to_ties(rng):
    """Both paths quantize each layer input with the same grid: the codes of the training forward
    and of the runtime agree at every quantized layer until a layer input lies within float
    rounding of a tie (a half-step), where the two summation orders pick neighbouring codes;
    with no such tie the logits agree to float rounding."""
    csub.manual_seed(3)
    model = models.cpreresnet20(regime="quantized", subspace="line", norm="gn")
    x = np.random.default_rng(0).normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    _prepare(model, x, "quantized", rng)
    meta = modelfile.describe(model, (3, 32, 32))
    names = {id(m): n for n, m in model.named_modules()}
    value_of = {op["w"]: op["x"] for op in meta["graph"] if op["op"] in ("conv", "linear")}
    seen = []
    for layer in model.compressible_layers():  # record each quantized layer's input
        orig = layer.quantize_input_array
        object.__setattr__(layer, "quantize_input_array",
                           lambda a, layer=layer, orig=orig: (seen.append((layer, a.copy())), orig(a))[1])
    ties = 0
    for bits in range(3, 9):
        alpha = csub.nn.quant.alpha_for_bits(bits)
        model.set_alpha(alpha)
        seen.clear()
        want = model(x)
        vals = [(value_of[names[id(lay)] + ".weight"], a[0].size) for lay, a in seen]
        got = _runtime_values(model, (3, 32, 32), vals, alpha, x)
        flipped = False
        for (lay, xt), (v, _) in zip(seen, vals):
            xr = got[v].reshape(xt.shape)
            s, z = csub.functional.quant_params(lay.observer.running_min, lay.observer.running_max, bits)
            lo, hi = -2 ** (bits - 1) - z, 2 ** (bits - 1) - 1 - z
            ct, cr = (np.rint(np.clip(a / np.float32(s), lo, hi)) for a in (xt, xr))
            diff = np.abs(xt.astype(np.float64) - xr)
            if not flipped:  # upstream codes all agree: the inputs differ by float rounding only
                assert diff.max() <= 2e-6 * np.abs(xt).max(), (bits, names[id(lay)])
            d = ct != cr
            if d.any() and not flipped:
                # every disagreement is a tie broken apart by that rounding: the half-step
                # between the two codes lies between the two inputs' x / scale
                assert np.all(np.abs(ct[d] - cr[d]) == 1), (bits, names[id(lay)])
                tie = np.minimum(ct[d], cr[d]) + 0.5
                qt, qr = xt[d] / np.float32(s), xr[d] / np.float32(s)
                assert np.all((np.minimum(qt, qr) <= tie) & (tie <= np.maximum(qt, qr))), (bits, names[id(lay)])
                ties += int(d.sum())
                flipped = True
        if not flipped:  # no tie met: the logits agree to float rounding
            assert _rel(model.compress(alpha, input_shape=(3, 32, 32))(x), want) < RTOL_FLOAT, bits
    assert ties > 0  # the data above does meet ties (at 5, 7 and 8 bits)
