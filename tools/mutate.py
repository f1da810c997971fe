"""Mutation testing of pybpf: one small bug at a time, does the suite notice?

    python tools/mutate.py                      # every set, 4 workers
    python tools/mutate.py --set core --set typed -j 2
    python tools/mutate.py --only K1 --only T3  # mutants by id (prefix)
    python tools/mutate.py --with tests/test_core.py   # plus uncommitted files of the tree

Each worker gets its own copy of the tree at a commit (``git archive REF``, HEAD by
default, plus the ``--with`` files as they are in the working tree), under
``--dir`` (/tmp/mutate/<worker>), with the C helper built in place there: mutants are
never written into the working tree, so other work going on in it is neither
disturbed nor tested.  A mutant is one textual change (``old`` -> ``new``, ``old``
found exactly once in its file): an off-by-one, ``<`` for ``<=``, a dropped
rounding, padding or check, a wrong mask or shift.  For each set the relevant test
files run first on the unmutated copy; the tests that fail there (the kernel may
refuse something) are deselected from every mutant's run.  A mutant is *killed*
when a test fails (or the run times out), *survived* otherwise.  C mutants rebuild
the helper in their worker's copy.

Prints one line per mutant, then the score per set (module); ``--json FILE``
writes the results.  Needs root and the kernel, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Mutant:
    def __init__(self, mid: str, what: str, path: str, old: str, new: str):
        self.id, self.what, self.path, self.old, self.new = mid, what, path, old, new


def M(mid, what, path, old, new):
    return Mutant(mid, what, path, old, new)


CORE = "pybpf/loader/core.py"
TYPED = "pybpf/spec/typed.py"
MAPS = "pybpf/maps.py"
LOADER = "pybpf/loader/__init__.py"
CLI = "pybpf/cli.py"

SETS: dict[str, dict] = {}

# -- CO-RE (pybpf/loader/core.py) ---------------------------------------------------------------

SETS["core"] = {"tests": ["tests/test_core.py", "tests/test_relocate.py", "tests/test_kernel_layouts.py",
                          "tests/test_cache.py", "tests/test_spec.py", "tests/test_load.py",
                          "tests/test_btf_programs.py", "tests/test_tools_programs.py", "tests/test_errors.py"],
                "mutants": [
 M("K1", "bitfield container check off by one (>=)", CORE,
   "while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:", "while bit_off + bit_sz - byte_off * 8 >= byte_sz * 8:"),
 M("K2", "bitfield container start not aligned down", CORE,
   "        byte_off = bit_off // 8 // byte_sz * byte_sz\n        while", "        byte_off = bit_off // 8\n        while"),
 M("K3", "LSHIFT_U64 off by one", CORE,
   "val = 64 - (bit_off + bit_sz - byte_off * 8)", "val = 64 - (bit_off + bit_sz - byte_off * 8) + 1"),
 M("K4", "RSHIFT_U64 off by one", CORE, "        val = 64 - bit_sz\n", "        val = 64 - bit_sz - 1\n"),
 M("K5", "FIELD_SIGNED ignores signed enums", CORE, "(mt.kind in _ANY_ENUM and mt.kind_flag)", "False"),
 M("K6", "bitfield 64-bit limit off by one", CORE, "            if byte_sz >= 8:", "            if byte_sz > 8:"),
 M("K7", "bitfield offsets validated", CORE, "validate = not bitfield", "validate = True"),
 M("K8", "first accessor (array of the root) ignored", CORE,
   "spec.bit_offset = raw[0] * _size(btf, tid, what) * 8", "spec.bit_offset = 0"),
 M("K9", "local array index bound off by one", CORE,
   "if not _is_flex_arr(btf, spec.accessors[-1], t) and idx >= t.nelems:",
   "if not _is_flex_arr(btf, spec.accessors[-1], t) and idx > t.nelems:"),
 M("K10", "member index bound off by one", CORE, "            if idx >= t.vlen:", "            if idx > t.vlen:"),
 M("K11", "any zero-length array is flexible", CORE, "    return acc.idx == btf[acc.type_id].vlen - 1", "    return True"),
 M("K12", "essential name: a fourth underscore accepted", CORE,
   'if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":',
   'if name[i] != "_" and name[i + 1:i + 4] == "___":'),
 M("K13", "essential name: the first character never a cut", CORE,
   "for i in range(len(name) - 5, -1, -1):", "for i in range(len(name) - 5, 0, -1):"),
 M("K14", "field compat: INT bit offsets ignored", CORE,
   "            return lbtf[lid].int_offset == 0 and tbtf[tid].int_offset == 0", "            return True"),
 M("K15", "types compat: FUNC_PROTO arity ignored", CORE,
   "            if lt.vlen != tt.vlen:\n                return False\n            for lp, tp in zip(lt.params, tt.params):\n                if level",
   "            for lp, tp in zip(lt.params, tt.params):\n                if level"),
 M("K16", "types match: enum size ignored", CORE,
   "if tk not in _ANY_ENUM or lt.size != tt.size or lt.vlen > tt.vlen:", "if tk not in _ANY_ENUM or lt.vlen > tt.vlen:"),
 M("K17", "types match: INT signedness ignored", CORE,
   "            return (lk == tk and lt.size == tt.size\n                    and (lt.encoding & INT_SIGNED) == (tt.encoding & INT_SIGNED))",
   "            return (lk == tk and lt.size == tt.size)"),
 M("K18", "types match: array length ignored", CORE,
   "if lk != tk or lt.nelems != tt.nelems:", "if lk != tk:"),
 M("K19", "member search: speculative offset not undone", CORE,
   "        targ.bit_offset -= m.bit_offset\n        targ.raw.pop()", "        targ.raw.pop()"),
 M("K20", "enumerators matched by full name", CORE, "if essential_name(v.name) == ess:", "if v.name == lacc.name:"),
 M("K21", "offset ambiguity not detected", CORE, "elif targ.bit_offset != first_targ.bit_offset:", "elif False:"),
 M("K22", "decision ambiguity: values not compared", CORE,
   "elif cres.poison != first.poison or cres.new != first.new:", "elif cres.poison != first.poison:"),
 M("K23", "candidates never shrunk to the matches", CORE,
   "self.cands[relo.type_id] = matched      # libbpf", "pass  # self.cands[relo.type_id] = matched      # libbpf"),
 M("K24", "module BTF searched even when vmlinux has the type", CORE,
   "    if cands:\n        return cands\n    for name, mod in modules():", "    for name, mod in modules():"),
 M("K25", "32-bit enum values not sign-extended", CORE, "        if v >= 1 << 31:        # libbpf", "        if False:        # libbpf"),
 M("K26", "ENUMVAL_VALUE checked on all 64 bits", CORE, "                res.validate_mask = _M32", "                pass"),
 M("K27", "size change allowed for signed ints", CORE,
   "and ot.encoding != INT_SIGNED and nt.encoding != INT_SIGNED))", "))"),
 M("K28", "ALU immediate not checked", CORE, "if res.validate and (imm & mask) != (orig & mask):", "if False:"),
 M("K29", "LDX/ST/STX offset not checked", CORE, "if res.validate and off != orig:", "if False:"),
 M("K30", "LDX offset limit 0xFFFF", CORE, "if new > 0x7FFF:", "if new > 0xFFFF:"),
 M("K31", "ld_imm64 upper half dropped", CORE,
   "_INSN.pack_into(insns, (idx + 1) * 8, 0, 0, 0, _s32(new >> 32))", "_INSN.pack_into(insns, (idx + 1) * 8, 0, 0, 0, 0)"),
 M("K32", "poison: one slot of an ld_imm64", CORE, "slots = 2 if insns[idx * 8] == I.LD_IMM64 else 1", "slots = 1"),
 M("K33", "_s32 off by one", CORE, "return v - (1 << 32) if v >= 1 << 31 else v", "return v - (1 << 32) if v > 1 << 31 else v"),
 M("K34", "type relocations without a match poisoned", CORE,
   "    if spec is None:\n        return 0, True", "    if spec is None:\n        raise _Poison"),
 M("K35", "pointer size 4", CORE, "            return nelems * _pointer_size(btf)", "            return nelems * 4"),
 M("K36", "nested array sizes not multiplied", CORE, "            nelems *= t.nelems", "            nelems = t.nelems"),
 M("K37", "failure_in_log: ld_imm64 second slot off", CORE, "(f.insn + 1 == idx and", "(f.insn - 1 == idx and"),
 M("K38", "records of programs not loaded resolved", CORE,
   "            if prog is not None and prog.name not in programs:\n                continue",
   "            if False:\n                continue"),
 M("K39", "bitfield container grows by a byte", CORE, "            byte_sz *= 2", "            byte_sz += 1"),
 M("K40", "FIELD_EXISTS always 1", CORE,
   "        return (1 if spec is not None else 0), 0, 0, True", "        return 1, 0, 0, True"),
 M("K41", "load size of an array field: the whole array", CORE,
   "    while type_id and btf[type_id].kind == Kind.ARRAY:", "    while False:"),
 M("K42", "target array index bound off by one", CORE,
   "and lacc.idx >= t.nelems:", "and lacc.idx > t.nelems:"),
 M("K43", "target array element offset in bytes", CORE,
   'targ.bit_offset += lacc.idx * _size(tbtf, tid, f"candidate [{targ.root_type_id}]") * 8',
   "targ.bit_offset += lacc.idx * 8"),
 M("K44", "enumerator index bound off by one", CORE, "or raw[0] >= t.vlen:", "or raw[0] > t.vlen:"),
 M("K45", "TYPE_SIZE 0", CORE, "    return _size(spec.btf, spec.root_type_id, where), True", "    return 0, True"),
 M("K46", "TYPE_ID_TARGET gives the local id", CORE,
   "        return spec.root_type_id, False    # ids", "        return 0, False    # ids"),
 M("K47", "bitfield BYTE_OFFSET: the byte of the first bit", CORE,
   "    if kind == CoreKind.FIELD_BYTE_OFFSET:\n        val = byte_off\n",
   "    if kind == CoreKind.FIELD_BYTE_OFFSET:\n        val = bit_off // 8\n"),
 M("K48", "anonymous members not searched", CORE,
   "        if not m.name:\n            found = _match_member(", "        if False:\n            found = _match_member("),
]}

# -- typed values (pybpf/spec/typed.py) ----------------------------------------------------------

SETS["typed"] = {"tests": ["tests/test_typed.py", "tests/test_maps.py", "tests/test_map_types.py",
                           "tests/test_percpu_sizes.py", "tests/test_kernel_layouts.py", "tests/test_externs.py",
                           "tests/test_cli.py", "tests/test_btf_limits.py", "tests/test_ringbuf_batch.py",
                           "tests/test_ringbuf_perf.py", "tests/test_arena.py", "tests/test_load.py"],
                 "mutants": [
 M("T1", "bitfield bytes rounded down", TYPED, "nbytes = (bit_off + bits + 7) // 8", "nbytes = (bit_off + bits) // 8"),
 M("T2", "signed bitfield: sign bit one too high", TYPED, "if signed and v >> (bits - 1):", "if signed and v >> bits:"),
 M("T3", "signed bitfield: wrong bias", TYPED, "            v -= 1 << bits\n", "            v -= 1 << (bits - 1)\n"),
 M("T4", "bitfield set: old bits kept", TYPED,
   "word = (word & ~(mask << bit_off)) | ((value & mask) << bit_off)", "word = word | ((value & mask) << bit_off)"),
 M("T5", "int range: one past the top accepted", TYPED,
   "if not -(1 << (bits - 1)) <= value < (1 << bits):", "if not -(1 << (bits - 1)) <= value <= (1 << bits):"),
 M("T6", "char array: an exact fit refused", TYPED,
   "        if len(value) > len(arr):\n            raise Error(f\"{len(value)} bytes do not fit",
   "        if len(value) >= len(arr):\n            raise Error(f\"{len(value)} bytes do not fit"),
 M("T7", "char array: old bytes left behind", TYPED,
   "        ctypes.memset(ctypes.addressof(arr), 0, len(arr))\n", "        pass\n"),
 M("T8", "1-byte holes not padded", TYPED,
   "                if off > pos:\n                    fields.append", "                if off > pos + 1:\n                    fields.append"),
 M("T9", "trailing padding dropped", TYPED, "        if not union and size > pos:", "        if False:"),
 M("T10", "'char' arrays without the CHAR encoding are not text", TYPED,
   'bool(et.encoding & INT_CHAR) or et.name in ("char", "signed char"))', "bool(et.encoding & INT_CHAR))"),
 M("T11", "wide ints read unsigned", TYPED,
   'return int.from_bytes(bytes(_raw_field(self, field)), "little", signed=signed)',
   'return int.from_bytes(bytes(_raw_field(self, field)), "little", signed=False)'),
 M("T12", "signed enums unsigned", TYPED,
   "ct = _INTS.get((t.size, t.signed), ctypes.c_uint32)", "ct = _INTS.get((t.size, False), ctypes.c_uint32)"),
 M("T13", "pointers signed", TYPED,
   "ct = ctypes.c_uint64 if btf.pointer_size == 8 else ctypes.c_uint32",
   "ct = ctypes.c_int64 if btf.pointer_size == 8 else ctypes.c_uint32"),
 M("T14", "member past the end accepted", TYPED,
   "            if off + ctypes.sizeof(ct) > size:", "            if off > size:"),
 M("T15", "bitfield past the end accepted", TYPED, "bit_off + bits > 8 * size:", "bit_off + bits > 8 * size + 8:"),
 M("T16", "union member at an offset accepted", TYPED,
   "                if off:\n                    raise BTFError", "                if False:\n                    raise BTFError"),
 M("T17", "short raw bytes: no pybpf error", TYPED,
   "        if len(raw) < size:\n            raise Error(f\"{self.btf.type_name(type_id)} is {size} bytes, got {len(raw)}\")\n        value",
   "        if len(raw) < size - 1:\n            raise Error(f\"{self.btf.type_name(type_id)} is {size} bytes, got {len(raw)}\")\n        value"),
 M("T18", "convert: short bytes accepted", TYPED,
   "            if len(raw) != size:\n                raise Error", "            if len(raw) > size:\n                raise Error"),
 M("T19", "tuple with too many values truncated", TYPED,
   "if len(value) > len(ct._members_):", "if len(value) > len(ct._members_) + 1:"),
 M("T20", "struct int members not range checked", TYPED, "                if bits:   # ctypes", "                if False:   # ctypes"),
 M("T21", "array int elements not range checked", TYPED,
   "                if elem in _INT_TYPES:\n                    v = _check_int", "                if False:\n                    v = _check_int"),
 M("T22", "encode: every int signed", TYPED,
   'return value.to_bytes(size, "little", signed=value < 0)', 'return value.to_bytes(size, "little", signed=True)'),
 M("T23", "char text: bytes after the NUL kept", TYPED,
   '    s = raw.split(b"\\0", 1)[0]\n    try:\n        text', '    s = raw.rstrip(b"\\0")\n    try:\n        text'),
 M("T24", "anonymous members' properties not forwarded", TYPED,
   "                if name not in cls.__dict__:\n                    setattr(cls, name, _forward_property",
   "                if False:\n                    setattr(cls, name, _forward_property"),
 M("T25", "record shorter than its type: no pybpf error", TYPED,
   "        if len(record) < size:\n            raise Error(f\"{what}: a {len(record)}-byte record is shorter than {name}",
   "        if len(record) < size - 1:\n            raise Error(f\"{what}: a {len(record)}-byte record is shorter than {name}"),
 M("T26", "bools as ints", TYPED, "if t.encoding & INT_BOOL and t.size == 1:", "if False:"),
 M("T27", "member names may hide our attributes", TYPED, "while n in taken or _reserved(n):", "while n in taken:"),
 M("T28", "enum members not range checked by their size", TYPED,
   "bits = 8 * ctypes.sizeof(type(self)._field_types_[field])", "bits = 64"),
 M("T29", "DATASEC offsets taken as bits", TYPED,
   "btf[s.type_id].type_id, 8 * s.offset, 0)", "btf[s.type_id].type_id, s.offset, 0)"),
 M("T30", "union not padded to its size", TYPED,
   '            fields.append(("pad union", ctypes.c_uint8 * size))', "            pass"),
 M("T31", "values of different types equal by bytes", TYPED,
   "return type(self) is type(other) and bytes(self) == bytes(other)", "return bytes(self) == bytes(other)"),
 M("T32", "bitfield enum not by name", TYPED,
   "self.enum_class(mtid) if is_enum else None)", "None)"),
]}

# -- maps (pybpf/maps.py) ------------------------------------------------------------------------

SETS["maps"] = {"tests": ["tests/test_maps.py", "tests/test_map_types.py", "tests/test_percpu_sizes.py",
                          "tests/test_arena.py", "tests/test_load.py", "tests/test_errors.py", "tests/test_externs.py",
                          "tests/test_memory.py", "tests/test_btf_limits.py", "tests/test_attach.py"],
                "mutants": [
 M("P1", "per-CPU lookup buffer not padded per CPU", MAPS,
   "return bytearray(((self.value_size + 7) & ~7) * self._ncpus)", "return bytearray(self.value_size * self._ncpus)"),
 M("P2", "per-CPU values read without the padding", MAPS,
   "            stride = (self.value_size + 7) & ~7\n            return [", "            stride = self.value_size\n            return ["),
 M("P3", "per-CPU values written without the padding", MAPS,
   "            stride = (self.value_size + 7) & ~7\n            out", "            stride = self.value_size\n            out"),
 M("P4", "per-CPU list of fewer values accepted", MAPS,
   "or len(value) != self._ncpus:", "or len(value) > self._ncpus:"),
 M("P5", "keys(): the previous key buffer reused", MAPS, "            prev = bytearray(nxt)", "            prev = nxt"),
 M("P6", "items(): keys deleted meanwhile yielded", MAPS, "            if v is not _MISSING:", "            if True:"),
 M("P7", "lookup(): default ignored", MAPS,
   "        if not sc.map_lookup_elem(self.fd, self._key(key), buf):\n            return default",
   "        if not sc.map_lookup_elem(self.fd, self._key(key), buf):\n            return None"),
 M("P8", "del of a missing key silent", MAPS,
   "        if not self.delete(key):\n            raise KeyError(key)", "        self.delete(key)"),
 M("P9", "mmap of one entry only", MAPS,
   "size = max(self.value_size * self.max_entries, 1)", "size = max(self.value_size, 1)"),
 M("P10", "mmap size rounded down", MAPS,
   "size = (size + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)", "size = size & ~(mmap.PAGESIZE - 1) or mmap.PAGESIZE"),
 M("P11", "ring buffers accept element calls", MAPS, "        if self.type in _NO_ELEMENTS:", "        if False:"),
 M("P12", "push/pop on any map", MAPS, "        if self.type not in types:", "        if False:"),
 M("P13", "pop of an empty queue returns None", MAPS,
   "        if not sc.map_lookup_and_delete_elem(self.fd, None, buf):\n            if default is _RAISE:",
   "        if not sc.map_lookup_and_delete_elem(self.fd, None, buf):\n            if False:"),
 M("P14", "arena one page short", MAPS,
   "            size = self.max_entries * mmap.PAGESIZE", "            size = (self.max_entries - 1) * mmap.PAGESIZE"),
 M("P15", "push flags dropped", MAPS,
   "sc.map_update_elem(self.fd, None, self._encode_value(value), flags)",
   "sc.map_update_elem(self.fd, None, self._encode_value(value), 0)"),
 M("P16", "update flags dropped", MAPS,
   "sc.map_update_elem(self.fd, self._key(key), self._encode_value(value), flags)",
   "sc.map_update_elem(self.fd, self._key(key), self._encode_value(value), 0)"),
 M("P17", "per-CPU value read with the padding", MAPS,
   "buf[i * stride:i * stride + self.value_size]", "buf[i * stride:(i + 1) * stride]"),
 M("P18", "bloom filter always says maybe", MAPS,
   "        return sc.map_lookup_elem(self.fd, None, self._encode_value(value))", "        return True"),
 M("P19", "frozen .rodata mapped writable", MAPS,
   "prot = mmap.PROT_READ if self.flags & BPF_F_RDONLY_PROG else", "prot = mmap.PROT_READ | mmap.PROT_WRITE if 0 else"),
 M("P20", "peek of an empty stack returns None", MAPS,
   "        if not sc.map_lookup_elem(self.fd, None, buf):\n            if default is _RAISE:",
   "        if not sc.map_lookup_elem(self.fd, None, buf):\n            if False:"),
]}

# -- ring buffers (pybpf/_atomics.c, pybpf/ringbuf/, pybpf/ringbuf/perf.py) ---------------------------

_A, _R, _MP, _U, _PB = "pybpf/_atomics.c", "pybpf/ringbuf/reader.py", "pybpf/ringbuf/_mapping.py", \
    "pybpf/ringbuf/user.py", "pybpf/ringbuf/perf.py"
SETS["ringbuf"] = {"tests": ["tests/test_ringbuf_reader.py", "tests/test_ringbuf_user.py", "tests/test_ringbuf_mapping.py", "tests/test_ringbuf_producer.py", "tests/test_ringbuf_arrays.py", "tests/test_ringbuf_batch.py", "tests/test_ringbuf_asyncio.py",
                             "tests/test_ringbuf_perf.py", "tests/test_atomics.py"],
                   "mutants": [
 M("C1", "scan: record size rounded down", _A, "((size + RINGBUF_HDR_SZ + 7) & ~7ULL)", "((size + RINGBUF_HDR_SZ) & ~7ULL)"),
 M("C2", "scan: BUSY ignored", _A, "if ((len & RINGBUF_BUSY_BIT) || next > prod)", "if (next > prod)"),
 M("C3", "scan: DISCARD bit kept in the length", _A, "uint32_t size = len & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);",
   "uint32_t size = len & ~RINGBUF_BUSY_BIT;"),
 M("C4", "scan: discarded records handed out", _A, "if (len & RINGBUF_DISCARD_BIT) {", "if (0) {"),
 M("C5", "scan: record past producer_pos read", _A, "if ((len & RINGBUF_BUSY_BIT) || next > prod)",
   "if ((len & RINGBUF_BUSY_BIT))"),
 M("C6", "scan: uniform run check off", _A, "else if (size != common || start != expect)", "else if (size != common)"),
 M("C7", "commit: BUSY left set", _A, "(uint32_t)value, __ATOMIC_ACQ_REL);", "(uint32_t)value | RINGBUF_BUSY_BIT, __ATOMIC_ACQ_REL);"),
 M("C8", "sample: exports not counted", _A, "\tself->exports++;\n\treturn 0;", "\treturn 0;"),
 M("R1", "_stop_at: consumer_pos rounded down", _R, "end = cons + ((ends[k] + 7) & _ALIGN)", "end = cons + (ends[k] & _ALIGN)"),
 M("R2", "_consume: uniform stride rounded down", _R, "                stride = (common + _ROUND) & _ALIGN\n",
   "                stride = (common + _HDR) & _ALIGN\n"),
 M("R3", "_count_discards: rounded down", _R, "cons += ((length & _LEN_MASK) + _ROUND) & _ALIGN",
   "cons += ((length & _LEN_MASK) + _HDR) & _ALIGN"),
 M("R4", "_count_discards: DISCARD not counted", _R, "count += bool(length & _DISCARD)", "count += 0"),
 M("R5", "_read_typed: short record end rounded down", _R, "end = cons + ((ends[0] + 7) & _ALIGN)",
   "end = cons + (ends[0] & _ALIGN)"),
 M("R6", "_read_typed: stop before record k off by a header", _R, "end = cons + starts[k] - _HDR", "end = cons + starts[k]"),
 M("R7", "_read: unpack stride rounded down", _R,
   "_unpack_records(records, data, base + out[0] - _HDR, common, (common + _ROUND) & _ALIGN, n)",
   "_unpack_records(records, data, base + out[0] - _HDR, common, (common + _HDR + 7) & ~15 if common % 8 > 4 "
   "else (common + _ROUND) & _ALIGN, n)"),
 M("R8", "_read_typed: cap bound off by a record", _R,
   "cap = min(remaining, (limit - cons) // ((item + _ROUND) & _ALIGN))",
   "cap = min(remaining, (limit - cons) // ((item + _ROUND + 8) & _ALIGN))"),
 M("R9", "callback return ignored", _R, "    return isinstance(ret, int) and not isinstance(ret, bool) and ret < 0",
   "    return False"),
 M("R10", "_LEN_MASK keeps DISCARD", _MP, "_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)", "_LEN_MASK = 0xFFFFFFFF & ~_BUSY"),
 M("U1", "reserve: total rounded down", _U, "        total = (n + _ROUND) & _ALIGN\n        self._take()",
   "        total = (n + _HDR) & _ALIGN\n        self._take()"),
 M("U2", "write: total rounded down", _U,
   "total = self._check_size(n) if n > self.max_sample else (n + _ROUND) & _ALIGN",
   "total = self._check_size(n) if n > self.max_sample else (n + _HDR) & _ALIGN"),
 M("U3", "write_uniform: stride rounded down", _U, "        stride = (length + _ROUND) & _ALIGN\n        want",
   "        stride = (length + _HDR) & _ALIGN\n        want"),
 M("U4", "write_each: total rounded down", _U, "            total = (size + _ROUND) & _ALIGN\n            if self.size",
   "            total = (size + _HDR) & _ALIGN\n            if self.size"),
 M("U5", "_check_size: rounded down", _U, "        return (n + _ROUND) & _ALIGN\n", "        return (n + _HDR) & _ALIGN\n"),
 M("U6", "reserve: header not BUSY", _U, "                self._hdr[index] = (n | _BUSY) << _HDR_SHIFT",
   "                self._hdr[index] = n << _HDR_SHIFT"),
 M("U7", "discard: DISCARD not set", _U, 'self._commit(sample, _DISCARD, "discard")', 'self._commit(sample, 0, "discard")'),
 M("U8", "_room: a full ring refused", _U, "        return self.size - (self._prod - self._cons) >= total\n",
   "        return self.size - (self._prod - self._cons) > total\n"),
 M("U9", "max_sample: size instead of size - 8", _U, "self.max_sample = min(size - _HDR, _DYNPTR_MAX_SIZE)",
   "self.max_sample = min(size, _DYNPTR_MAX_SIZE)"),
 M("U10", "_packer: pad off by one", _U,
   "        pad = stride - _HDR - length\n        one = f\"{_HDR}x{length}s\" + (f\"{pad}x\" if pad else \"\")\n        headers",
   "        pad = max(stride - _HDR - length - 1, 0)\n        one = f\"{_HDR}x{length}s\" + (f\"{pad}x\" if pad else \"\")\n        headers"),
 M("U11", "close: pending samples left BUSY", _U, "            sample._commit(len(sample) | _DISCARD, True)\n", "            pass\n"),
 M("F1", "perf: sample length cut by one", _PB, "sample = record[12:12 + raw]", "sample = record[12:11 + raw]"),
 # equivalent mutants, kept out: perfbuf's "off + length <= size" as "<" (the copy path gives
 # the same bytes); _write_uniform's stride rounded down (its struct format fails and
 # write_batch falls back to the per-sample path)
]}

# -- the verifier's message (pybpf/loader/__init__.py) -------------------------------------------

SETS["verifier"] = {"tests": ["tests/test_verifier_message.py", "tests/test_errors.py", "tests/test_cli.py",
                              "tests/test_core.py"],
                    "mutants": [
 M("V1", "line_info lookup: a record starting at the insn skipped", LOADER,
   "recs = [r for r in linked.line_info if r[0] <= idx and", "recs = [r for r in linked.line_info if r[0] < idx and"),
 M("V2", "line_info lookup: the previous record", LOADER,
   "insn, file_off, line_off, line_col = max(recs, key=lambda r: r[0])",
   "insn, file_off, line_off, line_col = sorted(recs, key=lambda r: r[0])[-2 if len(recs) > 1 else -1]"),
 M("V3", "line_info lookup: the next record", LOADER,
   "recs = [r for r in linked.line_info if r[0] <= idx and", "recs = [r for r in linked.line_info if r[0] <= idx + 1 and"),
 M("V4", "line number off by one", LOADER, "{line_col >> 10}", "{(line_col >> 10) + 1}"),
 M("V5", "line number: wrong shift", LOADER, "{line_col >> 10}", "{line_col >> 11}"),
 M("V6", "records of the function's first insn excluded", LOADER,
   "(fn is None or r[0] >= fn[1])", "(fn is None or r[0] > fn[1])"),
 M("V7", "records of earlier functions used", LOADER, "(fn is None or r[0] >= fn[1])", "(fn is None or True)"),
 M("V8", "first instruction of the log named", LOADER,
   "last_insn = max((i for i, l in enumerate(lines) if insn_re.match(l)), default=-1)",
   "last_insn = min((i for i, l in enumerate(lines) if insn_re.match(l)), default=-1)"),
 M("V9", "log annotation: the first, not the last", LOADER,
   "src = next((l for l in reversed(lines[:last_insn + 1]) if l.startswith(\";\")), None)",
   "src = next((l for l in lines[:last_insn + 1] if l.startswith(\";\")), None)"),
 M("V10", "function name left out", LOADER, "{' (in ' + fn[0].name + ')' if fn else ''}", ""),
 M("V11", "function_at: one past the end", "pybpf/loader/relocate.py",
   "if start <= insn < start + fn.insn_cnt:", "if start <= insn <= start + fn.insn_cnt:"),
]}

# -- the command line (pybpf/cli.py) -------------------------------------------------------------

SETS["cli"] = {"tests": ["tests/test_cli.py"],
               "mutants": [
 M("L1", "--feed ignored", CLI, 'batch = samples or [default_sample(spec.btf, stype, counter["samples"])]',
   'batch = [default_sample(spec.btf, stype, counter["samples"])]'),
 M("L2", "hex records: trailing zeros dropped", CLI, "{bytes(record).hex()}", "{bytes(record).rstrip(bytes(1)).hex()}"),
 M("L3", "--count stops one record late", CLI, 'if args.count is not None and counter["records"] >= args.count:',
   'if args.count is not None and counter["records"] > args.count:'),
 M("L4", "--type ignored for user ring buffers", CLI,
   "stype = types.get(m.name) or m.record_type or guess_record_type(spec, m.name, True)",
   "stype = m.record_type or guess_record_type(spec, m.name, True)"),
 M("L5", "no sample after each record", CLI,
   "                    if users:\n                        feed()", "                    pass"),
]}


# -- the engine ----------------------------------------------------------------------------------

def _child_setup():
    # pytest children get SIGINT back (a background shell ignores it): the Ctrl-C tests need it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_copy(dest: pathlib.Path, ref: str, extra: list) -> None:
    """The tree at ``ref`` (plus the working tree's ``extra`` files) in ``dest``, helper built."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for rel in extra:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    build(dest)


def build(tree: pathlib.Path) -> None:
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=tree,
                   capture_output=True, check=True)


