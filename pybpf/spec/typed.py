"""Typed values: BTF types become ctypes types.

``TypeFactory(btf).ctype(type_id)`` gives a ctypes type laid out exactly as
the BTF says (member offsets are taken from BTF, not recomputed: padding is
explicit and ``_pack_ = 1``).  Instances are ordinary ctypes objects, so
``bytes(value)`` is always the raw bytes, plus:

- a readable ``repr`` (``event(pid=1707, comm='bash')``): char arrays as
  strings when printable, enums by name, nested values inline;
- ``value.to_python()``: plain ints, strings, lists and dicts;
- ``==`` against another value of the type, raw bytes, or plain Python values;
- bitfields as properties (ctypes' own bitfield layout is compiler-dependent,
  BTF's is exact).

:func:`TypeFactory.convert` accepts raw bytes, an instance, or plain Python
values (ints, dicts, tuples, lists, strings for char arrays and enum names).
"""

from __future__ import annotations

import ctypes
import weakref
import enum

from ..errors import BTFError, Error
from .btf import BTF, INT_BOOL, INT_CHAR, MAX_RESOLVE_DEPTH, MAX_TYPE_SIZE, Kind

try:  # blake2b without hashlib, whose import loads OpenSSL (~3 ms of a process)
    from _blake2 import blake2b as _hash
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b as _hash

_INTS = {(1, False): ctypes.c_uint8, (1, True): ctypes.c_int8, (2, False): ctypes.c_uint16,
         (2, True): ctypes.c_int16, (4, False): ctypes.c_uint32, (4, True): ctypes.c_int32,
         (8, False): ctypes.c_uint64, (8, True): ctypes.c_int64}
_INT_TYPES = frozenset(_INTS.values())


def _plain(v) -> object:
    """A ctypes value (or a field value) as plain Python."""
    if isinstance(v, _Typed):
        return v.to_python()
    if isinstance(v, enum.Enum):
        return v.name
    return v


def _show(v) -> str:
    if isinstance(v, _Typed):
        return repr(v)
    if isinstance(v, enum.Enum):
        return v.name
    return repr(v)


class _Typed:
    """Mixin for generated structs, unions and arrays."""

    _btf_name_ = "?"

    def to_python(self):
        raise NotImplementedError

    def __eq__(self, other):
        if isinstance(other, (bytes, bytearray, memoryview)):
            return bytes(self) == bytes(other)
        if isinstance(other, _Typed):
            return type(self) is type(other) and bytes(self) == bytes(other)
        return self.to_python() == _plain(other) if not isinstance(other, (dict, list, tuple, str, int)) \
            else self.to_python() == (list(other) if isinstance(other, tuple) else other)

    __hash__ = None  # mutable

    def _repr_pretty_(self, p, cycle) -> None:
        """IPython's pretty printer: the repr."""
        p.text(repr(self))

    def _repr_html_(self) -> str:
        """Jupyter's view: a struct as a table of its fields (pybpf.display.value_html)."""
        from ..display import value_html
        return value_html(self)


class TypedStruct(_Typed):
    """Base of generated struct and union types: ``_fields_info_`` lists (name, kind) to show."""

    _members_: tuple = ()   # (python name, getter kind)

    def to_python(self) -> dict:
        return {name: _plain(getattr(self, name)) for name in self._members_}

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={_show(getattr(self, name))}" for name in self._members_)
        return f"{self._btf_name_}({inner})"

    def __iter__(self):
        """Iterate over (field name, value) pairs."""
        for name in self._members_:
            yield name, getattr(self, name)


class TypedArray(_Typed):
    """Base of generated array types (element access as usual)."""

    _text_ = False   # a char array: shown as a string when printable
    _wide_int_ = None  # an integer of another size (__int128): its signedness

    def text(self) -> str | None:
        """The C string in a char array, if printable."""
        raw = bytes(self).split(b"\0", 1)[0]
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return s if s.isprintable() else None

    def to_python(self):
        if self._text_:
            return _char_text(bytes(self))
        return [_plain(self[i]) for i in range(len(self))]

    def __repr__(self) -> str:
        if self._text_:
            s = self.text()
            if s is not None:
                return repr(s)
        return "[" + ", ".join(_show(self[i]) for i in range(len(self))) + "]"


