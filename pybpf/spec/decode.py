"""Decode and encode raw bytes by BTF type into plain Python values.

Integers become ints, enums their enumerator name (or the int if unnamed),
char arrays strings (up to the first NUL), other arrays lists, structs and
unions dicts, pointers ints.  Bitfields are honoured.
"""

from __future__ import annotations

from typing import Any

from ..errors import BTFError, Error
from .btf import BTF, INT_CHAR, Kind


def _is_char(btf: BTF, type_id: int) -> bool:
    """A C ``char`` (not ``unsigned char``/``__u8``, which hold bytes, not text)."""
    t = btf.resolve(type_id)
    return t is not None and t.kind == Kind.INT and t.size == 1 and (
        bool(t.encoding & INT_CHAR) or t.name in ("char", "signed char"))


def _text(b: bytes):
    """The C string in a char array if it is printable, else None."""
    s = b.split(b"\0", 1)[0]
    try:
        text = s.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def decode(btf: BTF, type_id: int, raw, offset: int = 0) -> Any:
    """The value of type ``type_id`` stored at ``raw[offset:]``."""
    t = btf.resolve(type_id)
    if t is None:
        return None
    k = t.kind
    if k == Kind.INT:
        size = t.size
        v = int.from_bytes(raw[offset:offset + size], "little", signed=t.signed)
        return bool(v) if t.encoding & 4 and size == 1 else v
    if k in (Kind.ENUM, Kind.ENUM64):
        v = int.from_bytes(raw[offset:offset + t.size], "little", signed=t.signed)
        for e in t.values:
            if e.value == v:
                return e.name
        return v
    if k == Kind.PTR:
        return int.from_bytes(raw[offset:offset + btf.pointer_size], "little")
    if k == Kind.FLOAT:
        import struct
        fmt = {4: "<f", 8: "<d"}.get(t.size)
        return struct.unpack_from(fmt, raw, offset)[0] if fmt else bytes(raw[offset:offset + t.size])
    if k == Kind.ARRAY:
        esize = btf.size_of(t.elem_type)
        if _is_char(btf, t.elem_type):
            text = _text(bytes(raw[offset:offset + t.nelems]))
            if text is not None:
                return text
        return [decode(btf, t.elem_type, raw, offset + i * esize) for i in range(t.nelems)]
    if k in (Kind.STRUCT, Kind.UNION):
        out = {}
        for i, m in enumerate(t.members):
            name = m.name or f"_{i}"
            if m.bitfield_size or (m.bit_offset % 8):
                out[name] = _bitfield(btf, m, raw, offset)
            else:
                out[name] = decode(btf, m.type_id, raw, offset + m.bit_offset // 8)
        return out
    if k == Kind.DATASEC:
        return {btf[s.type_id].name: decode(btf, s.type_id, raw, offset + s.offset) for s in t.secinfos}
    if k == Kind.VAR:
        return decode(btf, t.type_id, raw, offset)
    raise BTFError(f"cannot decode a value of type [{t.id}] {k.name}")


def _bitfield(btf: BTF, m, raw, offset: int) -> int:
    t = btf.resolve(m.type_id)
    bits = m.bitfield_size or (t.bits if t is not None and t.kind == Kind.INT else 8 * btf.size_of(m.type_id))
    start = offset + m.bit_offset // 8
    nbytes = (m.bit_offset % 8 + bits + 7) // 8
    word = int.from_bytes(raw[start:start + nbytes], "little")
    v = (word >> (m.bit_offset % 8)) & ((1 << bits) - 1)
    if t is not None and t.signed and v >> (bits - 1):
        v -= 1 << bits
    return v


def encode(btf: BTF, type_id: int, value) -> bytes:
    """Bytes of type ``type_id`` for ``value`` (the inverse of :func:`decode`; dicts may omit fields,
    which are zero)."""
    size = btf.size_of(type_id)
    buf = bytearray(size)
    _encode_into(btf, type_id, value, buf, 0)
    return bytes(buf)


def _encode_into(btf: BTF, type_id: int, value, buf: bytearray, offset: int) -> None:
    t = btf.resolve(type_id)
    if t is None:
        raise Error("cannot encode a value of type void")
    k = t.kind
    size = btf.size_of(type_id)
    if isinstance(value, (bytes, bytearray, memoryview)) and k not in (Kind.ARRAY,) or \
            (isinstance(value, (bytes, bytearray)) and len(value) == size):
        raw = bytes(value)
        if len(raw) > size:
            raise Error(f"{btf.type_name(type_id)} is {size} bytes, got {len(raw)}")
        buf[offset:offset + len(raw)] = raw
        return
    if k in (Kind.INT, Kind.PTR, Kind.ENUM, Kind.ENUM64):
        if isinstance(value, str) and k in (Kind.ENUM, Kind.ENUM64):
            names = {e.name: e.value for e in t.values}
            if value not in names:
                raise Error(f"{value!r} is not an enumerator of {btf.type_name(type_id)}")
            value = names[value]
        if isinstance(value, str):
            value = int(value, 0)
        buf[offset:offset + size] = int(value).to_bytes(size, "little", signed=int(value) < 0)
        return
    if k == Kind.ARRAY:
        esize = btf.size_of(t.elem_type)
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, (bytes, bytearray)) and esize == 1:
            if len(value) > t.nelems:
                raise Error(f"{len(value)} bytes do not fit in {btf.type_name(type_id)}")
            buf[offset:offset + len(value)] = value
            return
        for i, v in enumerate(value):
            if i >= t.nelems:
                raise Error(f"too many elements for {btf.type_name(type_id)}")
            _encode_into(btf, t.elem_type, v, buf, offset + i * esize)
        return
    if k in (Kind.STRUCT, Kind.UNION):
        if not isinstance(value, dict):
            raise Error(f"{btf.type_name(type_id)} takes a dict of fields, not {type(value).__name__}")
        members = {m.name: m for m in t.members}
        for name, v in value.items():
            m = members.get(name)
            if m is None:
                raise Error(f"{btf.type_name(type_id)} has no field {name!r} (fields: {', '.join(members)})")
            if m.bitfield_size:
                raise Error(f"field {name!r} is a bitfield; pybpf cannot set bitfields from the command line yet")
            _encode_into(btf, m.type_id, v, buf, offset + m.bit_offset // 8)
        return
    raise Error(f"cannot encode a value of type {btf.type_name(type_id)}")
