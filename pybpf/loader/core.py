"""CO-RE: apply an object's ``.BTF.ext`` core_relo records against the target kernel's BTF.

The rules are libbpf's (src/relo_core.c for specs, matching, values and patching;
src/libbpf.c for the candidate search and its cache), summarised in
shared/reference/core.md.  In short, for each record:

1. the access string (``"0:93"``) is parsed against the *local* type into a
   spec: accessors (named members, array indexes) and a bit offset;
2. candidates are the target types whose kind is compatible and whose
   *essential* name (``task_struct___old`` -> ``task_struct``) equals the local
   one: vmlinux first, module BTF only if vmlinux has none;
3. each candidate is matched (fields by name, compatible member types; type
   compatibility or the stricter "types match"; enumerators by essential name);
4. the value is computed from the local spec (what the compiler wrote) and from
   the matched target spec (what the kernel needs); all matching candidates
   must agree, else the load fails ("ambiguity");
5. the instruction is checked to hold the local value and patched: ALU
   immediate, LDX/ST/STX offset (and size, when safe), or ld_imm64 pair.  A
   relocation with no match for a kind that cannot default to 0 *poisons* the
   instruction (``call 0xbad2310``): harmless on a dead path, and named by
   :func:`failure_in_log` when the verifier reaches it.

Like libbpf, the candidate list of a local type is cached for the whole object
load and shrunk to the candidates that matched each relocation; records of
programs that are not loaded are skipped.  Candidates are found without
decoding the target BTF: the type name is searched in the string section, and
its offset among the type records (see :class:`_NameIndex`).

The target comes from the kernel facts (``facts.btf``, ``facts.module_btfs``),
so relocation runs offline against any BTF file.  Entry points:
:func:`apply_core_relocations` (called by the linker for each program; fills
``LinkedProgram.core_failures``), :func:`resolve_object` (every record of an
object, in libbpf's order), :class:`CoreResolver`, :func:`parse_spec`,
:func:`match_candidate`, :func:`patch_insn` and :func:`failure_in_log`.  The
records, the patching and the cached resolutions are :mod:`.core_relo`'s (this
module re-exports them): a load whose resolutions are cached never imports this one.

One deliberate difference from libbpf: for a 32-bit ENUM, ENUMVAL_VALUE checks
only the low 32 bits of the ld_imm64 (clang zero-extends an unsigned value
>= 2^31, libbpf's expectation is sign-extended and its check would fail).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from .._record import Record
from .. import _cache
from ..errors import BTFError, Error, NotSupportedError
from ..spec import insn as I
from ..spec.btf import BTF, INT_SIGNED, Kind
# the records, their application and the cached resolutions live in .core_relo (a load whose
# resolutions are cached imports nothing of this module); importable from here too
from .core_relo import (  # noqa: F401
    ENUM_KINDS, FIELD_KINDS, POISON_IMM, TYPE_KINDS, _ANY_ENUM, _KIND_STR, _M32, _M64, Accessor, CoreError,
    CoreFailure, CoreKind, CoreSpec, Resolution, _kind, _kind_str, _name, apply_core_relocations,
    failure_in_log, patch_insn, poison, resolve_object)
SPEC_MAX_LEN = 64               # BPF_CORE_SPEC_MAX_LEN

_COMPOSITE = (Kind.STRUCT, Kind.UNION)


# -- names and kinds -------------------------------------------------------------------------------

def essential_name(name: str) -> str:
    """The name without its flavor: cut at the last ``X___Y`` where X and Y are not ``_``
    (libbpf's bpf_core_essential_name_len): ``task_struct___old`` -> ``task_struct``."""
    if "___" not in name:
        return name
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


def _core_compat(k1: Kind, k2: Kind) -> bool:
    """btf_kind_core_compat: equal kinds, ENUM and ENUM64 count as equal."""
    return k1 == k2 or (k1 in _ANY_ENUM and k2 in _ANY_ENUM)


_LONGS = frozenset({"long", "long int", "int long", "unsigned long", "long unsigned", "unsigned long int",
                    "unsigned int long", "long unsigned int", "long int unsigned", "int unsigned long",
                    "int long unsigned"})
_ptr_sizes: weakref.WeakKeyDictionary[BTF, int] = weakref.WeakKeyDictionary()


def _pointer_size(btf: BTF) -> int:
    """libbpf's determine_ptr_size: the size of the first 'long' INT in id order (else 8).
    Scans records in order and stops at the first hit (BTF.pointer_size decodes every INT)."""
    while btf.base is not None:
        btf = btf.base
    size = _ptr_sizes.get(btf)
    if size is None:
        size = 8
        words, string, kind_int = btf._words, btf.string, int(Kind.INT)
        for w in btf._offsets:
            if (words[w + 1] >> 24) & 0x1F == kind_int and words[w + 2] in (4, 8) and string(words[w]) in _LONGS:
                size = words[w + 2]
                break
        _ptr_sizes[btf] = size
    return size


def _size(btf: BTF, type_id: int, what: str) -> int:
    """btf__resolve_size; CoreError if the type has no size."""
    nelems = 1
    for _ in range(64):
        t = btf[type_id] if type_id else None
        k = t.kind if t is not None else Kind.UNKN
        if k in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.FLOAT):
            return nelems * t.size_or_type
        if k == Kind.PTR:
            return nelems * _pointer_size(btf)
        if k == Kind.ARRAY:
            nelems *= t.nelems
            type_id = t.elem_type
        elif k in (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG, Kind.VAR,
                   Kind.DECL_TAG):
            type_id = t.size_or_type
        else:
            raise CoreError(f"{what}: type [{type_id}] ({_KIND_STR.get(k, k)}) has no size")
    raise CoreError(f"{what}: type [{type_id}] is nested too deeply to size")