def _check_int(value, bits: int, what: str) -> int:
    """``value`` as an int that fits in ``bits`` bits (signed or unsigned); ctypes would truncate."""
    if isinstance(value, enum.Enum):
        value = value.value
    if not isinstance(value, int):
        raise Error(f"{what} takes an int, not {type(value).__name__} {value!r}")
    if not -(1 << (bits - 1)) <= value < (1 << bits):
        raise Error(f"{what}: {value} does not fit in {bits} bits")
    return value


def _bitfield_property(byte_off: int, bit_off: int, bits: int, signed: bool, enum_cls=None) -> property:
    nbytes = (bit_off + bits + 7) // 8
    mask = (1 << bits) - 1

    def get(self):
        buf = (ctypes.c_char * nbytes).from_buffer(self, byte_off)
        v = (int.from_bytes(bytes(buf), "little") >> bit_off) & mask
        if signed and v >> (bits - 1):
            v -= 1 << bits
        if enum_cls is not None:   # an enum bitfield: by name too
            try:
                return enum_cls(v)
            except ValueError:
                pass
        return v

    def set(self, value):
        if enum_cls is not None and isinstance(value, str):
            try:
                value = enum_cls[value]
            except KeyError:
                raise Error(f"{value!r} is not an enumerator of enum {enum_cls.__name__}") from None
        buf = (ctypes.c_char * nbytes).from_buffer(self, byte_off)
        word = int.from_bytes(bytes(buf), "little")
        value = _check_int(value, bits, f"a {bits}-bit bitfield")
        word = (word & ~(mask << bit_off)) | ((value & mask) << bit_off)
        buf[:] = word.to_bytes(nbytes, "little")

    return property(get, set)


def _char_text(raw: bytes):
    """A char array's value: the C string as str when printable UTF-8, else the bytes up to NUL."""
    s = raw.split(b"\0", 1)[0]
    try:
        text = s.decode("utf-8")
    except UnicodeDecodeError:
        return s
    return text if text.isprintable() else s


def _text_property(field: str) -> property:
    def get(self):
        return _char_text(bytes(_raw_field(self, field)))

    def set(self, value):
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray)):
            raise Error(f"a char array takes str or bytes, not {type(value).__name__} {value!r}")
        arr = _raw_field(self, field)
        if len(value) > len(arr):
            raise Error(f"{len(value)} bytes do not fit in char[{len(arr)}]")
        ctypes.memset(ctypes.addressof(arr), 0, len(arr))
        ctypes.memmove(ctypes.addressof(arr), bytes(value), len(value))

    return property(get, set)


def _wide_int_property(field: str, signed: bool) -> property:
    def get(self):
        return int.from_bytes(bytes(_raw_field(self, field)), "little", signed=signed)

    def set(self, value):
        arr = _raw_field(self, field)
        value = _check_int(value, 8 * len(arr), f"a {8 * len(arr)}-bit integer")
        ctypes.memmove(ctypes.addressof(arr), value.to_bytes(len(arr), "little", signed=value < 0), len(arr))

    return property(get, set)


def _raw_field(inst, field: str):
    """The ctypes object of field ``field`` (not its converted value)."""
    return type(inst)._field_types_[field].from_buffer(inst, getattr(type(inst), field).offset)


def _enum_property(field: str, enum_cls) -> property:
    def get(self):
        v = getattr(self, field)
        try:
            return enum_cls(v)
        except ValueError:
            return v

    def set(self, value):
        if isinstance(value, str):
            try:
                value = enum_cls[value]
            except KeyError:
                raise Error(f"{value!r} is not an enumerator of enum {enum_cls.__name__}") from None
        bits = 8 * ctypes.sizeof(type(self)._field_types_[field])
        setattr(self, field, _check_int(value, bits, f"enum {enum_cls.__name__}"))

    return property(get, set)


# attributes of the generated classes that a member must not hide; our own fields
# (padding, raw char arrays and enums, anonymous members) have names with a space
# in them ("pad 0"), which no C member can have
_RESERVED = {"_fields_", "_pack_", "_anonymous_", "_members_", "_btf_name_", "_btf_id_", "_field_types_", "_int_bits_",
             "_b_base_", "_b_needsfree_", "_objects", "to_python"}


def _reserved(n: str) -> bool:
    return n in _RESERVED or (n.startswith("__") and n.endswith("__"))


