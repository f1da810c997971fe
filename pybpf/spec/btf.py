"""BTF: the BPF Type Format, parsed from an ELF ``.BTF`` section or a kernel blob.

The format is described in the kernel's Documentation/bpf/btf.rst.  A blob is a
header, a table of type records and a string table.  Types are numbered from 1
in record order; id 0 is ``void``.

Parsing uses precompiled :class:`struct.Struct` objects rather than
``construct``: vmlinux has ~126k types and construct measured much slower on it
(tools/bench_btf.py: ~70x slower than this index pass).  The headers are declared
as named struct fields (:class:`Header`) too: importing construct alone took
11-18 ms of every ``python -m pybpf`` process (tools/bench_load.py), more than
loading most objects.
"""

from __future__ import annotations

import bisect
import struct
from collections import namedtuple
from collections.abc import Iterator

from .._enum import IntEnum
from .._record import Record
from ..errors import BTFError

BTF_MAGIC = 0xEB9F

#: how many references (modifiers, typedefs, pointers, arrays, nested structs) a walk over BTF
#: follows before it calls the chain a loop: the kernel refuses BTF that resolves deeper
#: (kernel/bpf/btf.c MAX_RESOLVE_DEPTH), so no BTF it accepts needs more
MAX_RESOLVE_DEPTH = 32
#: the largest size a BTF type may have: the kernel refuses BTF whose sizes overflow u32
#: (kernel/bpf/btf.c btf_array_resolve "Array size overflows U32_MAX")
MAX_TYPE_SIZE = 0xFFFFFFFF


class Header(struct.Struct):
    """A fixed little-endian header declared as (name, struct format) fields;
    ``parse(buf)`` returns a named tuple of its fields."""

    def __init__(self, name: str, fields: list):
        super().__init__("<" + "".join(fmt for _, fmt in fields))
        self._tuple = namedtuple(name, [n for n, _ in fields])

    def parse(self, buf):
        return self._tuple._make(self.unpack_from(buf))


BTF_HEADER = Header("btf_header", [  # struct btf_header, include/uapi/linux/btf.h
    ("magic", "H"),
    ("version", "B"),
    ("flags", "B"),
    ("hdr_len", "I"),
    ("type_off", "I"),
    ("type_len", "I"),
    ("str_off", "I"),
    ("str_len", "I"),
])
BTF_HEADER_SIZE = BTF_HEADER.size


class Kind(IntEnum):
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

_U32 = struct.Struct("<I")
_SECINFO = struct.Struct("<III")


class Member(Record):
    """A STRUCT/UNION member. ``bit_offset`` from the start of the struct; ``bitfield_size`` 0 unless a bitfield."""

    _fields = ("name", "type_id", "bit_offset", "bitfield_size")

    def __init__(self, name: str, type_id: int, bit_offset: int, bitfield_size: int = 0):
        self.name = name
        self.type_id = type_id
        self.bit_offset = bit_offset
        self.bitfield_size = bitfield_size

    @property
    def offset(self) -> int:
        """Byte offset of the member (bit offset // 8)."""
        return self.bit_offset // 8


class Param(Record):
    _fields = ("name", "type_id")

    def __init__(self, name: str, type_id: int):
        self.name = name
        self.type_id = type_id


class EnumValue(Record):
    _fields = ("name", "value")

    def __init__(self, name: str, value: int):
        self.name = name
        self.value = value


class VarSecinfo(Record):
    """One variable of a DATASEC: the VAR's type id, its offset and size in the section."""

    _fields = ("type_id", "offset", "size")

    def __init__(self, type_id: int, offset: int, size: int):
        self.type_id = type_id
        self.offset = offset
        self.size = size


