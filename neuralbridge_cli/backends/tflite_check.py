"""Structural check of a .tflite flatbuffer before the TFLite runtime reads it.

The runtime trusts the file: a damaged one can make it read out of bounds and kill the
process (SIGSEGV in get_input_details, found by `make fuzz`; the same file may or may not
crash depending on what else is mapped, so a probe in a child process is no guard). This
module walks the parts of the schema the runtime indexes with, in Python, where every read
is bounds-checked: table offsets, vector lengths, tensor / buffer / opcode / subgraph
indices and the UTF-8 of the names. It reads no weights.

Field numbers follow the TFLite schema (schema.fbs): Model {version, operator_codes,
subgraphs, description, buffers, metadata_buffer, metadata, signature_defs}; SubGraph
{tensors, inputs, outputs, operators, name}; Tensor {shape, type, buffer, name, ...,
shape_signature = 7}; Operator {opcode_index, inputs, outputs, ..., intermediates = 8};
Buffer {data, offset, size}; SignatureDef {inputs, outputs, signature_key, _, subgraph_index};
TensorMap {name, tensor_index}; OperatorCode {_, custom_code}.
"""
from __future__ import annotations

import mmap
import struct
from pathlib import Path


class Malformed(ValueError):
    """The flatbuffer does not hold together: an offset, length or index points outside."""


class _Buffer:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def _read(self, fmt: str, at: int):
        width = struct.calcsize(fmt)
        if at < 0 or at + width > self.size:
            raise Malformed(f"read of {width} bytes at {at} is outside the {self.size}-byte file")
        return struct.unpack_from(fmt, self.data, at)[0]

    def u16(self, at): return self._read("<H", at)
    def u32(self, at): return self._read("<I", at)
    def i32(self, at): return self._read("<i", at)
    def u64(self, at): return self._read("<Q", at)

    def table(self, at: int) -> "_Table":
        return _Table(self, at)

    def follow(self, at: int) -> int:
        """An offset stored at `at` (relative to `at`): the position it points to."""
        return at + self.u32(at)

    def vector(self, at: int, item_size: int) -> tuple[int, int]:
        """(count, first item position) of the vector at `at`, with its end inside the file."""
        count = self.u32(at)
        if at + 4 + count * item_size > self.size:
            raise Malformed(f"a vector of {count} items at {at} runs past the end of the file")
        return count, at + 4


class _Table:
    def __init__(self, buf: _Buffer, at: int):
        self.buf, self.at = buf, at
        self.vtable = at - buf.i32(at)
        self.vtable_size = buf.u16(self.vtable)

    def field(self, index: int) -> int | None:
        """Position of field `index`, or None when absent."""
        slot = 4 + 2 * index
        if slot + 2 > self.vtable_size:
            return None
        offset = self.buf.u16(self.vtable + slot)
        return self.at + offset if offset else None

    def scalar(self, index: int, read, default: int = 0) -> int:
        at = self.field(index)
        return default if at is None else read(at)

    def tables(self, index: int) -> list["_Table"]:
        at = self.field(index)
        if at is None:
            return []
        count, first = self.buf.vector(self.buf.follow(at), 4)
        return [self.buf.table(self.buf.follow(first + 4 * i)) for i in range(count)]

    def ints(self, index: int) -> list[int]:
        at = self.field(index)
        if at is None:
            return []
        count, first = self.buf.vector(self.buf.follow(at), 4)
        return [self.buf.i32(first + 4 * i) for i in range(count)]

    def string(self, index: int) -> str:
        at = self.field(index)
        if at is None:
            return ""
        count, first = self.buf.vector(self.buf.follow(at), 1)
        try:
            return bytes(self.buf.data[first:first + count]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Malformed(f"a name at {first} is not UTF-8 text") from exc


def check_file(path: str | Path) -> None:
    """Raise Malformed when the .tflite file at `path` does not hold together."""
    with open(path, "rb") as fh:
        if Path(path).stat().st_size < 8:
            raise Malformed("the file is too short to be a TFLite model")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check_model(_Buffer(data))


def _check_model(buf: _Buffer) -> None:
    model = buf.table(buf.u32(0))
    opcodes = model.tables(1)
    for code in opcodes:
        code.string(1)
    buffers = model.tables(4)
    for item in buffers:
        _check_buffer(buf, item)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise Malformed("the model has no subgraph")
    tensor_counts = [_check_subgraph(graph, len(buffers), len(opcodes)) for graph in subgraphs]
    for signature in model.tables(7):
        signature.string(2)
        graph = signature.scalar(4, buf.u32)
        if graph >= len(subgraphs):
            raise Malformed(f"a signature names subgraph {graph} of {len(subgraphs)}")
        for entry in signature.tables(0) + signature.tables(1):
            entry.string(0)
            _in_range(entry.scalar(1, buf.u32), tensor_counts[graph], "signature tensor")


def _check_buffer(buf: _Buffer, item: _Table) -> None:
    at = item.field(0)
    if at is not None:
        buf.vector(buf.follow(at), 1)
    offset, size = item.scalar(1, buf.u64), item.scalar(2, buf.u64)
    if offset > 1 and offset + size > buf.size:  # weights stored after the flatbuffer
        raise Malformed(f"a weight buffer of {size} bytes at {offset} runs past the end")


def _check_subgraph(graph: _Table, buffers: int, opcodes: int) -> int:
    tensors = graph.tables(0)
    for tensor in tensors:
        tensor.ints(0)
        tensor.ints(7)
        tensor.string(3)
        _in_range(tensor.scalar(2, graph.buf.u32), max(buffers, 1), "buffer")
    count = len(tensors)
    for index in graph.ints(1) + graph.ints(2):
        _in_range(index, count, "graph input/output tensor")
    for op in graph.tables(3):
        _in_range(op.scalar(0, graph.buf.u32), opcodes, "opcode")
        for index in op.ints(1) + op.ints(2) + op.ints(8):
            if index != -1:  # -1: an optional input left out
                _in_range(index, count, "operator tensor")
    graph.string(4)
    return count


def _in_range(index: int, count: int, what: str) -> None:
    if not 0 <= index < count:
        raise Malformed(f"{what} index {index} is outside 0..{count - 1}")
