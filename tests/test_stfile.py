"""The C readers of JSON (csrc/json.c) and safetensors (csrc/safetensors.c).

References: the ``safetensors`` package (files it writes must read back
identically, and a file it accepts must read the same here), Python's ``json``
module made as strict as the C parser (see ``ref_json``), and hand-made
corrupt files, each of which must be refused with a message naming what is
wrong. Random truncations and byte flips must parse or raise ValueError, never
crash; the same corpus runs through an AddressSanitizer + UBSan build of the
readers (``make -C csrc fuzz-st``).
"""
import json
import math
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from csub import _core

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NP_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
             "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}


# ----------------------------------------------------------------- helpers

def st_file(entries=None, data=b"", metadata=None, header=None, pad=0):
    """A safetensors file from header entries (or raw header bytes) and data."""
    if header is None:
        h = dict(entries or {})
        if metadata is not None:
            h["__metadata__"] = metadata
        header = json.dumps(h).encode()
    header += b" " * pad
    return struct.pack("<Q", len(header)) + header + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def assert_matches_reference(data):
    """_core.st_parse(data) equals safetensors.numpy.load(data) and the header's metadata."""
    meta, tensors = _core.st_parse(data)
    ref = safetensors_numpy.load(data)
    n = int.from_bytes(data[:8], "little")
    assert meta == json.loads(data[8:8 + n]).get("__metadata__")
    assert set(tensors) == set(ref)
    for name, (dtype, shape, raw) in tensors.items():
        a = ref[name]
        assert NP_DTYPES[dtype] == a.dtype.type, name
        assert shape == a.shape, name
        assert raw == a.tobytes(), name
    return meta, tensors


def st_error(data):
    with pytest.raises(ValueError) as e:
        _core.st_parse(data)
    return str(e.value)


# -------------------------------------------------------------- round trips

def test_all_dtypes_round_trip():
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal((2, 3, 2)),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, (5,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31, (2, 2), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15, (3,), dtype=np.int16),
        "i8": rng.integers(-128, 128, (1, 1, 1, 5), dtype=np.int8),
        "u8": rng.integers(0, 256, (9,), dtype=np.uint8),
        "u16": rng.integers(0, 2**16, (3,), dtype=np.uint16),
        "u32": rng.integers(0, 2**32, (2, 1), dtype=np.uint32),
        "u64": rng.integers(0, 2**64, (4,), dtype=np.uint64),
        "bool": rng.random((2, 5)) < 0.5,
        "special": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], np.float32),
    }
    data = safetensors_numpy.save(arrays)
    meta, tensors = assert_matches_reference(data)
    assert meta is None
    assert {k: v[0] for k, v in tensors.items()} == {
        "f32": "F32", "f64": "F64", "f16": "F16", "i64": "I64", "i32": "I32", "i16": "I16",
        "i8": "I8", "u8": "U8", "bool": "BOOL", "special": "F32", "u16": "U16", "u32": "U32",
        "u64": "U64"}


def test_bf16_round_trip():
    # numpy has no bfloat16: a hand-made file, the raw bytes come back
    raw = np.array([0x3F80, 0xC000, 0x7FC0], np.uint16).tobytes()
    data = st_file({"w": entry("BF16", (3,), (0, 6))}, raw)
    assert _core.st_parse(data) == (None, {"w": ("BF16", (3,), raw)})


def test_scalars_empty_tensors_and_metadata():
    arrays = {
        "scalar": np.array(3.5, np.float32),
        "scalar_i64": np.array(-7, np.int64),
        "empty": np.zeros((0,), np.float64),
        "empty_2d": np.zeros((3, 0, 2), np.int8),
        "x": np.arange(6, dtype=np.int32).reshape(2, 3),
    }
    metadata = {"csub": json.dumps({"epoch": 3, "note": "é 中 😀"}), "": "", "format": "np"}
    data = safetensors_numpy.save(arrays, metadata=metadata)
    meta, tensors = assert_matches_reference(data)
    assert meta == metadata
    assert tensors["scalar"] == ("F32", (), struct.pack("<f", 3.5))
    assert tensors["empty_2d"] == ("I8", (3, 0, 2), b"")


def test_many_tensors_and_unicode_names():
    rng = np.random.default_rng(1)
    arrays = {f"layer.{i}.weight": rng.standard_normal(rng.integers(0, 5, rng.integers(0, 4)))
              .astype(np.float32) for i in range(600)}
    arrays["naïve 名前 \"quoted\" \\ back/slash \t tab"] = np.ones(3, np.float32)
    assert_matches_reference(safetensors_numpy.save(arrays))


