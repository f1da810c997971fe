"""ObjectSpec: a clang-compiled BPF object parsed into programs, maps, variables.

Nothing here touches the kernel: parsing is deterministic and testable
anywhere.  The steps follow libbpf's bpf_object__open: read the ELF sections
and symbols, parse and fix ``.BTF`` (DATASEC sizes and offsets), parse
``.BTF.ext``, collect BTF-defined maps from ``.maps``, make internal maps of
``.data*``/``.rodata*``/``.bss*``, split executable sections into functions
(programs in program sections, subprograms in ``.text``) and attach each ELF
relocation to the function it patches.
"""

from __future__ import annotations

import bisect
import io
import mmap
import os
import struct

from .._gcpause import gc_paused
from .._record import Record
from .. import _cache
from .._cache import pickle
from ..errors import BTFError, Error, ObjectError
from . import insn as I
from .btf import (BTF, INT_BOOL, INT_SIGNED, LINKAGE_EXTERN, LINKAGE_GLOBAL, LINKAGE_STATIC,
                  MAX_RESOLVE_DEPTH, Kind, VarSecinfo)
from .btf_ext import BTFExt, parse_btf_ext
from .sections import SectionDef, attach_target, match_section

# ELF constants
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_NOBITS = 8
SHT_REL = 9
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STV_DEFAULT = 0
STV_INTERNAL = 1
STV_HIDDEN = 2
SHN_UNDEF = 0
EM_BPF = 247

BPF_OBJ_NAME_LEN = 16
#: prefix of the BTF decl tag declaring a ring buffer's record type:
#: ``} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));``
RECORD_TAG = "pybpf:record="

# map types used while parsing (values from include/uapi/linux/bpf.h)
MAP_TYPE_ARRAY = 2
MAP_TYPE_PROG_ARRAY = 3
MAP_TYPE_ARRAY_OF_MAPS = 12
MAP_TYPE_HASH_OF_MAPS = 13
_VALUES_MAP_TYPES = (MAP_TYPE_PROG_ARRAY, MAP_TYPE_ARRAY_OF_MAPS, MAP_TYPE_HASH_OF_MAPS)
MAP_TYPE_RINGBUF = 27
MAP_TYPE_USER_RINGBUF = 31
MAP_TYPE_ARENA = 33
MAP_TYPE_STRUCT_OPS = 26
BPF_F_LINK = 1 << 13
BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10
#: the section clang puts ``__arena`` globals in (``__attribute__((address_space(1)))``)
ARENA_SEC = ".addr_space.1"

# members a BTF-defined map may have (libbpf parse_btf_map_def)
_MAP_DEF_MEMBERS = ("type", "max_entries", "map_flags", "numa_node", "map_extra", "key_size", "value_size",
                    "key", "value", "pinning", "values")
# members libbpf also reads from __ulong(name, V), an enum member whose only enumerator is V
# (get_map_field_long: ENUM or ENUM64 with vlen 1); the others are 32-bit __uint() only
_MAP_DEF_ULONG_MEMBERS = ("map_extra",)


class Symbol(Record):
    """An ELF symbol (``section`` is its section index, 0 for undefined)."""

    _fields = ("name", "section", "value", "size", "type", "bind", "visibility")

    def __init__(self, name: str, section: int, value: int, size: int, type: int, bind: int, visibility: int):
        self.name = name
        self.section = section
        self.value = value
        self.size = size
        self.type = type
        self.bind = bind
        self.visibility = visibility


class Relocation(Record):
    """An ELF relocation inside a function: ``insn`` is the instruction index
    relative to the function's first instruction."""

    _fields = ("insn", "symbol", "type")

    def __init__(self, insn: int, symbol: Symbol, type: int):
        self.insn = insn
        self.symbol = symbol
        self.type = type


class FunctionSpec(Record):
    """A BPF function: a program's entry function or a ``.text`` subprogram."""

    _fields = ("name", "section", "sec_insn_off", "insns", "relocations", "linkage")

    def __init__(self, name: str, section: str, sec_insn_off: int, insns: bytes,
                 relocations: list | None = None, linkage: int = LINKAGE_GLOBAL):
        self.name = name
        self.section = section
        self.sec_insn_off = sec_insn_off  # index of the first instruction in its ELF section
        self.insns = insns
        self.relocations = [] if relocations is None else relocations
        self.linkage = linkage

    @property
    def insn_cnt(self) -> int:
        return len(self.insns) // I.INSN_SIZE


class ProgramSpec(Record):
    """A program: an entry function in a program section, plus what its section name says.

    ``autoload`` (False for sections starting with ``?``) and ``attach_target``
    may be changed before loading.
    """

    _fields = ("name", "section", "sec_def", "function", "license", "kern_version", "autoload",
               "attach_target")

    def __init__(self, name: str, section: str, sec_def: SectionDef, function: FunctionSpec,
                 license: str = "", kern_version: int = 0, autoload: bool = True, attach_target: str = ""):
        self.name = name
        self.section = section
        self.sec_def = sec_def
        self.function = function
        self.license = license
        self.kern_version = kern_version
        self.autoload = autoload
        self.attach_target = attach_target

    @property
    def prog_type(self):
        from ..kernel.constants import ProgType
        return ProgType[self.sec_def.prog_type]

    @property
    def expected_attach_type(self):
        from ..kernel.constants import AttachType
        return AttachType[self.sec_def.attach_type] if self.sec_def.attach_type else None

    @property
    def insns(self) -> bytes:
        return self.function.insns

    def __repr__(self) -> str:
        return f"<ProgramSpec {self.name} section={self.section!r} type={self.sec_def.prog_type}>"


#: the largest value the kernel's array maps take: BPF_MAP_CREATE refuses value_size > INT_MAX with
#: E2BIG (kernel/bpf/arraymap.c array_map_alloc_check); a data section larger cannot be a map
MAX_ARRAY_VALUE_SIZE = 0x7FFFFFFF


