"""Checkpoints of the method's PyTorch reference code -> csub models.

The reference code (github.com/apple/learning-compressible-subspaces) saves
``torch.save(DataParallel(net).state_dict(), "model_<epoch>")``: a flat dict
of tensors whose keys start with ``module.``. ``from_reference`` reads such a
file (or a safetensors file, or a dict of arrays), checks every key, shape and
value against the network the reference builds for the given regime, subspace
and norm, and returns ``csub.models.cpreresnet20(..., layout="reference")``
holding exactly those tensors.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .. import models, nn

# The reference's CIFAR-10 input normalisation (its data transforms), per RGB channel.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
_LIST = 40  # keys listed per error message before "... and N more"


def _fmt(keys):
    keys = sorted(keys)
    more = len(keys) - _LIST
    return "[" + ", ".join(keys[:_LIST]) + (f", ... and {more} more" if more > 0 else "") + "]"


def _to_numpy(name, v):
    if hasattr(v, "detach"):  # a torch tensor
        t = v.detach().cpu()
        if t.is_floating_point():
            t = t.float() if t.element_size() < 4 else t
        return t.numpy()
    try:
        return np.asarray(v)
    except Exception as e:
        raise ValueError(f"checkpoint[{name!r}]: not an array ({type(v).__name__}: {e})") from None


def read_checkpoint(checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint as ``{key: numpy array}``, key prefixes removed.

    Args:
        checkpoint: a path to a PyTorch file (``.pt``/``.pth`` or the reference's
            extension-less ``model_<epoch>``; read with ``torch.load(weights_only=True)``,
            so PyTorch must be installed), a path to a ``.safetensors`` file, or a dict
            of NumPy arrays (or tensors). A dict holding ``state_dict`` is unwrapped.
    Prefixes ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) shared by
    every key are removed.
    """
    source = "checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        path = os.fspath(checkpoint)
        source = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint: no such file: {path}")
        with open(path, "rb") as f:
            head = f.read(16)
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        if path.endswith(".safetensors") or (0 < n < (1 << 30) and head[8:9] == b"{"):
            from safetensors.numpy import load_file
            try:
                state = load_file(path)
            except Exception as e:  # safetensors raises its own error types
                raise ValueError(f"checkpoint: {path} is not a readable safetensors file ({e})") from None
        else:
            try:
                import torch
            except ImportError:
                raise ImportError(f"checkpoint: reading the PyTorch file {path} needs PyTorch "
                                  "(pip install torch), or convert it to safetensors") from None
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"checkpoint: {path} is not a PyTorch file of tensors "
                                 f"that torch.load(weights_only=True) reads ({type(e).__name__}: {e})") from None
    elif isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        raise TypeError(f"checkpoint: expected a path or a dict of arrays, got {type(checkpoint).__name__}")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"checkpoint: {source} holds no dict of tensors")
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise ValueError(f"checkpoint: {source} has keys that are not strings: {bad[:5]}")
    out = {k: _to_numpy(k, v) for k, v in state.items()}
    stripped = True
    while stripped:
        stripped = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                stripped = True
    return out


def _reference_names(model):
    """{csub module path: reference module path} for cpreresnet20(layout="reference")."""
    names = {"stem": "conv1", "head.0": "bn", "fc": "fc"}
    n = model.config["n"]
    for k, block in enumerate(model.blocks):
        ref = f"layer{k // n + 1}.{k % n}"
        if isinstance(block, models.PostNormBottleneck):
            # each conv is the reference's ConvBn2d, carrying its norm as ``.bn``
            pairs = {"conv1": "conv1", "n1": "conv1.bn", "conv2": "conv2", "n2": "conv2.bn", "conv3": "conv3",
                     "n3": "conv3.bn", "shortcut": "downsample.0", "nshort": "downsample.0.bn"}
        else:
            pairs = {"n1": "bn1", "conv1": "conv1", "n2": "bn2", "conv2": "conv2", "n3": "bn3", "conv3": "conv3",
                     "shortcut": "downsample.0"}
        for mine, theirs in pairs.items():
            names[f"blocks.{k}.{mine}"] = f"{ref}.{theirs}"
        names[f"blocks.{k}.select"] = f"{ref}.select"  # channel selection: no csub counterpart
    return names


