"""CO-RE relocations (pybpf.loader.core).

Pure tests relocate against hand-built BTF and against a clang-built BTF in which
task_struct and friends have other layouts, with no kernel.  Kernel tests load
programs/core_read.o, trigger it with getpid() and compare what it read with
/proc and the running kernel's BTF, compare every relocation with libbpf's
debug log (bpftool -d prog loadall), and check that a reachable failed
relocation is reported by name (programs/core_fail.o).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
from types import SimpleNamespace

import pytest
from elftools.elf.elffile import ELFFile

import pybpf
from pybpf.loader import core
from pybpf.loader.core import CoreError, CoreKind, essential_name, parse_spec
from pybpf.loader.facts import KernelFacts
from pybpf.loader.relocate import link_program
from pybpf.spec import insn as I
from pybpf.spec.btf import BTF

from btf_builder import BTFBuilder
from conftest import program

VMLINUX = "/sys/kernel/btf/vmlinux"
POISON = (0x85, 0, 0, 0, 0xBAD2310)      # call unknown#195896080


# -- helpers ---------------------------------------------------------------------------------------

def relo(btf_builder: BTFBuilder, type_id: int, access: str, kind: int, insn_off: int = 0):
    """A CoreRelo-like record (the access string is added to the builder's strings)."""
    return SimpleNamespace(insn_off=insn_off, type_id=type_id, access_str_off=btf_builder.s(access), kind=kind)


def clang_btf(tmp_path, source: str, name: str = "target") -> str:
    """Compile C with clang -g -target bpf and write its .BTF section to a raw BTF file."""
    clang = shutil.which("clang-19")
    if clang is None:
        pytest.skip("needs clang-19 to build a target BTF")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    obj = tmp_path / f"{name}.o"
    subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(obj)], check=True)
    with open(obj, "rb") as f:
        data = ELFFile(f).get_section_by_name(".BTF").data()
    out = tmp_path / f"{name}.btf"
    out.write_bytes(data)
    return str(out)


def insn_value(insns, idx: int) -> int:
    """The relocatable value of instruction ``idx``: ALU imm, LDX/ST/STX off, or the ld_imm64 value."""
    code, _dst, _src, off, imm = I.decode(insns, idx)
    if code == I.LD_IMM64:
        return (imm & 0xFFFFFFFF) | ((I.get_imm(insns, idx + 1) & 0xFFFFFFFF) << 32)
    if code & 7 in (1, 2, 3):
        return off
    return imm


def linked_values(spec, prog_name: str, facts) -> dict:
    """{(kind, local path): [value or 'poison' per relocated instruction]} of one linked program."""
    prog = spec.programs[prog_name]
    lp = link_program(spec, prog, facts)
    resolved = core.resolve_object(spec, facts, {prog_name} | {p.name for p in spec.programs.values() if p.autoload})
    out: dict = {}
    for fn, start in lp.layout:
        for rec in spec.btf_ext.core_relos.get(fn.section, ()):
            n = rec.insn_off // 8
            if not fn.sec_insn_off <= n < fn.sec_insn_off + fn.insn_cnt:
                continue
            idx = start + n - fn.sec_insn_off
            res = resolved[(fn.section, rec.insn_off)]
            value = "poison" if I.decode(lp.insns, idx) == POISON else insn_value(lp.insns, idx)
            out.setdefault((res.kind.log_name, res.local.path()), []).append(value)
    return out


@pytest.fixture(scope="module")
def vmlinux():
    if not os.path.exists(VMLINUX):
        pytest.skip("no /sys/kernel/btf/vmlinux")
    return BTF.load(VMLINUX)


# -- names, access strings, specs ------------------------------------------------------------------

@pytest.mark.parametrize("name,ess", [
    ("task_struct___old", "task_struct"), ("foo___2", "foo"), ("x___y___z", "x___y"),
    ("a____b", "a____b"), ("foo___", "foo___"), ("___a", "___a"), ("task_struct__safe_rcu", "task_struct__safe_rcu"),
    ("nf_conn___init", "nf_conn"), ("BPF_MAP_TYPE_RINGBUF___new", "BPF_MAP_TYPE_RINGBUF"), ("plain", "plain"),
])
def test_essential_name(name, ess):
    assert essential_name(name) == ess


def sample_btf():
    """struct sample { int a; struct { int b[10]; }; } (the uapi comment's example), plus extras."""
    b = BTFBuilder()
    INT = b.int_("int", 4, signed=True)
    ARR = b.array(INT, 10)
    ANON = b.struct("", 40, [("b", ARR, 0)])
    SAMPLE = b.struct("sample", 44, [("a", INT, 0), ("", ANON, 32)])
    FLEX = b.struct("flex", 8, [("n", INT, 0), ("data", b.array(INT, 0), 32)])
    ENUM = b.enum("e", [("E_A", 0), ("E_B", 7)])
    return b, SimpleNamespace(INT=INT, ARR=ARR, ANON=ANON, SAMPLE=SAMPLE, FLEX=FLEX, ENUM=ENUM)


def test_parse_spec_fields():
    b, t = sample_btf()
    btf = b.btf()
    spec = parse_spec(btf, t.SAMPLE, "0:1:0:5", CoreKind.FIELD_BYTE_OFFSET)   # &s->b[5]
    assert spec.raw == [0, 1, 0, 5]
    assert [(a.idx, a.name) for a in spec.accessors] == [(0, None), (0, "b"), (5, None)]   # anonymous: no accessor
    assert spec.bit_offset == (4 + 5 * 4) * 8
    assert spec.format() == f"<byte_off> [{t.SAMPLE}] struct sample.b[5] (0:1:0:5 @ offset 24)"
    assert parse_spec(btf, t.SAMPLE, "3:0", CoreKind.FIELD_BYTE_OFFSET).bit_offset == 3 * 44 * 8   # s[3].a
    assert parse_spec(btf, t.FLEX, "0:1:100", CoreKind.FIELD_BYTE_OFFSET).bit_offset == (4 + 400) * 8  # flexible
    e = parse_spec(btf, t.ENUM, "1", CoreKind.ENUMVAL_VALUE)
    assert e.accessors[0].name == "E_B" and e.format() == f"<enumval_value> [{t.ENUM}] enum e::E_B = 7"
    assert parse_spec(btf, t.SAMPLE, "0", CoreKind.TYPE_SIZE).format() == f"<type_size> [{t.SAMPLE}] struct sample"


@pytest.mark.parametrize("access,kind,msg", [
    ("", 0, "not of the form"), (":0", 0, "not of the form"), ("0:x", 0, "not of the form"),
    ("0::1", 0, "not of the form"), ("0:-1", 0, "not of the form"),
    ("0:2", 0, "member index 2 out of range"), ("0:1:0:10", 0, "array index 10 out of range"),
    ("0:0:0", 0, "unexpected kind int"), ("1", CoreKind.TYPE_EXISTS, 'take the access string "0"'),
    (":".join(["0"] * 65), 0, "more than 64"),
])
def test_parse_spec_errors(access, kind, msg):
    b, t = sample_btf()
    with pytest.raises(CoreError, match=msg):
        parse_spec(b.btf(), t.SAMPLE, access, kind)


def test_parse_spec_enum_errors():
    b, t = sample_btf()
    with pytest.raises(CoreError, match="not an enumerator index"):
        parse_spec(b.btf(), t.ENUM, "2", CoreKind.ENUMVAL_EXISTS)
    with pytest.raises(CoreError, match="not an enumerator index"):
        parse_spec(b.btf(), t.SAMPLE, "0", CoreKind.ENUMVAL_VALUE)


# -- matching rules on hand-built BTF ---------------------------------------------------------------

def two_btfs():
    """A local and a target BTF sharing names, with layout differences."""
    lb, tb = BTFBuilder(), BTFBuilder()
    L = SimpleNamespace(INT=lb.int_("int", 4, signed=True), UINT=lb.int_("unsigned int", 4),
                        LONG=lb.int_("long", 8, signed=True), USHORT=lb.int_("unsigned short", 2),
                        SHORT=lb.int_("short", 2, signed=True))
    T = SimpleNamespace(INT=tb.int_("int", 4, signed=True), UINT=tb.int_("unsigned int", 4),
                        LONG=tb.int_("long int", 8, signed=True), ULONG=tb.int_("long unsigned int", 8))
    return lb, tb, L, T