def run_tests(tree: pathlib.Path, tests: list, deselect: list, timeout: float, first_failure: bool):
    """(returncode or None on timeout, failed test ids, last line)."""
    tests = [t for t in tests if (tree / t.split("::")[0]).exists()]   # (an older --ref may lack some)
    if not tests:
        return 0, [], "no tests"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests]
    if first_failure:
        cmd.append("-x")
    for d in deselect:
        cmd += ["--deselect", d]
    try:
        p = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=_child_setup)
    except subprocess.TimeoutExpired:
        return None, [], "timeout"
    # "FAILED <node id> - <message>": node ids may hold spaces (parametrize ids)
    failed = [l.split(" ", 1)[1].split(" - ", 1)[0] for l in p.stdout.splitlines()
              if l.startswith(("FAILED ", "ERROR "))]
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr.strip()[-200:]
    return p.returncode, failed, last


def apply(tree: pathlib.Path, m: Mutant) -> str:
    f = tree / m.path
    orig = f.read_text()
    n = orig.count(m.old)
    if n != 1:
        raise LookupError(f"{m.id}: the text to change is found {n} times in {m.path}")
    f.write_text(orig.replace(m.old, m.new, 1))
    return orig


def _mutated(tree: pathlib.Path, m: Mutant):
    """A context manager: the tree with mutant ``m`` applied (the helper rebuilt for C)."""
    import contextlib

    @contextlib.contextmanager
    def cm():
        orig = apply(tree, m)
        try:
            if m.path.endswith(".c"):
                build(tree)
            yield
        finally:
            (tree / m.path).write_text(orig)
            if m.path.endswith(".c"):
                build(tree)
    return cm()


