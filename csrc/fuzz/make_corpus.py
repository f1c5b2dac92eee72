"""Write the fuzz targets' seed corpus: csrc/fuzz/corpus/{model,st,json}/.

    PYTHONPATH=. python csrc/fuzz/make_corpus.py

model: tiny networks exported with csub.export (every regime, a point and a
line, group and batch norm, an MLP and a CNN) and a hand-written residual
graph (conv, norm, relu, add, pools, flatten, linear), each a few KB.
st: small safetensors files of every dtype, empty and scalar tensors,
metadata, padding and gaps. json: the model metadata and headers, and
snippets of every JSON construct (escapes, surrogates, numbers, nesting).
Files are named by content, so rerunning rewrites the same set. Regression
inputs for fixed findings live beside them (names starting with "fix-").
"""
import hashlib
import json
import os
import struct

import numpy as np

import csub
from csub import models, modelfile

HERE = os.path.dirname(os.path.abspath(__file__))


def put(kind, blob, prefix="seed"):
    d = os.path.join(HERE, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{prefix}-{hashlib.sha1(blob).hexdigest()[:16]}"), "wb") as f:
        f.write(blob)


def st_bytes(tensors, metadata=None, pad=0, gap=0):
    """A safetensors file from {name: (dtype, shape, raw bytes)} in order, by hand (any dtype, gaps)."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        data += b"\0" * gap
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


def model_files():
    out = []
    for regime in (None, "unstructured", "structured", "quantized"):
        for subspace in ((None, "point") if regime is None else ("point", "line")):
            csub.manual_seed(3)
            m = models.mlp(in_features=12, hidden=(6,), num_classes=3, regime=regime, subspace=subspace)
            out.append(modelfile.to_bytes(m, (1, 3, 4), [{"alpha": 0.5, "accuracy": 0.4}, {"alpha": 1.0, "accuracy": 0.6}]))
            for norm in ("gn", "bn") if regime != "structured" else ("gn",):
                csub.manual_seed(4)
                m = models.cnn(widths=(2, 4), image_size=8, num_classes=3, regime=regime, subspace=subspace, norm=norm)
                if regime == "quantized":  # recorded activation ranges, as after training
                    m.train()
                    m.set_quantize_inputs(True)
                    m(np.random.default_rng(0).normal(0, 1, (4, 1, 8, 8)).astype(np.float32))
                    m.eval()
                out.append(modelfile.to_bytes(m, None, None))
    out.append(residual_model())
    return out


def residual_model():
    """conv -> gn -> relu -> conv -> add (residual) -> avgpool -> gap -> flatten -> linear, a line."""
    rng = np.random.default_rng(5)
    f = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
    t = {"c1.weight": f(4, 2, 3, 3), "c1.weight1": f(4, 2, 3, 3), "n.weight": f(4) + 1, "n.weight1": f(4) + 1,
         "n.bias": f(4), "n.bias1": f(4), "c2.weight": f(4, 4, 3, 3), "c2.weight1": f(4, 4, 3, 3),
         "fc.weight": f(3, 4), "fc.weight1": f(3, 4), "fc.bias": f(3), "fc.bias1": f(3),
         "input_mean": np.array([0.5, 0.4], np.float32), "input_std": np.array([0.25, 0.2], np.float32)}
    conv = dict(op="conv", k=3, stride=1, pad=1, b=None, line=True, fold=None, act=None)
    graph = [dict(conv, x=0, y=1, cin=2, cout=4, w="c1.weight", compress=False),
             dict(op="norm", x=1, y=2, kind="gn", groups=2, c=4, eps=1e-5, w="n.weight", b="n.bias", line=True),
             dict(op="relu", x=2, y=3),
             dict(conv, x=3, y=4, cin=4, cout=4, w="c2.weight", compress=True),
             dict(op="add", x=4, x2=3, y=5),
             dict(op="avgpool", x=5, y=6, k=2, s=2),
             dict(op="gap", x=6, y=7),
             dict(op="flatten", x=7, y=8),
             dict(op="linear", x=8, y=9, cin=4, cout=3, w="fc.weight", b="fc.bias", line=True, compress=False,
                  fold=None, act=None)]
    meta = {"format": "csub-model", "version": 1, "regime": "unstructured", "subspace": "line",
            "bit_range": [3, 8], "width_range": [0.25, 1.0], "input_shape": [2, 6, 6], "num_classes": 3,
            "graph": graph, "output": 9, "levels": [{"alpha": 0.3, "accuracy": 0.5}]}
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in t.items()}
    return st_bytes(tensors, {"csub": json.dumps(meta)})


def st_files():
    rng = np.random.default_rng(6)
    out = []
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}
    many = {f"t.{k}": (k, (2, 3), rng.integers(0, 100, (2, 3)).astype(v).tobytes()) for k, v in dtypes.items()}
    many["t.BF16"] = ("BF16", (3,), b"\x80\x3f" * 3)
    many["t.BOOL"] = ("BOOL", (4,), b"\x00\x01\x01\x00")
    out.append(st_bytes(many, {"note": "every dtype", "": "empty key"}))
    out.append(st_bytes({"empty": ("F32", (0, 5), b""), "scalar": ("F32", (), b"\0\0\x80\x3f"),
                         "eight": ("U8", (1, 1, 1, 1, 1, 1, 1, 2), b"ab")}, pad=7, gap=3))
    out.append(st_bytes({}, {}))
    out.append(st_bytes({"w": ("F32", (4,), np.arange(4, dtype=np.float32).tobytes())}) + b"trailing")
    return out


JSON_SNIPPETS = [
    b'{}', b'[]', b'null', b'true', b' false ', b'0', b'-0.0', b'1e308', b'-1E-400', b'123456789012345678901234',
    b'9007199254740993', b'"a\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r"', b'"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"',
    b'[1, [2, [3, [4, {"a": [5, {"b": null}]}]]]]', b'{"a": 1, "b": [true, false, null], "c": {"d": "e"}}',
    b'{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}', b'[' * 64 + b']' * 64,
]


def main():
    for blob in model_files():
        put("model", blob)
        put("st", blob)
        n = int.from_bytes(blob[:8], "little")
        header = blob[8:8 + n]
        put("json", header)
        put("json", json.loads(header)["__metadata__"]["csub"].encode())
    for blob in st_files():
        put("st", blob)
    for s in JSON_SNIPPETS:
        put("json", s)


if __name__ == "__main__":
    main()