def _access_string_ok(access: str) -> bool:
    """``N(:N)*`` (without importing re: ~2 ms of every process start)."""
    return all(part.isascii() and part.isdigit() for part in access.split(":"))


def parse_spec(btf: BTF, type_id: int, access: str, kind: int) -> CoreSpec:
    """The local spec of a relocation (libbpf's bpf_core_parse_spec); CoreError if malformed."""
    kind = CoreKind(kind)
    what = f"<{kind.log_name}> [{type_id}] access string {access!r}"
    if not _access_string_ok(access):
        raise CoreError(f"{what}: not of the form N(:N)*")
    spec = CoreSpec(btf, type_id, kind)
    if kind in TYPE_KINDS:
        if access != "0":
            raise CoreError(f"{what}: type relocations take the access string \"0\"")
        return spec
    raw = [int(x) for x in access.split(":")]
    if len(raw) > SPEC_MAX_LEN:
        raise CoreError(f"{what}: more than {SPEC_MAX_LEN} accessors")
    spec.raw = raw
    tid = btf.skip_mods(type_id)
    acc = Accessor(tid, raw[0])
    spec.accessors.append(acc)
    if kind in ENUM_KINDS:
        t = btf[tid] if tid else None
        if t is None or t.kind not in _ANY_ENUM or len(raw) > 1 or raw[0] >= t.vlen:
            raise CoreError(f"{what}: not an enumerator index of an enum")
        acc.name = t.values[raw[0]].name
        return spec
    spec.bit_offset = raw[0] * _size(btf, tid, what) * 8
    for i in range(1, len(raw)):
        tid = btf.skip_mods(tid)
        t = btf[tid] if tid else None
        idx = raw[i]
        if t is not None and t.kind in _COMPOSITE:
            if idx >= t.vlen:
                raise CoreError(f"{what}: member index {idx} out of range for {btf.type_name(tid)} "
                                f"({t.vlen} members)")
            m = t.members[idx]
            spec.bit_offset += m.bit_offset
            if m.name:
                spec.accessors.append(Accessor(tid, idx, m.name))
            tid = m.type_id
        elif t is not None and t.kind == Kind.ARRAY:
            elem = btf.skip_mods(t.elem_type)
            if not _is_flex_arr(btf, spec.accessors[-1], t) and idx >= t.nelems:
                raise CoreError(f"{what}: array index {idx} out of range ({t.nelems} elements)")
            spec.accessors.append(Accessor(elem, idx))
            spec.bit_offset += idx * _size(btf, elem, what) * 8
            tid = elem
        else:
            raise CoreError(f"{what}: index #{i} captures type [{tid}] of unexpected kind {_kind_str(btf, tid)}")
    return spec


def _is_flex_arr(btf: BTF, acc: Accessor, arr) -> bool:
    """A flexible array: zero length, and the last member of the struct holding it."""
    if acc.name is None or arr.nelems > 0:
        return False
    return acc.idx == btf[acc.type_id].vlen - 1


# -- compatibility (relo_core.c) ---------------------------------------------------------------------

def fields_are_compat(lbtf: BTF, lid: int, tbtf: BTF, tid: int) -> bool:
    """bpf_core_fields_are_compat: may a local member's type be relocated to the target member's."""
    while True:
        lid, tid = lbtf.skip_mods(lid), tbtf.skip_mods(tid)
        lk, tk = _kind(lbtf, lid), _kind(tbtf, tid)
        if lk in _COMPOSITE and tk in _COMPOSITE:
            return True
        if not _core_compat(lk, tk):
            return False
        if lk in (Kind.PTR, Kind.FLOAT):
            return True
        if lk in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            ln, tn = essential_name(lbtf[lid].name), essential_name(tbtf[tid].name)
            return not ln or not tn or ln == tn
        if lk == Kind.INT:
            return lbtf[lid].int_offset == 0 and tbtf[tid].int_offset == 0
        if lk == Kind.ARRAY:
            lid, tid = lbtf[lid].elem_type, tbtf[tid].elem_type
            continue
        return False


