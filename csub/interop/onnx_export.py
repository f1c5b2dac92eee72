"""One alpha of a subspace as a standard ONNX graph (``to_onnx``).

The graph is the inference graph csub's own runtime runs (``csub.modelfile.describe``),
with the tensors of the network at that alpha:

  unstructured  dense Conv/Gemm weights holding the pruned zeros;
  structured    the narrower layers themselves (first ``max(1, round(C w))`` channels);
  quantized     each compressed layer's weight as int8 codes with a DequantizeLinear
                (csub's per-tensor scale and zero point, batch-norm scale folded in as csub
                folds it) and its input through Clip -> QuantizeLinear -> DequantizeLinear
                on the recorded activation range (the Clip only below 8 bits, holding the
                codes to [-2^(b-1), 2^(b-1) - 1]), so int8 runtimes can fuse them.

Norms take the form onnxruntime ran fastest (``benchmarks/bench_onnx_norms.py``:
cPreResNet20 shapes, batch 1 and 64, one thread; figures in README "From PyTorch / to
ONNX"): batch norm as BatchNormalization (which onnxruntime also folds into a Conv right
before it); group norm with one group per channel as InstanceNormalization; group norm
with fewer groups as Reshape (N, G, -1) -> InstanceNormalization -> Reshape -> Mul -> Add
(ahead of GroupNormalization-21 and of a ReduceMean decomposition).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _core, modelfile, models
from ..checkpoint import atomic_write
from ..nn.module import check_alpha

DEFAULT_OPSET = 17
# The first opset each operator is written for (its semantics unchanged since, as csub uses it).
MIN_OPSET = {"Conv": 1, "Gemm": 7, "Relu": 6, "MaxPool": 8, "AveragePool": 7, "GlobalAveragePool": 1,
             "Flatten": 9, "Add": 7, "Mul": 7, "Reshape": 5, "BatchNormalization": 9,
             "InstanceNormalization": 6, "Clip": 11, "QuantizeLinear": 10, "DequantizeLinear": 10}
INT16_OPSET = 21  # QuantizeLinear / DequantizeLinear on int16 codes (9..16 bits)


def _check_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path: {path} is a directory")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"path: the directory {d} does not exist")
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(f"path: cannot write in the directory {d}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"path: {path} exists and is read-only")
    return path


class _Graph:
    """Nodes and initializers of the ONNX graph being built."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.h, self.nh = helper, numpy_helper
        self.nodes, self.inits, self.ops = [], [], set()
        self.n = 0

    def const(self, array: Any, hint: str = "c") -> str:
        """Add ``array`` as an initializer named ``<hint>_<n>``; return its name."""
        self.n += 1
        name = f"{hint}_{self.n}"
        a = np.asarray(array)  # 0-d stays 0-d: per-tensor scales and zero points are scalars
        self.inits.append(self.nh.from_array(a if a.flags.c_contiguous else a.copy(), name))
        return name

    def node(self, op: str, inputs: Sequence[str], out: Optional[str] = None, **attrs: Any) -> str:
        """Add an ``op`` node reading ``inputs`` (its attributes: ``attrs``); return its output's name."""
        self.n += 1
        out = out or f"{op.lower()}_{self.n}"
        self.nodes.append(self.h.make_node(op, list(inputs), [out], name=f"{op}_{self.n}", **attrs))
        self.ops.add(op)
        return out


def _qdq(g, x, scale, zp, bits, hint):
    """Clip -> QuantizeLinear -> DequantizeLinear of x on (scale, zero point) at `bits` bits."""
    if scale == 0.0:  # csub quantizes an empty range to zeros
        return g.node("Mul", [x, g.const(np.float32(0.0), hint + "_zero")])
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    dtype = np.int8 if bits <= 8 else np.int16
    if bits not in (8, 16):
        lo = np.float32((qmin - zp) * np.float32(scale))
        hi = np.float32((qmax - zp) * np.float32(scale))
        x = g.node("Clip", [x, g.const(lo, hint + "_lo"), g.const(hi, hint + "_hi")])
    s = g.const(np.float32(scale), hint + "_scale")
    z = g.const(np.array(zp, dtype), hint + "_zp")
    return g.node("DequantizeLinear", [g.node("QuantizeLinear", [x, s, z]), s, z])


