"""CO-RE relocation records and their application: what a load needs when the resolutions
are known (from the disk cache of an earlier process, or just resolved by :mod:`.core`).

The records (:class:`CoreSpec`, :class:`Resolution`, :class:`CoreFailure`), the patching of an
instruction (libbpf's bpf_core_patch_insn, src/relo_core.c), the per-object resolutions with
their disk cache (:func:`resolve_object`), their application to a linked program
(:func:`apply_core_relocations`) and the failure the verifier tripped on
(:func:`failure_in_log`).  The matching engine (:mod:`pybpf.loader.core`, 90 kB of bytecode)
is imported only when an object's resolutions are not cached: ~1.3 ms of every load.
"""

from __future__ import annotations

import struct
import weakref

from .._enum import IntEnum
from .._record import Record
from .. import _cache
from ..errors import ObjectError
from ..spec import insn as I
from ..spec.btf import BTF, Kind

POISON_IMM = 0xBAD2310          # libbpf's "bad relo" helper id: call unknown#195896080
_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1


class CoreKind(IntEnum):
    """enum bpf_core_relo_kind (include/uapi/linux/bpf.h)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12

    @property
    def log_name(self) -> str:
        """libbpf's name in its logs (core_relo_kind_str): ``byte_off``, ``type_size``..."""
        return _LOG_NAMES[self]


_LOG_NAMES = {0: "byte_off", 1: "byte_sz", 2: "field_exists", 3: "signed", 4: "lshift_u64", 5: "rshift_u64",
              6: "local_type_id", 7: "target_type_id", 8: "type_exists", 9: "type_size", 10: "enumval_exists",
              11: "enumval_value", 12: "type_matches"}
FIELD_KINDS = frozenset(range(0, 6))
TYPE_KINDS = frozenset({6, 7, 8, 9, 12})
ENUM_KINDS = frozenset({10, 11})
_ANY_ENUM = (Kind.ENUM, Kind.ENUM64)
_KIND_STR = {Kind.UNKN: "void", Kind.INT: "int", Kind.PTR: "ptr", Kind.ARRAY: "array", Kind.STRUCT: "struct",
             Kind.UNION: "union", Kind.ENUM: "enum", Kind.FWD: "fwd", Kind.TYPEDEF: "typedef",
             Kind.VOLATILE: "volatile", Kind.CONST: "const", Kind.RESTRICT: "restrict", Kind.FUNC: "func",
             Kind.FUNC_PROTO: "func_proto", Kind.VAR: "var", Kind.DATASEC: "datasec", Kind.FLOAT: "float",
             Kind.DECL_TAG: "decl_tag", Kind.TYPE_TAG: "type_tag", Kind.ENUM64: "enum64"}


class CoreError(ObjectError):
    """A CO-RE relocation that cannot be applied at all (libbpf fails the load too):
    a malformed record, an ambiguous match, or an instruction that does not hold
    what the compiler should have written."""


def _kind(btf: BTF, type_id: int) -> Kind:
    return btf[type_id].kind if type_id else Kind.UNKN


def _kind_str(btf: BTF, type_id: int) -> str:
    return _KIND_STR.get(_kind(btf, type_id), "unknown")


def _name(btf: BTF, type_id: int) -> str:
    return btf[type_id].name if type_id else ""


# -- specs -----------------------------------------------------------------------------------------

class Accessor(Record):
    """One step of a spec: the root (``name`` None), a named member of struct/union
    ``type_id`` (index ``idx``), an array element of type ``type_id``, or an enumerator."""

    _fields = ("type_id", "idx", "name")

    def __init__(self, type_id: int, idx: int, name: str | None = None):
        self.type_id = type_id
        self.idx = idx
        self.name = name


