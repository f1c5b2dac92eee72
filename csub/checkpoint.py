"""Checkpoints in the safetensors format, written atomically, with checksums.

A checkpoint is one safetensors file: tensors named ``<group>.<name>`` (for
example ``model.blocks.0.conv1.weight``, ``optim.velocity.3``) and a JSON
metadata entry ``csub`` with everything else (epoch, configuration,
history). It is written to a temporary file in the same directory, flushed
to disk and renamed over the target, so a crash leaves either the old file
or the new one, never half of one.

Every safetensors file csub writes (checkpoints and exported models) carries
a metadata entry ``csub.crc32``: a JSON object mapping each tensor name, and
``"__metadata__"``, to 8 lowercase hex digits of a CRC-32 (``zlib.crc32``).
A tensor's covers the text ``"<DTYPE> <d0>,<d1>,...\\n"`` then its bytes;
``"__metadata__"`` covers every other metadata entry, keys in bytewise order,
as ``key NUL value NUL``. Readers (``read`` here, ``csrc/safetensors.c`` in
C) verify them and name the file and tensor on a mismatch. Files without the
entry, written by csub before it stored checksums, are read unverified (the
format is otherwise unchanged).

Temporary files are named ``.<target>.csub-tmp-<host>-<pid>-<random>``; a
write (and a checkpoint read) removes the ones in its directory left by a
process of this host that no longer runs (a killed write), never a live one's.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import socket
import stat
import struct
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from safetensors.numpy import load as _st_load

CRC_KEY = "csub.crc32"
_CRC_META = "__metadata__"
_TMP = re.compile(r"^\..+\.csub-tmp-([0-9a-f]{8})-([0-9]+)-[0-9a-f]{8}$")
PathLike = Union[str, "os.PathLike[str]"]


# -------------------------------------------------------------- atomic files

def _host_tag():
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except (OverflowError, OSError):
        return False
    return True


def remove_stale_temporaries(directory: PathLike) -> List[str]:
    """Remove csub's temporary files in ``directory`` left by dead processes of this host
    (a write killed before its rename). Returns the names removed. Others' files, and the
    temporaries of live processes, are never touched."""
    host, removed = _host_tag(), []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _TMP.match(name)
        if not m or m.group(1) != host or _pid_alive(int(m.group(2))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def atomic_write(path: PathLike, data: bytes, overwrite_readonly: bool = False,
                 verify: Optional[Callable[[str], Any]] = None) -> None:
    """Write bytes to ``path`` atomically: a temporary file in the same directory, fsync,
    rename over the target, fsync of the directory.

    Like ``open(path, "wb")``, a new file gets mode 0666 less the umask; a replaced file
    keeps its mode. A read-only target (no write permission, or no write bit at all) is
    refused with PermissionError unless ``overwrite_readonly``; a directory target is
    IsADirectoryError. A symbolic link is followed (its target is replaced).

    Args:
        path: the file to write.
        data: its whole content (bytes or another buffer).
        overwrite_readonly: replace a read-only target instead of refusing it.
        verify: optional callable run on the temporary file's path after it is on disk and
            before the rename; what it raises aborts the write (the target stays as it was).
    """
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    mode = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", path)
        mode = stat.S_IMODE(st.st_mode)
        readonly = not (mode & 0o222) or not os.access(path, os.W_OK)
        if readonly and not overwrite_readonly:
            raise PermissionError(errno.EACCES, "the file is read-only (mode "
                                  f"{mode:04o}); pass overwrite_readonly=True to replace it", path)
    remove_stale_temporaries(directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.csub-tmp-{_host_tag()}-{os.getpid()}-"
                                  f"{secrets.token_hex(4)}")
    # 0666 through the umask, as open() does (and as a default ACL says)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:  # name the file asked for, not the temporary
        raise type(e)(e.errno, f"cannot write a file in {directory}: {e.strerror}", path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
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


# ---------------------------------------------------- safetensors with CRCs

def _crc_hex(crc):
    return f"{crc & 0xFFFFFFFF:08x}"


def _tensor_crc(dtype, shape, raw):
    desc = f"{dtype} {','.join(str(int(d)) for d in shape)}\n".encode()
    return _crc_hex(zlib.crc32(raw, zlib.crc32(desc)))


def _metadata_crc(metadata):
    crc = 0
    for k in sorted((k for k in metadata if k != CRC_KEY), key=lambda k: k.encode()):
        crc = zlib.crc32(k.encode() + b"\0" + metadata[k].encode() + b"\0", crc)
    return _crc_hex(crc)


_ST_DTYPES = {np.dtype(t): n for t, n in [
    (np.float32, "F32"), (np.float64, "F64"), (np.float16, "F16"), (np.int64, "I64"), (np.int32, "I32"),
    (np.int16, "I16"), (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL"), (np.uint16, "U16"),
    (np.uint32, "U32"), (np.uint64, "U64")]}


def to_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes of ``{name: array}`` (any shape, a dtype of ``_ST_DTYPES``, else TypeError)
    and ``{key: str}`` metadata, with the ``csub.crc32`` checksum entry added (see the module
    docstring). The same tensors and metadata always give the same bytes."""
    metadata = dict(metadata)
    sums = {_CRC_META: _metadata_crc(metadata)}
    for name, a in tensors.items():
        if a.dtype not in _ST_DTYPES:
            raise TypeError(f"{name}: cannot store dtype {a.dtype}")
        sums[name] = _tensor_crc(_ST_DTYPES[a.dtype], a.shape, np.ascontiguousarray(a).tobytes())
    metadata[CRC_KEY] = json.dumps(sums, sort_keys=True)
    # written here rather than by safetensors.numpy.save, whose metadata order varies between
    # processes: the same tensors give the same bytes. Tensors in name order, back to back;
    # the header padded with spaces to a multiple of 8 bytes, as the reference writer does.
    header, chunks, offset = {_CRC_META: dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.tobytes()
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read(data: bytes, path: str = "<bytes>") -> Tuple[Dict[str, str], Dict[str, np.ndarray]]:
    """Parse and verify safetensors bytes: ``(metadata dict or {}, {name: array})``; ``path``
    names the source in errors.

    Beyond the format (safetensors' own checks), the tensors must fill the data section
    exactly (no trailing bytes, as the C reader's model loader requires), and where the
    file carries checksums every tensor and the metadata must match them. Any failure is
    a ValueError naming ``path`` and the tensor or field.
    """
    data = bytes(data)
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(data)} bytes, shorter than the 8-byte header "
                         "length)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: not a safetensors file (header length {n} is larger than the "
                         f"{len(data) - 8} bytes after it)")
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (header: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (the header is not a JSON object)")
    # gaps and trailing bytes (which safetensors refuses without naming them) first
    spans = [(v.get("data_offsets"), k) for k, v in header.items() if k != _CRC_META and isinstance(v, dict)]
    if all(isinstance(o, list) and len(o) == 2 and all(map(_is_int, o)) for o, _ in spans):
        end = 0
        for (b, e), k in sorted((tuple(o), k) for o, k in spans):
            if b != end:
                raise ValueError(f"{path}: tensor {k!r} starts at byte {b} of the data section, not at {end} "
                                 "where the tensor before it ends")
            end = e
        if end < len(data) - 8 - n:
            raise ValueError(f"{path}: {len(data) - 8 - n - end} trailing bytes after the last tensor (the "
                             f"data section has {len(data) - 8 - n} bytes, the tensors {end})")
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    metadata = header.get(_CRC_META) or {}
    if CRC_KEY in metadata:
        _verify(header, metadata, tensors, memoryview(data)[8 + n:], path)
    return metadata, tensors


def _verify(header, metadata, tensors, body, path):
    try:
        sums = json.loads(metadata[CRC_KEY])
    except ValueError as e:
        raise ValueError(f"{path}: __metadata__ {CRC_KEY!r}: {e}") from None
    if not isinstance(sums, dict) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{8}", v)
                                             for v in sums.values()):
        raise ValueError(f"{path}: __metadata__ {CRC_KEY!r} is not an object of 8-hex-digit checksums")
    extra = sorted(set(sums) - set(tensors) - {_CRC_META})
    if extra:
        raise ValueError(f"{path}: __metadata__ {CRC_KEY!r} has a checksum for {extra[0]!r}, which is not a "
                         "tensor of the file")
    if _CRC_META not in sums:
        raise ValueError(f"{path}: __metadata__ {CRC_KEY!r} has no checksum for {_CRC_META!r}")
    got = _metadata_crc(metadata)
    if got != sums[_CRC_META]:
        raise ValueError(f"{path}: __metadata__: CRC-32 {got} does not match the stored {sums[_CRC_META]} "
                         "(the file is damaged or was edited)")
    for name, a in tensors.items():
        if name not in sums:
            raise ValueError(f"{path}: tensor {name!r} has no checksum in __metadata__ {CRC_KEY!r}")
        h = header[name]
        b, e = h["data_offsets"]
        got = _tensor_crc(h["dtype"], h["shape"], body[b:e])
        if got != sums[name]:
            raise ValueError(f"{path}: tensor {name!r}: CRC-32 {got} does not match the stored {sums[name]} "
                             "(the file is damaged or was edited)")