def test_checkpoint_written_by_csub(tmp_path):
    from csub import checkpoint
    path = tmp_path / "ck.safetensors"
    checkpoint.save(str(path), {"model": {"w": np.ones((2, 2), np.float32), "s": np.float32(2.0)},
                                "optim": {"step": np.array([5], np.int64)},
                                "rng": {"state": np.array([1, 2**64 - 1, 3, 4], np.uint64)}},
                    {"epoch": 1, "config": {"lr": 0.1}})
    meta, tensors = assert_matches_reference(path.read_bytes())
    assert json.loads(meta["csub"]) == {"epoch": 1, "config": {"lr": 0.1}}
    assert tensors["model.s"] == ("F32", (1,), struct.pack("<f", 2.0))
    assert tensors["rng.state"][0] == "U64"


def test_layouts_the_reference_writer_does_not_make():
    # gaps, trailing bytes, empty tensors anywhere, a padded header, a shape given as 2.0
    data = st_file({"a": entry("U8", (2,), (4, 6)), "e": entry("F32", (0,), (5, 5)),
                    "b": entry("U8", (2.0,), (0, 2))}, b"abcdefgh", pad=5)
    assert _core.st_parse(data) == (None, {"a": ("U8", (2,), b"ef"), "e": ("F32", (0,), b""),
                                           "b": ("U8", (2,), b"ab")})
    # a zero dimension makes the tensor empty however large the others are
    data = st_file({"z": entry("F64", (2**52, 2**52, 0), (0, 0))})
    assert _core.st_parse(data) == (None, {"z": ("F64", (2**52, 2**52, 0), b"")})
    # an empty header object: no tensors
    assert _core.st_parse(st_file({})) == (None, {})
    assert _core.st_parse(st_file({}, metadata={})) == ({}, {})


# -------------------------------------------------------- corrupt headers

GOOD = {"a": entry("F32", (2,), (0, 8))}
DATA8 = bytes(range(8))

