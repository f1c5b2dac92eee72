"""What csub writes, every reader reads; what is damaged, every reader refuses.

Checksums (the ``csub.crc32`` metadata entry, format in csub/checkpoint.py and
csrc/safetensors.c) recomputed here with zlib from the documented format; the
C reader's own CRC-32 against zlib; checkpoints and model files damaged in many
ways (truncated, bytes flipped in the header, metadata and tensor data, keys
deleted or renamed, dtypes and shapes changed, the epoch tampered with), each
of which must be a ValueError naming the file, in Python and in C alike;
export's validation; every model and regime exported and loaded by the C
runtime.
"""
import json
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from safetensors.numpy import save as st_save

import csub
from csub import _core, checkpoint, data, models, modelfile, train
from test_stfile import flipped, header_mutated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- helpers

def split(raw):
    """(header dict, data section) of safetensors bytes."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def reference_sums(raw):
    """The checksum entry recomputed from the documented format with zlib."""
    header, body = split(raw)
    md = header["__metadata__"]
    crc = 0
    for k in sorted((k for k in md if k != "csub.crc32"), key=str.encode):
        crc = zlib.crc32(k.encode() + b"\0" + md[k].encode() + b"\0", crc)
    sums = {"__metadata__": f"{crc:08x}"}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        desc = (h["dtype"] + " " + ",".join(map(str, h["shape"])) + "\n").encode()
        sums[name] = f"{zlib.crc32(body[b:e], zlib.crc32(desc)):08x}"
    return sums


def unsigned(metadata, tensors):
    """A file as csub wrote it before it stored checksums (safetensors.numpy.save)."""
    return st_save(tensors, metadata={k: v for k, v in metadata.items() if k != "csub.crc32"})


def signed(metadata, tensors):
    return checkpoint.to_bytes(tensors, {k: v for k, v in metadata.items() if k != "csub.crc32"})


DATA = None


def _data():
    global DATA
    if DATA is None:
        tr = data.fashion_mnist("train", bundled=True)
        DATA = tr[0][:128], tr[1][:128]
    return DATA


def _fit(out, resume=False):
    csub.manual_seed(0)
    model = models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line")
    train.fit(model, _data(), method="lcs_l", epochs=2, batch_size=64, out=str(out), progress=False, resume=resume)
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The bytes of a real checkpoint after 1 of 2 epochs, and the model after both."""
    out = tmp_path_factory.mktemp("ck")
    original, raw = checkpoint.save, {}

    def keep_first(path, groups, meta):
        original(path, groups, meta)
        if meta["epoch"] == 1:
            raw["first"] = open(path, "rb").read()

    checkpoint.save = keep_first
    try:
        full = _fit(out)
    finally:
        checkpoint.save = original
    return raw["first"], full


@pytest.fixture(scope="module")
def model_file():
    csub.manual_seed(1)
    m = models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line")
    return modelfile.to_bytes(m, levels=[{"alpha": 0.5, "accuracy": 0.8}, {"alpha": 1.0, "accuracy": 0.9}])


# --------------------------------------------------------------- checksums

def test_checksums_follow_the_documented_format(ckpt, model_file):
    for raw in (ckpt[0], model_file):
        header, _ = split(raw)
        assert json.loads(header["__metadata__"]["csub.crc32"]) == reference_sums(raw)


def test_c_crc32_agrees_with_zlib():
    """Tensors of every length 0..70 (the 8-byte loop and its tail) and a large one: the C reader
    accepts the zlib checksums, and refuses each when one bit of it or of the data changes."""
    rng = np.random.default_rng(0)
    tensors = {f"t{n}": rng.integers(0, 256, n, dtype=np.uint8) for n in range(71)}
    tensors["big"] = rng.standard_normal((3, 1000, 7)).astype(np.float32)
    tensors["scalar"] = np.array(2.5, np.float64)
    md = {"csub": '{"k": "\\u00e9 中"}', "a": "", "é": "x"}
    raw = st_save(tensors, metadata=dict(md, **{"csub.crc32": "{}"}))
    sums = reference_sums(raw)
    good = st_save(tensors, metadata=dict(md, **{"csub.crc32": json.dumps(sums)}))
    assert set(_core.st_parse(good)[1]) == set(tensors)
    for name in sorted(sums):
        bad = dict(sums, **{name: f"{int(sums[name], 16) ^ 1 << (len(name) % 32):08x}"})
        with pytest.raises(ValueError, match="does not match the stored") as e:
            _core.st_parse(st_save(tensors, metadata=dict(md, **{"csub.crc32": json.dumps(bad)})))
        assert (name if name != "__metadata__" else "__metadata__") in str(e.value)