def types_are_compat(lbtf: BTF, lid: int, tbtf: BTF, tid: int, level: int = 32) -> bool:
    """__bpf_core_types_are_compat: the check for TYPE_ID_TARGET, TYPE_EXISTS and TYPE_SIZE."""
    if not _core_compat(_kind(lbtf, lid), _kind(tbtf, tid)):
        return False
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise CoreError(f"type [{lid}] is nested too deeply to compare")
        lid, tid = lbtf.skip_mods(lid), tbtf.skip_mods(tid)
        lk, tk = _kind(lbtf, lid), _kind(tbtf, tid)
        if not _core_compat(lk, tk):
            return False
        if lk in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.ENUM64):
            return True
        lt, tt = lbtf[lid], tbtf[tid]
        if lk == Kind.INT:
            return lt.int_offset == 0 and tt.int_offset == 0
        if lk == Kind.PTR:
            lid, tid = lt.type_id, tt.type_id
        elif lk == Kind.ARRAY:
            lid, tid = lt.elem_type, tt.elem_type
        elif lk == Kind.FUNC_PROTO:
            if lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.params, tt.params):
                if level <= 0:
                    raise CoreError(f"type [{lid}] is nested too deeply to compare")
                if not types_are_compat(lbtf, lbtf.skip_mods(lp.type_id), tbtf, tbtf.skip_mods(tp.type_id),
                                        level - 1):
                    return False
            lid, tid = lbtf.skip_mods(lt.type_id), tbtf.skip_mods(tt.type_id)
        else:
            return False


def _names_match(ln: str, tn: str) -> bool:
    if not tn:
        return not ln
    return essential_name(ln) == essential_name(tn)


def types_match(lbtf: BTF, lid: int, tbtf: BTF, tid: int, behind_ptr: bool = False, level: int = 32) -> bool:
    """__bpf_core_types_match: the stricter TYPE_MATCHES check (names, sizes, members, enumerators)."""
    if level <= 0:
        raise CoreError(f"type [{lid}] is nested too deeply to compare")
    depth = 32
    while True:
        depth -= 1
        if depth < 0:
            raise CoreError(f"type [{lid}] is nested too deeply to compare")
        lid, tid = lbtf.skip_mods(lid), tbtf.skip_mods(tid)
        if not _names_match(_name(lbtf, lid), _name(tbtf, tid)):
            return False
        lk, tk = _kind(lbtf, lid), _kind(tbtf, tid)
        if lk == Kind.UNKN:
            return lk == tk
        lt, tt = lbtf[lid], tbtf[tid]
        if lk == Kind.FWD:
            if behind_ptr:
                if lk == tk:
                    return lt.kind_flag == tt.kind_flag
                # a FWD's kflag says union (1) or struct (0)
                return (tk == Kind.STRUCT and not lt.kind_flag) or (tk == Kind.UNION and lt.kind_flag)
            return lk == tk and lt.kind_flag == tt.kind_flag
        if lk in _ANY_ENUM:
            if tk not in _ANY_ENUM or lt.size != tt.size or lt.vlen > tt.vlen:
                return False
            return all(any(_names_match(lv.name, tv.name) for tv in tt.values) for lv in lt.values)
        if lk in _COMPOSITE:
            if behind_ptr:
                if lk == tk:
                    return True
                return tk == Kind.FWD and (lk == Kind.UNION) == tt.kind_flag
            if lk != tk or lt.vlen > tt.vlen:
                return False
            for lm in lt.members:
                for tm in tt.members:
                    if _names_match(lm.name, tm.name) and types_match(lbtf, lm.type_id, tbtf, tm.type_id,
                                                                      behind_ptr, level - 1):
                        break
                else:
                    return False
            return True
        if lk == Kind.INT:
            return (lk == tk and lt.size == tt.size
                    and (lt.encoding & INT_SIGNED) == (tt.encoding & INT_SIGNED))
        if lk == Kind.PTR:
            if lk != tk:
                return False
            behind_ptr = True
            lid, tid = lt.type_id, tt.type_id
        elif lk == Kind.ARRAY:
            if lk != tk or lt.nelems != tt.nelems:
                return False
            lid, tid = lt.elem_type, tt.elem_type
        elif lk == Kind.FUNC_PROTO:
            if lk != tk or lt.vlen != tt.vlen:
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not types_match(lbtf, lp.type_id, tbtf, tp.type_id, behind_ptr, level - 1):
                    return False
            lid, tid = lt.type_id, tt.type_id
        else:
            return False


# -- matching a candidate (bpf_core_spec_match) -------------------------------------------------------

