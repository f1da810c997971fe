"""BTF: the BPF Type Format, parsed from an ELF ``.BTF`` section or a kernel blob.

The format is described in the kernel's Documentation/bpf/btf.rst.  A blob is a
header, a table of type records and a string table.  Types are numbered from 1
in record order; id 0 is ``void``.

Parsing uses precompiled :class:`struct.Struct` objects rather than
``construct``: vmlinux has ~126k types and construct measured ~50x slower on it
(see tools/ benchmarks).  The header, which is parsed once, is declared with
construct because it reads best that way.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Iterator, Optional

import construct as cs

from ..errors import BTFError

BTF_MAGIC = 0xEB9F

BTF_HEADER = cs.Struct(
    "magic" / cs.Int16ul,
    "version" / cs.Int8ul,
    "flags" / cs.Int8ul,
    "hdr_len" / cs.Int32ul,
    "type_off" / cs.Int32ul,
    "type_len" / cs.Int32ul,
    "str_off" / cs.Int32ul,
    "str_len" / cs.Int32ul,
)
BTF_HEADER_SIZE = 24


class Kind(enum.IntEnum):
    """BTF_KIND_* values."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# INT encoding bits
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

# FUNC / VAR linkage
LINKAGE_STATIC = 0
LINKAGE_GLOBAL = 1
LINKAGE_EXTERN = 2

MODIFIERS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})

_REC = struct.Struct("<III")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_ARRAY = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")
_ENUM64 = struct.Struct("<III")
_PARAM = struct.Struct("<II")
_SECINFO = struct.Struct("<III")