@pytest.mark.parametrize("entry, message", [
    ("not json", "csub.crc32"), ("[]", "not a JSON object"), ('{"__metadata__": 1}', "8 lowercase hex"),
    ('{"__metadata__": "ABCDEF01"}', "8 lowercase hex"), ('{"__metadata__": "0000000"}', "8 lowercase hex"),
    ("{}", 'no checksum for "__metadata__"'),
])
def test_malformed_checksum_entry_is_refused(entry, message):
    raw = st_save({"w": np.ones(2, np.float32)}, metadata={"csub.crc32": entry})
    with pytest.raises(ValueError, match=message):
        _core.st_parse(raw)
    with pytest.raises(ValueError, match="csub.crc32"):
        checkpoint.read(raw, "f")


def test_checksum_entry_must_match_the_tensors():
    w = {"w": np.ones(2, np.float32)}
    raw = checkpoint.to_bytes(w, {"csub": "{}"})
    header, _ = split(raw)
    sums = json.loads(header["__metadata__"]["csub.crc32"])
    md = dict(header["__metadata__"])
    for bad, tensors, message in ((dict(sums, x="00000000"), w, "not a tensor of the file"),
                                  (sums, dict(w, v=np.zeros(1, np.float32)), 'has no checksum')):
        raw = st_save(tensors, metadata=dict(md, **{"csub.crc32": json.dumps(bad)}))
        with pytest.raises(ValueError, match=message):
            _core.st_parse(raw)
        with pytest.raises(ValueError, match=message.replace('"', "")):
            checkpoint.read(raw, "f")