CORRUPT = {
    # name: (file bytes, part of the expected message)
    "empty": (b"", "shorter than the 8-byte header length"),
    "seven_bytes": (b"\x02" + b"\0" * 6, "shorter than the 8-byte header length"),
    "length_past_end": (struct.pack("<Q", 100) + b"{}", "larger than the 2 bytes"),
    "length_2^63": (struct.pack("<Q", 2**63) + b"{}", "header length 9223372036854775808 is over"),
    "length_2^64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", "over the 100000000-byte limit"),
    "length_over_limit": (struct.pack("<Q", 100_000_001) + b"{}", "over the 100000000-byte limit"),
    "length_one_over": (struct.pack("<Q", 3) + b"{}", "larger than"),
    "empty_header": (st_file(header=b""), "unexpected end of input at byte 0"),
    "not_json": (st_file(header=b"{not json}"), "json: expected a string key at byte 1"),
    "bad_utf8": (st_file(header=b'{"\xff": 1}'), "invalid UTF-8"),
    "trailing": (st_file(header=b"{} x"), "trailing characters at byte 3"),
    "nul_padding": (st_file(header=b"{}\0\0"), "trailing characters at byte 2"),
    "list": (st_file(header=b"[]"), "header is not a JSON object"),
    "null": (st_file(header=b"null"), "header is not a JSON object"),
    "string": (st_file(header=b'"a"'), "header is not a JSON object"),
    "deep": (st_file(header=b'{"a":' + b"[" * 70 + b"]" * 70 + b"}"), "nesting deeper than 64"),
    "duplicate_tensor": (st_file(header=b'{"a":' + json.dumps(GOOD["a"]).encode() + b',"a":'
                                 + json.dumps(GOOD["a"]).encode() + b"}", data=DATA8),
                         'duplicate key "a"'),
    "entry_number": (st_file({"a": 1}), 'tensor "a": expected an object'),
    "entry_list": (st_file({"a": ["F32", [2], [0, 8]]}, DATA8), 'tensor "a": expected an object'),
    "missing_dtype": (st_file({"a": {"shape": [2], "data_offsets": [0, 8]}}, DATA8),
                      'tensor "a": missing field "dtype"'),
    "missing_shape": (st_file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, DATA8),
                      'missing field "shape"'),
    "missing_offsets": (st_file({"a": {"dtype": "F32", "shape": [2]}}, DATA8),
                        'missing field "data_offsets"'),
    "extra_field": (st_file({"a": dict(entry(), extra=1)}, DATA8), 'unexpected field "extra"'),
    "dtype_number": (st_file({"a": entry(4)}, DATA8), "dtype is not a string"),
    "dtype_lower": (st_file({"a": entry("f32")}, DATA8), 'unknown dtype "f32"'),
    "dtype_c64": (st_file({"a": entry("C64", (1,))}, DATA8), 'unknown dtype "C64"'),
    "dtype_u128": (st_file({"a": entry("U128", (1,), (0, 16))}, DATA8 * 2), 'unknown dtype "U128"'),
    "dtype_f8": (st_file({"a": entry("F8_E4M3", (8,))}, DATA8), "unknown dtype"),
    "dtype_space": (st_file({"a": entry("F32 ")}, DATA8), "unknown dtype"),
    "dtype_empty": (st_file({"a": entry("")}, DATA8), "unknown dtype"),
    "shape_number": (st_file({"a": dict(entry(), shape=2)}, DATA8), "shape is not an array"),
    "shape_9d": (st_file({"a": entry("U8", (1,) * 9, (0, 1))}, DATA8), "shape has 9 dimensions"),
    "shape_negative": (st_file({"a": entry("F32", (-2,))}, DATA8), "shape[0] is not a non-negative"),
    "shape_float": (st_file({"a": entry("F32", (1, 2.5))}, DATA8), "shape[1] is not a non-negative"),
    "shape_1e400": (st_file(header=b'{"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,8]}}',
                            data=DATA8), "shape[0]"),
    "shape_string": (st_file({"a": entry("F32", ("2",))}, DATA8), "shape[0]"),
    "shape_bool": (st_file({"a": entry("F32", (True,))}, DATA8), "shape[0]"),
    "shape_null": (st_file({"a": entry("F32", (None,))}, DATA8), "shape[0]"),
    "shape_2^53": (st_file({"a": entry("U8", (2**53,))}, DATA8), "shape[0]"),
    "shape_2^64": (st_file({"a": entry("U8", (2**64,))}, DATA8), "shape[0]"),
    "numel_overflow": (st_file({"a": entry("F32", (2**31, 2**31, 4))}, DATA8), "overflow int64"),
    "bytes_overflow_f64": (st_file({"a": entry("F64", (2**52, 2**9))}, DATA8), "overflow int64"),
    "bytes_overflow_f32": (st_file({"a": entry("F32", (2**30, 2**31))}, DATA8), "overflow int64"),
    "bytes_large": (st_file({"a": entry("U8", (2**50, 2**10))}, DATA8), "hold 8 bytes"),
    "offsets_number": (st_file({"a": dict(entry(), data_offsets=0)}, DATA8), "data_offsets is not an array"),
    "offsets_three": (st_file({"a": entry(offsets=(0, 4, 8))}, DATA8), "data_offsets is not an array of 2"),
    "offsets_negative": (st_file({"a": entry(offsets=(-8, 0))}, DATA8), "data_offsets[0]"),
    "offsets_float": (st_file({"a": entry(offsets=(0, 8.5))}, DATA8), "data_offsets[1]"),
    "offsets_huge": (st_file({"a": entry(offsets=(0, 2**63))}, DATA8), "data_offsets[1]"),
    "offsets_reversed": (st_file({"a": entry(offsets=(8, 0))}, DATA8), "[8, 0] are reversed"),
    "offsets_past_end": (st_file({"a": entry(offsets=(4, 12))}, DATA8), "end 12 is past the data section (8"),
    "offsets_past_end_far": (st_file({"a": entry(offsets=(2**52, 2**52 + 8))}, DATA8), "past the data"),
    "offsets_short": (st_file({"a": entry(offsets=(0, 4))}, DATA8), "hold 4 bytes, the shape and dtype need 8"),
    "offsets_long": (st_file({"a": entry("F32", (1,), (0, 8))}, DATA8), "hold 8 bytes"),
    "empty_nonzero_span": (st_file({"a": entry("F32", (0,), (0, 4))}, DATA8), "need 0"),
    "overlap": (st_file({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, DATA8 * 2),
                'tensors "a" [0, 8] and "b" [4, 12] overlap'),
    "overlap_same": (st_file({"a": entry(offsets=(0, 8)), "b": entry(offsets=(0, 8))}, DATA8),
                     "overlap"),
    "overlap_inside": (st_file({"a": entry("U8", (8,), (0, 8)), "b": entry("U8", (2,), (3, 5))}, DATA8),
                       "overlap"),
    "overlap_out_of_order": (st_file({"c": entry("U8", (2,), (6, 8)), "b": entry("U8", (2,), (2, 4)),
                                      "a": entry("U8", (4,), (0, 4))}, DATA8), '"a" [0, 4] and "b" [2, 4]'),
    "metadata_list": (st_file(GOOD, DATA8, metadata=["a"]), "__metadata__ is not an object"),
    "metadata_null": (st_file(header=b'{"__metadata__":null}'), "__metadata__ is not an object"),
    "metadata_number": (st_file(GOOD, DATA8, metadata={"k": 1}), '__metadata__ value of "k" is not a string'),
    "metadata_nested": (st_file(GOOD, DATA8, metadata={"a": "b", "k": {"x": "y"}}), 'value of "k"'),
    "metadata_twice": (st_file(header=b'{"__metadata__":{},"__metadata__":{}}'), "duplicate key"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_file_is_refused(name):
    data, message = CORRUPT[name]
    err = st_error(data)
    assert err.startswith("safetensors: ")
    assert message in err


def test_good_baseline_of_the_corrupt_files():
    assert _core.st_parse(st_file(GOOD, DATA8)) == (None, {"a": ("F32", (2,), DATA8)})
    # adjacent tensors and an empty tensor inside another do not overlap
    data = st_file({"a": entry("U8", (4,), (0, 4)), "b": entry("U8", (4,), (4, 8)),
                    "e": entry("U8", (0,), (2, 2))}, DATA8)
    assert _core.st_parse(data)[1]["b"] == ("U8", (4,), DATA8[4:])


def test_header_length_limit():
    # at the limit the length is checked against the file
    assert "larger than the 2 bytes" in st_error(struct.pack("<Q", 100_000_000) + b"{}")


def test_long_names_are_shortened_in_messages():
    name = "n" * 5000
    err = st_error(st_file({name: entry(offsets=(0, 4))}, DATA8))
    assert len(err) < 400 and "hold 4 bytes" in err


def test_arguments():
    with pytest.raises(TypeError, match="data"):
        _core.st_parse("a string")
    with pytest.raises(TypeError, match="text"):
        _core.json_parse(3)
    # any bytes-like object
    data = st_file(GOOD, DATA8)
    assert _core.st_parse(bytearray(data)) == _core.st_parse(memoryview(data))
    assert _core.json_parse(bytearray(b"[1]")) == [1.0]


# ------------------------------------------------ truncations, byte flips

def small_file():
    return safetensors_numpy.save(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -1], np.int8),
         "s": np.array(2.0, np.float64), "e": np.zeros((0, 2), np.float16)},
        metadata={"csub": '{"epoch": 1}'})