def _match_member(local: CoreSpec, lacc: Accessor, tbtf: BTF, tid: int, targ: CoreSpec, why: list):
    """bpf_core_match_member: the target member named like the local one (searching anonymous
    members recursively); its type id, or None."""
    tid = tbtf.skip_mods(tid)
    t = tbtf[tid] if tid else None
    if t is None or t.kind not in _COMPOSITE:
        return None
    lmember = local.btf[lacc.type_id].members[lacc.idx]
    lname = lmember.name
    for i, m in enumerate(t.members):
        if len(targ.raw) == SPEC_MAX_LEN:
            raise CoreError("target struct/union/array nesting is too deep")
        targ.bit_offset += m.bit_offset          # speculate this member is the one
        targ.raw.append(i)
        if not m.name:
            found = _match_member(local, lacc, tbtf, m.type_id, targ, why)
            if found is not None:
                return found
        elif m.name == lname:
            targ.accessors.append(Accessor(tid, i, m.name))
            if fields_are_compat(local.btf, lmember.type_id, tbtf, m.type_id):
                return m.type_id
            targ.accessors.pop()
            why.append(f"has field '{lname}' of type {tbtf.type_name(m.type_id)} in {tbtf.type_name(tid)}, "
                       f"incompatible with the local {local.btf.type_name(lmember.type_id)}")
            return None     # (like libbpf, the speculative offset is not undone here)
        targ.bit_offset -= m.bit_offset
        targ.raw.pop()
    return None


def match_candidate(local: CoreSpec, tbtf: BTF, tid: int, why: list | None = None) -> CoreSpec | None:
    """The target spec of ``local`` in candidate ``tid`` of ``tbtf``, or None if it does not match
    (the reason is appended to ``why``)."""
    why = [] if why is None else why
    kind = local.kind
    targ = CoreSpec(tbtf, tid, kind)
    if kind in TYPE_KINDS:
        if kind == CoreKind.TYPE_MATCHES:
            ok = types_match(local.btf, local.root_type_id, tbtf, tid)
            if not ok:
                why.append("does not match the local type (names, sizes, members)")
        else:
            ok = types_are_compat(local.btf, local.root_type_id, tbtf, tid)
            if not ok:
                why.append("is not compatible with the local type")
        return targ if ok else None
    lacc = local.accessors[0]
    if kind in ENUM_KINDS:
        tid = tbtf.skip_mods(tid)
        t = tbtf[tid] if tid else None
        if t is None or t.kind not in _ANY_ENUM:
            why.append("is not an enum")
            return None
        ess = essential_name(lacc.name)
        for i, v in enumerate(t.values):
            if essential_name(v.name) == ess:
                targ.accessors.append(Accessor(tid, i, v.name))
                targ.raw.append(i)
                return targ
        why.append(f"has no enumerator {ess}")
        return None
    for i, lacc in enumerate(local.accessors):
        tid = tbtf.skip_mods(tid)
        if lacc.name is not None:
            parent = tid
            tid = _match_member(local, lacc, tbtf, tid, targ, why)
            if tid is None:
                if not why:
                    inner = f" in {tbtf.type_name(parent) if parent else 'void'}" if i > 1 else ""
                    why.append(f"has no field '{lacc.name}'{inner}")
                return None
            continue
        if i > 0:
            t = tbtf[tid] if tid else None
            if t is None or t.kind != Kind.ARRAY:
                why.append(f"has {tbtf.type_name(tid) if tid else 'void'} where the local type has an array "
                           f"(index [{lacc.idx}])")
                return None
            if not _is_flex_arr(tbtf, targ.accessors[-1], t) and lacc.idx >= t.nelems:
                why.append(f"has {tbtf.type_name(tid)}: index [{lacc.idx}] is out of range")
                return None
            tid = tbtf.skip_mods(t.elem_type)
        if len(targ.raw) == SPEC_MAX_LEN:
            raise CoreError("target struct/union/array nesting is too deep")
        targ.accessors.append(Accessor(tid, lacc.idx))
        targ.raw.append(lacc.idx)
        targ.bit_offset += lacc.idx * _size(tbtf, tid, f"candidate [{targ.root_type_id}]") * 8
    return targ


class _Poison(Exception):
    pass


def _elem_size(btf: BTF, type_id: int, where: str) -> int:
    """The size a load/store of the field moves: for arrays, of the innermost element
    (libbpf since "fix LDX/STX/ST CO-RE relocation size adjustment logic", 2025)."""
    type_id = btf.skip_mods(type_id)
    while type_id and btf[type_id].kind == Kind.ARRAY:
        type_id = btf.skip_mods(btf[type_id].elem_type)
    return _size(btf, type_id, where)