# --------------------------------------------------------------- checkpoints

def save(path: PathLike, groups: Mapping[str, Mapping[str, np.ndarray]], meta: Dict[str, Any]) -> None:
    """Save ``{group: {name: array}}`` and a JSON-serialisable ``meta`` to ``path``, atomically.
    A tensor is stored as ``<group>.<name>`` with its dtype and shape (a 0-d array as shape (1,))."""
    tensors = {}
    for g, arrays in groups.items():
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            tensors[f"{g}.{name}"] = a.reshape(1) if a.ndim == 0 else a
    atomic_write(path, to_bytes(tensors, {"csub": json.dumps(meta)}))


def load(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint: ``{"meta": dict, group: {name: array}, ...}``; checksums verified.
    Removes stale temporaries of killed writes in its directory. A file that is not a csub
    checkpoint is a ValueError naming it."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    metadata, tensors = read(data, path)
    if "csub" not in metadata:
        raise ValueError(f"{path}: no csub metadata in this safetensors file")
    try:
        meta = json.loads(metadata["csub"])
    except ValueError as e:
        raise ValueError(f"{path}: __metadata__ 'csub' is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: __metadata__ 'csub' is not a JSON object")
    out = {"meta": meta}
    for key, a in tensors.items():
        if "." not in key or key.startswith("meta."):
            raise ValueError(f"{path}: tensor {key!r} is not named <group>.<name> (a group other than 'meta')")
        g, name = key.split(".", 1)
        out.setdefault(g, {})[name] = a
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def load_training(path: PathLike, template: Mapping[str, Mapping[str, Any]], config: Dict[str, Any],
                  upgrade: Optional[Mapping[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]]] = None
                  ) -> Dict[str, Any]:
    """Read a checkpoint written by ``csub.fit`` and check it against the run resuming it.

    Args:
        template: ``{group: {name: array}}`` of this run (model, optimizer and generator
            state): the checkpoint must hold exactly these tensors, with these dtypes and
            shapes (0-d arrays are stored with shape (1,)).
        config: the run's configuration (JSON types); the checkpoint's must equal it.
        upgrade: ``{group: function}`` applied to a group's ``{name: array}`` before the check,
            e.g. the model's ``_upgrade_keys`` for tensor names older csub wrote.
    Returns:
        ``load``'s dict. Meta fields: epoch (int in [1, config["epochs"]]), config, history
        (a list of ``epoch`` dicts numbered 1..epoch). Any other content is a ValueError
        naming the file and the field or tensor.
    """
    path = os.fspath(path)
    state = load(path)
    meta = state["meta"]
    for field, ok, what in (("epoch", _is_int, "an int"), ("config", lambda v: isinstance(v, dict), "an object"),
                            ("history", lambda v: isinstance(v, list), "a list")):
        if field not in meta:
            raise ValueError(f"{path}: meta field {field!r} is missing")
        if not ok(meta[field]):
            raise ValueError(f"{path}: meta field {field!r} is not {what} ({type(meta[field]).__name__})")
    if meta["config"] != config:
        raise ValueError(f"resume: {path} was written with another configuration: {meta['config']}")
    epoch, epochs = meta["epoch"], config.get("epochs")
    if not 1 <= epoch <= (epochs if _is_int(epochs) else epoch):
        raise ValueError(f"{path}: meta field 'epoch' is {epoch}, expected 1..{epochs}")
    history = meta["history"]
    if len(history) != epoch:
        raise ValueError(f"{path}: meta field 'history' has {len(history)} records for epoch {epoch}")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or rec.get("epoch") != i + 1:
            raise ValueError(f"{path}: meta field 'history[{i}]' is not the record of epoch {i + 1}")
    for g, fn in (upgrade or {}).items():
        if g in state:
            state[g] = dict(fn(state[g]))
    extra = sorted(set(state) - {"meta"} - set(template))
    if extra:
        raise ValueError(f"{path}: unexpected tensor group {extra[0]!r} (tensor "
                         f"'{extra[0]}.{next(iter(state[extra[0]]))}')")
    for g, arrays in template.items():
        have = state.get(g, {})
        for name in arrays:
            if name not in have:
                raise ValueError(f"{path}: tensor '{g}.{name}' is missing")
        for name in have:
            if name not in arrays:
                raise ValueError(f"{path}: unexpected tensor '{g}.{name}'")
        for name, want in arrays.items():
            want = np.asarray(want)
            shape = (1,) if want.ndim == 0 else want.shape
            a = have[name]
            if a.dtype != want.dtype or a.shape != shape:
                raise ValueError(f"{path}: tensor '{g}.{name}' is {a.dtype} {a.shape}, expected {want.dtype} "
                                 f"{shape}")
    optim = state.get("optim", {})
    if "steps" in optim and int(optim["steps"].reshape(-1)[0]) < 0:
        raise ValueError(f"{path}: tensor 'optim.steps' is negative")
    if "lr" in optim and not (math.isfinite(float(optim["lr"].reshape(-1)[0])) and optim["lr"].reshape(-1)[0] >= 0):
        raise ValueError(f"{path}: tensor 'optim.lr' is not a finite learning rate >= 0")
    rng = state.get("rng", {})
    if "state" in rng and not rng["state"].any():
        raise ValueError(f"{path}: tensor 'rng.state' is all zero (not a generator state)")
    return state
