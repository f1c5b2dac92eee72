"""Checkpoints in the safetensors format, written atomically.

A checkpoint is one safetensors file: tensors named ``<group>.<name>`` (for
example ``model.blocks.0.conv1.weight``, ``optim.velocity.3``) and a JSON
metadata entry ``csub`` with everything else (epoch, configuration,
history). It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash leaves either the old file
or the new one, never half of one.
"""
import json
import os
import tempfile

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save


def atomic_write(path, data):
    """Write bytes to ``path`` atomically (temporary file, fsync, rename)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(path, groups, meta):
    """Save ``{group: {name: array}}`` and a JSON-serialisable ``meta`` to ``path``."""
    tensors = {}
    for g, arrays in groups.items():
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            tensors[f"{g}.{name}"] = a.reshape(1) if a.ndim == 0 else a
    atomic_write(path, _st_save(tensors, metadata={"csub": json.dumps(meta)}))


def load(path):
    """Read a checkpoint: ``{"meta": dict, group: {name: array}, ...}``."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        tensors = _st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        meta = json.loads(header.get("__metadata__", {}).get("csub", "null"))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable csub checkpoint ({e})") from None
    if meta is None:
        raise ValueError(f"{path}: no csub metadata in this safetensors file")
    out = {"meta": meta}
    for key, a in tensors.items():
        g, name = key.split(".", 1)
        out.setdefault(g, {})[name] = a
    return out