def _calc_field(spec: CoreSpec | None, kind: CoreKind, where: str):
    """(value, mem size, field type id, validate) as bpf_core_calc_field_relo computes them."""
    if kind == CoreKind.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    if spec is None:
        raise _Poison
    btf = spec.btf
    acc = spec.accessors[-1]
    if acc.name is None:                 # an array element (or the root itself)
        if kind == CoreKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, _elem_size(btf, acc.type_id, where), acc.type_id, True
        if kind == CoreKind.FIELD_BYTE_SIZE:
            return _size(btf, acc.type_id, where), 0, 0, True
        raise CoreError(f"{where}: <{kind.log_name}> can't be applied to an array access")
    m = btf[acc.type_id].members[acc.idx]
    ftid = btf.skip_mods(m.type_id)
    mt = btf[ftid] if ftid else None
    bit_off = spec.bit_offset
    bit_sz = m.bitfield_size
    bitfield = bit_sz > 0
    if bitfield:
        byte_sz = mt.size if mt is not None else 0
        if byte_sz <= 0:
            raise CoreError(f"{where}: bitfield of a type without size")
        byte_off = bit_off // 8 // byte_sz * byte_sz
        while bit_off + bit_sz - byte_off * 8 > byte_sz * 8:   # smallest load that holds the bits
            if byte_sz >= 8:
                raise CoreError(f"{where}: bitfield can't be read with a 64-bit load")
            byte_sz *= 2
            byte_off = bit_off // 8 // byte_sz * byte_sz
    else:
        byte_sz = _size(btf, ftid, where)
        byte_off = bit_off // 8
        bit_sz = byte_sz * 8
    validate = not bitfield     # clang picks its own bitfield container: libbpf doesn't check those
    mem_sz = type_id = 0
    if kind == CoreKind.FIELD_BYTE_OFFSET:
        val = byte_off
        if not bitfield:
            mem_sz, type_id = _elem_size(btf, ftid, where), ftid
    elif kind == CoreKind.FIELD_BYTE_SIZE:
        val = byte_sz
    elif kind == CoreKind.FIELD_SIGNED:
        val = int(mt is not None and ((mt.kind in _ANY_ENUM and mt.kind_flag)
                                      or (mt.kind == Kind.INT and bool(mt.encoding & INT_SIGNED))))
        validate = True
    elif kind == CoreKind.FIELD_LSHIFT_U64:
        val = 64 - (bit_off + bit_sz - byte_off * 8)      # little endian
    else:   # FIELD_RSHIFT_U64
        val = 64 - bit_sz
        validate = True
    return val, mem_sz, type_id, validate


def _calc_type(spec: CoreSpec | None, kind: CoreKind, where: str):
    """(value, validate): type kinds give 0 when nothing matched, never poison."""
    if spec is None:
        return 0, True
    if kind == CoreKind.TYPE_ID_TARGET:
        return spec.root_type_id, False    # ids change when objects are linked: not checked
    if kind in (CoreKind.TYPE_EXISTS, CoreKind.TYPE_MATCHES):
        return 1, True
    return _size(spec.btf, spec.root_type_id, where), True


def _calc_enumval(spec: CoreSpec | None, kind: CoreKind) -> int:
    if kind == CoreKind.ENUMVAL_EXISTS:
        return 1 if spec is not None else 0
    if spec is None:
        raise _Poison
    acc = spec.accessors[0]
    t = spec.btf[acc.type_id]
    v = t.values[acc.idx].value
    if t.kind == Kind.ENUM:
        v &= _M32
        if v >= 1 << 31:        # libbpf: the s32 val widened with sign extension, whatever the kflag
            v -= 1 << 32
    return v & _M64


def calc_relocation(res: Resolution, local: CoreSpec, targ: CoreSpec | None, where: str) -> None:
    """Fill ``res`` with the local (orig) and target (new) values (bpf_core_calc_relo)."""
    kind = res.kind
    try:
        if kind in FIELD_KINDS:
            res.orig, res.orig_sz, orig_tid, res.validate = _calc_field(local, kind, where)
            res.new, res.new_sz, new_tid, _ = _calc_field(targ, kind, where)
            if res.orig_sz != res.new_sz:
                # a load/store may change size only for pointers (a 32-bit kernel's) and unsigned ints
                ot = local.btf[orig_tid] if orig_tid else None
                nt = targ.btf[new_tid] if new_tid else None
                safe = ot is not None and nt is not None and (
                    (ot.kind == Kind.PTR and nt.kind == Kind.PTR)
                    or (ot.kind == Kind.INT and nt.kind == Kind.INT
                        and ot.encoding != INT_SIGNED and nt.encoding != INT_SIGNED))
                res.fail_memsz_adjust = not safe
        elif kind in TYPE_KINDS:
            res.orig, res.validate = _calc_type(local, kind, where)
            res.new, _ = _calc_type(targ, kind, where)
        else:
            res.orig = _calc_enumval(local, kind)
            res.new = _calc_enumval(targ, kind)
            if kind == CoreKind.ENUMVAL_VALUE and local.btf[local.accessors[0].type_id].kind == Kind.ENUM:
                # clang writes an unsigned 32-bit enumerator >= 2^31 zero-extended, libbpf's value is
                # sign-extended (and its check would fail): compare the low 32 bits only
                res.validate_mask = _M32
    except _Poison:
        res.poison = True


