"""BPF instructions printed in the kernel's notation.

The text is the one ``print_bpf_insn()`` in kernel/bpf/disasm.c produces (the
verifier log) and ``bpftool prog dump xlated`` shows::

       0: (bf) r6 = r1
       1: (61) r1 = *(u32 *)(r6 +4)
       3: (18) r1 = map[id:12]
       5: (85) call bpf_map_lookup_elem#1
       6: (15) if r0 == 0x0 goto pc+3
       7: (db) lock *(u64 *)(r0 +0) += r1

Pure: decoding and formatting take bytes and plain mappings, never the kernel.
Whatever names the bytes cannot give (kernel symbols of helper addresses,
function names, map names, source lines) come from the caller.

Choices where the kernel leaves a gap (all documented at their place):

- ld_imm64 follows bpftool's xlated dump: ``map[id:N]``, ``map[id:N][0]+OFF``,
  ``map[idx:N]+OFF``, ``subprog[+N]``, else the 64-bit value in hex.  With a
  map name known (``map_names``) the id becomes the name: ``map[counts]``,
  ``map[.bss][0]+8``.
- ``call pc+N`` takes N from ``imm`` as loaded (the verifier's notation) and
  from ``off`` in xlated programs, where the kernel keeps the offset in ``off``
  and the subprogram index in ``imm``.  A known target name is appended as
  bpftool does: ``call pc+5#name``; callbacks: ``subprog[+5#name]``.
- Opcodes whose operation the kernel's tables leave empty (it would print
  ``(null)``) read ``(xx) unknown opcode xx``; the kernel's own ``BUG_...``
  lines are kept as they are.  Nothing here raises on garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Union

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")

# instruction classes (BPF_CLASS)
BPF_LD, BPF_LDX, BPF_ST, BPF_STX = 0x00, 0x01, 0x02, 0x03
BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0x04, 0x05, 0x06, 0x07
# sizes (BPF_SIZE) and modes (BPF_MODE)
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_MEMSX, BPF_ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0
BPF_NOSPEC = 0xC0            # BPF_ST | BPF_NOSPEC: kernel-internal speculation barrier
# source (BPF_SRC)
BPF_K, BPF_X = 0x00, 0x08
BPF_TO_LE, BPF_TO_BE = 0x00, 0x08
# ALU operations (BPF_OP)
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV = 0x00, 0x10, 0x20, 0x30
BPF_OR, BPF_AND, BPF_LSH, BPF_RSH = 0x40, 0x50, 0x60, 0x70
BPF_NEG, BPF_MOD, BPF_XOR, BPF_MOV = 0x80, 0x90, 0xA0, 0xB0
BPF_ARSH, BPF_END = 0xC0, 0xD0
# jump operations (BPF_OP)
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_JNE, BPF_JSGT, BPF_JSGE, BPF_CALL, BPF_EXIT = 0x50, 0x60, 0x70, 0x80, 0x90
BPF_JLT, BPF_JLE, BPF_JSLT, BPF_JSLE, BPF_JCOND = 0xA0, 0xB0, 0xC0, 0xD0, 0xE0
BPF_MAY_GOTO = 0             # src_reg of BPF_JMP | BPF_JCOND
# atomic operations (imm of BPF_STX | BPF_ATOMIC)
BPF_FETCH = 0x01
BPF_XCHG = 0xE0 | BPF_FETCH
BPF_CMPXCHG = 0xF0 | BPF_FETCH
BPF_LOAD_ACQ = 0x100
BPF_STORE_REL = 0x110
# off of ALU64 MOV X with a special meaning
BPF_ADDR_SPACE_CAST = 1
BPF_ADDR_PERCPU = -1         # kernel-internal: dst = src + this CPU's per-CPU offset

LD_IMM64 = BPF_LD | BPF_IMM | BPF_DW

# src_reg of ld_imm64 and call (include/uapi/linux/bpf.h)
from ..kernel.constants import (  # noqa: E402 - UAPI values, defined once
    BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC, BPF_PSEUDO_KFUNC_CALL, BPF_PSEUDO_MAP_FD,
    BPF_PSEUDO_MAP_IDX, BPF_PSEUDO_MAP_IDX_VALUE, BPF_PSEUDO_MAP_VALUE)

_ALU_OPS = {
    BPF_ADD: "+=", BPF_SUB: "-=", BPF_MUL: "*=", BPF_DIV: "/=", BPF_OR: "|=", BPF_AND: "&=",
    BPF_LSH: "<<=", BPF_RSH: ">>=", BPF_MOD: "%=", BPF_XOR: "^=", BPF_MOV: "=", BPF_ARSH: "s>>=",
}
_SIGNED_ALU_OPS = {BPF_DIV: "s/=", BPF_MOD: "s%="}     # off == 1: sdiv, smod
_MOVSX = {8: "(s8)", 16: "(s16)", 32: "(s32)"}          # off of a sign-extending mov
_ATOMIC_OPS = {BPF_ADD: "add", BPF_AND: "and", BPF_OR: "or", BPF_XOR: "xor"}
_SIZES = {BPF_W: "u32", BPF_H: "u16", BPF_B: "u8", BPF_DW: "u64"}
_SX_SIZES = {BPF_W: "s32", BPF_H: "s16", BPF_B: "s8"}
_JMP_OPS = {
    BPF_JA: "jmp", BPF_JEQ: "==", BPF_JGT: ">", BPF_JLT: "<", BPF_JGE: ">=", BPF_JLE: "<=",
    BPF_JSET: "&", BPF_JNE: "!=", BPF_JSGT: "s>", BPF_JSLT: "s<", BPF_JSGE: "s>=", BPF_JSLE: "s<=",
    BPF_CALL: "call", BPF_EXIT: "exit",
}


@dataclass(frozen=True)
class Insn:
    """One decoded instruction: ``code``, ``dst`` and ``src`` registers, ``off``, ``imm``.

    ``off`` and ``imm`` are signed, as in ``struct bpf_insn``.  An ld_imm64
    (code 0x18) spans two slots: ``imm64`` is its full 64-bit value (unsigned,
    the second slot's imm in the upper half); it is None for every other
    instruction, and for an ld_imm64 whose second slot is missing.
    """

    code: int
    dst: int
    src: int
    off: int
    imm: int
    imm64: Optional[int] = None

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def op(self) -> int:
        """BPF_OP (ALU and jump classes)."""
        return self.code & 0xF0

    @property
    def mode(self) -> int:
        """BPF_MODE (load and store classes)."""
        return self.code & 0xE0

    @property
    def size(self) -> int:
        """BPF_SIZE (load and store classes)."""
        return self.code & 0x18

    @property
    def source(self) -> int:
        """BPF_SRC: BPF_K (imm) or BPF_X (src register)."""
        return self.code & 0x08

    @property
    def is_ld_imm64(self) -> bool:
        return self.code == LD_IMM64

    @property
    def slots(self) -> int:
        """Instruction slots taken: 2 for a complete ld_imm64, else 1."""
        return 2 if self.code == LD_IMM64 and self.imm64 is not None else 1

    @property
    def imm_hi(self) -> int:
        """The second slot's imm of an ld_imm64, as u32 (a map value offset), else 0."""
        return (self.imm64 >> 32) if self.imm64 is not None else 0

    def to_bytes(self) -> bytes:
        """The encoded instruction (16 bytes for an ld_imm64 with ``imm64``)."""
        regs = ((self.src & 0xF) << 4) | (self.dst & 0xF)
        raw = _INSN.pack(self.code, regs, self.off, self.imm)
        if self.code == LD_IMM64 and self.imm64 is not None:
            raw += _INSN.pack(0, 0, 0, _s32(self.imm64 >> 32))
        return raw


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def decode(insns: bytes) -> list[tuple[int, Insn]]:
    """``[(slot index, Insn)]`` for the instructions in ``insns``.

    An ld_imm64 takes two slots (the next index skips one).  Trailing bytes
    short of a whole instruction are not decoded (:func:`disassemble` reports
    them).
    """
    buf = memoryview(bytes(insns))
    count = len(buf) // INSN_SIZE
    out = []
    i = 0
    while i < count:
        code, regs, off, imm = _INSN.unpack_from(buf, i * INSN_SIZE)
        imm64 = None
        if code == LD_IMM64 and i + 1 < count:
            hi = _INSN.unpack_from(buf, (i + 1) * INSN_SIZE)[3]
            imm64 = ((hi & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF)
        insn = Insn(code, regs & 0xF, regs >> 4, off, imm, imm64)
        out.append((i, insn))
        i += insn.slots
    return out


def _helper_table_name(imm: int) -> Optional[str]:
    from ..kernel.helpers import Helper
    try:
        return "bpf_" + Helper(imm).name
    except ValueError:
        return None


NameOf = Callable[[Insn], Optional[str]]


def format_insn(insn: Insn, *, helper_name: Optional[NameOf] = None, map_name: Optional[NameOf] = None,
                call_target: Optional[NameOf] = None, helpers: bool = True, opcode: bool = False) -> str:
    """The instruction in the kernel's notation, e.g. ``r1 = *(u32 *)(r2 +8)``.

    - ``helper_name(insn)``: the called function's name for a helper call
      (src_reg 0) the built-in table does not know, or a kfunc call (src_reg 2);
      for xlated programs, whose helper ``imm`` is an address relative to
      ``__bpf_call_base``, this is where kernel symbols come in.  Without it:
      ``call unknown#imm`` and ``call kernel-function#imm``, as the kernel prints.
    - ``helpers``: name helper ids from :class:`pybpf.kernel.constants.Helper`
      (``call bpf_map_lookup_elem#1``), checked before ``helper_name`` as the
      kernel does.
    - ``map_name(insn)``: the map an ld_imm64 with src_reg BPF_PSEUDO_MAP_FD /
      MAP_VALUE / MAP_IDX / MAP_IDX_VALUE refers to, or None for its id.
    - ``call_target(insn)``: the name of the function a bpf-to-bpf call or a
      callback (BPF_PSEUDO_FUNC) points to, or None.
    - ``opcode``: prefix ``(xx) `` as print_bpf_insn does.

    Never raises: undefined encodings read ``unknown opcode xx`` or the
    kernel's ``BUG_...`` text.
    """
    text = _format(insn, helper_name, map_name, call_target, helpers)
    if text.startswith("BUG_"):
        return text                     # the kernel prints these without the opcode
    return f"({insn.code:02x}) {text}" if opcode else text


def _unknown(insn: Insn) -> str:
    return f"unknown opcode {insn.code:02x}"


def _reg(cls32: bool, n: int) -> str:
    return f"{'w' if cls32 else 'r'}{n}"


def _format(insn: Insn, helper_name, map_name, call_target, helpers) -> str:
    cls = insn.cls
    if cls in (BPF_ALU, BPF_ALU64):
        return _format_alu(insn)
    if cls == BPF_STX:
        return _format_stx(insn)
    if cls == BPF_ST:
        if insn.mode == BPF_MEM:
            return f"*({_SIZES[insn.size]} *)(r{insn.dst} {insn.off:+d}) = {insn.imm}"
        if insn.mode == BPF_NOSPEC:
            return "nospec"
        return f"BUG_st_{insn.code:02x}"
    if cls == BPF_LDX:
        if insn.mode == BPF_MEM:
            size = _SIZES[insn.size]
        elif insn.mode == BPF_MEMSX:
            size = _SX_SIZES.get(insn.size)
            if size is None:            # no sign-extending 64-bit load
                return _unknown(insn)
        else:
            return f"BUG_ldx_{insn.code:02x}"
        return f"r{insn.dst} = *({size} *)(r{insn.src} {insn.off:+d})"
    if cls == BPF_LD:
        return _format_ld(insn, map_name, call_target)
    return _format_jmp(insn, helper_name, call_target, helpers)


def _format_alu(insn: Insn) -> str:
    w = insn.cls == BPF_ALU
    op = insn.op
    if op == BPF_END:
        if not w:                       # BPF_ALU64 | BPF_END: unconditional byte swap
            return f"r{insn.dst} = bswap{insn.imm} r{insn.dst}"
        order = "be" if insn.source == BPF_TO_BE else "le"
        return f"r{insn.dst} = {order}{insn.imm} r{insn.dst}"
    if op == BPF_NEG:
        return f"{_reg(w, insn.dst)} = -{_reg(w, insn.dst)}"
    if insn.code == BPF_ALU64 | BPF_MOV | BPF_X and insn.off == BPF_ADDR_SPACE_CAST:
        imm = insn.imm & 0xFFFFFFFF
        return f"r{insn.dst} = addr_space_cast(r{insn.src}, {imm >> 16}, {imm & 0xFFFF})"
    if insn.code == BPF_ALU64 | BPF_MOV | BPF_X and insn.off == BPF_ADDR_PERCPU:
        return f"r{insn.dst} = &(void __percpu *)(r{insn.src})"
    if insn.off == 1 and op in _SIGNED_ALU_OPS:
        sym = _SIGNED_ALU_OPS[op]
    else:
        sym = _ALU_OPS.get(op)
        if sym is None:
            return _unknown(insn)
    if insn.source == BPF_X:
        sx = _MOVSX.get(insn.off, "") if op == BPF_MOV else ""
        return f"{_reg(w, insn.dst)} {sym} {sx}{_reg(w, insn.src)}"
    return f"{_reg(w, insn.dst)} {sym} {insn.imm}"


def _format_stx(insn: Insn) -> str:
    size = _SIZES[insn.size]
    mem = f"({size} *)(r{insn.dst} {insn.off:+d})"
    if insn.mode == BPF_MEM:
        return f"*{mem} = r{insn.src}"
    if insn.mode != BPF_ATOMIC:
        return f"BUG_{insn.code:02x}"
    imm = insn.imm
    bits = "64" if insn.size == BPF_DW else ""
    if imm in _ATOMIC_OPS:
        return f"lock *{mem} {_ALU_OPS[imm]} r{insn.src}"
    if imm & BPF_FETCH and (imm & ~BPF_FETCH) in _ATOMIC_OPS:
        return f"r{insn.src} = atomic{bits}_fetch_{_ATOMIC_OPS[imm & ~BPF_FETCH]}({mem}, r{insn.src})"
    if imm == BPF_CMPXCHG:
        return f"r0 = atomic{bits}_cmpxchg({mem}, r0, r{insn.src})"
    if imm == BPF_XCHG:
        return f"r{insn.src} = atomic{bits}_xchg({mem}, r{insn.src})"
    if imm == BPF_LOAD_ACQ:             # loads from src: the memory operand is (src + off)
        return f"r{insn.dst} = load_acquire(({size} *)(r{insn.src} {insn.off:+d}))"
    if imm == BPF_STORE_REL:
        return f"store_release({mem}, r{insn.src})"
    return f"BUG_{insn.code:02x}"


def _format_ld(insn: Insn, map_name, call_target) -> str:
    size = _SIZES[insn.size]
    if insn.mode == BPF_ABS:
        return f"r0 = *({size} *)skb[{insn.imm}]"
    if insn.mode == BPF_IND:
        return f"r0 = *({size} *)skb[r{insn.src} + {insn.imm}]"
    if insn.code != LD_IMM64:
        return f"BUG_ld_{insn.code:02x}"
    if insn.imm64 is None:
        return f"r{insn.dst} = <ld_imm64 without its second slot>"
    return f"r{insn.dst} = {_ld_imm64_value(insn, map_name, call_target)}"


def _ld_imm64_value(insn: Insn, map_name, call_target) -> str:
    """The value of an ld_imm64, in bpftool's xlated-dump form (its print_imm callback)."""
    src = insn.src
    if src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, BPF_PSEUDO_MAP_IDX, BPF_PSEUDO_MAP_IDX_VALUE):
        name = map_name(insn) if map_name else None
        imm = insn.imm & 0xFFFFFFFF
        if src == BPF_PSEUDO_MAP_FD:
            return f"map[{name}]" if name else f"map[id:{imm}]"
        if src == BPF_PSEUDO_MAP_VALUE:
            return f"map[{name}][0]+{insn.imm_hi}" if name else f"map[id:{imm}][0]+{insn.imm_hi}"
        if src == BPF_PSEUDO_MAP_IDX_VALUE:
            return f"map[{name}]+{insn.imm_hi}" if name else f"map[idx:{imm}]+{insn.imm_hi}"
        if name:                        # BPF_PSEUDO_MAP_IDX: bpftool prints the raw value
            return f"map[{name}]"
    if src == BPF_PSEUDO_FUNC:
        name = call_target(insn) if call_target else None
        return f"subprog[{insn.imm:+d}#{name}]" if name else f"subprog[{insn.imm:+d}]"
    return f"0x{insn.imm64:x}"


def _format_jmp(insn: Insn, helper_name, call_target, helpers) -> str:
    w = insn.cls == BPF_JMP32
    op = insn.op
    code = insn.code
    if op == BPF_CALL:
        if insn.src == BPF_PSEUDO_CALL:
            name = call_target(insn) if call_target else None
            rel = pseudo_call_offset(insn)
            return f"call pc{rel:+d}#{name}" if name else f"call pc{rel:+d}"
        name = None
        if insn.src == 0 and helpers:
            name = _helper_table_name(insn.imm)
        if name is None and helper_name:
            name = helper_name(insn)
        if name is None:
            name = "kernel-function" if insn.src == BPF_PSEUDO_KFUNC_CALL else "unknown"
        return f"call {name}#{insn.imm}"
    if code == BPF_JMP | BPF_JA:
        return f"goto pc{insn.off:+d}"
    if code == BPF_JMP | BPF_JA | BPF_X:
        return f"gotox r{insn.dst}"
    if code == BPF_JMP | BPF_JCOND and insn.src == BPF_MAY_GOTO:
        return f"may_goto pc{insn.off:+d}"
    if code == BPF_JMP32 | BPF_JA:
        return f"gotol pc{insn.imm:+d}"
    if code == BPF_JMP | BPF_EXIT:
        return "exit"
    sym = _JMP_OPS.get(op)
    if sym is None:
        return _unknown(insn)
    if insn.source == BPF_X:
        return f"if {_reg(w, insn.dst)} {sym} {_reg(w, insn.src)} goto pc{insn.off:+d}"
    return f"if {_reg(w, insn.dst)} {sym} 0x{insn.imm & 0xFFFFFFFF:x} goto pc{insn.off:+d}"


def pseudo_call_offset(insn: Insn) -> int:
    """The pc-relative offset of a bpf-to-bpf call (src_reg BPF_PSEUDO_CALL).

    Before loading it is ``imm`` (the verifier requires ``off`` = 0).  In the
    translated program the kernel reports, ``off`` holds it and ``imm`` the
    subprogram index (or an interpreter address), so a non-zero ``off`` wins.
    """
    return insn.off if insn.off else insn.imm


def branch_target(index: int, insn: Insn) -> Optional[int]:
    """The slot index a jump, call or callback load at slot ``index`` goes to, or None."""
    code = insn.code
    if code == LD_IMM64:
        return index + insn.imm + 1 if insn.src == BPF_PSEUDO_FUNC else None
    if insn.cls not in (BPF_JMP, BPF_JMP32):
        return None
    if insn.op == BPF_CALL:
        return index + pseudo_call_offset(insn) + 1 if insn.src == BPF_PSEUDO_CALL else None
    if code == BPF_JMP32 | BPF_JA:
        return index + insn.imm + 1
    if code in (BPF_JMP | BPF_EXIT, BPF_JMP | BPF_JA | BPF_X):
        return None
    return index + insn.off + 1


# -- BTF function signatures (bpftool's function headers) ---------------------------

def func_signature(btf, type_id: int) -> str:
    """The C prototype bpftool prints above a function, e.g. ``int f(struct ctx * c)``.

    ``type_id`` is a FUNC (or FUNC_PROTO) in ``btf`` (a
    :class:`pybpf.spec.btf.BTF`).  The spacing is bpftool's
    (btf_dumper_type_only): each type name is followed by a space, so pointers
    read ``void * p``.  Returns "" for types bpftool cannot print, as bpftool
    then prints no header.
    """
    parts: list[str] = []
    try:
        ok = _sig_type(btf, type_id, parts, 0)
    except Exception:                   # a broken BTF: no header, as bpftool
        return ""
    return "".join(parts) if ok else ""


def _sig_type(btf, type_id: int, out: list, depth: int) -> bool:
    from .btf import Kind

    if depth > 64:                      # a loop in the BTF
        return False
    if type_id == 0:
        out.append("void ")
        return True
    t = btf[type_id]
    k = t.kind
    if k in (Kind.INT, Kind.TYPEDEF, Kind.FLOAT):
        out.append(f"{t.name} ")
    elif k in (Kind.STRUCT, Kind.UNION, Kind.ENUM):
        out.append(f"{k.name.lower()} {t.name} ")
    elif k == Kind.ARRAY:
        if not _sig_type(btf, t.elem_type, out, depth + 1):
            return False
        out.append(f"[{t.nelems}]")
    elif k == Kind.PTR:
        if not _sig_type(btf, t.type_id, out, depth + 1):
            return False
        out.append("* ")
    elif k == Kind.FWD:
        out.append(f"{'union' if t.kind_flag else 'struct'} {t.name} ")
    elif k in (Kind.VOLATILE, Kind.CONST, Kind.RESTRICT):
        out.append(f"{k.name.lower()} ")
        return _sig_type(btf, t.type_id, out, depth + 1)
    elif k == Kind.FUNC_PROTO:
        return _sig_func(btf, t, None, out, depth)
    elif k == Kind.FUNC:
        return _sig_func(btf, btf[t.type_id], t.name, out, depth)
    elif k == Kind.VAR:
        if t.linkage == 0:              # BTF_VAR_STATIC
            out.append("static ")
        if not _sig_type(btf, t.type_id, out, depth + 1):
            return False
        out.append(f" {t.name}")
    elif k == Kind.DATASEC:
        out.append(f'section ("{t.name}") ')
    else:
        return False
    return True


def _sig_func(btf, proto, name: Optional[str], out: list, depth: int) -> bool:
    if not _sig_type(btf, proto.type_id, out, depth + 1):
        return False
    out.append(f"{name}(" if name is not None else "(")
    for i, param in enumerate(proto.params):
        if i:
            out.append(", ")
        if param.type_id:
            if not _sig_type(btf, param.type_id, out, depth + 1):
                return False
            if param.name:
                out.append(param.name)
            elif out and out[-1].endswith(" "):
                out[-1] = out[-1][:-1]  # no name: drop the type's trailing space
        else:
            out.append("...")
    out.append(")")
    return True


# -- whole programs ------------------------------------------------------------------

HelperNames = Union[bool, Mapping[int, str], NameOf]


def disassemble(insns: bytes, *, helper_names: HelperNames = True,
                map_names: Optional[Mapping[int, str]] = None,
                func_names: Optional[Mapping[int, str]] = None,
                line_info: Optional[Iterable] = None,
                source: Optional[Callable[[int], str]] = None,
                func_protos: Optional[Mapping[int, str]] = None,
                linum: bool = False) -> list[str]:
    """The program as lines in the form of ``bpftool prog dump xlated``::

        int compute(struct args * a):       <- func_protos
        ; int compute(struct args *a)       <- line_info
           0: (bf) r6 = r1

    - ``helper_names``: True names helper ids from
      :class:`pybpf.kernel.constants.Helper`; False leaves ``call unknown#N``;
      a mapping ``{imm: name}`` or a callable ``(Insn) -> name or None`` names
      what the table does not (kfuncs, or the kernel-symbol names of helper
      addresses in xlated programs, as bpftool does with /proc/kallsyms).
    - ``map_names``: ``{slot index of the ld_imm64: map name}``, e.g. from
      ``LinkedProgram.map_refs`` (pass its instructions through
      ``with_map_fds`` first, with any fds, so src_reg and value offsets are
      set).  Named loads read ``map[name]`` / ``map[name][0]+off``; the others
      keep bpftool's ``map[id:N]``.
    - ``func_names``: ``{slot index of a function's first instruction: name}``;
      calls and callbacks that land there read ``call pc+5#name`` and
      ``subprog[+5#name]``.  bpftool prints the kernel symbol of the JITed
      subprogram (``bpf_prog_<tag>_<name>``) for calls and no name for callbacks.
    - ``line_info``: records ``(slot index, file_name_off, line_off, line_col)``
      as in ``LinkedProgram.line_info`` or the kernel's line_info (converted to
      slot indexes); ``source(offset)`` resolves the two string offsets (e.g.
      ``btf.string``); without ``source`` they must already be strings.  The
      line is printed as ``; <text>`` (leading blanks removed) before the
      instruction it starts at, one line per instruction, as bpftool does;
      ``linum=True`` adds bpftool's ``[file:F line_num:N line_col:C]``.
    - ``func_protos``: ``{slot index: header}`` printed as ``header:`` before
      the function, as bpftool prints the BTF prototypes from func_info (see
      :func:`func_signature`).

    Never raises on malformed instructions; trailing bytes short of an
    instruction are reported on a last line.
    """
    data = bytes(insns)
    helper_cb = _helper_callback(helper_names)
    helpers = helper_names is not False

    lines_at: dict[int, str] = {}
    for rec in line_info or ():
        idx, file_off, line_off, line_col = rec
        if idx in lines_at:             # the kernel rejects two records for one insn; keep the first
            continue
        text = source(line_off) if source else line_off
        file = source(file_off) if source else file_off
        text = (text or "").lstrip()
        if linum:
            text = f"{text} [file:{file or ''} line_num:{line_col >> 10} line_col:{line_col & 0x3FF}]"
        lines_at[idx] = f"; {text}"

    out: list[str] = []
    for index, insn in decode(data):
        if func_protos and func_protos.get(index):
            out.append(f"{func_protos[index]}:")
        if index in lines_at:
            out.append(lines_at[index])

        def call_target(i: Insn, index=index) -> Optional[str]:
            target = branch_target(index, i)
            return func_names.get(target) if func_names and target is not None else None

        def map_name(i: Insn, index=index) -> Optional[str]:
            return map_names.get(index) if map_names else None

        text = format_insn(insn, helper_name=helper_cb, map_name=map_name, call_target=call_target,
                           helpers=helpers, opcode=True)
        out.append(f"{index:4d}: {text}")
    rest = len(data) % INSN_SIZE
    if rest:
        out.append(f"{len(data) // INSN_SIZE:4d}: ({data[-rest]:02x}) truncated instruction "
                   f"({rest} of {INSN_SIZE} bytes)")
    return out


def _helper_callback(helper_names: HelperNames) -> Optional[NameOf]:
    if isinstance(helper_names, bool) or helper_names is None:
        return None
    if callable(helper_names):
        return helper_names
    names = helper_names
    return lambda insn: names.get(insn.imm)


__all__ = ["Insn", "decode", "format_insn", "disassemble", "func_signature", "branch_target",
           "pseudo_call_offset"]
