"""What linking a program makes: :class:`LinkedProgram`, its instructions with the
:class:`MapRef` places that need a map fd.

Made by :mod:`pybpf.loader.relocate` (the linker) and :mod:`pybpf.loader.externs`
(the relocations against .kconfig and .ksyms externs, which the linker calls);
this module imports neither.
"""

from __future__ import annotations

from .._record import Record
from ..spec import insn as I


class MapRef(Record):
    """An ld_imm64 at ``insn`` that needs the fd of map ``map_name``.

    ``offset`` is None for BPF_PSEUDO_MAP_FD, else the byte offset into the map
    value (BPF_PSEUDO_MAP_VALUE)."""

    _fields = ("insn", "map_name", "offset")

    def __init__(self, insn: int, map_name: str, offset: int | None = None):
        self.insn = insn
        self.map_name = map_name
        self.offset = offset


class LinkedProgram(Record):
    """A program ready to load once map fds are known."""

    _fields = ("name", "insns", "map_refs", "func_info", "line_info", "func_info_rec_size",
               "line_info_rec_size", "layout", "core_failures")

    def __init__(self, name: str, insns: bytearray, map_refs: list | None = None,
                 func_info: list | None = None, line_info: list | None = None, func_info_rec_size: int = 8,
                 line_info_rec_size: int = 16, layout: list | None = None, core_failures: list | None = None):
        self.name = name
        self.insns = insns
        self.map_refs = [] if map_refs is None else map_refs
        self.func_info = [] if func_info is None else func_info  # [(insn, type_id)]
        self.line_info = [] if line_info is None else line_info  # [(insn, file_name_off, line_off, line_col)]
        self.func_info_rec_size = func_info_rec_size
        self.line_info_rec_size = line_info_rec_size
        self.layout = [] if layout is None else layout  # [(FunctionSpec, first insn in this program)]
        self.core_failures = [] if core_failures is None else core_failures  # [core.CoreFailure]: insns poisoned by CO-RE

    @property
    def insn_cnt(self) -> int:
        return len(self.insns) // I.INSN_SIZE

    def with_map_fds(self, fds: dict) -> bytearray:
        """A copy of the instructions with every map reference patched with ``fds[map_name]``."""
        out = bytearray(self.insns)
        for ref in self.map_refs:
            I.set_imm(out, ref.insn, fds[ref.map_name])
            if ref.offset is None:
                I.set_src_reg(out, ref.insn, I.PSEUDO_MAP_FD)
            else:
                I.set_src_reg(out, ref.insn, I.PSEUDO_MAP_VALUE)
                # the kernel reads the offset as u32 (an arena's can pass 2 GiB)
                I.set_imm(out, ref.insn + 1, ref.offset - (1 << 32) if ref.offset >= 1 << 31 else ref.offset)
        return out

    def function_at(self, insn: int) -> tuple | None:
        """(FunctionSpec, start) of the function containing instruction ``insn``."""
        best = None
        for fn, start in self.layout:
            if start <= insn < start + fn.insn_cnt:
                best = (fn, start)
        return best
