"""Read the few fields we need from ExecuTorch's flatbuffer files (.pte programs, .ptd data files).

Reads through a memory map: only the touched bytes are paged in, nothing is copied into Python except
the fields asked for. Schemas: executorch/schema/program.fbs, extension/flat_tensor/flat_tensor.fbs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Program (program.fbs) field slots
_PROGRAM_EXECUTION_PLAN, _PROGRAM_SEGMENTS, _PROGRAM_NAMED_DATA = 1, 4, 7
# ExecutionPlan slots
_PLAN_NAME, _PLAN_INPUTS, _PLAN_CHAINS, _PLAN_DELEGATES = 0, 3, 5, 7
# Chain / Instruction / DelegateCall slots; InstructionArguments union tag of DelegateCall
_CHAIN_INSTRUCTIONS, _INSTR_TYPE, _INSTR_ARGS, _DELEGATE_CALL_ARGS, _DELEGATE_CALL = 2, 0, 1, 1, 2
# BackendDelegate slot
_DELEGATE_ID = 0
# FlatTensor (flat_tensor.fbs) slots
_FT_SEGMENTS, _FT_NAMED_DATA = 1, 2


class FormatError(ValueError):
    """The bytes are not the flatbuffer file they claim to be."""


class _Buf:
    def __init__(self, data, limit: int):
        self.data, self.limit = data, limit

    def u8(self, pos: int) -> int:
        return self._unpack("<B", pos)

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def i32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def u64(self, pos: int) -> int:
        return self._unpack("<Q", pos)

    def i64(self, pos: int) -> int:
        return self._unpack("<q", pos)

    def _unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > self.limit:
            raise FormatError(f"flatbuffer offset {pos} outside the {self.limit}-byte table area")
        return struct.unpack_from(fmt, self.data, pos)[0]


class Table:
    """One flatbuffer table at `pos`."""

    def __init__(self, buf: _Buf, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - buf.i32(pos)
        self.vt_size = buf.u16(self.vtable)

    def _field(self, slot: int) -> int:
        off = 4 + 2 * slot
        return self.buf.u16(self.vtable + off) if off < self.vt_size else 0

    def _ref(self, slot: int) -> int | None:
        f = self._field(slot)
        if not f:
            return None
        at = self.pos + f
        return at + self.buf.u32(at)

    def u8(self, slot: int, default: int = 0) -> int:
        f = self._field(slot)
        return self.buf.u8(self.pos + f) if f else default

    def u32(self, slot: int, default: int = 0) -> int:
        f = self._field(slot)
        return self.buf.u32(self.pos + f) if f else default

    def u64(self, slot: int, default: int = 0) -> int:
        f = self._field(slot)
        return self.buf.u64(self.pos + f) if f else default

    def string(self, slot: int) -> str | None:
        at = self._ref(slot)
        if at is None:
            return None
        n = self.buf.u32(at)
        if at + 4 + n > self.buf.limit:
            raise FormatError("flatbuffer string runs past the table area")
        return bytes(self.buf.data[at + 4 : at + 4 + n]).decode("utf-8")

    def table(self, slot: int) -> "Table | None":
        at = self._ref(slot)
        return None if at is None else Table(self.buf, at)

    def tables(self, slot: int) -> list["Table"]:
        at = self._ref(slot)
        if at is None:
            return []
        out = []
        for i in range(self.buf.u32(at)):
            elem = at + 4 + 4 * i
            out.append(Table(self.buf, elem + self.buf.u32(elem)))
        return out

    def ints(self, slot: int) -> list[int]:
        """A [int] (int32) vector."""
        at = self._ref(slot)
        if at is None:
            return []
        return [self.buf.i32(at + 4 + 4 * i) for i in range(self.buf.u32(at))]

    def longs(self, slot: int) -> list[int]:
        """A [long] (int64) vector."""
        at = self._ref(slot)
        if at is None:
            return []
        return [self.buf.i64(at + 4 + 8 * i) for i in range(self.buf.u32(at))]


@dataclass(frozen=True)
class Segment:
    offset: int  # absolute file offset
    size: int


@dataclass(frozen=True)
class PteLayout:
    """What a .pte holds that we read without loading it."""

    named_data: dict[str, Segment]
    method_inputs: dict[str, int]  # method name -> number of inputs
    delegate_inputs: dict[str, list[list[int]]]  # method -> per delegate call: its args as method-input indices (-1: other)
    delegate_ids: dict[str, list[str]]  # method -> backend id of each delegate call


def _root(data, size: int, ident: bytes, header_magic: bytes) -> tuple[_Buf, Table]:
    if size < 16 or bytes(data[4:8]) != ident:
        raise FormatError(f"not a {ident.decode()} flatbuffer (file identifier {bytes(data[4:8])!r})")
    if bytes(data[8:12]) != header_magic:
        raise FormatError(f"missing the {header_magic.decode()} header")
    buf = _Buf(data, size)
    return buf, Table(buf, buf.u32(0))


def read_pte(data, size: int) -> PteLayout:
    """`data`: a buffer (e.g. an mmap) of a .pte of `size` bytes."""
    buf, program = _root(data, size, b"ET12", b"eh00")
    program_size, segment_base = buf.u64(16), buf.u64(24)
    buf.limit = min(size, program_size)
    segments = [Segment(segment_base + s.u64(0), s.u64(1)) for s in program.tables(_PROGRAM_SEGMENTS)]
    named = {}
    for nd in program.tables(_PROGRAM_NAMED_DATA):
        idx = nd.u32(1)
        if idx >= len(segments):
            raise FormatError(f"named data {nd.string(0)!r} points at segment {idx} of {len(segments)}")
        named[nd.string(0)] = segments[idx]
    for seg in segments:
        if seg.offset + seg.size > size:
            raise FormatError(f"segment at {seg.offset} of {seg.size} bytes runs past the end of the file ({size} bytes)")
    inputs, delegate_inputs, delegate_ids = {}, {}, {}
    for plan in program.tables(_PROGRAM_EXECUTION_PLAN):
        name = plan.string(_PLAN_NAME)
        plan_inputs = plan.ints(_PLAN_INPUTS)
        inputs[name] = len(plan_inputs)
        ids = [d.string(_DELEGATE_ID) for d in plan.tables(_PLAN_DELEGATES)]
        calls, call_ids = [], []
        for chain in plan.tables(_PLAN_CHAINS):
            for instr in chain.tables(_CHAIN_INSTRUCTIONS):
                if instr.u8(_INSTR_TYPE) != _DELEGATE_CALL:
                    continue
                call = instr.table(_INSTR_ARGS)
                args = call.ints(_DELEGATE_CALL_ARGS)
                calls.append([plan_inputs.index(a) if a in plan_inputs else -1 for a in args])
                call_ids.append(ids[call.u32(0)])
        delegate_inputs[name], delegate_ids[name] = calls, call_ids
    return PteLayout(named, inputs, delegate_inputs, delegate_ids)


def read_ptd(data, size: int) -> dict[str, Segment]:
    """Named data of a .ptd (FlatTensor) file: key -> absolute segment."""
    buf, root = _root(data, size, b"FT01", b"FH01")
    # FH01 header at byte 8: magic, length, flatbuffer offset, flatbuffer size, segment base offset
    segment_base = buf.u64(32)
    segments = [Segment(segment_base + s.u64(0), s.u64(1)) for s in root.tables(_FT_SEGMENTS)]
    out = {}
    for nd in root.tables(_FT_NAMED_DATA):
        idx = nd.u32(1)
        if idx >= len(segments):
            raise FormatError(f"named data {nd.string(0)!r} points at segment {idx} of {len(segments)}")
        seg = segments[idx]
        if seg.offset + seg.size > size:
            raise FormatError(f"segment {nd.string(0)!r} runs past the end of the file ({size} bytes)")
        out[nd.string(0)] = seg
    return out