class CoreSpec(Record):
    """libbpf's struct bpf_core_spec: a relocation's meaning in one BTF."""

    _fields = ("btf", "root_type_id", "kind", "raw", "accessors", "bit_offset")

    def __init__(self, btf: BTF, root_type_id: int, kind: CoreKind, raw: list | None = None,
                 accessors: list | None = None, bit_offset: int = 0):
        self.btf = btf
        self.root_type_id = root_type_id
        self.kind = kind
        self.raw = [] if raw is None else raw  # the access string's indexes (target: as matched)
        self.accessors = [] if accessors is None else accessors  # [Accessor]
        self.bit_offset = bit_offset

    def path(self) -> str:
        """The type and the accessors as libbpf prints them: ``struct task_struct.real_parent``,
        ``struct foo[3].arr[2]``, ``enum bpf_map_type::BPF_MAP_TYPE_RINGBUF``."""
        btf, tid = self.btf, self.root_type_id
        text = f"{_kind_str(btf, tid)} {_name(btf, tid) or '<anon>'}"
        if self.kind in ENUM_KINDS and self.accessors:
            return f"{text}::{self.accessors[0].name}"
        if self.kind in FIELD_KINDS:
            for i, acc in enumerate(self.accessors):
                if acc.name is not None:
                    text += f".{acc.name}"
                elif i > 0 or acc.idx > 0:
                    text += f"[{acc.idx}]"
        return text

    def format(self) -> str:
        """libbpf's bpf_core_format_spec: ``<byte_off> [5] struct task_struct.tgid (0:93 @ offset 1268)``."""
        btf, tid = self.btf, self.root_type_id
        head = f"<{self.kind.log_name}> [{tid}] {_kind_str(btf, tid)} {_name(btf, tid) or '<anon>'}"
        if self.kind in TYPE_KINDS:
            return head
        if self.kind in ENUM_KINDS:
            if not self.accessors:
                return head
            t = btf[btf.skip_mods(tid)]
            v = t.values[self.raw[0]]
            return f"{head}::{v.name} = {v.value}"
        text = self.path().split(" ", 1)[1]
        head = f"<{self.kind.log_name}> [{tid}] {_kind_str(btf, tid)} {text}"
        raw = ":".join(str(i) for i in self.raw)
        off = f"{self.bit_offset // 8}.{self.bit_offset % 8}" if self.bit_offset % 8 else f"{self.bit_offset // 8}"
        return f"{head} ({raw} @ offset {off})"


# -- values (bpf_core_calc_*_relo) -------------------------------------------------------------------

class Resolution(Record):
    """What a relocation resolved to (libbpf's bpf_core_relo_res plus the why)."""

    _fields = ("section", "index", "insn_off", "kind", "local", "target", "orig", "new", "poison", "validate",
               "validate_mask", "orig_sz", "new_sz", "fail_memsz_adjust", "reason", "error")

    def __init__(self, section: str, index: int, insn_off: int, kind: CoreKind,
                 local: CoreSpec | None = None, target: CoreSpec | None = None, orig: int = 0,
                 new: int = 0, poison: bool = False, validate: bool = True, validate_mask: int = _M64,
                 orig_sz: int = 0, new_sz: int = 0, fail_memsz_adjust: bool = False, reason: str = "",
                 error: str | None = None):
        self.section = section
        self.index = index  # relo #index in its section, as libbpf numbers them
        self.insn_off = insn_off  # bytes in the ELF section
        self.kind = kind
        self.local = local
        self.target = target  # the first matching candidate's spec
        self.orig = orig
        self.new = new
        self.poison = poison
        self.validate = validate
        self.validate_mask = validate_mask
        self.orig_sz = orig_sz
        self.new_sz = new_sz
        self.fail_memsz_adjust = fail_memsz_adjust
        self.reason = reason  # why nothing matched (when nothing did)
        self.error = error  # the relocation cannot be applied: the load fails

    def describe(self) -> str:
        return self.local.format() if self.local is not None else f"<{self.kind.log_name}>"


# -- patching (bpf_core_patch_insn) ------------------------------------------------------------------

