"""Linking a program: append the subprograms it calls and resolve its relocations.

Pure: it takes an :class:`ObjectSpec` and returns instructions plus the list of
places that need a map fd, so it is testable without a kernel (like aya-obj).
The rules are libbpf's (bpf_object__relocate and friends):

- ``call`` with src_reg BPF_PSEUDO_CALL and a relocation against an executable
  section: the callee is instruction ``sym.st_value / 8 + imm + 1`` of that
  section (clang writes imm = -1 for function symbols and the offset for
  section symbols, so one formula covers both);
- ``ld_imm64`` relocated against an executable section is a callback address:
  src_reg becomes BPF_PSEUDO_FUNC and the callee is ``(sym.st_value + imm) / 8``;
- a ``call``/callback without relocation is relative inside its own section;
- after appending the callee, imm = callee index - instruction index - 1;
- ``ld_imm64`` against a ``.maps`` symbol: BPF_PSEUDO_MAP_FD with the map's fd;
- ``ld_imm64`` against ``.data``/``.rodata``/``.bss``: BPF_PSEUDO_MAP_VALUE, the
  map's fd in the first imm and the offset (symbol value + addend) in the second;
- ``ld_imm64`` against ``.addr_space.1`` (``__arena`` globals): BPF_PSEUDO_MAP_VALUE
  against the ARENA map, offset = symbol value + addend + the arena's data offset
  (libbpf bpf_program__record_reloc: sym_off = st_value + arena_data_off, then
  bpf_object__relocate_data: insn[1].imm = insn[0].imm + sym_off).

func_info and line_info records are rebased from byte offsets in their ELF
section to instruction indexes in the linked program.
"""

from __future__ import annotations

import mmap

from ..errors import ObjectError
from ..spec import insn as I
from ..spec.object import ARENA_SEC, STT_SECTION, FunctionSpec, ObjectSpec, ProgramSpec, Symbol
# what linking makes, in a module of its own: the externs (which this module calls) make map
# references too; both names stay importable from here
from .linked import LinkedProgram, MapRef


def link_program(spec: ObjectSpec, prog: ProgramSpec, facts=None) -> LinkedProgram:
    """Link ``prog``: append called subprograms, rebase BTF line/func info, collect map references.

    ``facts`` (a :class:`~pybpf.loader.facts.KernelFacts`) carries what the target
    kernel looks like, for relocations that depend on it (CO-RE, externs)."""
    return _Linker(spec, prog, facts).link()


