"""BPF instruction encoding (Documentation/bpf/standardization/instruction-set.rst).

An instruction is 8 bytes: ``u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm``.
``ld_imm64`` (code 0x18) takes two slots; the second holds the upper 32 bits in imm.
"""

from __future__ import annotations

import struct

INSN_SIZE = 8
INSN = struct.Struct("<BBhi")

# classes and codes used by the loader
BPF_LD = 0x00
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_IMM = 0x00
BPF_DW = 0x18

LD_IMM64 = BPF_LD | BPF_IMM | BPF_DW   # 0x18
CALL = BPF_JMP | BPF_CALL              # 0x85

# src_reg values of ld_imm64 and call (include/uapi/linux/bpf.h), defined once in kernel.constants
from ..kernel.constants import BPF_PSEUDO_BTF_ID as PSEUDO_BTF_ID  # noqa: E402
from ..kernel.constants import BPF_PSEUDO_CALL as PSEUDO_CALL  # noqa: E402
from ..kernel.constants import BPF_PSEUDO_FUNC as PSEUDO_FUNC  # noqa: E402
from ..kernel.constants import BPF_PSEUDO_KFUNC_CALL as PSEUDO_KFUNC_CALL  # noqa: E402
from ..kernel.constants import BPF_PSEUDO_MAP_FD as PSEUDO_MAP_FD  # noqa: E402
from ..kernel.constants import BPF_PSEUDO_MAP_VALUE as PSEUDO_MAP_VALUE  # noqa: E402

# ELF relocation types for BPF (llvm/BinaryFormat/ELFRelocs/BPF.def)
R_BPF_NONE = 0
R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4
R_BPF_64_32 = 10


def decode(buf, index: int) -> tuple[int, int, int, int, int]:
    """(code, dst_reg, src_reg, off, imm) of instruction ``index``."""
    code, regs, off, imm = INSN.unpack_from(buf, index * INSN_SIZE)
    return code, regs & 0xF, regs >> 4, off, imm


def set_src_reg(buf: bytearray, index: int, src: int) -> None:
    pos = index * INSN_SIZE + 1
    buf[pos] = (buf[pos] & 0x0F) | (src << 4)


def set_imm(buf: bytearray, index: int, imm: int) -> None:
    struct.pack_into("<i", buf, index * INSN_SIZE + 4, imm)


def get_imm(buf, index: int) -> int:
    return struct.unpack_from("<i", buf, index * INSN_SIZE + 4)[0]


def is_ld_imm64(buf, index: int) -> bool:
    return buf[index * INSN_SIZE] == LD_IMM64


def is_call(buf, index: int) -> bool:
    return buf[index * INSN_SIZE] == CALL


def is_pseudo_call(buf, index: int) -> bool:
    """A bpf-to-bpf call: ``call`` with src_reg = BPF_PSEUDO_CALL."""
    return buf[index * INSN_SIZE] == CALL and (buf[index * INSN_SIZE + 1] >> 4) == PSEUDO_CALL


def is_pseudo_func(buf, index: int) -> bool:
    """A callback address load: ``ld_imm64`` with src_reg = BPF_PSEUDO_FUNC."""
    return buf[index * INSN_SIZE] == LD_IMM64 and (buf[index * INSN_SIZE + 1] >> 4) == PSEUDO_FUNC