_BPF_LD, _BPF_LDX, _BPF_ST, _BPF_STX, _BPF_ALU, _BPF_ALU64 = 0, 1, 2, 3, 4, 7
_SIZE_BYTES = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}
_BYTES_SIZE = {4: 0x00, 2: 0x08, 1: 0x10, 8: 0x18}
_INSN = struct.Struct("<BBhi")
_MEMSZ_REASON = ("accesses field incorrectly: the local and target fields differ in size and are not both "
                 "pointers or unsigned integers (make sure you are accessing pointers, unsigned integers, "
                 "or fields of matching type and size)")


def poison(insns: bytearray, idx: int) -> None:
    """Replace instruction ``idx`` (both slots of an ld_imm64) by ``call 0xbad2310``."""
    slots = 2 if insns[idx * 8] == I.LD_IMM64 else 1
    for i in range(idx, idx + slots):
        _INSN.pack_into(insns, i * 8, I.CALL, 0, 0, POISON_IMM)


def _s32(v: int) -> int:
    v &= _M32
    return v - (1 << 32) if v >= 1 << 31 else v


def patch_insn(insns: bytearray, idx: int, res: Resolution) -> str | None:
    """Patch instruction ``idx`` with ``res``; returns the reason if it was poisoned, raises
    CoreError if the instruction is not one the relocation can apply to."""
    if res.poison:
        poison(insns, idx)
        return res.reason or "no candidate matched"
    if (idx + 1) * 8 > len(insns):
        raise CoreError(f"instruction #{idx} is outside the program")
    code, regs, off, imm = _INSN.unpack_from(insns, idx * 8)
    cls = code & 7
    orig, new = res.orig, res.new
    mask = res.validate_mask
    if cls in (_BPF_ALU, _BPF_ALU64):
        if code & 0x08:
            raise CoreError(f"insn #{idx} (ALU/ALU64) does not take an immediate operand (code 0x{code:02x})")
        if res.validate and (imm & mask) != (orig & mask):
            raise CoreError(f"unexpected insn #{idx} (ALU/ALU64) value: got {imm & _M32}, exp {orig} -> {new}")
        _INSN.pack_into(insns, idx * 8, code, regs, off, _s32(new))     # truncated to s32, as libbpf does
    elif cls in (_BPF_LDX, _BPF_ST, _BPF_STX):
        if res.validate and off != orig:
            raise CoreError(f"unexpected insn #{idx} (LDX/ST/STX) value: got {off}, exp {orig} -> {new}")
        if new > 0x7FFF:
            raise CoreError(f"insn #{idx} (LDX/ST/STX) value too big: {new}")
        if res.fail_memsz_adjust:
            poison(insns, idx)
            return f"{_MEMSZ_REASON}: local {res.orig_sz} bytes, target {res.new_sz} bytes"
        if res.new_sz != res.orig_sz:
            have = _SIZE_BYTES[code & 0x18]
            if have != res.orig_sz:
                raise CoreError(f"insn #{idx} (LDX/ST/STX) unexpected mem size: got {have}, exp {res.orig_sz}")
            bits = _BYTES_SIZE.get(res.new_sz)
            if bits is None:
                raise CoreError(f"insn #{idx} (LDX/ST/STX) invalid new mem size: {res.new_sz}")
            code = (code & 0xE0) | bits | cls
        _INSN.pack_into(insns, idx * 8, code, regs, new, imm)
    elif cls == _BPF_LD:
        ok = code == I.LD_IMM64 and (regs >> 4) == 0 and off == 0 and (idx + 2) * 8 <= len(insns)
        if ok:
            code2, regs2, off2, imm2 = _INSN.unpack_from(insns, (idx + 1) * 8)
            ok = code2 == 0 and regs2 == 0 and off2 == 0
        if not ok:
            raise CoreError(f"insn #{idx} (LDIMM64) has unexpected form")
        imm64 = (imm & _M32) | ((imm2 & _M32) << 32)
        if res.validate and (imm64 & mask) != (orig & mask):
            raise CoreError(f"unexpected insn #{idx} (LDIMM64) value: got {imm64}, exp {orig} -> {new}")
        new &= _M64
        _INSN.pack_into(insns, idx * 8, code, regs, off, _s32(new))
        _INSN.pack_into(insns, (idx + 1) * 8, 0, 0, 0, _s32(new >> 32))
    else:
        raise CoreError(f"trying to relocate unrecognized insn #{idx}, code 0x{code:x}")
    return None


