"""Safe decoding of reply arrays, and the bounds on weight and norm, without Flower."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from fish_fl.federation.guard import cap_weight, lower_median, norm_bound
from fish_fl.federation.replies import combine_scores, weight_cap
from fish_fl.federation.wire import NUMPY_STYPE, ArrayView, WireError, decode_array, metric


def _view(array: np.ndarray, **changes: object) -> ArrayView:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    values: dict[str, object] = {
        "stype": NUMPY_STYPE,
        "dtype": str(array.dtype),
        "shape": tuple(array.shape),
        "data": buffer.getvalue(),
    }
    values.update(changes)
    return ArrayView(**values)  # type: ignore[arg-type]


def _header(shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": fortran, "shape": shape}
    )
    return buffer.getvalue()


def test_decode_gives_the_values() -> None:
    x = np.arange(6, dtype=np.float32)
    out = decode_array(_view(x), "update", dtype="<f4", length=6)
    assert out.dtype == np.float32 and np.array_equal(out, x)
    out[0] = 99  # a copy: the message's bytes are not aliased
    assert decode_array(_view(x), "update", dtype="<f4")[0] == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stype": "torch.Tensor"}, "serialisation type 'torch.Tensor'"),
        ({"dtype": "float64"}, "dtype float64, expected float32"),
        ({"dtype": "no-such-type"}, "unknown dtype"),
        ({"shape": (2, 3)}, "expected a 1-D array"),
        ({"shape": (5,)}, "5 values, expected 6"),
        ({"data": _header((2**41,))}, "bytes hold float32 (2199023255552,)"),
        ({"data": _header((6,)) + b"\0" * 8}, "8 bytes of data, expected 24"),
        ({"data": _header((6,)) + b"\0" * 28}, "28 bytes of data, expected 24"),
        ({"data": _header((6,), "<f8") + b"\0" * 48}, "bytes hold float64"),
        ({"data": b"not an npy file"}, "not a NumPy array"),
        ({"data": "text"}, "not bytes"),
    ],
)
def test_decode_refuses(changes: dict[str, object], message: str) -> None:
    x = np.arange(6, dtype=np.float32)
    with pytest.raises(WireError, match="^update: ") as err:
        decode_array(_view(x, **changes), "update", dtype="<f4", length=6)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_metric_is_a_finite_number_or_none() -> None:
    m = {"a": 1, "b": 2.5, "c": float("nan"), "d": float("inf"), "e": True, "f": "x"}
    assert [metric(m, k) for k in "abcdefg"] == [1, 2.5, None, None, None, None, None]


def test_lower_median() -> None:
    assert lower_median([3.0]) == 3.0
    assert lower_median([5.0, 1.0]) == 1.0  # the smaller of two: an honest norm
    assert lower_median([4.0, 1.0, 9.0]) == 4.0
    assert lower_median([4.0, 1.0, 9.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        lower_median([])


def test_norm_bounds_by_hand() -> None:
    fixed = norm_bound([1.0, 1e9], [], fixed=5.0, factor=10.0, policy="reject")
    assert (fixed.limit, fixed.source) == (5.0, "max-update-norm")
    assert fixed.check(4.0) == (True, 1.0) and fixed.check(6.0) == (False, 1.0)
    clip = norm_bound([1.0], [], fixed=5.0, factor=10.0, policy="clip")
    assert clip.check(10.0) == (True, 0.5)
    # Adaptive: 10 x the lower median of this round's and the last round's norms.
    adaptive = norm_bound([2.0, 3e38], [1.0, 4.0], fixed=0.0, factor=10.0, policy="reject")
    assert adaptive.source == "adaptive" and adaptive.limit == 20.0  # median of 1, 2, 4, 3e38
    assert adaptive.check(19.0)[0] and not adaptive.check(3e38)[0]
    assert not adaptive.check(math.nan)[0] and not adaptive.check(math.inf)[0]
    off = norm_bound([2.0, 3e38], [], fixed=0.0, factor=0.0, policy="reject")
    assert off.source == "none" and off.check(3e38)[0]


def test_weight_cap_order_and_capping() -> None:
    assert weight_cap(50, 1000, [10, 10**12]) == 50.0  # the key first
    assert weight_cap(0, 1000, [10, 10**12]) == 1000.0  # then the largest partition
    assert weight_cap(0, None, [10, 30, 10**12]) == 30.0  # then the claims' lower median
    assert cap_weight(10**12, 1000.0) == (1000.0, True)
    assert cap_weight(999, 1000.0) == (999.0, False)


def test_client_scores_are_combined_as_equal_shares() -> None:
    shapes = {"a": (2,), "b": (2,)}
    honest = torch.tensor([1.0, 3.0, 0.0, 4.0], dtype=torch.float64)  # sum 8
    loud = torch.tensor([0.0, 0.0, 1e4, 1e4], dtype=torch.float64)  # sum 2e4
    out = combine_scores([honest, loud], shapes)
    # 1/8, 3/8, 0, 4/8 plus 0, 0, 1/2, 1/2
    torch.testing.assert_close(out["a"], torch.tensor([0.125, 0.375]))
    torch.testing.assert_close(out["b"], torch.tensor([0.5, 1.0]))
    # Scaling a client's scores changes nothing.
    again = combine_scores([honest, loud * 1e20], shapes)
    assert torch.equal(again["a"], out["a"]) and torch.equal(again["b"], out["b"])
