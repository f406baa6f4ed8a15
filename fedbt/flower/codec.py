"""The suite's client messages as Flower records, and the bytes a message puts on the wire.

A dataclass travels as one ``RecordDict``: every field holding named tensors (``dict[str, torch.Tensor]``)
becomes an ``ArrayRecord`` of the same name, every other field one JSON value in the ``ConfigRecord``
:data:`FIELDS`, rebuilt from the dataclass's type hints on arrival (tuples, frozensets, nested dataclasses).
So a field added to :class:`~fedbt.federated.simulator.ClientTask` or
:class:`~fedbt.federated.simulator.ClientUpdate` (e.g. client state) travels without touching this module.

A tensor travels as its raw bytes in its own dtype (``stype`` :data:`STYPE`, this machine's little-endian
byte order), so the tensor bytes of a message are exactly ``numel * element_size`` per tensor, as the ledger
counts them. :func:`count_wire` measures a message as Flower sends it: its objects (message, records, arrays,
array chunks) deflated, each distinct object once. Flower addresses objects by content, so tensors with
identical bytes (e.g. untrained LayerNorm weights of several layers) cross once; that saving is reported as
``duplicate_bytes``. Everything else (object headers, record and array metadata, the JSON fields, the message
metadata) is the framing overhead; the transport's own HTTP and protobuf envelopes are not counted.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, get_args, get_origin

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedbt.errors import FedBTError

STYPE = "torch.raw"
FIELDS = "fields"
SETUP_FAILED = "fedbt node setup failed: "
"""Prefix of a ClientApp error that is a mistake in the run's setup (config, data, partition), not a device
failure: the server stops the run instead of dropping the node for the round."""
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ tensors


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """A tensor as a Flower ``Array`` holding its raw bytes."""
    tensor = tensor.detach().to("cpu").contiguous()
    data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    return Array(dtype=str(tensor.dtype).removeprefix("torch."), shape=tuple(tensor.shape), stype=STYPE, data=data)


def array_to_tensor(array: Array) -> torch.Tensor:
    """The tensor an :func:`tensor_to_array` ``Array`` holds (a new CPU tensor)."""
    if array.stype != STYPE:
        raise FedBTError(f"unexpected array serialisation {array.stype!r}; fedbt sends {STYPE!r}")
    dtype = getattr(torch, array.dtype)
    if not array.data:
        return torch.empty(array.shape, dtype=dtype)
    return torch.frombuffer(bytearray(array.data), dtype=torch.uint8).view(dtype).reshape(array.shape)


class ArrayCache:
    """Serialises each tensor once while the same tensors go to several clients (one round's downloads)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, Array] = {}

    def array(self, tensor: torch.Tensor) -> Array:
        """The ``Array`` of ``tensor``; the same object for the same tensor (keep the tensors alive meanwhile)."""
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key not in self._arrays:
            self._arrays[key] = tensor_to_array(tensor)
        return self._arrays[key]


# ----------------------------------------------------------------------------------------- dataclasses


def to_content(obj: Any, cache: ArrayCache | None = None) -> RecordDict:
    """A dataclass instance as message content (see the module docstring)."""
    hints = typing.get_type_hints(type(obj))
    records: dict[str, Any] = {}
    fields = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if _is_tensor_map(hints[field.name]):
            to_array = cache.array if cache is not None else tensor_to_array
            records[field.name] = ArrayRecord({name: to_array(tensor) for name, tensor in value.items()})
        else:
            fields[field.name] = json.dumps(_plain(value))
    records[FIELDS] = ConfigRecord(fields)
    return RecordDict(records)


def from_content(cls: type[T], content: RecordDict) -> T:
    """The instance of dataclass ``cls`` that :func:`to_content` turned into ``content``."""
    hints = typing.get_type_hints(cls)
    fields = content.config_records[FIELDS]
    values = {}
    for field in dataclasses.fields(cls):
        if _is_tensor_map(hints[field.name]):
            arrays = content.array_records[field.name]
            values[field.name] = {name: array_to_tensor(array) for name, array in arrays.items()}
        else:
            values[field.name] = _rebuild(hints[field.name], json.loads(fields[field.name]))
    return cls(**values)


def _is_tensor_map(hint: Any) -> bool:
    return get_origin(hint) is dict and get_args(hint)[1:] == (torch.Tensor,)


def _plain(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses as dicts, sets sorted, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _rebuild(hint: Any, value: Any) -> Any:
    """The value of type ``hint`` that :func:`_plain` turned into ``value``."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{name: _rebuild(hints[name], item) for name, item in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in args if a is not type(None)]
        # a JSON list rebuilds as the union's collection type (e.g. ``int | tuple[int, ...]``), else its first type
        collections = [a for a in options if get_origin(a) in (tuple, list, set, frozenset)]
        return _rebuild(collections[0] if isinstance(value, list) and collections else options[0], value)
    if origin in (frozenset, set):
        return origin(_rebuild(args[0], v) for v in value)
    if origin is tuple:
        return tuple(_rebuild(args[0], v) for v in value)
    if origin is list:
        return [_rebuild(args[0], v) for v in value]
    if origin is dict:
        return {k: _rebuild(args[1], v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ wire


@dataclass
class WireCount:
    """The bytes of one message, measured from its Flower objects."""

    tensors: int
    payload_bytes: int
    """Raw tensor bytes, every named tensor counted (what the ledger counts)."""
    duplicate_bytes: int
    """Tensor bytes that Flower's content-addressed objects carry only once."""
    message_bytes: int
    """Every distinct object of the message deflated: what crosses the wire."""

    @property
    def framing_bytes(self) -> int:
        """Everything but the distinct tensor bytes: object headers, metadata, JSON fields."""
        return self.message_bytes - (self.payload_bytes - self.duplicate_bytes)


def count_wire(message: Message, *records: str) -> WireCount:
    """Measure ``message``; its tensors are those of the ``ArrayRecord``-s named ``records`` (absent ones count
    none)."""
    content = message.content.array_records
    arrays = [array for record in records if record in content for array in content[record].values()]
    payload = sum(len(array.data) for array in arrays)
    chunks = {chunk_id: len(chunk.data) for array in arrays for chunk_id, chunk in array.slice_array()}
    objects = distinct_objects(message).values()
    return WireCount(
        tensors=len(arrays),
        payload_bytes=payload,
        duplicate_bytes=payload - sum(chunks.values()),
        message_bytes=sum(len(obj.deflate()) for obj in objects),
    )


def distinct_objects(obj: Any) -> dict[str, Any]:
    """Every object Flower sends for ``obj`` (a ``Message`` or any of its records, arrays and chunks), each
    distinct object id once, children before their parents: the public ``children`` / ``object_id`` of Flower's
    inflatable objects walked as the transport walks them."""
    found: dict[str, Any] = {}
    for child in (obj.children or {}).values():
        found.update(distinct_objects(child))
    found[obj.object_id] = obj
    return found
