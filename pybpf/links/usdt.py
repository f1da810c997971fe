"""USDT probes (``sys/sdt.h``, ``.note.stapsdt``) for programs built with libbpf's ``usdt.bpf.h``.

A USDT probe ``provider:name`` is one or more probe sites (a ``nop`` each) in a binary or
shared library, each described by an ELF note: its address, the link-time address of
``.stapsdt.base``, an optional semaphore (a 2-byte counter the application tests before
preparing the arguments) and an argument string such as ``-4@%edi 8@-16(%rbp) 4@$5``.

Attaching, as libbpf's usdt.c does it (our own code):

1. read the notes of ``provider:name`` and turn each site's address into a file offset
   through the PT_LOAD segment holding it (after the ``.stapsdt.base`` prelink
   adjustment); the semaphore's address likewise, through a non-executable segment;
2. parse each site's argument string into the ``struct __bpf_usdt_spec`` usdt.bpf.h reads
   (layout taken from the object's BTF), give each distinct string a spec id from the
   object's ``__bpf_usdt_specs`` ARRAY (ids are shared by every USDT link of the object and
   given back on close) and write the spec there;
3. one uprobe per site (perf_event_open on the uprobe PMU at the file offset, the
   semaphore's file offset in ``config`` at the PMU's ``ref_ctr_offset`` bits, so the
   kernel counts the semaphore up while the probe exists) and a BPF_PERF_EVENT link whose
   ``bpf_cookie`` is the spec id: ``bpf_usdt_arg()`` and friends find their spec with
   ``bpf_get_attach_cookie()``.  Kernels without BPF cookies get the site's absolute
   address -> spec id in ``__bpf_usdt_ip_to_spec_id`` instead.

Only x86-64 argument strings are parsed (registers, constants, ``off(%reg)`` and
``off(%base,%index,scale)`` memory operands).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import re
import weakref

from ..errors import ClosedError, Error, NotSupportedError, SyscallError
from ..kernel import perf, tracefs
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkCreateAttr
from ..kernel.constants import AttachType, Cmd
from ..resource import deferred_signals
from .base import Link

NOTE_SECTION = ".note.stapsdt"
BASE_SECTION = ".stapsdt.base"
NOTE_TYPE = 3                    # NT_STAPSDT
NOTE_NAME = "stapsdt"
MAX_ARGS = 12                    # BPF_USDT_MAX_ARG_CNT in usdt.bpf.h
SPECS_MAP = "__bpf_usdt_specs"
IP_MAP = "__bpf_usdt_ip_to_spec_id"
_REF_CTR_FORMAT = "/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset"

# enum __bpf_usdt_arg_type
ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB = 0, 1, 2, 3

# offsetof(struct pt_regs, reg) on x86-64 (arch/x86/include/uapi/asm/ptrace.h, a UAPI layout);
# each register answers to its 64-, 32-, 16- and 8-bit names
_X86_64_PT_REGS = {
    ("r15", "r15d", "r15w", "r15b"): 0, ("r14", "r14d", "r14w", "r14b"): 8,
    ("r13", "r13d", "r13w", "r13b"): 16, ("r12", "r12d", "r12w", "r12b"): 24,
    ("rbp", "ebp", "bp", "bpl"): 32, ("rbx", "ebx", "bx", "bl"): 40,
    ("r11", "r11d", "r11w", "r11b"): 48, ("r10", "r10d", "r10w", "r10b"): 56,
    ("r9", "r9d", "r9w", "r9b"): 64, ("r8", "r8d", "r8w", "r8b"): 72,
    ("rax", "eax", "ax", "al"): 80, ("rcx", "ecx", "cx", "cl"): 88,
    ("rdx", "edx", "dx", "dl"): 96, ("rsi", "esi", "si", "sil"): 104,
    ("rdi", "edi", "di", "dil"): 112, ("rip", "eip"): 128, ("rsp", "esp", "sp", "spl"): 152,
}
PT_REGS_OFFSETS = {name: off for names, off in _X86_64_PT_REGS.items() for name in names}


# -- argument strings ----------------------------------------------------------------------------

class UsdtArg:
    """One parsed USDT argument: ``size`` in bytes (1, 2, 4, 8), ``signed``, ``type``
    (ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB), ``val_off`` (the constant, or the memory
    offset), ``reg_off``/``idx_reg_off`` (offsets in struct pt_regs) and ``scale_shift``."""

    __slots__ = ("text", "size", "signed", "type", "val_off", "reg_off", "idx_reg_off", "scale_shift")

    def __init__(self, text, size, signed, type, val_off=0, reg_off=0, idx_reg_off=0, scale_shift=0):
        self.text, self.size, self.signed, self.type = text, size, signed, type
        self.val_off, self.reg_off, self.idx_reg_off, self.scale_shift = val_off, reg_off, idx_reg_off, scale_shift

    @property
    def bitshift(self) -> int:
        """Bits usdt.bpf.h clears (and sign-extends from) to widen the value to 64 bits."""
        return 64 - 8 * self.size

    def __eq__(self, other):
        return isinstance(other, UsdtArg) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__[1:])

    def __repr__(self) -> str:
        kind = {ARG_CONST: "const", ARG_REG: "reg", ARG_REG_DEREF: "deref", ARG_SIB: "sib"}[self.type]
        return (f"<UsdtArg {self.text!r} {'s' if self.signed else 'u'}{8 * self.size} {kind} val_off={self.val_off} "
                f"reg_off={self.reg_off}>")


_N = r"[-+]?\d+"
# the forms libbpf's x86 parse_usdt_arg accepts (sscanf patterns, blanks allowed around tokens)
_ARG_FORMS = [
    (ARG_SIB, re.compile(rf"\s*({_N})\s*@\s*({_N})?\s*\(\s*%(\w+)\s*,\s*%(\w+)\s*(?:,\s*({_N})\s*)?\)\s*")),
    (ARG_REG_DEREF, re.compile(rf"\s*({_N})\s*@\s*({_N})?\s*\(\s*%(\w+)\s*\)\s*")),
    (ARG_REG, re.compile(rf"\s*({_N})\s*@\s*%(\w+)\s*")),
    (ARG_CONST, re.compile(rf"\s*({_N})\s*@\s*\$({_N})\s*")),
]


def _reg_off(reg: str, spec: str) -> int:
    try:
        return PT_REGS_OFFSETS[reg]
    except KeyError:
        raise Error(f"USDT argument {spec!r}: unknown x86-64 register %{reg}") from None


def parse_usdt_arg(text: str, pos: int = 0) -> tuple[UsdtArg, int]:
    """Parse the x86-64 USDT argument at ``text[pos:]`` (``-4@%eax``, ``8@-8(%rbp)``,
    ``4@$5``, ``1@-96(%rbp,%rax,8)``): the argument and the position after it."""
    for kind, rx in _ARG_FORMS:
        m = rx.match(text, pos)
        if not m or (m.end() < len(text) and not text[m.end() - 1].isspace()):
            continue
        spec = text[pos:m.end()].strip()
        size = int(m[1])
        if abs(size) not in (1, 2, 4, 8):
            raise Error(f"USDT argument {spec!r}: size {size} is not 1, 2, 4 or 8 bytes (negative: signed)")
        arg = UsdtArg(spec, abs(size), size < 0, kind)
        if kind == ARG_CONST:
            arg.val_off = int(m[2])
        elif kind == ARG_REG:
            arg.reg_off = _reg_off(m[2], spec)
        elif kind == ARG_REG_DEREF:
            arg.val_off = int(m[2] or 0)
            arg.reg_off = _reg_off(m[3], spec)
        else:
            arg.val_off = int(m[2] or 0)
            arg.reg_off = _reg_off(m[3], spec)
            arg.idx_reg_off = _reg_off(m[4], spec)
            scale = int(m[5] or 1)
            if scale not in (1, 2, 4, 8):
                raise Error(f"USDT argument {spec!r}: scale {scale} is not 1, 2, 4 or 8")
            arg.scale_shift = scale.bit_length() - 1
        return arg, m.end()
    raise Error(f"USDT argument {text[pos:].split()[0] if text[pos:].split() else text!r} is not an x86-64 "
                f"form pybpf reads (SIZE@%REG, SIZE@OFF(%REG), SIZE@OFF(%BASE,%INDEX,SCALE), SIZE@$CONST)")


def parse_usdt_args(text: str) -> list[UsdtArg]:
    """All arguments of a note's argument string (at most 12, as usdt.bpf.h holds)."""
    args, pos = [], 0
    while pos < len(text) and text[pos:].strip():
        if len(args) >= MAX_ARGS:
            raise Error(f"USDT argument string {text!r} has more than {MAX_ARGS} arguments "
                        f"(usdt.bpf.h's BPF_USDT_MAX_ARG_CNT)")
        arg, pos = parse_usdt_arg(text, pos)
        args.append(arg)
    return args


