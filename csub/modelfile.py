"""Export a subspace to one file, load it back; the operation graph the C runtime runs.

The file is safetensors: every parameter and buffer of the model under its
``state_dict`` name (a line keeps both endpoints, ``weight`` and ``weight1``),
and one metadata entry ``csub`` holding a JSON object:

    format, version        "csub-model", 1
    model, config          the constructor and its arguments (``csub.load`` rebuilds the model)
    regime, subspace       as the model's
    bit_range, width_range the level maps of the quantized and structured regimes
    input_shape            (C, H, W) of one sample the graph was traced for
    num_classes            outputs per sample
    graph                  the inference operations in order (below)
    output                 the value id holding the logits
    levels                 optional: [{"alpha", "accuracy"}, ...] measured at export,
                           used by the budget controller to rank alphas

Beside it, the entry ``csub.crc32`` holds the CRC-32 of every tensor and of
the metadata (see ``csub.checkpoint``); readers verify them.

Each operation reads value ids and writes a new one (value 0 is the input):
``conv`` / ``linear`` (``w``, ``b``: tensor names; ``line``: the names have a
``1`` partner; ``compress``: the regime compresses this layer; ``fold``: the
batch norm whose scale is folded before quantizing; ``act``: the activation
range buffer), ``norm`` (``kind`` "bn" or "gn", ``groups``), ``relu``,
``maxpool`` / ``avgpool`` (``k``, ``s``), ``gap``, ``flatten``, ``add`` (``x``,
``x2``). The same description drives ``csrc/runtime.c``, which computes the
network at any alpha with compressed kernels, from Python
(``model.compress(alpha)``) and from C (``csub_model_load``). Each module writes its own
operations (``emit``, beside its ``forward``); ``csub.load`` (``csub.models.load``) reads a
file back into a network.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from safetensors.numpy import load as _st_load

from . import _core, checkpoint, nn
from .nn.graph import Graph

FORMAT, VERSION = "csub-model", 1


def default_input_shape(model: Any) -> tuple[int, int, int]:
    """(C, H, W) of one sample for the networks of csub.models (pixels; an MLP's features as
    square planes where they allow it, else rows of one plane per channel)."""
    cfg = model.config
    if cfg["model"] == "mlp":  # images of in_channels square planes when the features allow it
        c = cfg["in_channels"]
        hw = cfg["in_features"] // c
        side = int(round(hw ** 0.5))
        if c * hw != cfg["in_features"]:
            raise ValueError(f"input_shape: an mlp of {cfg['in_features']} features over {c} channels has no "
                             f"(C, H, W) layout; pass input_shape")
        return (c, side, side) if side * side == hw else (c, hw, 1)  # rows of one plane per channel
    if cfg["model"] == "cnn":
        return (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    if cfg["model"] == "resnet18":
        return (cfg["in_channels"], 224, 224)
    return (cfg["in_channels"], 32, 32)


def describe(model: Any, input_shape: Optional[Sequence[int]] = None,
             levels: Optional[Iterable[Mapping[str, float]]] = None) -> dict[str, Any]:
    """The metadata object of an exported model (see the module docstring)."""
    if not (isinstance(model, nn.Module) and hasattr(model, "config") and hasattr(model, "compressible_layers")):
        raise TypeError(f"model: expected a network of csub.models, got {type(model).__name__}")
    shape = _check_input_shape(input_shape, model)
    g = Graph(model)
    out = model.emit(g, 0)
    weights = [op for op in g.ops if op["op"] in ("conv", "linear")]
    first, last = weights[0], weights[-1]  # the logits' width: the last weight layer's outputs
    if first["op"] == "conv" and shape[0] != first["cin"]:
        raise ValueError(f"input_shape: {shape} has {shape[0]} channels, the model's first layer takes "
                         f"{first['cin']}")
    if first["op"] == "linear" and shape[0] * shape[1] * shape[2] != first["cin"]:
        raise ValueError(f"input_shape: {shape} holds {shape[0] * shape[1] * shape[2]} values per sample, the "
                         f"model's first layer takes {first['cin']}")
    meta = dict(format=FORMAT, version=VERSION, model=model.config["model"], config=model.config,
                regime=model.regime, subspace=model.subspace, bit_range=list(model.bit_range),
                width_range=list(model.width_range), input_shape=list(shape), num_classes=last["cout"],
                graph=g.ops, output=out)
    if levels is not None:
        meta["levels"] = _check_levels(levels)
    return meta


def _check_input_shape(input_shape: Optional[Sequence[int]], model: Any) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else default_input_shape(model)
    try:
        ok = len(shape) == 3 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                     for v in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"input_shape: expected (C, H, W) of positive ints, got {input_shape!r}")
    return tuple(int(v) for v in shape)


def _number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_levels(levels):
    """[{"alpha", "accuracy"}] as floats: alpha in [0, 1], accuracy a fraction in [0, 1] (finite)."""
    if isinstance(levels, (str, bytes, dict)) or not hasattr(levels, "__iter__"):
        raise ValueError(f"levels: expected a list of dicts with alpha and accuracy, got {type(levels).__name__}")
    out = []
    for i, r in enumerate(levels):
        if not hasattr(r, "keys"):
            raise ValueError(f"levels[{i}]: expected a dict with alpha and accuracy, got {type(r).__name__}")
        for key in ("alpha", "accuracy"):
            if key not in r:
                raise ValueError(f"levels[{i}]: missing field {key!r} (each level needs alpha and accuracy)")
            if not _number(r[key]) or not (math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0):
                raise ValueError(f"levels[{i}].{key}: expected a finite number in [0, 1], got {r[key]!r}")
        out.append(dict(alpha=float(r["alpha"]), accuracy=float(r["accuracy"])))
    if len(out) > 100000:
        raise ValueError(f"levels: {len(out)} levels, at most 100000")
    return out


def to_bytes(model: Any, input_shape: Optional[Sequence[int]] = None,
             levels: Optional[Iterable[Mapping[str, float]]] = None) -> bytes:
    """The exported file's bytes (see ``export``)."""
    meta = describe(model, input_shape, levels)
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state_dict().items()}
    return checkpoint.to_bytes(tensors, {"csub": json.dumps(meta, allow_nan=False)})