def _hints(missing, extra, regime, subspace, norm):
    h = []
    if regime != "quantized" and any("quantize_input" in k for k in extra):
        h.append("the file has activation quantizers (quantize_input): a quantized checkpoint? (regime='quantized')")
    if regime == "quantized" and any("quantize_input" in k for k in missing):
        h.append("the file has no activation quantizers: not a checkpoint of the quantized regime")
    if subspace != "line" and any(k.endswith(("weight1", "bias1")) for k in extra):
        h.append("the file holds line endpoints (weight1): a line? (subspace='line')")
    if subspace == "line" and any(k.endswith(("weight1", "bias1")) for k in missing):
        h.append("endpoints (weight1) are missing: a point checkpoint? (subspace='point')")
    if regime == "structured" and subspace == "line" and any(k.endswith("weight1") and ".bn" not in k
                                                             and "conv" in k for k in extra):
        h.append("csub's structured lines share the conv weights between the ends (the reference's "
                 "AdaptiveConv2d); conv endpoints (LinesAdaptiveConv2d) cannot be expressed")
    if norm != "bn" and any(k.endswith("running_mean") for k in extra):
        h.append("the file has batch-norm statistics (norm='bn'?)")
    if norm == "bn" and any(k.endswith("running_mean") for k in missing):
        h.append("no batch-norm statistics in the file (norm='gn' or 'in'?)")
    return ("; " + "; ".join(h)) if h else ""


def _reference_keys(net: models.CPreResNet20, names: Dict[str, str], state: Mapping[str, Any]
                    ) -> Tuple[Dict[str, str], Dict[str, Tuple[int, ...]], set]:
    """(csub state name -> reference key, reference key -> expected shape, reference keys
    allowed but not needed) for ``net`` and the reference module names ``names``."""
    loads = {}        # csub state name -> reference key (or callable producing the array)
    expected = {}     # reference key -> expected shape
    optional = set()  # reference keys allowed but not needed
    for path, m in net.named_modules():
        if path not in names:
            continue
        ref = names[path]
        is_norm = isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))
        params = list(m._parameters)
        point_norm = (is_norm and m.subspace == "line" and f"{ref}.weight" in state
                      and f"{ref}.weight1" not in state and f"{ref}.bias1" not in state)
        for p in params:
            src = p[:-1] if point_norm and p.endswith("1") else p
            key = f"{ref}.{src}"
            shape = m._parameters[p].shape
            if isinstance(m, nn.Linear):  # the reference's classifier is a 1x1 conv
                shape = shape + (1, 1)
            expected[key] = shape
            loads[f"{path}.{p}"] = key
        if isinstance(m, nn.BatchNorm2d):
            for b in ("running_mean", "running_var"):
                expected[f"{ref}.{b}"] = getattr(m, b).shape
                loads[f"{path}.{b}"] = f"{ref}.{b}"
            optional.add(f"{ref}.num_batches_tracked")
        if "act_range" in m._buffers:
            for b in ("running_min_value", "running_max_value"):
                expected[f"{ref}.quantize_input.{b}"] = ()
            optional.add(f"{ref}.quantize_input.iteration_count")
    for k in range(len(net.blocks)):
        optional.add(f"{names[f'blocks.{k}.select']}.indexes")
    optional.add("select.indexes")
    return loads, expected, optional


