"""The ELF layer of a BPF object: its header, sections and symbols.

Every record (file header, section headers, symbols) is parsed with
pyelftools' ELF structures (``elftools.elf.structs``); pybpf walks the section
and symbol tables itself instead of going through
``elftools.elf.elffile.ELFFile``, because importing that module also imports
pyelftools' DWARF, ARM exception table, dynamic section and note support, which
a relocatable BPF object never needs: ~20 ms of every first load of an object
(tools/bench_load.py).  The walk follows ELFFile's (e_shnum 0 and SHN_XINDEX
escapes, names from the section name table) and is stricter where it bounds
offsets.

Malformed input raises ``ObjectError`` for what this module checks, and
pyelftools' ``ELFError`` (or ``IndexError``/``UnicodeDecodeError`` ...) from the
records; ``ObjectSpec`` turns the latter into ``ObjectError`` too.
"""

from __future__ import annotations

import io
import struct
from contextlib import contextmanager

from ..errors import ObjectError

SHN_XINDEX = 0xFFFF


@contextmanager
def malformed_is_object_error(path: str = ""):
    """Inside: what pyelftools (or an index past a table) raises on malformed ELF becomes an
    ``ObjectError`` that says so; ``ObjectError`` and its subclasses pass through."""
    from elftools.common.exceptions import ELFError
    try:
        yield
    except ObjectError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, UnicodeDecodeError, AssertionError,
            OverflowError, EOFError) as e:
        where = f"{path}: " if path else ""
        raise ObjectError(f"{where}malformed ELF file ({type(e).__name__}: {e}); the file may be truncated "
                          f"or not a BPF object") from None


