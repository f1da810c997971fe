"""pybpf.spec.disasm: instructions in the kernel's notation.

Pure tests format hand-assembled instructions of every class; kernel tests load
each committed program and compare ``disassemble()`` of the translated
instructions the kernel reports with ``bpftool prog dump xlated``, line by line.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import struct
import subprocess

import pytest

from conftest import PROGRAMS
from pybpf.spec import disasm
from pybpf.spec.disasm import Insn, decode, disassemble, format_insn, func_signature

# --- hand assembly --------------------------------------------------------------------


def raw(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_imm64(dst: int, value: int, src: int = 0, hi: int | None = None) -> bytes:
    """ld_imm64 of ``value`` (or of imm=value, second imm=hi when ``hi`` is given)."""
    if hi is None:
        lo, hi = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
    else:
        lo = value & 0xFFFFFFFF
    to_s32 = lambda v: struct.unpack("<i", struct.pack("<I", v & 0xFFFFFFFF))[0]  # noqa: E731
    return raw(0x18, dst, src, 0, to_s32(lo)) + raw(0, 0, 0, 0, to_s32(hi))


def fmt(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, **kw) -> str:
    [(_, insn)] = decode(raw(code, dst, src, off, imm))
    return format_insn(insn, **kw)


# --- kernel side: what bpftool shows ------------------------------------------------------


def _prog_info(fd: int, **fields):
    from pybpf.kernel import syscall
    from pybpf.kernel.attrs import ProgInfo
    return syscall.obj_get_info_by_fd(fd, ProgInfo(**fields))


def _xlated(fd: int):
    """(ProgInfo, xlated bytes, func_info [(insn, type_id)], line_info [(insn, file, line, col)],
    jited_ksyms [address]) of a loaded program: one call for the sizes, one with buffers."""
    info = _prog_info(fd)
    insns = ctypes.create_string_buffer(info.xlated_prog_len)
    finfo = (ctypes.c_uint32 * (2 * info.nr_func_info))()
    linfo = (ctypes.c_uint32 * (4 * info.nr_line_info))()
    ksyms = (ctypes.c_uint64 * info.nr_jited_ksyms)()
    full = _prog_info(
        fd, xlated_prog_len=info.xlated_prog_len, xlated_prog_insns=ctypes.addressof(insns),
        nr_func_info=info.nr_func_info, func_info_rec_size=8, func_info=ctypes.addressof(finfo),
        nr_line_info=info.nr_line_info, line_info_rec_size=16, line_info=ctypes.addressof(linfo),
        nr_jited_ksyms=info.nr_jited_ksyms, jited_ksyms=ctypes.addressof(ksyms))
    func_info = [(finfo[2 * i], finfo[2 * i + 1]) for i in range(info.nr_func_info)]
    line_info = [tuple(linfo[4 * i:4 * i + 4]) for i in range(info.nr_line_info)]
    return full, insns.raw[:full.xlated_prog_len], func_info, line_info, list(ksyms)


def _btf_by_id(btf_id: int):
    from pybpf.kernel import syscall
    from pybpf.kernel.attrs import BtfInfo
    from pybpf.kernel.constants import Cmd
    from pybpf.spec.btf import BTF

    fd = syscall.get_fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id)
    try:
        size = syscall.obj_get_info_by_fd(fd, BtfInfo()).btf_size
        buf = ctypes.create_string_buffer(size)
        syscall.obj_get_info_by_fd(fd, BtfInfo(btf=ctypes.addressof(buf), btf_size=size))
        return BTF(buf.raw, source=f"BTF id {btf_id}")
    finally:
        os.close(fd)


def _kallsyms() -> tuple[int, dict[int, str]]:
    """(address of __bpf_call_base, {address: first symbol there}) from /proc/kallsyms."""
    base, names = 0, {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            address = int(parts[0], 16)
            if parts[2] == "__bpf_call_base":
                base = address
            if address:
                names.setdefault(address, parts[2])
    return base, names


def _our_dump(fd: int, kallsyms, *, linum: bool = False) -> tuple[int, list[str]]:
    """(program id, disassemble() of the translated program with what bpftool takes from
    elsewhere than the instructions: BTF func_info prototypes and line_info text from the
    program's BTF, kernel symbol names from /proc/kallsyms for helper addresses and for the
    JITed subprograms that calls go to)."""
    info, insns, func_info, line_info, ksyms = _xlated(fd)
    call_base, symbols = kallsyms
    protos, func_names, source = {}, {}, None
    if info.btf_id:
        btf = _btf_by_id(info.btf_id)
        source = btf.string
        protos = {insn: func_signature(btf, type_id) for insn, type_id in func_info}
    if ksyms and func_info:
        # bpftool names a call by the symbol of jited_ksyms[subprogram index]; func_info
        # gives the first instruction of each subprogram, in the same order
        func_names = {insn: symbols.get(addr, f"0x{addr:x}") for (insn, _), addr in zip(func_info, ksyms)}

    def helper(insn: Insn):
        # xlated helper and kfunc calls hold the address relative to __bpf_call_base
        addr = (call_base + insn.imm) & 0xFFFFFFFFFFFFFFFF
        return symbols.get(addr, f"0x{addr:x}")

    lines = disassemble(insns, helper_names=helper, func_names=func_names, func_protos=protos,
                        line_info=line_info if source else None, source=source, linum=linum)
    return info.id, lines


# bpftool 7.1 prints with its own copy of disasm.c (from Linux 6.2), older than this kernel:
# it shows the kernel-internal per-CPU address mov (ALU64 MOV X, off -1, Linux 6.10) as a
# plain mov.  We print what the kernel's disasm.c prints today.
_PERCPU_MOV = re.compile(r"\(bf\) (r\d+) = &\(void __percpu \*\)\((r\d+)\)")
# bpftool names no callback (ld_imm64 BPF_PSEUDO_FUNC); we name it after func_names
_NAMED_CALLBACK = re.compile(r"subprog\[([+-]\d+)#[^\]]*\]")


def _normalized(line: str) -> str:
    line = _PERCPU_MOV.sub(r"(bf) \1 = \2", line)
    return _NAMED_CALLBACK.sub(r"subprog[\1]", line)


def _bpftool(prog_id: int, *extra: str) -> list[str]:
    out = subprocess.run(["bpftool", "prog", "dump", "xlated", "id", str(prog_id), *extra],
                         capture_output=True, text=True, check=True).stdout
    return out.rstrip("\n").split("\n")


# objects made to be refused (test_errors.py, test_refusals.py) are not loadable
# refused by design: a verifier rejection, maps left for user space to size (profile_style, as
# libbpf-tools' profile: tests/test_cli_real_style.py sizes them), a log past 16 MiB
REFUSED = {"verifier_fail", "max_entries_unset", "long_log", "profile_style"}
LOADABLE = sorted(os.path.basename(p)[:-2] for p in glob.glob(str(PROGRAMS / "*.o"))
                  if os.path.basename(p)[:-2] not in REFUSED)


# --- ALU / ALU64 ---------------------------------------------------------------------------

ALU_OPS = [(0x00, "+="), (0x10, "-="), (0x20, "*="), (0x30, "/="), (0x40, "|="), (0x50, "&="),
           (0x60, "<<="), (0x70, ">>="), (0x90, "%="), (0xA0, "^="), (0xB0, "="), (0xC0, "s>>=")]


@pytest.mark.parametrize("op,sym", ALU_OPS)
def test_alu_ops(op, sym):
    assert fmt(0x07 | op, dst=1, imm=5) == f"r1 {sym} 5"            # ALU64 K
    assert fmt(0x0F | op, dst=1, src=2) == f"r1 {sym} r2"           # ALU64 X
    assert fmt(0x04 | op, dst=3, imm=-7) == f"w3 {sym} -7"          # ALU K: imm is signed
    assert fmt(0x0C | op, dst=3, src=9) == f"w3 {sym} w9"           # ALU X


def test_alu_opcode_prefix():
    assert fmt(0xB7, dst=1, imm=0, opcode=True) == "(b7) r1 = 0"
    assert fmt(0xBC, dst=0, src=1, opcode=True) == "(bc) w0 = w1"


def test_neg():
    assert fmt(0x87, dst=4) == "r4 = -r4"
    assert fmt(0x84, dst=4) == "w4 = -w4"


@pytest.mark.parametrize("cls,reg", [(0x07, "r"), (0x04, "w")])
def test_sdiv_smod(cls, reg):
    assert fmt(cls | 0x08 | 0x30, dst=1, src=2, off=1) == f"{reg}1 s/= {reg}2"
    assert fmt(cls | 0x30, dst=1, off=1, imm=3) == f"{reg}1 s/= 3"
    assert fmt(cls | 0x08 | 0x90, dst=1, src=2, off=1) == f"{reg}1 s%= {reg}2"
    assert fmt(cls | 0x90, dst=1, off=1, imm=-3) == f"{reg}1 s%= -3"
    # off = 1 means signed only for div and mod
    assert fmt(cls | 0x08 | 0x00, dst=1, src=2, off=1) == f"{reg}1 += {reg}2"


def test_movsx():
    assert fmt(0xBF, dst=0, src=1, off=8) == "r0 = (s8)r1"
    assert fmt(0xBF, dst=0, src=1, off=16) == "r0 = (s16)r1"
    assert fmt(0xBF, dst=0, src=1, off=32) == "r0 = (s32)r1"
    assert fmt(0xBC, dst=0, src=1, off=8) == "w0 = (s8)w1"
    assert fmt(0xBC, dst=0, src=1, off=16) == "w0 = (s16)w1"
    # other offsets (and the K form) are plain moves for the printer
    assert fmt(0xBF, dst=0, src=1, off=24) == "r0 = r1"
    assert fmt(0xB7, dst=0, off=8, imm=1) == "r0 = 1"


def test_mov_special_offsets():
    assert fmt(0xBF, dst=1, src=2, off=1, imm=1) == "r1 = addr_space_cast(r2, 0, 1)"
    assert fmt(0xBF, dst=1, src=2, off=1, imm=(1 << 16)) == "r1 = addr_space_cast(r2, 1, 0)"
    assert fmt(0xBF, dst=1, src=2, off=1, imm=-1) == "r1 = addr_space_cast(r2, 65535, 65535)"
    assert fmt(0xBF, dst=0, src=0, off=-1) == "r0 = &(void __percpu *)(r0)"
    assert fmt(0xBC, dst=1, src=2, off=1) == "w1 = w2"           # only ALU64 has these


def test_endian_and_bswap():
    assert fmt(0xD4, dst=1, imm=16) == "r1 = le16 r1"               # BPF_ALU | BPF_END | BPF_TO_LE
    assert fmt(0xDC, dst=1, imm=32) == "r1 = be32 r1"               # BPF_TO_BE
    assert fmt(0xDC, dst=2, imm=64) == "r2 = be64 r2"
    assert fmt(0xD7, dst=3, imm=16) == "r3 = bswap16 r3"            # BPF_ALU64 | BPF_END
    assert fmt(0xD7, dst=3, imm=64) == "r3 = bswap64 r3"


def test_alu_undefined_ops():
    # ops 0xe0 and 0xf0 have no entry in the kernel's table (it would print "(null)")
    assert fmt(0xE7, dst=1, imm=1) == "unknown opcode e7"
    assert fmt(0xFC, dst=1, src=2, opcode=True) == "(fc) unknown opcode fc"


# --- JMP / JMP32 -----------------------------------------------------------------------------

JMP_OPS = [(0x10, "=="), (0x20, ">"), (0x30, ">="), (0x40, "&"), (0x50, "!="), (0x60, "s>"),
           (0x70, "s>="), (0xA0, "<"), (0xB0, "<="), (0xC0, "s<"), (0xD0, "s<=")]


@pytest.mark.parametrize("op,sym", JMP_OPS)
def test_conditional_jumps(op, sym):
    assert fmt(0x05 | op, dst=1, off=3, imm=5) == f"if r1 {sym} 0x5 goto pc+3"
    assert fmt(0x0D | op, dst=1, src=2, off=-4) == f"if r1 {sym} r2 goto pc-4"
    assert fmt(0x06 | op, dst=1, off=0, imm=-1) == f"if w1 {sym} 0xffffffff goto pc+0"
    assert fmt(0x0E | op, dst=7, src=8, off=12) == f"if w7 {sym} w8 goto pc+12"


def test_unconditional_jumps():
    assert fmt(0x05, off=3) == "goto pc+3"
    assert fmt(0x05, off=-1, opcode=True) == "(05) goto pc-1"
    assert fmt(0x06, off=5, imm=-70000) == "gotol pc-70000"        # JMP32 JA: the offset is imm
    assert fmt(0x06, imm=100000, opcode=True) == "(06) gotol pc+100000"
    assert fmt(0xE5, off=7) == "may_goto pc+7"                      # BPF_JCOND, src BPF_MAY_GOTO
    assert fmt(0x0D, dst=3) == "gotox r3"                           # indirect jump
    assert fmt(0x95) == "exit"


def test_jump_odd_encodings_as_the_kernel_prints_them():
    assert fmt(0x96, dst=1) == "if w1 exit 0x0 goto pc+0"           # JMP32 | EXIT
    assert fmt(0x0E, dst=1, src=2, off=1) == "if w1 jmp w2 goto pc+1"
    assert fmt(0xE5, src=1, off=7) == "unknown opcode e5"           # JCOND, not may_goto
    assert fmt(0xF5, dst=1, off=7) == "unknown opcode f5"
    assert fmt(0xE6, dst=1, off=7) == "unknown opcode e6"


def test_helper_calls():
    assert fmt(0x85, imm=1) == "call bpf_map_lookup_elem#1"
    assert fmt(0x85, imm=181, opcode=True) == "(85) call bpf_loop#181"
    assert fmt(0x85, imm=0) == "call bpf_unspec#0"
    assert fmt(0x85, imm=100000) == "call unknown#100000"
    assert fmt(0x85, imm=-5) == "call unknown#-5"
    assert fmt(0x85, imm=1, helpers=False) == "call unknown#1"
    # the table first, then the callback, as the kernel's __func_get_name
    name = lambda insn: "htab_map_update_elem" if insn.imm == 343552 else None  # noqa: E731
    assert fmt(0x85, imm=343552, helper_name=name) == "call htab_map_update_elem#343552"
    assert fmt(0x85, imm=2, helper_name=name) == "call bpf_map_update_elem#2"
    assert fmt(0x86, imm=1) == "call bpf_map_lookup_elem#1"         # JMP32 | CALL prints alike


def test_kfunc_calls():
    assert fmt(0x85, src=2, imm=12345) == "call kernel-function#12345"
    assert fmt(0x85, src=2, imm=1, helper_name=lambda i: "bpf_obj_new_impl") == "call bpf_obj_new_impl#1"
    # a kfunc is never named from the helper table
    assert fmt(0x85, src=2, imm=1) == "call kernel-function#1"
    assert fmt(0x85, src=7, imm=1) == "call unknown#1"


def test_pseudo_calls():
    assert fmt(0x85, src=1, imm=5) == "call pc+5"
    assert fmt(0x85, src=1, imm=-20, opcode=True) == "(85) call pc-20"
    # xlated programs: the offset is in off, imm is the subprogram index
    assert fmt(0x85, src=1, off=23, imm=1) == "call pc+23"
    assert fmt(0x85, src=1, imm=5, call_target=lambda i: "add3") == "call pc+5#add3"
    assert disasm.branch_target(10, Insn(0x85, 0, 1, 0, 5)) == 16
    assert disasm.branch_target(10, Insn(0x85, 0, 1, 23, 1)) == 34


def test_branch_targets():
    assert disasm.branch_target(24, Insn(0x15, 0, 0, -6, 0)) == 19
    assert disasm.branch_target(0, Insn(0x06, 0, 0, 0, 7)) == 8
    assert disasm.branch_target(0, Insn(0x95, 0, 0, 0, 0)) is None
    assert disasm.branch_target(0, Insn(0x85, 0, 0, 0, 1)) is None
    assert disasm.branch_target(0, Insn(0x61, 1, 2, 4, 0)) is None
    assert disasm.branch_target(7, Insn(0x18, 2, 4, 0, 38, 38)) == 46


# --- LD ----------------------------------------------------------------------------------------

def test_ld_imm64_values():
    [(index, insn)] = decode(ld_imm64(1, 0x7400000001))
    assert index == 0 and insn.imm64 == 0x7400000001 and insn.slots == 2
    assert format_insn(insn, opcode=True) == "(18) r1 = 0x7400000001"
    assert format_insn(decode(ld_imm64(0, 0xFFFFFFEA))[0][1]) == "r0 = 0xffffffea"
    assert format_insn(decode(ld_imm64(0, -1 & (2**64 - 1)))[0][1]) == "r0 = 0xffffffffffffffff"
    assert format_insn(decode(ld_imm64(9, 0))[0][1]) == "r9 = 0x0"


def test_ld_imm64_pseudo_sources():
    def one(src, imm, hi, **kw):
        return format_insn(decode(ld_imm64(1, imm, src=src, hi=hi))[0][1], **kw)

    assert one(1, 2013, 0) == "r1 = map[id:2013]"                          # BPF_PSEUDO_MAP_FD
    assert one(2, 2015, 8) == "r1 = map[id:2015][0]+8"                     # BPF_PSEUDO_MAP_VALUE
    assert one(3, 77, 0) == "r1 = 0x4d"                                    # BPF_PSEUDO_BTF_ID
    assert one(4, 38, 0) == "r1 = subprog[+38]"                            # BPF_PSEUDO_FUNC
    assert one(4, -3, 0) == "r1 = subprog[-3]"
    assert one(5, 3, 0) == "r1 = 0x3"                                      # BPF_PSEUDO_MAP_IDX
    assert one(6, 3, 16) == "r1 = map[idx:3]+16"                           # BPF_PSEUDO_MAP_IDX_VALUE
    # names
    name = lambda insn: "counts"  # noqa: E731
    assert one(1, 0, 0, map_name=name) == "r1 = map[counts]"
    assert one(2, 0, 4096, map_name=name) == "r1 = map[counts][0]+4096"
    assert one(6, 0, 4, map_name=name) == "r1 = map[counts]+4"
    assert one(5, 0, 0, map_name=name) == "r1 = map[counts]"
    assert one(0, 0, 0, map_name=name) == "r1 = 0x0"                        # not a map load
    assert one(4, 38, 0, call_target=lambda i: "sum_cb") == "r1 = subprog[+38#sum_cb]"


def test_ld_abs_ind():
    assert fmt(0x20, imm=12) == "r0 = *(u32 *)skb[12]"               # BPF_LD | BPF_ABS | BPF_W
    assert fmt(0x28, imm=-4) == "r0 = *(u16 *)skb[-4]"
    assert fmt(0x30, imm=0, opcode=True) == "(30) r0 = *(u8 *)skb[0]"
    assert fmt(0x40, src=7, imm=14) == "r0 = *(u32 *)skb[r7 + 14]"   # BPF_IND
    assert fmt(0x50, src=3, imm=-2) == "r0 = *(u8 *)skb[r3 + -2]"


def test_ld_bug():
    assert fmt(0x00) == "BUG_ld_00"                                    # BPF_LD | BPF_IMM | BPF_W
    assert fmt(0x60, opcode=True) == "BUG_ld_60"                       # the kernel prints no "(xx)"


# --- LDX / ST / STX ------------------------------------------------------------------------------

SIZES = [(0x00, "u32"), (0x08, "u16"), (0x10, "u8"), (0x18, "u64")]


@pytest.mark.parametrize("size,name", SIZES)
def test_ldx_st_stx_mem(size, name):
    assert fmt(0x61 | size, dst=1, src=2, off=8) == f"r1 = *({name} *)(r2 +8)"
    assert fmt(0x62 | size, dst=10, off=-8, imm=-1) == f"*({name} *)(r10 -8) = -1"
    assert fmt(0x63 | size, dst=10, src=1, off=-16) == f"*({name} *)(r10 -16) = r1"
    assert fmt(0x61 | size, dst=0, src=1, off=0) == f"r0 = *({name} *)(r1 +0)"


def test_ldx_memsx():
    assert fmt(0x81, dst=1, src=2, off=4) == "r1 = *(s32 *)(r2 +4)"   # BPF_LDX | BPF_MEMSX | BPF_W
    assert fmt(0x89, dst=1, src=2, off=-2) == "r1 = *(s16 *)(r2 -2)"
    assert fmt(0x91, dst=1, src=2, off=0, opcode=True) == "(91) r1 = *(s8 *)(r2 +0)"
    assert fmt(0x99, dst=1, src=2) == "unknown opcode 99"              # no 64-bit sign extension


def test_ldx_st_stx_other_modes():
    assert fmt(0x21) == "BUG_ldx_21"
    assert fmt(0xC2, opcode=True) == "(c2) nospec"                      # BPF_ST | BPF_NOSPEC
    assert fmt(0x22) == "BUG_st_22"
    assert fmt(0x23) == "BUG_23"                                        # STX | ABS


@pytest.mark.parametrize("size,name,bits", [(0x00, "u32", ""), (0x18, "u64", "64")])
def test_atomics(size, name, bits):
    code = 0xC3 | size
    assert fmt(code, dst=1, src=2, off=0, imm=0x00) == f"lock *({name} *)(r1 +0) += r2"
    assert fmt(code, dst=1, src=2, off=8, imm=0x40) == f"lock *({name} *)(r1 +8) |= r2"
    assert fmt(code, dst=1, src=2, off=-8, imm=0x50) == f"lock *({name} *)(r1 -8) &= r2"
    assert fmt(code, dst=1, src=2, imm=0xA0) == f"lock *({name} *)(r1 +0) ^= r2"
    for imm, op in [(0x01, "add"), (0x41, "or"), (0x51, "and"), (0xA1, "xor")]:
        assert fmt(code, dst=1, src=2, off=4, imm=imm) == \
            f"r2 = atomic{bits}_fetch_{op}(({name} *)(r1 +4), r2)"
    assert fmt(code, dst=1, src=3, imm=0xE1) == f"r3 = atomic{bits}_xchg(({name} *)(r1 +0), r3)"
    assert fmt(code, dst=1, src=3, off=16, imm=0xF1) == \
        f"r0 = atomic{bits}_cmpxchg(({name} *)(r1 +16), r0, r3)"
    assert fmt(code, dst=4, src=1, off=8, imm=0x100) == f"r4 = load_acquire(({name} *)(r1 +8))"
    assert fmt(code, dst=1, src=4, off=8, imm=0x110) == f"store_release(({name} *)(r1 +8), r4)"
    assert fmt(code, dst=1, src=2, imm=0x10) == f"BUG_{code:02x}"        # no atomic sub
    assert fmt(code, dst=1, src=2, imm=0xF0) == f"BUG_{code:02x}"        # cmpxchg needs BPF_FETCH


def test_atomic_opcode_prefix():
    assert fmt(0xDB, dst=1, src=2, imm=0, opcode=True) == "(db) lock *(u64 *)(r1 +0) += r2"
    assert fmt(0xC3, dst=2, src=1, imm=0, opcode=True) == "(c3) lock *(u32 *)(r2 +0) += r1"
    assert fmt(0xD3, dst=2, src=1, imm=0) == "lock *(u8 *)(r2 +0) += r1"


# --- decode, garbage, disassemble ---------------------------------------------------------------

def test_decode_slots():
    prog = raw(0xB7, 1) + ld_imm64(2, 0x1122334455667788) + raw(0x95)
    out = decode(prog)
    assert [i for i, _ in out] == [0, 1, 3]
    insn = out[1][1]
    assert (insn.code, insn.dst, insn.src, insn.off, insn.imm) == (0x18, 2, 0, 0, 0x55667788)
    assert insn.imm64 == 0x1122334455667788 and insn.imm_hi == 0x11223344
    assert out[0][1].imm64 is None and out[0][1].slots == 1
    assert b"".join(i.to_bytes() for _, i in out) == prog


def test_decode_fields_signed():
    [(_, insn)] = decode(raw(0x61, dst=15, src=14, off=-32768, imm=-2**31))
    assert (insn.dst, insn.src, insn.off, insn.imm) == (15, 14, -32768, -2**31)
    assert format_insn(insn) == "r15 = *(u32 *)(r14 -32768)"


def test_truncated_input():
    # an ld_imm64 without its second slot, then trailing bytes
    out = disassemble(raw(0xB7, 0) + raw(0x18, 1, 0, 0, 5) + b"\x95\x00\x00")
    assert out == ["   0: (b7) r0 = 0",
                   "   1: (18) r1 = <ld_imm64 without its second slot>",
                   "   2: (95) truncated instruction (3 of 8 bytes)"]
    assert decode(b"\x01\x02") == []
    assert disassemble(b"") == []


def test_garbage_never_raises():
    import random
    rng = random.Random(1234)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        lines = disassemble(blob, func_names={i: f"f{i}" for i in range(0, 40, 3)},
                            map_names={i: "m" for i in range(40)})
        assert len(lines) >= len(blob) // 16
    for code in range(256):                                 # every opcode, odd fields
        for src in (0, 1, 2, 4, 15):
            blob = raw(code, 15, src, -1, -1) + raw(code, 0, src, 1, 2**31 - 1)
            assert disassemble(blob)


def test_disassemble_line_format():
    prog = raw(0xB7, 1, imm=0) + raw(0x15, 0, off=3, imm=5) + ld_imm64(1, 7, src=1, hi=0) + raw(0x95)
    assert disassemble(prog) == [
        "   0: (b7) r1 = 0",
        "   1: (15) if r0 == 0x5 goto pc+3",
        "   2: (18) r1 = map[id:7]",
        "   4: (95) exit",
    ]
    many = disassemble(raw(0x95) * 10001)
    assert many[9999] == "9999: (95) exit" and many[10000] == "10000: (95) exit"


def test_disassemble_helper_names():
    call = raw(0x85, imm=1) + raw(0x85, imm=300000) + raw(0x85, src=2, imm=9)
    assert disassemble(call) == ["   0: (85) call bpf_map_lookup_elem#1", "   1: (85) call unknown#300000",
                                 "   2: (85) call kernel-function#9"]
    assert disassemble(call, helper_names=False)[0] == "   0: (85) call unknown#1"
    named = disassemble(call, helper_names={300000: "array_map_lookup_elem", 9: "bpf_rcu_read_lock"})
    assert named[1:] == ["   1: (85) call array_map_lookup_elem#300000",
                         "   2: (85) call bpf_rcu_read_lock#9"]
    assert disassemble(call, helper_names=lambda insn: f"f{insn.imm}")[1] == "   1: (85) call f300000#300000"


def test_disassemble_named_targets_and_source():
    prog = (ld_imm64(2, 5, src=4, hi=0)        # 0: callback at 0 + 5 + 1 = 6
            + ld_imm64(1, 0, src=2, hi=16)     # 2: .bss + 16
            + raw(0x85, src=1, imm=2)          # 4: call 4 + 2 + 1 = 7
            + raw(0x95)                        # 5
            + raw(0xB7, 0, imm=0)              # 6: cb
            + raw(0x95))                       # 7: f
    strings = {1: "prog.bpf.c", 2: "\t  x = cb(y);", 3: "return 0;"}
    out = disassemble(prog, map_names={2: ".bss"}, func_names={6: "cb", 7: "f"},
                      func_protos={0: "int main(void * ctx)", 6: "long cb(void)", 7: ""},
                      line_info=[(0, 1, 2, (12 << 10) | 3), (6, 1, 3, 20 << 10), (6, 1, 2, 0)],
                      source=strings.get)
    assert out == [
        "int main(void * ctx):",
        "; x = cb(y);",
        "   0: (18) r2 = subprog[+5#cb]",
        "   2: (18) r1 = map[.bss][0]+16",
        "   4: (85) call pc+2#f",
        "   5: (95) exit",
        "long cb(void):",
        "; return 0;",
        "   6: (b7) r0 = 0",
        "   7: (95) exit",                 # an empty prototype prints no header (bpftool)
    ]
    linum = disassemble(prog, line_info=[(0, "a.c", "  x;", (12 << 10) | 3)], linum=True)
    assert linum[0] == "; x; [file:a.c line_num:12 line_col:3]"


def test_elf_program(no_fd_leak):
    """An object's program before loading: map names from the relocations, function
    names and prototypes from the layout and BTF func_info, source from line_info."""
    import pybpf
    from conftest import program
    from pybpf.loader.relocate import link_program

    spec = pybpf.open(program("calls_test"))
    linked = link_program(spec, spec.programs["compute"])
    insns = linked.with_map_fds({ref.map_name: 0 for ref in linked.map_refs})
    lines = disassemble(insns, map_names={ref.insn: ref.map_name for ref in linked.map_refs},
                        func_names={start: fn.name for fn, start in linked.layout},
                        func_protos={i: func_signature(spec.btf, t) for i, t in linked.func_info},
                        line_info=linked.line_info, source=spec.btf.string)
    assert lines[0] == "int compute(struct compute_args * args):"
    assert lines[1] == "; int compute(struct compute_args *args)"
    text = "\n".join(lines)
    assert "(18) r1 = map[arr]" in text
    assert re.search(r"\(18\) r2 = subprog\[\+\d+#sum_cb\]", text)
    assert re.search(r"\(18\) r2 = subprog\[\+\d+#each_cb\]", text)
    assert "(85) call bpf_loop#181" in text and "(85) call bpf_for_each_map_elem#164" in text
    assert re.search(r"\(85\) call pc\+\d+#twice", text) and re.search(r"\(85\) call pc\+\d+#add3", text)
    assert "long each_cb(struct bpf_map * map, __u32 * key, __u64 * val, void * data):" in lines
    assert lines[-1].endswith("(95) exit")


def test_func_signature_forms():
    import pybpf
    from conftest import program

    btf = pybpf.open(program("calls_test")).btf
    [twice] = btf.by_name("twice")
    assert func_signature(btf, twice.id) == "int twice(int x)"
    assert func_signature(btf, twice.type_id) == "int (int x)"          # the FUNC_PROTO alone
    assert func_signature(btf, 0) == "void "


# --- against the kernel and bpftool ------------------------------------------------------------

@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("bpftool") is None, reason="needs bpftool")
@pytest.mark.parametrize("name", LOADABLE)
def test_xlated_matches_bpftool(name, no_fd_leak, not_supported_skip):
    """Every program of every loadable object: our lines equal ``bpftool prog dump xlated``
    (and with ``linum``), after the two normalizations documented at _normalized."""
    import pybpf
    from conftest import program

    checked = 0
    with not_supported_skip:       # a program this kernel refuses (lockdown, no such attach type...)
        obj = pybpf.load(program(name))
    with obj:
        for prog in obj.programs.values():
            for linum in (False, True):
                # read kallsyms after loading: the JITed subprograms are named there
                prog_id, ours = _our_dump(prog.fd, _kallsyms(), linum=linum)
                theirs = _bpftool(prog_id, *(["linum"] if linum else []))
                assert [_normalized(line) for line in ours] == theirs, f"{name}:{prog.name}"
            checked += 1
    assert checked


@pytest.mark.kernel
def test_xlated_map_ids(no_fd_leak):
    """In xlated instructions the kernel has replaced each map fd with the map's id."""
    import pybpf
    from conftest import program
    from pybpf.kernel import syscall
    from pybpf.kernel.attrs import MapInfo

    with pybpf.load(program("globals_test")) as obj:
        ids = {syscall.obj_get_info_by_fd(m.fd, MapInfo()).id: n for n, m in obj.maps.items()}
        _, insns, _, _, _ = _xlated(obj.programs["read_globals"].fd)
        loads = [(i, insn) for i, insn in decode(insns) if insn.is_ld_imm64]
        assert loads and all(insn.src == disasm.BPF_PSEUDO_MAP_VALUE and insn.imm in ids
                             for _, insn in loads)
        lines = disassemble(insns, map_names={i: ids[insn.imm] for i, insn in loads})
        assert any(re.search(r"= map\[globals_\.bss\]\[0\]\+8$", line) for line in lines)