class Type(Record):
    """One BTF type record.

    Common fields: ``id``, ``kind``, ``name`` ("" when anonymous), ``kind_flag``,
    ``vlen`` and ``size_or_type`` (the raw third word).  Kind-specific data lives
    in the optional fields below; ``record_offset`` is where the record starts in
    the type section (used to patch a blob in place).
    """

    _fields = ("id", "kind", "name", "kind_flag", "vlen", "size_or_type", "record_offset", "encoding",
               "int_offset", "bits", "elem_type", "index_type", "nelems", "members", "values", "params",
               "linkage", "secinfos", "component_idx")

    def __init__(self, id: int, kind: Kind, name: str, kind_flag: bool, vlen: int, size_or_type: int,
                 record_offset: int = 0, encoding: int = 0, int_offset: int = 0, bits: int = 0,
                 elem_type: int = 0, index_type: int = 0, nelems: int = 0, members: list | None = None,
                 values: list | None = None, params: list | None = None, linkage: int = 0,
                 secinfos: list | None = None, component_idx: int = -1):
        self.id = id
        self.kind = kind
        self.name = name
        self.kind_flag = kind_flag
        self.vlen = vlen
        self.size_or_type = size_or_type
        self.record_offset = record_offset
        # INT
        self.encoding = encoding
        self.int_offset = int_offset
        self.bits = bits
        # ARRAY
        self.elem_type = elem_type
        self.index_type = index_type
        self.nelems = nelems
        # STRUCT / UNION
        self.members = [] if members is None else members
        # ENUM / ENUM64
        self.values = [] if values is None else values
        # FUNC_PROTO
        self.params = [] if params is None else params
        # VAR: linkage; FUNC: linkage is the vlen
        self.linkage = linkage
        # DATASEC
        self.secinfos = [] if secinfos is None else secinfos
        # DECL_TAG
        self.component_idx = component_idx

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


# words (u32) that follow the 12-byte common record, per kind: fixed part + per-vlen part
_EXTRA_FIXED = {Kind.INT: 1, Kind.ARRAY: 3, Kind.VAR: 1, Kind.DECL_TAG: 1}
_EXTRA_PER_VLEN = {Kind.STRUCT: 3, Kind.UNION: 3, Kind.ENUM: 2, Kind.ENUM64: 3, Kind.FUNC_PROTO: 2,
                   Kind.DATASEC: 3}


def _record_words() -> list:
    """For each kind number 0..31: (fixed extra words, extra words per vlen item), or None if unknown."""
    table = [None] * 32
    for k in Kind:
        if k == Kind.UNKN:
            continue
        table[k] = (3 + _EXTRA_FIXED.get(k, 0), _EXTRA_PER_VLEN.get(k, 0))
    return table


_RECORD_WORDS = _record_words()

# BTF.validate, per kind number: (words of the record holding a type id, words per vlen
# item, the item's name word (-1: none), the item's type id word (-1: none)); None: a name only
_VALIDATE: list = [None] * 32
for _k in (Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.FUNC, Kind.VAR,
           Kind.DECL_TAG, Kind.TYPE_TAG):
    _VALIDATE[_k] = ((2,), 0, -1, -1)
_VALIDATE[Kind.ARRAY] = ((3, 4), 0, -1, -1)            # elem_type, index_type
_VALIDATE[Kind.FUNC_PROTO] = ((2,), 2, 0, 1)           # return type; params: name, type
_VALIDATE[Kind.STRUCT] = _VALIDATE[Kind.UNION] = ((), 3, 0, 1)   # members: name, type, offset
_VALIDATE[Kind.ENUM] = ((), 2, 0, -1)                  # values: name, value
_VALIDATE[Kind.ENUM64] = ((), 3, 0, -1)                # values: name, lo32, hi32
_VALIDATE[Kind.DATASEC] = ((), 3, -1, 0)               # secinfos: type, offset, size
del _k


class _LazyTypes:
    """``btf.types``: a read-only sequence indexed by type id (0 is None = void),
    decoding each record the first time it is asked for."""

    __slots__ = ("_btf",)

    def __init__(self, btf: BTF):
        self._btf = btf

    def __len__(self) -> int:
        return len(self._btf._offsets) + 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i == 0:
            return None
        return self._btf[i]

    def __iter__(self):
        yield None
        for i in range(1, len(self)):
            yield self._btf[i]