@dataclass
class Member:
    """A STRUCT/UNION member. ``bit_offset`` from the start of the struct; ``bitfield_size`` 0 unless a bitfield."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0

    @property
    def offset(self) -> int:
        """Byte offset of the member (bit offset // 8)."""
        return self.bit_offset // 8


@dataclass
class Param:
    name: str
    type_id: int


@dataclass
class EnumValue:
    name: str
    value: int


@dataclass
class VarSecinfo:
    """One variable of a DATASEC: the VAR's type id, its offset and size in the section."""

    type_id: int
    offset: int
    size: int


@dataclass
class Type:
    """One BTF type record.

    Common fields: ``id``, ``kind``, ``name`` ("" when anonymous), ``kind_flag``,
    ``vlen`` and ``size_or_type`` (the raw third word).  Kind-specific data lives
    in the optional fields below; ``record_offset`` is where the record starts in
    the type section (used to patch a blob in place).
    """

    id: int
    kind: Kind
    name: str
    kind_flag: bool
    vlen: int
    size_or_type: int
    record_offset: int = 0
    # INT
    encoding: int = 0
    int_offset: int = 0
    bits: int = 0
    # ARRAY
    elem_type: int = 0
    index_type: int = 0
    nelems: int = 0
    # STRUCT / UNION
    members: list = field(default_factory=list)
    # ENUM / ENUM64
    values: list = field(default_factory=list)
    # FUNC_PROTO
    params: list = field(default_factory=list)
    # VAR: linkage; FUNC: linkage is the vlen
    linkage: int = 0
    # DATASEC
    secinfos: list = field(default_factory=list)
    # DECL_TAG
    component_idx: int = -1

    @property
    def size(self) -> int:
        """The raw size field (INT, STRUCT, UNION, ENUM, DATASEC, FLOAT)."""
        return self.size_or_type

    @property
    def type_id(self) -> int:
        """The referenced type (PTR, TYPEDEF, modifiers, FUNC, VAR, DECL_TAG, TYPE_TAG)."""
        return self.size_or_type

    @property
    def signed(self) -> bool:
        if self.kind == Kind.INT:
            return bool(self.encoding & INT_SIGNED)
        if self.kind in (Kind.ENUM, Kind.ENUM64):
            return self.kind_flag
        return False

    def __repr__(self) -> str:
        return f"<BTF [{self.id}] {self.kind.name} {self.name or '(anon)'!r}>"


class BTF:
    """A parsed BTF blob.

    ``types[i]`` is the type with id ``i`` (``types[0]`` is None, standing for
    void).  ``raw`` keeps the original bytes; :meth:`to_bytes` returns the blob
    with any fix-ups applied.
    """

    def __init__(self, raw: bytes, *, source: str = "BTF"):
        self.source = source
        self.raw = bytearray(raw)
        self._parse_header()
        self.types: list[Optional[Type]] = [None]
        self._by_name: Optional[dict[str, list[int]]] = None
        self._parse_types()

    # -- parsing -----------------------------------------------------------------

    def _fail(self, what: str) -> BTFError:
        return BTFError(f"{self.source}: corrupt BTF: {what}")

    def _parse_header(self) -> None:
        raw = self.raw
        if len(raw) < BTF_HEADER_SIZE:
            raise self._fail(f"{len(raw)} bytes is shorter than the 24-byte header")
        hdr = BTF_HEADER.parse(bytes(raw[:BTF_HEADER_SIZE]))
        if hdr.magic != BTF_MAGIC:
            if hdr.magic == 0x9FEB:
                raise self._fail("big-endian BTF is not supported")
            raise self._fail(f"bad magic 0x{hdr.magic:04x} (expected 0xeb9f)")
        if hdr.version != 1:
            raise self._fail(f"unsupported version {hdr.version}")
        if hdr.hdr_len < BTF_HEADER_SIZE or hdr.hdr_len > len(raw):
            raise self._fail(f"header length {hdr.hdr_len} out of range")
        base = hdr.hdr_len
        for what, off, ln in (("type", hdr.type_off, hdr.type_len), ("string", hdr.str_off, hdr.str_len)):
            if base + off + ln > len(raw):
                raise self._fail(
                    f"{what} section [{off}, {off + ln}) runs past the end of the {len(raw) - base}-byte blob")
        if hdr.type_off % 4:
            raise self._fail("type section is not 4-byte aligned")
        self.hdr_len = base
        self.type_off = base + hdr.type_off
        self.type_len = hdr.type_len
        self.str_off = base + hdr.str_off
        self.str_len = hdr.str_len
        strings = bytes(raw[self.str_off:self.str_off + self.str_len])
        if strings and (strings[0] != 0 or strings[-1] != 0):
            raise self._fail("string section must start and end with a NUL byte")
        self._strings = strings
        self._str_cache: dict[int, str] = {}

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the string section."""
        s = self._str_cache.get(offset)
        if s is None:
            if offset >= len(self._strings):
                raise self._fail(f"string offset {offset} is outside the {len(self._strings)}-byte string section")
            end = self._strings.index(b"\0", offset)
            s = self._strings[offset:end].decode("utf-8", "replace")
            self._str_cache[offset] = s
        return s

    def _parse_types(self) -> None:
        raw = bytes(self.raw)
        pos = self.type_off
        end = self.type_off + self.type_len
        string = self.string
        types = self.types
        while pos < end:
            if pos + 12 > end:
                raise self._fail(f"type record at offset {pos - self.type_off} is truncated")
            name_off, info, size_type = _REC.unpack_from(raw, pos)
            kind_no = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                kind = Kind(kind_no)
            except ValueError:
                raise self._fail(f"type [{len(types)}] has unknown kind {kind_no}") from None
            if kind == Kind.UNKN:
                raise self._fail(f"type [{len(types)}] has kind 0 (UNKN)")
            t = Type(len(types), kind, string(name_off), bool(info >> 31), vlen, size_type, pos - self.type_off)
            rec_start = pos
            pos += 12
            try:
                if kind == Kind.INT:
                    (v,) = _U32.unpack_from(raw, pos)
                    t.encoding = (v >> 24) & 0x0F
                    t.int_offset = (v >> 16) & 0xFF
                    t.bits = v & 0xFF
                    pos += 4
                elif kind == Kind.ARRAY:
                    t.elem_type, t.index_type, t.nelems = _ARRAY.unpack_from(raw, pos)
                    pos += 12
                elif kind in (Kind.STRUCT, Kind.UNION):
                    members = []
                    for i in range(vlen):
                        m_name, m_type, m_off = _MEMBER.unpack_from(raw, pos + 12 * i)
                        if t.kind_flag:
                            members.append(Member(string(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                        else:
                            members.append(Member(string(m_name), m_type, m_off, 0))
                    t.members = members
                    pos += 12 * vlen
                elif kind == Kind.ENUM:
                    vals = []
                    for i in range(vlen):
                        v_name, v_val = _ENUM.unpack_from(raw, pos + 8 * i)
                        vals.append(EnumValue(string(v_name), v_val if t.kind_flag else v_val & 0xFFFFFFFF))
                    t.values = vals
                    pos += 8 * vlen
                elif kind == Kind.ENUM64:
                    vals = []
                    for i in range(vlen):
                        v_name, lo, hi = _ENUM64.unpack_from(raw, pos + 12 * i)
                        v = (hi << 32) | lo
                        if t.kind_flag and v >= 1 << 63:
                            v -= 1 << 64
                        vals.append(EnumValue(string(v_name), v))
                    t.values = vals
                    pos += 12 * vlen
                elif kind == Kind.FUNC_PROTO:
                    t.params = [Param(string(n), ty) for n, ty in
                                (_PARAM.unpack_from(raw, pos + 8 * i) for i in range(vlen))]
                    pos += 8 * vlen
                elif kind == Kind.VAR:
                    (t.linkage,) = _U32.unpack_from(raw, pos)
                    pos += 4
                elif kind == Kind.DATASEC:
                    t.secinfos = [VarSecinfo(*_SECINFO.unpack_from(raw, pos + 12 * i)) for i in range(vlen)]
                    pos += 12 * vlen
                elif kind == Kind.DECL_TAG:
                    (t.component_idx,) = _I32.unpack_from(raw, pos)
                    pos += 4
                elif kind == Kind.FUNC:
                    t.linkage = vlen
            except struct.error:
                raise self._fail(f"type [{t.id}] {kind.name} record at offset {rec_start - self.type_off} "
                                 f"is truncated") from None
            if pos > end:
                raise self._fail(f"type [{t.id}] {kind.name} record runs past the end of the type section")
            types.append(t)
        self._check_references()

    def _check_references(self) -> None:
        n = len(self.types)
        for t in self.types[1:]:
            refs = []
            if t.kind in (Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.FUNC,
                          Kind.VAR, Kind.DECL_TAG, Kind.TYPE_TAG, Kind.FUNC_PROTO):
                refs.append(t.size_or_type)
            elif t.kind == Kind.ARRAY:
                refs += [t.elem_type, t.index_type]
            refs += [m.type_id for m in t.members]
            refs += [p.type_id for p in t.params]
            refs += [s.type_id for s in t.secinfos]
            for r in refs:
                if r >= n:
                    raise self._fail(f"type [{t.id}] {t.kind.name} '{t.name}' refers to type id {r}, "
                                     f"but there are only {n - 1} types")

    # -- lookup --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.types) - 1

    def __iter__(self) -> Iterator[Type]:
        return iter(self.types[1:])

    def __getitem__(self, type_id: int) -> Type:
        if type_id <= 0 or type_id >= len(self.types):
            raise BTFError(f"{self.source}: no BTF type with id {type_id}")
        return self.types[type_id]  # type: ignore[return-value]

    def by_name(self, name: str, kind: Optional[Kind] = None) -> list[Type]:
        """All types called ``name`` (optionally of one kind)."""
        if self._by_name is None:
            idx: dict[str, list[int]] = {}
            for t in self.types[1:]:
                if t.name:
                    idx.setdefault(t.name, []).append(t.id)
            self._by_name = idx
        return [self.types[i] for i in self._by_name.get(name, ()) if kind is None or self.types[i].kind == kind]

    def find(self, spec: str) -> Type:
        """Find a type by C-like spelling: ``"struct event"``, ``"union u"``, ``"enum e"`` or a plain name."""
        words = spec.split()
        kinds: tuple = ()
        if len(words) == 2 and words[0] in ("struct", "union", "enum"):
            kinds = {"struct": (Kind.STRUCT,), "union": (Kind.UNION,), "enum": (Kind.ENUM, Kind.ENUM64)}[words[0]]
            name = words[1]
        else:
            name = spec.strip()
        found = [t for t in self.by_name(name) if not kinds or t.kind in kinds]
        # prefer complete definitions over forward declarations
        found.sort(key=lambda t: t.kind == Kind.FWD)
        if not found:
            raise BTFError(f"{self.source}: no type named {spec!r}")
        return found[0]

    def skip_mods(self, type_id: int) -> int:
        """Follow modifiers (const, volatile, restrict, type tags) and typedefs to the underlying type id."""
        seen = 0
        while type_id:
            t = self[type_id]
            if t.kind in MODIFIERS or t.kind == Kind.TYPEDEF:
                type_id = t.size_or_type
                seen += 1
                if seen > 64:
                    raise self._fail(f"type chain from [{type_id}] is too deep (a loop?)")
            else:
                break
        return type_id

    def resolve(self, type_id: int) -> Optional[Type]:
        """The type behind modifiers and typedefs (None for void)."""
        type_id = self.skip_mods(type_id)
        return self[type_id] if type_id else None

    def size_of(self, type_id: int) -> int:
        """Byte size of a type, as libbpf's btf__resolve_size computes it."""
        nelems = 1
        for _ in range(64):
            if type_id == 0:
                raise BTFError(f"{self.source}: void has no size")
            t = self[type_id]
            k = t.kind
            if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.FLOAT):
                return nelems * t.size_or_type
            if k == Kind.PTR:
                return nelems * self.pointer_size
            if k in MODIFIERS or k in (Kind.TYPEDEF, Kind.VAR, Kind.DECL_TAG):
                type_id = t.size_or_type
            elif k == Kind.ARRAY:
                nelems *= t.nelems
                type_id = t.elem_type
            else:
                raise BTFError(f"{self.source}: type [{t.id}] {k.name} has no size")
        raise self._fail(f"type chain from [{type_id}] is too deep (a loop?)")

    @property
    def pointer_size(self) -> int:
        """Pointer size: the size of the first 'long' INT, as libbpf determines it (default 8)."""
        longs = {"long", "long int", "int long", "unsigned long", "long unsigned", "unsigned long int",
                 "unsigned int long", "long unsigned int", "long int unsigned", "int unsigned long",
                 "int long unsigned"}
        for t in self.types[1:]:
            if t.kind == Kind.INT and t.name in longs and t.size_or_type in (4, 8):
                return t.size_or_type
        return 8

    def type_name(self, type_id: int) -> str:
        """A short C-like name for a type, for messages: ``struct event``, ``int``, ``char[16]``, ``void *``."""
        if type_id == 0:
            return "void"
        t = self[type_id]
        k = t.kind
        if k in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64):
            word = {Kind.STRUCT: "struct", Kind.UNION: "union"}.get(k, "enum")
            return f"{word} {t.name or '(anon)'}"
        if k == Kind.FWD:
            return f"{'union' if t.kind_flag else 'struct'} {t.name}"
        if k == Kind.PTR:
            return f"{self.type_name(t.size_or_type)} *"
        if k == Kind.ARRAY:
            return f"{self.type_name(t.elem_type)}[{t.nelems}]"
        if k in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
            return f"{k.name.lower()} {self.type_name(t.size_or_type)}"
        if k == Kind.TYPE_TAG:
            return self.type_name(t.size_or_type)
        if k == Kind.FUNC_PROTO:
            return "function"
        return t.name or f"({k.name.lower()})"

    # -- output ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The blob, including any fix-ups applied to it."""
        return bytes(self.raw)

    def _patch_u32(self, type_off: int, value: int) -> None:
        _U32.pack_into(self.raw, self.type_off + type_off, value)

    def set_datasec(self, t: Type, size: int, secinfos: list) -> None:
        """Rewrite a DATASEC's size and variables in the blob and the parsed type."""
        if len(secinfos) != t.vlen:
            raise BTFError("a DATASEC fix-up may not change the number of variables")
        t.size_or_type = size
        t.secinfos = list(secinfos)
        self._patch_u32(t.record_offset + 8, size)
        for i, s in enumerate(secinfos):
            _SECINFO.pack_into(self.raw, self.type_off + t.record_offset + 12 + 12 * i, s.type_id, s.offset, s.size)

    def set_linkage(self, t: Type, linkage: int) -> None:
        """Change a VAR's or FUNC's linkage in the blob and the parsed type."""
        if t.kind == Kind.VAR:
            self._patch_u32(t.record_offset + 12, linkage)
        elif t.kind == Kind.FUNC:
            info = (t.kind_flag << 31) | (t.kind << 24) | linkage
            self._patch_u32(t.record_offset + 4, info)
            t.vlen = linkage
        else:
            raise BTFError(f"type [{t.id}] {t.kind.name} has no linkage")
        t.linkage = linkage