def test_field_match_by_name_through_anonymous_members():
    lb, tb, L, T = two_btfs()
    lfoo = lb.struct("foo", 8, [("a", L.INT, 0), ("b", L.INT, 32)])
    # target: b moved into an anonymous union at offset 16, a after it
    anon = tb.union("", 8, [("x", T.LONG, 0), ("b", T.INT, 0)])
    tfoo = tb.struct("foo", 32, [("pad", T.LONG, 0), ("", anon, 128), ("a", T.INT, 192)])
    lbtf, tbtf = lb.btf(), tb.btf()
    local = parse_spec(lbtf, lfoo, "0:1", CoreKind.FIELD_BYTE_OFFSET)
    targ = core.match_candidate(local, tbtf, tfoo)
    assert targ.bit_offset == 128 and targ.raw == [0, 1, 1]
    assert targ.format() == f"<byte_off> [{tfoo}] struct foo.b (0:1:1 @ offset 16)"
    why = []
    assert core.match_candidate(parse_spec(lbtf, lfoo, "0:0", 0), tbtf, tfoo, why).bit_offset == 192
    nob = tb.struct("foo", 4, [("a", T.INT, 0)])
    assert core.match_candidate(local, tb.btf(), nob, why) is None and why == ["has no field 'b'"]


def test_fields_are_compat_rules():
    lb, tb, L, T = two_btfs()
    lptr, tptr = lb.ptr(L.INT), tb.ptr(T.LONG)
    lenum, tenum64 = lb.enum("e___x", [("A", 1)]), tb.enum64("e", [("A", 1)])
    tother = tb.enum("other", [("A", 1)])
    lanon = lb.enum("", [("A", 1)])
    lstruct, tunion = lb.struct("s", 4, [("a", L.INT, 0)]), tb.union("u", 4, [("a", T.INT, 0)])
    larr, tarr = lb.array(L.INT, 3), tb.array(T.UINT, 99)
    lbf = lb.int_("odd", 4, bit_off=3)
    lbtf, tbtf = lb.btf(), tb.btf()
    fc = core.fields_are_compat
    assert fc(lbtf, L.INT, tbtf, T.LONG)             # any ints: size and sign ignored
    assert fc(lbtf, lptr, tbtf, tptr)                # any pointers
    assert fc(lbtf, lenum, tbtf, tenum64)            # ENUM ~ ENUM64, essential names
    assert not fc(lbtf, lenum, tbtf, tother)
    assert fc(lbtf, lanon, tbtf, tother)             # anonymous matches any
    assert fc(lbtf, lstruct, tbtf, tunion)           # composite ~ composite
    assert fc(lbtf, larr, tbtf, tarr)                # arrays: element compat, length ignored
    assert not fc(lbtf, L.INT, tbtf, tptr)
    assert not fc(lbtf, lbf, tbtf, T.INT)            # int with a bit offset


def test_types_match_is_strict():
    lb, tb, L, T = two_btfs()
    # "long" is not "long int": names are compared after skipping typedefs
    assert not core.types_match(lb.btf(), L.LONG, tb.btf(), T.LONG)
    lb, tb, L, T = two_btfs()
    ls = lb.struct("s___v2", 8, [("a", L.INT, 0), ("p", lb.ptr(lb.fwd("inner")), 64)])
    inner = tb.struct("inner", 4, [("z", T.INT, 0)])
    ts = tb.struct("s", 16, [("p", tb.ptr(inner), 0), ("a", T.INT, 64), ("extra", T.INT, 96)])
    le, te = lb.enum("e", [("B", 1)], size=4), tb.enum("e", [("A", 0), ("B", 9)], size=4)
    te8 = tb.enum64("e", [("B", 1)])
    lbtf, tbtf = lb.btf(), tb.btf()
    assert core.types_match(lbtf, ls, tbtf, ts)       # member subset, any order; fwd behind a pointer ~ struct
    assert core.types_match(lbtf, le, tbtf, te)       # enumerator names, values ignored
    assert not core.types_match(lbtf, le, tbtf, te8)  # sizes differ
    assert not core.types_match(lbtf, ls, tbtf, inner)


def test_types_are_compat():
    lb, tb, L, T = two_btfs()
    lp = lb.typedef("fn_t", lb.ptr(lb.func_proto(L.INT, [("a", lb.ptr(L.INT))])))
    tp = tb.typedef("fn_t", tb.ptr(tb.func_proto(T.LONG, [("x", tb.ptr(T.UINT))])))
    tp2 = tb.typedef("fn_t", tb.ptr(tb.func_proto(T.LONG, [])))
    lbtf, tbtf = lb.btf(), tb.btf()
    assert core.types_are_compat(lbtf, lp, tbtf, tp)
    assert not core.types_are_compat(lbtf, lp, tbtf, tp2)
    assert not core.types_are_compat(lbtf, lp, tbtf, T.INT)     # raw kinds differ (typedef vs int)


# -- resolution: values, candidates, ambiguity, modules ----------------------------------------------

def resolve(lb, tbtf, type_id, access, kind):
    """Resolve one relocation with a fresh resolver (the access string joins the local BTF first)."""
    rec = relo(lb, type_id, access, kind)
    return core.CoreResolver(lb.btf(), tbtf).resolve(rec)


def test_bitfield_values_follow_libbpf_not_clang():
    # task_struct.sched_reset_on_fork: bit 9504, 1 bit, unsigned int (core.md section 9)
    lb, tb, L, T = two_btfs()
    lt = lb.struct("task_struct", 3264, [("sched_reset_on_fork", L.UINT, 9504, 1)], kflag=1)
    tt = tb.struct("task_struct", 3264, [("sched_reset_on_fork", T.UINT, 9504, 1)], kflag=1)
    tbtf = tb.btf()
    got = {}
    for kind in (0, 1, 3, 4, 5):
        res = resolve(lb, tbtf, lt, "0:0", kind)
        assert res.error is None and not res.poison
        got[CoreKind(kind).log_name] = res.new
        assert res.validate == (kind in (3, 5))      # clang's bitfield container is not checked
    assert got == {"byte_off": 1188, "byte_sz": 4, "signed": 0, "lshift_u64": 63, "rshift_u64": 63}
    # clang's 8-byte container is accepted and patched
    insns = bytearray(struct.pack("<BBhi", 0xB7, 1, 0, 1184))
    core.patch_insn(insns, 0, resolve(lb, tbtf, lt, "0:0", 0))
    assert I.decode(insns, 0)[4] == 1188


def test_bitfield_straddling_needs_wider_load():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("s", 8, [("f", L.UINT, 0, 4)], kflag=1)
    tb.struct("s", 8, [("f", T.UINT, 30, 4)], kflag=1)    # bits 30..33: a 4-byte load cannot hold them
    tbtf = tb.btf()
    assert resolve(lb, tbtf, lt, "0:0", 0).new == 0
    assert resolve(lb, tbtf, lt, "0:0", 1).new == 8
    assert resolve(lb, tbtf, lt, "0:0", 4).new == 64 - 34
    assert resolve(lb, tbtf, lt, "0:0", 5).new == 60
    lt2 = lb.struct("wide", 16, [("f", L.LONG, 60, 8)], kflag=1)
    tb.struct("wide", 16, [("f", T.LONG, 60, 8)], kflag=1)       # bits 60..67: no single load
    assert "can't be read with a 64-bit load" in resolve(lb, tb.btf(), lt2, "0:0", 0).error



# (target int size, signed, bit offset, bit size, struct size) -> (byte_off, byte_sz, lshift_u64, rshift_u64):
# libbpf's bpf_core_calc_field_relo starts at the field type's size and doubles the load
# (re-aligning its offset down) while "bit_off + bit_sz - byte_off * 8 > byte_sz * 8";
# a field that ends exactly at the load's end fits it
BITFIELD_EDGES = [
    ((4, False, 28, 4, 4), (0, 4, 32, 60)),        # ends at the 4-byte edge
    ((4, False, 0, 32, 4), (0, 4, 32, 32)),        # fills the whole container
    ((4, False, 60, 4, 8), (4, 4, 32, 60)),        # ends at the second word's edge
    ((4, False, 33, 31, 8), (4, 4, 32, 33)),
    ((4, False, 29, 4, 8), (0, 8, 31, 60)),        # one bit past the 4-byte edge: 8 bytes
    ((4, False, 30, 4, 8), (0, 8, 30, 60)),        # straddles
    ((8, False, 60, 4, 8), (0, 8, 0, 60)),         # ends at the 8-byte edge
    ((2, False, 12, 4, 2), (0, 2, 48, 60)),        # 2-byte edge
    ((2, False, 14, 4, 4), (0, 4, 46, 60)),        # straddles 2 bytes: 4
    ((1, False, 4, 4, 1), (0, 1, 56, 60)),         # 1-byte edge
    ((1, False, 7, 2, 2), (0, 2, 55, 62)),         # straddles 1 byte: 2
    ((4, True, 28, 4, 4), (0, 4, 32, 60)),         # signed, at the edge
]