# -- candidates ----------------------------------------------------------------------------------------

class _NameIndex:
    """Finds a BTF's own types by essential name without decoding the BTF.

    The name is searched in the string section (exact names with one ``find``;
    flavored names ``X___Y`` from a one-time scan for ``___``), then each string
    offset in the type section (a regex literal search in C; hits that do not
    start a record are dropped).  About 1 ms per name on vmlinux, where building
    a by-name index decodes every name (~250 ms), and gathering every record's
    name_off into an array costs ~10 ms before the first lookup.  For the
    running kernel's vmlinux the answers are also kept on disk for the boot
    (checked against the BTF when used), so later processes skip the searches."""

    def __init__(self, btf: BTF):
        self._btf = weakref.ref(btf)            # (the index lives in a WeakKeyDictionary keyed by btf)
        # kernel BTF went through btf__dedup: each string is stored once, the first hit is the only one
        self._unique_strings = btf.source.startswith(("/sys/kernel/btf/", "kernel BTF"))
        self._hay: bytes | None = None
        self._flavored: dict | None = None
        self._strings: dict[str, list] = {}
        self._types: dict[str, list] = {}
        self.base = _index(btf.base) if btf.base is not None else None
        self._disk_name = _disk_cache_name(btf)
        self._disk: dict[str, list] = _read_disk_cache(self._disk_name) if self._disk_name else {}
        self._dirty = False

    @property
    def btf(self) -> BTF:
        return self._btf()

    def _haystack(self) -> bytes:
        if self._hay is None:
            self._hay = b"\0" + self.btf.string_bytes()   # hay[p] is the string at offset p - 1
        return self._hay

    def string_offsets(self, ess: str) -> list:
        """Absolute offsets of strings (own section) whose essential name is ``ess``."""
        found = self._strings.get(ess)
        if found is not None:
            return found
        hay, base = self._haystack(), self.btf._str_base
        if self._flavored is None:
            flavored: dict[str, set] = {}
            pos = hay.find(b"___")
            while pos >= 0:
                start = hay.rfind(b"\0", 0, pos) + 1
                end = hay.index(b"\0", pos)
                name = hay[start:end].decode("utf-8", "replace")
                e = essential_name(name)
                if e != name:
                    flavored.setdefault(e, set()).add(start - 1 + base)
                pos = hay.find(b"___", end)
            self._flavored = {k: sorted(v) for k, v in flavored.items()}
        found = []
        needle = b"\0" + ess.encode() + b"\0"
        pos = hay.find(needle)
        while pos >= 0:
            found.append(pos + base)            # (pos + 1) - 1: the string starts after the NUL
            if self._unique_strings:
                break
            pos = hay.find(needle, pos + 1)
        found += self._flavored.get(ess, ())
        self._strings[ess] = found
        return found

    def types(self, ess: str) -> list:
        """Ids of this BTF's own types whose essential name is ``ess``, in id order."""
        found = self._types.get(ess)
        if found is not None:
            return found
        found = self._disk.get(ess)
        if found is not None and self._check(ess, found):
            self._types[ess] = found
            return found
        offs = list(self.string_offsets(ess))
        if self.base is not None:               # split BTF: names may be base strings
            offs += self.base.string_offsets(ess)
        ids = set()
        if offs:
            btf = self.btf
            first = btf.first_id
            for so in offs:
                ids.update(first + k for k in btf.records_named(so))
        found = sorted(ids)
        self._types[ess] = found
        if self._disk_name:
            self._dirty = True
        return found

    def _check(self, ess: str, ids: list) -> bool:
        """A cached answer still names types with that essential name (else drop the cache)."""
        btf = self.btf
        try:
            ok = all(isinstance(i, int) and essential_name(btf[i].name) == ess for i in ids)
        except (BTFError, IndexError, TypeError):
            ok = False
        if not ok:
            self._disk = {}
        return ok

    def flush(self) -> None:
        """Write the names looked up so far to the disk cache (running kernel's vmlinux only)."""
        if not self._dirty:
            return
        self._dirty = False
        # a read-only home is not an error: the searches are done every time
        _cache.write("core", self._disk_name, _format_disk_cache({**self._disk, **self._types}))


def _disk_cache_name(btf: BTF) -> str | None:
    """The name under which the running kernel's vmlinux candidates are cached across processes:
    keyed by boot (the kernel's BTF cannot change without a reboot) and blob size; None for any
    other BTF."""
    from ..kernel.btf import VMLINUX, boot_id
    if btf.source != VMLINUX or btf.base is not None:
        return None
    boot = boot_id()
    return f"vmlinux-{boot}-{len(btf.raw)}-{len(btf)}.names" if boot else None


# The candidates on disk: one "name id id ..." a line (a name with no candidate is a line of its
# own).  Not json: importing json (and re, which it imports) took ~5-7 ms of a load.