def run_mutant(tree: pathlib.Path, m: Mutant, tests: list, baseline: list, timeout: float) -> dict:
    """Killed only by a test that fails twice with the mutant and passes without it: timing-
    dependent tests that fail under load (and pass on the retry without the mutant) are
    deselected and the mutant run again, up to three times."""
    start = time.monotonic()
    flaky: list = []
    if m.path.endswith(".py"):
        with _mutated(tree, m):
            try:
                compile((tree / m.path).read_text(), m.path, "exec")
            except SyntaxError as e:
                return {"status": "invalid", "why": f"{e.msg} (line {e.lineno})"}
    for _ in range(3):
        with _mutated(tree, m):
            code, failed, last = run_tests(tree, tests, baseline + flaky, timeout, True)
            if code == 0:
                break
            if code is None:
                return {"status": "killed", "failed": ["timeout"], "seconds": round(time.monotonic() - start, 1)}
            if not failed:          # no test ran or pytest itself failed: a kill by the import
                return {"status": "killed", "failed": [last], "seconds": round(time.monotonic() - start, 1)}
            _, again, _ = run_tests(tree, failed, [], timeout, False)
        if again:
            _, still, _ = run_tests(tree, again, [], timeout, False)
            confirmed = [t for t in again if t not in still]
            if confirmed:
                return {"status": "killed", "failed": confirmed[:3], "flaky": flaky,
                        "seconds": round(time.monotonic() - start, 1)}
        flaky += failed
    return {"status": "SURVIVED", "flaky": flaky, "seconds": round(time.monotonic() - start, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", choices=sorted(SETS), help="mutation set (default: all)")
    ap.add_argument("--only", action="append", default=[], metavar="ID", help="mutant ids (prefixes)")
    ap.add_argument("--ref", default="HEAD", help="the commit to copy (default HEAD)")
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="PATH",
                    help="also copy this working-tree file (e.g. an uncommitted test)")
    ap.add_argument("--dir", default="/tmp/mutate", help="where the copies go")
    ap.add_argument("-j", "--jobs", type=int, default=4, help="workers (one copy each)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", metavar="FILE", help="write the results here")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    sets = args.set or list(SETS)
    todo = [(s, m) for s in sets for m in SETS[s]["mutants"]
            if not args.only or any(m.id == o or m.id.startswith(o) for o in args.only)]
    if args.list:
        for s, m in todo:
            print(f"{s:9s} {m.id:4s} {m.path}: {m.what}")
        return 0
    base = pathlib.Path(args.dir)
    jobs = max(1, min(args.jobs, len(todo)))
    t0 = time.monotonic()
    trees = [base / f"w{k}" for k in range(jobs)]
    threads = [threading.Thread(target=make_copy, args=(t, args.ref, args.extra)) for t in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # baseline: the tests that fail on the unmutated tree are left out of the mutants' runs
    baseline = {}
    for s in dict.fromkeys(s for s, _ in todo):
        code, failed, last = run_tests(trees[0], SETS[s]["tests"], [], args.timeout, False)
        baseline[s] = failed
        print(f"baseline {s}: {last}" + (f"; deselected: {failed}" if failed else ""), flush=True)
        if code is None:
            print(f"baseline {s} timed out", file=sys.stderr)
            return 2
    work: queue.Queue = queue.Queue()
    for item in todo:
        work.put(item)
    results: dict = {}
    lock = threading.Lock()

    def worker(tree: pathlib.Path):
        while True:
            try:
                s, m = work.get_nowait()
            except queue.Empty:
                return
            try:
                res = {"set": s, **run_mutant(tree, m, SETS[s]["tests"], baseline[s], args.timeout)}
            except LookupError as e:
                res = {"set": s, "status": "not applied", "why": str(e)}
            except Exception as e:      # (the engine's own failure: reported, the others go on)
                res = {"set": s, "status": "error", "why": f"{type(e).__name__}: {e}"}
            with lock:
                results[m.id] = res
                why = res.get("failed") or res.get("why") or ""
                if res.get("flaky"):
                    why = f"{why} (deselected as failing without the mutant too: {res['flaky']})"
                print(f"{res['status']:9s} {s:8s} {m.id:4s} {m.what}: {why}", flush=True)

    threads = [threading.Thread(target=worker, args=(t,)) for t in trees]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\nscore per set ({time.monotonic() - t0:.0f} s, {jobs} workers, tree at {args.ref}):")
    for s in dict.fromkeys(s for s, _ in todo):
        rs = [results[m.id] for m in SETS[s]["mutants"] if m.id in results]
        killed = sum(r["status"] == "killed" for r in rs)
        applied = sum(r["status"] in ("killed", "SURVIVED") for r in rs)
        survivors = [m.id for m in SETS[s]["mutants"] if results.get(m.id, {}).get("status") == "SURVIVED"]
        print(f"  {s:9s} {killed:3d} of {applied:3d} killed" + (f"; survived: {' '.join(survivors)}" if survivors else ""))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
