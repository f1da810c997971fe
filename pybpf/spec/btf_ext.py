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

from .._record import Record
from ..errors import BTFError
from .btf import BTF, Header

BTF_EXT_HEADER = Header("btf_ext_header", [  # libbpf's struct btf_ext_header (first 24 bytes)
    ("magic", "H"),
    ("version", "B"),
    ("flags", "B"),
    ("hdr_len", "I"),
    ("func_info_off", "I"),
    ("func_info_len", "I"),
    ("line_info_off", "I"),
    ("line_info_len", "I"),
])

_U32 = struct.Struct("<I")
_BLOCK = struct.Struct("<II")


class FuncInfo(Record):
    """``insn_off`` (bytes in the ELF section) → the FUNC type describing the function there."""

    _fields = ("insn_off", "type_id")

    def __init__(self, insn_off: int, type_id: int):
        self.insn_off = insn_off
        self.type_id = type_id


class LineInfo(Record):
    """``insn_off`` (bytes) → source file, source text of the line, line and column."""

    _fields = ("insn_off", "file_name_off", "line_off", "line_col")

    def __init__(self, insn_off: int, file_name_off: int, line_off: int, line_col: int):
        self.insn_off = insn_off
        self.file_name_off = file_name_off
        self.line_off = line_off
        self.line_col = line_col

    @property
    def line(self) -> int:
        return self.line_col >> 10

    @property
    def col(self) -> int:
        return self.line_col & 0x3FF


class CoreRelo(Record):
    """A CO-RE relocation: instruction, local type, access string, relocation kind."""

    _fields = ("insn_off", "type_id", "access_str_off", "kind")

    def __init__(self, insn_off: int, type_id: int, access_str_off: int, kind: int):
        self.insn_off = insn_off
        self.type_id = type_id
        self.access_str_off = access_str_off
        self.kind = kind


class BTFExt(Record):
    """Parsed ``.BTF.ext``: per ELF section name, lists of records."""

    _fields = ("func_info_rec_size", "line_info_rec_size", "core_relo_rec_size", "func_info", "line_info",
               "core_relos")

    def __init__(self, func_info_rec_size: int = 8, line_info_rec_size: int = 16,
                 core_relo_rec_size: int = 16, func_info: dict | None = None, line_info: dict | None = None,
                 core_relos: dict | None = None):
        self.func_info_rec_size = func_info_rec_size
        self.line_info_rec_size = line_info_rec_size
        self.core_relo_rec_size = core_relo_rec_size
        self.func_info = {} if func_info is None else func_info  # section name -> [FuncInfo]
        self.line_info = {} if line_info is None else line_info  # section name -> [LineInfo]
        self.core_relos = {} if core_relos is None else core_relos  # section name -> [CoreRelo]


def parse_btf_ext(raw: bytes, btf: BTF, *, source: str = ".BTF.ext") -> BTFExt:
    """Parse a ``.BTF.ext`` section; section names are resolved through ``btf``'s strings."""

    def fail(what: str) -> BTFError:
        return BTFError(f"{source}: corrupt .BTF.ext: {what}")

    if len(raw) < 24:
        raise fail(f"{len(raw)} bytes is shorter than the 24-byte header")
    hdr = BTF_EXT_HEADER.parse(raw)
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