# -- the struct __bpf_usdt_spec layout -----------------------------------------------------------

class SpecLayout:
    """Where each field of ``struct __bpf_usdt_spec`` lives: ``size``, ``args`` (offset of
    the array, ``arg_size`` its stride, ``max_args``), ``usdt_cookie``/``arg_cnt`` (byte
    offsets) and ``arg_fields``: name -> (bit offset in an arg, bits).  ``has_sib``: the
    program's usdt.bpf.h reads BPF_USDT_ARG_SIB arguments."""

    def __init__(self, size, args, arg_size, max_args, usdt_cookie, arg_cnt, arg_fields, has_sib):
        self.size, self.args, self.arg_size, self.max_args = size, args, arg_size, max_args
        self.usdt_cookie, self.arg_cnt, self.arg_fields, self.has_sib = usdt_cookie, arg_cnt, arg_fields, has_sib

    @classmethod
    def default(cls) -> "SpecLayout":
        """libbpf-dev 1.x's usdt.bpf.h before SIB arguments: 16-byte args, 208 bytes in all."""
        return cls(208, 0, 16, MAX_ARGS, 192, 200,
                   {"val_off": (0, 64), "arg_type": (64, 32), "reg_off": (96, 16), "arg_signed": (112, 8),
                    "arg_bitshift": (120, 8)}, False)

    @classmethod
    def from_btf(cls, btf, type_id: int) -> "SpecLayout":
        """The layout the object was compiled with, from its BTF (the specs map's value type)."""
        from ..spec.btf import Kind
        spec_t = btf.resolve(type_id)
        if spec_t is None or spec_t.kind != Kind.STRUCT:
            raise Error(f"map {SPECS_MAP}: its value type is not struct __bpf_usdt_spec (built with bpf/usdt.bpf.h?)")
        members = {m.name: m for m in spec_t.members}
        try:
            args_m, cookie_m, cnt_m = members["args"], members["usdt_cookie"], members["arg_cnt"]
        except KeyError as e:
            raise Error(f"struct {spec_t.name} has no member {e.args[0]!r}: not usdt.bpf.h's spec") from None
        arr = btf.resolve(args_m.type_id)
        arg_t = btf.resolve(arr.elem_type)
        fields = {}
        for m in arg_t.members:
            if m.name:
                fields[m.name] = (m.bit_offset, m.bitfield_size or 8 * btf.size_of(m.type_id))
        has_sib = any(v.name == "BPF_USDT_ARG_SIB" for t in btf.by_name("__bpf_usdt_arg_type")
                      for v in t.values)
        for need in ("val_off", "arg_type", "reg_off", "arg_signed", "arg_bitshift"):
            if need not in fields:
                raise Error(f"struct {arg_t.name} has no member {need!r}: not usdt.bpf.h's argument spec")
        return cls(spec_t.size, args_m.bit_offset // 8, arg_t.size, arr.nelems, cookie_m.bit_offset // 8,
                   cnt_m.bit_offset // 8, fields, has_sib and "idx_reg_off" in fields)


def _put(buf: bytearray, bit_off: int, bits: int, value: int) -> None:
    """Store ``value`` (two's complement, little-endian) in ``bits`` bits at ``bit_off``."""
    lo, hi = bit_off // 8, (bit_off + bits + 7) // 8
    word = int.from_bytes(buf[lo:hi], "little")
    shift, mask = bit_off - 8 * lo, (1 << bits) - 1
    word = (word & ~(mask << shift)) | ((value & mask) << shift)
    buf[lo:hi] = word.to_bytes(hi - lo, "little")


def encode_spec(args: list[UsdtArg], cookie: int, layout: SpecLayout | None = None) -> bytes:
    """``struct __bpf_usdt_spec`` for ``args`` and the USDT cookie (what bpf_usdt_cookie() returns)."""
    layout = layout or SpecLayout.default()
    if len(args) > layout.max_args:
        raise Error(f"{len(args)} USDT arguments, the program's usdt.bpf.h holds {layout.max_args}")
    buf = bytearray(layout.size)
    f = layout.arg_fields
    for i, a in enumerate(args):
        if a.type == ARG_SIB and not layout.has_sib:
            raise Error(f"USDT argument {a.text!r} is a base+index*scale operand, which the program's "
                        f"usdt.bpf.h cannot read (it has no BPF_USDT_ARG_SIB): rebuild it with libbpf 1.6+'s "
                        f"usdt.bpf.h")
        base = 8 * (layout.args + i * layout.arg_size)
        values = {"val_off": a.val_off, "arg_type": a.type, "reg_off": a.reg_off, "arg_signed": int(a.signed),
                  "arg_bitshift": a.bitshift}
        if a.type == ARG_SIB:
            values.update(idx_reg_off=a.idx_reg_off, scale_bitshift=a.scale_shift)
        for name, value in values.items():
            bit, bits = f[name]
            _put(buf, base + bit, bits, value)
    _put(buf, 8 * layout.usdt_cookie, 64, cookie)
    _put(buf, 8 * layout.arg_cnt, 16, len(args))
    return bytes(buf)


# -- the notes -----------------------------------------------------------------------------------

class UsdtNote:
    """One probe site's note: ``provider``, ``name``, ``args`` (the argument string),
    ``loc_addr``, ``base_addr`` (link-time .stapsdt.base) and ``sema_addr`` (0: none)."""

    __slots__ = ("provider", "name", "args", "loc_addr", "base_addr", "sema_addr")

    def __init__(self, provider, name, args, loc_addr, base_addr, sema_addr):
        self.provider, self.name, self.args = provider, name, args
        self.loc_addr, self.base_addr, self.sema_addr = loc_addr, base_addr, sema_addr

    def __repr__(self) -> str:
        return (f"<UsdtNote {self.provider}:{self.name} loc=0x{self.loc_addr:x} base=0x{self.base_addr:x} "
                f"sema=0x{self.sema_addr:x} args={self.args!r}>")


def parse_note_desc(desc: bytes, where: str = "note") -> UsdtNote:
    """A stapsdt note's descriptor: three addresses (u64), then provider, name and
    arguments, each NUL-terminated (an argument string ``":..."`` or empty means none)."""
    if len(desc) < 24 + 3:
        raise Error(f"{where}: stapsdt note of {len(desc)} bytes is too short")
    loc, base, sema = (int.from_bytes(desc[i:i + 8], "little") for i in (0, 8, 16))
    parts = desc[24:].split(b"\0")
    if len(parts) < 4 or not parts[1]:
        raise Error(f"{where}: stapsdt note without provider, name and argument strings")
    provider, name, args = (p.decode("utf-8", "replace") for p in parts[:3])
    if args.startswith(":"):
        args = ""
    return UsdtNote(provider, name, args, loc, base, sema)


class _Segment:
    __slots__ = ("start", "end", "offset", "exec")

    def __init__(self, start, end, offset, exec_):
        self.start, self.end, self.offset, self.exec = start, end, offset, exec_


class UsdtSite:
    """A probe site ready to attach: ``file_offset`` (uprobe offset), ``vaddr`` (its
    address in the ELF, after the base adjustment), ``sema_offset`` (file offset of the
    semaphore, 0: none), ``note`` and its parsed ``args``."""

    __slots__ = ("file_offset", "vaddr", "sema_offset", "note", "args")

    def __init__(self, file_offset, vaddr, sema_offset, note, args):
        self.file_offset, self.vaddr, self.sema_offset, self.note, self.args = \
            file_offset, vaddr, sema_offset, note, args

    def __repr__(self) -> str:
        return f"<UsdtSite 0x{self.file_offset:x} sema=0x{self.sema_offset:x} {self.note.args!r}>"


def _open_elf(path, f):
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(f)
    except ELFError as e:
        raise Error(f"USDT binary {path} is not a valid ELF file: {e}") from None
    if elf.elfclass != 64 or not elf.little_endian:
        raise Error(f"USDT binary {path} is not a 64-bit little-endian ELF file")
    if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
        raise Error(f"USDT binary {path} is {elf['e_type']}: only executables and shared libraries have probes")
    return elf


def _stapsdt_descs(data: bytes, path: str):
    """The descriptors of the stapsdt notes (name "stapsdt", type 3) in a SHT_NOTE section:
    each note is namesz, descsz, type (u32), then name and descriptor, each padded to 4 bytes."""
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = (int.from_bytes(data[pos + i:pos + i + 4], "little") for i in (0, 4, 8))
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if desc_at + descsz > len(data):
            raise Error(f"{path}: truncated note in {NOTE_SECTION}")
        if ntype == NOTE_TYPE and data[name_at:name_at + namesz].rstrip(b"\0") == NOTE_NAME.encode():
            yield data[desc_at:desc_at + descsz]
        pos = end


def read_notes(path: str) -> tuple[str, list[UsdtNote], int, list]:
    """Every stapsdt note of ``path``: (e_type, notes, .stapsdt.base address or 0, PT_LOAD segments)."""
    try:
        with open(path, "rb") as f:
            elf = _open_elf(path, f)
            sec = elf.get_section_by_name(NOTE_SECTION)
            if sec is None or sec["sh_type"] != "SHT_NOTE":
                raise Error(f"{path} has no USDT probes (no {NOTE_SECTION} section): was it built with "
                            f"sys/sdt.h probes (DTRACE_PROBE/STAP_PROBE)?")
            notes = [parse_note_desc(desc, path) for desc in _stapsdt_descs(sec.data(), path)]
            base_sec = elf.get_section_by_name(BASE_SECTION)
            base = base_sec["sh_addr"] if base_sec is not None else 0
            segs = [_Segment(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"], s["p_offset"], bool(s["p_flags"] & 1))
                    for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            return elf["e_type"], notes, base, segs
    except OSError as e:
        raise Error(f"cannot read USDT binary {path}: {e.strerror}") from None


def find_sites(path: str, provider: str, name: str) -> tuple[str, list[UsdtSite]]:
    """The sites of probe ``provider:name`` in ``path``, as (e_type, sites)."""
    e_type, notes, base, segs = read_notes(path)
    sites = []
    for note in notes:
        if note.provider != provider or note.name != name:
            continue
        # prelink moves sections but not the (non-allocated) notes: the note keeps the
        # link-time address of .stapsdt.base, whose section header prelink adjusted
        # (sourceware.org/systemtap/wiki/UserSpaceProbeImplementation); libbpf moves the site
        # by the difference
        vaddr = note.loc_addr
        if base and note.base_addr:
            vaddr += base - note.base_addr
        seg = next((s for s in segs if s.start <= vaddr < s.end), None)
        if seg is None or not seg.exec:
            raise Error(f"USDT {provider}:{name} in {path}: the site at 0x{vaddr:x} is in no executable "
                        f"PT_LOAD segment")
        sema_off = 0
        if note.sema_addr:
            sseg = next((s for s in segs if s.start <= note.sema_addr < s.end), None)
            if sseg is None or sseg.exec:
                raise Error(f"USDT {provider}:{name} in {path}: its semaphore at 0x{note.sema_addr:x} is in no "
                            f"writable PT_LOAD segment")
            sema_off = note.sema_addr - sseg.start + sseg.offset
        args = parse_usdt_args(note.args)
        sites.append(UsdtSite(vaddr - seg.start + seg.offset, vaddr, sema_off, note, args))
    if not sites:
        have = sorted({f"{n.provider}:{n.name}" for n in notes})
        raise Error(f"no USDT probe {provider}:{name} in {path} (it has: {', '.join(have) or 'none'})")
    return e_type, sites


def list_probes(path: str) -> list[tuple[str, str]]:
    """The (provider, name) pairs of the probes in ``path``, each once, in note order."""
    seen = []
    for n in read_notes(path)[1]:
        if (n.provider, n.name) not in seen:
            seen.append((n.provider, n.name))
    return seen


# -- spec ids ------------------------------------------------------------------------------------

class _SpecIds:
    """Spec ids of one object's __bpf_usdt_specs map: shared by its USDT links, given back on close."""

    def __init__(self, capacity: int):
        self.capacity, self.next, self.free = capacity, 0, []

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        if self.next >= self.capacity:
            raise Error(f"map {SPECS_MAP} is full ({self.capacity} USDT argument specs in use): close some USDT "
                        f"links, or build the program with a larger BPF_USDT_MAX_SPEC_CNT")
        self.next += 1
        return self.next - 1

    def give_back(self, ids) -> None:
        self.free.extend(ids)


_SPEC_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def spec_ids_in_use(specs_map) -> int:
    """How many spec ids of ``specs_map`` USDT links hold now."""
    ids = _SPEC_IDS.get(specs_map)
    return 0 if ids is None else ids.next - len(ids.free)


# -- the kernel's side ---------------------------------------------------------------------------

def _ref_ctr_shift() -> int:
    """The first bit of the uprobe PMU's ``ref_ctr_offset`` in perf_event_attr.config
    (``config:32-63``: PERF_UPROBE_REF_CTR_OFFSET_SHIFT, kernel 4.20+)."""
    try:
        with open(_REF_CTR_FORMAT) as f:
            text = f.read().strip()
    except FileNotFoundError:
        raise NotSupportedError(f"USDT semaphores need the uprobe PMU's ref_ctr_offset (Linux 4.20, "
                                f"{_REF_CTR_FORMAT}), which this kernel lacks") from None
    m = re.fullmatch(r"config:(\d+)-\d+", text)
    if not m:
        raise Error(f"unexpected format {text!r} in {_REF_CTR_FORMAT}")
    return int(m[1])


def _has_bpf_cookie() -> bool:
    from ..loader.externs import has_bpf_cookie
    from ..loader.facts import KernelFacts
    return has_bpf_cookie(KernelFacts.running())


def _vma_base(pid: int, path: str, file_offset: int) -> int:
    """The absolute address of file offset ``file_offset`` of ``path`` in process ``pid``
    (an executable mapping of it in /proc/PID/maps)."""
    real = os.path.realpath(path)
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise Error(f"cannot read /proc/{pid}/maps to place {path}'s probe: {e.strerror}") from None
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[5] != real or "x" not in parts[1]:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        off = int(parts[2], 16)
        if off <= file_offset < off + (end - start):
            return start - off + file_offset
    raise Error(f"{real} is not mapped executable in process {pid} at file offset 0x{file_offset:x}")


class UsdtLink(Link):
    """A USDT attachment: one uprobe + BPF_PERF_EVENT link per probe site (``sites``).
    ``close()`` removes every uprobe (the kernel counts the semaphores back down) and gives
    the spec ids back to the object."""

    def __init__(self, program, target: str, specs_map, ids: _SpecIds):
        super().__init__(program, "usdt", target, [])
        self.sites: list[UsdtSite] = []
        self.spec_ids: list[int] = []
        self._specs_map = specs_map
        self._ids = ids
        self._ip_map = None
        self._ips: list[int] = []

    @property
    def closed(self) -> bool:
        return not self._fds and self._ids is None

    def close(self) -> None:
        """Detach every site; free the spec ids (and the IP map entries, without BPF cookies)."""
        with deferred_signals():
            try:
                super().close()
            finally:
                ids, self._ids = self._ids, None
                if ids is not None:
                    ids.give_back(self.spec_ids)
                    self.spec_ids = []
                while self._ips:
                    ip = self._ips.pop()
                    try:
                        self._ip_map.delete(ip)
                    except (ClosedError, SyscallError):
                        pass             # the object's maps are gone, or the entry is


def parse_usdt_target(target: str) -> tuple[str | None, str, str]:
    """A ``usdt/`` section's target: ``PATH:PROVIDER:NAME`` (libbpf's form) -> (path,
    provider, name); ``PROVIDER:NAME`` (pybpf: the binary is given at attach time, e.g. by
    the CLI's --pid) -> (None, provider, name)."""
    parts = target.rsplit(":", 2)
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and all(parts):
        return None, parts[0], parts[1]
    raise Error(f"USDT target {target!r} is not 'PATH:PROVIDER:NAME' (e.g. SEC(\"usdt//usr/bin/python3:python:"
                f"function__entry\")) or 'PROVIDER:NAME'")


def attach_usdt(program, binary: str, provider: str, name: str, pid: int = -1, cookie: int = 0) -> Link:
    """Attach ``program`` (built with bpf/usdt.bpf.h) to every site of USDT probe
    ``provider:name`` in ``binary`` (an executable or shared library; a bare name is looked up
    like uprobe binaries), in process ``pid`` only (-1: every process, 0: this one).
    ``cookie`` is what bpf_usdt_cookie() returns.  Returns one Link for all the sites."""
    from .uprobe import resolve_binary
    owner = getattr(program, "_owner", None)
    maps = owner.maps if owner is not None else {}
    if SPECS_MAP not in maps or IP_MAP not in maps:
        raise Error(f"program {program.name!r} has no {SPECS_MAP} and {IP_MAP} maps: USDT programs include "
                    f"<bpf/usdt.bpf.h> and read their arguments with bpf_usdt_arg()")
    if not 0 <= cookie < 1 << 64:
        raise Error(f"USDT cookie {cookie} is not a u64")
    pid = -1 if pid < 0 else (os.getpid() if pid == 0 else pid)
    path = resolve_binary(binary)
    e_type, sites = find_sites(path, provider, name)
    specs_map, ip_map = maps[SPECS_MAP], maps[IP_MAP]
    layout = (SpecLayout.from_btf(specs_map.btf, specs_map.spec.value_type_id)
              if specs_map.btf is not None and specs_map.spec.value_type_id else SpecLayout.default())
    if layout.size != specs_map.value_size:
        raise Error(f"map {SPECS_MAP}: values of {specs_map.value_size} bytes, struct __bpf_usdt_spec is "
                    f"{layout.size}")
    encoded = {}                             # argument string -> spec bytes (one spec id each)
    for s in sites:
        if s.note.args not in encoded:
            encoded[s.note.args] = encode_spec(s.args, cookie, layout)
    shift = _ref_ctr_shift() if any(s.sema_offset for s in sites) else 0
    if shift and any(s.sema_offset >= 1 << (64 - shift) for s in sites):
        raise Error(f"USDT {provider}:{name} in {path}: semaphore offset too large for the PMU's ref_ctr_offset")
    cookies = _has_bpf_cookie()
    if not cookies and e_type == "ET_DYN" and pid < 0:
        raise NotSupportedError(f"USDT {provider}:{name} in {path} (position-independent): without BPF cookies "
                                f"(bpf_get_attach_cookie, Linux 5.15) a pid is needed to place its sites")
    pmu = tracefs.uprobe_pmu_type()
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    ids = _SPEC_IDS.get(specs_map)
    if ids is None:
        ids = _SPEC_IDS[specs_map] = _SpecIds(specs_map.max_entries)
    target = f"{path}:{provider}:{name}"
    with deferred_signals() as section:
        link = UsdtLink(program, target, specs_map, ids)
        section.on_interrupt(link)
        try:
            spec_of = {}
            for args_text, value in encoded.items():
                sid = ids.take()
                link.spec_ids.append(sid)
                spec_of[args_text] = sid
                specs_map.update(sid, value)
            if not cookies:
                link._ip_map = ip_map
            for s in sites:
                sid = spec_of[s.note.args]
                if not cookies:
                    ip = s.vaddr if e_type == "ET_EXEC" else _vma_base(pid, path, s.file_offset)
                    try:
                        ip_map.update(ip, sid, 1)    # BPF_NOEXIST: two links on one site would clash
                    except SyscallError as e:
                        if e.errno == _errno.EEXIST:
                            raise Error(f"USDT {provider}:{name}: site 0x{ip:x} is attached already (without BPF "
                                        f"cookies one site takes one USDT link)") from None
                        raise
                    link._ips.append(ip)
                attr = perf.PerfEventAttr(type=pmu, uprobe_path=ctypes.addressof(path_buf),
                                          probe_offset=s.file_offset)
                # the kernel increments the semaphore at ref_ctr_offset in every process that maps
                # the file while the uprobe exists (trace_uprobe: PERF_UPROBE_REF_CTR_OFFSET_SHIFT)
                attr.config |= s.sema_offset << shift
                _open_site(program, link, attr, pid, sid if cookies else 0, target)
                link.sites.append(s)
        except BaseException:
            link.close()
            raise
    return link


def _open_site(program, link: UsdtLink, attr, pid: int, cookie: int, target: str) -> None:
    """One uprobe perf event and its BPF_PERF_EVENT link (bpf_cookie = spec id), each fd
    owned by ``link`` from the moment it exists (the caller holds a deferred-signals section)."""
    try:
        pfd = perf.perf_event_open(attr, pid=pid, cpu=0 if pid == -1 else -1)
    except SyscallError as e:
        hint = ""
        if e.errno == _errno.ESRCH:
            hint = f" (no process {pid})"
        elif e.errno == _errno.EINVAL and attr.config >> 32:
            hint = " (the semaphore offset is not in a writable mapping, or another probe uses another offset)"
        raise type(e)(e.command, e.errno, f"USDT {target}: uprobe at offset 0x{attr.probe_offset:x}{hint}") from None
    link._fds.append(pfd)
    try:
        lfd = sc.bpf(Cmd.LINK_CREATE, _link_attr(program.fd, pfd, cookie))
    except SyscallError as e:
        if e.errno not in (_errno.EINVAL, 524) or cookie:
            raise type(e)(e.command, e.errno, f"program {program.name!r}: BPF_PERF_EVENT link on the uprobe "
                                              f"of {target}") from None
        # kernels before 5.15: no perf-event links (and no cookies: the IP map serves)
        perf.ioctl(pfd, perf.PERF_EVENT_IOC_SET_BPF, program.fd)
        perf.ioctl(pfd, perf.PERF_EVENT_IOC_ENABLE, 0)
        link._bpf_link = False
        return
    link._fds.insert(len(link._fds) - 1, lfd)     # [link, event, link, event...]: fds[0] is a BPF link


def _link_attr(prog_fd: int, pfd: int, cookie: int) -> LinkCreateAttr:
    attr = LinkCreateAttr(prog_fd=prog_fd, target_fd=pfd, attach_type=AttachType.PERF_EVENT)
    attr.perf_event.bpf_cookie = cookie
    return attr


def attach_usdt_section(program, target: str, pid: int = -1, cookie: int = 0) -> Link:
    """Attach a ``usdt/...`` program to its section's target; a target without a path
    (``PROVIDER:NAME``) probes the executable of process ``pid`` (/proc/PID/exe)."""
    path, provider, name = parse_usdt_target(target)
    if path is None:
        if pid <= 0:
            raise Error(f"program {program.name!r} (section {program.section!r}) names no binary: attach it with "
                        f"prog.attach_usdt(BINARY, {provider!r}, {name!r}), or give the CLI --pid PID")
        path = os.path.realpath(f"/proc/{pid}/exe")
    return attach_usdt(program, path, provider, name, pid, cookie)


__all__ = ["attach_usdt", "attach_usdt_section", "parse_usdt_target", "parse_usdt_arg", "parse_usdt_args",
           "encode_spec", "SpecLayout", "UsdtArg", "UsdtNote", "UsdtSite", "UsdtLink", "find_sites",
           "read_notes", "list_probes", "parse_note_desc", "spec_ids_in_use"]