def _weight(g, layer, bits, hint):
    """The layer's weight at the current alpha as an ONNX value: float, or int codes + DequantizeLinear."""
    if bits is None:
        return g.const(layer.effective_weight(), hint), None
    w = layer._value("weight")
    fold = None
    if layer.fold_norm is not None:
        fold = layer.fold_norm.fold_scale()
        w = _core.channel_scale(w.reshape(1, w.shape[0], -1), fold).reshape(w.shape)
    mn, mx = _core.minmax(w)
    scale, zp = _core.quant_params(mn, mx, bits)
    if scale == 0.0:
        return g.const(np.zeros_like(w), hint), fold
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = np.clip(w / np.float32(scale), np.float32(qmin - zp), np.float32(qmax - zp))
    codes = (np.rint(v) + zp).astype(np.int8 if bits <= 8 else np.int16)
    s = g.const(np.float32(scale), hint + "_scale")
    z = g.const(np.array(zp, codes.dtype), hint + "_zp")
    return g.node("DequantizeLinear", [g.const(codes, hint + "_q"), s, z]), fold


def _layer(g, op, layer, x, shape, bits):
    """conv / linear op -> (output name, output shape (C, H, W) or (C,))."""
    hint = op["w"].rsplit(".", 1)[0].replace(".", "_")
    q = bits if op["compress"] else None
    if q is not None:
        obs = layer.observer
        if not obs.initialized:
            raise ValueError(f"model: {op['w'].rsplit('.', 1)[0]} has no recorded activation range (the "
                             "quantized layer never ran in training); ONNX needs a static scale")
        scale, zp = _core.quant_params(obs.running_min, obs.running_max, q)
        x = _qdq(g, x, scale, zp, q, hint + "_in")
    w, fold = _weight(g, layer, q, hint + "_w")
    out_c = layer.active_out
    b = [] if layer.bias is None else [g.const(np.ascontiguousarray(layer._value("bias"), np.float32), hint + "_b")]
    if op["op"] == "linear":  # Gemm's bias is optional only from opset 11: a zero one where there is none
        b = b or [g.const(np.zeros(out_c, np.float32), hint + "_b")]
        return g.node("Gemm", [x, w] + b, transB=1), (out_c,)
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    y = g.node("Conv", [x, w] + b, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    if fold is not None:  # divide the folded batch-norm scale out again, as csub does
        y = g.node("Mul", [y, g.const((1.0 / fold).astype(np.float32).reshape(-1, 1, 1), hint + "_unfold")])
    h = (shape[1] + 2 * p - k) // s + 1
    wd = (shape[2] + 2 * p - k) // s + 1
    return y, (out_c, h, wd)


def _norm(g, op, m, x, shape):
    hint = op["w"].rsplit(".", 1)[0].replace(".", "_")
    c = m.active_channels
    gamma = np.ascontiguousarray(m._value("weight"), np.float32)
    beta = np.ascontiguousarray(m._value("bias"), np.float32)
    if op["kind"] == "bn":
        return g.node("BatchNormalization", [x, g.const(gamma, hint + "_g"), g.const(beta, hint + "_b"),
                                             g.const(m.running_mean[:c].copy(), hint + "_mean"),
                                             g.const(m.running_var[:c].copy(), hint + "_var")], epsilon=m.eps)
    groups = m._active_groups(c)
    if groups == c and len(shape) == 3:
        return g.node("InstanceNormalization", [x, g.const(gamma, hint + "_g"), g.const(beta, hint + "_b")],
                      epsilon=m.eps)
    r = g.node("Reshape", [x, g.const(np.array([0, groups, -1], np.int64), hint + "_grp")])
    r = g.node("InstanceNormalization", [r, g.const(np.ones(groups, np.float32), hint + "_one"),
                                         g.const(np.zeros(groups, np.float32), hint + "_zero")], epsilon=m.eps)
    r = g.node("Reshape", [r, g.const(np.array((0,) + tuple(shape), np.int64), hint + "_shape")])
    tail = (c,) + (1,) * (len(shape) - 1)
    r = g.node("Mul", [r, g.const(gamma.reshape(tail), hint + "_g")])
    return g.node("Add", [r, g.const(beta.reshape(tail), hint + "_b")])


def _build(model, alpha, shape, opset):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    meta = modelfile.describe(model, shape)
    mods = dict(model.named_modules())
    bits = model.num_bits if model.regime == "quantized" else None
    g = _Graph(helper, numpy_helper)
    names = {0: "x"}
    shapes = {0: tuple(shape)}
    for op in meta["graph"]:
        x, kind, sh = names[op["x"]], op["op"], shapes[op["x"]]
        if kind in ("conv", "linear"):
            y, sh = _layer(g, op, mods[op["w"].rsplit(".", 1)[0]], x, sh, bits)
        elif kind == "norm":
            y = _norm(g, op, mods[op["w"].rsplit(".", 1)[0]], x, sh)
        elif kind == "relu":
            y = g.node("Relu", [x])
        elif kind in ("maxpool", "avgpool"):
            k, s = op["k"], op["s"]
            y = g.node("MaxPool" if kind == "maxpool" else "AveragePool", [x], kernel_shape=[k, k], strides=[s, s])
            sh = (sh[0], (sh[1] - k) // s + 1, (sh[2] - k) // s + 1)
        elif kind == "gap":
            y = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
            sh = (sh[0],)
        elif kind == "flatten":
            y = g.node("Flatten", [x], axis=1)
            sh = (int(np.prod(sh)),)
        elif kind == "add":
            y = g.node("Add", [x, names[op["x2"]]])
        else:  # describe() emits only the kinds above
            raise TypeError(f"model: graph operation {kind!r} has no ONNX form")
        names[op["y"]], shapes[op["y"]] = y, sh
    out = names[meta["output"]]
    g.nodes.append(helper.make_node("Identity", [out], ["logits"], name="output"))

    need = {o: MIN_OPSET[o] for o in g.ops}
    if bits is not None and bits > 8:
        need.update({o + " (int16 codes)": INT16_OPSET for o in ("QuantizeLinear", "DequantizeLinear")
                     if o in g.ops})
    old = sorted(f"{o} (needs >= {v})" for o, v in need.items() if v > opset)
    if old:
        raise ValueError(f"opset: {opset} is too old for " + ", ".join(old))
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(shape))
    outp = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", meta["num_classes"]])
    graph = helper.make_graph(g.nodes, f"csub_{meta['model']}_alpha_{alpha:g}", [inp], [outp], g.inits)
    ops = [helper.make_opsetid("", opset)]
    onnx_model = helper.make_model(graph, opset_imports=ops, producer_name="csub",
                                   doc_string=f"csub {meta['model']} ({model.regime}, {model.subspace}) at "
                                              f"alpha {alpha}")
    onnx_model.ir_version = helper.find_min_ir_version_for(ops)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def to_onnx(model: models.SubspaceNet, path: Union[str, os.PathLike], alpha: float,
            input_shape: Optional[Sequence[int]] = None, opset: Optional[int] = None) -> Union[str, os.PathLike]:
    """Write the network of ``model`` at ``alpha`` as an ONNX file (checked with ``onnx.checker``).

    Args:
        model: a network of ``csub.models`` (any regime and subspace).
        path: the output file, written atomically; its directory must exist and be
            writable (checked before any work).
        alpha: in [0, 1] (unstructured: > 0).
        input_shape: (C, H, W) of one sample (default: the model's natural input, as
            ``csub.export``); the batch dimension is dynamic (``N``).
        opset: ONNX opset of the default domain (default 17; 21 for the int16 codes of
            9..16 bits); an opset older than an operator the graph needs is refused,
            naming the operators.
    Returns:
        path. The graph maps ``x`` (N, C, H, W) float32, normalised as csub's forward
        takes it, to ``logits`` (N, classes); onnxruntime's outputs equal csub's forward
        at alpha to float rounding (quantized: within the compressed runtime's tolerance,
        a code that lands on the other side of a rounding step).
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install onnx (or csub[onnx])") from None
    if not isinstance(model, models.SubspaceNet):
        raise TypeError(f"model: expected a network of csub.models, got {type(model).__name__}")
    alpha = check_alpha(alpha)
    path = _check_path(path)
    newest = onnx.defs.onnx_opset_version()
    if opset is not None:
        if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
            raise TypeError(f"opset: expected an int, got {type(opset).__name__}")
        opset = int(opset)
        if opset > newest:
            raise ValueError(f"opset: {opset} is newer than this onnx package knows ({newest})")
        if opset < 1:
            raise ValueError(f"opset: expected an int >= 1, got {opset}")
    old_alpha, old_topk = model.alpha, model.topk
    model.set_alpha(alpha)
    if opset is None:  # int16 codes above 8 bits need opset 21
        wide = model.regime == "quantized" and model.num_bits > 8
        opset = min(INT16_OPSET if wide else DEFAULT_OPSET, newest)
    try:
        onnx_model = _build(model, alpha, input_shape or modelfile.default_input_shape(model), opset)
    finally:
        if model.regime == "unstructured":
            model.set_alpha(old_alpha, topk=old_topk)
        else:
            model.set_alpha(old_alpha)
    atomic_write(path, onnx_model.SerializeToString())
    return path
