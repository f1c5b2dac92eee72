"""Each C status code reaches Python as its own exception (csrc/python/convert.c).

CSUB_ERR_FORMAT -> csub.FormatError, CSUB_ERR_UNSUPPORTED -> csub.UnsupportedError
(both ValueErrors), CSUB_ERR_ARG -> ValueError, with the C side's message.
"""
import json

import numpy as np
import pytest

import csub
from csub import _core, checkpoint, models


def _model_file(edit):
    """A small exported model, its csub metadata edited by ``edit(meta)``, checksums redone."""
    raw = csub.modelfile.to_bytes(models.mlp(in_features=12, hidden=(8,), num_classes=3))
    header, body = _split(raw)
    meta = json.loads(header["__metadata__"]["csub"])
    edit(meta)
    tensors = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        tensors[name] = np.frombuffer(body[b:e], dtype=np.float32).reshape(h["shape"])
    return checkpoint.to_bytes(tensors, {"csub": json.dumps(meta)})


def _split(raw):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def test_exception_classes_are_value_errors_and_exported():
    for name in ("FormatError", "UnsupportedError", "BudgetError"):
        cls = getattr(csub, name)
        assert cls is getattr(_core, name)
        assert issubclass(cls, ValueError)
        assert cls.__doc__


def test_malformed_file_is_a_format_error():
    with pytest.raises(csub.FormatError, match="header length"):
        _core.model_load(b"\xff" * 32)


def test_newer_version_is_unsupported():
    raw = _model_file(lambda m: m.__setitem__("version", 2))
    with pytest.raises(csub.UnsupportedError, match="unsupported version"):
        _core.model_load(raw)


def test_unknown_operation_is_unsupported():
    raw = _model_file(lambda m: m["graph"][0].__setitem__("op", "softmax2"))
    with pytest.raises(csub.UnsupportedError, match="unknown op 'softmax2'"):
        _core.model_load(raw)


def test_well_formed_file_still_loads():
    _core.model_load(_model_file(lambda m: None))


def test_kernel_argument_status_is_a_plain_value_error():
    with pytest.raises(ValueError) as e:
        _core.gemm(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
    assert not isinstance(e.value, (csub.FormatError, csub.UnsupportedError))
