"""The glue's status map and argument converters (csrc/python/convert.c).

Every CSUB_ERR_* code of csub.h raises its own exception class with its own
message; most codes have no cheap path from Python (a failed allocation, a
file that cannot be read), so the map is checked through _core._raise_status,
which raises exactly what a wrapper raises for a status.
"""
import numpy as np
import pytest

import csub
from csub import _core

# code -> (exception class, csub_strerror's message)
STATUS = {
    -1: (ValueError, "invalid argument"),            # CSUB_ERR_ARG
    -2: (MemoryError, "out of memory"),              # CSUB_ERR_NOMEM
    -3: (OSError, "input/output error"),             # CSUB_ERR_IO
    -4: (csub.FormatError, "malformed model file"),  # CSUB_ERR_FORMAT
    -5: (csub.UnsupportedError, "unsupported model"),  # CSUB_ERR_UNSUPPORTED
    -6: (csub.BudgetError, "no level fits the budget"),  # CSUB_ERR_BUDGET
}


@pytest.mark.parametrize("code", sorted(STATUS))
def test_each_status_code_raises_its_own_exception_and_message(code):
    cls, msg = STATUS[code]
    with pytest.raises(cls) as e:
        _core._raise_status(code)
    assert type(e.value) is cls  # the class itself, not a parent or a sibling
    assert str(e.value) == msg


def test_status_classes_and_messages_are_all_distinct():
    classes = [c for c, _ in STATUS.values()]
    assert len(set(classes)) == len(classes)
    assert len({m for _, m in STATUS.values()}) == len(STATUS)


def test_status_message_and_place_from_the_c_side():
    with pytest.raises(csub.FormatError, match=r"^model_load: graph\[3\]: bad$"):
        _core._raise_status(-4, "model_load", "graph[3]: bad")
    with pytest.raises(MemoryError, match="^out of memory$"):
        _core._raise_status(-2, None, "")  # an empty C message falls back to the code's own


def test_unknown_status_is_a_system_error_and_ok_is_refused():
    with pytest.raises(SystemError, match="unknown error"):
        _core._raise_status(-99)
    with pytest.raises(ValueError, match="status: 0"):
        _core._raise_status(0)


def test_bytes_arguments_are_named():
    for f, name in ((_core.model_load, "data"), (_core.st_parse, "data"), (_core.json_parse, "text")):
        with pytest.raises(TypeError, match=f"^{name}: expected a bytes-like object, got str$"):
            f("not bytes")
    with pytest.raises(TypeError, match="^data: expected a bytes-like object, got int$"):
        _core.model_load(data=3)


def test_numbers_are_reported_before_arrays():
    # parse() checks array, shape, state and model arguments after every number converted
    with pytest.raises(TypeError, match="^stride: expected an int"):
        _core.conv2d_sparse_forward("x", "rowptr", "colidx", "values", "shape", None, "2")
    with pytest.raises(TypeError, match="^K: expected an int"):
        _core.sample_alpha_discrete("state", "4")
    with pytest.raises(TypeError, match="^batch: expected an int"):
        _core.model_memory("model", 1.5)


def test_converted_arguments_are_checked_in_order():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(TypeError, match="^rowptr: expected dtype int64"):
        _core.conv2d_sparse_forward(x, np.zeros(3, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32),
                                    "not a shape")
    with pytest.raises(ValueError, match="^weight_shape: expected a sequence of 4 integers"):
        _core.conv2d_sparse_forward(x, np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                                    "not a shape")
    with pytest.raises(ValueError, match=r"^state: expected a uint64 array of shape \(4,\)"):
        _core.rng_seed(np.zeros(3, np.uint64), 1)
    with pytest.raises(ValueError, match="^state: the all-zero state is invalid"):
        _core.rng_uniform(np.zeros(4, np.uint64))
    _core.rng_seed(np.zeros(4, np.uint64), 1)  # an all-zero state is fine to seed
    with pytest.raises(TypeError, match="^model: expected a model from model_load, got str"):
        _core.model_forward("m", x)


def test_sparse_dw_of_the_wrong_shape_is_refused_and_nothing_written(rng):
    w = rng.standard_normal((3, 5)).astype(np.float32)
    mask = (rng.random((3, 5)) < 0.5).astype(np.uint8)
    rp, ci, va = _core.csr_from_mask(w, mask)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    dw = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match=r"^dw: expected the weight's shape \(3, 5\)"):
        _core.linear_sparse_backward(x, rp, ci, va, (3, 5), dy, dw)
    assert not dw.any()
    full = np.zeros((3, 5), np.float32)
    dv = np.zeros(len(va), np.float32)
    dx_full = _core.linear_sparse_backward(x, rp, ci, va, (3, 5), dy, full)
    dx_vals = _core.linear_sparse_backward(x, rp, ci, va, (3, 5), dy, dv)
    np.testing.assert_array_equal(dx_full, dx_vals)
    np.testing.assert_allclose(full, (dy.T @ x) * mask, rtol=1e-5, atol=1e-6)  # += at the kept positions only
    np.testing.assert_array_equal(full[mask.astype(bool)], dv)
    assert _core.linear_sparse_backward(x, rp, ci, va, (3, 5), dy, None, need_dx=False) is None


def test_a_conversion_that_calls_csub_again_keeps_the_outer_arguments(rng):
    # stride's __index__ runs a whole csub call (with its own array arguments) in the middle of
    # conv2d_forward's parse; the outer call's arrays must still be the ones it was given
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    inner = []

    class Stride:
        def __index__(self):
            inner.append(_core.relu_forward(np.full((2, 2), -1.0, np.float32)))
            with pytest.raises(ValueError, match=r"^dy: expected the shape of x"):
                _core.relu_backward(np.ones(3, np.float32), np.ones(4, np.float32))
            return 2

    y = _core.conv2d_forward(x, w, None, Stride(), 1)
    np.testing.assert_array_equal(y, _core.conv2d_forward(x, w, None, 2, 1))
    assert y.shape == (1, 3, 3, 3) and len(inner) == 1 and not inner[0].any()

    class Shape(tuple):  # input_shape's entries read while the deferred checks run
        def __getitem__(self, i):
            _core.relu_forward(np.ones((4, 4), np.float32))
            return tuple.__getitem__(self, i)

    dy = np.ones((1, 2, 2, 2), np.float32)
    dx = _core.avgpool2d_backward(dy, Shape((1, 2, 4, 4)), 2, 2)
    np.testing.assert_array_equal(dx, _core.avgpool2d_backward(dy, (1, 2, 4, 4), 2, 2))
