"""A raw BTF blob writer for tests: one method per kind, each returning the new type id."""

from __future__ import annotations

import struct

from pybpf.spec.btf import BTF


class BTFBuilder:
    """Writes a raw BTF blob: one method per kind, each returning the new type id.

    For split BTF pass the base's type count + 1 and string section length."""

    def __init__(self, first_id: int = 1, base_strings: dict | None = None, str_base: int = 0):
        self.records: list[bytes] = []
        self.first_id = first_id
        self.str_base = str_base
        split = bool(base_strings or str_base)    # split BTF: its strings follow the base's
        self.strings = bytearray() if split else bytearray(b"\0")
        self.str_offs = dict(base_strings) if base_strings else ({} if split else {"": 0})

    def s(self, name: str) -> int:
        if name not in self.str_offs:
            self.str_offs[name] = self.str_base + len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.str_offs[name]

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0,
            name_off: int | None = None) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        off = self.s(name) if name_off is None else name_off
        self.records.append(struct.pack("<III", off, info, size_or_type) + extra)
        return self.first_id + len(self.records) - 1

    def int_(self, name, size, enc=0, bits=None, bit_off=0, signed=False):
        enc |= int(signed)
        return self.add(name, 1, 0, size, struct.pack("<I", (enc << 24) | (bit_off << 16) | (bits or 8 * size)))

    def ptr(self, t): return self.add("", 2, 0, t)
    def typedef(self, name, t): return self.add(name, 8, 0, t)
    def volatile(self, t): return self.add("", 9, 0, t)
    def const(self, t): return self.add("", 10, 0, t)
    def restrict(self, t): return self.add("", 11, 0, t)
    def type_tag(self, tag, t, kflag=0): return self.add(tag, 18, 0, t, kflag=kflag)
    def fwd(self, name, union=False): return self.add(name, 7, 0, 0, kflag=int(union))
    def float_(self, name, size): return self.add(name, 16, 0, size)
    def func(self, name, proto, linkage=1): return self.add(name, 12, linkage, proto)
    def var(self, name, t, linkage=1): return self.add(name, 14, 0, t, struct.pack("<I", linkage))

    def array(self, elem, nelems, index=1):
        return self.add("", 3, 0, 0, struct.pack("<III", elem, index, nelems))

    def composite(self, kind, name, size, members, kflag=0):
        """members: (name, type, bit_offset[, bitfield_size])"""
        extra = b""
        for m in members:
            bits = m[3] if len(m) > 3 else 0
            extra += struct.pack("<III", self.s(m[0]), m[1], (bits << 24) | m[2] if kflag else m[2])
        return self.add(name, kind, len(members), size, extra, kflag)

    def record(self, kind, name, size, members, kflag=1):
        """A struct (4) or union (5) in the kflag=1 bitfield encoding unless told otherwise."""
        return self.composite(kind, name, size, members, kflag)

    def struct(self, name, size, members, kflag=0): return self.composite(4, name, size, members, kflag)
    def union(self, name, size, members, kflag=0): return self.composite(5, name, size, members, kflag)

    def set_member_type(self, type_id, index, member_type):
        rec = bytearray(self.records[type_id - self.first_id])
        struct.pack_into("<I", rec, 12 + 12 * index + 4, member_type)
        self.records[type_id - self.first_id] = bytes(rec)

    def enum(self, name, values, size=4, signed=False):
        extra = b"".join(struct.pack("<II", self.s(n), v & 0xFFFFFFFF) for n, v in values)
        return self.add(name, 6, len(values), size, extra, int(signed))

    def enum64(self, name, values, size=8, signed=False):
        extra = b""
        for n, v in values:
            v &= (1 << 64) - 1
            extra += struct.pack("<III", self.s(n), v & 0xFFFFFFFF, v >> 32)
        return self.add(name, 19, len(values), size, extra, int(signed))

    def func_proto(self, ret, params):
        extra = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self.add("", 13, len(params), ret, extra)

    def datasec(self, name, size, secinfos):
        return self.add(name, 15, len(secinfos), size, b"".join(struct.pack("<III", *s) for s in secinfos))

    def decl_tag(self, tag, t, component_idx=-1):
        return self.add(tag, 17, 0, t, struct.pack("<i", component_idx))

    def to_bytes(self) -> bytes:
        types = b"".join(self.records)
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)

    def btf(self, base=None, source: str = "hand-built") -> BTF:
        return BTF(self.to_bytes(), source=source, base=base)
