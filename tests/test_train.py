"""The unstructured regime end to end on the bundled data: training, evaluation, checkpoints."""
import inspect
import json
import os

import numpy as np
import pytest

import csub
from csub import checkpoint, data, models, train


@pytest.fixture(scope="module")
def bundled():
    tr = data.fashion_mnist("train", bundled=True)
    te = data.fashion_mnist("test", bundled=True)
    return tr, te


def _small(tr, n=1024):
    idx = np.arange(n) * (len(tr[1]) // n)
    return tr[0][idx], tr[1][idx]


def _model(subspace="line", regime="unstructured"):
    csub.manual_seed(0)
    return models.cnn(widths=(8, 16, 16), regime=regime, subspace=subspace)


@pytest.fixture(scope="module")
def lcs_l_run(bundled, tmp_path_factory):
    tr, te = bundled
    out = str(tmp_path_factory.mktemp("lcs_l"))
    model = _model()
    hist = train.fit(model, tr, te, method="lcs_l", epochs=3, lr=0.1, out=out, progress=False)
    return model, hist, out


def test_lcs_l_beats_chance_at_every_grid_alpha(lcs_l_run, bundled):
    model, hist, out = lcs_l_run
    results = train.evaluate(model, bundled[1], train.UNSTRUCTURED_ALPHAS)
    assert [r["alpha"] for r in results] == list(train.UNSTRUCTURED_ALPHAS)
    for r in results:
        assert r["accuracy"] > 0.3, r  # chance is 0.1
        assert 0.0 < r["loss"] < 2.3
    with open(os.path.join(out, "eval.json")) as f:
        saved = json.load(f)
    assert [r["alpha"] for r in saved] == list(train.UNSTRUCTURED_ALPHAS)
    assert os.path.exists(os.path.join(out, "eval.csv"))
    assert len(hist) == 3 and all("test_accuracy@1" in h for h in hist)


def test_measured_sparsity_matches_topk(lcs_l_run):
    model, _, _ = lcs_l_run
    for alpha in (0.025, 0.1, 0.5, 0.9):
        model.set_alpha(alpha)
        zeros = total = 0
        for layer in model.compressible_layers():
            w = layer.effective_weight()
            n = w.size
            assert n - np.count_nonzero(w) == int(np.floor((1 - alpha) * n))
            zeros += n - np.count_nonzero(w)
            total += n
        assert abs(zeros / total - (1 - alpha)) < 2e-3
        dense = sum(layer.weight.size for layer in model.weight_layers()) - total
        assert model.sparsity() == pytest.approx(zeros / (total + dense))


def test_first_and_last_layers_stay_dense(lcs_l_run):
    model, _, _ = lcs_l_run
    model.set_alpha(0.05)
    layers = model.weight_layers()
    assert layers[0] not in model.compressible_layers() and layers[-1] not in model.compressible_layers()
    assert np.count_nonzero(layers[0].effective_weight()) == layers[0].weight.size
    assert np.count_nonzero(layers[-1].effective_weight()) == layers[-1].weight.size


def test_training_is_deterministic_for_a_seed(bundled):
    tr = _small(bundled[0])
    runs = []
    for _ in range(2):
        model = _model()
        train.fit(model, tr, method="lcs_l", epochs=1, batch_size=64, progress=False)
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    model = _model()
    train.fit(model, tr, method="lcs_l", epochs=1, batch_size=64, seed=1, progress=False)
    assert any(not np.array_equal(runs[0][k], v) for k, v in model.state_dict().items())


def test_resume_gives_the_uninterrupted_result(bundled, tmp_path):
    tr = _small(bundled[0], 512)
    full = _model()
    train.fit(full, tr, method="lcs_l", epochs=3, batch_size=64, out=str(tmp_path / "full"), progress=False)

    class Killed(Exception):
        pass

    part = _model()
    original = checkpoint.save
    calls = []

    def save_then_die(*a, **k):  # the process dies right after the 2nd epoch's checkpoint
        original(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise Killed

    checkpoint.save = save_then_die
    try:
        with pytest.raises(Killed):
            train.fit(part, tr, method="lcs_l", epochs=3, batch_size=64, out=str(tmp_path / "part"),
                      progress=False)
    finally:
        checkpoint.save = original
    resumed = _model()  # a fresh process: new model, state only from disk
    hist = train.fit(resumed, tr, method="lcs_l", epochs=3, batch_size=64, out=str(tmp_path / "part"),
                     resume=True, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.safetensors")
    checkpoint.save(path, {"model": {"w": np.ones(3, np.float32)}}, {"epoch": 1})
    before = open(path, "rb").read()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        checkpoint.save(path, {"model": {"w": np.zeros(3, np.float32)}}, {"epoch": 2})
    monkeypatch.undo()
    assert open(path, "rb").read() == before  # the old checkpoint is intact
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    state = checkpoint.load(path)
    assert state["meta"]["epoch"] == 1
    np.testing.assert_array_equal(state["model"]["w"], np.ones(3))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="bad.safetensors"):
        checkpoint.load(str(path))


def test_resume_refuses_another_configuration(bundled, tmp_path):
    tr = _small(bundled[0], 256)
    train.fit(_model(), tr, method="lcs_l", epochs=1, batch_size=64, out=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="resume"):
        train.fit(_model(), tr, method="lcs_l", epochs=1, batch_size=64, lr=0.05, out=str(tmp_path),
                  resume=True, progress=False)


def test_alpha_schedule():
    gen = csub.random.Generator(3)
    s = train.AlphaSchedule("lcs_l", 100, gen)
    draws = [s(0) for _ in range(2000)]
    assert all(t == pytest.approx(1.0) for _, t in draws)  # dense at the start of the warm-up
    a, t = s(50)
    assert t == pytest.approx(a + (1 - a) * 0.5)
    a, t = s(100)
    assert t == a
    alphas = np.array([s(200)[0] for _ in range(4000)])
    assert 0.2 < np.mean(alphas == 0.025) < 0.3 and 0.2 < np.mean(alphas == 1.0) < 0.3
    p = train.AlphaSchedule("lcs_p", 100, gen)
    assert p(99) == (1.0, 1.0) and 0.025 <= p(100)[1] <= 1.0
    tt = train.AlphaSchedule("target_topk", 100, gen, topk=0.1)
    assert tt(0) == (0.1, 1.0) and tt(50)[1] == pytest.approx(0.55) and tt(100) == (0.1, 0.1)
    assert train.AlphaSchedule("standard", 100, gen)(5) == (1.0, 1.0)


def test_target_topk_and_standard_run(bundled):
    tr = _small(bundled[0], 256)
    m = _model(subspace=None)
    train.fit(m, tr, method="target_topk", topk=0.1, epochs=1, batch_size=64, progress=False)
    r = train.evaluate(m, bundled[1], [0.1])[0]
    assert r["topk"] == 0.1 and r["sparsity"] > 0.7  # the dense first conv and classifier hold ~15 %
    s = _model(subspace=None, regime=None)
    train.fit(s, tr, method="standard", epochs=1, batch_size=64, progress=False)
    assert train.evaluate(s, bundled[1], [1.0])[0]["sparsity"] == 0.0


def test_bad_arguments(bundled):
    tr = _small(bundled[0], 128)
    with pytest.raises(ValueError, match="method"):
        train.fit(_model(), tr, method="nope", progress=False)
    with pytest.raises(ValueError, match="model"):
        train.fit(_model(subspace="point"), tr, method="lcs_l", progress=False)
    with pytest.raises(ValueError, match="topk"):
        train.fit(_model(subspace=None), tr, method="target_topk", progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train.fit(_model(), tr, method="lcs_l", epochs=0, progress=False)
    with pytest.raises(ValueError, match="resume"):
        train.fit(_model(), tr, method="lcs_l", resume=True, progress=False)
    with pytest.raises(TypeError, match="train"):
        train.fit(_model(), (tr[0].astype(np.float32), tr[1]), method="lcs_l", progress=False)
    with pytest.raises(ValueError, match="alpha_sampling"):
        train.fit(_model(), tr, method="lcs_l", alpha_sampling=(0.0, 1.0, 0.5), progress=False)
    with pytest.raises(ValueError, match="topk"):
        _model().set_alpha(0.0)


# -- quantized regime --

def _qmodel(subspace="line", norm="gn"):
    csub.manual_seed(0)
    return models.cnn(widths=(8, 16, 16), regime="quantized", subspace=subspace, norm=norm)


def test_quantized_lcs_l_beats_chance_at_every_bit_width(bundled, tmp_path):
    tr, te = bundled
    model = _qmodel()
    train.fit(model, tr, te, method="lcs_l", regime="quantized", epochs=2, out=str(tmp_path), progress=False)
    with open(tmp_path / "eval.json") as f:
        results = json.load(f)
    assert [r["bits"] for r in results] == [3, 4, 5, 6, 7, 8]
    sizes = [r["model_bytes"] for r in results]
    assert sizes == sorted(sizes) and len(set(sizes)) == 6
    for r in results:
        assert r["accuracy"] > 0.4, r
    # every compressible layer saw activations after the warm-up and keeps its range
    for layer in model.compressible_layers():
        assert layer.act_range[2] == 1.0 and layer.act_range[0] <= 0.0 <= layer.act_range[1]


def test_quantized_forward_uses_the_grid(bundled):
    model = _qmodel(subspace="point")
    model.eval()
    model.set_alpha(1 / 6)  # 3 bits
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    model(x)
    for layer in model.compressible_layers():
        assert layer.num_bits == 3
        assert len(np.unique(layer._w)) <= 8      # the weight lies on a 3-bit grid
        assert len(np.unique(layer._x)) <= 8      # and so does the input
    first, last = model.weight_layers()[0], model.weight_layers()[-1]
    assert first.num_bits is None and last.num_bits is None


def test_model_bytes_hand_count():
    model = models.mlp(hidden=(64, 32, 32), regime="quantized", subspace="line", norm="gn")
    model.set_alpha(1 / 6)
    # float: first Linear 784*64 weights, last 32*10 weights + 10 bias, 3 norms (2 * 64, 2 * 32, 2 * 32);
    # quantized at 3 bits: 64*32 and 32*32 weights, + 8 bytes (scale, zero point) each
    floats = 784 * 64 + 32 * 10 + 10 + 2 * (64 + 32 + 32)
    packed = (64 * 32 * 3 + 7) // 8 + 8 + (32 * 32 * 3 + 7) // 8 + 8
    assert model.model_bytes() == 4 * floats + packed


def test_target_bits_with_batch_norm_folds(bundled):
    model = _qmodel(subspace=None, norm="bn")
    conv = model.compressible_layers()[0]
    assert conv.fold_norm is not None
    tr = _small(bundled[0], 256)
    train.fit(model, tr, method="target_bits", regime="quantized", num_bits=4, epochs=1, batch_size=64,
              warmup=0.0, progress=False)
    assert conv.act_range[2] == 1.0  # no warm-up: inputs were observed from the first step
    model.eval()
    model.set_alpha(train.default_alphas("target_bits", regime="quantized", num_bits=4)[0])
    x = np.random.default_rng(1).standard_normal((2, 8, 28, 28)).astype(np.float32)
    y = conv(x)
    s = conv.fold_norm.fold_scale()
    wf = conv.weight.data * s[:, None, None, None]
    wq = csub.functional.fake_quantize(wf, 4)
    xq = csub.functional.fake_quantize(x, 4, float(conv.act_range[0]), float(conv.act_range[1]))
    ref = csub._core.conv2d_forward(xq, wq, None, 1, 1) / s[None, :, None, None]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_subspace_with_batch_norm_warns(bundled):
    tr = _small(bundled[0], 128)
    with pytest.warns(UserWarning, match="batch norm"):
        train.fit(_qmodel(norm="bn"), tr, method="lcs_l", regime="quantized", epochs=1, batch_size=64,
                  progress=False)


def test_quantized_bad_arguments(bundled):
    tr = _small(bundled[0], 128)
    with pytest.raises(ValueError, match="num_bits"):
        train.fit(_qmodel(subspace=None), tr, method="target_bits", regime="quantized", num_bits=9,
                  progress=False)
    with pytest.raises(ValueError, match="method"):
        train.fit(_qmodel(subspace=None), tr, method="target_topk", regime="quantized", topk=0.1,
                  progress=False)
    with pytest.raises(ValueError, match="bit_range"):
        models.cnn(regime="quantized", bit_range=(1, 8))
    layer = csub.nn.Conv2d(2, 2, 3)
    layer.num_bits = 4
    with pytest.raises(RuntimeError, match="enable_quantization"):
        layer(np.zeros((1, 2, 5, 5), np.float32))


def test_fit_keeps_its_keywords_and_defaults():
    """fit's parameters in order with their defaults: the calling contract of scripts and the CLI."""
    empty = inspect.Parameter.empty
    assert [(p.name, p.default, p.kind) for p in inspect.signature(train.fit).parameters.values()] == [
        (name, default, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name, default in [
            ("model", empty), ("train", empty), ("test", None), ("method", "lcs_l"), ("regime", "unstructured"),
            ("epochs", 10), ("batch_size", 128), ("lr", None), ("momentum", 0.9), ("weight_decay", 5e-4),
            ("warmup", 0.8), ("lr_warmup_epochs", None), ("seed", 0), ("out", None), ("progress", True),
            ("resume", False), ("topk", None), ("beta", 1.0), ("alpha_sampling", (0.025, 1.0, 0.5)),
            ("augment", True), ("eval_alphas", None), ("num_bits", None), ("distributed", None),
            ("alpha_per_rank", False), ("sync_batchnorm", False)]]
