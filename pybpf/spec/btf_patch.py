"""BTFPatcher: a small writer for BTF blobs (pure, no kernel).

It edits the words of existing type records, appends types and strings, and
writes a new blob.  The loader's sanitizer (:mod:`pybpf.loader.sanitize`)
rewrites the kinds an older kernel lacks with it, and :mod:`pybpf.spec.object`
appends the ``.ksyms`` VARs with it.
"""

from __future__ import annotations

import struct

from ..errors import BTFError
from .btf import BTF, BTF_MAGIC, Kind

_HDR = struct.Struct("<HBBIIIII")


def _info(kind: int, vlen: int = 0, kflag: bool = False) -> int:
    return (int(kflag) << 31) | (kind << 24) | vlen


class BTFPatcher:
    """A mutable copy of a BTF blob's types and strings.

    Records are addressed by type id and word index (word 0 = name_off, 1 = info,
    2 = size/type, 3... = the kind's extra words).  ``to_bytes()`` writes a blob
    with a 24-byte header, types, then strings.
    """

    def __init__(self, btf: BTF):
        if btf.base is not None:
            raise BTFError("sanitizing split BTF is not supported")
        raw = btf.raw
        self.btf = btf
        self.types = bytearray(raw[btf.type_off:btf.type_off + btf.type_len])
        self.strings = bytearray(raw[btf.str_off:btf.str_off + btf.str_len])
        self._offsets = list(btf._offsets)          # word offset of each record, by id - 1
        self._string_offs: dict | None = None

    # -- records ---------------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types (the last type id)."""
        return len(self._offsets)

    def _pos(self, type_id: int, word: int) -> int:
        if not 0 < type_id <= len(self._offsets):
            raise BTFError(f"no BTF type with id {type_id}")
        return (self._offsets[type_id - 1] + word) * 4

    def word(self, type_id: int, word: int) -> int:
        return struct.unpack_from("<I", self.types, self._pos(type_id, word))[0]

    def set_word(self, type_id: int, word: int, value: int) -> None:
        struct.pack_into("<I", self.types, self._pos(type_id, word), value & 0xFFFFFFFF)

    def kind(self, type_id: int) -> int:
        return (self.word(type_id, 1) >> 24) & 0x1F

    def vlen(self, type_id: int) -> int:
        return self.word(type_id, 1) & 0xFFFF

    def set_info(self, type_id: int, kind: int, vlen: int = 0, kflag: bool = False) -> None:
        self.set_word(type_id, 1, _info(kind, vlen, kflag))

    def append(self, words: list) -> int:
        """Append a record (its u32 words); returns the new type id."""
        self._offsets.append(len(self.types) // 4)
        self.types += struct.pack(f"<{len(words)}I", *[w & 0xFFFFFFFF for w in words])
        return len(self._offsets)

    def add_int(self, name: str, size: int, encoding: int = 0) -> int:
        return self.append([self.add_string(name), _info(Kind.INT), size, (encoding << 24) | (size * 8)])

    def add_var(self, name: str, type_id: int, linkage: int) -> int:
        return self.append([self.add_string(name), _info(Kind.VAR), type_id, linkage])

    # -- strings ---------------------------------------------------------------------

    def string(self, offset: int) -> str:
        end = self.strings.index(b"\0", offset)
        return self.strings[offset:end].decode("utf-8", "replace")

    def add_string(self, s: str) -> int:
        """The offset of ``s`` in the string section, appending it if it is not there."""
        if self._string_offs is None:
            self._string_offs = {}
            pos = 0
            for part in bytes(self.strings).split(b"\0"):
                self._string_offs.setdefault(part, pos)
                pos += len(part) + 1
        raw = s.encode()
        off = self._string_offs.get(raw)
        if off is None:
            off = len(self.strings)
            self.strings += raw + b"\0"
            self._string_offs[raw] = off
        return off

    def rename_in_place(self, offset: int, old: str, new: str) -> None:
        """Overwrite the string at ``offset`` with one of the same length (shared by every user)."""
        a, b = old.encode(), new.encode()
        if len(a) != len(b) or self.strings[offset:offset + len(a)] != a:
            raise BTFError(f"cannot rename string {old!r} at {offset}")
        self.strings[offset:offset + len(b)] = b
        self._string_offs = None

    # -- output ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        hdr = _HDR.pack(BTF_MAGIC, 1, 0, _HDR.size, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)

    def to_btf(self, source: str | None = None) -> BTF:
        return BTF(self.to_bytes(), source=source or self.btf.source)