def _check_reference_state(state: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]], optional: set,
                           regime: Optional[str], subspace: str, norm: str) -> None:
    """ValueError naming the keys where ``state`` is not the reference's network: missing or
    unexpected keys, shapes, dtypes, non-finite values, channel selection, negative variances."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected and k not in optional]
    if missing or extra:
        raise ValueError(f"checkpoint: does not match the reference's cpreresnet20 (regime={regime!r}, "
                         f"subspace={subspace!r}, norm={norm!r}): missing keys {_fmt(missing)}, "
                         f"unexpected keys {_fmt(extra)}" + _hints(missing, extra, regime, subspace, norm))
    wrong = [f"{k}: {tuple(state[k].shape)} (expected {tuple(s)})" for k, s in expected.items()
             if tuple(np.shape(state[k])) != tuple(s) and not (s == () and np.size(state[k]) == 1)]
    if wrong:
        raise ValueError(f"checkpoint: wrong shapes {_fmt(wrong)}")
    notnum = [k for k in list(expected) + [k for k in optional if k in state]
              if state[k].dtype.kind not in "fiub"]
    if notnum:
        raise ValueError(f"checkpoint: not real-valued tensors {_fmt(notnum)}")
    nonfinite = [k for k in expected if not np.all(np.isfinite(state[k]))]
    if nonfinite:
        raise ValueError(f"checkpoint: non-finite values (NaN or inf) in {_fmt(nonfinite)}")
    selected = [k for k in optional if k.endswith("select.indexes") and k in state
                and not np.all(np.asarray(state[k]) == 1)]
    if selected:
        raise ValueError(f"checkpoint: channel selection (the reference's LEC baseline) removes channels in "
                         f"{_fmt(selected)}; csub cannot express a scattered channel subset")
    bad_var = [k for k in expected if k.endswith("running_var") and np.any(state[k] < 0)]
    if bad_var:
        raise ValueError(f"checkpoint: negative running variances in {_fmt(bad_var)}")


def from_reference(checkpoint: Union[str, os.PathLike, Mapping[str, Any]], model: str = "cpreresnet20",
                   regime: Optional[str] = "unstructured", subspace: str = "line", norm: str = "gn",
                   **model_kwargs: Any) -> models.CPreResNet20:
    """A csub model holding a subspace trained by the method's PyTorch reference code.

    Args:
        checkpoint: path to the reference's ``torch.save(model.state_dict())`` file
            (``.pt``/``.pth``/no extension; needs PyTorch), a ``.safetensors`` file, or a
            dict of NumPy arrays (see ``read_checkpoint``); ``module.`` prefixes are removed.
        model: ``"cpreresnet20"``. The reference's ResNet18 max-pools with padding 1 after
            its stem where csub's pools unpadded, and has no classifier bias where csub's
            has one, so it is refused.
        regime: ``"unstructured"`` (the reference's ``SparseLinesConv``/``SparseConv2d``
            block convs), ``"structured"`` (``AdaptiveConv2d`` with ``LinesAdaptiveIN`` /
            ``AdaptiveIN``), ``"quantized"`` (``LinesConvBn2d``/``ConvBn2d`` with their
            norms and activation quantizers) or None (standard convs).
        subspace: ``"line"`` (files with ``weight``/``weight1`` pairs) or ``"point"``.
        norm: ``"gn"`` (the reference's group norm, ``min(C, 32)`` groups), ``"bn"``
            (batch norm with running statistics) or ``"in"`` (instance norm; the only
            norm the reference trains structured subspaces with).
        **model_kwargs: passed to ``csub.models.cpreresnet20`` (``bit_range`` for the
            quantized regime: the reference's ``min_bits``/``max_bits``; ``width_range``
            for the structured one: its ``width_factor_limits``).
    Returns:
        ``csub.models.cpreresnet20(regime=..., subspace=..., norm=..., layout="reference")``
        in evaluation mode at alpha 1, its ``input_mean``/``input_std`` set to the
        reference's CIFAR-10 normalisation (3 input channels).
    Raises:
        ValueError: missing or unexpected keys, wrong shapes, non-finite values, an
            activation range that excludes 0, active channel selection (each error lists
            the keys concerned), or what csub cannot express.

    The reference's semantics, matched (read from its ``models/`` and ``train_curve.py``):
      * line parameters are ``X`` (alpha = 0 end) and ``X1`` (alpha = 1 end), interpolated
        ``(1 - alpha) X + alpha X1`` for conv weights and norm scale and shift alike; a norm
        stored as one tensor inside a line (the reference's ``QuantStandardBN`` of the
        quantized batch-norm setting) becomes a line with equal ends;
      * unstructured: only the block convs (``SparseConv2d``, shortcuts included) are pruned,
        the first conv and the classifier stay dense; the mask keeps the weight interpolated
        at alpha minus its ``int((1 - topk) n)`` smallest magnitudes, ``topk = alpha``
        (csub's exact selection; only ties may be broken differently);
      * the projection shortcut (``downsample``) reads the block's input, not its
        pre-activation; group norm has ``min(C, 32)`` groups (``num_groups=32``);
      * structured: width ``w = lo + (hi - lo) alpha``, each hidden conv keeps its first
        ``max(1, round(C w))`` output channels, norms their first channels, the first
        conv's inputs and the classifier's outputs fixed; the conv weights are shared by the
        line's ends. The reference's Python ``round`` rounds ``C w`` halves to even, csub
        halves up: at the alphas where ``C w`` is exactly ``k + 1/2`` the two differ by one
        channel, everywhere else they agree;
      * quantized: the reference's ``NoOpBN`` leaves each block's input to its in-place ReLU,
        so every block computes ``a = relu(x)``, then conv -> norm (the ``ConvBn2d``'s own
        norm) -> relu twice and conv -> norm, plus ``a`` or ``norm(conv(a))``
        (``csub.models.PostNormBottleneck``); block convs fake-quantize their weight (batch
        norm's ``gamma / sqrt(running_var + eps)`` folded in first, divided out after) per
        tensor from its own min/max and their input from the recorded running range
        (``quantize_input.running_min_value``/``running_max_value``), signed
        ``[-2^(b-1), 2^(b-1) - 1]``, the real range always holding 0, zero point
        ``round(qmin - rmin / scale)``, rounding half to even; bits from alpha in K equal
        bins, ``((k - 1)/K, k/K]`` -> ``min_bits + k - 1`` (the reference's
        ``alpha_bit_map``); the first conv and the classifier stay float;
      * the classifier is the reference's bias-free 1x1 conv (10, 256, 1, 1), stored as a
        Linear (10, 256); its ``AvgPool2d(8)`` on 32x32 inputs is the global average pool;
      * ``num_batches_tracked`` and ``quantize_input.iteration_count`` are training
        counters and are not used; ``select.indexes`` (channel selection, only active in
        the reference's LEC baseline) must be all ones.
    """
    if model == "resnet18":
        raise ValueError("model: the reference's ResNet18 max-pools with padding 1 after its stem (56x56 at "
                         "224x224) and has a bias-free classifier; csub's ResNet18 pools unpadded (55x55), so "
                         "it cannot hold that network")
    if model != "cpreresnet20":
        raise ValueError(f"model: the reference code's networks csub can hold: 'cpreresnet20'; got {model!r}")
    if regime == "structured" and norm == "gn":
        raise ValueError("norm: the reference trains structured subspaces with instance norm (LinesAdaptiveIN); "
                         "use norm='in'")
    if "layout" in model_kwargs:
        raise ValueError("layout: from_reference always builds layout='reference'")
    net = models.cpreresnet20(regime=regime, subspace=subspace, norm=norm, layout="reference", **model_kwargs)
    state = read_checkpoint(checkpoint)

    names = _reference_names(net)
    loads, expected, optional = _reference_keys(net, names, state)
    _check_reference_state(state, expected, optional, regime, subspace, norm)
    new = {}
    for name, key in loads.items():
        new[name] = np.asarray(state[key], np.float32).reshape(net.state_dict()[name].shape)
    bad_range = []
    for path, m in net.named_modules():
        if "act_range" in m._buffers:
            ref = names[path]
            lo = float(np.asarray(state[f"{ref}.quantize_input.running_min_value"]).reshape(-1)[0])
            hi = float(np.asarray(state[f"{ref}.quantize_input.running_max_value"]).reshape(-1)[0])
            if not lo <= 0.0 <= hi:
                bad_range.append(f"{ref}.quantize_input: [{lo}, {hi}]")
            new[f"{path}.act_range"] = np.array([lo, hi, 1.0], np.float32)
    if bad_range:
        raise ValueError(f"checkpoint: activation ranges must hold 0 (the reference's quantizer refuses "
                         f"others) {_fmt(bad_range)}")
    c = net.in_channels
    new["input_mean"] = np.array(CIFAR10_MEAN if c == 3 else [0.0] * c, np.float32)
    new["input_std"] = np.array(CIFAR10_STD if c == 3 else [1.0] * c, np.float32)
    net.load_state_dict(new, strict=True)
    net.eval()
    net.set_alpha(1.0)
    return net