def _format_disk_cache(found: dict) -> bytes:
    lines = []
    for ess, ids in found.items():
        if ess.isascii() and ess.isprintable() and " " not in ess and ess:
            lines.append(" ".join([ess, *map(str, ids)]))
    return ("\n".join(lines) + "\n").encode("ascii")


def _read_disk_cache(name: str) -> dict:
    raw = _cache.read("core", name)
    if raw is None:
        return {}
    out = {}
    try:
        for line in raw.decode("ascii").splitlines():
            ess, *ids = line.split(" ")
            if not ess or not all(i.isdigit() for i in ids):
                return {}
            out[ess] = [int(i) for i in ids]
    except UnicodeDecodeError:
        return {}
    return out


_indexes: weakref.WeakKeyDictionary[BTF, _NameIndex] = weakref.WeakKeyDictionary()


def _index(btf: BTF) -> _NameIndex:
    idx = _indexes.get(btf)
    if idx is None:
        idx = _indexes[btf] = _NameIndex(btf)
    return idx


class Candidate(Record):
    _fields = ("btf", "type_id", "where")

    def __init__(self, btf: BTF, type_id: int, where: str):
        self.btf = btf
        self.type_id = type_id
        self.where = where  # "vmlinux" or the module's name

    def __str__(self) -> str:
        return f"[{self.type_id}] {self.btf.type_name(self.type_id)} ({self.where})"


def find_candidates(local: BTF, local_id: int, target: BTF, modules: Callable[[], list] = list,
                    target_name: str = "vmlinux") -> list:
    """bpf_core_find_cands: target types of a compatible kind with the same essential name; module
    BTF (``modules()`` -> [(name, BTF)]) only when vmlinux has none."""
    lt = local[local_id]
    ess = essential_name(lt.name)
    cands = [Candidate(target, i, target_name) for i in _index(target).types(ess)
             if _core_compat(target[i].kind, lt.kind)]
    if cands:
        return cands
    for name, mod in modules():
        cands += [Candidate(mod, i, name) for i in _index(mod).types(ess) if _core_compat(mod[i].kind, lt.kind)]
    return cands


# -- resolving relocations ---------------------------------------------------------------------------

class CoreResolver:
    """Resolves the records of one object against one target, with libbpf's candidate cache:
    one list per local root type, searched once, shrunk to the candidates that matched."""

    def __init__(self, local: BTF, target: BTF, modules: Callable[[], list] = list,
                 target_name: str | None = None):
        self.local = local
        self.target = target
        self.modules = modules
        self.target_name = target_name or _target_name(target)
        self.cands: dict[int, list] = {}
        self._modules_searched: dict[int, int] = {}
        self._memo: dict[tuple, Resolution] = {}

    def _candidates(self, type_id: int) -> list:
        cands = self.cands.get(type_id)
        if cands is None:
            searched = []

            def modules():
                mods = self.modules()
                searched.append(len(mods))
                return mods
            cands = self.cands[type_id] = find_candidates(self.local, type_id, self.target, modules,
                                                          self.target_name)
            self._modules_searched[type_id] = searched[0] if searched else 0
        return cands

    def resolve(self, relo, index: int = 0, section: str = "") -> Resolution:
        """The resolution of one CoreRelo (errors are kept in ``.error``, not raised)."""
        key = (relo.type_id, relo.access_str_off, relo.kind)
        memo = self._memo.get(key)
        if memo is not None:
            # the same relocation again: libbpf recomputes it, on a candidate list that can only have
            # shrunk to candidates that agreed on it, so the result is the same
            res = Resolution(section, index, relo.insn_off, memo.kind)
            res.__dict__.update({k: v for k, v in memo.__dict__.items()
                                 if k not in ("section", "index", "insn_off")})
            return res
        try:
            kind = CoreKind(relo.kind)
        except ValueError:
            res = Resolution(section, index, relo.insn_off, CoreKind.FIELD_BYTE_OFFSET)
            res.error = f"unknown CO-RE relocation kind {relo.kind}"
            return res
        res = Resolution(section, index, relo.insn_off, kind)
        try:
            self._resolve(relo, res)
        except CoreError as e:
            res.error = str(e)
        except BTFError as e:
            res.error = f"bad type reference: {e}"
        self._memo[key] = res
        return res

    def _resolve(self, relo, res: Resolution) -> None:
        local = self.local
        if not 0 < relo.type_id < len(local.types):
            raise CoreError(f"<{res.kind.log_name}> refers to local type [{relo.type_id}], which does not exist")
        lt = local[relo.type_id]
        access = local.string(relo.access_str_off)
        spec = res.local = parse_spec(local, relo.type_id, access, res.kind)
        where = spec.format()
        if res.kind == CoreKind.TYPE_ID_LOCAL:
            res.orig = res.new = relo.type_id      # no search; ids may change in linking: not checked
            res.validate = False
            return
        if not lt.name:
            raise CoreError(f"{where}: relocation doesn't support anonymous types")
        cands = self._candidates(relo.type_id)
        matched = []
        why: list = []
        for cand in cands:
            reasons: list = []
            targ = match_candidate(spec, cand.btf, cand.type_id, reasons)
            if targ is None:
                why.append(f"{cand} {'; '.join(reasons) or 'does not match'}")
                continue
            cres = Resolution(res.section, res.index, res.insn_off, res.kind)
            calc_relocation(cres, spec, targ, where)
            if not matched:
                first, first_targ = cres, targ
            elif targ.bit_offset != first_targ.bit_offset:
                raise CoreError(f"{where}: field offset ambiguity: candidates {matched[0]} and {cand} "
                                f"put it at bit {first_targ.bit_offset} and {targ.bit_offset}")
            elif cres.poison != first.poison or cres.new != first.new:
                def text(r):
                    return "failure" if r.poison else f"success {r.new}"
                raise CoreError(f"{where}: relocation decision ambiguity: {matched[0]} gives {text(first)}, "
                                f"{cand} gives {text(cres)}")
            matched.append(cand)
        if matched:
            self.cands[relo.type_id] = matched      # libbpf keeps only the candidates that matched
            for k in ("orig", "new", "poison", "validate", "validate_mask", "orig_sz", "new_sz",
                      "fail_memsz_adjust"):
                setattr(res, k, getattr(first, k))
            res.target = first_targ
            return
        calc_relocation(res, spec, None, where)
        ess = essential_name(lt.name)
        if not cands:
            kind_word = {Kind.STRUCT: "struct", Kind.UNION: "union", Kind.ENUM: "enum", Kind.ENUM64: "enum",
                         Kind.TYPEDEF: "typedef", Kind.FWD: "forward declaration"}.get(lt.kind, lt.kind.name.lower())
            flavor = f" (the essential name of '{lt.name}')" if ess != lt.name else ""
            mods = self._modules_searched.get(relo.type_id, 0)
            also = f" or in any of {mods} module BTFs" if mods else ""
            res.reason = f"no {kind_word} named '{ess}'{flavor} in the target BTF ({self.target_name}){also}"
        else:
            res.reason = "no candidate matched: " + "; ".join(why)