class BTF:
    """A parsed BTF blob.

    ``btf[type_id]`` is a :class:`Type`; ``btf.types[i]`` the same as a sequence
    (``types[0]`` is None, standing for void).  Opening a blob only indexes
    where each record starts (one pass over u32 words: fast enough for vmlinux's
    126k types); records are decoded on first access and kept.  ``raw`` keeps
    the bytes; :meth:`to_bytes` returns the blob with any fix-ups applied.

    ``base`` is the BTF a split BTF (a kernel module's) builds on: type ids
    and string offsets continue after the base's.
    """

    def __init__(self, raw: bytes, *, source: str = "BTF", base: BTF | None = None,
                 validate: bool = False, index=None, copy: bool = True):
        self.source = source
        self.base = base
        # copy=False: ``raw`` is a bytearray given away to this BTF (fix-ups patch it in place),
        # or a read-only memoryview (mapped vmlinux BTF, pybpf.kernel.btf), kept as it is
        self.raw = raw if not copy and isinstance(raw, (bytearray, memoryview)) else bytearray(raw)
        self._first_id = len(base.types) if base is not None else 1
        self._parse_header()
        self._cache: dict[int, Type] = {}
        self._by_name: dict[str, list[int]] | None = None
        self._ptr_size: int | None = None
        self._index(index)
        if validate:
            self.validate()

    @property
    def types(self) -> _LazyTypes:
        """The types as a sequence indexed by type id (``types[0]`` is None: void)."""
        # made on each access, not stored: a stored view would refer back to this BTF and the
        # cycle would leave a dropped BTF (megabytes for vmlinux) to the cyclic collector
        return _LazyTypes(self)

    @classmethod
    def load(cls, path: str = "/sys/kernel/btf/vmlinux", **kwargs) -> BTF:
        """Parse a BTF file (e.g. the running kernel's ``/sys/kernel/btf/vmlinux``)."""
        with open(path, "rb") as f:
            return cls(f.read(), source=path, **kwargs)

    def __getstate__(self):
        # the u32 view on raw cannot be pickled and is rebuilt from raw; decoded types and
        # strings are left out (they are decoded again on demand, faster than unpickled)
        state = self.__dict__.copy()
        del state["_words"], state["_cache"], state["_str_cache"]
        if isinstance(self.raw, memoryview):
            state["raw"] = bytearray(self.raw)     # a mapping is not pickled: its bytes are
            state["_strings"] = self.string_bytes()
        state.pop("_typed_factory", None)      # ctypes types (spec/typed.py): made again on use
        state.pop("_content_key", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._words = memoryview(self.raw)[self.type_off:self.type_off + self.type_len].cast("I")
        self._cache = {}
        self._str_cache = {}

    # -- parsing -----------------------------------------------------------------

    def _fail(self, what: str) -> BTFError:
        return BTFError(f"{self.source}: corrupt BTF: {what}")

    def too_deep(self, type_id: int, what: str = "its type references", limit: int = MAX_RESOLVE_DEPTH) -> BTFError:
        """The error for a walk from ``type_id`` that went past ``limit`` (:data:`MAX_RESOLVE_DEPTH`)
        references: a loop (a type that contains or refers to itself) or absurd nesting."""
        return self._fail(f"{what} from type [{type_id}] go deeper than {limit} levels or "
                          f"loop back (the kernel refuses such BTF: MAX_RESOLVE_DEPTH); rebuild the object "
                          f"or fix the type")

    def _parse_header(self) -> None:
        raw = self.raw
        if len(raw) < BTF_HEADER_SIZE:
            raise self._fail(f"{len(raw)} bytes is shorter than the 24-byte header")
        hdr = BTF_HEADER.parse(raw)
        if hdr.magic != BTF_MAGIC:
            if hdr.magic == 0x9FEB:
                raise self._fail("big-endian BTF is not supported")
            raise self._fail(f"bad magic 0x{hdr.magic:04x} (expected 0xeb9f)")
        if hdr.version != 1:
            raise self._fail(f"unsupported version {hdr.version}")
        if hdr.flags != 0:
            raise self._fail(f"unsupported flags 0x{hdr.flags:x}")
        if hdr.hdr_len < BTF_HEADER_SIZE or hdr.hdr_len > len(raw):
            raise self._fail(f"header length {hdr.hdr_len} out of range")
        base = hdr.hdr_len
        for what, off, ln in (("type", hdr.type_off, hdr.type_len), ("string", hdr.str_off, hdr.str_len)):
            if base + off + ln > len(raw):
                raise self._fail(
                    f"{what} section [{off}, {off + ln}) runs past the end of the {len(raw) - base}-byte blob")
        if hdr.type_off % 4 or hdr.type_len % 4:
            raise self._fail("type section is not 4-byte aligned")
        self.hdr_len = base
        self.type_off = base + hdr.type_off
        self.type_len = hdr.type_len
        self.str_off = base + hdr.str_off
        self.str_len = hdr.str_len
        strings = memoryview(raw)[self.str_off:self.str_off + self.str_len]
        if not isinstance(raw, memoryview):
            strings = bytes(strings)        # one copy, not two
        # else mapped vmlinux BTF: its 2.5 MB of strings are read in place (string()), and
        # copied only for a search over all of them (string_bytes())
        if strings and strings[-1] != 0:
            raise self._fail("string section must end with a NUL byte")
        if self.base is None and strings and strings[0] != 0:
            raise self._fail("string section must start with a NUL byte")
        self._strings = strings
        self._str_base = self.base._str_end if self.base is not None else 0
        self._str_end = self._str_base + len(strings)
        self._str_cache: dict[int, str] = {}

    def _index(self, known=None) -> None:
        """Find where each record starts: one pass over the type section as u32 words
        (or ``known``, an index cached for the same content, checked at its end)."""
        # a view on self.raw (no copy): fix-ups patched into raw are seen by later decodes
        words = memoryview(self.raw)[self.type_off:self.type_off + self.type_len].cast("I")
        self._words = words
        table = _RECORD_WORDS
        if known is not None and len(known):
            last = known[-1]
            if last + 1 < len(words):
                rec = table[(words[last + 1] >> 24) & 0x1F]
                if rec is not None and last + rec[0] + rec[1] * (words[last + 1] & 0xFFFF) == len(words):
                    self._offsets = known
                    return
        offsets = []
        append = offsets.append
        w = 0
        n = len(words)
        try:
            while w < n:
                append(w)
                info = words[w + 1]
                fixed, per = table[(info >> 24) & 0x1F]
                w += fixed + per * (info & 0xFFFF)
        except TypeError:
            kind = (words[w + 1] >> 24) & 0x1F
            raise self._fail(f"type [{self._first_id + len(offsets) - 1}] has unknown kind {kind}") from None
        except IndexError:
            raise self._fail(f"type [{self._first_id + len(offsets) - 1}] record is truncated") from None
        if w != n:
            raise self._fail(f"type [{self._first_id + len(offsets) - 1}] record runs past the end of the "
                             f"type section")
        self._offsets = offsets

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the string section (split BTF: base first)."""
        if offset < self._str_base:
            return self.base.string(offset)  # type: ignore[union-attr]
        s = self._str_cache.get(offset)
        if s is None:
            local = offset - self._str_base
            strings = self._strings
            if local >= len(strings):
                raise self._fail(f"string offset {offset} is outside the string section")
            if type(strings) is bytes:
                s = strings[local:strings.index(b"\0", local)].decode("utf-8", "replace")
            else:                           # a mapping: a window, widened until it holds the NUL
                width = 64
                while True:
                    chunk = bytes(strings[local:local + width])
                    end = chunk.find(b"\0")
                    if end >= 0:
                        break
                    width *= 4              # the section ends with a NUL: this ends
                s = chunk[:end].decode("utf-8", "replace")
            self._str_cache[offset] = s
        return s

    def string_bytes(self) -> bytes:
        """This BTF's own string section as bytes (for searches over all of it)."""
        if type(self._strings) is not bytes:
            self._strings = bytes(self._strings)    # a mapping: copied once, on the first search
        return self._strings

    def _decode(self, type_id: int) -> Type:
        words = self._words
        w = self._offsets[type_id - self._first_id]
        name_off, info, size_type = words[w], words[w + 1], words[w + 2]
        kind = Kind((info >> 24) & 0x1F)
        if kind == Kind.UNKN:
            raise self._fail(f"type [{type_id}] has kind 0 (UNKN)")
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        string = self.string
        t = Type(type_id, kind, string(name_off), kflag, vlen, size_type, w * 4)
        p = w + 3
        if kind == Kind.INT:
            v = words[p]
            t.encoding = (v >> 24) & 0x0F
            t.int_offset = (v >> 16) & 0xFF
            t.bits = v & 0xFF
        elif kind == Kind.ARRAY:
            t.elem_type, t.index_type, t.nelems = words[p], words[p + 1], words[p + 2]
        elif kind in (Kind.STRUCT, Kind.UNION):
            if kflag:
                t.members = [Member(string(words[i]), words[i + 1], words[i + 2] & 0xFFFFFF, words[i + 2] >> 24)
                             for i in range(p, p + 3 * vlen, 3)]
            else:
                t.members = [Member(string(words[i]), words[i + 1], words[i + 2], 0)
                             for i in range(p, p + 3 * vlen, 3)]
        elif kind == Kind.ENUM:
            vals = []
            for i in range(p, p + 2 * vlen, 2):
                v = words[i + 1]
                if kflag and v >= 1 << 31:
                    v -= 1 << 32
                vals.append(EnumValue(string(words[i]), v))
            t.values = vals
        elif kind == Kind.ENUM64:
            vals = []
            for i in range(p, p + 3 * vlen, 3):
                v = (words[i + 2] << 32) | words[i + 1]
                if kflag and v >= 1 << 63:
                    v -= 1 << 64
                vals.append(EnumValue(string(words[i]), v))
            t.values = vals
        elif kind == Kind.FUNC_PROTO:
            t.params = [Param(string(words[i]), words[i + 1]) for i in range(p, p + 2 * vlen, 2)]
        elif kind == Kind.VAR:
            t.linkage = words[p]
        elif kind == Kind.DATASEC:
            t.secinfos = [VarSecinfo(words[i], words[i + 1], words[i + 2]) for i in range(p, p + 3 * vlen, 3)]
        elif kind == Kind.DECL_TAG:
            v = words[p]
            t.component_idx = v - (1 << 32) if v >= 1 << 31 else v
        elif kind == Kind.FUNC:
            t.linkage = vlen
        return t

    def validate(self) -> None:
        """Check every type's strings and type references are in range (done for object BTF):
        what decoding every type would find, and the same errors, straight from the record
        words (a new object's parse spent half its time decoding types nothing asked for).
        Records are still decoded on first access."""
        n = len(self._offsets) + 1          # len(self.types): ids from n on are out of range
        words, str_end, first = self._words, self._str_end, self._first_id
        table = _VALIDATE
        for i, w in enumerate(self._offsets):
            info = words[w + 1]
            how = table[(info >> 24) & 0x1F]
            if how is None:                 # INT, FWD, FLOAT: only the name (UNKN: refused)
                if words[w] >= str_end or not info & 0x1F000000:
                    self._decode(first + i)             # raises the decoder's error
                continue
            refs, step, name_at, ref_at = how
            start, end = w + 3, w + 3 + step * (info & 0xFFFF)
            # the strings first, as the decoder reads them: the name, then the items'
            if words[w] >= str_end or (name_at >= 0 and any(
                    words[j] >= str_end for j in range(start + name_at, end, step))):
                self._decode(first + i)
            for j in refs:
                if words[w + j] >= n:
                    self._bad_ref(first + i, words[w + j], n)
            if ref_at >= 0:
                for j in range(start + ref_at, end, step):
                    if words[j] >= n:
                        self._bad_ref(first + i, words[j], n)

    def _bad_ref(self, type_id: int, ref: int, n: int):
        t = self[type_id]
        raise self._fail(f"type [{t.id}] {t.kind.name} '{t.name}' refers to type id {ref}, "
                         f"but there are only {n - 1} types")

    # -- lookup --------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types (in a split BTF: its own types only)."""
        return len(self._offsets)

    def __iter__(self) -> Iterator[Type]:
        """This BTF's own types, in id order (a split BTF does not repeat its base)."""
        for i in range(self._first_id, self._first_id + len(self._offsets)):
            yield self[i]

    def __getitem__(self, type_id: int) -> Type:
        t = self._cache.get(type_id)
        if t is not None:
            return t
        if type_id < self._first_id:
            if self.base is not None and type_id > 0:
                return self.base[type_id]
            raise BTFError(f"{self.source}: no BTF type with id {type_id}")
        if type_id >= self._first_id + len(self._offsets):
            raise BTFError(f"{self.source}: no BTF type with id {type_id}")
        t = self._decode(type_id)
        self._cache[type_id] = t
        return t

    @property
    def first_id(self) -> int:
        """The id of this BTF's first own type (1, or after the base for split BTF)."""
        return self._first_id

    def by_name(self, name: str, kind: Kind | None = None) -> list[Type]:
        """All types called ``name`` (optionally of one kind)."""
        if self._by_name is None:
            idx: dict[str, list[int]] = {}
            words, string, first = self._words, self.string, self._first_id
            for i, w in enumerate(self._offsets):
                name_off = words[w]
                if name_off:
                    idx.setdefault(string(name_off), []).append(first + i)
            self._by_name = idx
        found = self.base.by_name(name, kind) if self.base is not None else []
        return found + [self[i] for i in self._by_name.get(name, ()) if kind is None or self[i].kind == kind]

    def first_own(self, name: str, kind: Kind) -> Type | None:
        """The first of this BTF's own types (a split BTF: not its base's) called ``name``
        of ``kind``, or None: libbpf's ``btf__find_by_name_kind_own``.

        Without decoding any other name: the name is found in the string section (for a
        split BTF also in its base's, whose strings its types may name), then its offset
        among the record starts of the type section, each a C-speed ``find`` (~1-3 ms on
        vmlinux, where :meth:`by_name`'s first call decodes every name, ~250 ms)."""
        if self._by_name is not None:
            for i in self._by_name.get(name, ()):
                if self[i].kind == kind:
                    return self[i]
            return None
        offsets = self._string_offsets(name)
        if self.base is not None:
            offsets += self.base._string_offsets(name)
        words, records = self._words, self._offsets
        best = None
        for so in offsets:
            for k in self.records_named(so):
                if (words[records[k] + 1] >> 24) & 0x1F == kind:
                    if best is None or k < best:
                        best = k
                    break           # records come in id order: the first hit is this name's first
        return None if best is None else self[self._first_id + best]

    def records_named(self, name_off: int) -> Iterator[int]:
        """The positions (in id order, 0 for :attr:`first_id`) of this BTF's own records whose
        name is at string offset ``name_off``: a C-speed scan of the type section for the u32,
        keeping the hits where a record starts (every byte offset is tried: a hit one to three
        bytes before an aligned one must not hide it)."""
        raw, start, end = self.raw, self.type_off, self.type_off + self.type_len
        needle = struct.pack("<I", name_off)
        if isinstance(raw, memoryview):         # mapped vmlinux BTF: no find(); re scans buffers
            import re
            search = re.compile(re.escape(needle)).search

            def find(at: int) -> int:
                m = search(raw, at, end)
                return m.start() if m else -1
        else:
            def find(at: int) -> int:
                return raw.find(needle, at, end)
        records = self._offsets
        pos = find(start)
        while pos >= 0:
            rel = pos - start
            if not rel & 3:
                w = rel >> 2
                k = bisect.bisect_left(records, w)
                if k < len(records) and records[k] == w:
                    yield k
            pos = find(pos + 1)

    def _string_offsets(self, name: str) -> list:
        """Absolute offsets in this BTF's own string section where ``name`` is stored whole
        (a string, or the tail of a longer one, which a name offset may point at too)."""
        enc = name.encode()
        if not enc or b"\0" in enc:
            return []
        needle = enc + b"\0"
        strings, found = self.string_bytes(), []
        pos = strings.find(needle)
        while pos >= 0:
            found.append(self._str_base + pos)
            pos = strings.find(needle, pos + 1)
        return found

    def by_kind(self, kind: Kind) -> list[Type]:
        """This BTF's own types of one kind (decodes only records of that kind)."""
        words, first = self._words, self._first_id
        return [self[first + i] for i, w in enumerate(self._offsets) if (words[w + 1] >> 24) & 0x1F == kind]

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
        start = type_id
        for _ in range(MAX_RESOLVE_DEPTH + 1):
            if not type_id:
                return type_id
            t = self[type_id]
            if t.kind not in MODIFIERS and t.kind != Kind.TYPEDEF:
                return type_id
            type_id = t.size_or_type
        raise self.too_deep(start, "modifiers and typedefs")

    def resolve(self, type_id: int) -> Type | None:
        """The type behind modifiers and typedefs (None for void)."""
        type_id = self.skip_mods(type_id)
        return self[type_id] if type_id else None

    def size_of(self, type_id: int) -> int:
        """Byte size of a type, as libbpf's btf__resolve_size computes it.  BTFError for a
        loop, a type without a size, or a size past u32 (the kernel refuses such BTF)."""
        start = type_id
        nelems = 1
        for _ in range(MAX_RESOLVE_DEPTH + 1):
            if type_id == 0:
                raise BTFError(f"{self.source}: void has no size")
            t = self[type_id]
            k = t.kind
            if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.FLOAT):
                size = nelems * t.size_or_type
            elif k == Kind.PTR:
                size = nelems * self.pointer_size
            elif k in MODIFIERS or k in (Kind.TYPEDEF, Kind.VAR, Kind.DECL_TAG):
                type_id = t.size_or_type
                continue
            elif k == Kind.ARRAY:
                nelems *= t.nelems
                type_id = t.elem_type
                continue
            else:
                raise BTFError(f"{self.source}: type [{t.id}] {k.name} has no size")
            if size > MAX_TYPE_SIZE:
                raise self._fail(f"type [{start}] is {size} bytes, more than BTF's 32-bit sizes allow")
            return size
        raise self.too_deep(start)

    @property
    def pointer_size(self) -> int:
        """Pointer size: the size of the first 'long' INT, as libbpf determines it (default 8)."""
        if self.base is not None:
            return self.base.pointer_size
        if self._ptr_size is None:
            longs = {"long", "long int", "int long", "unsigned long", "long unsigned", "unsigned long int",
                     "unsigned int long", "long unsigned int", "long int unsigned", "int unsigned long",
                     "int long unsigned"}
            self._ptr_size = 8
            # the first 'long' INT in id order decides; only INT records are decoded
            for t in self.by_kind(Kind.INT):
                if t.name in longs and t.size_or_type in (4, 8):
                    self._ptr_size = t.size_or_type
                    break
        return self._ptr_size

    def type_name(self, type_id: int) -> str:
        """A short C-like name for a type, for messages: ``struct event``, ``int``, ``char[16]``, ``void *``.
        A chain deeper than :data:`MAX_RESOLVE_DEPTH` (a loop) ends in ``...``."""
        prefix, suffix = "", ""
        for _ in range(MAX_RESOLVE_DEPTH + 1):
            if type_id == 0:
                return f"{prefix}void{suffix}"
            t = self[type_id]
            k = t.kind
            if k in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64):
                word = {Kind.STRUCT: "struct", Kind.UNION: "union"}.get(k, "enum")
                return f"{prefix}{word} {t.name or '(anon)'}{suffix}"
            if k == Kind.FWD:
                return f"{prefix}{'union' if t.kind_flag else 'struct'} {t.name}{suffix}"
            if k == Kind.PTR:
                suffix = " *" + suffix
                type_id = t.size_or_type
            elif k == Kind.ARRAY:
                suffix = f"[{t.nelems}]" + suffix
                type_id = t.elem_type
            elif k in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
                prefix += f"{k.name.lower()} "
                type_id = t.size_or_type
            elif k == Kind.TYPE_TAG:
                type_id = t.size_or_type
            elif k == Kind.FUNC_PROTO:
                return f"{prefix}function{suffix}"
            else:
                return f"{prefix}{t.name or f'({k.name.lower()})'}{suffix}"
        return f"{prefix}...{suffix}"

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
