"""The ELF ``.BTF.ext`` section: func_info, line_info and CO-RE relocation records.

Layout (libbpf's struct btf_ext_header): magic, version, flags, hdr_len, then
offset/length pairs relative to the end of the header.  Each sub-section is a
``u32 rec_size`` followed by blocks ``{u32 sec_name_off, u32 num_info,
num_info * rec_size bytes}``.  ``insn_off`` in these records is a BYTE offset
from the start of the ELF section the block names; the loader rebases it to an
instruction index in the final program.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import construct as cs

from ..errors import BTFError
from .btf import BTF

BTF_EXT_HEADER = cs.Struct(
    "magic" / cs.Int16ul,
    "version" / cs.Int8ul,
    "flags" / cs.Int8ul,
    "hdr_len" / cs.Int32ul,
    "func_info_off" / cs.Int32ul,
    "func_info_len" / cs.Int32ul,
    "line_info_off" / cs.Int32ul,
    "line_info_len" / cs.Int32ul,
)

_U32 = struct.Struct("<I")
_BLOCK = struct.Struct("<II")


@dataclass
class FuncInfo:
    """``insn_off`` (bytes in the ELF section) → the FUNC type describing the function there."""

    insn_off: int
    type_id: int


@dataclass
class LineInfo:
    """``insn_off`` (bytes) → source file, source text of the line, line and column."""

    insn_off: int
    file_name_off: int
    line_off: int
    line_col: int

    @property
    def line(self) -> int:
        return self.line_col >> 10

    @property
    def col(self) -> int:
        return self.line_col & 0x3FF


@dataclass
class CoreRelo:
    """A CO-RE relocation: instruction, local type, access string, relocation kind."""

    insn_off: int
    type_id: int
    access_str_off: int
    kind: int


@dataclass
class BTFExt:
    """Parsed ``.BTF.ext``: per ELF section name, lists of records."""

    func_info_rec_size: int = 8
    line_info_rec_size: int = 16
    core_relo_rec_size: int = 16
    func_info: dict = field(default_factory=dict)   # section name -> [FuncInfo]
    line_info: dict = field(default_factory=dict)   # section name -> [LineInfo]
    core_relos: dict = field(default_factory=dict)  # section name -> [CoreRelo]


def parse_btf_ext(raw: bytes, btf: BTF, *, source: str = ".BTF.ext") -> BTFExt:
    """Parse a ``.BTF.ext`` section; section names are resolved through ``btf``'s strings."""

    def fail(what: str) -> BTFError:
        return BTFError(f"{source}: corrupt .BTF.ext: {what}")

    if len(raw) < 24:
        raise fail(f"{len(raw)} bytes is shorter than the 24-byte header")
    hdr = BTF_EXT_HEADER.parse(raw[:24])
    if hdr.magic != 0xEB9F:
        raise fail(f"bad magic 0x{hdr.magic:04x}")
    if hdr.version != 1:
        raise fail(f"unsupported version {hdr.version}")
    if hdr.hdr_len < 24 or hdr.hdr_len > len(raw):
        raise fail(f"header length {hdr.hdr_len} out of range")
    ext = BTFExt()
    subsections = [("func_info", hdr.func_info_off, hdr.func_info_len, 8),
                   ("line_info", hdr.line_info_off, hdr.line_info_len, 16)]
    if hdr.hdr_len >= 32:
        core_off, core_len = struct.unpack_from("<II", raw, 24)
        subsections.append(("core_relo", core_off, core_len, 16))
    for what, off, length, min_rec in subsections:
        if length == 0:
            continue
        start = hdr.hdr_len + off
        end = start + length
        if off % 4 or end > len(raw):
            raise fail(f"{what} [{off}, {off + length}) is misaligned or runs past the section end")
        (rec_size,) = _U32.unpack_from(raw, start)
        if rec_size < min_rec or rec_size % 4:
            raise fail(f"{what} record size {rec_size} is invalid (minimum {min_rec}, multiple of 4)")
        pos = start + 4
        if pos >= end:
            raise fail(f"{what} has a record size but no records")
        table: dict = {}
        while pos < end:
            if pos + 8 > end:
                raise fail(f"{what} block header at {pos - start} is truncated")
            sec_name_off, num = _BLOCK.unpack_from(raw, pos)
            pos += 8
            if num == 0 or pos + num * rec_size > end:
                raise fail(f"{what} block at {pos - start - 8} claims {num} records that do not fit")
            try:
                sec_name = btf.string(sec_name_off)
            except BTFError as e:
                raise fail(f"{what} block names a section through a bad string offset ({e})") from None
            recs = table.setdefault(sec_name, [])
            for i in range(num):
                p = pos + i * rec_size
                if what == "func_info":
                    recs.append(FuncInfo(*struct.unpack_from("<II", raw, p)))
                elif what == "line_info":
                    recs.append(LineInfo(*struct.unpack_from("<IIII", raw, p)))
                else:
                    recs.append(CoreRelo(*struct.unpack_from("<IIII", raw, p)))
            pos += num * rec_size
        setattr(ext, f"{what}_rec_size", rec_size)
        setattr(ext, {"func_info": "func_info", "line_info": "line_info", "core_relo": "core_relos"}[what], table)
    return ext