# -- the object: target facts, libbpf's order, per-program application ----------------------------------

class CoreFailure(Record):
    """A poisoned instruction: a relocation that had no match, kept so a verifier error can name it."""

    _fields = ("insn", "function", "section", "relo_index", "kind", "type_id", "type_name", "path", "access",
               "reason", "spec")

    def __init__(self, insn: int, function: str, section: str, relo_index: int, kind: str, type_id: int,
                 type_name: str, path: str, access: str, reason: str, spec: str):
        self.insn = insn  # index in the linked program
        self.function = function
        self.section = section
        self.relo_index = relo_index  # relo #N of its section, as libbpf numbers them
        self.kind = kind  # libbpf's name: byte_off, enumval_value...
        self.type_id = type_id  # local root type
        self.type_name = type_name  # "struct task_struct___gone"
        self.path = path  # "task_struct___gone.gone_field"
        self.access = access  # "0:0"
        self.reason = reason
        self.spec = spec  # libbpf's format: "<byte_off> [7] struct task_struct___gone.gone_field (0:0 @ offset 0)"

    def __str__(self) -> str:
        """``CO-RE relocation #0 <byte_off> [7] struct foo___x.bar (0:0 @ offset 0) could not be applied: why``."""
        return f"CO-RE relocation #{self.relo_index} {self.spec} could not be applied: {self.reason}"


_object_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_object(spec, facts, programs) -> dict:
    """Resolve the CO-RE records of ``spec`` for loading ``programs`` (names), in libbpf's order:
    .BTF.ext sections and records as stored, skipping programs not loaded and records in no
    function.  Returns {(section, insn_off): Resolution}; cached per spec, target and programs."""
    key = (frozenset(programs),)
    per_spec = _object_cache.setdefault(spec, [])
    for k, fcts, out in per_spec:
        if k == key and fcts is facts:
            return out
    disk_name = _resolution_cache_name(spec, facts, programs)
    out = _read_resolutions(disk_name, spec) if disk_name else None
    if out is None:
        from . import core          # the matching engine: only when the cache has no answer
        out = core._resolve_object(spec, facts, programs)
        if disk_name:
            _write_resolutions(disk_name, spec, out)
    per_spec.append((key, facts, out))
    del per_spec[:-4]
    return out


# -- resolutions cached on disk (running kernel only) --------------------------------------------
#
# Resolving is deterministic: the same object (content), programs and kernel BTF give the same
# resolutions.  For the running kernel, whose BTF only changes with a reboot or a module (un)load
# (KernelFacts.kernel_btf_identity), the resolutions are kept on disk so that a later process
# loading the same object reads neither vmlinux BTF (~20 ms) nor searches it.  Entries refer to the
# object's own BTF by a persistent id and drop the target specs (Resolution.target is None).

def _resolution_cache_name(spec, facts, programs) -> str | None:
    if not _cache.enabled():
        return None
    digest = getattr(spec, "content_digest", None)
    ident = facts.kernel_btf_identity() if hasattr(facts, "kernel_btf_identity") else None
    if not digest or not ident or spec.btf is None:
        return None
    key = "\0".join([digest, ident, ",".join(sorted(programs))]).encode()
    return _cache.digest(key + _cache.code_stamp("spec", "loader")) + ".pickle"


