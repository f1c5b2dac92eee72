"""The standalone C library (make -C csrc): the example program against Python, and the model loader
under AddressSanitizer and UndefinedBehaviorSanitizer over corrupt model files."""
import json
import re
import os
import shutil
import subprocess

import numpy as np
import pytest

import csub
from csub import _core, data, models, modelfile
from testkit import header_flips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")


def _make(*targets, **var):
    if not shutil.which("make") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("make or a C compiler is missing")
    import scipy_openblas32

    var.setdefault("BLAS", "scipy")
    args = ["make", "-s", "-C", os.path.join(ROOT, "csrc"), *targets, f"SCIPY_OPENBLAS={scipy_openblas32.get_lib_dir()}"]
    args += [f"{k}={v}" for k, v in var.items()]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module", params=["scipy", "none"])
def classify(request):
    """The example linked with OpenBLAS, and with csub's own sgemm (BLAS=none)."""
    out = os.path.join(BUILD, f"blas-{request.param}")
    _make("lib", "example", BLAS=request.param, BUILD=out)
    return os.path.join(out, "classify")


@pytest.fixture(scope="module")
def model_check():
    _make("fuzz-model")
    return os.path.join(BUILD, "model_check-asan")


def _trained_like(regime, rng):
    """A small cnn with non-trivial state (activation ranges recorded for the quantized regime)."""
    csub.manual_seed(7)
    norm = "bn" if regime == "quantized" else "gn"
    m = models.cnn(widths=(8, 16, 16), regime=regime, subspace="line", norm=norm)
    x = rng.normal(0, 1, (16, 1, 28, 28)).astype(np.float32)
    if regime == "quantized":
        m.train()
        m.set_quantize_inputs(True)
        for a in (0.3, 1.0):
            m.set_alpha(a)
            m(x)
    m.eval()
    return m