class ELF:
    """An ELF file in memory: ``header`` (pyelftools Container), ``elfclass`` (32/64),
    ``little_endian``; :meth:`sections` and :meth:`symbols` read the tables."""

    def __init__(self, data: bytes):
        # imported here: a cached object never needs pyelftools
        from elftools.common.utils import struct_parse
        from elftools.elf.structs import ELFStructs
        if len(data) < 16 or data[:4] != b"\x7fELF":
            raise ObjectError("not an ELF file (no \\x7fELF magic or a truncated identification)")
        if data[4] not in (1, 2) or data[5] not in (1, 2):
            raise ObjectError(f"invalid ELF identification (EI_CLASS {data[4]}, EI_DATA {data[5]})")
        self.data = data
        self.elfclass = 64 if data[4] == 2 else 32
        self.little_endian = data[5] == 1
        self._parse = struct_parse
        self._stream = io.BytesIO(data)
        self.structs = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
        self.structs.create_basic_structs()
        self.header = struct_parse(self.structs.Elf_Ehdr, self._stream, 0)
        self.structs.create_advanced_structs(self.header["e_type"], self.header["e_machine"],
                                             self.header["e_ident"]["EI_OSABI"])
        self._headers = None
        self._sizes: dict = {}

    def _size(self, struct) -> int:
        """``struct.sizeof()``, once per struct (pyelftools computes it field by field each time)."""
        size = self._sizes.get(id(struct))
        if size is None:
            size = self._sizes[id(struct)] = struct.sizeof()
        return size

    def __getitem__(self, name: str):
        return self.header[name]

    def _read(self, struct, offset: int, what: str):
        if offset + self._size(struct) > len(self.data):
            raise ObjectError(f"{what} at offset {offset} runs past the end of the file "
                              f"({len(self.data)} bytes): the file is truncated")
        return self._parse(struct, self._stream, offset)

    def section_headers(self) -> list:
        """Every section header (pyelftools Containers), index 0 included."""
        if self._headers is None:
            shoff, entsize = self["e_shoff"], self["e_shentsize"]
            shdr = self.structs.Elf_Shdr
            if shoff == 0:
                self._headers = []
                return self._headers
            if entsize < self._size(shdr):
                raise ObjectError(f"section header size e_shentsize {entsize} is too small "
                                  f"(a section header is {self._size(shdr)} bytes)")
            first = self._read(shdr, shoff, "section header 0")
            # e_shnum 0: the count is in section 0's sh_size (gABI, for 0xff00 sections or more)
            count = self["e_shnum"] or first["sh_size"]
            if shoff + count * entsize > len(self.data):
                raise ObjectError(f"the section header table ({count} x {entsize} bytes at offset {shoff}) "
                                  f"runs past the end of the file ({len(self.data)} bytes): it is truncated")
            self._headers = [first] + [self._read(shdr, shoff + i * entsize, f"section header {i}")
                                       for i in range(1, count)]
        return self._headers

    def body(self, sh, name: str = "") -> bytes:
        """A section's bytes (empty for SHT_NOBITS); ObjectError if they run past the file."""
        if sh["sh_type"] in ("SHT_NOBITS", "SHT_NULL"):
            return b""
        end = sh["sh_offset"] + sh["sh_size"]
        if end > len(self.data):
            raise ObjectError(f"section {name or sh['sh_name']!r} runs past the end of the file "
                              f"({end} > {len(self.data)} bytes): the file is truncated")
        return self.data[sh["sh_offset"]:end]

    @staticmethod
    def string(table: bytes, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of a string table (as pyelftools decodes it)."""
        if offset >= len(table):
            return ""
        end = table.find(b"\0", offset)
        raw = table[offset:end if end >= 0 else len(table)]
        return raw.decode("utf-8", errors="replace")

    def section(self, name: str) -> tuple[str, dict, bytes] | None:
        """The first section called ``name``, or None."""
        return next((s for s in self.sections() if s[0] == name), None)

    def sections(self) -> list[tuple[str, dict, bytes]]:
        """[(name, header as a plain dict, bytes)] for every section, in index order."""
        headers = self.section_headers()
        if not headers:
            return []
        strndx = self["e_shstrndx"]
        if strndx == SHN_XINDEX or strndx == "SHN_XINDEX":
            strndx = headers[0]["sh_link"]
        if not 0 <= strndx < len(headers):
            raise ObjectError(f"the section name table index {strndx} is not a section "
                              f"(the file has {len(headers)})")
        names = self.body(headers[strndx])
        # sections do not overlap in an object file: their sizes add up to at most the file's
        # (each body is copied: overlapping headers would copy the file once per header)
        total = sum(sh["sh_size"] for sh in headers if sh["sh_type"] not in ("SHT_NOBITS", "SHT_NULL"))
        if total > len(self.data):
            raise ObjectError(f"the sections' sizes add up to {total} bytes, more than the file's "
                              f"{len(self.data)}: sections overlap or claim bytes the file does not have")
        out = []
        for sh in headers:
            name = self.string(names, sh["sh_name"])
            body = self.body(sh, name)
            # a plain dict: pyelftools' Container would pull pyelftools into every unpickling
            out.append((name, dict(sh), body))
        return out

    def symbols(self, symtab_index: int) -> list:
        """The symbols of the symbol table section ``symtab_index``: [(name, Container)]."""
        headers = self.section_headers()
        sh = headers[symtab_index]
        sym = self.structs.Elf_Sym
        size = self._size(sym)
        if sh["sh_entsize"] != size:
            raise ObjectError(f"symbol table entries are {sh['sh_entsize']} bytes, not {size}")
        link = sh["sh_link"]
        if not 0 < link < len(headers) or headers[link]["sh_type"] != "SHT_STRTAB":
            raise ObjectError(f"the symbol table's string table (section {link}) is not a string table")
        strings = self.body(headers[link])
        self.body(sh, ".symtab")    # its entries lie inside the file
        base, count = sh["sh_offset"], sh["sh_size"] // size
        out = []
        for i in range(count):
            s = self._read(sym, base + i * size, f"symbol {i}")
            out.append((self.string(strings, s["st_name"]), s))
        return out
