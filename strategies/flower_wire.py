"""The edge between Flower messages and the core's plain views of them.

:func:`view_of` turns a reply into a :class:`~fish_fl.federation.wire.ReplyView`
without decoding any array (so nothing a client crafts is allocated or
parsed here); whatever a reply holds that cannot be read becomes a
rejection. :func:`message_bytes` measures a message as it crosses the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import message_to_proto

from fish_fl import protocol as P
from fish_fl.federation.wire import ArrayView, ReplyView

__all__ = ["content", "message_bytes", "view_of"]


def message_bytes(msg: Message) -> int:
    """Size of a message as serialised for the wire (protobuf)."""
    return int(message_to_proto(msg).ByteSize())


def view_of(reply: Message) -> ReplyView | P.Rejected:
    """A reply as plain values, or why it cannot even be read."""
    try:
        node_id = int(reply.metadata.src_node_id)
        if reply.has_error():
            return ReplyView(node_id, error=(int(reply.error.code), str(reply.error.reason or "")))
        records = reply.content
        kinds: dict[str, str] = {}
        for name in records.array_records:
            kinds[name] = "arrays"
        for name in records.metric_records:
            kinds[name] = "metrics"
        for name in records.config_records:
            kinds[name] = "config"
        arrays: dict[str, ArrayView] = {}
        if P.ARRAYS in records.array_records:
            for key, a in records.array_records[P.ARRAYS].items():
                arrays[str(key)] = ArrayView(str(a.stype), str(a.dtype), tuple(a.shape), a.data)
        metrics: dict[str, Any] = {}
        if P.METRICS in records.metric_records:
            metrics = dict(records.metric_records[P.METRICS])
        return ReplyView(node_id, None, kinds, arrays, metrics)
    except Exception as e:  # a reply Flower could deliver but not describe
        return P.Rejected(f"unreadable reply ({type(e).__name__}: {e})")


def content(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> RecordDict:
    """A server-to-node message's records."""
    record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
    return RecordDict({P.ARRAYS: record, P.CONFIG: ConfigRecord(dict(config))})