def _safe_name(name: str, taken: set) -> str:
    """The member name as a Python attribute (kept as is unless it collides with ours)."""
    base = name if name.isidentifier() else "f_" + "".join(c if c.isalnum() else "_" for c in name)
    n, i = base, 1
    while n in taken or _reserved(n):
        i += 1
        n = f"{base}_{i}"
    taken.add(n)
    return n


class TypeFactory:
    """Makes (and caches) a ctypes type for each BTF type id of one BTF."""

    def __init__(self, btf: BTF, *, _weak: bool = False):
        # factory_for keeps the factory on its BTF and passes _weak: a strong reference back
        # would make the pair a cycle, and a dropped BTF (megabytes for vmlinux) would wait
        # for the cyclic collector instead of going at once
        self._btf = weakref.ref(btf) if _weak else (lambda: btf)
        self._cache: dict[int, object] = {}
        self._enums: dict[int, object] = {}
        self._making: list[int] = []     # the types being made, outermost first (loops, depth)

    @property
    def btf(self) -> BTF:
        btf = self._btf()
        if btf is None:
            raise Error("the BTF of these types is gone: keep the object or spec they came from")
        return btf

    def ctype(self, type_id: int):
        """The ctypes type of BTF type ``type_id``.  BTFError for a type that contains itself,
        nests deeper than the kernel allows (MAX_RESOLVE_DEPTH) or is larger than u32."""
        btf = self.btf
        tid = btf.skip_mods(type_id)
        cached = self._cache.get(tid)
        if cached is not None:
            return cached
        if tid == 0:
            raise BTFError("void has no value type")
        if tid in self._making:
            t = btf[tid]
            raise BTFError(f"{btf.source}: corrupt BTF: type [{tid}] {t.kind.name} '{t.name}' contains itself "
                           f"(through {' -> '.join(f'[{i}]' for i in self._making)}); rebuild the object")
        if len(self._making) >= MAX_RESOLVE_DEPTH:
            raise btf.too_deep(self._making[0], "nested types")
        self._making.append(tid)
        try:
            ct = self._make(tid)
        finally:
            self._making.pop()
        # ctypes itself does not check: sizes past ssize_t crash it (a corrupt nelems)
        if ctypes.sizeof(ct) > MAX_TYPE_SIZE:
            raise BTFError(f"{btf.source}: corrupt BTF: type [{tid}] {btf.type_name(tid)} is "
                           f"{ctypes.sizeof(ct)} bytes, more than BTF's 32-bit sizes allow")
        self._cache[tid] = ct
        return ct

    def _make(self, tid: int):
        btf = self.btf
        t = btf[tid]
        k = t.kind
        if k == Kind.INT:
            if t.encoding & INT_BOOL and t.size == 1:
                ct = ctypes.c_bool
            elif t.size in (1, 2, 4, 8):
                ct = _INTS[(t.size, t.signed)]
            else:
                ct = self._array_type(ctypes.c_uint8, t.size, f"{t.name}", False)
                ct._wide_int_ = t.signed
        elif k in (Kind.ENUM, Kind.ENUM64):
            ct = _INTS.get((t.size, t.signed), ctypes.c_uint32)
        elif k == Kind.PTR:
            ct = ctypes.c_uint64 if btf.pointer_size == 8 else ctypes.c_uint32
        elif k == Kind.FLOAT:
            ct = {4: ctypes.c_float, 8: ctypes.c_double}.get(t.size) or \
                self._array_type(ctypes.c_uint8, t.size, t.name, False)
        elif k == Kind.ARRAY:
            elem = self.ctype(t.elem_type) if t.nelems or btf.skip_mods(t.elem_type) else ctypes.c_uint8
            et = btf.resolve(t.elem_type)
            is_char = et is not None and et.kind == Kind.INT and et.size == 1 and (
                bool(et.encoding & INT_CHAR) or et.name in ("char", "signed char"))
            if is_char:
                elem = ctypes.c_char
            if t.nelems * ctypes.sizeof(elem) > MAX_TYPE_SIZE:
                raise BTFError(f"{btf.source}: corrupt BTF: array [{tid}] of {t.nelems} x {ctypes.sizeof(elem)} "
                               f"bytes is larger than BTF's 32-bit sizes allow")
            ct = self._array_type(elem, t.nelems, btf.type_name(tid), is_char)
        elif k in (Kind.STRUCT, Kind.UNION, Kind.DATASEC):
            ct = self._record_type(tid)
        elif k == Kind.VAR:
            ct = self.ctype(t.type_id)
        else:
            raise BTFError(f"BTF type [{tid}] {k.name} {t.name!r} has no value representation")
        return ct

    def enum_class(self, type_id: int):
        """A Python IntEnum for a BTF enum (for names in reprs and conversions)."""
        tid = self.btf.skip_mods(type_id)
        cls = self._enums.get(tid)
        if cls is None:
            t = self.btf[tid]
            names = {}
            for v in t.values:
                if v.name not in names and v.name.isidentifier():
                    names[v.name] = v.value
            cls = enum.IntEnum(t.name or f"enum_{tid}", names or {"_EMPTY": 1 << 70}) \
                if names else None
            self._enums[tid] = cls
        return cls

    @staticmethod
    def _array_type(elem, n: int, name: str, text: bool):
        base = elem * n
        return type(name.replace(" ", "_"), (TypedArray, base), {"_btf_name_": name, "_text_": text,
                                                                 "_length_": n, "_type_": elem})

    def _record_type(self, tid: int):
        btf = self.btf
        t = btf[tid]
        union = t.kind == Kind.UNION
        if t.kind == Kind.DATASEC:
            members = [(btf[s.type_id].name, btf[s.type_id].type_id, 8 * s.offset, 0) for s in t.secinfos]
        else:
            members = [(m.name, m.type_id, m.bit_offset, m.bitfield_size) for m in t.members]
        size = t.size
        fields: list = []
        anonymous: list = []
        props: dict = {}
        field_types: dict = {}       # raw field -> its ctypes type (for properties)
        int_bits: dict = {}          # plain integer member -> its width (to check values)
        shown: list = []
        taken: set = set()
        pos = 0                      # next free byte (structs)
        pad = 0
        for i, (name, mtid, bit_off, bitsz) in enumerate(members):
            mt = btf.resolve(mtid)
            is_bitfield = bool(bitsz) or bit_off % 8 or (mt is not None and mt.kind == Kind.INT
                                                         and mt.bits and mt.bits != 8 * mt.size)
            if is_bitfield:
                bits = bitsz or (mt.bits if mt is not None and mt.kind == Kind.INT else 8 * btf.size_of(mtid))
                # the kernel refuses bitfields wider than 128 bits and members past the end
                # (kernel/bpf/btf.c btf_int_check_member, btf_struct_check_member)
                if not 0 < bits <= 128 or bit_off + bits > 8 * size:
                    raise BTFError(f"{btf.source}: corrupt BTF: {btf.type_name(tid)} [{tid}] member {name!r}: "
                                   f"{bits} bits at bit {bit_off} do not fit in its {size} bytes")
                pyname = _safe_name(name or f"bf{i}", taken)
                is_enum = mt is not None and mt.kind in (Kind.ENUM, Kind.ENUM64)
                props[pyname] = _bitfield_property(bit_off // 8, bit_off % 8, bits, bool(mt and mt.signed),
                                                   self.enum_class(mtid) if is_enum else None)
                shown.append(pyname)
                continue
            ct = self.ctype(mtid)
            off = bit_off // 8
            if off + ctypes.sizeof(ct) > size:
                raise BTFError(f"{btf.source}: corrupt BTF: {btf.type_name(tid)} [{tid}] member {name!r} "
                               f"[{off}, {off + ctypes.sizeof(ct)}) lies past its end ({size} bytes)")
            if union:
                if off:
                    raise BTFError(f"union {t.name!r} member {name!r} at non-zero offset {off}")
            else:
                if off < pos:
                    # overlap (e.g. after a bitfield region): fall back to a property view
                    pyname = _safe_name(name or f"anon{i}", taken)
                    props[pyname] = _view_property(off, ct)
                    shown.append(pyname)
                    continue
                if off > pos:
                    fields.append((f"pad {pad}", ctypes.c_uint8 * (off - pos)))
                    pad += 1
                pos = off + ctypes.sizeof(ct)
            if not name and mt is not None and mt.kind in (Kind.STRUCT, Kind.UNION):
                fname = f"anon {i}"
                fields.append((fname, ct))
                anonymous.append(fname)
                shown.extend(ct._members_)
                taken.update(ct._members_)
                int_bits.update(ct._int_bits_)
                continue
            pyname = _safe_name(name or f"f{i}", taken)
            if issubclass(ct, TypedArray) and ct._text_:
                raw = f"raw {pyname}"
                fields.append((raw, ct))
                field_types[raw] = ct
                props[pyname] = _text_property(raw)
            elif issubclass(ct, TypedArray) and ct._wide_int_ is not None:
                raw = f"raw {pyname}"
                fields.append((raw, ct))
                field_types[raw] = ct
                props[pyname] = _wide_int_property(raw, ct._wide_int_)
            elif mt is not None and mt.kind in (Kind.ENUM, Kind.ENUM64) and self.enum_class(mtid) is not None:
                raw = f"raw {pyname}"
                fields.append((raw, ct))
                field_types[raw] = ct
                props[pyname] = _enum_property(raw, self.enum_class(mtid))
            else:
                fields.append((pyname, ct))
                if ct in _INT_TYPES:
                    int_bits[pyname] = 8 * ctypes.sizeof(ct)
            shown.append(pyname)
        if not union and size > pos:
            fields.append((f"pad {pad}", ctypes.c_uint8 * (size - pos)))
        if union:   # the union's own size (members may all be smaller: alignment, bitfield regions)
            fields.append(("pad union", ctypes.c_uint8 * size))
        base = ctypes.Union if union else ctypes.Structure
        label = t.name or f"anon_{tid}"
        ns = {"_pack_": 1, "_btf_name_": label, "_members_": tuple(shown), "_btf_id_": tid,
              "_field_types_": field_types, "_int_bits_": int_bits}
        if anonymous:
            ns["_anonymous_"] = tuple(anonymous)
        ns["_fields_"] = fields
        cls = type(label.lstrip("."), (TypedStruct, base), ns)
        for name, prop in props.items():
            setattr(cls, name, prop)
        # ctypes reaches the plain fields of anonymous members; properties (bitfields,
        # char arrays, enums) of theirs are forwarded here
        for fname in anonymous:
            for name in _field_type(fields, fname)._members_:
                if name not in cls.__dict__:
                    setattr(cls, name, _forward_property(fname, name))
        if ctypes.sizeof(cls) < size:   # unions whose biggest member is a bitfield region
            raise BTFError(f"cannot lay out {btf.type_name(tid)}: {ctypes.sizeof(cls)} != {size} bytes")
        return cls

    # -- conversions ---------------------------------------------------------------

    def from_bytes(self, type_id: int, raw) -> object:
        """A typed value (copied) from raw bytes; ints for integer types, enum members for enums."""
        ct = self.ctype(type_id)
        size = ctypes.sizeof(ct)
        if len(raw) < size:
            raise Error(f"{self.btf.type_name(type_id)} is {size} bytes, got {len(raw)}")
        value = ct.from_buffer_copy(bytes(raw[:size]))
        return self._simple(type_id, value)

    def _simple(self, type_id: int, value):
        if isinstance(value, TypedArray) and value._text_:
            return _char_text(bytes(value))
        if isinstance(value, TypedArray) and value._wide_int_ is not None:
            return int.from_bytes(bytes(value), "little", signed=value._wide_int_)
        if isinstance(value, _Typed):
            return value
        v = value.value
        t = self.btf.resolve(type_id)
        if t is not None and t.kind in (Kind.ENUM, Kind.ENUM64):
            cls = self.enum_class(type_id)
            if cls is not None:
                try:
                    return cls(v)
                except ValueError:
                    return v
        return v

    def convert(self, type_id: int, value) -> bytes:
        """Raw bytes for ``value``: bytes of the right size, a typed instance, or plain Python values."""
        ct = self.ctype(type_id)
        size = ctypes.sizeof(ct)
        if isinstance(value, (bytes, bytearray, memoryview)) and not issubclass(ct, TypedArray) or \
                (isinstance(value, (bytes, bytearray, memoryview)) and len(value) == size):
            raw = bytes(value)
            if len(raw) != size:
                raise Error(f"{self.btf.type_name(type_id)} is {size} bytes, got {len(raw)}")
            return raw
        if isinstance(value, ctypes.Structure) or isinstance(value, ctypes.Union) or isinstance(value, ctypes.Array):
            if ctypes.sizeof(value) != size:
                raise Error(f"{self.btf.type_name(type_id)} is {size} bytes, got a {type(value).__name__} "
                            f"of {ctypes.sizeof(value)}")
            return bytes(value)
        inst = ct()
        self._assign(inst, ct, value, type_id)
        return bytes(inst)

    def _assign(self, inst, ct, value, type_id: int) -> None:
        if issubclass(ct, TypedStruct):
            if isinstance(value, dict):
                items = value.items()
            elif isinstance(value, (tuple, list)):
                if len(value) > len(ct._members_):
                    raise Error(f"{ct._btf_name_} has {len(ct._members_)} fields, got {len(value)} values")
                items = zip(ct._members_, value)
            else:
                raise Error(f"{ct._btf_name_} takes a dict or tuple of fields, not {type(value).__name__}")
            for name, v in items:
                if name not in ct._members_:
                    raise Error(f"{ct._btf_name_} has no field {name!r} (fields: {', '.join(ct._members_)})")
                cur = getattr(inst, name)
                if isinstance(cur, _Typed) and not (isinstance(cur, TypedArray) and cur._text_):
                    self._assign(cur, type(cur), v, 0)
                    continue
                bits = ct._int_bits_.get(name)
                if bits:   # ctypes would silently truncate
                    v = _check_int(v, bits, f"{ct._btf_name_}.{name}")
                try:
                    setattr(inst, name, v)
                except Error as e:
                    raise Error(f"{ct._btf_name_}.{name}: {e}") from None
                except (TypeError, KeyError, ValueError) as e:
                    raise Error(f"{ct._btf_name_}.{name}: cannot set {v!r} ({e})") from None
            return
        if issubclass(ct, TypedArray):
            if ct._wide_int_ is not None:
                n = ctypes.sizeof(inst)
                v = _check_int(value, 8 * n, ct._btf_name_)
                ctypes.memmove(ctypes.addressof(inst), v.to_bytes(n, "little", signed=v < 0), n)
                return
            if isinstance(value, str):
                value = value.encode()
            elif ct._text_ and isinstance(value, (list, tuple)):   # chars as numbers
                try:
                    value = bytes(c & 0xff if isinstance(c, int) else c for c in value)
                except (TypeError, ValueError) as e:
                    raise Error(f"{ct._btf_name_}: cannot set {value!r} ({e})") from None
            if isinstance(value, (bytes, bytearray)):
                if len(value) > ctypes.sizeof(inst):
                    raise Error(f"{ct._btf_name_}: {len(value)} bytes do not fit in {ctypes.sizeof(inst)}")
                ctypes.memmove(ctypes.addressof(inst), bytes(value), len(value))
                return
            if not isinstance(value, (list, tuple)):
                raise Error(f"{ct._btf_name_} takes a list, not {type(value).__name__} {value!r}")
            if len(value) > len(inst):
                raise Error(f"{ct._btf_name_}: {len(value)} elements do not fit in {len(inst)}")
            elem = ct._type_
            for i, v in enumerate(value):
                cur = inst[i]
                if isinstance(cur, _Typed):
                    self._assign(cur, type(cur), v, 0)
                    continue
                if elem in _INT_TYPES:
                    v = _check_int(v, 8 * ctypes.sizeof(elem), f"{ct._btf_name_}[{i}]")
                try:
                    inst[i] = v
                except (TypeError, ValueError) as e:
                    raise Error(f"{ct._btf_name_}[{i}]: cannot set {v!r} ({e})") from None
            return
        raise Error(f"cannot assign {value!r} to {ct.__name__}")

    def encode(self, type_id: int, value) -> bytes:
        """Like :meth:`convert`, also for integers, enums (by name) and pointers."""
        ct = self.ctype(type_id)
        if issubclass(ct, (TypedStruct, TypedArray)) and not (issubclass(ct, TypedArray) and
                                                              ct._wide_int_ is not None and isinstance(value, int)):
            return self.convert(type_id, value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.convert(type_id, value)
        if isinstance(value, str):
            t = self.btf.resolve(type_id)
            if t is not None and t.kind in (Kind.ENUM, Kind.ENUM64):
                for e in t.values:
                    if e.name == value:
                        value = e.value
                        break
                else:
                    raise Error(f"{value!r} is not an enumerator of {self.btf.type_name(type_id)}")
            else:
                value = int(value, 0)
        if isinstance(value, enum.Enum):
            value = value.value
        if not isinstance(value, int):
            raise Error(f"{self.btf.type_name(type_id)} takes an int, not {type(value).__name__} {value!r}")
        size = ctypes.sizeof(ct)
        try:   # ctypes would silently truncate: check the range
            return value.to_bytes(size, "little", signed=value < 0)
        except OverflowError:
            raise Error(f"{self.btf.type_name(type_id)}: {value} does not fit in {size} bytes") from None


def _field_type(fields: list, fname: str):
    return next(ct for n, ct in fields if n == fname)


def _forward_property(outer: str, name: str) -> property:
    """Member ``name`` of the anonymous member ``outer``."""
    def get(self):
        return getattr(getattr(self, outer), name)

    def set(self, value):
        setattr(getattr(self, outer), name, value)

    return property(get, set)


def _view_property(off: int, ct) -> property:
    def get(self):
        return ct.from_buffer(self, off) if issubclass(ct, (ctypes.Structure, ctypes.Union, ctypes.Array)) \
            else ct.from_buffer(self, off).value

    def set(self, value):
        ct.from_buffer(self, off).value = value

    return property(get, set)


# Factories of recently used BTF contents, newest last.  Loading the same object again gets
# the same ctypes types instead of new ones: types are cyclic objects (a class and its MRO),
# so a new set per load is garbage only the cyclic collector frees, and it lingers long
# enough to fragment the heap.  Bounded: the oldest factory goes past _FACTORIES_MAX.
_FACTORIES_MAX = 64
_factories: dict[bytes, TypeFactory] = {}


def _content_key(btf: BTF) -> bytes:
    key = btf.__dict__.get("_content_key")
    if key is None:
        h = _hash(btf.raw, digest_size=32)
        if btf.base is not None:       # split BTF: its ids and types continue its base's
            h.update(_content_key(btf.base))
        key = btf.__dict__["_content_key"] = h.digest()
    return key


def factory_for(btf: BTF) -> TypeFactory:
    """The (shared) TypeFactory of ``btf``: one per BTF content (see ``_factories``), kept on
    the BTF itself for speed; it refers back to the BTF only weakly."""
    f = btf.__dict__.get("_typed_factory")
    if f is None:
        key = _content_key(btf)
        f = _factories.pop(key, None)
        if f is None:
            f = TypeFactory(btf, _weak=True)
            while len(_factories) >= _FACTORIES_MAX:
                del _factories[next(iter(_factories))]
        _factories[key] = f
        btf.__dict__["_typed_factory"] = f
    if f._btf() is not btf:        # shared with an earlier BTF of the same content, maybe gone
        f._btf = weakref.ref(btf)
    return f


def _is_ctype(type_spec) -> bool:
    return isinstance(type_spec, type) and issubclass(
        type_spec, (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData))


def record_type_id(btf: BTF | None, type_spec, what: str) -> int:
    """The BTF type id named by ``type_spec``: a spelling (``"struct event"``), an id or a Type."""
    if btf is None:
        raise Error(f"{what}: the map has no BTF to find type {type_spec!r} in; pass a ctypes type")
    if isinstance(type_spec, str):
        return btf.find(type_spec).id
    if isinstance(type_spec, int):
        return type_spec
    return type_spec.id


def record_ctype(btf: BTF | None, type_spec, what: str):
    """The ctypes type of records of ``type_spec``: a ctypes type as is, or the type
    :class:`TypeFactory` makes for a BTF spelling, id or Type of ``btf``."""
    if _is_ctype(type_spec):
        return type_spec
    return factory_for(btf).ctype(record_type_id(btf, type_spec, what))


def record_decoder(btf: BTF | None, type_spec, what: str):
    """A function turning a record (bytes-like) into a typed value, for ``type_spec``:
    a BTF type spelling (``"struct event"``), a BTF type id or Type, or a ctypes type."""
    if _is_ctype(type_spec):
        ct = type_spec
        size = ctypes.sizeof(ct)

        def from_ctypes(record):
            if len(record) < size:
                raise Error(f"{what}: a {len(record)}-byte record is shorter than {ct.__name__} ({size} bytes)")
            return ct.from_buffer_copy(record[:size]) if len(record) > size else ct.from_buffer_copy(record)
        return from_ctypes
    type_id = record_type_id(btf, type_spec, what)
    factory = factory_for(btf)
    size = btf.size_of(type_id)
    name = btf.type_name(type_id)

    def from_btf(record):
        if len(record) < size:
            raise Error(f"{what}: a {len(record)}-byte record is shorter than {name} ({size} bytes)")
        return factory.from_bytes(type_id, record)
    return from_btf