def test_every_truncation_fails_cleanly():
    data = small_file()
    assert_matches_reference(data)
    for n in range(len(data)):
        with pytest.raises(ValueError):
            _core.st_parse(data[:n])


def flipped(data, rng, nflips):
    b = bytearray(data)
    for i in rng.integers(0, len(b), nflips):
        b[i] ^= int(rng.integers(1, 256))
    return bytes(b)


HEADER_ALPHABET = b' {}[]:,"\\u0123456789e.-+FIUB816324LOtfnl_\x00\x80\xff'


def edit_bytes(b, rng, alphabet, most):
    """b (a bytearray) with 1 to `most` bytes replaced, inserted or deleted, new bytes from alphabet."""
    for _ in range(int(rng.integers(1, most + 1))):
        op, i = int(rng.integers(0, 3)), int(rng.integers(0, len(b) + 1))
        c = alphabet[int(rng.integers(0, len(alphabet)))]
        if op == 0 and i < len(b):
            b[i] = c
        elif op == 1:
            b.insert(i, c)
        elif i < len(b):
            del b[i]
    return b


def header_mutated(data, rng):
    """The header edited (1 to 4 bytes replaced, inserted or deleted) with its length fixed up,
    the data section sometimes cut short: reaches the checks past the JSON syntax."""
    n = int.from_bytes(data[:8], "little")
    h, body = edit_bytes(bytearray(data[8:8 + n]), rng, HEADER_ALPHABET, 4), data[8 + n:]
    if rng.random() < 0.2:
        body = body[:int(rng.integers(0, len(body) + 1))]
    return struct.pack("<Q", len(h)) + bytes(h) + body


def test_random_header_edits():
    """As test_random_byte_flips, with edits that keep the header length right."""
    data = small_file()
    outcomes = set()
    for seed in range(3000):
        bad = header_mutated(data, np.random.default_rng(seed))
        try:
            _core.st_parse(bad)
            ours = None
            outcomes.add("ok")
        except ValueError as e:
            ours = str(e)
            outcomes.add(ours.split(":")[1].strip())   # "header" or 'tensor "w"' ...
        try:
            safetensors_numpy.load(bad)
        except Exception:
            continue  # where only we accept: gaps, -0 or 2.0 as a dimension, ...
        if ours is None:
            assert_matches_reference(bad)
        else:
            assert "unknown dtype" in ours or "duplicate key" in ours, (seed, ours)
    assert {"ok", "header"} <= outcomes and any(o.startswith("tensor") for o in outcomes), outcomes