def _local_btf_pickling():
    """Pickler and Unpickler classes that write the object's own BTF as the persistent id
    "local".  Made once, at module level in effect: a class made per call with the spec in its
    closure is a cycle (every class is one) that keeps the whole spec until the cyclic
    collector runs."""
    from .._cache import pickle

    class Pickler(pickle.Pickler):
        def __init__(self, file, local):
            super().__init__(file, protocol=-1)
            self.local = local

        def persistent_id(self, obj):
            return "local" if obj is self.local else None

    class Unpickler(_cache.SpecUnpickler):
        allowed = _cache.SpecUnpickler.allowed | {
            ("pybpf.loader.core_relo", n) for n in ("Accessor", "CoreKind", "CoreSpec", "Resolution")}

        def __init__(self, file, local):
            super().__init__(file)
            self.local = local

        def persistent_load(self, pid):
            if pid != "local":
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
            return self.local

    return Pickler, Unpickler


_PICKLING: tuple | None = None


def _pickling() -> tuple:
    global _PICKLING
    if _PICKLING is None:
        _PICKLING = _local_btf_pickling()
    return _PICKLING


def _read_resolutions(name: str, spec) -> dict | None:
    import io
    raw = _cache.read("core", name)
    if raw is None:
        return None
    try:
        out = _pickling()[1](io.BytesIO(raw), spec.btf).load()
    except Exception:      # torn or from other code: resolve again
        return None
    return out if isinstance(out, dict) else None


def _write_resolutions(name: str, spec, out: dict) -> None:
    import io
    from .._cache import pickle
    buf = io.BytesIO()
    try:
        _pickling()[0](buf, spec.btf).dump({k: r.replace(target=None) for k, r in out.items()})
    except (pickle.PicklingError, TypeError, AttributeError):
        return
    _cache.write("core", name, buf.getvalue())


def apply_core_relocations(spec, prog, linked, records: list, facts=None) -> list:
    """Patch ``linked.insns`` for ``records`` [(linked insn index, CoreRelo, FunctionSpec)]; returns
    the poisoned instructions as [CoreFailure].  Raises CoreError (an ObjectError) if a
    relocation cannot be applied."""
    if facts is None:
        from .facts import KernelFacts
        facts = KernelFacts.running()
    programs = {p.name for p in spec.programs.values() if p.autoload} | {prog.name}
    resolved = resolve_object(spec, facts, programs)
    failures = []
    for idx, rec, fn in records:
        res = resolved.get((fn.section, rec.insn_off))
        if res is None:
            continue
        fn_insn = rec.insn_off // I.INSN_SIZE - fn.sec_insn_off

        def fail(msg: str) -> CoreError:
            return CoreError(f"program {prog.name!r}: {fn.name}+{fn_insn} (section {fn.section}): "
                             f"CO-RE relocation #{res.index} {res.describe()}: {msg}")
        if res.error is not None:
            raise fail(res.error)
        try:
            why = patch_insn(linked.insns, idx, res)
        except CoreError as e:
            raise fail(str(e)) from None
        if why is not None:
            lspec = res.local
            path = lspec.path()
            failures.append(CoreFailure(
                insn=idx, function=fn.name, section=fn.section, relo_index=res.index, kind=res.kind.log_name,
                type_id=lspec.root_type_id, type_name=spec.btf.type_name(lspec.root_type_id),
                path=path.split(" ", 1)[1] if " " in path else path, access=":".join(map(str, lspec.raw)) or "0",
                reason=why, spec=lspec.format()))
    return failures


_POISON_CALL = r"^(\d+): \(85\) call unknown#%d\b" % POISON_IMM


def failure_in_log(log: str, linked) -> CoreFailure | None:
    """The CO-RE failure the verifier tripped on, if its log ends at a poisoned instruction
    (``N: (85) call unknown#195896080`` / ``invalid func unknown#195896080``)."""
    failures = getattr(linked, "core_failures", None)
    if not failures or f"unknown#{POISON_IMM}" not in log:
        return None
    import re
    hits = re.findall(_POISON_CALL, log, re.M)
    if not hits:
        return None
    idx = int(hits[-1])
    for f in failures:
        if f.insn == idx or (f.insn + 1 == idx and f.kind in ("enumval_value", "enumval_exists",
                                                              "local_type_id", "target_type_id")):
            return f
    return None