@pytest.mark.parametrize("field,expect", BITFIELD_EDGES, ids=lambda v: "-".join(map(str, v)))
def test_bitfield_load_at_container_edges_as_libbpf(field, expect):
    size, signed, bit_off, bits, struct_size = field
    lb, tb = BTFBuilder(), BTFBuilder()
    lint = lb.int_("x_t", size, signed=signed)
    tint = tb.int_("x_t", size, signed=signed)
    lt = lb.struct("edge", struct_size, [("f", lint, 0, bits)], kflag=1)    # local: at bit 0
    tb.struct("edge", struct_size, [("f", tint, bit_off, bits)], kflag=1)
    tbtf = tb.btf()
    got = []
    for kind in (CoreKind.FIELD_BYTE_OFFSET, CoreKind.FIELD_BYTE_SIZE, CoreKind.FIELD_LSHIFT_U64,
                 CoreKind.FIELD_RSHIFT_U64):
        res = resolve(lb, tbtf, lt, "0:0", kind)
        assert res.error is None and not res.poison, res.error
        got.append(res.new)
    assert tuple(got) == expect
    assert resolve(lb, tbtf, lt, "0:0", CoreKind.FIELD_SIGNED).new == int(signed)
    # the load covers the bits and stays aligned to its size
    byte_off, byte_sz, lshift, rshift = expect
    assert byte_off % byte_sz == 0 and byte_off * 8 <= bit_off and bit_off + bits <= (byte_off + byte_sz) * 8
    assert 64 - lshift - (bit_off - byte_off * 8) == bits == 64 - rshift


def test_bitfield_past_an_8_byte_load_is_an_error():
    lb, tb = BTFBuilder(), BTFBuilder()
    lt = lb.struct("edge", 16, [("f", lb.int_("x_t", 8), 0, 4)], kflag=1)
    tb.struct("edge", 16, [("f", tb.int_("x_t", 8), 61, 4)], kflag=1)       # bits 61..64
    res = resolve(lb, tb.btf(), lt, "0:0", CoreKind.FIELD_BYTE_OFFSET)
    assert "can't be read with a 64-bit load" in res.error

def test_type_and_enum_values():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("t___mine", 4, [("a", L.INT, 0)])
    tt = tb.struct("t", 24, [("a", T.INT, 0)])
    lu64 = lb.typedef("u64", L.LONG)
    tu64 = tb.typedef("u64", T.ULONG)
    le = lb.enum("e___v", [("X___v", 1), ("GONE", 2)])
    te = tb.enum64("e", [("Y", 5), ("X", 0x123456789A)])
    lneg = lb.enum("n", [("NEG", -1)], signed=True)
    tneg = tb.enum("n", [("NEG", -2)], signed=True)
    tbtf = tb.btf()
    assert resolve(lb, tbtf, lt, "0", CoreKind.TYPE_SIZE).new == 24
    assert resolve(lb, tbtf, lt, "0", CoreKind.TYPE_ID_TARGET).new == tt
    assert resolve(lb, tbtf, lt, "0", CoreKind.TYPE_ID_LOCAL).new == lt
    assert resolve(lb, tbtf, lu64, "0", CoreKind.TYPE_EXISTS).new == 1        # a typedef root
    assert resolve(lb, tbtf, lu64, "0", CoreKind.TYPE_SIZE).new == 8
    assert resolve(lb, tbtf, lu64, "0", CoreKind.TYPE_ID_TARGET).new == tu64   # the target's typedef
    assert resolve(lb, tbtf, le, "0", CoreKind.ENUMVAL_VALUE).new == 0x123456789A
    assert resolve(lb, tbtf, le, "0", CoreKind.ENUMVAL_EXISTS).new == 1
    gone = resolve(lb, tbtf, le, "1", CoreKind.ENUMVAL_VALUE)
    assert gone.poison and "has no enumerator GONE" in gone.reason
    assert resolve(lb, tbtf, le, "1", CoreKind.ENUMVAL_EXISTS).new == 0
    assert resolve(lb, tbtf, lneg, "0", CoreKind.ENUMVAL_VALUE).new == (1 << 64) - 2   # s32, sign-extended
    assert resolve(lb, tbtf, lneg, "0", CoreKind.TYPE_ID_TARGET).new == tneg


def test_nothing_found_gives_zero_or_poison():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("nothere___x", 4, [("a", L.INT, 0)])
    tbtf = tb.btf()
    for kind, new in ((CoreKind.FIELD_EXISTS, 0), (CoreKind.TYPE_EXISTS, 0), (CoreKind.TYPE_SIZE, 0),
                      (CoreKind.TYPE_ID_TARGET, 0), (CoreKind.TYPE_MATCHES, 0)):
        res = resolve(lb, tbtf, lt, "0" if kind in core.TYPE_KINDS else "0:0", kind)
        assert (res.poison, res.new) == (False, new), kind
    res = resolve(lb, tbtf, lt, "0:0", CoreKind.FIELD_BYTE_OFFSET)
    assert res.poison
    assert res.reason == ("no struct named 'nothere' (the essential name of 'nothere___x') "
                          "in the target BTF (hand-built)")


def test_kind_must_be_compatible_for_candidates():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("thing", 4, [("a", L.INT, 0)])
    tb.union("thing", 4, [("a", T.INT, 0)])          # same name, other kind: not a candidate
    tb.typedef("thing", T.INT)
    assert core.find_candidates(lb.btf(), lt, tb.btf()) == []


def test_anonymous_root_is_an_error():
    lb, tb, L, T = two_btfs()
    anon = lb.struct("", 4, [("a", L.INT, 0)])
    res = resolve(lb, tb.btf(), anon, "0:0", 0)
    assert "doesn't support anonymous types" in res.error


def test_ambiguity():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("conn", 8, [("a", L.INT, 0), ("b", L.INT, 32)])
    tb.struct("conn", 8, [("a", T.INT, 0), ("b", T.INT, 32)])
    tb.struct("conn___init", 12, [("pad", T.INT, 0), ("a", T.INT, 32), ("b", T.INT, 64)])
    tbtf = tb.btf()
    assert "field offset ambiguity" in resolve(lb, tbtf, lt, "0:1", 0).error
    assert "field offset ambiguity" in resolve(lb, tbtf, lt, "0:1", CoreKind.FIELD_EXISTS).error
    assert "relocation decision ambiguity" in resolve(lb, tbtf, lt, "0", CoreKind.TYPE_SIZE).error
    # agreeing candidates are fine
    assert resolve(lb, tbtf, lt, "0", CoreKind.TYPE_EXISTS).new == 1