def check(data: bytes, path: str = "<bytes>") -> dict[str, Any]:
    """Read a model file's bytes with every reader csub has, or raise ValueError naming path:
    the Python reader (format, layout, checksums, metadata; what ``load`` uses) and the C
    runtime's loader (what ``CompressedNet`` and the C library use), which also checks the
    graph against the tensors and infers every operation's shape from ``input_shape``.
    Returns the metadata object."""
    checkpoint.read(data, path)
    meta = read_meta(data, path)
    try:
        _core.model_load(bytes(data))
    except ValueError as e:
        raise ValueError(f"{path}: the C runtime cannot load this model file ({e}; input_shape "
                         f"{meta.get('input_shape')})") from None
    return meta


def export(model: Any, path: Union[str, os.PathLike], input_shape: Optional[Sequence[int]] = None,
           levels: Optional[Iterable[Mapping[str, float]]] = None,
           overwrite_readonly: bool = False) -> Union[str, os.PathLike]:
    """Write the whole subspace of ``model`` (both ends of a line), its regime, level maps and
    architecture to ``path`` (safetensors, written atomically).

    Args:
        input_shape: (C, H, W) of one sample (default: the model's natural input).
        levels: optional ``evaluate`` results (dicts with alpha and accuracy), stored so the
            budget controller ranks alphas by measured accuracy.
        overwrite_readonly: replace a read-only ``path`` (else PermissionError).
    Returns:
        path.

    The arguments are validated first (ValueError naming the argument), and the written file
    is read back by every reader (``check``) before it replaces ``path``; if one refuses it,
    ``path`` is left as it was.
    """
    data = to_bytes(model, input_shape, levels)

    def verify(tmp):
        with open(tmp, "rb") as f:
            check(f.read(), os.fspath(path))

    checkpoint.atomic_write(path, data, overwrite_readonly=overwrite_readonly, verify=verify)
    return path


def read_meta(data: bytes, path: Optional[str] = None) -> dict[str, Any]:
    """The ``csub`` metadata object of an exported file's bytes (ValueError if there is none)."""
    where = f"{path}: " if path else ""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(bytes(data[8:8 + n]))
        meta = json.loads(header["__metadata__"]["csub"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}not a csub model file ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where}not a csub model file (no csub-model metadata)")
    if meta.get("version") != VERSION:
        raise ValueError(f"{where}csub model file version {meta.get('version')!r}; this csub reads {VERSION}")
    return meta


def input_stats(data: bytes) -> dict[str, np.ndarray]:
    """{"input_mean", "input_std"}: the (C,) float32 arrays of an exported file's bytes (inputs
    are normalised as (pixel / 255 - mean) / std)."""
    tensors = _st_load(data)
    return {k: tensors[k] for k in ("input_mean", "input_std")}
