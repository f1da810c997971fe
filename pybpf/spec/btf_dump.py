"""Text dumps of BTF, byte-identical to ``bpftool btf dump file X [format c]``.

Two formats, matching the bpftool installed on the reference machine (v7.1,
built against the kernel-6.1 copy of libbpf, which reports itself as v1.1):

- :func:`format_raw`: one record per type, ``[ID] KIND 'NAME' fields...``
  (bpftool src/btf.c dump_btf_type).  For split BTF only the split's own types
  are printed, numbered from its first id.
- :func:`format_c`: a compilable C header, the ``vmlinux.h`` format (libbpf
  src/btf_dump.c: topological ordering with forward declarations, anonymous
  types inlined, ``___N`` name de-duplication, explicit padding fields,
  ``__attribute__((packed))``).  This libbpf prints no ``mode(byte)`` /
  ``mode(word)`` enum attributes and ``(void)`` for prototypes without
  parameters.

:func:`btf_from_file` opens what bpftool's ``file`` source accepts: a raw BTF
blob (``/sys/kernel/btf/vmlinux``) or an ELF object, whose ``.BTF`` section is
used as written by the compiler (bpftool prints DATASECs unfixed: size 0 and
global variables at offset 0, unlike :class:`~pybpf.spec.object.ObjectSpec`,
which fixes them in place).
"""

from __future__ import annotations

import os
import struct

from ..errors import BTFError, ObjectError
from .btf import BTF, BTF_MAGIC, MAX_RESOLVE_DEPTH, MODIFIERS, Kind
from .elf import ELF, malformed_is_object_error

__all__ = ["format_raw", "format_c", "btf_from_file"]


# -- opening files ---------------------------------------------------------------------------