class ZeroImage:
    """The initial image of a SHT_NOBITS section (``.bss``, ``__arena`` globals): ``size``
    zero bytes that are not held in memory (a ``.bss`` may claim a GiB; the kernel zero-fills
    new array maps anyway, kernel/bpf/arraymap.c).

    It reads like ``bytes`` (``len()``, indexing and slices, ``bytes(image)``: that one
    builds every byte, so keep it for small sections) and takes slice assignments of the
    same length (:meth:`VariableSpec.set`): only the pages written are kept."""

    PAGE = mmap.PAGESIZE      # written pages are copied into the map one mapped page at a time

    def __init__(self, size: int):
        self.size = size
        self._pages: dict[int, bytearray] = {}     # page number -> its bytes, for pages written

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def is_zero(self) -> bool:
        """True while every byte is zero (nothing but zeros was written)."""
        return not any(any(page) for page in self._pages.values())

    def _range(self, key) -> tuple[int, int]:
        if not isinstance(key, slice):
            raise Error(f"a zero-filled section image takes slices, not {type(key).__name__}")
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise Error("a zero-filled section image takes contiguous slices only")
        return start, max(start, stop)

    def __getitem__(self, key):
        if isinstance(key, int):
            if not -self.size <= key < self.size:
                raise IndexError("section image index out of range")
            key %= self.size
            page = self._pages.get(key // self.PAGE)
            return page[key % self.PAGE] if page is not None else 0
        start, stop = self._range(key)
        out = bytearray(stop - start)
        for n in sorted(self._pages):
            lo, hi = max(start, n * self.PAGE), min(stop, (n + 1) * self.PAGE)
            if lo < hi:
                out[lo - start:hi - start] = self._pages[n][lo - n * self.PAGE:hi - n * self.PAGE]
        return bytes(out)

    def __setitem__(self, key, value) -> None:
        start, stop = self._range(key)
        value = bytes(value)
        if len(value) != stop - start:
            raise Error(f"a section image keeps its size: {len(value)} bytes cannot replace {stop - start}")
        pos = start
        while pos < stop:
            n = pos // self.PAGE
            end = min(stop, (n + 1) * self.PAGE)
            page = self._pages.get(n)
            if page is None:
                page = self._pages[n] = bytearray(min(self.PAGE, self.size - n * self.PAGE))
            page[pos - n * self.PAGE:end - n * self.PAGE] = value[pos - start:end - start]
            pos = end

    def __bytes__(self) -> bytes:
        return self[0:self.size]

    def written(self) -> list[tuple[int, bytes]]:
        """(offset, bytes) of each page written, in order: the image is zeros elsewhere."""
        return [(n * self.PAGE, bytes(self._pages[n])) for n in sorted(self._pages)]

    def __eq__(self, other) -> bool:
        if isinstance(other, ZeroImage):
            return self.size == other.size and bytes(self) == bytes(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return len(other) == self.size and bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"<ZeroImage {self.size} bytes, {len(self._pages)} pages written>"


def zero_image(data) -> bool:
    """True if an initial image is all zeros that the kernel provides by itself (a
    :class:`ZeroImage` nobody wrote non-zero bytes to)."""
    return isinstance(data, ZeroImage) and data.is_zero()


#: libbpf's enum libbpf_pin_type (libbpf.h): the values of ``__uint(pinning, ...)``
PINNING = {0: "none", 1: "by_name"}


def pinning_name(value, map_name: str = "?") -> str:
    """``"none"``/``"by_name"`` for a map definition's pinning value (LIBBPF_PIN_NONE 0,
    LIBBPF_PIN_BY_NAME 1; the names themselves pass through); ObjectError for others, as
    libbpf refuses them ("invalid pinning value")."""
    if isinstance(value, str) and value in PINNING.values():
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in PINNING:
        return PINNING[value]
    raise ObjectError(f"map {map_name!r}: pinning {value!r} is not LIBBPF_PIN_NONE (0) or LIBBPF_PIN_BY_NAME (1) "
                      f"(\"none\" or \"by_name\")")


class StructOpsSpec(Record):
    """What a ``.struct_ops``/``.struct_ops.link`` variable declares: the struct's name
    (``tcp_congestion_ops``) and type id in the object's BTF, the variable's bytes, and
    function pointer member name -> program name."""

    _fields = ("type_name", "type_id", "data", "funcs")

    def __init__(self, type_name: str, type_id: int, data: bytes, funcs: dict):
        self.type_name = type_name
        self.type_id = type_id
        self.data = data
        self.funcs = funcs


class MapSpec(Record):
    """A map to create: from a BTF-defined ``.maps`` entry or an internal data section.

    Internal maps (``.data``, ``.rodata``, ``.bss``) have ``section`` set and
    ``data`` holding the initial image of the section (a bytearray, or for
    ``.bss`` a :class:`ZeroImage`, not held in memory).  An ARENA map's ``data``
    is the image of the object's ``__arena`` globals (section ``.addr_space.1``),
    or None without them: it is copied to the end of the arena after creation
    (:meth:`arena_data_offset`).  ``max_entries`` and ``value_size`` may be
    changed before loading.
    """

    #: a struct_ops map's :class:`StructOpsSpec` (None for every other map)
    struct_ops: StructOpsSpec | None = None

    _fields = ("name", "type", "key_size", "value_size", "max_entries", "flags", "key_type_id",
               "value_type_id", "pinning", "map_extra", "numa_node", "section", "data", "btf_var_id", "inner",
               "record_type_id", "values")

    def __init__(self, name: str, type: int, key_size: int = 0, value_size: int = 0, max_entries: int = 0,
                 flags: int = 0, key_type_id: int = 0, value_type_id: int = 0, pinning: str = "none",
                 map_extra: int = 0, numa_node: int = 0, section: str = ".maps",
                 data: bytearray | ZeroImage | None = None, btf_var_id: int = 0, inner: MapSpec | None = None,
                 record_type_id: int = 0, values: dict | None = None):
        self.name = name
        self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.key_type_id = key_type_id
        self.value_type_id = value_type_id
        #: ``"none"`` or ``"by_name"`` (``__uint(pinning, LIBBPF_PIN_BY_NAME)``): loaded with
        #: ``pin_root=``, the map is pinned at ``pin_root/<name>``, or reused from there
        self.pinning = pinning_name(pinning, name)
        self.map_extra = map_extra
        self.numa_node = numa_node
        self.section = section
        self.data = data
        self.btf_var_id = btf_var_id  # the VAR (for .maps) or DATASEC (internal) type id
        self.inner = inner
        self.record_type_id = record_type_id  # ring buffers: the record type the program declares (pybpf:record= tag)
        #: initial contents of a prog array / map-in-map (``__array(values, ...) = { [i] = &x }``):
        #: slot -> program name (prog arrays) or map name (map-in-map)
        self.values = {} if values is None else values

    @property
    def internal(self) -> bool:
        """True for maps made from ``.data``/``.rodata``/``.bss`` sections."""
        return self.section != ".maps" and self.struct_ops is None

    @property
    def readonly(self) -> bool:
        """True for ``.rodata`` maps: frozen after load, read-only to programs and user space."""
        return bool(self.flags & BPF_F_RDONLY_PROG)

    def arena_data_offset(self, page_size: int, max_entries: int | None = None) -> int:
        """Where an arena's ``__arena`` globals start in the arena: libbpf's arena_data_off,
        the arena's size (``max_entries`` pages) less the globals' size rounded up to whole
        pages, so that they end with the arena (libbpf init_arena_map_data).  Raises
        ObjectError when the globals do not fit."""
        if self.type != MAP_TYPE_ARENA or not self.data:
            return 0
        arena_size = page_size * (self.max_entries if max_entries is None else max_entries)
        data_size = -(-len(self.data) // page_size) * page_size
        if data_size > arena_size:
            raise ObjectError(f"arena {self.name!r} is {arena_size} bytes ({arena_size // page_size} pages of "
                              f"{page_size}), too small for the object's {len(self.data)} bytes of __arena "
                              f"globals ({ARENA_SEC}): raise its max_entries to at least "
                              f"{data_size // page_size}")
        return arena_size - data_size

    def __repr__(self) -> str:
        return (f"<MapSpec {self.name} type={self.type} key_size={self.key_size} "
                f"value_size={self.value_size} max_entries={self.max_entries}>")


def _encode_raw(value, size: int, signed: bool, what: str) -> bytes:
    """Without BTF: bytes of exactly ``size``, or an int encoded little-endian at ``size`` bytes."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if size not in (1, 2, 4, 8):
            raise Error(f"{what} is {size} bytes: give bytes, not an int")
        try:
            return value.to_bytes(size, "little", signed=signed or value < 0)
        except OverflowError:
            raise Error(f"{what}: {value} does not fit in {size} bytes") from None
    if isinstance(value, str):
        value = value.encode()
        if len(value) < size:
            value = value + b"\0" * (size - len(value))
    try:
        raw = bytes(value)
    except TypeError:
        raise Error(f"{what}: cannot encode {type(value).__name__} (give bytes or an int)") from None
    if len(raw) != size:
        raise Error(f"{what} is {size} bytes but {len(raw)} bytes were given")
    return raw


def encode_value(value, size: int, btf: BTF | None, type_id: int, what: str) -> bytes:
    """Raw bytes for ``value`` of BTF type ``type_id`` (``size`` bytes): raw bytes, a typed value,
    or plain Python values (ints, dicts, tuples, strings for char arrays, enum names)."""
    if btf is not None and type_id:
        from .typed import factory_for
        try:
            raw = factory_for(btf).encode(type_id, value)
        except Error as e:
            raise Error(f"{what}: {e}") from None
        if len(raw) != size:
            raise Error(f"{what} is {size} bytes but its type {btf.type_name(type_id)} is {len(raw)}")
        return raw
    return _encode_raw(value, size, False, what)


def decode_value(raw, btf: BTF | None, type_id: int):
    """The typed value of ``raw`` (see :mod:`pybpf.spec.typed`): ints for integers, enum members,
    str for printable char arrays, typed structs/unions/arrays; bytes without BTF."""
    if btf is not None and type_id:
        from .typed import factory_for
        try:
            return factory_for(btf).from_bytes(type_id, raw)
        except BTFError:
            pass   # a type with no value representation: raw bytes
    return bytes(raw)


class VariableSpec(Record):
    """A global variable in ``.data``/``.rodata``/``.bss`` (or an ``__arena`` global, in the
    arena map: ``offset`` is then from the start of ``.addr_space.1``), from the object's BTF.

    Before loading, :meth:`set` changes the initial value the map is created
    with (this is how ``const volatile`` ``.rodata`` parameters are set).
    """

    _fields = ("name", "map", "offset", "size", "type_id", "btf")

    def __init__(self, name: str, map: MapSpec, offset: int, size: int, type_id: int,
                 btf: BTF | None = None):
        self.name = name
        self.map = map
        self.offset = offset
        self.size = size
        self.type_id = type_id
        self.btf = btf

    @property
    def section(self) -> str:
        return ARENA_SEC if self.map.type == MAP_TYPE_ARENA else self.map.section

    @property
    def type_name(self) -> str:
        return self.btf.type_name(self.type_id) if self.btf and self.type_id else "?"

    def get(self):
        """The initial value, typed by BTF (an int for integers, str for char arrays, a struct...)."""
        assert self.map.data is not None
        return decode_value(self.map.data[self.offset:self.offset + self.size], self.btf, self.type_id)

    def set(self, value) -> None:
        """Set the initial value: bytes of the variable's size, an int, or plain/typed values by BTF type."""
        raw = encode_value(value, self.size, self.btf, self.type_id, f"variable {self.name!r}")
        assert self.map.data is not None
        self.map.data[self.offset:self.offset + self.size] = raw

    def __repr__(self) -> str:
        return f"<VariableSpec {self.name} {self.type_name} in {self.section}+{self.offset} size={self.size}>"


class ExternSpec(Record):
    """An extern of the object (an undefined global or weak symbol), resolved at load time.

    ``kind`` is ``"kconfig"`` (``extern ... __kconfig``: a value in the ``.kconfig``
    map at ``offset``) or ``"ksym"`` (``extern ... __ksym``: a kernel variable or,
    with ``is_func``, a kfunc).  ``type_id`` is the declared type behind modifiers
    (a ksym without one, ``extern const void x __ksym``, is untyped: an address
    from kallsyms); ``index`` is the extern's place in libbpf's order (kconfig
    first by alignment, size, name; then ksyms by name).
    """

    _fields = ("name", "kind", "weak", "btf_id", "var_type_id", "type_id", "is_func", "index", "kconfig_type",
               "size", "align", "signed", "offset")

    def __init__(self, name: str, kind: str, weak: bool, btf_id: int, var_type_id: int = 0, type_id: int = 0,
                 is_func: bool = False, index: int = 0, kconfig_type: str = "", size: int = 0, align: int = 0,
                 signed: bool = False, offset: int = 0):
        self.name = name
        self.kind = kind
        self.weak = weak
        self.btf_id = btf_id  # the VAR or FUNC in the object's BTF
        self.var_type_id = var_type_id  # the VAR's declared type (kconfig)
        self.type_id = type_id  # ksyms: the type behind modifiers (0 = untyped); kfuncs: the FUNC_PROTO
        self.is_func = is_func
        self.index = index
        # .kconfig
        self.kconfig_type = kconfig_type  # "bool", "tristate", "char", "int" or "char_array"
        self.size = size
        self.align = align
        self.signed = signed
        self.offset = offset

    def __repr__(self) -> str:
        what = self.kind if not self.is_func else "kfunc"
        return f"<ExternSpec {self.name} {what}{' weak' if self.weak else ''}>"


def _kconfig_type(btf: BTF, type_id: int, depth: int = 0) -> tuple:
    """libbpf's find_kcfg_type: (kind of .kconfig value or None if unsupported, signed)."""
    if depth > MAX_RESOLVE_DEPTH:       # arrays of arrays that loop back (corrupt BTF)
        raise btf.too_deep(type_id, "array element types")
    t = btf.resolve(type_id)
    if t is None:
        return None, False
    if t.kind == Kind.INT:
        if t.encoding & INT_BOOL:
            return ("bool" if t.size == 1 else None), False
        signed = bool(t.encoding & INT_SIGNED)
        if t.size == 1:
            return "char", signed
        return ("int" if t.size in (2, 4, 8) else None), signed
    if t.kind in (Kind.ENUM, Kind.ENUM64) and t.name == "libbpf_tristate":
        return ("tristate" if t.kind == Kind.ENUM64 or t.size == 4 else None), False
    if t.kind == Kind.ARRAY and t.nelems and _kconfig_type(btf, t.elem_type, depth + 1)[0] == "char":
        return "char_array", False
    return None, False


def _kconfig_align(btf: BTF, type_id: int) -> int:
    """btf__align_of for the types a .kconfig extern may have."""
    t = btf.resolve(type_id)
    for _ in range(MAX_RESOLVE_DEPTH + 1):
        if t is None or t.kind != Kind.ARRAY:
            return min(btf.pointer_size, t.size) if t is not None else 0
        t = btf.resolve(t.elem_type)
    raise btf.too_deep(type_id, "array element types")


def object_name(path: str) -> str:
    """libbpf's object name: the file's base name up to its first dot."""
    base = os.path.basename(path)
    return base.split(".", 1)[0] or base


def internal_map_name(obj_name: str, section: str) -> str:
    """libbpf's internal map name: up to 8 characters of the object name + the section name,
    at most 15 characters, characters the kernel refuses replaced by '_' (``user_rin.bss``)."""
    sfx_len = max(7, len(section))
    if "." in section[1:]:
        pfx_len = 0          # e.g. .data.custom: libbpf uses the section name alone
    else:
        pfx_len = min(BPF_OBJ_NAME_LEN - sfx_len - 1, len(obj_name))
    name = (obj_name[:max(pfx_len, 0)] + section)[:BPF_OBJ_NAME_LEN - 1]
    return "".join(c if (c.isalnum() or c in "_.") else "_" for c in name)


def _map_def_number(btf: BTF, map_name: str, attr: str, mt) -> int:
    """A numeric map attribute: ``__uint(name, N)`` is a pointer to an array of N elements;
    ``__ulong(name, N)`` (map_extra only, as in libbpf's get_map_field_long) is an enum or
    enum64 whose single enumerator is N."""
    if mt is not None and mt.kind == Kind.PTR:
        arr = btf.resolve(mt.size_or_type)
        if arr is None or arr.kind != Kind.ARRAY:
            raise BTFError(f"map {map_name!r}: attribute {attr!r} is not declared with __uint() (a pointer "
                           f"to an array, got a pointer to {btf.type_name(mt.size_or_type)})")
        return arr.nelems
    if mt is not None and mt.kind in (Kind.ENUM, Kind.ENUM64):
        if attr not in _MAP_DEF_ULONG_MEMBERS:
            raise BTFError(f"map {map_name!r}: attribute {attr!r} is declared with __ulong(), which libbpf "
                           f"accepts only for {', '.join(_MAP_DEF_ULONG_MEMBERS)}: use __uint({attr}, ...)")
        if len(mt.values) != 1:
            raise BTFError(f"map {map_name!r}: attribute {attr!r} is an enum with {len(mt.values)} "
                           f"enumerators; __ulong({attr}, N) declares exactly one")
        value = mt.values[0].value
        if value < 0:
            raise BTFError(f"map {map_name!r}: attribute {attr!r} is negative ({value}); give an unsigned value")
        return value
    what = "nothing" if mt is None else f"{mt.kind.name} {btf.type_name(mt.id)}"
    how = "__uint() or __ulong()" if attr in _MAP_DEF_ULONG_MEMBERS else "__uint()"
    raise BTFError(f"map {map_name!r}: attribute {attr!r} is not declared with {how} (its type is {what})")


class ObjectSpec:
    """A parsed BPF object: ``programs``, ``maps``, ``variables`` (name → spec),
    its ``btf`` and ``btf_ext``.  Nothing is in the kernel yet: call :meth:`load`."""

    def __init__(self, data: bytes, *, path: str = "<memory>", name: str | None = None):
        self.path = path
        self.name = name or object_name(path)
        self.license = ""
        self.kern_version = 0
        self.btf: BTF | None = None
        self.btf_ext: BTFExt | None = None
        self.maps: dict[str, MapSpec] = {}
        self.programs: dict[str, ProgramSpec] = {}
        self.variables: dict[str, VariableSpec] = {}
        self.externs: dict[str, ExternSpec] = {}         # .kconfig and .ksyms externs
        self.kconfig_size = 0                            # bytes of the .kconfig map
        self.functions: dict[str, FunctionSpec] = {}     # every function, keyed by (section, start) internally
        self.struct_ops: dict[str, tuple[str, str]] = {}  # .struct_ops[.link] variable -> (section, struct name)
        self._funcs_by_pos: dict[tuple[str, int], FunctionSpec] = {}
        self.content_digest = _cache.digest(data)        # names the object in pybpf's disk caches
        try:
            self._parse(data)
        except Error as e:
            if str(e).startswith(self.path):
                raise
            raise type(e)(f"{self.path}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ObjectSpec:
        """Parse the object file at ``path``.

        A parsed object is kept in pybpf's disk cache (``spec/``, see
        :mod:`pybpf._cache`) under the hash of its path, content and pybpf's
        parser code, so parsing the same file again only unpickles it."""
        with gc_paused():   # an allocation burst, all of it live or freed by refcount: pybpf._gcpause
            return cls._from_file(os.fspath(path))

    @classmethod
    def _from_file(cls, path: str) -> ObjectSpec:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ObjectError(f"cannot read BPF object {path}: {e.strerror}") from None
        key = _cache.digest(b"\0".join((path.encode(errors="surrogateescape"), _cache.code_stamp("spec"), data)))
        name = f"{key}.pickle"
        cached = _cache.read("spec", name)
        if cached is not None:
            try:
                spec = _cache.SpecUnpickler(io.BytesIO(cached)).load()
            except Exception:   # an entry from another Python or torn by a crash: parse again
                spec = None
            if isinstance(spec, cls) and spec.path == path:
                return spec
        spec = cls(data, path=path)
        # before the caller can change anything; the BTF's decode caches are left out (BTF.__getstate__)
        if _cache.enabled():
            try:
                entry = pickle.dumps(spec, protocol=-1)
            except (pickle.PicklingError, TypeError, AttributeError, RecursionError):
                entry = None        # something unpicklable: this object is parsed every time
            if entry is not None:
                _cache.write("spec", name, entry)
        return spec

    # -- ELF ---------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise ObjectError("not an ELF file (no \\x7fELF magic); expected a BPF object built with "
                              "clang -target bpf")
        # imported here, with pyelftools: an object from the cache is never parsed (and contextlib,
        # which only the ELF layer uses, stays out of a warm load)
        from .elf import ELF, malformed_is_object_error
        with malformed_is_object_error():
            elf = ELF(data)
            if elf.elfclass != 64 or not elf.little_endian:
                raise ObjectError(f"ELF{elf.elfclass} {'little' if elf.little_endian else 'big'}-endian "
                                  f"object: only 64-bit little-endian BPF objects are supported")
            machine = elf["e_machine"]
            if machine not in ("EM_BPF", EM_BPF):
                raise ObjectError(f"not a BPF object: ELF machine is {machine} (compile with clang -target bpf)")
            sections = elf.sections()
            symbols = self._read_symbols(elf, sections)
        self._sections = sections
        self._symbols = symbols
        by_name = {name: i for i, (name, _, _) in enumerate(sections)}
        self._sec_index = by_name

        for name, sh, body in sections:
            if name == "license":
                self.license = body.split(b"\0", 1)[0].decode("ascii", "replace")
            elif name == "version" and len(body) == 4:
                self.kern_version = struct.unpack("<I", body)[0]
            elif name == "maps":
                raise ObjectError("legacy 'maps' section (struct bpf_map_def) is not supported, as in libbpf "
                                  "1.0: declare maps in SEC(\".maps\") with __uint/__type (BTF-defined maps)")

        if ".BTF" in by_name:
            self.btf = BTF(sections[by_name[".BTF"]][2], source=".BTF", validate=True)
            self._fixup_btf()
            self._collect_externs()
            if ".BTF.ext" in by_name:
                self.btf_ext = parse_btf_ext(sections[by_name[".BTF.ext"]][2], self.btf)

        self._collect_functions()
        self._collect_maps()
        self._collect_internal_maps()
        self._collect_arena()
        self._collect_struct_ops()
        self._add_kconfig_map()
        self._collect_relocations()
        self._collect_map_values()
        self._drop_unused_internal_maps()

    def _type_str(self, sh, key: str) -> str:
        v = sh[key]
        return v if isinstance(v, str) else str(v)

    @staticmethod
    def _read_symbols(elf: ELF, sections: list) -> list[Symbol]:
        idx = next((i for i, (name, _, _) in enumerate(sections) if name == ".symtab"), None)
        if idx is None:
            raise ObjectError("no .symtab section: the object was stripped of symbols (do not strip BPF "
                              "objects with --strip-all; llvm-strip -g is fine)")
        if sections[idx][1]["sh_type"] != "SHT_SYMTAB":
            raise ObjectError(f".symtab is not a symbol table (section type {sections[idx][1]['sh_type']})")
        out = []
        for name, s in elf.symbols(idx):
            shndx = s["st_shndx"]
            if isinstance(shndx, str):
                shndx = 0 if shndx == "SHN_UNDEF" else -1
            info = s["st_info"]
            stype = {"STT_NOTYPE": STT_NOTYPE, "STT_OBJECT": STT_OBJECT, "STT_FUNC": STT_FUNC,
                     "STT_SECTION": STT_SECTION}.get(info["type"], 99)
            bind = {"STB_LOCAL": STB_LOCAL, "STB_GLOBAL": STB_GLOBAL, "STB_WEAK": STB_WEAK}.get(info["bind"], 99)
            vis = s["st_other"]["visibility"]
            vis = {"STV_DEFAULT": STV_DEFAULT, "STV_INTERNAL": STV_INTERNAL, "STV_HIDDEN": STV_HIDDEN}.get(vis, 3)
            out.append(Symbol(name, shndx, s["st_value"], s["st_size"], stype, bind, vis))
        return out

    def _section_symbol_name(self, sym: Symbol) -> str:
        if sym.type == STT_SECTION and 0 < sym.section < len(self._sections):
            return self._sections[sym.section][0]
        return sym.name

    # -- BTF fix-ups -----------------------------------------------------------------------

    def _fixup_btf(self) -> None:
        """clang leaves DATASEC sizes 0 and global VAR offsets 0: fill them from the ELF
        section sizes and symbol values (libbpf btf_fixup_datasec), then sort the variables."""
        btf = self.btf
        assert btf is not None
        sym_by_name = {s.name: s for s in self._symbols if s.type == STT_OBJECT and s.section > 0}
        for t in btf.by_kind(Kind.DATASEC):     # in id order, as iterating: only DATASECs are decoded
            if t.name in (".kconfig", ".ksyms"):
                continue
            size = t.size_or_type
            fixed_size = False
            if size == 0:
                idx = self._sec_index.get(t.name)
                if idx is None:
                    raise BTFError(f"DATASEC {t.name!r} has no ELF section of that name")
                size = self._sections[idx][1]["sh_size"]
                if size == 0:
                    raise BTFError(f"DATASEC {t.name!r}: its ELF section is empty")
                fixed_size = True
            infos = []
            for si in t.secinfos:
                var = btf[si.type_id]
                offset = si.offset
                if var.kind == Kind.VAR and var.linkage not in (LINKAGE_STATIC, LINKAGE_EXTERN):
                    sym = sym_by_name.get(var.name)
                    if sym is None:
                        raise BTFError(f"variable {var.name!r} of {t.name} has no ELF symbol")
                    if fixed_size:
                        offset = sym.value
                    # a global with hidden/internal visibility is static to the kernel
                    if sym.visibility in (STV_HIDDEN, STV_INTERNAL):
                        btf.set_linkage(var, LINKAGE_STATIC)
                if offset + si.size > size:
                    raise BTFError(f"variable {var.name!r} [{offset}, {offset + si.size}) lies outside "
                                   f"its {size}-byte section {t.name}")
                infos.append(VarSecinfo(si.type_id, offset, si.size))
            if size > 0xFFFFFFFF:
                raise BTFError(f"DATASEC {t.name!r}: section size {size} does not fit in BTF's 32 bits")
            infos.sort(key=lambda s: s.offset)
            btf.set_datasec(t, size, infos)

    # -- externs -------------------------------------------------------------------------------

    def _collect_externs(self) -> None:
        """Externs (undefined GLOBAL/WEAK NOTYPE symbols) and the BTF fix-ups they need, as
        libbpf's bpf_object__collect_externs (btf.md section 3): find each one's BTF VAR or
        FUNC and its DATASEC; lay the .kconfig ones out (sorted by alignment, size, name);
        make .kconfig and .ksyms acceptable to the kernel (no extern VARs, FUNCs in .ksyms
        replaced by an added ``dummy_ksym`` VAR).  Values are resolved at load."""
        syms = [s for s in self._symbols
                if s.section == SHN_UNDEF and s.bind in (STB_GLOBAL, STB_WEAK) and s.type == STT_NOTYPE and s.name]
        if not syms:
            return
        btf = self.btf
        assert btf is not None
        sec_of = {}
        for t in btf.by_kind(Kind.DATASEC):
            for si in t.secinfos:
                sec_of.setdefault(si.type_id, t)
        externs = []
        for sym in syms:
            t = next((c for c in btf.by_name(sym.name) if c.kind in (Kind.VAR, Kind.FUNC)), None)
            if t is None:
                raise BTFError(f"extern {sym.name!r} has no BTF VAR or FUNC")
            if t.linkage != LINKAGE_EXTERN:
                raise BTFError(f"extern {sym.name!r}: its BTF {t.kind.name} [{t.id}] is not extern")
            sec = sec_of.get(t.id)
            if sec is None:
                raise BTFError(f"extern {sym.name!r} is in no BTF DATASEC (declare it __kconfig or __ksym)")
            weak = sym.bind == STB_WEAK
            if sec.name == ".kconfig":
                if t.kind == Kind.FUNC:
                    raise ObjectError(f"extern function {sym.name!r} cannot be a .kconfig extern")
                ktype, signed = _kconfig_type(btf, t.type_id)
                if ktype is None:
                    raise ObjectError(f"extern (kconfig) {sym.name!r}: type {btf.type_name(t.type_id)} is not "
                                      f"supported (use bool, enum libbpf_tristate, char, an integer of 1, 2, 4 "
                                      f"or 8 bytes, or a char array for strings)")
                externs.append(ExternSpec(sym.name, "kconfig", weak, t.id, var_type_id=t.type_id,
                                          kconfig_type=ktype, size=btf.size_of(t.type_id),
                                          align=_kconfig_align(btf, t.type_id), signed=signed))
            elif sec.name == ".ksyms":
                externs.append(ExternSpec(sym.name, "ksym", weak, t.id, var_type_id=t.type_id,
                                          type_id=btf.skip_mods(t.type_id), is_func=t.kind == Kind.FUNC))
            else:
                raise ObjectError(f"extern {sym.name!r} is in section {sec.name!r}: only .kconfig (__kconfig) "
                                  f"and .ksyms (__ksym) externs are supported")
        # libbpf's order (its extern index shows in poisoned kfunc calls)
        externs.sort(key=lambda e: (e.kind != "kconfig", -e.align if e.kind == "kconfig" else 0,
                                    e.size if e.kind == "kconfig" else 0, e.name))
        off = 0
        for i, e in enumerate(externs):
            e.index = i
            if e.kind == "kconfig":
                e.offset = (off + e.align - 1) // e.align * e.align
                off = e.offset + e.size
        self.kconfig_size = off
        self.externs = {e.name: e for e in externs}
        self._fixup_extern_btf()

    def _fixup_extern_btf(self) -> None:
        from .btf_patch import BTFPatcher
        btf = self.btf
        p = BTFPatcher(btf)
        for sec in btf.by_kind(Kind.DATASEC):
            if sec.name not in (".kconfig", ".ksyms"):
                continue
            missing = [btf[si.type_id].name for si in sec.secinfos if btf[si.type_id].name not in self.externs]
            if missing:
                raise BTFError(f"{sec.name} variable {missing[0]!r} has no ELF symbol")
            infos = []
            if sec.name == ".kconfig":
                for si in sec.secinfos:
                    p.set_word(si.type_id, 3, LINKAGE_GLOBAL)
                    infos.append((si.type_id, self.externs[btf[si.type_id].name].offset, si.size))
                infos.sort(key=lambda v: v[1])
                size = self.kconfig_size
            else:
                # every .ksyms entry becomes a 4-byte int VAR: the kernel refuses extern VARs
                int_id = next((t.id for t in btf.by_kind(Kind.INT) if t.bits == 32), 0) or p.add_int("int", 4, 1)
                dummy = 0
                for i, si in enumerate(sec.secinfos):
                    t = btf[si.type_id]
                    type_id = si.type_id
                    if t.kind == Kind.FUNC:
                        if not dummy:
                            dummy = p.add_var("dummy_ksym", int_id, LINKAGE_GLOBAL)
                        # the kernel wants named parameters for a FUNC
                        for j, param in enumerate(btf[t.type_id].params):
                            if param.type_id and not param.name:
                                p.set_word(t.type_id, 3 + 2 * j, p.word(dummy, 0))
                        p.set_info(t.id, Kind.FUNC, LINKAGE_GLOBAL)
                        type_id = dummy
                    else:
                        p.set_word(t.id, 2, int_id)
                        p.set_word(t.id, 3, LINKAGE_GLOBAL)
                    infos.append((type_id, 4 * i, 4))
                size = 4 * len(infos)
            p.set_word(sec.id, 2, size)
            for i, (type_id, offset, sz) in enumerate(infos):
                p.set_word(sec.id, 3 + 3 * i, type_id)
                p.set_word(sec.id, 4 + 3 * i, offset)
                p.set_word(sec.id, 5 + 3 * i, sz)
        self.btf = p.to_btf(source=btf.source)

    def _add_kconfig_map(self) -> None:
        """The .kconfig map: a frozen 1-entry array the loader fills with the externs' values
        (libbpf's ``<obj>.kconfig``: BPF_F_RDONLY_PROG | BPF_F_MMAPABLE)."""
        kconfig = [e for e in self.externs.values() if e.kind == "kconfig"]
        if not kconfig:
            return
        sec = self.btf.by_name(".kconfig", Kind.DATASEC)[0]
        if self.kconfig_size > MAX_ARRAY_VALUE_SIZE:
            raise ObjectError(f".kconfig externs take {self.kconfig_size} bytes: more than the "
                              f"{MAX_ARRAY_VALUE_SIZE} bytes an array map value may have (kernel/bpf/arraymap.c)")
        m = MapSpec(name=internal_map_name(self.name, ".kconfig"), type=MAP_TYPE_ARRAY, key_size=4,
                    value_size=self.kconfig_size, max_entries=1, flags=BPF_F_RDONLY_PROG | BPF_F_MMAPABLE,
                    section=".kconfig", data=bytearray(self.kconfig_size), btf_var_id=sec.id,
                    value_type_id=sec.id)
        self.maps[m.name] = m
        for e in kconfig:
            self.variables[e.name] = VariableSpec(e.name, m, e.offset, e.size, e.var_type_id, self.btf)

    # -- functions and programs ---------------------------------------------------------------

    def _mark_func_static(self, name: str) -> None:
        """Give BTF FUNC ``name`` static linkage (if the object has BTF describing it)."""
        if self.btf is None:
            return
        for t in self.btf.by_name(name, Kind.FUNC):
            if t.linkage == LINKAGE_GLOBAL:
                self.btf.set_linkage(t, LINKAGE_STATIC)

    def _collect_functions(self) -> None:
        for idx, (name, sh, body) in enumerate(self._sections):
            if sh["sh_type"] != "SHT_PROGBITS" or not (sh["sh_flags"] & SHF_EXECINSTR) or not body:
                continue
            if len(body) % I.INSN_SIZE:
                raise ObjectError(f"section {name!r} is {len(body)} bytes, not a whole number of instructions")
            funcs = sorted((s for s in self._symbols if s.section == idx and s.type == STT_FUNC),
                           key=lambda s: s.value)
            if not funcs:
                raise ObjectError(f"executable section {name!r} has no function symbols")
            sec_def = None
            if name != ".text":
                sec_def = match_section(name)
                if sec_def is None:
                    raise ObjectError(
                        f"program section {name!r} (function {funcs[0].name}) has an unknown section name: "
                        f"pybpf cannot tell its program type. Use one of libbpf's section names, e.g. "
                        f"SEC(\"tracepoint/<category>/<name>\"), SEC(\"kprobe/<function>\"), SEC(\"xdp\"), "
                        f"SEC(\"syscall\")")
            end = 0
            for s in funcs:
                if s.value % I.INSN_SIZE or s.value + s.size > len(body) or s.size == 0:
                    raise ObjectError(f"function {s.name!r} in {name!r} has a bad offset or size "
                                      f"({s.value}, {s.size})")
                # functions do not overlap (each one's instructions are copied: overlapping
                # symbols would copy the section once per symbol)
                if s.value < end:
                    raise ObjectError(f"function {s.name!r} in {name!r} at offset {s.value} overlaps the "
                                      f"function before it (which ends at {end})")
                end = s.value + s.size
                linkage = LINKAGE_STATIC if s.bind == STB_LOCAL else LINKAGE_GLOBAL
                if linkage == LINKAGE_GLOBAL and s.visibility in (STV_HIDDEN, STV_INTERNAL):
                    # libbpf's mark_btf_static: a __hidden global function (usdt.bpf.h's
                    # bpf_usdt_arg) is verified as static, in its caller's context
                    self._mark_func_static(s.name)
                fn = FunctionSpec(s.name, name, s.value // I.INSN_SIZE, body[s.value:s.value + s.size],
                                  linkage=linkage)
                self._funcs_by_pos[(name, fn.sec_insn_off)] = fn
                if name == ".text":
                    self.functions[s.name] = fn
                    continue
                if s.name in self.programs:
                    raise ObjectError(f"two programs are called {s.name!r}")
                self.programs[s.name] = ProgramSpec(
                    s.name, name, sec_def, fn, license=self.license, kern_version=self.kern_version,
                    autoload=not name.startswith("?"), attach_target=attach_target(name, sec_def))

    def function_at(self, section: str, insn_index: int) -> FunctionSpec | None:
        """The function that starts at instruction ``insn_index`` of ``section``."""
        return self._funcs_by_pos.get((section, insn_index))

    def _function_containing(self, section: str, insn_index: int) -> FunctionSpec | None:
        # by bisection over each section's sorted starts: an object may have many relocations
        starts = self.__dict__.get("_func_starts")
        if starts is None:
            starts = {}
            for (sec, start) in sorted(self._funcs_by_pos):
                starts.setdefault(sec, []).append(start)
            self._func_starts = starts
        sec_starts = starts.get(section, ())
        i = bisect.bisect_right(sec_starts, insn_index) - 1
        if i < 0:
            return None
        fn = self._funcs_by_pos[(section, sec_starts[i])]
        return fn if insn_index < sec_starts[i] + fn.insn_cnt else None

    # -- maps ------------------------------------------------------------------------------------

    def _collect_maps(self) -> None:
        idx = self._sec_index.get(".maps")
        if idx is None:
            return
        btf = self.btf
        if btf is None:
            raise ObjectError(".maps section but no .BTF: BTF-defined maps need the object built with -g")
        datasecs = btf.by_name(".maps", Kind.DATASEC)
        if not datasecs:
            raise BTFError(".maps section has no DATASEC '.maps' in BTF")
        # record types declared with __attribute__((btf_decl_tag("pybpf:record=struct event")))
        tags = {t.type_id: t.name[len(RECORD_TAG):] for t in btf.by_kind(Kind.DECL_TAG)
                if t.component_idx == -1 and t.name.startswith(RECORD_TAG)}
        for si in datasecs[0].secinfos:
            var = btf[si.type_id]
            if var.kind != Kind.VAR:
                raise BTFError(f".maps DATASEC entry [{si.type_id}] is a {var.kind.name}, not a VAR")
            m = self._parse_map_def(var.name, var.size_or_type, var.id)
            if var.id in tags:
                try:
                    m.record_type_id = btf.find(tags[var.id]).id
                except BTFError:
                    raise ObjectError(f"map {var.name!r} declares record type {tags[var.id]!r}, "
                                      f"which is not in the object's BTF") from None
            self.maps[var.name] = m

    def _parse_map_def(self, name: str, type_id: int, var_id: int, inner: bool = False) -> MapSpec:
        btf = self.btf
        assert btf is not None
        st = btf.resolve(type_id)
        if st is None or st.kind != Kind.STRUCT:
            raise BTFError(f"map {name!r}: its definition is not a struct (got {btf.type_name(type_id)})")
        spec = MapSpec(name=name, type=0, btf_var_id=var_id)
        for m in st.members:
            if m.name not in _MAP_DEF_MEMBERS:
                raise ObjectError(f"map {name!r}: unknown attribute {m.name!r} in its definition "
                                  f"(known: {', '.join(_MAP_DEF_MEMBERS)})")
            mt = btf.resolve(m.type_id)
            if m.name in ("key", "value"):
                if mt is None or mt.kind != Kind.PTR:
                    raise BTFError(f"map {name!r}: __type({m.name}, ...) must be a pointer member")
                target = mt.size_or_type
                size = btf.size_of(target)
                setattr(spec, f"{m.name}_size", size)
                setattr(spec, f"{m.name}_type_id", target)
            elif m.name == "values":
                # __array(values, T): libbpf's rules (parse_btf_map_def)
                if inner:
                    raise ObjectError(f"map {name!r}: an inner map cannot have 'values' "
                                      f"(multi-level map-in-map is not supported)")
                if m is not st.members[-1]:
                    raise ObjectError(f"map {name!r}: 'values' must be the last member of its definition")
                if spec.type not in _VALUES_MAP_TYPES:
                    raise ObjectError(f"map {name!r}: only prog arrays and map-in-maps (ARRAY_OF_MAPS, "
                                      f"HASH_OF_MAPS) can have 'values', not map type {spec.type}")
                if spec.value_size not in (0, 4):
                    raise ObjectError(f"map {name!r}: value_size {spec.value_size} conflicts with 'values' "
                                      f"(slots hold a 4-byte fd)")
                spec.value_size = 4
                if mt is None or mt.kind != Kind.ARRAY or mt.nelems:
                    raise BTFError(f"map {name!r}: 'values' must be a zero-sized array (__array(values, ...))")
                ptr = btf.resolve(mt.elem_type)
                if ptr is None or ptr.kind != Kind.PTR:
                    raise BTFError(f"map {name!r}: 'values' must be an array of pointers")
                target = btf.resolve(ptr.size_or_type)
                if spec.type == MAP_TYPE_PROG_ARRAY:
                    if target is None or target.kind != Kind.FUNC_PROTO:
                        raise BTFError(f"map {name!r}: a prog array's 'values' must point to a function "
                                       f"prototype (__array(values, int (void *)))")
                    continue
                if target is None or target.kind != Kind.STRUCT:
                    raise BTFError(f"map {name!r}: a map-in-map's 'values' must point to the inner map's "
                                   f"definition (a struct with __uint(type, ...) ...)")
                spec.inner = self._parse_map_def(name + ".inner", ptr.size_or_type, 0, inner=True)
            else:
                value = _map_def_number(btf, name, m.name, mt)
                attr = {"map_flags": "flags"}.get(m.name, m.name)
                if attr in ("key_size", "value_size") and getattr(spec, attr) and getattr(spec, attr) != value:
                    raise ObjectError(f"map {name!r}: {attr} {value} conflicts with its __type size "
                                      f"{getattr(spec, attr)}")
                if attr == "pinning":
                    value = pinning_name(value, name)
                    if inner and value != "none":      # libbpf: "inner def can't be pinned"
                        raise ObjectError(f"map {name!r}: an inner map definition cannot be pinned")
                setattr(spec, attr, value)
        if not spec.type:
            raise ObjectError(f"map {name!r} has no type: add __uint(type, BPF_MAP_TYPE_...)")
        return spec

    def _collect_internal_maps(self) -> None:
        for name, sh, body in self._sections:
            kind = self._data_section_kind(name, sh)
            if kind is None:
                continue
            size = sh["sh_size"]
            if size == 0:
                continue
            if size > MAX_ARRAY_VALUE_SIZE:   # a SHT_NOBITS size is not bounded by the file's
                raise ObjectError(f"section {name} is {size} bytes: more than the {MAX_ARRAY_VALUE_SIZE} bytes "
                                  f"an array map value may have (kernel/bpf/arraymap.c), so it cannot be "
                                  f"created; the object is corrupt or its globals are too large")
            flags = BPF_F_MMAPABLE
            if kind == ".rodata":
                flags |= BPF_F_RDONLY_PROG
            data = ZeroImage(size) if kind == ".bss" else bytearray(body)
            datasec = self.btf.by_name(name, Kind.DATASEC) if self.btf else []
            m = MapSpec(name=internal_map_name(self.name, name), type=MAP_TYPE_ARRAY, key_size=4,
                        value_size=size, max_entries=1, flags=flags, section=name, data=data,
                        btf_var_id=datasec[0].id if datasec else 0,
                        value_type_id=datasec[0].id if datasec else 0)
            self.maps[m.name] = m
            if datasec:
                for si in datasec[0].secinfos:
                    var = self.btf[si.type_id]
                    if var.kind != Kind.VAR:
                        continue
                    if si.offset + si.size > size:
                        raise BTFError(f"variable {var.name!r} [{si.offset}, {si.offset + si.size}) lies outside "
                                       f"its {size}-byte section {name}")
                    self.variables[var.name] = VariableSpec(var.name, m, si.offset, si.size,
                                                            var.size_or_type, self.btf)

    def _collect_struct_ops(self) -> None:
        """The struct_ops maps (libbpf bpf_object__init_struct_ops / collect_st_ops_relos):
        every variable of ``.struct_ops`` and ``.struct_ops.link`` becomes a STRUCT_OPS map
        named after the variable (``.struct_ops.link``: BPF_F_LINK), whose ``struct_ops``
        (:class:`StructOpsSpec`) holds the struct's type, its bytes and which program each
        function pointer member points at (from the section's relocations).  The kernel value
        (``bpf_struct_ops_<struct>``) is laid out at load, from the kernel's BTF."""
        for name, _, body in self._sections:
            if name != ".struct_ops" and not name.startswith(".struct_ops."):
                continue
            datasec = self.btf.by_name(name, Kind.DATASEC) if self.btf else []
            if not datasec:
                raise ObjectError(f"section {name} has no BTF DATASEC: struct_ops maps are described by "
                                  f"the object's BTF (build with clang -g)")
            relocs = self._struct_ops_relocations(name)
            for si in datasec[0].secinfos:
                var = self.btf[si.type_id]
                st = self.btf.resolve(var.size_or_type) if var.kind == Kind.VAR else None
                if st is None or st.kind != Kind.STRUCT:
                    raise ObjectError(f"{name}: variable {var.name!r} is not a struct (a struct_ops map is one "
                                      f"struct variable, e.g. struct tcp_congestion_ops)")
                self.struct_ops[var.name] = (name, st.name)
                funcs = {}
                for off, sym in relocs.items():
                    if not si.offset <= off < si.offset + si.size:
                        continue
                    moff = off - si.offset
                    member = next((m for m in st.members if m.bit_offset == moff * 8), None)
                    target = self.btf.resolve(member.type_id) if member is not None else None
                    proto = self.btf.resolve(target.size_or_type) if target is not None and target.kind == Kind.PTR \
                        else None
                    if proto is None or proto.kind != Kind.FUNC_PROTO:
                        raise ObjectError(f"{name}: struct {st.name} {var.name!r}: the relocation at offset {moff} "
                                          f"is not on a function pointer member")
                    prog = self.programs.get(sym.name)
                    if prog is None or prog.sec_def.prog_type != "STRUCT_OPS":
                        raise ObjectError(f"{name}: {var.name}.{member.name} points at {sym.name!r}, which is "
                                          f"not a program in a struct_ops/ section")
                    funcs[member.name] = sym.name
                data = bytes(body[si.offset:si.offset + si.size]) if len(body) >= si.offset + si.size \
                    else bytes(si.size)
                m = MapSpec(name=var.name, type=MAP_TYPE_STRUCT_OPS, key_size=4, value_size=st.size,
                            max_entries=1, flags=BPF_F_LINK if name == ".struct_ops.link" else 0,
                            section=name, btf_var_id=var.id)
                m.struct_ops = StructOpsSpec(st.name, st.id, data, funcs)
                self.maps[m.name] = m

    def _struct_ops_relocations(self, section: str) -> dict:
        """offset in ``section`` -> symbol, from its ``.rel`` section (R_BPF_64_ABS64 to programs)."""
        idx = self._sec_index[section]
        out = {}
        for name, sh, body in self._sections:
            if sh["sh_type"] != "SHT_REL" or sh["sh_info"] != idx:
                continue
            for off in range(0, len(body) - 15, 16):
                r_offset, r_info = struct.unpack_from("<QQ", body, off)
                sym_idx = r_info >> 32
                if sym_idx >= len(self._symbols):
                    raise ObjectError(f"relocation at {section}+{r_offset} refers to symbol #{sym_idx}, "
                                      f"which does not exist")
                out[r_offset] = self._symbols[sym_idx]
        return out

    def _collect_arena(self) -> None:
        """The ARENA map and the ``__arena`` globals (libbpf >= 1.4, bpf_object__init_user_btf_maps):
        one ARENA map at most; the ``.addr_space.1`` section's image becomes its ``data``, and its
        BTF DATASEC's variables become variables of the arena."""
        arenas = [m for m in self.maps.values() if m.type == MAP_TYPE_ARENA]
        if len(arenas) > 1:
            raise ObjectError(f"maps {arenas[0].name!r} and {arenas[1].name!r} are both ARENA maps: an object "
                              f"may declare one arena only (as in libbpf)")
        idx = self._sec_index.get(ARENA_SEC)
        if idx is None:
            return
        _, sh, body = self._sections[idx]
        if sh["sh_size"] == 0:
            return
        if not arenas:
            raise ObjectError(f"the object has __arena globals (section {ARENA_SEC}) but no arena: declare the "
                              f"ARENA map in SEC(\".maps\") (__uint(type, BPF_MAP_TYPE_ARENA))")
        arena = arenas[0]
        arena.data = ZeroImage(sh["sh_size"]) if sh["sh_type"] == "SHT_NOBITS" else bytearray(body)
        datasec = self.btf.by_name(ARENA_SEC, Kind.DATASEC) if self.btf else []
        for si in datasec[0].secinfos if datasec else ():
            var = self.btf[si.type_id]
            if var.kind != Kind.VAR:
                continue
            self.variables[var.name] = VariableSpec(var.name, arena, si.offset, si.size, var.size_or_type,
                                                    self.btf)

    def arena_map(self) -> MapSpec | None:
        """The object's ARENA map, if it declares one."""
        return next((m for m in self.maps.values() if m.type == MAP_TYPE_ARENA), None)

    @staticmethod
    def _data_section_kind(name: str, sh) -> str | None:
        if sh["sh_type"] == "SHT_NOBITS" and (name == ".bss" or name.startswith(".bss.")):
            return ".bss"
        if sh["sh_type"] != "SHT_PROGBITS" or sh["sh_flags"] & SHF_EXECINSTR:
            return None
        for k in (".data", ".rodata"):
            if name == k or name.startswith(k + "."):
                return k
        return None

    def internal_map_for_section(self, section: str) -> MapSpec | None:
        for m in self.maps.values():
            if m.section == section:
                return m
        return None

    # -- relocations ---------------------------------------------------------------------------

    def _collect_relocations(self) -> None:
        self._referenced_sections: set[str] = set()
        for idx, (name, sh, body) in enumerate(self._sections):
            if sh["sh_type"] != "SHT_REL":
                continue
            target_idx = sh["sh_info"]
            if not 0 < target_idx < len(self._sections):
                raise ObjectError(f"relocation section {name!r} targets a section index {target_idx} "
                                  f"that does not exist")
            target, tsh, _ = self._sections[target_idx]
            if not (tsh["sh_flags"] & SHF_EXECINSTR):
                continue  # .rel.BTF, .rel.BTF.ext: addends are in place; .rel.data: pointers in data
            if len(body) % 16:
                raise ObjectError(f"relocation section {name!r} is truncated")
            for off in range(0, len(body), 16):
                r_offset, r_info = struct.unpack_from("<QQ", body, off)
                sym_idx, rtype = r_info >> 32, r_info & 0xFFFFFFFF
                if sym_idx >= len(self._symbols):
                    raise ObjectError(f"relocation at {target}+{r_offset} refers to symbol #{sym_idx}, "
                                      f"which does not exist")
                sym = self._symbols[sym_idx]
                if r_offset % I.INSN_SIZE:
                    raise ObjectError(f"relocation at {target}+{r_offset} is not on an instruction boundary")
                insn_index = r_offset // I.INSN_SIZE
                fn = self._function_containing(target, insn_index)
                if fn is None:
                    raise ObjectError(f"relocation at {target}+{r_offset} is outside every function")
                fn.relocations.append(Relocation(insn_index - fn.sec_insn_off, sym, rtype))
                if 0 < sym.section < len(self._sections):
                    self._referenced_sections.add(self._sections[sym.section][0])

    def _collect_map_values(self) -> None:
        """Initial slots of prog arrays and map-in-maps: ``.rel.maps`` relocations point each
        ``values[i]`` at a program (an entry function) or a map (libbpf bpf_object__collect_map_relos)."""
        maps_idx = self._sec_index.get(".maps")
        if maps_idx is None or self.btf is None:
            return
        datasecs = self.btf.by_name(".maps", Kind.DATASEC)
        if not datasecs:
            return
        # (start, end, map) of each map variable in .maps
        spans = [(si.offset, si.offset + si.size, self.btf[si.type_id].name) for si in datasecs[0].secinfos]
        for name, sh, body in self._sections:
            if sh["sh_type"] != "SHT_REL" or sh["sh_info"] != maps_idx:
                continue
            if len(body) % 16:
                raise ObjectError(f"relocation section {name!r} is truncated")
            for off in range(0, len(body), 16):
                r_offset, r_info = struct.unpack_from("<QQ", body, off)
                sym_idx = r_info >> 32
                if sym_idx >= len(self._symbols):
                    raise ObjectError(f".maps relocation at offset {r_offset} refers to symbol #{sym_idx}, "
                                      f"which does not exist")
                sym = self._symbols[sym_idx]
                owner = next((m for lo, hi, m in spans if lo <= r_offset < hi), None)
                if owner is None or owner not in self.maps:
                    raise ObjectError(f".maps relocation at offset {r_offset} (to {sym.name!r}) is not inside "
                                      f"a map definition")
                mspec = self.maps[owner]
                st = self.btf.resolve(self.btf[mspec.btf_var_id].size_or_type)
                member = next((m for m in st.members if m.name == "values"), None)
                if member is None:
                    raise ObjectError(f"map {owner!r}: a relocation to {sym.name!r} initializes a member other "
                                      f"than 'values'")
                slot_off = r_offset - next(lo for lo, _, m in spans if m == owner) - member.offset
                ptr_size = 8
                if slot_off < 0 or slot_off % ptr_size:
                    raise ObjectError(f"map {owner!r}: relocation to {sym.name!r} is not on a 'values' slot")
                slot = slot_off // ptr_size
                if mspec.type == MAP_TYPE_PROG_ARRAY:
                    prog = next((p for p in self.programs.values()
                                 if p.function.name == sym.name and sym.type == STT_FUNC), None)
                    if prog is None:
                        raise ObjectError(f"map {owner!r}: values[{slot}] = {sym.name!r}, which is not a program "
                                          f"(an entry function in a SEC(...) program section)")
                    mspec.values[slot] = prog.name
                else:
                    if self.symbol_section(sym) != ".maps" or sym.name not in self.maps:
                        raise ObjectError(f"map {owner!r}: values[{slot}] = {sym.name!r}, which is not a map "
                                          f"defined in SEC(\".maps\")")
                    mspec.values[slot] = sym.name

    def _drop_unused_internal_maps(self) -> None:
        """Skip data sections no instruction refers to and no variable lives in (e.g. an
        unused .rodata.str1.1), as loader.md allows: they would be maps nobody can reach."""
        used_by_vars = {v.map.name for v in self.variables.values()}
        for name in [n for n, m in self.maps.items() if m.internal and m.struct_ops is None]:
            m = self.maps[name]
            if m.section not in self._referenced_sections and name not in used_by_vars:
                del self.maps[name]

    # -- convenience ---------------------------------------------------------------------------

    def section_data(self, name: str) -> bytes:
        return self._sections[self._sec_index[name]][2]

    def symbol_section(self, sym: Symbol) -> str:
        if 0 < sym.section < len(self._sections):
            return self._sections[sym.section][0]
        return ""

    # the runtime layer's loader (pybpf.collection.load_object, through pybpf._load_spec), set
    # by the pybpf package when this module is imported: the runtime layer makes the Object
    # and has the loader fill it, so this layer imports neither
    _load_object = None

    def load(self, **kwargs):
        """Create the maps and load the programs into the kernel; returns a :class:`pybpf.Object`."""
        with gc_paused():   # an allocation burst, all of it live or freed by refcount: pybpf._gcpause
            return ObjectSpec._load_object(self, **kwargs)

    def __repr__(self) -> str:
        return (f"<ObjectSpec {self.path}: {len(self.programs)} programs, {len(self.maps)} maps, "
                f"{len(self.variables)} variables>")

    def layout(self, type_spec):
        """The layout of a struct or union of this object's BTF (``"struct event"``): a
        :class:`pybpf.display.Layout`, drawn in a notebook, pahole-like text as ``str()``."""
        from ..display import layout
        if self.btf is None:
            raise Error(f"{self.path} has no BTF: rebuild it with clang -g to see its types")
        return layout(self.btf, type_spec)

    def _repr_html_(self) -> str:
        """Jupyter's view: programs, maps and variables as tables (pybpf.display)."""
        from ..display import spec_html
        return spec_html(self)

    def _repr_pretty_(self, p, cycle) -> None:
        from ..display import spec_text
        p.text(spec_text(self))