class _Linker:
    def __init__(self, spec: ObjectSpec, prog: ProgramSpec, facts=None):
        self.spec = spec
        self.prog = prog
        self.facts = facts
        self.insns = bytearray()
        self.placed: dict[int, int] = {}
        self.layout: list[tuple[FunctionSpec, int]] = []
        self.map_refs: list[MapRef] = []

    def fail(self, fn: FunctionSpec, local: int, what: str) -> ObjectError:
        return ObjectError(f"program {self.prog.name!r}: {fn.name}+{local} (section {fn.section}): {what}")

    def place(self, fn: FunctionSpec) -> int:
        start = self.placed.get(id(fn))
        if start is None:
            start = len(self.insns) // I.INSN_SIZE
            self.insns += fn.insns
            self.placed[id(fn)] = start
            self.layout.append((fn, start))
        return start

    def callee(self, fn: FunctionSpec, local: int, section: str, target: int) -> int:
        target_fn = self.spec.function_at(section, target)
        if target_fn is None:
            raise self.fail(fn, local, f"call/callback target is instruction {target} of {section}, "
                                       f"which is not the start of a function")
        return self.place(target_fn)

    def link(self) -> LinkedProgram:
        self.place(self.prog.function)
        i = 0
        while i < len(self.layout):       # the layout grows as callees are appended
            fn, start = self.layout[i]
            relocs = {r.insn: r for r in fn.relocations}
            # only relocated instructions, calls and ld_imm64 can need work: find them by opcode
            # instead of visiting every instruction (the second half of an ld_imm64 is skipped)
            ops = self.insns[start * I.INSN_SIZE:(start + fn.insn_cnt) * I.INSN_SIZE:I.INSN_SIZE]
            todo = sorted(relocs.keys() | {n for n, op in enumerate(ops) if op == I.CALL or op == I.LD_IMM64})
            skip = -1
            for local in todo:
                if local == skip or local >= len(ops):
                    continue
                idx = start + local
                r = relocs.get(local)
                if r is not None:
                    self.relocate(fn, local, idx, r)
                elif I.is_pseudo_call(self.insns, idx) or I.is_pseudo_func(self.insns, idx):
                    imm = I.get_imm(self.insns, idx)
                    new = self.callee(fn, local, fn.section, fn.sec_insn_off + local + imm + 1)
                    I.set_imm(self.insns, idx, new - idx - 1)
                if ops[local] == I.LD_IMM64:
                    skip = local + 1
            i += 1
        linked = LinkedProgram(self.prog.name, self.insns, self.map_refs, layout=self.layout)
        self.rebase_btf_ext(linked)
        return linked

    def relocate(self, fn: FunctionSpec, local: int, idx: int, r) -> None:
        spec = self.spec
        sym: Symbol = r.symbol
        section = spec.symbol_section(sym)
        if sym.section == 0:
            # an extern: a .kconfig value, a kernel symbol or a kfunc, resolved against self.facts
            from .externs import relocate as relocate_extern
            relocate_extern(self, fn, local, idx, r)
            return
        if r.type not in (I.R_BPF_64_64, I.R_BPF_64_32):
            raise self.fail(fn, local, f"unsupported relocation type {r.type} against {sym.name or section!r}")
        code = self.insns[idx * I.INSN_SIZE]
        exec_section = any(f.section == section for f in spec._funcs_by_pos.values())
        imm = I.get_imm(self.insns, idx)
        if code == I.CALL:
            if not exec_section:
                raise self.fail(fn, local, f"call relocated against non-code section {section!r}")
            new = self.callee(fn, local, section, sym.value // I.INSN_SIZE + imm + 1)
            I.set_src_reg(self.insns, idx, I.PSEUDO_CALL)
            I.set_imm(self.insns, idx, new - idx - 1)
            return
        if code != I.LD_IMM64:
            raise self.fail(fn, local, f"relocation against {sym.name or section!r} on an instruction that is "
                                       f"neither ld_imm64 nor call (opcode 0x{code:02x})")
        if exec_section:
            new = self.callee(fn, local, section, (sym.value + imm) // I.INSN_SIZE)
            I.set_src_reg(self.insns, idx, I.PSEUDO_FUNC)
            I.set_imm(self.insns, idx, new - idx - 1)
            return
        if section == ".maps":
            name = sym.name if sym.type != STT_SECTION else ""
            if name not in spec.maps:
                raise self.fail(fn, local, f"refers to map symbol {sym.name!r}, which is not a map in .maps")
            self.map_refs.append(MapRef(idx, name))
            return
        if section == ARENA_SEC:
            self.relocate_arena(fn, local, idx, sym, imm)
            return
        m = spec.internal_map_for_section(section)
        if m is None:
            raise self.fail(fn, local, f"refers to {sym.name or section!r} in section {section!r}, which is not "
                                       f"a map, a global variable section or code")
        offset = imm + (0 if sym.type == STT_SECTION else sym.value)
        if not 0 <= offset < max(m.value_size, 1):
            raise self.fail(fn, local, f"offset {offset} is outside section {section} ({m.value_size} bytes)")
        self.map_refs.append(MapRef(idx, m.name, offset))

    def relocate_arena(self, fn: FunctionSpec, local: int, idx: int, sym: Symbol, imm: int) -> None:
        """An ``__arena`` global: a value address in the arena map, past the arena's data offset."""
        arena = self.spec.arena_map()
        if arena is None or arena.data is None:
            raise self.fail(fn, local, f"refers to __arena global {sym.name or ARENA_SEC!r}, but the object "
                                       f"declares no ARENA map in SEC(\".maps\")")
        offset = imm + (0 if sym.type == STT_SECTION else sym.value)
        if not 0 <= offset < len(arena.data):
            raise self.fail(fn, local, f"offset {offset} is outside section {ARENA_SEC} ({len(arena.data)} bytes)")
        try:
            base = arena.arena_data_offset(mmap.PAGESIZE)
        except ObjectError as e:
            raise self.fail(fn, local, str(e)) from None
        self.map_refs.append(MapRef(idx, arena.name, base + offset))

    def rebase_btf_ext(self, linked: LinkedProgram) -> None:
        ext = self.spec.btf_ext
        if ext is None:
            return
        linked.func_info_rec_size = ext.func_info_rec_size
        linked.line_info_rec_size = ext.line_info_rec_size
        core = []
        for fn, start in self.layout:
            lo = fn.sec_insn_off * I.INSN_SIZE
            hi = lo + len(fn.insns)
            base = start - fn.sec_insn_off
            for rec in ext.func_info.get(fn.section, ()):
                if lo <= rec.insn_off < hi:
                    linked.func_info.append((rec.insn_off // I.INSN_SIZE + base, rec.type_id))
            for rec in ext.line_info.get(fn.section, ()):
                if lo <= rec.insn_off < hi:
                    linked.line_info.append((rec.insn_off // I.INSN_SIZE + base, rec.file_name_off,
                                             rec.line_off, rec.line_col))
            for rec in ext.core_relos.get(fn.section, ()):
                if lo <= rec.insn_off < hi:
                    core.append((rec.insn_off // I.INSN_SIZE + base, rec, fn))
        if core:
            # CO-RE: patch this program's copy of each function (libbpf patches before linking,
            # then copies subprograms: the same result)
            from .core_relo import apply_core_relocations
            linked.core_failures = apply_core_relocations(self.spec, self.prog, linked, core, self.facts)