def test_candidates_are_cached_and_pruned_like_libbpf(monkeypatch):
    lb, tb, L, T = two_btfs()
    lt = lb.struct("conn", 8, [("a", L.INT, 0), ("only_in_init", L.INT, 32)])
    c1 = tb.struct("conn", 8, [("a", T.INT, 0)])
    c2 = tb.struct("conn___init", 8, [("a", T.INT, 0), ("only_in_init", T.INT, 32)])
    lb.s("0:0"), lb.s("0:1")
    lbtf, tbtf = lb.btf(), tb.btf()
    calls = []
    real = core.find_candidates
    monkeypatch.setattr(core, "find_candidates", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    r = core.CoreResolver(lbtf, tbtf)
    assert [c.type_id for c in r._candidates(lt)] == [c1, c2]
    assert r.resolve(relo(lb, lt, "0:1", 0)).new == 4        # only conn___init has the field
    assert [c.type_id for c in r.cands[lt]] == [c2]           # the list shrinks to what matched
    assert r.resolve(relo(lb, lt, "0:0", 0)).new == 0
    assert calls == [lt]                                      # one search per local type


def test_module_btf_only_when_vmlinux_has_no_candidate():
    base = BTFBuilder()
    INT = base.int_("int", 4, signed=True)
    base.int_("long", 8, signed=True)
    vm_task = base.struct("task", 4, [("a", INT, 0)])
    base_btf = base.btf()
    mod = BTFBuilder(first_id=len(base_btf.types), str_base=base_btf._str_end)
    mod.str_offs.update(base.str_offs)                                # names may point into the base's strings
    mod_thing = mod.struct("mod_thing", 16, [("pad", INT, 0), ("x", INT, 64)])
    mod.struct("task", 8, [("b", INT, 0)])                      # shadowed: vmlinux has a 'task'
    mod_btf = mod.btf(base=base_btf)
    lb = BTFBuilder()
    LINT = lb.int_("int", 4, signed=True)
    lthing = lb.struct("mod_thing___x", 4, [("x", LINT, 0)])
    ltask = lb.struct("task", 4, [("b", LINT, 0)])
    lb.s("0:0"), lb.s("0")
    lbtf = lb.btf()
    searched = []

    def modules():
        searched.append(1)
        return [("mymod", mod_btf)]
    r = core.CoreResolver(lbtf, base_btf, modules)
    res = r.resolve(relo(lb, lthing, "0:0", 0))
    assert res.new == 8 and res.target.btf is mod_btf
    assert r.resolve(relo(lb, lthing, "0", CoreKind.TYPE_ID_TARGET)).new == mod_thing   # split id
    assert searched == [1]
    res = r.resolve(relo(lb, ltask, "0:0", 0))
    assert res.poison and "has no field 'b'" in res.reason        # the module's task is not a candidate
    assert searched == [1]
    assert str(r.cands[ltask][0]) == f"[{vm_task}] struct task (hand-built)"


def test_module_search_reports_count():
    base = BTFBuilder()
    base.int_("int", 4, signed=True)
    base_btf = base.btf()
    lb = BTFBuilder()
    lt = lb.struct("ghost", 4, [("a", lb.int_("int", 4, signed=True), 0)])
    rec = relo(lb, lt, "0:0", 0)
    mods = [("m1", BTFBuilder(first_id=2, str_base=base_btf._str_end).btf(base=base_btf))]
    res = core.CoreResolver(lb.btf(), base_btf, lambda: mods).resolve(rec)
    assert res.poison and res.reason.endswith("or in any of 1 module BTFs")


# -- patching ------------------------------------------------------------------------------------------

def res_for(kind, orig, new, **kw):
    r = core.Resolution("s", 0, 0, CoreKind(kind), orig=orig, new=new, **kw)
    return r


def test_patch_alu_ldx_ldimm64():
    insns = bytearray(struct.pack("<BBhi", 0xB7, 1, 0, 8) + struct.pack("<BBhi", 0x61, 0x21, 8, 0)
                      + struct.pack("<BBhi", 0x18, 1, 0, 1) + struct.pack("<BBhi", 0, 0, 0, 0))
    core.patch_insn(insns, 0, res_for(0, 8, 40))
    core.patch_insn(insns, 1, res_for(0, 8, 40))
    core.patch_insn(insns, 2, res_for(11, 1, 0x123456789A))
    assert I.decode(insns, 0) == (0xB7, 1, 0, 0, 40)
    assert I.decode(insns, 1) == (0x61, 1, 2, 40, 0)
    assert insn_value(insns, 2) == 0x123456789A
    with pytest.raises(CoreError, match=r"unexpected insn #0 \(ALU/ALU64\) value: got 40, exp 8 -> 9"):
        core.patch_insn(insns, 0, res_for(0, 8, 9))
    with pytest.raises(CoreError, match="unexpected insn #1 .LDX/ST/STX. value"):
        core.patch_insn(insns, 1, res_for(0, 8, 9))
    with pytest.raises(CoreError, match="value too big"):
        core.patch_insn(insns, 1, res_for(0, 40, 40000))
    core.patch_insn(insns, 0, res_for(0, 1, 2, validate=False))         # not validated
    jmp = bytearray(struct.pack("<BBhi", 0x05, 0, 1, 0))
    with pytest.raises(CoreError, match="unrecognized insn"):
        core.patch_insn(jmp, 0, res_for(0, 0, 1))
    alu_x = bytearray(struct.pack("<BBhi", 0xBF, 0x21, 0, 0))
    with pytest.raises(CoreError, match="immediate"):
        core.patch_insn(alu_x, 0, res_for(0, 0, 1))


def test_patch_ldx_size_change_and_poison():
    insns = bytearray(struct.pack("<BBhi", 0x69, 0x21, 4, 0) * 2)          # r1 = *(u16 *)(r2 + 4)
    core.patch_insn(insns, 0, res_for(0, 4, 12, orig_sz=2, new_sz=4))        # unsigned: widened to u32
    assert I.decode(insns, 0) == (0x61, 1, 2, 12, 0)
    why = core.patch_insn(insns, 1, res_for(0, 4, 12, orig_sz=2, new_sz=4, fail_memsz_adjust=True))
    assert "accesses field incorrectly" in why and I.decode(insns, 1) == POISON


def test_poison_ldimm64_takes_both_slots():
    insns = bytearray(struct.pack("<BBhi", 0x18, 1, 0, 5) + struct.pack("<BBhi", 0, 0, 0, 0))
    core.patch_insn(insns, 0, res_for(11, 5, 0, poison=True, reason="gone"))
    assert I.decode(insns, 0) == POISON and I.decode(insns, 1) == POISON


def test_memsz_adjust_is_safe_only_for_pointers_and_unsigned():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("s", 8, [("u", L.USHORT, 0), ("i", L.SHORT, 16), ("p", lb.ptr(L.INT), 32)])
    tt = tb.struct("s", 16, [("u", T.UINT, 0), ("i", T.INT, 32), ("p", tb.ptr(T.INT), 64)])
    tbtf = tb.btf()
    assert tt
    u = resolve(lb, tbtf, lt, "0:0", 0)
    assert (u.orig_sz, u.new_sz, u.fail_memsz_adjust) == (2, 4, False)
    i = resolve(lb, tbtf, lt, "0:1", 0)
    assert (i.orig_sz, i.new_sz, i.fail_memsz_adjust) == (2, 4, True)
    p = resolve(lb, tbtf, lt, "0:2", 0)
    assert (p.orig_sz, p.new_sz, p.fail_memsz_adjust, p.new) == (8, 8, False, 8)


def test_array_loads_use_the_element_size():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("s", 8, [("a", lb.array(L.USHORT, 4), 0)])
    tb.struct("s", 16, [("a", tb.array(T.UINT, 4), 0)])
    tbtf = tb.btf()
    elem = resolve(lb, tbtf, lt, "0:0:2", 0)        # s->a[2]: an unsigned element, widened
    assert (elem.orig, elem.new, elem.orig_sz, elem.new_sz, elem.fail_memsz_adjust) == (4, 8, 2, 4, False)
    whole = resolve(lb, tbtf, lt, "0:0", 0)         # s->a as a field: element sizes, but an array type
    assert (whole.orig_sz, whole.new_sz, whole.fail_memsz_adjust) == (2, 4, True)


def test_types_match_compares_int_signedness():
    lb, tb = BTFBuilder(), BTFBuilder()
    mine, theirs, same = lb.int_("count_t", 4, signed=True), tb.int_("count_t", 4), tb.int_("count_t", 4, signed=True)
    lbtf, tbtf = lb.btf(), tb.btf()
    assert not core.types_match(lbtf, mine, tbtf, theirs)       # same name and size, other signedness
    assert core.types_match(lbtf, mine, tbtf, same)


def test_zero_length_array_before_the_last_member_is_not_flexible():
    b = BTFBuilder()
    INT = b.int_("int", 4, signed=True)
    mid = b.struct("mid", 4, [("z", b.array(INT, 0), 0), ("after", INT, 0)])
    last = b.struct("last", 4, [("n", INT, 0), ("z", b.array(INT, 0), 32)])
    btf = b.btf()
    with pytest.raises(CoreError, match="array index 1 out of range"):
        parse_spec(btf, mid, "0:0:1", CoreKind.FIELD_BYTE_OFFSET)
    assert parse_spec(btf, last, "0:1:3", CoreKind.FIELD_BYTE_OFFSET).bit_offset == (4 + 12) * 8


def test_field_signed_of_enum_members_follows_the_enum_kflag():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("st", 8, [("s", lb.enum("se", [("NEG", -1)], signed=True), 0),
                             ("u", lb.enum("ue", [("BIG", 7)]), 32)])
    tb.struct("st", 8, [("s", tb.enum("se", [("NEG", -1)], signed=True), 0), ("u", tb.enum("ue", [("BIG", 7)]), 32)])
    tbtf = tb.btf()
    signed = resolve(lb, tbtf, lt, "0:0", CoreKind.FIELD_SIGNED)
    unsigned = resolve(lb, tbtf, lt, "0:1", CoreKind.FIELD_SIGNED)
    assert (signed.orig, signed.new, unsigned.orig, unsigned.new) == (1, 1, 0, 0)


def test_types_match_compares_array_lengths():
    lb, tb, L, T = two_btfs()
    ls = lb.struct("vec", 16, [("a", lb.array(L.INT, 4), 0)])
    t3 = tb.struct("vec", 12, [("a", tb.array(T.INT, 3), 0)])
    t4 = tb.struct("vec___v2", 16, [("a", tb.array(T.INT, 4), 0)])
    lbtf, tbtf = lb.btf(), tb.btf()
    assert not core.types_match(lbtf, ls, tbtf, t3)
    assert core.types_match(lbtf, ls, tbtf, t4)


def test_target_array_index_past_its_length_does_not_match():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("s", 16, [("a", lb.array(L.INT, 4), 0)])
    tb.struct("s", 12, [("a", tb.array(T.INT, 3), 0)])
    tbtf = tb.btf()
    assert resolve(lb, tbtf, lt, "0:0:2", 0).new == 8              # a[2]: in both
    last = resolve(lb, tbtf, lt, "0:0:3", 0)                       # a[3]: not in the target's 3
    assert last.poison and "index [3] is out of range" in last.reason


def test_nested_array_field_sizes_multiply():
    lb, tb, L, T = two_btfs()
    lt = lb.struct("grid", 28, [("m", lb.array(lb.array(L.INT, 3), 2), 0), ("after", L.INT, 192)])
    tb.struct("grid", 52, [("m", tb.array(tb.array(T.INT, 3), 4), 0), ("after", T.INT, 384)])
    tbtf = tb.btf()
    size = resolve(lb, tbtf, lt, "0:0", CoreKind.FIELD_BYTE_SIZE)
    assert (size.orig, size.new) == (2 * 3 * 4, 4 * 3 * 4)
    assert resolve(lb, tbtf, lt, "0", CoreKind.TYPE_SIZE).orig == 28
    row = resolve(lb, tbtf, lt, "0:0:1", CoreKind.FIELD_BYTE_SIZE)    # m[1]: one row of 3 ints
    assert (row.orig, row.new) == (12, 12)


def test_unsigned_32bit_enumerator_above_2_31_patches():
    """clang writes an unsigned enumerator >= 2^31 zero-extended in the ld_imm64; the value is
    checked on its low 32 bits, and the target's value replaces it."""
    lb, tb, L, T = two_btfs()
    le = lb.enum("flags", [("HIGH", 0x80000000)], size=4)
    tb.enum("flags", [("HIGH", 0x90000000)], size=4)
    res = resolve(lb, tb.btf(), le, "0", CoreKind.ENUMVAL_VALUE)
    insns = bytearray(struct.pack("<BBhi", 0x18, 1, 0, -(1 << 31)) + struct.pack("<BBhi", 0, 0, 0, 0))
    assert core.patch_insn(insns, 0, res) is None
    assert insn_value(insns, 0) & 0xFFFFFFFF == 0x90000000


def test_alu_immediate_of_2_31_is_stored_as_s32():
    insns = bytearray(struct.pack("<BBhi", 0xB7, 1, 0, 8))
    core.patch_insn(insns, 0, res_for(CoreKind.FIELD_BYTE_OFFSET, 8, 1 << 31))
    assert I.decode(insns, 0) == (0xB7, 1, 0, 0, -(1 << 31))        # truncated to s32, as libbpf does
    core.patch_insn(insns, 0, res_for(CoreKind.FIELD_BYTE_OFFSET, -(1 << 31) & (2**64 - 1), (1 << 31) - 1))
    assert I.decode(insns, 0) == (0xB7, 1, 0, 0, (1 << 31) - 1)


def test_failure_in_log_names_a_poisoned_ld_imm64_by_either_slot():
    """A poisoned ld_imm64 is two calls: the verifier may stop at either one."""
    def failure(insn, kind):
        return core.CoreFailure(insn=insn, function="f", section="s", relo_index=0, kind=kind, type_id=1,
                                type_name="enum e", path="e::X", access="0", reason="gone", spec="<...>")
    linked = SimpleNamespace(core_failures=[failure(5, "enumval_value"), failure(9, "byte_off")])

    def log(idx):
        return f"{idx}: (85) call unknown#{core.POISON_IMM}\ninvalid func unknown#{core.POISON_IMM}\n"
    assert core.failure_in_log(log(5), linked).insn == 5
    assert core.failure_in_log(log(6), linked).insn == 5           # the ld_imm64's second slot
    assert core.failure_in_log(log(4), linked) is None
    assert core.failure_in_log(log(9), linked).insn == 9
    assert core.failure_in_log(log(10), linked) is None            # not an ld_imm64 relocation


# -- whole objects, offline --------------------------------------------------------------------------

# the kernel structures core_read.bpf.c reads, in other layouts and with other enum values
TARGET_C = r"""
typedef int pid_t;
typedef unsigned int uid_t;
typedef struct { uid_t val; } kuid_t;
struct cred { long usage; long pad[3]; kuid_t uid; };
struct signal_struct { int nr_threads; int pad; unsigned int a:3, is_child_subreaper:1, has_child_subreaper:1; };
struct task_struct {
	unsigned int __state;
	char comm[16];
	pid_t tgid;
	pid_t pid;
	unsigned int sched_reset_on_fork:1;
	struct task_struct *real_parent;
	const struct cred *cred;
	struct signal_struct *signal;
};
enum bpf_map_type { BPF_MAP_TYPE_UNSPEC, BPF_MAP_TYPE_HASH = 5, BPF_MAP_TYPE_RINGBUF = 99 };
struct task_struct t;
struct cred c;
struct signal_struct s;
enum bpf_map_type m;
"""


def test_core_read_against_a_moved_layout(tmp_path):
    path = clang_btf(tmp_path, TARGET_C)
    target = BTF.load(path)
    facts = KernelFacts(btf=target)
    spec = pybpf.open(program("core_read"))
    got = linked_values(spec, "core_getpid", facts)
    task = target.find("struct task_struct").id
    expect = {
        ("byte_off", "struct task_struct.pid"): 24, ("byte_off", "struct task_struct.tgid"): 20,
        ("byte_off", "struct task_struct___sub.tgid"): 20, ("byte_off", "struct task_struct.cred"): 40,
        ("byte_off", "struct cred.uid.val"): 32, ("byte_off", "struct task_struct.comm"): 4,
        ("byte_off", "struct task_struct.comm[2]"): 6, ("byte_sz", "struct task_struct.comm"): 16,
        ("byte_off", "struct task_struct.real_parent"): 32, ("byte_off", "struct task_struct.signal"): 48,
        # bitfields: sched_reset_on_fork is bit 224; is_child_subreaper bit 67
        ("byte_off", "struct task_struct.sched_reset_on_fork"): 28,
        ("byte_sz", "struct task_struct.sched_reset_on_fork"): 4,
        ("lshift_u64", "struct task_struct.sched_reset_on_fork"): 63,
        ("rshift_u64", "struct task_struct.sched_reset_on_fork"): 63,
        ("signed", "struct task_struct.sched_reset_on_fork"): 0,
        ("byte_off", "struct signal_struct.is_child_subreaper"): 8,
        ("byte_sz", "struct signal_struct.is_child_subreaper"): 4,
        ("lshift_u64", "struct signal_struct.is_child_subreaper"): 60,
        ("rshift_u64", "struct signal_struct.is_child_subreaper"): 63,
        ("signed", "struct signal_struct.is_child_subreaper"): 0,
        ("field_exists", "struct task_struct.real_parent"): 1,
        ("field_exists", "struct task_struct___nope.no_such_field"): 0,
        ("byte_off", "struct task_struct___nope.no_such_field"): "poison",   # dead code in the program
        ("type_exists", "struct task_struct"): 1, ("type_exists", "struct no_such_type___x"): 0,
        ("type_matches", "struct task_struct"): 0, ("type_matches", "struct task_struct___sub"): 1,
        ("type_matches", "struct task_struct___mismatch"): 0,
        ("type_size", "struct task_struct"): 56, ("type_size", "struct cred"): 40,
        ("target_type_id", "struct task_struct"): task,
        ("local_type_id", "struct task_struct"): spec.btf.find("struct task_struct").id,
        ("enumval_value", "enum bpf_map_type::BPF_MAP_TYPE_RINGBUF"): 99,
        ("enumval_value", "enum bpf_map_type___new::BPF_MAP_TYPE_RINGBUF___new"): 99,
        ("enumval_value", "enum bpf_map_type::BPF_MAP_TYPE_HASH"): 5,
        ("enumval_exists", "enum bpf_map_type___new::BPF_MAP_TYPE_RINGBUF___new"): 1,
        ("enumval_exists", "enum bpf_map_type___new::BPF_MAP_TYPE_NO_SUCH___new"): 0,
        ("enumval_value", "enum bpf_map_type___new::BPF_MAP_TYPE_NO_SUCH___new"): "poison",
        ("byte_sz", "struct task_struct.pid"): 4, ("signed", "struct task_struct.pid"): 1,
        ("signed", "struct cred.uid.val"): 0,
    }
    assert {k: set(v) for k, v in got.items()} == {k: {v} for k, v in expect.items()}
    # the LDX through the BTF pointer (btf_pid = bt->pid) got the new offset in its off field
    lp = link_program(spec, spec.programs["core_getpid"], facts)
    ldx = [i for i in range(lp.insn_cnt) if I.decode(lp.insns, i)[0] == 0x61 and I.decode(lp.insns, i)[3] == 24]
    assert ldx
    # the poisoned instructions are recorded with their relocation
    fails = {(f.kind, f.path) for f in lp.core_failures}
    assert fails == {("byte_off", "task_struct___nope.no_such_field"),
                     ("enumval_value", "bpf_map_type___new::BPF_MAP_TYPE_NO_SUCH___new")}
    f = next(f for f in lp.core_failures if f.kind == "byte_off")
    assert I.decode(lp.insns, f.insn) == POISON
    assert f.type_name == "struct task_struct___nope" and f.access == "0:0"
    assert f.reason == f"no candidate matched: [{task}] struct task_struct ({path}) has no field 'no_such_field'"


def test_subprogram_copies_are_patched_in_every_program(tmp_path):
    target = BTF.load(clang_btf(tmp_path, TARGET_C))
    facts = KernelFacts(btf=target)
    spec = pybpf.open(program("core_read"))
    for name in ("core_getpid", "core_sys_enter"):
        lp = link_program(spec, spec.programs[name], facts)
        start = dict((fn.name, s) for fn, s in lp.layout)["parent_tgid"]
        vals = [insn_value(lp.insns, start + rec.insn_off // 8)
                for rec in spec.btf_ext.core_relos[".text"]]
        assert vals == [32, 20]             # real_parent, tgid in the moved layout
    # the object's own instructions are untouched: they hold real_parent's offset in the object's BTF
    real_parent = local_member(spec, "real_parent")[2]
    assert insn_value(spec.functions["parent_tgid"].insns, spec.btf_ext.core_relos[".text"][0].insn_off // 8) \
        == real_parent.offset != vals[0]


def local_member(spec, name: str, struct: str = "struct task_struct"):
    """(struct type, member index, member) of ``name`` in ``spec.btf``."""
    t = spec.btf.find(struct)
    i, m = next((i, m) for i, m in enumerate(t.members) if m.name == name)
    return t, i, m


def test_instruction_not_holding_the_local_value_is_an_error(vmlinux):
    spec = pybpf.open(program("core_read"))
    fn = spec.programs["core_getpid"].function
    rec = spec.btf_ext.core_relos[fn.section][0]           # r1 = 0x4f0 (task_struct.pid)
    insns = bytearray(fn.insns)
    I.set_imm(insns, rec.insn_off // 8, 999)
    fn.insns = bytes(insns)
    with pytest.raises(CoreError) as exc:
        link_program(spec, spec.programs["core_getpid"], KernelFacts(btf=vmlinux))
    n = rec.insn_off // 8
    task, idx, pid = local_member(spec, "pid")
    assert re.fullmatch(
        rf"program 'core_getpid': core_getpid\+{n} \(section tracepoint/syscalls/sys_enter_getpid\): "
        rf"CO-RE relocation #0 <byte_off> \[{task.id}\] struct task_struct.pid \(0:{idx} @ offset {pid.offset}\): "
        rf"unexpected insn #{n} \(ALU/ALU64\) value: got 999, exp {pid.offset} -> "
        rf"{local_member(SimpleNamespace(btf=vmlinux), 'pid')[2].offset}", str(exc.value)), str(exc.value)


def test_target_btf_path_through_load_spec_links_offline(tmp_path, monkeypatch):
    path = clang_btf(tmp_path, TARGET_C)
    import pybpf.loader as loader
    seen = {}

    def stop(*a, **k):
        raise RuntimeError("stop before the kernel")
    monkeypatch.setattr(loader, "load_btf", stop)
    real_link = loader.link_program

    def spy(spec, prog, facts):
        lp = real_link(spec, prog, facts)
        seen[prog.name] = lp
        return lp
    monkeypatch.setattr(loader, "link_program", spy)
    with pytest.raises(RuntimeError, match="stop before the kernel"):
        pybpf.load(program("core_read"), target_btf=path)
    assert set(seen) == {"core_getpid", "core_sys_enter"}
    lp = seen["core_sys_enter"]
    assert 20 in [insn_value(lp.insns, i) for i in range(lp.insn_cnt)]     # tgid at 20


def test_no_target_btf_is_a_clear_error():
    spec = pybpf.open(program("core_read"))
    with pytest.raises(pybpf.NotSupportedError, match="CO-RE needs target BTF.*pass target_btf="):
        link_program(spec, spec.programs["core_getpid"], KernelFacts())


def test_unapplicable_relocation_names_program_and_relocation(tmp_path):
    # pid beyond 32767: the ALU relocations take it, the LDX's 16-bit offset cannot (ERANGE in libbpf)
    target = BTF.load(clang_btf(tmp_path, TARGET_C.replace("pid_t pid;", "char big[40000]; pid_t pid;")))
    spec = pybpf.open(program("core_read"))
    with pytest.raises(CoreError) as exc:
        link_program(spec, spec.programs["core_getpid"], KernelFacts(btf=target))
    msg = str(exc.value)
    task, idx, pid = local_member(spec, "pid")
    big = local_member(SimpleNamespace(btf=target), "pid")[2].offset
    assert big > 0x7FFF
    assert re.match(rf"program 'core_getpid': core_getpid\+\d+ \(section tracepoint/syscalls/sys_enter_getpid\): "
                    rf"CO-RE relocation #\d+ <byte_off> \[{task.id}\] struct task_struct.pid "
                    rf"\(0:{idx} @ offset {pid.offset}\): insn #\d+ \(LDX/ST/STX\) value too big: {big}", msg), msg
    assert isinstance(exc.value, pybpf.ObjectError)


def test_link_decodes_little_of_vmlinux(vmlinux):
    """Candidates come from string and record searches: linking decodes only the types the
    relocations walk through, and never builds the BTF's by-name index."""
    btf = BTF(bytes(vmlinux.raw), source=VMLINUX)
    spec = pybpf.open(program("core_read"))
    facts = KernelFacts(btf=btf)
    for prog in spec.programs.values():
        link_program(spec, prog, facts)
    assert btf._by_name is None
    assert len(btf._cache) < 300, len(btf._cache)


def test_running_kernel_candidates_are_cached_on_disk_for_the_boot(vmlinux, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = pybpf.open(program("core_heavy"))

    def resolve_fresh():
        btf = BTF(bytes(vmlinux.raw), source=VMLINUX)       # a new object: no in-process memo
        out = core.resolve_object(spec, KernelFacts(btf=btf), {"heavy"})
        return btf, {k: (r.new, r.poison) for k, r in out.items()}
    btf1, first = resolve_fresh()
    files = list((tmp_path / "pybpf" / "core").iterdir())
    assert len(files) == 1 and files[0].name.startswith("vmlinux-")
    assert core._index(btf1)._strings                       # the first process searched
    btf2, second = resolve_fresh()
    assert second == first and not core._index(btf2)._strings   # the second did not
    # a cache that no longer fits the BTF is noticed and dropped
    files[0].write_text('{"task_struct": [1], "cred": [2]}')
    btf3, third = resolve_fresh()
    assert third == first and core._index(btf3)._strings
    files[0].write_text("not json")
    assert resolve_fresh()[1] == first
    # only the running kernel's vmlinux is cached
    assert core._disk_cache_name(BTF(bytes(vmlinux.raw), source="copy.btf")) is None


def test_same_results_as_clang_against_the_kernel_it_was_built_for(vmlinux):
    """programs/vmlinux.h is this kernel's: every non-bitfield relocation keeps clang's value."""
    spec = pybpf.open(program("core_read"))
    if spec.btf.find("struct task_struct").size != vmlinux.find("struct task_struct").size:
        pytest.skip("programs/vmlinux.h is not this kernel's")
    resolved = core.resolve_object(spec, KernelFacts(btf=vmlinux), {"core_getpid", "core_sys_enter"})
    for res in resolved.values():
        assert res.error is None
        if res.poison or not res.validate or res.kind in (CoreKind.TYPE_ID_TARGET, CoreKind.TYPE_MATCHES):
            continue
        if res.kind in (CoreKind.FIELD_EXISTS, CoreKind.TYPE_EXISTS, CoreKind.ENUMVAL_EXISTS):
            continue            # clang writes 1 for those
        if "___" in res.local.path():
            continue            # flavored local types: other local layouts
        assert res.orig == res.new, res.describe()


# -- in the kernel ------------------------------------------------------------------------------------

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def run_core_read(**load):
    spec = pybpf.open(program("core_read"))
    spec.variables["target_tgid"].set(os.getpid())
    with spec.load(**load) as obj:
        with obj.programs["core_getpid"].attach():
            os.getpid()
        return {name: v.get() for name, v in obj.variables.items()}


@pytest.fixture
def sched_reset_on_fork():
    """Sets SCHED_RESET_ON_FORK and PR_SET_CHILD_SUBREAPER on this process (restored after)."""
    libc = ctypes.CDLL(None, use_errno=True)
    old_policy = os.sched_getscheduler(0)
    old = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0)
    os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        os.sched_setscheduler(0, old_policy & ~os.SCHED_RESET_ON_FORK, os.sched_param(0))
        libc.prctl(PR_SET_CHILD_SUBREAPER, old.value, 0, 0, 0)


@pytest.mark.kernel
def test_core_read_in_the_kernel(vmlinux, no_fd_leak):
    v = run_core_read()
    assert v["runs"] == 1
    assert v["pid"] == v["tgid"] == v["tgid_sub"] == v["btf_pid"] == os.getpid()
    assert v["ppid"] == os.getppid()
    assert v["uid"] == os.getuid()
    with open("/proc/self/comm") as f:
        assert v["comm"] == f.read().strip()
    assert (v["reset_on_fork"], v["child_subreaper"]) == (0, 0)
    assert (v["has_real_parent"], v["has_no_such_field"], v["nope_read"]) == (1, 0, 7)
    assert (v["has_task_struct"], v["has_no_such_type"]) == (1, 0)
    # libbpf agrees: vmlinux.h spells 'unsigned long' where the kernel's BTF has 'long unsigned int',
    # so the whole task_struct does not "match"; the subset with pid_t members does
    assert (v["matches_task"], v["matches_sub"], v["matches_mismatch"]) == (0, 1, 0)
    task = vmlinux.find("struct task_struct")
    assert v["task_size"] == task.size and v["cred_size"] == vmlinux.find("struct cred").size
    assert v["task_type_id"] == task.id
    assert v["task_local_id"] == pybpf.open(program("core_read")).btf.find("struct task_struct").id
    values = {e.name: e.value for e in vmlinux.find("enum bpf_map_type").values}
    assert v["ringbuf_value"] == v["ringbuf_value_flavored"] == values["BPF_MAP_TYPE_RINGBUF"] == 27
    assert v["hash_value"] == values["BPF_MAP_TYPE_HASH"]
    assert (v["has_ringbuf"], v["has_no_such_enumval"], v["no_such_enumval_value"]) == (1, 0, 99)
    pid_member = next(m for m in task.members if m.name == "pid")
    comm_member = next(m for m in task.members if m.name == "comm")
    assert (v["pid_offset"], v["pid_size"], v["pid_signed"]) == (pid_member.offset, 4, 1)
    assert (v["comm_size"], v["comm2_offset"], v["uid_signed"]) == (16, comm_member.offset + 2, 0)


def proc_stat() -> list:
    """/proc/self/stat fields, 1-based as in proc(5) (fields[1] is the pid)."""
    with open("/proc/self/stat") as f:
        text = f.read()
    head, _, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    return [None, int(pid), comm] + [int(x) if x.lstrip("-").isdigit() else x for x in rest.split()]


def proc_status() -> dict:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.kernel
def test_core_heavy_in_the_kernel(vmlinux, no_fd_leak):
    import resource
    import signal
    spec = pybpf.open(program("core_heavy"))
    assert sum(len(v) for v in spec.btf_ext.core_relos.values()) > 100
    spec.variables["target_tgid"].set(os.getpid())
    with spec.load() as obj:
        with obj.programs["heavy"].attach():
            os.getpid()
        f = obj.variables["facts"].get()
    st, status = proc_stat(), proc_status()
    assert f.runs >= 1
    assert (f.pid, f.tgid, f.leader_pid, f.ppid, f.parent_leader_pid) == (os.getpid(),) * 3 + (os.getppid(),) * 2
    assert (f.prio - 100, f.rt_priority, f.policy) == (st[18], st[41], st[42]) == (st[18], 0, os.sched_getscheduler(0))
    assert f.nr_cpus_allowed == len(os.sched_getaffinity(0))
    assert f.exit_signal == signal.SIGCHLD and f.pdeath_signal == 0
    assert f.start_boottime // (10 ** 9 // os.sysconf("SC_CLK_TCK")) == st[22]
    assert f.comm == st[2]
    # mm_struct: these members sit in an anonymous struct in the kernel's mm_struct
    assert (f.start_code, f.end_code, f.start_stack) == (st[26], st[27], st[28])
    assert (f.start_data, f.end_data, f.start_brk) == (st[45], st[46], st[47])
    assert (f.arg_start, f.arg_end, f.env_start, f.env_end) == (st[48], st[49], st[50], st[51])
    assert f.start_brk <= f.brk and f.total_vm > 0 and f.map_count > 0
    exe = os.path.basename(os.readlink("/proc/self/exe"))
    assert (f.exe, f.exe_len) == (exe[:31], len(exe))
    # signal_struct, cred
    assert f.nr_threads == int(status["Threads"])
    assert (f.nofile_cur, f.nofile_max) == resource.getrlimit(resource.RLIMIT_NOFILE)
    assert f.stack_cur == resource.getrlimit(resource.RLIMIT_STACK)[0] % (1 << 64)
    assert (f.uid, f.euid, f.suid, f.fsuid) == tuple(int(x) for x in status["Uid"].split())
    assert (f.gid, f.egid, f.sgid, f.fsgid) == tuple(int(x) for x in status["Gid"].split())
    assert f.cap_effective == int(status["CapEff"], 16)
    # namespaces, fs, files
    assert (f.nodename, f.sysname) == (os.uname().nodename, os.uname().sysname)
    assert f.umask == int(status["Umask"], 8)
    assert f.max_fds >= len(os.listdir("/proc/self/fd")) and f.root_name == "/"
    # enums and types, from the kernel's BTF
    enum = {e.name: e.value for t in ("enum pid_type", "enum bpf_prog_type", "enum bpf_map_type")
            for e in vmlinux.find(t).values}
    assert (f.tgid_type, f.prog_type_tracing, f.map_type_ringbuf) == \
        (enum["PIDTYPE_TGID"], enum["BPF_PROG_TYPE_TRACING"], enum["BPF_MAP_TYPE_RINGBUF"])
    sizes = [vmlinux.find(f"struct {n}").size for n in ("task_struct", "mm_struct", "cred", "signal_struct",
                                                         "new_utsname")]
    assert [f.size_task, f.size_mm, f.size_cred, f.size_signal, f.size_utsname] == sizes
    assert (f.comm_len, f.exists_mm, f.exists_nsproxy, f.field_exists_rlim, f.field_exists_arg_start) == \
        (16, 1, 1, 1, 1)
    assert (f.reset_on_fork, f.in_execve, f.in_iowait) == (0, 0, 0)


@pytest.mark.kernel
def test_core_read_bitfields_in_the_kernel(sched_reset_on_fork, no_fd_leak):
    v = run_core_read()
    assert (v["reset_on_fork"], v["child_subreaper"]) == (1, 1)


@pytest.mark.kernel
def test_core_read_with_target_btf_file(tmp_path, no_fd_leak):
    copy = tmp_path / "vmlinux.btf"
    shutil.copy(VMLINUX, copy)
    v = run_core_read(target_btf=str(copy))
    assert v["pid"] == os.getpid() and v["ppid"] == os.getppid()


@pytest.mark.kernel
def test_guarded_poison_is_dead_code(no_fd_leak):
    with pybpf.load(program("core_fail")) as obj:
        assert set(obj.programs) == {"guarded"}
        assert [f.kind for f in obj.programs["guarded"].linked.core_failures] == ["byte_off"]


@pytest.mark.kernel
@pytest.mark.parametrize("name,relo,why", [
    ("missing_field", r"<byte_off> \[\d+\] struct task_struct___gone\.gone_field \(0:0 @ offset 0\)",
     r"no candidate matched: \[\d+\] struct task_struct \(vmlinux\) has no field 'gone_field'"),
    ("missing_type", r"<byte_off> \[\d+\] struct no_such_struct\.b \(0:1 @ offset 4\)",
     r"no struct named 'no_such_struct' in the target BTF \(vmlinux\)"),
    ("missing_enumval", r"<enumval_value> \[\d+\] enum bpf_map_type___gone::BPF_MAP_TYPE_GONE___gone = 1",
     r"no candidate matched: \[\d+\] enum bpf_map_type \(vmlinux\) has no enumerator BPF_MAP_TYPE_GONE"),
    ("wrong_size", r"<byte_off> \[\d+\] struct task_struct___short\.pid \(0:0 @ offset 0\)",
     r"accesses field incorrectly.*local 2 bytes, target 4 bytes"),
])
def test_reachable_failed_relocation_is_named(name, relo, why, no_fd_leak):
    spec = pybpf.open(program("core_fail"))
    spec.programs[name].autoload = True
    with pytest.raises(pybpf.VerifierError) as exc:
        spec.load()
    msg = str(exc.value)
    assert f"program {name!r}" in msg
    assert re.search(r"rejected by the verifier: CO-RE relocation #\d+ " + relo + " could not be applied: " + why,
                     msg), msg
    assert re.search(r"its instruction \d+ \(in " + name + r"\) was poisoned", msg)
    assert "invalid func unknown#195896080" in exc.value.log


# -- libbpf as the oracle ------------------------------------------------------------------------------

_PATCHED = re.compile(r"prog '([^']+)': relo #(\d+): patched insn #(\d+) \(([^)]+)\) (?:imm|off|imm64) (\d+) -> (\d+)")
_POISONED = re.compile(r"prog '([^']+)': relo #(\d+): substituting insn #(\d+) w/ invalid insn")


def libbpf_relocations(obj_path: str) -> set:
    """{(function, relo #, insn in function, new value or 'poison')} from libbpf's debug log."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool not installed")
    pin = f"/sys/fs/bpf/pybpf_core_test_{os.getpid()}"
    try:
        # (loadall then fails to pin the '?' programs it did not load: its CO-RE log is complete anyway)
        proc = subprocess.run(["bpftool", "-d", "prog", "loadall", obj_path, pin], capture_output=True, text=True)
    finally:
        shutil.rmtree(pin, ignore_errors=True)
    assert "CO-RE relocating" in proc.stderr and "failed to relocate" not in proc.stderr, proc.stderr[-2000:]
    out = set()
    first_slot = set()
    for m in _PATCHED.finditer(proc.stderr):
        out.add((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(6))))
    for m in _POISONED.finditer(proc.stderr):
        key = (m.group(1), int(m.group(2)))
        if key not in first_slot:         # an ld_imm64 is substituted twice: keep its first slot
            first_slot.add(key)
            out.add((m.group(1), int(m.group(2)), int(m.group(3)), "poison"))
    return out


def pybpf_relocations(spec, facts) -> set:
    programs = {p.name for p in spec.programs.values() if p.autoload}
    resolved = core.resolve_object(spec, facts, programs)
    fns = [p.function for p in spec.programs.values()] + list(spec.functions.values())
    out = set()
    for (section, insn_off), res in resolved.items():
        n = insn_off // 8
        fn = next(f for f in fns if f.section == section and f.sec_insn_off <= n < f.sec_insn_off + f.insn_cnt)
        why = core.patch_insn(bytearray(fn.insns), n - fn.sec_insn_off, res)
        out.add((fn.name, res.index, n - fn.sec_insn_off, "poison" if why is not None else res.new))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("name", ["core_read", "core_fail", "core_heavy"])
def test_every_relocation_as_libbpf(name, vmlinux):
    theirs = libbpf_relocations(program(name))
    ours = pybpf_relocations(pybpf.open(program(name)), KernelFacts.running())
    assert theirs and ours == theirs


# -- bitfields at container edges, in the kernel (programs/core_bitfield.bpf.c) ----------------------

def edge_target() -> BTF:
    """Target BTF for core_bitfield.o: each read field ends at a container edge or straddles one."""
    b = BTFBuilder()
    u32, s32, u64 = b.int_("unsigned int", 4), b.int_("int", 4, signed=True), b.int_("long long unsigned int", 8)
    b.record(4, "edge4", 4, [("lo", u32, 0, 28), ("top", u32, 28, 4)])
    b.record(4, "sedge4", 4, [("lo", s32, 0, 28), ("top", s32, 28, 4)])
    b.record(4, "edge8", 8, [("lo", u64, 0, 60), ("top", u64, 60, 4)])
    b.record(4, "straddle", 8, [("a", u32, 0, 30), ("b", u32, 30, 4)])
    return b.btf(source="core_bitfield target")


def bits_of(raw: bytes, btf: BTF, struct_name: str, field: str) -> int:
    """The value of bitfield ``field`` in ``raw`` as the BTF lays it out (little endian)."""
    m = next(m for m in btf.find(f"struct {struct_name}").members if m.name == field)
    value = (int.from_bytes(raw, "little") >> m.bit_offset) & ((1 << m.bitfield_size) - 1)
    if btf.resolve(m.type_id).encoding & 1 and value >> (m.bitfield_size - 1):
        value -= 1 << m.bitfield_size
    return value


READ_FIELDS = {"edge4": "top", "sedge4": "top", "edge8": "top", "straddle": "b"}


def with_field(btf: BTF, struct_name: str, field: str, background: int, value: int) -> bytes:
    """A struct's bytes: ``background`` repeated, the bits of ``field`` set to ``value``."""
    t = btf.find(f"struct {struct_name}")
    m = next(m for m in t.members if m.name == field)
    word = int.from_bytes(bytes([background]) * t.size, "little")
    mask = ((1 << m.bitfield_size) - 1) << m.bit_offset
    return ((word & ~mask) | (value << m.bit_offset)).to_bytes(t.size, "little")


@pytest.mark.kernel
@pytest.mark.parametrize("background,value", [(0x00, 0xB), (0xFF, 0x5), (0x5A, 0x8), (0xA5, 0x7)])
def test_bitfields_at_container_edges_in_the_kernel(background, value, no_fd_leak):
    """Python writes each struct as the target lays it out; the program reads the fields with
    BPF_CORE_READ_BITFIELD.  Each map value is exactly its struct's size: a load wider than
    libbpf's is refused by the verifier, a wrong shift reads other bits."""
    target = edge_target()
    values = {name: with_field(target, name, field, background, value) for name, field in READ_FIELDS.items()}
    with pybpf.open(program("core_bitfield")).load(target_btf=target) as obj:
        for name, raw in values.items():
            assert obj.maps[f"{name}_map"].value_size == len(raw)
            obj.maps[f"{name}_map"].update(0, raw)
        assert obj.programs["read_bits"].test_run().retval == 0
        got = {v: obj.variables[v].get() for v in ("edge4_top", "sedge4_top", "edge8_top", "straddle_b", "runs")}
    assert got == {"edge4_top": value, "sedge4_top": value - 16 if value & 8 else value, "edge8_top": value,
                   "straddle_b": value, "runs": 1}
    assert [bits_of(values[n], target, n, f) for n, f in READ_FIELDS.items()] == \
        [got["edge4_top"], got["sedge4_top"], got["edge8_top"], got["straddle_b"]]


@pytest.mark.kernel
def test_core_bitfield_loads_against_the_running_kernel(no_fd_leak):
    """The running kernel has none of the types: the reads are poisoned dead code."""
    with pybpf.load(program("core_bitfield")) as obj:
        assert obj.programs["read_bits"].test_run().retval == 2
        assert {f.kind for f in obj.programs["read_bits"].linked.core_failures} >= {"byte_off"}