def test_random_byte_flips():
    """Each variant parses or raises ValueError; where the reference reads it, so do we, identically."""
    data = small_file()
    accepted = both = 0
    for seed in range(3000):
        rng = np.random.default_rng(seed)
        bad = flipped(data, rng, int(rng.integers(1, 4)))
        try:
            ours = _core.st_parse(bad)
        except ValueError as e:
            ours = str(e)
        try:
            ref = safetensors_numpy.load(bad)
        except Exception:
            ref = None
        if isinstance(ours, tuple):
            accepted += 1
        if ref is not None:
            if isinstance(ours, str):
                # the reference knows more dtypes and lets a later duplicate key win
                assert "unknown dtype" in ours or "duplicate key" in ours, (seed, ours)
            else:
                both += 1
                assert_matches_reference(bad)
    assert accepted > 100 and both > 100  # flips in the data bytes keep the file valid


# -------------------------------------------------------------------- JSON

class Refused(ValueError):
    pass


def _no_duplicates(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise Refused("duplicate key")
    return d


def _refuse_constant(name):
    raise Refused(name)


def _check_strings_and_depth(v, depth=0):
    """What Python's json lets through but the C parser refuses."""
    if isinstance(v, str):
        if "\0" in v or any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise Refused("\\u0000 or an unpaired surrogate")
    elif isinstance(v, (list, dict)):
        if depth >= 64:
            raise Refused("too deep")
        for k in (v if isinstance(v, dict) else []):
            _check_strings_and_depth(k)
        for x in (v.values() if isinstance(v, dict) else v):
            _check_strings_and_depth(x, depth + 1)


def ref_json(text):
    """Python's json with the C parser's rules, or raises ValueError."""
    try:
        s = text.decode("utf-8")
        v = json.loads(s, parse_int=float, parse_constant=_refuse_constant,
                       object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise Refused("too deep") from None
    _check_strings_and_depth(v)
    return v


def same_json(a, b):
    if isinstance(a, float):
        return isinstance(b, float) and a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same_json, a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(same_json(a[k], b[k]) for k in a))
    return type(a) is type(b) and a == b


def compare_json(text):
    """Both accept with the same value, or both refuse. Returns the outcome."""
    try:
        want = ref_json(text)
    except ValueError:
        want = Refused
    try:
        got = _core.json_parse(text)
    except ValueError as e:
        assert want is Refused, (text, str(e))
        assert str(e).startswith("json: ") and " at byte " in str(e), str(e)
        return False
    assert want is not Refused, (text, got)
    assert same_json(got, want), (text, got, want)
    return True


JSON_VALID = [
    b"0", b"-0", b"-0.0", b"0.0", b"1E+2", b"1e+2", b"1E-2", b"1e400", b"-1e400", b"1e-400",
    b"2.2250738585072011e-308", b"4.9e-324", b"1.7976931348623157e308", b"0.1", b"-123.456e-7",
    b"123456789012345678901234567890", b"9007199254740993", b"1" + b"0" * 400,
    b"0." + b"1" * 300, b"true", b"false", b"null", b'""', b"[]", b"{}", b"[[]]", b'{"":{}}',
    b' \t\n\r[1 , 2 ]\n ', b'"\\u00e9\\u4e2d\\ud83d\\ude00"', "\"é中😀\"".encode(),
    b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', b'"\\u001f\\u007F"', b'"\x7f"', b'"\\uD834\\uDD1E"',
    b'{"a":{"b":[1,2,{"c":null}]},"d":"e"}', b'{"b":1,"a":2,"A":3}', b"[1e1,1E-1,-1.25e+10,0e0]",
    b"[" * 64 + b"]" * 64, b'{"a":' * 63 + b"[]" + b"}" * 63, b'{"a":' * 64 + b"1" + b"}" * 64, b'"\xf4\x8f\xbf\xbf"', b'"\xe0\xa0\x80"',
    b'"\xed\x9f\xbf"', b'"\xee\x80\x80"', b'"\xf0\x90\x80\x80"', b'"\xc2\x80"',
    b'{"a":1,"b":[true,false,null,"x",{}]}', b'"\\ud7ff\\ue000\\uffff"',
]

JSON_INVALID = [
    b"", b" ", b"01", b"-01", b"00", b"1.", b".5", b"+1", b"-", b"1e", b"1e+", b"1.e5", b"0x10",
    b"1_000", b"NaN", b"Infinity", b"-Infinity", b"nan", b"tru", b"truee", b"nul", b"True",
    b"[1,]", b"[,1]", b"[1 2]", b"[", b"]", b"[]]", b"{", b"}", b'{"a":1,}', b"{,}", b'{"a"}',
    b'{"a":}', b"{a:1}", b"{'a':1}", b'{"a" 1}', b'{"a":1 "b":2}', b'{1:2}', b'"a\x01"', b'"\t"',
    b'"\n"', b'"abc', b'"\\', b'"\\"', b'"\\x"', b'"\\u12"', b'"\\u12g4"', b'"\\U0041"',
    b'"\\u0000"', b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\u0041"', b'"\\ud800\\ud800"',
    b'"\\udc00\\ud800"', b'"\\ud800\\"', b'"\\ud800\\u"', b'"\\ud800\\udc0"', b'{"a":1,"a":2}',
    b'{"a":{"x":1},"b":2,"a":3}', b"1 2", b"[1]x", b'"a"\x00', b"\xef\xbb\xbf{}", b"[" * 65 + b"]" * 65,
    b'{"a":' * 65 + b"1" + b"}" * 65, b"[" * 100000, b'"\xff"', b'"\xc0\x80"', b'"\xc1\xbf"',
    b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\xf5\x80\x80\x80"', b'"\xe2\x82"', b'"\x80"',
    b'"\xe0\x80\x80"', b'"\xf0\x80\x80\x80"', b'"\xe2\x82\xac', b"[1,2", b'{"a":1', b"\x00",
    b"[1]\x00", b"\x0c[]", b"[1,\x0b2]", b"-Infinity", b"[.1]", b"[1.]", b"[-]", b"[--1]", b"1e1.5",
]


def test_json_corpus_against_python():
    for text in JSON_VALID:
        assert compare_json(text), text
    for text in JSON_INVALID:
        assert not compare_json(text), text


def test_json_values():
    assert _core.json_parse(b'{"a": [1, 2.5, "x", true, null]}') == {"a": [1.0, 2.5, "x", True, None]}
    assert math.copysign(1, _core.json_parse(b"-0")) == -1
    assert _core.json_parse(b"1e400") == math.inf and _core.json_parse(b"-1e400") == -math.inf
    assert _core.json_parse(b'"\\ud83d\\ude00"') == "\U0001F600"
    assert _core.json_parse(b"1E+2") == 100.0


@pytest.mark.parametrize("text, message", [
    (b'{"a" 1}', "json: expected ':' at byte 5"),
    (b"[1,]", "json: unexpected character ']' at byte 3"),
    (b"[1 2]", "json: expected ',' or ']' at byte 3"),
    (b"01", "json: leading zero in number at byte 0"),
    (b"[1.]", "json: expected a digit after '.' at byte 3"),
    (b'  "abc', "json: unterminated string starting at byte 2"),
    (b'"\\u0000"', "json: \\u0000 in string at byte 1"),
    (b'"ab\\ud800x"', "json: unpaired surrogate \\ud800 in string at byte 3"),
    (b'"\xc0\x80"', "json: invalid UTF-8 in string at byte 1"),
    (b'{"k":1,"k":2}', 'json: duplicate key "k" in the object at byte 0'),
    (b"[" * 65, "json: nesting deeper than 64 levels at byte 64"),
    (b"[] []", "json: trailing characters at byte 3"),
    (b"tru", "json: invalid literal at byte 0"),
    (b"", "json: unexpected end of input at byte 0"),
])
def test_json_messages(text, message):
    with pytest.raises(ValueError) as e:
        _core.json_parse(text)
    assert str(e.value) == message


def test_json_not_nul_terminated():
    # the parser sees only the buffer's bytes: a prefix of a longer buffer
    big = b"[1234" + b"5" * 1000 + b"]"
    view = memoryview(big)[:5]
    with pytest.raises(ValueError, match="expected ',' or ']' at byte 5"):
        _core.json_parse(view)
    assert _core.json_parse(memoryview(b"12345")[:3]) == 123.0


def random_string(rng):
    pool = "aZ09 \"\\/\b\f\n\r\t\x01\x1f\x7fé中😀\U0010FFFF\uffff\u2028"
    return "".join(pool[int(i)] for i in rng.integers(0, len(pool), int(rng.integers(0, 8))))


def random_value(rng, depth=0):
    kind = int(rng.integers(0, 8 if depth < 6 else 5))
    if kind == 0:
        return [None, True, False][int(rng.integers(0, 3))]
    if kind == 1:
        return float(rng.choice([0.0, -0.0, 1.0, 1e300, 5e-324, 0.1, -2.5e-10, 1e22, 123456789.0]))
    if kind == 2:
        return float(rng.standard_normal() * 10.0 ** int(rng.integers(-30, 30)))
    if kind in (3, 4):
        return random_string(rng)
    if kind in (5, 6):
        return [random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    return {random_string(rng) + str(i): random_value(rng, depth + 1)
            for i in range(int(rng.integers(0, 5)))}


JSON_ALPHABET = b' \t\n{}[]:,"\\u0123456789abcdefE.-+tfnlrsx\x00\x1f\x80\xc3\xa9\xed\xf0'


def random_document(seed):
    """A random JSON text (Python's json.dumps) and the generator that made it."""
    rng = np.random.default_rng(seed)
    v = random_value(rng)
    text = json.dumps(v, ensure_ascii=bool(rng.random() < 0.5),
                      indent=None if rng.random() < 0.5 else 1).encode()
    return text, rng


def mutated(text, rng):
    """text with 1 to 3 bytes replaced, inserted or deleted."""
    return bytes(edit_bytes(bytearray(text), rng, JSON_ALPHABET, 3))


def test_json_random_documents_and_mutations():
    accepted = refused = 0
    for seed in range(1500):
        text, rng = random_document(seed)
        assert compare_json(text), text
        for _ in range(4):
            if compare_json(mutated(text, rng)):
                accepted += 1
            else:
                refused += 1
    assert accepted > 500 and refused > 500


def test_json_every_prefix():
    """Input that stops anywhere: inside strings, escapes, numbers, literals."""
    docs = [random_document(seed)[0] for seed in range(150)]
    docs += [rb'{"a\\b\u00e9\ud83d\ude00": [-1.5e+10, true, false, null, "\\"]}', '"é😀"'.encode()]
    for text in docs:
        assert compare_json(text), text
        for n in range(len(text)):
            compare_json(text[:n])


def test_json_number_ignores_the_locale():
    import locale
    old = locale.setlocale(locale.LC_NUMERIC)
    for name in ("de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8", "ru_RU.UTF-8"):
        try:
            locale.setlocale(locale.LC_NUMERIC, name)
            break
        except locale.Error:
            continue
    else:
        pytest.skip("no locale with a decimal comma is installed")
    try:
        assert locale.localeconv()["decimal_point"] == ","
        assert _core.json_parse(b"[1.5, -0.25e1, 3]") == [1.5, -2.5, 3.0]
        with pytest.raises(ValueError):
            _core.json_parse(b"1,5")
    finally:
        locale.setlocale(locale.LC_NUMERIC, old)


def test_json_depth_limit():
    assert compare_json(b"[" * 64 + b"]" * 64)
    assert not compare_json(b"[" * 65 + b"]" * 65)
    with pytest.raises(ValueError, match="nesting deeper than 64"):
        _core.json_parse(b"[" * 10**6)


def test_json_large_object_duplicate_check():
    keys = [f"key{i}" for i in range(5000)]
    text = json.dumps({k: i for i, k in enumerate(keys)}).encode()
    assert len(_core.json_parse(text)) == 5000
    with pytest.raises(ValueError, match='duplicate key "key17"'):
        _core.json_parse(text[:-1] + b', "key17": 0}')


# ------------------------------------------------------ sanitizer build

def sanitizer_corpus(tmp_path):
    """Corrupt and valid safetensors files, and JSON documents, written to tmp_path."""
    st, js = [], []

    def put(group, name, data):
        path = tmp_path / name
        path.write_bytes(data)
        group.append(path)

    good = small_file()
    put(st, "good.st", good)
    put(st, "many.st", safetensors_numpy.save({f"t{i}": np.full(i % 5, i, np.float32) for i in range(300)}))
    for name, (data, _) in CORRUPT.items():
        put(st, f"corrupt-{name}.st", data)
    for n in range(0, len(good), 3):
        put(st, f"trunc-{n}.st", good[:n])
    for seed in range(400):
        rng = np.random.default_rng(seed)
        put(st, f"flip-{seed}.st", flipped(good, rng, int(rng.integers(1, 4))))
        put(st, f"edit-{seed}.st", header_mutated(good, rng))
    # header text ending exactly at the end of the file (no data section)
    put(st, "header-at-end.st", st_file(header=b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'))
    put(st, "header-cut.st", st_file(header=b'{"a":"\\ud83d'))
    for i, text in enumerate(JSON_VALID + JSON_INVALID):
        put(js, f"json-{i}.json", text)
    for seed in range(200):
        text, rng = random_document(seed)
        put(js, f"json-mutated-{seed}.json", mutated(text, rng))
        put(js, f"json-prefix-{seed}.json", text[:int(rng.integers(0, len(text) + 1))])
    return st, js


def run_checker(binary, args):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    r = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120)
    if "LeakSanitizer has encountered a fatal error" in r.stderr:  # e.g. under ptrace
        env["ASAN_OPTIONS"] = "detect_leaks=0"
        r = subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=120)
    return r


def sanitizer_checker():
    """The st_check binary built with AddressSanitizer + UBSan (make fuzz-st); skips the test
    without make, a C compiler or the sanitizer runtimes."""
    cc = os.environ.get("CC", "cc")
    if not shutil.which("make") or not shutil.which(cc):
        pytest.skip(f"needs make and a C compiler ({cc})")
    build = subprocess.run(["make", "-C", os.path.join(ROOT, "csrc"), "fuzz-st"],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and any(s in build.stderr for s in ("libasan", "libubsan", "-lasan", "-lubsan")):
        pytest.skip("the C compiler has no sanitizer runtime:\n" + build.stderr[-2000:])
    assert build.returncode == 0, build.stdout + build.stderr
    return os.path.join(ROOT, "build", "st_check-asan")


def checker_lines(binary, args):
    """The checker's output lines for args, after checking that it ran clean under the sanitizers."""
    r = run_checker(binary, args)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr[-4000:]
    return r.stdout.splitlines()


def extension_error(path, status):
    """The checker's status for path against the extension's st_parse: None where both accept
    (with the same tensor count), else the line the checker should print for the extension's error."""
    try:
        n = len(_core.st_parse(path.read_bytes())[1])
    except ValueError as e:
        return f"error -4 {e}"
    assert status.startswith(f"ok {n} "), (path.name, status)
    return None


def test_sanitizer_build(tmp_path):
    binary = sanitizer_checker()
    st, js = sanitizer_corpus(tmp_path)

    huge = tmp_path / "huge.st"  # sparse: refused by its size before a byte is read
    with open(huge, "wb") as f:
        try:
            f.truncate((16 << 30) + 1)
        except OSError:
            pass
    lines = checker_lines(binary, [str(p) for p in st] + [str(huge), str(tmp_path / "missing.st"), str(tmp_path)])
    assert len(lines) == len(st) + 3
    huge_size = huge.stat().st_size
    huge.unlink()
    if huge_size > 16 << 30:
        assert lines[-3].endswith(f"error -3 safetensors: cannot read {huge}: 17179869185 bytes, "
                                  "over the 17179869184-byte limit"), lines[-3]
    # files that cannot be read: CSUB_ERR_IO naming the path and the reason
    assert lines[-2].endswith(f"error -3 safetensors: cannot open {tmp_path / 'missing.st'}: "
                              "No such file or directory"), lines[-2]
    assert lines[-1].startswith(f"{tmp_path}: error -3 safetensors: cannot read {tmp_path}: "), lines[-1]
    # the same verdicts as the Python extension
    for path, line in zip(st, lines):
        status = line.split(": ", 1)[1]
        want = extension_error(path, status)
        assert want is None or status == want, (path.name, status)

    lines = checker_lines(binary, ["-j", *[str(p) for p in js]])
    assert len(lines) == len(js)
    for path, line in zip(js, lines):
        assert line.endswith(": ok json") == compare_json(path.read_bytes()), (path.name, line)


def test_checksummed_files_under_sanitizers(tmp_path):
    """Files with the csub.crc32 entry (the checksum verification and its messages) through the
    AddressSanitizer + UBSan build: the same verdicts as the extension, no sanitizer report."""
    from csub import checkpoint
    binary = sanitizer_checker()
    rng = np.random.default_rng(0)
    good = checkpoint.to_bytes({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array([2.0]),
                                "e": np.zeros((0, 2), np.float16), "b": rng.integers(0, 256, 37, dtype=np.uint8)},
                               {"csub": '{"epoch": 1}', "x": "é"})
    files = {"good": good}
    for seed in range(300):
        r = np.random.default_rng(seed)
        files[f"flip-{seed}"] = flipped(good, r, 1)
        files[f"edit-{seed}"] = header_mutated(good, r)
    for entry in ("not json", "[]", '{"__metadata__": 1}', "{}", '{"__metadata__": "zzzzzzzz"}'):
        files[f"entry-{len(files)}"] = safetensors_numpy.save({"w": np.ones(2, np.float32)},
                                                               metadata={"csub.crc32": entry})
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / f"{name}.st")
        paths[-1].write_bytes(data)
    lines = checker_lines(binary, [str(p) for p in paths])
    assert len(lines) == len(paths)
    crc_refusals = 0
    for path, line in zip(paths, lines):
        status = line.split(": ", 1)[1]
        want = extension_error(path, status)
        if want is not None:
            # read from a path, a checksum mismatch also names the file
            assert status in (want.replace("safetensors: ", f"safetensors: {path}: ", 1), want), (path.name, status)
            crc_refusals += "does not match the stored" in status
    assert lines[0].split(": ", 1)[1].startswith("ok 4 ") and crc_refusals > 30