def btf_from_file(path: str | os.PathLike, base: BTF | None = None) -> BTF:
    """Parse a raw BTF file or the ``.BTF`` section of an ELF object.

    ``base`` is the BTF a split BTF (a kernel module's) builds on.  Raises
    :class:`~pybpf.errors.BTFError` for corrupt BTF or an ELF file without
    ``.BTF``, and :class:`~pybpf.errors.ObjectError` for anything that is neither.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ObjectError(f"cannot read {path}: {e.strerror}") from None
    # bpftool's is_btf_raw(): the first u16 is the BTF magic
    if len(data) >= 2 and struct.unpack_from("<H", data)[0] in (BTF_MAGIC, 0x9FEB):
        return BTF(data, source=path, base=base)
    if data[:4] == b"\x7fELF":
        return BTF(_elf_btf_section(data, path), source=f"{path} .BTF", base=base)
    raise ObjectError(f"{path}: neither a raw BTF file (magic 0xeb9f) nor an ELF object")


def _elf_btf_section(data: bytes, path: str) -> bytes:
    with malformed_is_object_error(path):
        sec = ELF(data).section(".BTF")
    if sec is None:
        raise BTFError(f"{path}: ELF file has no .BTF section (compile with clang -g)")
    if sec[1]["sh_type"] == "SHT_NOBITS":
        raise BTFError(f"{path}: the .BTF section has no contents (SHT_NOBITS)")
    return sec[2]


# -- raw format (bpftool src/btf.c dump_btf_type) ------------------------------------------------

_KIND_NAMES = ("UNKNOWN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE",
               "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG", "TYPE_TAG",
               "ENUM64")
_INT_ENCODINGS = {0: "(none)", 1: "SIGNED", 2: "CHAR", 4: "BOOL"}
_LINKAGES = ("static", "global", "extern")

# u32 words after the 12-byte common record: (fixed, per vlen item), per kind number
_EXTRA_WORDS = {1: (1, 0), 3: (3, 0), 4: (0, 3), 5: (0, 3), 6: (0, 2), 13: (0, 2), 14: (1, 0), 15: (0, 3),
                17: (1, 0), 19: (0, 3)}


def _type_words(btf: BTF) -> memoryview:
    return memoryview(btf.raw)[btf.type_off:btf.type_off + btf.type_len].cast("I")


def _record_starts(words: memoryview) -> list:
    """Where each record starts (in u32 words), in id order."""
    starts = []
    append = starts.append
    w, n = 0, len(words)
    extra = _EXTRA_WORDS
    while w < n:
        append(w)
        info = words[w + 1]
        fixed, per = extra.get((info >> 24) & 0x1F, (0, 0))
        w += 3 + fixed + per * (info & 0xFFFF)
    return starts


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def format_raw(btf: BTF) -> str:
    """``bpftool btf dump file X`` output (raw format) for ``btf``, one record per type.

    Reads the blob as it is now: for an object's ``.BTF`` use :func:`btf_from_file`
    to get the unfixed DATASECs bpftool prints.  A name offset outside the string
    section prints ``(invalid)``, as bpftool does.
    """
    words = _type_words(btf)
    starts = _record_starts(words)
    first = btf.first_id
    type_cnt = first + len(starts)  # btf__type_cnt(): ids below it exist

    cache: dict[int, str] = {0: "(anon)"}

    def name(off: int) -> str:
        s = cache.get(off)
        if s is None:
            try:
                s = btf.string(off)
            except BTFError:
                s = "(invalid)"
            cache[off] = s
        return s

    def kind_and_name(type_id: int) -> str:
        """`KIND 'name'` of a DATASEC variable (bpftool looks it up, base types included)."""
        if type_id >= first:
            w = starts[type_id - first]
            kind = (words[w + 1] >> 24) & 0x1F
            return f"{_KIND_NAMES[kind] if kind < len(_KIND_NAMES) else 'UNKNOWN'} '{name(words[w])}'"
        if type_id == 0:  # libbpf's void: kind UNKN, no name
            return "UNKNOWN '(anon)'"
        t = btf[type_id]
        return f"{_KIND_NAMES[t.kind]} '{t.name or '(anon)'}'"

    out: list[str] = []
    emit = out.append
    for type_id, w in enumerate(starts, first):
        name_off, info, st = words[w], words[w + 1], words[w + 2]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = info >> 31
        p = w + 3
        head = f"[{type_id}] {_KIND_NAMES[kind] if kind < len(_KIND_NAMES) else 'UNKNOWN'} '{name(name_off)}'"
        if kind == 1:  # INT
            v = words[p]
            enc = _INT_ENCODINGS.get((v >> 24) & 0x0F, "UNKN")
            emit(f"{head} size={st} bits_offset={(v >> 16) & 0xFF} nr_bits={v & 0xFF} encoding={enc}\n")
        elif kind in (2, 8, 9, 10, 11, 18):  # PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
            emit(f"{head} type_id={st}\n")
        elif kind == 3:  # ARRAY
            emit(f"{head} type_id={words[p]} index_type_id={words[p + 1]} nr_elems={words[p + 2]}\n")
        elif kind in (4, 5):  # STRUCT, UNION
            parts = [f"{head} size={st} vlen={vlen}"]
            for i in range(p, p + 3 * vlen, 3):
                off = words[i + 2]
                if kflag and off >> 24:
                    parts.append(f"\t'{name(words[i])}' type_id={words[i + 1]} bits_offset={off & 0xFFFFFF} "
                                 f"bitfield_size={off >> 24}")
                else:
                    parts.append(f"\t'{name(words[i])}' type_id={words[i + 1]} "
                                 f"bits_offset={off & 0xFFFFFF if kflag else off}")
            emit("\n".join(parts) + "\n")
        elif kind == 6:  # ENUM
            parts = [f"{head} encoding={'SIGNED' if kflag else 'UNSIGNED'} size={st} vlen={vlen}"]
            for i in range(p, p + 2 * vlen, 2):
                v = words[i + 1]
                parts.append(f"\t'{name(words[i])}' val={_s32(v) if kflag else v}")
            emit("\n".join(parts) + "\n")
        elif kind == 19:  # ENUM64
            parts = [f"{head} encoding={'SIGNED' if kflag else 'UNSIGNED'} size={st} vlen={vlen}"]
            for i in range(p, p + 3 * vlen, 3):
                v = (words[i + 2] << 32) | words[i + 1]
                if kflag:
                    parts.append(f"\t'{name(words[i])}' val={v - (1 << 64) if v >> 63 else v}LL")
                else:
                    parts.append(f"\t'{name(words[i])}' val={v}ULL")
            emit("\n".join(parts) + "\n")
        elif kind == 7:  # FWD
            emit(f"{head} fwd_kind={'union' if kflag else 'struct'}\n")
        elif kind == 12:  # FUNC: the linkage is the vlen
            emit(f"{head} type_id={st} linkage={_LINKAGES[vlen] if vlen < 3 else '(unknown)'}\n")
        elif kind == 13:  # FUNC_PROTO
            parts = [f"{head} ret_type_id={st} vlen={vlen}"]
            for i in range(p, p + 2 * vlen, 2):
                parts.append(f"\t'{name(words[i])}' type_id={words[i + 1]}")
            emit("\n".join(parts) + "\n")
        elif kind == 14:  # VAR (bpftool prints a comma here)
            lk = words[p]
            emit(f"{head} type_id={st}, linkage={_LINKAGES[lk] if lk < 3 else '(unknown)'}\n")
        elif kind == 15:  # DATASEC
            parts = [f"{head} size={st} vlen={vlen}"]
            for i in range(p, p + 3 * vlen, 3):
                vt = words[i]
                line = f"\ttype_id={vt} offset={words[i + 1]} size={words[i + 2]}"
                if vt < type_cnt:
                    line += f" ({kind_and_name(vt)})"
                parts.append(line)
            emit("\n".join(parts) + "\n")
        elif kind == 16:  # FLOAT
            emit(f"{head} size={st}\n")
        elif kind == 17:  # DECL_TAG
            emit(f"{head} type_id={st} component_idx={_s32(words[p])}\n")
        else:
            emit(head + "\n")
    return "".join(out)


# -- C format (libbpf src/btf_dump.c) -------------------------------------------------------------

_HEADER = ("#ifndef __VMLINUX_H__\n"
           "#define __VMLINUX_H__\n"
           "\n"
           "#ifndef BPF_NO_PRESERVE_ACCESS_INDEX\n"
           "#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)\n"
           "#endif\n"
           "\n")
_FOOTER = ("#ifndef BPF_NO_PRESERVE_ACCESS_INDEX\n"
           "#pragma clang attribute pop\n"
           "#endif\n"
           "\n"
           "#endif /* __VMLINUX_H__ */\n")

# order / emit states
_NOT_ORDERED, _ORDERING, _ORDERED = 0, 1, 2
_NOT_EMITTED, _EMITTING, _EMITTED = 0, 1, 2

_MAX_INDENT = 13  # libbpf's PREFIXES: at most 13 tabs
_PFX = ["\t" * min(i, _MAX_INDENT) for i in range(64)]

# GCC's ARM SIMD polynomial types, which libbpf aliases to standard ones
_MISSING_BASE_TYPES = {"__Poly8_t": "unsigned char", "__Poly16_t": "unsigned short",
                       "__Poly64_t": "unsigned long long", "__Poly128_t": "unsigned __int128"}

_LONG_NAMES = frozenset({"long", "long int", "int long", "unsigned long", "long unsigned", "unsigned long int",
                         "unsigned int long", "long unsigned int", "long int unsigned", "int unsigned long",
                         "int long unsigned"})
_RESOLVE_DEPTH = 32  # libbpf MAX_RESOLVE_DEPTH
_U32_MAX = 0xFFFFFFFF


# refuse a hole that would take more `long: 64;` lines than this (an 8 MiB hole): corrupt BTF, and
# bpftool would print gigabytes
_MAX_PAD_FIELDS = 1 << 20


#: how deep the dump's walks (ordering, emitting, alignment) may nest: vmlinux (6.18) needs 15; the
#: kernel refuses BTF resolving deeper than MAX_RESOLVE_DEPTH at each step, and pointers to
#: anonymous types chain such steps: deeper is a loop or corrupt BTF
_MAX_NESTING = 4 * MAX_RESOLVE_DEPTH


def _nested(walk):
    """Bound a recursive walk of :class:`_CDump` whose first argument is a type id (or a list
    of them): past _MAX_NESTING levels it raises a BTFError naming the type, not a RecursionError."""
    def bounded(self, first, *args):
        self.depth += 1
        try:
            if self.depth > _MAX_NESTING:
                type_id = first[-1] if isinstance(first, list) and first else first
                raise self.btf.too_deep(type_id, f"type references ({walk.__name__.strip('_')})", _MAX_NESTING)
            return walk(self, first, *args)
        finally:
            self.depth -= 1
    bounded.__name__, bounded.__doc__ = walk.__name__, walk.__doc__
    return bounded


def _c_int(v: int) -> int:
    """v as a C int: libbpf keeps bit offsets and sizes in ints, which wrap."""
    return (v + 0x80000000) % 0x100000000 - 0x80000000


def _pfx(lvl: int) -> str:
    return _PFX[lvl] if lvl < len(_PFX) else _PFX[-1]


def _roundup(x: int, y: int) -> int:
    return (x + y - 1) // y * y


class _CDump:
    """One btf_dump session: per-type state survives between dump_type() calls."""

    def __init__(self, btf: BTF):
        self.btf = btf
        self.n = btf.first_id + len(btf)  # btf__type_cnt(): the last id + 1
        n = self.n
        types = [None] * n
        for i in range(1, n):
            types[i] = btf[i]
        self.types = types
        self.ptr_sz = self._pointer_size()
        self.order_state = bytearray(n)
        self.emit_state = bytearray(n)
        self.fwd_emitted = bytearray(n)
        self.referenced = bytearray(n)
        self.names: list = [None] * n  # resolved names (None: not resolved yet)
        self.type_names: dict[str, int] = {}  # struct/union/enum tags
        self.ident_names: dict[str, int] = {}  # typedefs and enumerators
        self.align_cache: dict[int, int] = {}
        self.out: list[str] = []
        self.depth = 0            # nesting of the walks below (_nested)
        # void is ordered and emitted from the start
        self.order_state[0] = _ORDERED
        self.emit_state[0] = _EMITTED
        self._mark_referenced()

    # -- setup ------------------------------------------------------------------------------

    def _mark_referenced(self) -> None:
        """referenced[t]: some type points at t (top-level anonymous enums are the unreferenced ones)."""
        ref = self.referenced
        n = self.n
        for t in self.types[1:]:
            k = t.kind
            if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.FWD, Kind.FLOAT):
                continue
            if k == Kind.ARRAY:
                refs = (t.elem_type, t.index_type)
            elif k in (Kind.STRUCT, Kind.UNION):
                refs = [m.type_id for m in t.members]
            elif k == Kind.FUNC_PROTO:
                # libbpf does not count the return type as a reference
                if t.size_or_type >= n:
                    raise self._bad_ref(t, t.size_or_type)
                refs = [p.type_id for p in t.params]
            elif k == Kind.DATASEC:
                refs = [s.type_id for s in t.secinfos]
            else:
                refs = (t.size_or_type,)
            for r in refs:
                if r >= n:
                    raise self._bad_ref(t, r)
                ref[r] = 1

    def _bad_ref(self, t, ref: int) -> BTFError:
        return BTFError(f"{self.btf.source}: type [{t.id}] {t.kind.name} refers to type id {ref}, "
                        f"but the last type is [{self.n - 1}]")

    def _pointer_size(self) -> int:
        """libbpf determine_ptr_size(): the size of the first 4- or 8-byte INT spelled like
        `long`, base types included; else the host's (8)."""
        for t in self.types[1:]:
            if t.kind == Kind.INT and t.size_or_type in (4, 8) and t.name in _LONG_NAMES:
                return t.size_or_type
        return 8

    # -- names (btf_dump_resolve_name: lazily, so output order decides the ___N suffixes) ------

    def _resolve_name(self, type_id: int, names: dict) -> str:
        cached = self.names[type_id]
        if cached is not None:
            return cached
        t = self.types[type_id]
        orig = t.name
        if not orig:
            return ""
        # forward declarations keep their name and do not count
        if t.kind == Kind.FWD or (t.kind == Kind.ENUM and t.vlen == 0):
            self.names[type_id] = orig
            return orig
        cnt = names.get(orig, 0) + 1
        names[orig] = cnt
        name = f"{orig}___{cnt}" if cnt > 1 else orig
        self.names[type_id] = name
        return name

    def type_name(self, type_id: int) -> str:
        return self._resolve_name(type_id, self.type_names)

    def ident_name(self, type_id: int) -> str:
        return self._resolve_name(type_id, self.ident_names)

    # -- sizes and alignment (libbpf btf__resolve_size, btf__align_of) -------------------------

    def resolve_size(self, type_id: int) -> int:
        """btf__resolve_size(); -1 for an error (void, FWD, FUNC_PROTO, too deep, too big)."""
        nelems = 1
        size = -1
        for _ in range(_RESOLVE_DEPTH):
            if type_id == 0:
                break
            t = self.types[type_id]
            k = t.kind
            if k in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.DATASEC, Kind.FLOAT):
                size = t.size_or_type
                break
            if k == Kind.PTR:
                size = self.ptr_sz
                break
            if k in MODIFIERS or k in (Kind.TYPEDEF, Kind.VAR, Kind.DECL_TAG):
                type_id = t.size_or_type
            elif k == Kind.ARRAY:
                if nelems and t.nelems > _U32_MAX // nelems:
                    return -1
                nelems *= t.nelems
                type_id = t.elem_type
            else:
                return -1
        if size < 0:
            return -1
        if nelems and size > _U32_MAX // nelems:
            return -1
        return nelems * size

    def align_of(self, type_id: int) -> int:
        a = self.align_cache.get(type_id)
        if a is None:
            a = self._align_of(type_id)
            self.align_cache[type_id] = a
        return a

    @_nested
    def _align_of(self, type_id: int) -> int:
        if type_id == 0:
            return 0
        t = self.types[type_id]
        k = t.kind
        if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
            return min(self.ptr_sz, t.size_or_type)
        if k == Kind.PTR:
            return self.ptr_sz
        if k in MODIFIERS or k == Kind.TYPEDEF:
            return self.align_of(t.size_or_type)
        if k == Kind.ARRAY:
            return self.align_of(t.elem_type)
        if k in (Kind.STRUCT, Kind.UNION):
            max_align = 1
            for m in t.members:
                align = self.align_of(m.type_id)
                if align <= 0:
                    return align
                max_align = max(max_align, align)
                # a misaligned non-bitfield member means the struct is packed
                if m.bitfield_size == 0 and m.bit_offset % (8 * align):
                    return 1
            if t.size_or_type % max_align:
                return 1
            return max_align
        return 0

    def is_packed(self, t) -> bool:
        """btf_is_struct_packed(): a misaligned non-bitfield member, or a size that is not a
        multiple of the largest member alignment."""
        max_align = 1
        for m in t.members:
            align = self.align_of(m.type_id)
            if align and m.bitfield_size == 0 and m.bit_offset % (8 * align):
                return True
            max_align = max(align, max_align)
        return t.size_or_type % max_align != 0

    # -- ordering (btf_dump_order_type) --------------------------------------------------------

    def dump_type(self, type_id: int) -> None:
        queue: list[int] = []
        self.order(type_id, False, queue)
        for q in queue:
            self.emit_type(q, 0)

    @_nested
    def order(self, type_id: int, through_ptr: bool, queue: list) -> int:
        """Topological sort; returns 1 for a strong link (must be defined first), 0 for a weak one."""
        state = self.order_state
        if state[type_id] == _ORDERED:
            return 1
        t = self.types[type_id]
        k = t.kind
        if state[type_id] == _ORDERING:
            # a loop is fine through a pointer to a named struct/union (forward declaration)
            if k in (Kind.STRUCT, Kind.UNION) and through_ptr and t.name:
                return 0
            raise BTFError(f"{self.btf.source}: unsatisfiable type cycle, id:[{type_id}]")
        if k in (Kind.INT, Kind.FLOAT):
            state[type_id] = _ORDERED
            return 0
        if k == Kind.PTR:
            r = self.order(t.size_or_type, True, queue)
            state[type_id] = _ORDERED
            return r
        if k == Kind.ARRAY:
            return self.order(t.elem_type, False, queue)
        if k in (Kind.STRUCT, Kind.UNION):
            # embedded, or anonymous (defined inline even behind a pointer): a strong link
            if through_ptr and t.name:
                return 0
            state[type_id] = _ORDERING
            for m in t.members:
                self.order(m.type_id, False, queue)
            if t.name:
                queue.append(type_id)
            state[type_id] = _ORDERED
            return 1
        if k in (Kind.ENUM, Kind.ENUM64, Kind.FWD):
            # named or unreferenced (top-level anonymous) enums are declarations of their own
            if t.name or not self.referenced[type_id]:
                queue.append(type_id)
            state[type_id] = _ORDERED
            return 1
        if k == Kind.TYPEDEF:
            strong = self.order(t.size_or_type, through_ptr, queue)
            if through_ptr and not strong:
                return 0
            queue.append(type_id)
            state[type_id] = _ORDERED
            return 1
        if k in MODIFIERS:
            return self.order(t.size_or_type, through_ptr, queue)
        if k == Kind.FUNC_PROTO:
            strong = self.order(t.size_or_type, through_ptr, queue)
            for p in t.params:
                if self.order(p.type_id, through_ptr, queue):
                    strong = 1
            return strong
        # FUNC, VAR, DATASEC, DECL_TAG are never printed
        state[type_id] = _ORDERED
        return 0

    # -- emitting (btf_dump_emit_type) -----------------------------------------------------------

    @_nested
    def emit_type(self, type_id: int, cont_id: int) -> None:
        """Print the definition of type_id and what it needs first; cont_id is the struct or
        typedef being defined (0: top level)."""
        estate = self.emit_state
        if estate[type_id] == _EMITTED:
            return
        t = self.types[type_id]
        k = t.kind
        out = self.out.append
        if estate[type_id] == _EMITTING:
            # a cycle: print a forward declaration once
            if self.fwd_emitted[type_id]:
                return
            if k in (Kind.STRUCT, Kind.UNION):
                if type_id == cont_id or not t.name:
                    return
                self.emit_struct_fwd(type_id, t)
                out(";\n\n")
                self.fwd_emitted[type_id] = 1
            elif k == Kind.TYPEDEF:
                if t.name != "__builtin_va_list":
                    self.emit_typedef_def(type_id, t, 0)
                    out(";\n\n")
                self.fwd_emitted[type_id] = 1
            return

        if k == Kind.INT:
            # libbpf resolves every emitted INT's name in the struct/union/enum namespace (to
            # look for __PolyX_t): a later `struct foo` becomes foo___2 after an INT foo
            name = self.type_name(type_id)
            alias = _MISSING_BASE_TYPES.get(name)
            if alias is not None:
                out(f"typedef {alias} {name};\n\n")
            estate[type_id] = _EMITTED
        elif k in (Kind.ENUM, Kind.ENUM64):
            if cont_id == 0:
                self.emit_enum_def(type_id, t, 0)
                out(";\n\n")
            estate[type_id] = _EMITTED
        elif k in MODIFIERS or k == Kind.PTR:
            self.emit_type(t.size_or_type, cont_id)
        elif k == Kind.ARRAY:
            self.emit_type(t.elem_type, cont_id)
        elif k == Kind.FWD:
            self.emit_fwd_def(type_id, t)
            out(";\n\n")
            estate[type_id] = _EMITTED
        elif k == Kind.TYPEDEF:
            estate[type_id] = _EMITTING
            self.emit_type(t.size_or_type, type_id)
            # someone may already have needed it as a forward declaration
            if not self.fwd_emitted[type_id] and t.name != "__builtin_va_list":
                self.emit_typedef_def(type_id, t, 0)
                out(";\n\n")
            estate[type_id] = _EMITTED
        elif k in (Kind.STRUCT, Kind.UNION):
            estate[type_id] = _EMITTING
            if cont_id == 0 or not t.name:
                # the fields are printed here: their types need declarations first
                new_cont = cont_id if not t.name else type_id
                for m in t.members:
                    self.emit_type(m.type_id, new_cont)
            elif not self.fwd_emitted[type_id] and type_id != cont_id:
                self.emit_struct_fwd(type_id, t)
                out(";\n\n")
                self.fwd_emitted[type_id] = 1
            if cont_id == 0:
                self.emit_struct_def(type_id, t, 0)
                out(";\n\n")
                estate[type_id] = _EMITTED
            else:
                estate[type_id] = _NOT_EMITTED
        elif k == Kind.FUNC_PROTO:
            self.emit_type(t.size_or_type, cont_id)
            for p in t.params:
                self.emit_type(p.type_id, cont_id)

    # -- definitions ----------------------------------------------------------------------------

    def emit_struct_fwd(self, type_id: int, t) -> None:
        kw = "struct" if t.kind == Kind.STRUCT else "union"
        self.out.append(f"{kw} {self.type_name(type_id)}" if t.name else kw)

    def emit_fwd_def(self, type_id: int, t) -> None:
        self.out.append(f"{'union' if t.kind_flag else 'struct'} {self.type_name(type_id)}")

    def emit_typedef_def(self, type_id: int, t, lvl: int) -> None:
        name = self.ident_name(type_id)
        # old GCC: __gnuc_va_list as a typedef of void
        if t.size_or_type == 0 and name == "__gnuc_va_list":
            self.out.append("typedef __builtin_va_list __gnuc_va_list")
            return
        self.out.append("typedef ")
        self.emit_type_decl(t.size_or_type, name, lvl)

    def emit_enum_def(self, type_id: int, t, lvl: int) -> None:
        out = self.out.append
        name = self.type_name(type_id)
        out(f"enum {name}" if t.name else "enum")
        if not t.vlen:
            return
        out(" {")
        # enumerators share the namespace of typedef names
        idents = self.ident_names
        ind = _pfx(lvl + 1)
        if t.kind == Kind.ENUM:
            suffix = ""
        else:
            suffix = "LL" if t.kind_flag else "ULL"
        for v in t.values:
            cnt = idents.get(v.name, 0) + 1
            idents[v.name] = cnt
            if cnt > 1:
                out(f"\n{ind}{v.name}___{cnt} = {v.value}{suffix},")
            else:
                out(f"\n{ind}{v.name} = {v.value}{suffix},")
        out(f"\n{_pfx(lvl)}}}")

    def emit_struct_def(self, type_id: int, t, lvl: int) -> None:
        out = self.out.append
        is_struct = t.kind == Kind.STRUCT
        align = self.align_of(type_id)
        packed = is_struct and self.is_packed(t)
        kw = "struct" if is_struct else "union"
        out(f"{kw} {self.type_name(type_id)} {{" if t.name else f"{kw} {{")
        off = 0
        prev_bitfield = False
        ind = _pfx(lvl + 1)
        for m in t.members:
            m_sz = m.bitfield_size
            m_off = _c_int(m.bit_offset)
            m_align = 1 if packed else self.align_of(m.type_id)
            self.emit_bit_padding(t, off, m_off, m_align, prev_bitfield and m_sz != 0, lvl + 1)
            out("\n" + ind)
            self.emit_type_decl(m.type_id, m.name, lvl + 1)
            if m_sz:
                out(f": {m_sz}")
                off = _c_int(m_off + m_sz)
                prev_bitfield = True
            else:
                off = _c_int(m_off + _c_int(max(0, self.resolve_size(m.type_id))) * 8)
                prev_bitfield = False
            out(";")
        if is_struct:
            self.emit_bit_padding(t, off, _c_int(t.size_or_type * 8), align, False, lvl + 1)
        # an empty struct stays on one line: `struct {}`
        if t.vlen or t.size_or_type:
            out(f"\n{_pfx(lvl)}}}")
        else:
            out("}")
        if packed:
            out(" __attribute__((packed))")

    def emit_bit_padding(self, t, cur: int, nxt: int, next_align: int, in_bitfield: bool, lvl: int) -> None:
        """Explicit `type: bits;` fields in struct t for a gap the compiler would not leave by itself."""
        if cur >= nxt:
            return
        out = self.out.append
        ind = _pfx(lvl)
        pads = (("long", self.ptr_sz * 8), ("int", 32), ("short", 16), ("char", 8))
        # the largest pad type whose natural alignment lands at or before the next field
        for pad_type, pad_bits in pads:
            new = _roundup(cur, pad_bits)
            if new <= nxt:
                break
        if cur < new <= nxt:
            # `type: 0` marks an alignment the compiler would not apply on its own; bitfields
            # get the explicit bit count instead
            if (in_bitfield
                    or (new == nxt and (next_align == 0 or _roundup(cur, next_align * 8) != new))
                    or (new != nxt and nxt - new <= new - cur)):
                out(f"\n{ind}{pad_type}: {new - cur if in_bitfield else 0};")
            cur = new
        # fill with whole pads, then the remainder with the smallest pad type that covers it
        full, rest = divmod(nxt - cur, pad_bits)
        if full > _MAX_PAD_FIELDS:
            raise BTFError(f"{self.btf.source}: type [{t.id}] {t.kind.name} '{t.name}': a {nxt - cur}-bit "
                           f"hole would take {full} padding fields; the BTF looks corrupt")
        if full:
            out(f"\n{ind}{pad_type}: {pad_bits};" * full)
        if rest:
            for pad_type, pad_bits in reversed(pads):
                if pad_bits >= rest:
                    out(f"\n{ind}{pad_type}: {rest};")
                    break

    # -- declarations (btf_dump_emit_type_decl / emit_type_chain) --------------------------------

    @_nested
    def emit_type_decl(self, type_id: int, fname: str, lvl: int) -> None:
        """Print `type name` in C syntax: pointers, arrays and function pointers inside out."""
        types = self.types
        stack = []
        start = type_id
        while True:
            stack.append(type_id)
            if len(stack) > _MAX_NESTING:     # e.g. a pointer to itself
                raise self.btf.too_deep(start, "declarator (pointers, arrays, modifiers)", _MAX_NESTING)
            if type_id == 0:
                break
            t = types[type_id]
            k = t.kind
            if k == Kind.ARRAY:
                type_id = t.elem_type
            elif k in (Kind.PTR, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.FUNC_PROTO, Kind.TYPE_TAG):
                type_id = t.size_or_type
            else:
                # INT, ENUM, ENUM64, FWD, STRUCT, UNION, TYPEDEF, FLOAT end the chain (anything
                # else is unexpected here: libbpf warns and prints what it has)
                break
        self.emit_type_chain(stack, fname, lvl)

    def emit_mods(self, decls: list) -> None:
        """const/volatile/restrict directly above a base type, printed before it."""
        types = self.types
        out = self.out.append
        while decls:
            k = types[decls[-1]].kind if decls[-1] else Kind.UNKN
            if k == Kind.VOLATILE:
                out("volatile ")
            elif k == Kind.CONST:
                out("const ")
            elif k == Kind.RESTRICT:
                out("restrict ")
            else:
                return
            decls.pop()

    def drop_mods(self, decls: list) -> None:
        types = self.types
        while decls and decls[-1] and types[decls[-1]].kind in MODIFIERS:
            decls.pop()

    def emit_name(self, name: str, last_was_ptr: bool) -> None:
        self.out.append(" " + name if name and not last_was_ptr else name)

    @_nested
    def emit_type_chain(self, decls: list, fname: str, lvl: int) -> None:
        types = self.types
        out = self.out.append
        last_was_ptr = True
        while decls:
            type_id = decls.pop()
            if type_id == 0:
                self.emit_mods(decls)
                out("void")
                last_was_ptr = False
                continue
            t = types[type_id]
            k = t.kind
            if k in (Kind.INT, Kind.FLOAT):
                self.emit_mods(decls)
                out(t.name)
            elif k in (Kind.STRUCT, Kind.UNION):
                self.emit_mods(decls)
                if t.name:
                    self.emit_struct_fwd(type_id, t)
                else:  # anonymous: inlined
                    self.emit_struct_def(type_id, t, lvl)
            elif k in (Kind.ENUM, Kind.ENUM64):
                self.emit_mods(decls)
                if t.name:
                    out("enum " + self.type_name(type_id))
                else:
                    self.emit_enum_def(type_id, t, lvl)
            elif k == Kind.FWD:
                self.emit_mods(decls)
                self.emit_fwd_def(type_id, t)
            elif k == Kind.TYPEDEF:
                self.emit_mods(decls)
                out(self.ident_name(type_id))
            elif k == Kind.PTR:
                out("*" if last_was_ptr else " *")
            elif k == Kind.VOLATILE:
                out(" volatile")
            elif k == Kind.CONST:
                out(" const")
            elif k == Kind.RESTRICT:
                out(" restrict")
            elif k == Kind.TYPE_TAG:
                self.emit_mods(decls)
                out(f' __attribute__((btf_type_tag("{t.name}")))')
            elif k == Kind.ARRAY:
                # GCC adds const/volatile to arrays of const/volatile elements: dropped
                self.drop_mods(decls)
                if not decls:
                    self.emit_name(fname, last_was_ptr)
                    out(f"[{t.nelems}]")
                    return
                nxt = decls[-1]
                multidim = nxt != 0 and types[nxt].kind == Kind.ARRAY
                if fname and not last_was_ptr:
                    out(" ")
                if not multidim:
                    out("(")
                self.emit_type_chain(decls, fname, lvl)
                if not multidim:
                    out(")")
                out(f"[{t.nelems}]")
                return
            elif k == Kind.FUNC_PROTO:
                # GCC's volatile on noreturn function pointers: dropped
                self.drop_mods(decls)
                if decls:
                    out(" (")
                    self.emit_type_chain(decls, fname, lvl)
                    out(")")
                else:
                    self.emit_name(fname, last_was_ptr)
                out("(")
                params = t.params
                # no parameters, or clang's single void parameter: (void)
                if not params or (len(params) == 1 and params[0].type_id == 0):
                    out("void)")
                    return
                last = len(params) - 1
                for i, p in enumerate(params):
                    if i:
                        out(", ")
                    if i == last and p.type_id == 0:  # varargs
                        out("...")
                        break
                    self.emit_type_decl(p.type_id, p.name, lvl)
                out(")")
                return
            else:
                return  # libbpf: "unexpected type in decl chain"
            last_was_ptr = k == Kind.PTR
        self.emit_name(fname, last_was_ptr)


def format_c(btf: BTF) -> str:
    """``bpftool btf dump file X format c`` output: every type of ``btf`` as a C header.

    Like bpftool v7.1, types are visited from id 1, so a split BTF's dump
    includes its base.  Raises :class:`~pybpf.errors.BTFError` for BTF that
    cannot be written as C (an unsatisfiable type cycle, a reference past the
    last type).
    """
    try:
        d = _CDump(btf)
        d.out.append(_HEADER)
        for type_id in range(1, d.n):
            d.dump_type(type_id)
        d.out.append(_FOOTER)
    except RecursionError:   # the walks are bounded (_MAX_NESTING): only a caller already deep in its stack
        raise BTFError(f"{btf.source}: type references nest too deeply to dump as C") from None
    return "".join(d.out)