def _target_btf(facts) -> BTF:
    try:
        btf = facts.btf
    except Error as e:
        raise NotSupportedError(f"CO-RE needs target BTF: {e}; pass target_btf=") from None
    if btf is None:
        if getattr(facts, "running_kernel", False):
            raise NotSupportedError("CO-RE needs target BTF: the kernel has no /sys/kernel/btf/vmlinux; "
                                    "pass target_btf=")
        raise NotSupportedError("CO-RE needs target BTF: the kernel facts have none; pass target_btf= "
                                "(or KernelFacts(btf=...))")
    return btf


def _module_btfs(facts, target: BTF) -> Callable[[], list]:
    def modules() -> list:
        if getattr(facts, "running_kernel", False):
            from ..kernel.btf import VMLINUX
            if target.source != VMLINUX:
                return []           # a custom target BTF replaces vmlinux and disables modules (libbpf)
        mods = facts.module_btfs or {}
        return [(name, m) for name, m in mods.items() if m.base is target]
    return modules


def _functions(spec) -> list:
    fns = {id(p.function): p.function for p in spec.programs.values()}
    for fn in spec.functions.values():
        fns.setdefault(id(fn), fn)
    return list(fns.values())


def _resolve_object(spec, facts, programs) -> dict:
    target = _target_btf(facts)
    modules = _module_btfs(facts, target)
    resolver = CoreResolver(spec.btf, target, modules)
    by_function = {id(p.function): p for p in spec.programs.values()}
    fns: dict[str, list] = {}
    for fn in _functions(spec):
        fns.setdefault(fn.section, []).append(fn)
    out = {}
    for section, recs in spec.btf_ext.core_relos.items():
        for i, rec in enumerate(recs):
            if rec.insn_off % I.INSN_SIZE:
                res = Resolution(section, i, rec.insn_off, CoreKind.FIELD_BYTE_OFFSET)
                res.error = f"insn_off {rec.insn_off} is not a multiple of 8"
                out[(section, rec.insn_off)] = res
                continue
            n = rec.insn_off // I.INSN_SIZE
            fn = next((f for f in fns.get(section, ()) if f.sec_insn_off <= n < f.sec_insn_off + f.insn_cnt), None)
            if fn is None:
                continue        # in no function: an eliminated __weak duplicate (libbpf skips it)
            prog = by_function.get(id(fn))
            if prog is not None and prog.name not in programs:
                continue        # a program that is not loaded: libbpf does not relocate it
            out[(section, rec.insn_off)] = resolver.resolve(rec, i, section)
    _index(target).flush()
    return out


def _target_name(target: BTF) -> str:
    src = target.source or "BTF"
    return "vmlinux" if src.endswith("/vmlinux") else src