def test_files_without_checksums_are_read_unverified(ckpt, model_file, tmp_path):
    """Written by csub before it stored checksums: same format version, read as before."""
    md, tensors = checkpoint.read(ckpt[0])
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(unsigned(md, tensors))
    assert checkpoint.load(str(path))["meta"]["epoch"] == 1
    _fit(tmp_path, resume=True)  # resumes
    md, tensors = checkpoint.read(model_file)
    path = tmp_path / "m.safetensors"
    path.write_bytes(unsigned(md, tensors))
    x = np.random.default_rng(0).normal(0, 1, (2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(csub.CompressedNet(str(path))(x), csub.CompressedNet(model_file)(x))
    assert csub.load(str(path)).levels == [{"alpha": 0.5, "accuracy": 0.8}, {"alpha": 1.0, "accuracy": 0.9}]


# ------------------------------------------------------------ model files

def _readers(raw, tmp_path):
    """The verdict of each reader of a model file: None (read) or the ValueError's message.
    Any other exception propagates (and fails the test)."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw)
    out = {}
    for name, read in (("load", lambda: csub.load(str(path))), ("CompressedNet", lambda: csub.CompressedNet(str(path))),
                       ("C", lambda: _core.model_load(raw))):
        try:
            read()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def test_model_file_bit_flips_are_refused_by_every_reader(model_file, tmp_path):
    n = struct.unpack("<Q", model_file[:8])[0]
    rng = np.random.default_rng(0)
    for pos in rng.integers(8 + n, len(model_file), 120):
        bad = bytearray(model_file)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        verdicts = _readers(bytes(bad), tmp_path)
        for reader, msg in verdicts.items():
            assert msg is not None and "does not match the stored" in msg, (pos, reader)
            if reader != "C":
                assert "m.safetensors" in msg, (reader, msg)
        assert verdicts["C"].split("tensor ")[1].split(":")[0].strip('"') in verdicts["load"]


def test_python_and_c_agree_on_which_model_files_are_valid(model_file, tmp_path):
    """Truncations, flips anywhere, header edits, bytes appended: every reader refuses, or all read."""
    n = struct.unpack("<Q", model_file[:8])[0]
    variants = [model_file[:k] for k in range(0, len(model_file), max(1, len(model_file) // 60))]
    variants += [model_file, model_file + b"\0", model_file + b"junk" * 10, model_file[:-4]]
    variants += [flipped(model_file, np.random.default_rng(s), 1 + s % 3) for s in range(150)]
    variants += [header_mutated(model_file, np.random.default_rng(s)) for s in range(150)]
    # padding the header with spaces keeps the file valid for every reader
    padded = model_file[8:8 + n] + b" " * 8
    variants.append(struct.pack("<Q", len(padded)) + padded + model_file[8 + n:])
    accepted = refused = 0
    for i, raw in enumerate(variants):
        v = _readers(raw, tmp_path)
        ok = {k: m is None for k, m in v.items()}
        assert len(set(ok.values())) == 1, (i, v)
        if ok["C"]:
            accepted += 1
        else:
            refused += 1
    assert refused > 300 and accepted >= 2  # the intact file and the padded header


def test_trailing_bytes_are_refused_everywhere(model_file, ckpt, tmp_path):
    for extra in (b"\0", b"x" * 9):
        v = _readers(model_file + extra, tmp_path)
        assert all(f"{len(extra)} trailing bytes after the last tensor" in m for m in v.values()), v
        path = tmp_path / "checkpoint.safetensors"
        path.write_bytes(ckpt[0] + extra)
        with pytest.raises(ValueError, match=f"checkpoint.safetensors: {len(extra)} trailing bytes"):
            checkpoint.load(str(path))
    # a gap after the first tensor: the reference layout rule, in both languages
    header, body = split(model_file)
    order = sorted((h["data_offsets"][0], k) for k, h in header.items() if k != "__metadata__")
    first_end = header[order[0][1]]["data_offsets"][1]
    for _, k in order[1:]:
        header[k]["data_offsets"] = [o + 4 for o in header[k]["data_offsets"]]
    text = json.dumps(header).encode()
    gap = struct.pack("<Q", len(text)) + text + body[:first_end] + b"\0" * 4 + body[first_end:]
    v = _readers(gap, tmp_path)
    assert all(m is not None and "starts at byte" in m for m in v.values()), v


@pytest.fixture(scope="module")
def classify():
    from test_clib import _make
    out = os.path.join(ROOT, "build", "blas-none")
    _make("lib", "example", BLAS="none", BUILD=out)
    return os.path.join(out, "classify")


def _classify_verdict(binary, path):
    """'read' when classify loads the model (it then fails on the missing images), else its error."""
    r = subprocess.run([binary, str(path), str(path) + ".no-images", "x"], capture_output=True, text=True,
                       timeout=120)
    if "no-images: cannot open" in r.stderr:
        return "read"
    assert r.returncode == 1 and r.stderr.startswith("error "), r.stderr
    return r.stderr


def test_classify_refuses_damage_and_trailing_bytes(classify, model_file, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_file)
    assert _classify_verdict(classify, path) == "read"
    path.write_bytes(model_file + b"\0\0")
    assert "2 trailing bytes after the last tensor" in _classify_verdict(classify, path)
    bad = bytearray(model_file)
    bad[-3] ^= 0x10
    path.write_bytes(bytes(bad))
    err = _classify_verdict(classify, path)
    assert "error -4" in err and str(path) in err and "does not match the stored" in err


# ------------------------------------------------------------- checkpoints

def _resume(raw, tmp_path, i):
    """fit(resume=True) on a checkpoint of these bytes: None if it resumed, else (type, message)."""
    out = tmp_path / f"r{i}"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(raw)
    try:
        _fit(out, resume=True)
    except Exception as e:  # noqa: BLE001 - every type is tallied, only ValueError passes
        return type(e).__name__, str(e)
    return None


def _retagged(raw, edit):
    """The checkpoint parsed, edited by edit(meta, tensors) in place, written back."""
    md, tensors = checkpoint.read(raw)
    meta = json.loads(md["csub"])
    tensors = dict(tensors)
    new_meta = edit(meta, tensors)
    md = dict(md, csub=new_meta if isinstance(new_meta, str) else json.dumps(meta))
    return md, tensors


def _structural_edits(raw):
    md, tensors = checkpoint.read(raw)
    model_keys = sorted(k for k in tensors if k.startswith("model."))
    w = model_keys[0]

    def drop(prefix):
        def edit(m, t):
            for k in [k for k in t if k.startswith(prefix)]:
                del t[k]
        return edit

    def pop(key):
        def edit(m, t):
            del t[key]
        return edit

    def setmeta(**kw):
        return lambda m, t: m.update(kw)

    def delmeta(key):
        def edit(m, t):
            del m[key]
        return edit

    def settensor(key, value):
        return lambda m, t: t.__setitem__(key, value)

    def rename(old, new):
        return lambda m, t: t.__setitem__(new, t.pop(old))

    edits = {
        "no model group": drop("model."), "no optim group": drop("optim."), "no rng group": drop("rng."),
        "one model tensor gone": pop(w),
        "velocity gone": pop("optim.velocity.0"), "steps gone": pop("optim.steps"),
        "renamed weight": rename(w, w + "x"), "renamed group": rename(w, "modle" + w[5:]),
        "no group in name": rename("rng.state", "state"),
        "extra tensor": settensor("model.extra", np.zeros(3, np.float32)),
        "extra group": settensor("junk.x", np.zeros(3, np.float32)),
        "tensor in the meta group": settensor("meta.x", np.zeros(3, np.float32)),
        "tensor over a meta field": settensor("meta.epoch", np.array([5], np.int64)),
        "weight float64": settensor(w, tensors[w].astype(np.float64)),
        "weight int32": settensor(w, tensors[w].astype(np.int32)),
        "weight transposed": settensor(w, np.ascontiguousarray(tensors[w].T)),
        "weight flattened": settensor(w, tensors[w].reshape(-1)),
        "weight one short": settensor(w, tensors[w].reshape(-1)[:-1]),
        "steps int32": settensor("optim.steps", tensors["optim.steps"].astype(np.int32)),
        "steps negative": settensor("optim.steps", np.array([-1], np.int64)),
        "steps 2-d": settensor("optim.steps", tensors["optim.steps"].reshape(1, 1)),
        "lr nan": settensor("optim.lr", np.array([np.nan])),
        "lr negative": settensor("optim.lr", np.array([-0.1])),
        "rng float": settensor("rng.state", tensors["rng.state"].astype(np.float32)),
        "rng zero": settensor("rng.state", np.zeros(4, np.uint64)),
        "rng short": settensor("rng.state", tensors["rng.state"][:3]),
        "epoch gone": delmeta("epoch"), "config gone": delmeta("config"), "history gone": delmeta("history"),
        "epoch string": setmeta(epoch="1"), "epoch float": setmeta(epoch=1.0), "epoch bool": setmeta(epoch=True),
        "epoch null": setmeta(epoch=None), "epoch 0": setmeta(epoch=0), "epoch -1": setmeta(epoch=-1),
        "epoch 2 (skips training)": setmeta(epoch=2), "epoch 99": setmeta(epoch=99),
        "config list": setmeta(config=[]), "config other lr": lambda m, t: m["config"].update(lr=0.5),
        "config missing key": lambda m, t: m["config"].__delitem__("seed"),
        "history dict": setmeta(history={}), "history empty": setmeta(history=[]),
        "history entry number": setmeta(history=[1]),
        "history wrong epoch": lambda m, t: m["history"][0].update(epoch=2),
        "meta list": lambda m, t: "[]", "meta number": lambda m, t: "3", "meta not json": lambda m, t: "{epoch",
        "meta null": lambda m, t: "null",
    }
    return edits


def _epoch_set(raw, digit):
    """The checkpoint with the epoch's digit in the metadata text replaced in place (lengths kept)."""
    key = b'epoch\\": '
    at = raw.index(key + b"1,") + len(key)
    return raw[:at] + digit + raw[at + 1:]


def _byte_edits(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n]
    out = {}
    for k in list(range(0, len(raw), max(1, len(raw) // 40))) + [len(raw) - 1, 8 + n, 7]:
        out[f"truncated to {k}"] = raw[:k]
    rng = np.random.default_rng(3)
    for region, lo, hi in (("length", 0, 8), ("header", 8, 8 + n), ("data", 8 + n, len(raw))):
        for j in range(30 if region != "length" else 8):
            b = bytearray(raw)
            pos = int(rng.integers(lo, hi))
            b[pos] ^= 1 << int(rng.integers(0, 8))
            out[f"bit flip in {region} at {pos}"] = bytes(b)
    meta_at = header.index(b'csub"')
    for j in range(20):  # inside the metadata JSON: digits, quotes, letters
        b = bytearray(raw)
        pos = 8 + meta_at + int(rng.integers(0, 600))
        b[pos] = b"0123456789{}\"x "[j % 15]
        out[f"metadata byte {pos}"] = bytes(b)
    out["epoch 1 -> 2 in place"] = _epoch_set(raw, b"2")
    out["epoch 1 -> 0 in place"] = _epoch_set(raw, b"0")
    for s in range(40):
        out[f"header edit {s}"] = header_mutated(raw, np.random.default_rng(s))
    out["appended byte"] = raw + b"\0"
    out["empty"] = b""
    return out


def _category(name):
    kind, what = name.split(": ", 1)
    if kind == "bytes":
        for c in ("truncated", "bit flip in length", "bit flip in header", "bit flip in data", "metadata byte",
                  "epoch", "header edit"):
            if what.startswith(c):
                return c
        return "appended or empty"
    return f"{kind}: " + ("meta fields" if what.split()[0] in ("epoch", "config", "history", "meta") else "tensors")


def test_every_checkpoint_corruption_is_a_clear_error(ckpt, tmp_path):
    """Resume on a damaged checkpoint: ValueError naming the file, every time; a tally per class."""
    raw, full = ckpt
    assert _resume(raw, tmp_path, "intact") is None
    cases = {f"bytes: {k}": v for k, v in _byte_edits(raw).items()}
    for name, edit in _structural_edits(raw).items():
        md, tensors = _retagged(raw, edit)
        cases[f"signed: {name}"] = signed(md, tensors)      # checksums made to match: the structure check
        cases[f"unsigned: {name}"] = unsigned(md, tensors)  # an older file: the structure check alone
    tally, failures = {}, []
    for i, (name, bad) in enumerate(cases.items()):
        if bad == raw:
            continue
        got = _resume(bad, tmp_path, i)
        cls = _category(name)
        t = tally.setdefault(cls, [0, 0])
        t[0] += 1
        if got and got[0] == "ValueError" and "checkpoint.safetensors" in got[1]:
            t[1] += 1
        else:
            failures.append((name, got))
    print("\nclass: cases, ValueError naming the file")
    for cls, (n, ok) in sorted(tally.items()):
        print(f"  {cls}: {n}, {ok}")
    assert not failures, failures[:10]
    assert sum(n for n, _ in tally.values()) > 250


def test_tampered_epoch_does_not_skip_training(ckpt, tmp_path):
    raw, _ = ckpt
    got = _resume(_epoch_set(raw, b"2"), tmp_path, "epoch")
    assert got[0] == "ValueError" and "__metadata__: CRC-32" in got[1], got


def test_single_bit_flips_in_tensor_data(ckpt, tmp_path):
    """Every flipped bit of the data section is caught and names its tensor."""
    raw, _ = ckpt
    header, body = split(raw)
    n = len(raw) - len(body)
    rng = np.random.default_rng(5)
    for pos in rng.integers(0, len(body), 200):
        b = bytearray(raw)
        b[n + pos] ^= 1 << int(rng.integers(0, 8))
        owner = [k for k, h in header.items() if k != "__metadata__" and h["data_offsets"][0] <= pos
                 < h["data_offsets"][1]][0]
        with pytest.raises(ValueError) as e:
            checkpoint.read(bytes(b), "ck")
        assert f"ck: tensor {owner!r}: CRC-32" in str(e.value)
        with pytest.raises(ValueError, match=f'tensor "{owner}": CRC-32'):
            _core.st_parse(bytes(b))


def test_resume_after_an_intact_checkpoint_still_matches(ckpt, tmp_path):
    raw, full = ckpt
    out = tmp_path / "ok"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(raw)
    resumed = _fit(out, resume=True)
    for k, v in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)


# ------------------------------------------------------------------ export

def _small_cnn():
    return models.cnn(widths=(4, 8, 8), regime="unstructured", subspace="line")


@pytest.mark.parametrize("kwargs, message", [
    (dict(levels=[{"alpha": 0.5, "accuracy": float("nan")}]), r"levels\[0\].accuracy: expected a finite"),
    (dict(levels=[{"alpha": 0.5, "accuracy": float("inf")}]), r"levels\[0\].accuracy"),
    (dict(levels=[{"alpha": 0.5, "accuracy": 0.9}, {"alpha": 1.0}]), r"levels\[1\]: missing field 'accuracy'"),
    (dict(levels=[{"accuracy": 0.9}]), r"levels\[0\]: missing field 'alpha'"),
    (dict(levels=[{"alpha": 1.5, "accuracy": 0.9}]), r"levels\[0\].alpha: expected a finite number in \[0, 1\]"),
    (dict(levels=[{"alpha": -0.1, "accuracy": 0.9}]), r"levels\[0\].alpha"),
    (dict(levels=[{"alpha": float("nan"), "accuracy": 0.9}]), r"levels\[0\].alpha"),
    (dict(levels=[{"alpha": "1", "accuracy": 0.9}]), r"levels\[0\].alpha"),
    (dict(levels=[{"alpha": True, "accuracy": 0.9}]), r"levels\[0\].alpha"),
    (dict(levels=[{"alpha": 1.0, "accuracy": 90.0}]), r"levels\[0\].accuracy"),
    (dict(levels=[(1.0, 0.9)]), r"levels\[0\]: expected a dict"),
    (dict(levels={"alpha": 1.0, "accuracy": 0.9}), "levels: expected a list"),
    (dict(levels=3), "levels: expected a list"),
    (dict(input_shape=(3, 28, 28)), "input_shape: .* has 3 channels, the model's first layer takes 1"),
    (dict(input_shape=(1, 20, 20)), "C runtime cannot load .*input_shape"),
    (dict(input_shape=(1, 28)), "input_shape: expected"),
    (dict(input_shape=(1, 28.0, 28)), "input_shape: expected"),
    (dict(input_shape=(1, 0, 28)), "input_shape: expected"),
    (dict(input_shape="1,28,28"), "input_shape: expected"),
])
def test_export_validates_before_writing(tmp_path, kwargs, message):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=message):
        csub.export(_small_cnn(), str(path), **kwargs)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match=message):
        csub.export(_small_cnn(), str(path), **kwargs)
    assert path.read_bytes() == b"old"


def test_export_mlp_input_shape_is_checked():
    with pytest.raises(ValueError, match="holds 12 values per sample, the model's first layer takes 784"):
        modelfile.to_bytes(models.mlp(), input_shape=(3, 2, 2))
    assert modelfile.describe(models.mlp(), input_shape=(784, 1, 1))["input_shape"] == [784, 1, 1]


def test_export_levels_from_evaluate_round_trip(tmp_path):
    m = _small_cnn()
    levels = [dict(alpha=a, accuracy=0.5 + a / 4, loss=1.0, keep=a) for a in (0.25, 1.0)]  # extra keys dropped
    csub.export(m, str(tmp_path / "m.safetensors"), levels=levels)
    net = csub.CompressedNet(str(tmp_path / "m.safetensors"))
    assert net.meta["levels"] == [{"alpha": 0.25, "accuracy": 0.5625}, {"alpha": 1.0, "accuracy": 0.75}]
    assert net.default_alphas() == [0.25, 1.0]


EXPORTS = [(name, kw, regime, subspace)
           for name, kw in [("mlp", {}), ("cnn", dict(widths=(4, 8, 8))), ("cpreresnet20", {}),
                            ("cpreresnet20", dict(norm="bn"))]
           for regime in (None, "unstructured", "structured", "quantized")
           for subspace in (None, "point", "line")
           if not (kw.get("norm") == "bn" and regime == "structured")]
EXPORTS.append(("resnet18", dict(num_classes=10), None, None))


@pytest.mark.parametrize("name, kw, regime, subspace", EXPORTS)
def test_every_export_loads_in_the_c_runtime(tmp_path, classify, name, kw, regime, subspace):
    """export writes; the Python reader, CompressedNet, the C loader and the classify example read it."""
    csub.manual_seed(2)
    m = models.build(name, regime=regime, subspace=subspace, **kw)
    shape = (3, 32, 32) if name == "resnet18" else None  # its 224 x 224 default is slow here
    path = tmp_path / "m.safetensors"
    csub.export(m, str(path), input_shape=shape, levels=[{"alpha": 1.0, "accuracy": 0.5}])
    raw = path.read_bytes()
    checkpoint.read(raw, str(path))
    net = csub.CompressedNet(str(path))
    c, h, w = net.meta["input_shape"]
    y = net(np.random.default_rng(0).normal(0, 1, (2, c, h, w)).astype(np.float32))
    assert y.shape == (2, net.meta["num_classes"]) and np.isfinite(y).all()
    assert _classify_verdict(classify, path) == "read"


def test_model_loader_checks_under_sanitizers(model_file, tmp_path):
    """The C model loader's layout and checksum checks on damaged files, in the AddressSanitizer +
    UBSan build: every damaged file refused with error -4, the intact one run, no report."""
    from test_clib import _make
    _make("fuzz-model")
    n = struct.unpack("<Q", model_file[:8])[0]
    rng = np.random.default_rng(4)
    files = {"good": model_file, "trailing": model_file + b"\0" * 3, "short": model_file[:-1]}
    for i, pos in enumerate(rng.integers(8 + n, len(model_file), 40)):
        b = bytearray(model_file)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        files[f"flip-{i}"] = bytes(b)
    paths = []
    for name, raw in files.items():
        paths.append(tmp_path / f"{name}.safetensors")
        paths[-1].write_bytes(raw)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
               OMP_NUM_THREADS="2")
    env.pop("LD_PRELOAD", None)
    r = subprocess.run([os.path.join(ROOT, "build", "model_check-asan"), *map(str, paths)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr[-3000:]
    verdicts = r.stdout.splitlines()
    assert verdicts[0].startswith("ok ")
    assert "3 trailing bytes" in verdicts[1] and verdicts[2].startswith("error -4")
    for path, v in zip(paths[3:], verdicts[3:]):
        assert v.startswith(f"error -4 safetensors: {path}: tensor ") and "does not match the stored" in v, v


@pytest.mark.parametrize("in_features,in_channels", [(12, 1), (12, 3), (784, 1), (30, 1)])
def test_mlp_of_any_feature_count_exports_and_runs(in_features, in_channels, tmp_path):
    """The default input shape of an MLP whose features are not square planes: (C, features / C, 1),
    so the per-channel input statistics match the C runtime's channel count."""
    m = models.mlp(in_features=in_features, hidden=(8,), num_classes=3, in_channels=in_channels)
    path = str(tmp_path / "m.safetensors")
    csub.export(m, path)
    x = np.random.default_rng(0).standard_normal((2, in_features)).astype(np.float32)
    m.eval()
    want = m(x)
    c, h, w = modelfile.read_meta(open(path, "rb").read())["input_shape"]
    got = csub.CompressedNet(path)(x.reshape(2, c, h, w))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