@pytest.mark.parametrize("regime", ["unstructured", "structured", "quantized"])
def test_classify_example_agrees_with_python(classify, tmp_path, regime, rng):
    images, labels = data.fashion_mnist("test", bundled=True)
    images, labels = images[:300], labels[:300]
    data.write_idx(str(tmp_path / "images.idx.gz"), images[:, 0])
    data.write_idx(str(tmp_path / "labels.idx"), labels.astype(np.uint8))
    model = _trained_like(regime, rng)
    # the bundled statistics make the inputs realistic
    model.input_mean[...] = data.FASHION_MNIST_MEAN
    model.input_std[...] = data.FASHION_MNIST_STD
    alphas = {"unstructured": [0.05, 0.5, 1.0], "structured": [0.0, 0.5, 1.0], "quantized": [0.0, 0.5, 1.0]}[regime]
    path = csub.export(model, str(tmp_path / "m.safetensors"))
    r = subprocess.run([classify, path, str(tmp_path / "images.idx.gz"), str(tmp_path / "labels.idx"),
                        "-a", ",".join(map(str, alphas)), "-b", "64", "--budget", "1000,0.000001"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = {float(ln.split()[1]): ln.split() for ln in r.stdout.splitlines() if ln.startswith("alpha ")}
    x = ((images / 255.0 - data.FASHION_MNIST_MEAN[0]) / data.FASHION_MNIST_STD[0]).astype(np.float32)
    for a in alphas:
        net = model.compress(a)
        acc_rt = float(np.mean(net.predict(x) == labels))
        model.set_alpha(a)
        acc_py = float(np.mean(np.argmax(model(x), 1) == labels))
        acc_c = float(lines[a][5])
        assert acc_c == pytest.approx(acc_rt, abs=5e-5), (a, r.stdout)  # the same C code (printed to 4 digits)
        assert abs(acc_c - acc_py) <= 2 / len(labels), (a, acc_c, acc_py)  # training forward, to tolerance
    assert "budget 1000.0000 ms: alpha 1.0000" in r.stdout
    assert "no alpha fits" in r.stdout


def test_classify_example_reports_bad_input(classify, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    r = subprocess.run([classify, str(bad), "x", "y"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error -4" in r.stderr
    r = subprocess.run([classify, str(tmp_path / "missing"), "x", "y"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error -3" in r.stderr
    r = subprocess.run([classify], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def _corrupt_models():
    """(name, bytes) of corrupt and valid model files: graph edits, tensor edits, truncations, flips."""
    from safetensors.numpy import save

    out = []
    for regime, norm in (("unstructured", "gn"), ("quantized", "bn"), ("structured", "gn")):
        csub.manual_seed(1)
        m = models.cnn(widths=(4, 8, 8), regime=regime, subspace="line", norm=norm)
        meta = modelfile.describe(m)
        t = {k: np.ascontiguousarray(v, np.float32) for k, v in m.state_dict().items()}
        good = save(t, metadata={"csub": json.dumps(meta)})
        out.append((f"{regime}-good", good))
        for i, op in enumerate(meta["graph"][:8]):
            for key in [k for k in op if k != "op"]:
                for val in (-1, 2 ** 31, 2 ** 62, 1.5, "x", None, [], {"a": 1}):
                    g = json.loads(json.dumps(meta["graph"]))
                    g[i][key] = val
                    out.append((f"{regime}-g{i}-{key}", save(t, metadata={"csub": json.dumps(dict(meta, graph=g))})))
        for key in ("input_shape", "output", "num_classes", "bit_range", "width_range", "regime", "graph", "levels"):
            for val in (None, -5, [1, 2, 3], [10 ** 9, 10 ** 9, 10 ** 9], "q", [[1]]):
                out.append((f"{regime}-{key}", save(t, metadata={"csub": json.dumps(dict(meta, **{key: val}))})))
        name = meta["graph"][0]["w"]
        for shape in ((0,), (1,), (3, 3)):
            t2 = dict(t, **{name: np.zeros(shape, np.float32)})
            out.append((f"{regime}-tensor{shape}", save(t2, metadata={"csub": json.dumps(meta)})))
        for n in range(0, len(good), max(1, len(good) // 60)):
            out.append((f"{regime}-trunc{n}", good[:n]))
        for k, b in enumerate(header_flips(good, np.random.default_rng(3), 60, 4)):
            out.append((f"{regime}-flip{k}", b))
    return out


def test_model_loader_under_sanitizers(model_check, tmp_path):
    files = []
    for i, (name, blob) in enumerate(_corrupt_models()):
        p = tmp_path / f"{i:04d}-{name}.safetensors"
        p.write_bytes(blob)
        files.append(str(p))
    files.append(str(tmp_path / "does-not-exist"))
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               OMP_NUM_THREADS="2")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([model_check, *files], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr[-3000:]
    verdicts = r.stdout.splitlines()
    assert len(verdicts) == len(files)
    for f, v in zip(files, verdicts):
        if f.endswith("-good.safetensors"):
            assert v.startswith("ok "), (f, v)
    assert sum(v.startswith("error") for v in verdicts) > 0.8 * len(files)
    # the Python binding reaches the same verdict through the same loader
    for f, v in list(zip(files, verdicts))[::7]:
        if not os.path.exists(f):
            continue
        with open(f, "rb") as fh:
            blob = fh.read()
        try:
            csub._core.model_load(blob)
            ok = True
        except (ValueError, MemoryError):
            ok = False
        if not ok:  # a file the binding refuses, the C loader refuses too
            assert v.startswith("error"), (f, v)


def _small_export(tmp_path, regime="unstructured"):
    csub.manual_seed(2)
    m = models.cnn(widths=(4, 8, 8), regime=regime, subspace="line", norm="bn" if regime == "quantized" else "gn")
    return csub.export(m, str(tmp_path / f"{regime}.safetensors"))


def test_classify_example_refuses_absurd_arguments(classify, tmp_path):
    """-b 2^61 once overflowed batch * 784 to 0 bytes and wrote past the buffer; every count is checked."""
    images, labels = data.fashion_mnist("test", bundled=True)
    data.write_idx(str(tmp_path / "images.idx"), images[:20, 0])
    data.write_idx(str(tmp_path / "labels.idx"), labels[:20].astype(np.uint8))
    args = [classify, _small_export(tmp_path), str(tmp_path / "images.idx"), str(tmp_path / "labels.idx"), "-a", "1"]
    for flag, value in (("-b", "2305843009213693952"), ("-b", str(2 ** 63)), ("-b", "0"), ("-b", "-3"), ("-b", "12x"),
                        ("-b", str(2 ** 24 + 1)), ("-n", "0"), ("-n", "-5"), ("-n", "99999999999999999999"),
                        ("-t", "0"), ("-t", "x"), ("-t", str(2 ** 31)), ("-t", "1025")):
        r = subprocess.run(args + [flag, value], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (flag, value, r.returncode, r.stderr)
        assert r.stderr.startswith(flag + ":") and value in r.stderr, (flag, value, r.stderr)
    # an IDX header whose dimensions multiply past int64 (2^72 bytes) is refused by its size, not wrapped to 0
    (tmp_path / "huge.idx").write_bytes(bytes([0, 0, 8, 3]) + (2 ** 24).to_bytes(4, "big") * 3)
    r = subprocess.run(args[:2] + [str(tmp_path / "huge.idx")] + args[3:], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "huge.idx: more than 2^32 bytes of data" in r.stderr, r.stderr
    # the largest batch runs (its buffers sized by the images there are), and agrees with a small one
    outs = []
    for b in ("16777216", "3"):
        r = subprocess.run(args + ["-b", b, "-n", "10"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outs.append([ln.split()[5] for ln in r.stdout.splitlines() if ln.startswith("alpha ")])
    assert outs[0] == outs[1]


def test_runtime_size_products_are_checked(tmp_path):
    """csub_model_input_u8 and csub_model_memory with batches whose sizes overflow int64: a clear refusal."""
    import ctypes

    from csub import _core
    from csub.runtime import CompressedNet

    path = _small_export(tmp_path, "quantized")  # no recorded activation ranges: every image's buffers at once
    blob = open(path, "rb").read()
    net = CompressedNet(blob)
    assert net.memory_bytes(1) > 0 and net.memory_bytes(2 ** 24) > net.memory_bytes(1)
    for batch in (2 ** 24 + 1, 2 ** 40, 2 ** 62):
        with pytest.raises(ValueError, match="batch"):
            net.memory_bytes(batch)
    lib = ctypes.CDLL(_core.__file__)
    lib.csub_model_load_memory.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                           ctypes.c_char_p, ctypes.c_size_t]
    lib.csub_model_input_u8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    lib.csub_model_memory.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.csub_model_memory.restype = ctypes.c_int64
    lib.csub_model_error.argtypes = [ctypes.c_void_p]
    lib.csub_model_error.restype = ctypes.c_char_p
    lib.csub_model_free.argtypes = [ctypes.c_void_p]
    m, err = ctypes.c_void_p(), ctypes.create_string_buffer(256)
    assert lib.csub_model_load_memory(blob, len(blob), ctypes.byref(m), err, 256) == 0, err.value
    try:
        pixels = np.zeros((2, 1, 28, 28), np.uint8)
        out = np.full((2, 1, 28, 28), 7.0, np.float32)
        assert lib.csub_model_input_u8(m, pixels.ctypes.data, 2, out.ctypes.data) == 0
        assert np.all(out == out[0, 0, 0, 0]) and out[0, 0, 0, 0] != 7.0
        out[...] = 7.0
        # 2^61 * 784 wraps to 0 in int64 arithmetic: refused before a byte is read or written
        for batch in (2 ** 61, 2 ** 62, 2 ** 63 - 1, 0, -1):
            assert lib.csub_model_input_u8(m, pixels.ctypes.data, batch, out.ctypes.data) == -1
            assert np.all(out == 7.0)
        assert b"batch" in lib.csub_model_error(m)
        assert lib.csub_model_memory(m, 2 ** 62) == -1 and lib.csub_model_memory(m, 0) == -1
    finally:
        lib.csub_model_free(m)


def test_classify_example_follows_csub_isa(classify, tmp_path):
    """The example runs the kernels of the level CSUB_ISA names, and refuses one that does not exist."""
    images, labels = data.fashion_mnist("test", bundled=True)
    data.write_idx(str(tmp_path / "images.idx"), images[:50, 0])
    data.write_idx(str(tmp_path / "labels.idx"), labels[:50].astype(np.uint8))
    args = [classify, _small_export(tmp_path, "quantized"), str(tmp_path / "images.idx"), str(tmp_path / "labels.idx"),
            "-a", "0,0.5,1", "-b", "7"]
    env = {k: v for k, v in os.environ.items() if k != "CSUB_ISA"}
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dict(env, CSUB_ISA="avx9"))
    assert r.returncode == 1 and "CSUB_ISA=avx9: unknown instruction set" in r.stderr, r.stderr
    runs = {}
    for isa in ("baseline", None):
        r = subprocess.run(args, capture_output=True, text=True, timeout=120,
                           env=dict(env, CSUB_ISA=isa) if isa else env)
        assert r.returncode == 0, r.stderr
        runs[isa] = r.stdout.splitlines()
    assert "int8 kernel portable" in runs["baseline"][0]
    # integer products and norms are bit-identical on every level: the same accuracy at every alpha
    acc = {isa: [ln.split()[:6] for ln in out if ln.startswith("alpha ")] for isa, out in runs.items()}
    assert len(acc[None]) == 3 and acc["baseline"] == acc[None]


def test_c_thread_count_is_checked():
    """csub_set_num_threads refuses counts outside [1, CSUB_MAX_THREADS] and keeps the old one."""
    import ctypes

    lib = ctypes.CDLL(_core.__file__)
    before = lib.csub_get_num_threads()
    for n in (0, -1, 1025, 100000):
        assert lib.csub_set_num_threads(n) == -1, n  # CSUB_ERR_ARG
        assert lib.csub_get_num_threads() == before
    assert lib.csub_set_num_threads(1024) == 0 and lib.csub_get_num_threads() == 1024
    assert lib.csub_set_num_threads(before) == 0


def test_shared_library_exports_the_public_header_only(classify):
    """libcsub.so exports exactly the functions csub.h declares (built with -fvisibility=hidden)."""
    if not shutil.which("nm"):
        pytest.skip("nm is missing")
    with open(os.path.join(ROOT, "csrc", "include", "csub.h")) as f:
        header = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    declared = set(re.findall(r"\b(csub_[a-z0-9_]+)\s*\(", header))
    lib = os.path.join(os.path.dirname(classify), "libcsub.so")
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.split()[-1].startswith("csub_")}
    assert declared and exported == declared, (sorted(exported - declared), sorted(declared - exported))
