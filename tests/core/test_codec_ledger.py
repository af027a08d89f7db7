"""The update codec (round trip per dtype) and the communication ledger."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_fl.codec import UpdateCodec
from fish_fl.ledger import CommLedger, paper_message_bytes


@pytest.mark.parametrize(
    ("dtype", "np_dtype", "torch_dtype"),
    [
        ("float32", np.float32, torch.float32),
        ("float16", np.float16, torch.float16),
        ("bfloat16", np.uint16, torch.bfloat16),
    ],
)
def test_round_trip(dtype: str, np_dtype: type, torch_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1001, generator=g) * torch.logspace(-6, 3, 1001)
    codec = UpdateCodec(dtype)
    wire = codec.encode(values)
    assert wire.dtype == np_dtype and wire.shape == (1001,)
    assert wire.nbytes == 1001 * codec.bytes_per_value
    back = codec.decode(wire, expected=1001)
    assert back.dtype == torch.float32
    assert torch.equal(back, values.to(torch_dtype).float())
    # Decoding is exact: a second trip changes nothing.
    assert np.array_equal(codec.encode(back), wire)


def test_bfloat16_words_are_the_top_half_of_float32() -> None:
    values = torch.tensor([1.0, -2.5, 3.140625])
    words = UpdateCodec("bfloat16").encode(values)
    top = (values.numpy().view(np.uint32) >> 16).astype(np.uint16)
    assert np.array_equal(words, top)


def test_bad_updates_rejected() -> None:
    with pytest.raises(ValueError, match="update dtype must be one of"):
        UpdateCodec("int8")
    with pytest.raises(ValueError, match="values that overflow for float16"):
        UpdateCodec("float16").encode(torch.tensor([1e6]))
    with pytest.raises(ValueError, match="non-finite"):
        UpdateCodec("float32").encode(torch.tensor([float("nan")]))
    codec = UpdateCodec("float32")
    with pytest.raises(ValueError, match="update has dtype float64, expected float32"):
        codec.decode(np.zeros(3))
    with pytest.raises(ValueError, match="update has 3 values, expected 4"):
        codec.decode(np.zeros(3, np.float32), expected=4)
    with pytest.raises(ValueError, match="non-finite"):
        codec.decode(np.array([np.inf], np.float32))


def test_ledger_totals_and_equivalents() -> None:
    ledger = CommLedger(model_numel=1000)  # one full model = 4000 bytes
    ledger.record_down(1, 500, paper_bytes=400, mask_bytes=100)
    ledger.record_down(1, 400, paper_bytes=400)
    ledger.record_up(1, 300, paper_bytes=320)
    ledger.record_up(1, 300, paper_bytes=320)
    ledger.record_down(2, 400, paper_bytes=400)
    ledger.record_up(2, 200, paper_bytes=320)
    s1, s2 = ledger.summary(1), ledger.summary(2)
    assert (s1["bytes_down"], s1["bytes_up"], s1["mask_bytes"], s1["mask_broadcasts"]) == (
        900,
        600,
        100,
        1,
    )
    assert s1["cum_fme"] == pytest.approx(1500 / 4000)
    assert (s2["bytes_down"], s2["cum_bytes_down"], s2["cum_bytes_up"]) == (400, 1300, 800)
    assert s2["cum_fme"] == pytest.approx(2100 / 4000)
    assert s2["cum_paper_fme"] == pytest.approx((1200 + 960) / 4000)
    assert s2["messages_up"] == 1 and s1["messages_down"] == 2
    again = CommLedger.from_dict(ledger.to_dict())
    assert again.summary(2) == s2
    with pytest.raises(ValueError, match="round 1 recorded after round 2"):
        ledger.record_up(1, 10)


def test_paper_accounting() -> None:
    assert paper_message_bytes(10, 1000) == 80  # 10 float32 values + 10 int32 indices
    assert paper_message_bytes(1000, 1000) == 4000  # dense: no indices
    assert paper_message_bytes(10, 1000, value_bytes=2) == 60
