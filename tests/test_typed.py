"""Typed values (pybpf/spec/typed.py): BTF types as ctypes types, and the values
of maps, globals and ring buffers decoded by BTF.

Pure part (no root): layouts of a few hundred vmlinux structs and unions checked
member by member against BTF, bitfields against manual bit arithmetic,
conversions and their errors, random round trips.

Kernel part: maps_test and globals_test maps compared with what
``bpftool -j map dump`` formats, globals written by read_globals, and ring
buffer records written by user_ringbuf.bpf.c's tracepoint.
"""

from __future__ import annotations

import ctypes
import enum
import json
import os
import random
import struct
import subprocess

import pytest

import pybpf
from pybpf.spec.btf import BTF, INT_BOOL, INT_CHAR, Kind
from pybpf.spec.typed import TypeFactory, factory_for

from btf_builder import BTFBuilder
from conftest import program

VMLINUX = "/sys/kernel/btf/vmlinux"
STRIDE = 61          # every named struct/union whose id is a multiple of this (~160 of them)
NAMED = ["task_struct", "sk_buff", "bpf_attr", "perf_event_attr", "xdp_md", "__sk_buff", "bpf_map",
         "sockaddr", "fs_path", "sock", "inode", "file", "bpf_prog_info", "bpf_insn"]


def char_text(raw: bytes):
    """pybpf's rule for char arrays: the C string, as str when printable UTF-8, else bytes up to NUL."""
    s = raw.split(b"\0", 1)[0]
    try:
        text = s.decode()
    except UnicodeDecodeError:
        return s
    return text if text.isprintable() else s


def plain(v):
    """A decoded value as plain Python (what to_python() gives for members)."""
    if hasattr(v, "to_python"):
        return v.to_python()
    if isinstance(v, enum.Enum):
        return v.name
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


# -- BTF walking (independent of typed.py) ---------------------------------------------------

def is_record(btf: BTF, tid: int) -> bool:
    t = btf.resolve(tid)
    return t is not None and t.kind in (Kind.STRUCT, Kind.UNION)


def bitfield_bits(btf: BTF, m) -> int:
    """The width of member ``m`` if it is a bitfield, else 0."""
    mt = btf.resolve(m.type_id)
    int_bits = mt.bits if mt is not None and mt.kind == Kind.INT else 0
    if m.bitfield_size:
        return m.bitfield_size
    if int_bits and int_bits != 8 * mt.size:
        return int_bits
    if m.bit_offset % 8:
        return int_bits or 8 * btf.size_of(m.type_id)
    return 0


def flat_members(btf: BTF, tid: int, base: int = 0):
    """(name, absolute bit offset, bitfield width or 0, type id) of every named member,
    members of anonymous structs/unions in their place (C reaches them by name)."""
    for m in btf.resolve(tid).members:
        if not m.name and is_record(btf, m.type_id):
            yield from flat_members(btf, m.type_id, base + m.bit_offset)
        else:
            yield m.name, base + m.bit_offset, bitfield_bits(btf, m), m.type_id


def has_union(btf: BTF, tid: int, seen=None) -> bool:
    seen = set() if seen is None else seen
    tid = btf.skip_mods(tid)
    if tid in seen or tid == 0:
        return False
    seen.add(tid)
    t = btf[tid]
    if t.kind == Kind.UNION:
        return True
    if t.kind == Kind.STRUCT:
        return any(has_union(btf, m.type_id, seen) for m in t.members)
    if t.kind == Kind.ARRAY:
        return has_union(btf, t.elem_type, seen)
    return False


def is_char_array(btf: BTF, t) -> bool:
    if t.kind != Kind.ARRAY:
        return False
    e = btf.resolve(t.elem_type)
    return e is not None and e.kind == Kind.INT and e.size == 1 and (
        bool(e.encoding & INT_CHAR) or e.name in ("char", "signed char"))


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vmlinux() -> BTF:
    if not os.path.exists(VMLINUX):
        pytest.skip(f"no kernel BTF at {VMLINUX}")
    return BTF.load(VMLINUX)


@pytest.fixture(scope="module")
def factory(vmlinux) -> TypeFactory:
    return TypeFactory(vmlinux)


@pytest.fixture(scope="module")
def sample(vmlinux) -> list:
    """Named structs/unions: every STRIDE-th id, the NAMED ones, all with bitfields,
    every other one with anonymous members."""
    records = [t for t in vmlinux.by_kind(Kind.STRUCT) + vmlinux.by_kind(Kind.UNION) if t.name]
    ids = {t.id for t in records if t.id % STRIDE == 0}
    ids |= {vmlinux.find(f"struct {n}").id for n in NAMED if n != "bpf_attr"}
    ids.add(vmlinux.find("union bpf_attr").id)
    anon = [t for t in records if any(not m.name for m in t.members)]
    ids |= {t.id for t in records if any(bitfield_bits(vmlinux, m) for m in t.members)}
    ids |= {t.id for t in anon if any(bits for _, _, bits, _ in flat_members(vmlinux, t.id))}
    ids |= {t.id for t in anon[::2]}
    return sorted(ids)


@pytest.fixture(scope="module")
def maps_btf() -> BTF:
    return pybpf.open(program("maps_test")).btf


# -- layouts ------------------------------------------------------------------------------

def test_sample_is_a_few_hundred_with_bitfields_and_anonymous_members(vmlinux, sample):
    assert len(sample) >= 300
    kinds = {vmlinux[i].kind for i in sample}
    assert kinds == {Kind.STRUCT, Kind.UNION}
    assert any(not m.name for i in sample for m in vmlinux[i].members)


def test_sizes_equal_btf(vmlinux, factory, sample):
    wrong = {vmlinux.type_name(i): (ctypes.sizeof(factory.ctype(i)), vmlinux[i].size) for i in sample
             if ctypes.sizeof(factory.ctype(i)) != vmlinux[i].size}
    assert not wrong


def test_members_are_python_attributes_in_btf_order(vmlinux, factory, sample):
    """to_python() lists every named member, anonymous members' ones in their place."""
    for tid in sample:
        names = [name for name, *_ in flat_members(vmlinux, tid)]
        value = factory.from_bytes(tid, bytes(vmlinux[tid].size))
        assert list(value.to_python()) == names, vmlinux.type_name(tid)
        repr(value)


def _sentinel(rnd: random.Random, n: int) -> bytes:
    return bytes(rnd.randrange(1, 256) for _ in range(n))


def check_member_offset(btf: BTF, factory: TypeFactory, tid: int, name: str, off: int, mtid: int,
                        rnd: random.Random) -> None:
    """Write a distinctive value at the member's BTF offset in zeroed raw bytes and read
    it back through the generated attribute (or check the attribute's address)."""
    size = btf[tid].size
    ct = factory.ctype(tid)
    mt = btf.resolve(mtid)
    where = f"{btf.type_name(tid)}.{name} at {off}"
    buf = bytearray(size)
    if mt.kind == Kind.INT and not mt.encoding & INT_BOOL or mt.kind == Kind.PTR:
        n = btf.size_of(mtid)
        raw = _sentinel(rnd, n)
        buf[off:off + n] = raw
        got = getattr(ct.from_buffer_copy(buf), name)
        assert got == int.from_bytes(raw, "little", signed=mt.signed), where
    elif mt.kind == Kind.INT:            # bool
        buf[off] = 1
        assert getattr(ct.from_buffer_copy(buf), name) is True, where
    elif mt.kind in (Kind.ENUM, Kind.ENUM64):
        names = {v.value: v.name for v in reversed(mt.values) if v.name.isidentifier()}
        value = next((v for v in names if v), None)
        if value is None:
            value = 0x5a
        buf[off:off + mt.size] = (value % (1 << 8 * mt.size)).to_bytes(mt.size, "little")
        got = getattr(ct.from_buffer_copy(buf), name)
        assert int(got) == value, where
        if value in names:
            assert isinstance(got, enum.Enum) and got.value == value, where
    elif mt.kind == Kind.FLOAT:
        buf[off:off + mt.size] = struct.pack({4: "<f", 8: "<d"}[mt.size], 1.5)
        assert getattr(ct.from_buffer_copy(buf), name) == 1.5, where
    elif is_char_array(btf, mt):
        n = min(mt.nelems, 2)
        buf[off:off + n] = b"ok"[:n]
        assert getattr(ct.from_buffer_copy(buf), name) == "ok"[:n], where
    else:                                # struct, union, array: a view at the offset
        inst = ct.from_buffer_copy(buf)
        got = getattr(inst, name)
        assert ctypes.addressof(got) - ctypes.addressof(inst) == off, where
        assert ctypes.sizeof(got) == btf.size_of(mtid), where


def test_member_offsets_equal_btf(vmlinux, factory, sample):
    rnd = random.Random(1)
    checked = 0
    for tid in sample:
        for name, bit_off, bits, mtid in flat_members(vmlinux, tid):
            if bits:
                continue
            assert bit_off % 8 == 0
            check_member_offset(vmlinux, factory, tid, name, bit_off // 8, mtid, rnd)
            checked += 1
    assert checked > 5000


def test_plain_field_offsets_are_the_ctypes_field_offsets(vmlinux, factory):
    """Plain (int, struct, array) members are real ctypes fields: Class.member.offset works."""
    t = vmlinux.find("struct perf_event_attr")
    ct = factory.ctype(t.id)
    for m in t.members:
        if not bitfield_bits(vmlinux, m) and m.name and not is_char_array(vmlinux, vmlinux.resolve(m.type_id)):
            assert getattr(ct, m.name).offset == m.bit_offset // 8, m.name


def check_bitfields(btf: BTF, factory: TypeFactory, tids, rnd: random.Random) -> tuple[int, int]:
    """Every bitfield of ``tids`` reads and writes exactly its BTF bits; returns how many
    bitfields, and how many signed ones, were checked."""
    count = signed = 0
    for tid in tids:
        size = btf[tid].size
        ct = factory.ctype(tid)
        for name, bit_off, bits, mtid in flat_members(btf, tid):
            if not bits:
                continue
            is_signed = btf.resolve(mtid).signed
            orig = bytes(rnd.getrandbits(8) for _ in range(size))
            inst = ct.from_buffer_copy(orig)
            mask = (1 << bits) - 1
            # reading: the bits at bit_off, sign-extended for signed types
            want = (int.from_bytes(orig, "little") >> bit_off) & mask
            if is_signed and want >> (bits - 1):
                want -= 1 << bits
            where = f"{btf.type_name(tid)}.{name} ({bits} bits at bit {bit_off})"
            assert getattr(inst, name) == want, where
            # writing: exactly those bits change (neighbours untouched)
            value = rnd.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if is_signed else rnd.randrange(1 << bits)
            setattr(inst, name, value)
            expect = (int.from_bytes(orig, "little") & ~(mask << bit_off)) | ((value & mask) << bit_off)
            assert bytes(inst) == expect.to_bytes(size, "little"), where
            assert getattr(inst, name) == value, where
            count += 1
            signed += is_signed
    return count, signed


def test_bitfields_read_and_write_exactly_the_btf_bits(vmlinux, factory, sample):
    signed_holders = [t.id for t in vmlinux.by_kind(Kind.STRUCT)
                      if any(m.bitfield_size and vmlinux.resolve(m.type_id).signed for m in t.members)]
    count, signed = check_bitfields(vmlinux, factory, sample + signed_holders, random.Random(2))
    # vmlinux has one signed bitfield (`int depth:30`, in bpf_insn_aux_data's
    # `struct {...} iter`); the hand-built BTF below has more
    assert count > 1000 and signed >= 1


def test_signed_bitfield_sign_extends(vmlinux, factory):
    for t in vmlinux.by_kind(Kind.STRUCT):
        hits = [(n, off, bits) for n, off, bits, mtid in flat_members(vmlinux, t.id)
                if bits > 1 and vmlinux.resolve(mtid).signed]
        if hits:
            break
    name, off, bits = hits[0]
    ct = factory.ctype(t.id)
    raw = (((1 << bits) - 1) << off).to_bytes(t.size, "little")     # all ones: -1
    assert getattr(ct.from_buffer_copy(raw), name) == -1
    raw = ((1 << (bits - 1)) << off).to_bytes(t.size, "little")      # only the sign bit
    assert getattr(ct.from_buffer_copy(raw), name) == -(1 << (bits - 1))
    inst = ct()
    setattr(inst, name, -2)
    assert int.from_bytes(bytes(inst), "little") == (((1 << bits) - 2) << off)


def test_bitfield_values_out_of_range_raise(vmlinux, factory):
    t = vmlinux.find("struct perf_event_attr")
    inst = factory.ctype(t.id)()
    inst.disabled = 1
    with pytest.raises(pybpf.Error, match="1-bit"):
        inst.disabled = 2
    with pytest.raises(pybpf.Error, match="perf_event_attr.disabled"):
        factory.encode(t.id, {"disabled": 2})
    with pytest.raises(pybpf.Error, match="perf_event_attr.sample_max_stack"):
        factory.encode(t.id, {"sample_max_stack": 1 << 16})


def test_anonymous_members_reachable_by_inner_names(vmlinux, factory):
    t = vmlinux.find("struct sk_buff")
    skb = factory.ctype(t.id)()
    flat = {name: (off, bits) for name, off, bits, _ in flat_members(vmlinux, t.id)}
    # sk_buff: next/prev in an anonymous union of an anonymous struct, pkt_type a
    # bitfield in the anonymous struct of struct_group(headers)
    for name in ("next", "prev", "dev", "tstamp", "pkt_type", "mark", "protocol"):
        assert name in flat and name in skb.to_python()
    off, bits = flat["pkt_type"]
    skb.pkt_type = 5
    assert int.from_bytes(bytes(skb), "little") == 5 << off
    skb.pkt_type = 0
    skb.mark = 0xdeadbeef
    assert bytes(skb)[flat["mark"][0] // 8:][:4] == struct.pack("<I", 0xdeadbeef)
    # char arrays and bitfields inside anonymous unions (struct sockaddr: sa_data_min)
    sa = factory.ctype(vmlinux.find("struct sockaddr").id)()
    sa.sa_data_min = "hello"
    assert sa.sa_data_min == "hello" and sa.to_python()["sa_data_min"] == "hello"


def test_members_named_like_our_padding_keep_their_names(vmlinux, factory):
    """struct fs_path has a member `pad` (in an anonymous union) and sigevent-like types
    members `_pad`: they stay reachable under their own names."""
    fs_path = factory.ctype(vmlinux.find("struct fs_path").id)
    assert ctypes.sizeof(fs_path) == 256
    v = fs_path()
    v.pad = "x" * 10
    assert v.pad == "x" * 10 and v.to_python()["pad"] == "x" * 10
    with_pad = next(t for t in vmlinux.by_kind(Kind.STRUCT) if any(m.name.startswith("_pad") for m in t.members))
    m = next(m for m in with_pad.members if m.name.startswith("_pad"))
    assert m.name in factory.from_bytes(with_pad.id, bytes(with_pad.size)).to_python()


# -- hand-built BTF: both bitfield encodings, signed bitfields, odd unions, odd names -------

@pytest.fixture(scope="module")
def tiny():
    b = BTFBuilder()
    i32 = b.int_("int", 4, signed=True)
    u32 = b.int_("unsigned int", 4)
    char = b.int_("char", 1, signed=True)
    u16 = b.int_("short unsigned int", 2)
    boolean = b.int_("_Bool", 1, enc=INT_BOOL)
    color = b.enum("color", [("RED", 0), ("GREEN", 1), ("BLUE", -2)], signed=True)
    # kflag=1: bitfield sizes in the member offsets
    b.record(4, "bits", 8, [("a", i32, 0, 3), ("b", i32, 3, 5), ("c", u32, 8, 7), ("e", color, 15, 4),
                            ("d", char, 19, 8), ("f", u16, 32, 0), ("g", u32, 48, 16)])
    # kflag=0: a bitfield is an INT whose nr_bits is less than its size
    i3, u5 = b.int_("int", 4, signed=True, bits=3), b.int_("unsigned int", 4, bits=5)
    b.record(4, "old", 4, [("x", i3, 0, 0), ("y", u5, 3, 0), ("z", u16, 16, 0)], kflag=0)
    # an aligned union bigger than its members, with a bitfield-only member
    chars3 = b.array(char, 3, u32)
    b.record(5, "wide", 8, [("n", i32, 0, 0), ("s", chars3, 0, 0), ("flag", u32, 0, 1)])
    # members named like the generated class's own attributes and fields
    b.record(4, "names", 12, [("_pad", u32, 0, 0), ("pad", u16, 32, 0), ("to_python", u16, 48, 0),
                              ("_fields_", u32, 64, 0)])
    b.record(4, "misc", 8, [("ok", boolean, 0, 0), ("col", color, 32, 0)], kflag=0)
    btf = b.btf()
    return btf, TypeFactory(btf)


def test_hand_built_bitfields_both_encodings(tiny):
    btf, f = tiny
    bits, old = btf.find("struct bits").id, btf.find("struct old").id
    assert ctypes.sizeof(f.ctype(bits)) == 8 and ctypes.sizeof(f.ctype(old)) == 4
    count, signed = check_bitfields(btf, f, [bits, old], random.Random(3))
    assert (count, signed) == (8, 5)       # signed: a, b, e (signed enum), d (char), x
    v = f.from_bytes(bits, f.encode(bits, {"a": -4, "b": 15, "c": 127, "e": -2, "d": -1, "f": 0xffff, "g": 1}))
    assert v.to_python() == {"a": -4, "b": 15, "c": 127, "e": "BLUE", "d": -1, "f": 0xffff, "g": 1}
    raw = (0b100 | 15 << 3 | 127 << 8 | 0b1110 << 15 | 0xff << 19 | 0xffff << 32 | 1 << 48).to_bytes(8, "little")
    assert bytes(v) == raw
    assert v.e == -2 and v.e.name == "BLUE" and f.encode(bits, {"e": "BLUE"}) == f.encode(bits, {"e": -2})
    v.e = "GREEN"
    assert v.e.name == "GREEN"
    v.e = 5                                  # no name: the number
    assert v.e == 5 and not isinstance(v.e, enum.Enum)
    with pytest.raises(pybpf.Error, match="color"):
        v.e = "PURPLE"
    o = f.from_bytes(old, ((-1 & 7) | 9 << 3 | 0xabcd << 16).to_bytes(4, "little"))
    assert (o.x, o.y, o.z) == (-1, 9, 0xabcd)


def test_hand_built_union_bigger_than_its_members(tiny):
    btf, f = tiny
    wide = btf.find("union wide").id
    assert ctypes.sizeof(f.ctype(wide)) == 8
    v = f.from_bytes(wide, b"ab\0\0\0\0\0\xff")
    assert v.to_python() == {"n": int.from_bytes(b"ab\0\0", "little"), "s": "ab", "flag": 1}
    assert bytes(v)[7] == 0xff          # the union's tail is kept


def test_hand_built_member_names_are_kept_or_renamed_visibly(tiny):
    btf, f = tiny
    names = btf.find("struct names").id
    v = f.from_bytes(names, bytes(range(12)))
    # `to_python` and `_fields_` would hide the class's own: they get a suffix
    assert v.to_python() == {"_pad": 0x03020100, "pad": 0x0504, "to_python_2": 0x0706, "_fields__2": 0x0b0a0908}
    assert v._pad == 0x03020100 and v.pad == 0x0504


def test_hand_built_bool_and_signed_enum(tiny):
    btf, f = tiny
    misc = btf.find("struct misc").id
    v = f.from_bytes(misc, b"\x01\0\0\0\xfe\xff\xff\xff")
    assert v.ok is True and v.col.name == "BLUE" and v.to_python() == {"ok": True, "col": "BLUE"}
    assert f.encode(misc, {"ok": False, "col": "GREEN"}) == b"\0\0\0\0\x01\0\0\0"
    assert f.encode(btf.find("enum color").id, "BLUE") == (-2).to_bytes(4, "little", signed=True)


def edges_btf():
    """Hand-built types for the checks at the edges: a signed __int128 member, a char array,
    a 4-byte enum member, two structs with the same layout, corrupt members."""
    b = BTFBuilder()
    i32 = b.int_("int", 4, signed=True)
    s128 = b.int_("__int128", 16, signed=True)
    char = b.int_("char", 1, signed=True)
    b.struct("wide", 24, [("n", s128, 0), ("k", i32, 128)])
    b.struct("named", 8, [("tag", b.array(char, 8), 0)])
    mode = b.enum("mode", [("OFF", 0), ("ON", 1)])
    b.struct("withenum", 4, [("m", mode, 0)])
    b.struct("pair_a", 8, [("x", i32, 0), ("y", i32, 32)])
    b.struct("pair_b", 8, [("x", i32, 0), ("y", i32, 32)])
    b.struct("past_end", 4, [("a", i32, 16)])                 # [2, 6) in 4 bytes
    b.union("offset_union", 8, [("a", i32, 0), ("b", i32, 32)])  # a union member at byte 4
    return b.btf()


def test_signed_int128_member_reads_negative():
    btf = edges_btf()
    f = TypeFactory(btf)
    wide = btf.find("struct wide").id
    v = f.from_bytes(wide, (-3).to_bytes(16, "little", signed=True) + (7).to_bytes(4, "little") + bytes(4))
    assert (v.n, v.k) == (-3, 7) and v.to_python() == {"n": -3, "k": 7}
    assert f.encode(wide, {"n": -(1 << 127)})[:16] == (-(1 << 127)).to_bytes(16, "little", signed=True)


def test_char_array_set_shorter_clears_the_rest():
    btf = edges_btf()
    f = TypeFactory(btf)
    named = btf.find("struct named").id
    v = f.from_bytes(named, b"longname")
    v.tag = "ab"
    assert bytes(v) == b"ab" + bytes(6) and v.tag == "ab"
    v.tag = b"12345678"                                        # an exact fit: no NUL
    assert bytes(v) == b"12345678"


def test_enum_member_range_is_its_size():
    btf = edges_btf()
    f = TypeFactory(btf)
    withenum = btf.find("struct withenum").id
    v = f.from_bytes(withenum, bytes(4))
    v.m = (1 << 32) - 1
    assert bytes(v) == b"\xff" * 4
    with pytest.raises(pybpf.Error, match="does not fit in 32 bits"):
        v.m = 1 << 32
    with pytest.raises(pybpf.Error, match="does not fit in 32 bits"):
        f.encode(withenum, {"m": 1 << 40})


def test_values_of_different_types_are_not_equal():
    btf = edges_btf()
    f = TypeFactory(btf)
    a = f.from_bytes(btf.find("struct pair_a").id, bytes(range(8)))
    b = f.from_bytes(btf.find("struct pair_b").id, bytes(range(8)))
    assert a != b and bytes(a) == bytes(b)
    assert a == f.from_bytes(btf.find("struct pair_a").id, bytes(range(8))) and a == bytes(range(8))


@pytest.mark.parametrize("name, match", [("struct past_end", "lies past its end"),
                                         ("union offset_union", "non-zero offset 4")])
def test_corrupt_members_are_refused(name, match):
    btf = edges_btf()
    with pytest.raises(pybpf.BTFError, match=match):
        TypeFactory(btf).ctype(btf.find(name).id)


def test_one_byte_short_is_an_error():
    btf = edges_btf()
    f = TypeFactory(btf)
    pair = btf.find("struct pair_a").id
    with pytest.raises(pybpf.Error, match="is 8 bytes, got 7"):
        f.from_bytes(pair, bytes(7))
    from pybpf.spec.typed import record_decoder
    decode = record_decoder(btf, "struct pair_a", "ring 'rb'")
    assert decode(bytes(range(9))).to_python() == {"x": 0x03020100, "y": 0x07060504}
    with pytest.raises(pybpf.Error, match="a 7-byte record is shorter than struct pair_a"):
        decode(bytes(7))


# -- enums, char arrays, to_python, == -----------------------------------------------------

def test_enums_decode_to_names_and_accept_names(vmlinux, factory):
    e = vmlinux.find("enum bpf_map_type")
    v = factory.from_bytes(e.id, (1).to_bytes(4, "little"))
    assert isinstance(v, enum.IntEnum) and v.name == "BPF_MAP_TYPE_HASH" and v == 1
    assert factory.encode(e.id, "BPF_MAP_TYPE_ARRAY") == (2).to_bytes(4, "little")
    assert factory.encode(e.id, v) == (1).to_bytes(4, "little")
    assert factory.from_bytes(e.id, (9999).to_bytes(4, "little")) == 9999     # no name: an int
    with pytest.raises(pybpf.Error, match="bpf_map_type"):
        factory.encode(e.id, "BPF_MAP_TYPE_NOPE")
    # as a member
    t = vmlinux.find("struct bpf_map")
    off = next(m.bit_offset // 8 for m in t.members if m.name == "map_type")
    raw = factory.encode(t.id, {"map_type": "BPF_MAP_TYPE_LRU_HASH"})
    assert raw[off:off + 4] == (9).to_bytes(4, "little")
    m = factory.from_bytes(t.id, raw)
    assert m.map_type.name == "BPF_MAP_TYPE_LRU_HASH" and m.to_python()["map_type"] == "BPF_MAP_TYPE_LRU_HASH"
    m.map_type = "BPF_MAP_TYPE_RINGBUF"
    assert m.map_type == 27
    with pytest.raises(pybpf.Error, match="bpf_map_type"):
        m.map_type = "NOPE"
    with pytest.raises(pybpf.Error):
        m.map_type = 1.5


def test_char_arrays_are_str_when_printable_else_bytes(vmlinux, factory, maps_btf):
    t = vmlinux.find("struct task_struct")
    for value, want in [("bash", "bash"), ("x" * 16, "x" * 16), ("", ""), (b"\xff\xfe", b"\xff\xfe"),
                        ("a\tb", b"a\tb"), ("héllo", "héllo")]:
        task = factory.from_bytes(t.id, factory.encode(t.id, {"comm": value}))
        assert task.comm == want and task.to_python()["comm"] == want
    # a char array type on its own, and bytes after the NUL ignored
    tag = next(m.type_id for m in maps_btf.find("struct val").members if m.name == "tag")
    f = factory_for(maps_btf)
    assert f.from_bytes(tag, b"ab\0z") == "ab"
    assert f.from_bytes(tag, b"abcd") == "abcd"          # no NUL: all four
    assert f.from_bytes(tag, b"\x01\x02\0\0") == b"\x01\x02"
    assert f.encode(tag, "ab") == b"ab\0\0"


def test_to_python_and_equality(maps_btf, vmlinux, factory):
    f = factory_for(maps_btf)
    tid = maps_btf.find("struct val").id
    raw = struct.pack("<QI4s", 10, 1, b"t")
    v = f.from_bytes(tid, raw)
    assert repr(v) == "val(a=10, b=1, tag='t')"
    assert v.to_python() == {"a": 10, "b": 1, "tag": "t"}
    assert (v.a, v.b, v.tag, bytes(v)) == (10, 1, "t", raw)
    assert v == raw and v == bytearray(raw) and v == {"a": 10, "b": 1, "tag": "t"}
    assert v == f.from_bytes(tid, raw)
    assert v != {"a": 10, "b": 1, "tag": "u"} and v != raw[:-1] + b"x" and v != 10
    # nested structs and arrays: dicts and lists; == against lists
    t = vmlinux.find("struct bpf_insn")
    insn = factory.from_bytes(t.id, bytes([0xb7, 0x21, 0, 0, 0x07, 0, 0, 0]))
    assert insn.to_python() == {"code": 0xb7, "dst_reg": 1, "src_reg": 2, "off": 0, "imm": 7}
    arr_t = next(m.type_id for m in vmlinux.find("struct perf_event_header").members if m.name == "type")
    assert factory.from_bytes(arr_t, b"\1\0\0\0") == 1
    task = factory.ctype(vmlinux.find("struct task_struct").id)()
    task.comm = "x"
    py = task.to_python()
    assert py["comm"] == "x" and isinstance(py["thread"], dict) and isinstance(py["tasks"], dict)
    mt = next(m.type_id for m in vmlinux.find("struct sock_fprog_kern").members if m.name == "len")
    assert factory.from_bytes(mt, b"\x05\x00") == 5
    stat = vmlinux.find("struct rusage")
    assert isinstance(factory.from_bytes(stat.id, bytes(stat.size)).to_python()["ru_utime"], dict)
    regs = vmlinux.find("struct pt_regs")     # orig_ax, cs, ss... in anonymous unions
    py = factory.from_bytes(regs.id, bytes(regs.size)).to_python()
    assert list(py) == [n for n, *_ in flat_members(vmlinux, regs.id)]
    assert all(v == 0 or isinstance(v, dict) for v in py.values()) and py["orig_ax"] == 0


def test_arrays_typed_and_compare_with_lists(maps_btf, vmlinux, factory):
    t = vmlinux.find("struct bpf_stack_build_id")
    bid = next(m for m in t.members if m.name == "build_id")
    v = factory.from_bytes(bid.type_id, bytes(range(20)))
    assert v == list(range(20)) and v.to_python() == list(range(20)) and len(v) == 20
    assert factory.encode(bid.type_id, list(range(20))) == bytes(range(20))
    assert factory.encode(bid.type_id, tuple(range(3))) == bytes(range(3)) + bytes(17)


# -- conversion errors -----------------------------------------------------------------------

@pytest.mark.parametrize("value, match", [
    ({"a": 1, "b": 2, "tag": "abcde"}, r"val\.tag: 5 bytes do not fit in char\[4\]"),
    ({"a": 1, "nope": 2}, r"val has no field 'nope'"),
    ({"a": 1 << 64}, r"val\.a: .* does not fit in 64 bits"),
    ({"b": 1 << 32}, r"val\.b: .* does not fit in 32 bits"),
    ({"a": 1.5}, r"val\.a takes an int, not float"),
    ({"tag": 5}, r"val\.tag: .*str or bytes"),
    (b"123", r"struct val is 16 bytes, got 3"),
    ((1, 2, "x", 4), r"val has 3 fields, got 4"),
    (3, r"val takes a dict or tuple"),
])
def test_conversion_errors_name_the_type(maps_btf, value, match):
    f = factory_for(maps_btf)
    with pytest.raises(pybpf.Error, match=match):
        f.encode(maps_btf.find("struct val").id, value)


def test_conversion_errors_for_ints_and_arrays(vmlinux, factory):
    u32 = vmlinux.find("__u32").id
    with pytest.raises(pybpf.Error, match="__u32"):
        factory.encode(u32, 1 << 32)
    with pytest.raises(pybpf.Error, match="__u32.*float"):
        factory.encode(u32, 2.0)
    with pytest.raises(pybpf.Error, match="is 4 bytes, got 2"):
        factory.from_bytes(u32, b"\0\0")
    bid = next(m.type_id for m in vmlinux.find("struct bpf_stack_build_id").members if m.name == "build_id")
    with pytest.raises(pybpf.Error, match=r"21 elements do not fit in 20"):
        factory.encode(bid, [0] * 21)
    with pytest.raises(pybpf.Error, match=r"\[3\].*does not fit in 8 bits"):
        factory.encode(bid, [0, 0, 0, 256])
    with pytest.raises(pybpf.Error, match="task_struct.comm"):
        factory.encode(vmlinux.find("struct task_struct").id, {"comm": "x" * 17})
    with pytest.raises(pybpf.Error, match="task_struct.pid: .* does not fit"):
        factory.encode(vmlinux.find("struct task_struct").id, {"pid": 1 << 31 << 2})


def test_int128_members_are_ints(vmlinux, factory):
    u128 = vmlinux.find("__int128 unsigned").id
    n = (1 << 127) + 12345
    assert factory.from_bytes(u128, n.to_bytes(16, "little")) == n
    assert factory.encode(u128, n) == n.to_bytes(16, "little")
    s128 = vmlinux.find("__int128").id
    assert factory.from_bytes(s128, (-2).to_bytes(16, "little", signed=True)) == -2
    with pytest.raises(pybpf.Error):
        factory.encode(u128, 1 << 128)


# -- random round trips ------------------------------------------------------------------------

def random_value(btf: BTF, factory: TypeFactory, tid: int, rnd: random.Random):
    """A random plain value of BTF type ``tid`` (no unions), as to_python() gives it back."""
    t = btf.resolve(tid)
    k = t.kind
    if k == Kind.INT:
        if t.encoding & INT_BOOL:
            return rnd.choice([True, False])
        bits = 8 * t.size
        return rnd.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if t.signed else rnd.randrange(1 << bits)
    if k == Kind.PTR:
        return rnd.randrange(1 << 64)
    if k in (Kind.ENUM, Kind.ENUM64):
        cls = factory.enum_class(t.id)
        v = rnd.choice(t.values).value
        try:
            return cls(v).name
        except (ValueError, TypeError):
            return v
    if k == Kind.FLOAT:
        return 0.25
    if k == Kind.ARRAY:
        if is_char_array(btf, t):
            return "".join(rnd.choice("abcxyz _-!") for _ in range(rnd.randrange(t.nelems + 1)))
        return [random_value(btf, factory, t.elem_type, rnd) for _ in range(t.nelems)]
    assert k == Kind.STRUCT
    out = {}
    for name, _, bits, mtid in flat_members(btf, t.id):
        if bits:
            mt = btf.resolve(mtid)
            v = rnd.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) if mt.signed else rnd.randrange(1 << bits)
            if mt.kind in (Kind.ENUM, Kind.ENUM64) and rnd.random() < 0.5:   # an enum bitfield: a name
                fits = [e.value for e in mt.values if -(1 << (bits - 1)) <= e.value < (1 << bits)]
                v = factory.enum_class(mt.id)(rnd.choice(fits)).name if fits else v
            elif mt.kind in (Kind.ENUM, Kind.ENUM64):
                try:
                    v = factory.enum_class(mt.id)(v).name
                except ValueError:
                    pass
            out[name] = v
        else:
            out[name] = random_value(btf, factory, mtid, rnd)
    return out


def test_random_round_trips(vmlinux, factory, sample):
    rnd = random.Random(1234)
    structs = [i for i in sample if vmlinux[i].kind == Kind.STRUCT and not has_union(vmlinux, i)]
    assert len(structs) > 100
    for tid in structs:
        where = vmlinux.type_name(tid)
        value = random_value(vmlinux, factory, tid, rnd)
        raw = factory.encode(tid, value)
        assert len(raw) == vmlinux[tid].size, where
        back = factory.from_bytes(tid, raw)
        assert back.to_python() == value, where
        assert back == value, where
        # the typed instance, a tuple in member order and the raw bytes encode the same
        assert factory.encode(tid, back) == raw, where
        assert factory.encode(tid, tuple(value.values())) == raw, where
        assert factory.encode(tid, raw) == raw, where


def test_random_round_trips_small_types(maps_btf):
    f = factory_for(maps_btf)
    tid = maps_btf.find("struct val").id
    rnd = random.Random(5)
    for _ in range(200):
        v = {"a": rnd.randrange(1 << 64), "b": rnd.randrange(1 << 32),
             "tag": "".join(rnd.choice("pybf") for _ in range(rnd.randrange(5)))}
        raw = f.encode(tid, v)
        assert raw == struct.pack("<QI4s", v["a"], v["b"], v["tag"].encode())
        assert f.from_bytes(tid, raw) == v


# ================================================================================================
# Kernel: typed map values against bpftool's formatting
# ================================================================================================

def map_id(m) -> int:
    from pybpf.kernel.attrs import MapInfo
    from pybpf.kernel.syscall import obj_get_info_by_fd
    return obj_get_info_by_fd(m.fd, MapInfo()).id


def _merge_anonymous(pairs: list) -> dict:
    """bpftool prints an anonymous struct/union member as a "" key holding its members
    (twice "" if there are two); pybpf reaches them by name in the parent, as C does."""
    out: dict = {}
    for k, v in pairs:
        if k == "" and isinstance(v, dict):
            out.update(v)
        else:
            out[k] = v
    return out


def bpftool_dump(m) -> list:
    out = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id(m))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout, object_pairs_hook=_merge_anonymous)


def from_bpftool(x, btf: BTF, tid: int):
    """bpftool's ``formatted`` JSON for BTF type ``tid``, as pybpf's plain values.

    Differences, and why pybpf's form is kept:
    - char arrays: bpftool prints a string only when it is NUL-terminated and
      printable ASCII; otherwise a list of the chars as numbers (clang's `char`
      is a SIGNED int, so -1 for 0xff). A Python user wants text as str whether
      or not it fills the array (`tag[4] = "abcd"`), and non-text as bytes, not a
      list of signed numbers: the list is turned into pybpf's form here.
    - DATASEC values: bpftool prints {".data": [{"var": value}, ...]} (a list of
      one-entry objects); pybpf gives one dict {"var": value, ...}, like a struct.
    - bitfields: bpftool prints the raw bits as a hex string ("0x5"), not
      sign-extended, and enum bitfields as numbers too. pybpf gives what C reads:
      an int, negative for a signed bitfield holding 0b101 in 3 bits (-3), and the
      enumerator's name like any other enum.
    - anonymous struct/union members: bpftool nests them under a "" key; pybpf
      reaches their members by name in the parent (merged by bpftool_dump).
    Enums (the name, or the number when it has none), bools (true/false),
    integers, pointers (numbers), structs and unions (objects, every member of a
    union) and other arrays (lists) are formatted alike.
    """
    t = btf.resolve(tid)
    k = t.kind
    if k == Kind.DATASEC:
        (entries,) = x.values()
        merged = {name: v for e in entries for name, v in e.items()}
        return {btf[s.type_id].name: from_bpftool(merged[btf[s.type_id].name], btf, btf[s.type_id].type_id)
                for s in t.secinfos}
    if k in (Kind.STRUCT, Kind.UNION):
        return {name: from_bpftool_bitfield(x[name], btf, mtid, bits) if bits else from_bpftool(x[name], btf, mtid)
                for name, _, bits, mtid in flat_members(btf, t.id)}
    if k == Kind.ARRAY:
        if is_char_array(btf, t) and isinstance(x, list):
            return char_text(bytes(c & 0xff if isinstance(c, int) else ord(c) for c in x))
        if is_char_array(btf, t):
            return x
        return [from_bpftool(e, btf, t.elem_type) for e in x]
    if k == Kind.PTR and isinstance(x, str):
        return int(x, 16)
    return x


def from_bpftool_bitfield(x, btf: BTF, tid: int, bits: int):
    t = btf.resolve(tid)
    v = (int(x, 16) if isinstance(x, str) else x) & ((1 << bits) - 1)
    if t.signed and v >> (bits - 1):
        v -= 1 << bits
    if t.kind in (Kind.ENUM, Kind.ENUM64):
        return next((e.name for e in t.values if e.value == v), v)
    return v


def ours(m) -> dict:
    """Our map content as plain values: {key: value} (values a list per CPU for per-CPU maps)."""
    return {plain(k): plain(v) for k, v in m.items()}


def theirs(m) -> dict:
    btf, ktid, vtid = m.btf, m.spec.key_type_id, m.spec.value_type_id
    out = {}
    for entry in bpftool_dump(m):
        f = entry["formatted"]
        key = from_bpftool(f["key"], btf, ktid)
        if "values" in f:     # per-CPU: one value per possible CPU
            out[key] = [from_bpftool(c["value"], btf, vtid) for c in sorted(f["values"], key=lambda c: c["cpu"])]
        else:
            out[key] = from_bpftool(f["value"], btf, vtid)
    return out


@pytest.fixture
def maps_obj(no_fd_leak):
    with pybpf.load(program("maps_test")) as obj:
        assert obj.programs["fill"].test_run().retval == 0
        yield obj


@pytest.mark.kernel
def test_maps_equal_bpftool_formatting(maps_obj):
    from pybpf.loader import possible_cpus
    h = maps_obj.maps["hash"]
    f = factory_for(h.btf)
    # values from Python: dict, tuple, typed instance, bytes; text that fills the array
    # and text that is not printable
    h.update(10, {"a": 100, "b": 7, "tag": "dict"})
    h.update(11, (110, 8, "tup"))
    inst = f.ctype(h.spec.value_type_id)()
    inst.a, inst.b, inst.tag = 2 ** 64 - 1, 9, "ins"
    h.update(12, inst)
    h.update(13, {"a": 1, "tag": b"\xff\x01"})
    h.update(14, struct.pack("<QI4s", 5, 5, b"a\0bc"))
    h.update(15, h.lookup(1))
    a = maps_obj.maps["array"]
    a.update(5, 555)
    a.update(7, 2 ** 64 - 1)
    p = maps_obj.maps["percpu"]
    p.update(3, list(range(1, possible_cpus() + 1)))
    lru = maps_obj.maps["lru"]
    lru.update(2 ** 40, 7)
    lru.update(1, 2 ** 63)

    assert ours(h) == {1: {"a": 10, "b": 1, "tag": "t"}, 2: {"a": 20, "b": 2, "tag": "t"},
                       3: {"a": 30, "b": 3, "tag": "t"}, 10: {"a": 100, "b": 7, "tag": "dict"},
                       11: {"a": 110, "b": 8, "tag": "tup"}, 12: {"a": 2 ** 64 - 1, "b": 9, "tag": "ins"},
                       13: {"a": 1, "b": 0, "tag": b"\xff\x01"}, 14: {"a": 5, "b": 5, "tag": "a"},
                       15: {"a": 10, "b": 1, "tag": "t"}}
    assert ours(a)[2] == 222 and ours(a)[5] == 555
    pc = ours(p)
    assert len(pc[1]) == possible_cpus() and sum(pc[1]) == 5 and pc[3] == list(range(1, possible_cpus() + 1))
    assert ours(lru) == {2 ** 40: 7, 1: 2 ** 63}
    for m in (h, a, p, lru):
        assert ours(m) == theirs(m), m.name


@pytest.fixture
def tricky_map(no_fd_leak):
    """A hash map whose value type has every kind bpftool formats its own way: signed and
    enum bitfields, enums, a bool, char arrays (text, full, not text), an int array, a
    pointer, a nested struct, an anonymous struct, a union."""
    from pybpf.kernel.constants import MapType
    from pybpf.loader import create_map, load_btf
    from pybpf.maps import Map
    from pybpf.spec.object import MapSpec
    b = BTFBuilder()
    i32, u32 = b.int_("int", 4, signed=True), b.int_("unsigned int", 4)
    char, boolean = b.int_("char", 1, signed=True), b.int_("_Bool", 1, enc=INT_BOOL)
    u64 = b.int_("unsigned long long", 8)
    color = b.enum("color", [("RED", 0), ("GREEN", 1), ("BLUE", -2)], signed=True)
    chars8, nums = b.array(char, 8, u32), b.array(u32, 3, u32)
    vptr = b.add("", 2, 0, 0)
    inner = b.record(4, "inner", 8, [("p", u32, 0, 0), ("q", u32, 32, 0)])
    anon = b.record(4, "", 4, [("h", u32, 0, 0)])
    num = b.record(5, "num", 4, [("u", u32, 0, 0), ("i", i32, 0, 0)])
    rec = b.record(4, "rec", 80, [
        ("a", i32, 0, 3), ("b", u32, 3, 5), ("col", color, 8, 4), ("ok", boolean, 16, 0), ("c", color, 32, 0),
        ("name", chars8, 64, 0), ("full", chars8, 128, 0), ("raw", chars8, 192, 0), ("nums", nums, 256, 0),
        ("ptr", vptr, 384, 0), ("in", inner, 448, 0), ("", anon, 512, 0), ("n", num, 544, 0),
        ("big", u64, 576, 0)])
    spec = MapSpec("typed_vals", MapType.HASH, 4, 80, 16, key_type_id=u32, value_type_id=rec)
    btf_fd = load_btf(b.to_bytes())
    try:
        m = Map(create_map(spec, btf_fd), spec, btf=b.btf())
    finally:
        os.close(btf_fd)
    with m:
        from pybpf.kernel.attrs import MapInfo
        from pybpf.kernel.syscall import obj_get_info_by_fd
        assert obj_get_info_by_fd(m.fd, MapInfo()).btf_value_type_id == rec   # BTF not dropped
        yield m


@pytest.mark.kernel
def test_tricky_values_equal_bpftool_formatting(tricky_map):
    m = tricky_map
    m.update(1, {"a": -3, "b": 31, "col": "BLUE", "ok": True, "c": "GREEN", "name": "hi", "full": "abcdefgh",
                 "raw": b"\x01\xff", "nums": (1, 2, 3), "ptr": 0xffff888012345678, "in": {"p": 5, "q": 6},
                 "h": 7, "n": {"u": 0xffffffff}, "big": 2 ** 64 - 1})
    m.update(2, {"a": 3, "col": 5, "c": 7})               # enums without a name: numbers
    m.update(3, bytes(80))
    assert ours(m) == theirs(m)
    v = m[1]
    assert v.to_python() == {"a": -3, "b": 31, "col": "BLUE", "ok": True, "c": "GREEN", "name": "hi",
                             "full": "abcdefgh", "raw": b"\x01\xff", "nums": [1, 2, 3], "ptr": 0xffff888012345678,
                             "in": {"p": 5, "q": 6}, "h": 7, "n": {"u": 0xffffffff, "i": -1}, "big": 2 ** 64 - 1}
    assert m[2].col == 5 and m[2].c == 7 and m[3] == bytes(80)
    # and the raw forms bpftool uses, for the record
    raw = {e["formatted"]["key"]: e["formatted"]["value"] for e in bpftool_dump(m)}
    assert (raw[1]["a"], raw[1]["col"], raw[1]["c"], raw[1]["h"]) == ("0x5", "0xe", "GREEN", 7)


@pytest.mark.kernel
def test_bpftool_formats_unterminated_char_arrays_as_lists(maps_obj):
    """The one difference normalized above, seen in bpftool's own output."""
    h = maps_obj.maps["hash"]
    h.update(20, {"tag": "abcd"})
    h.update(21, {"tag": b"\xff"})
    raw = {e["formatted"]["key"]: e["formatted"]["value"]["tag"] for e in bpftool_dump(h)}
    assert raw[20] == [97, 98, 99, 100] and raw[21] == [-1, 0, 0, 0] and raw[1] == "t"
    assert h[20].tag == "abcd" and h[21].tag == b"\xff"


@pytest.mark.kernel
def test_percpu_values_are_typed_lists(maps_obj):
    from pybpf.loader import possible_cpus
    p = maps_obj.maps["percpu"]
    v = p.lookup(1)
    assert isinstance(v, list) and len(v) == possible_cpus() and all(isinstance(x, int) for x in v)
    assert sorted(v)[-1] == 5
    p.update(0, [2 ** 64 - 1] * possible_cpus())
    assert p[0] == [2 ** 64 - 1] * possible_cpus()
    with pytest.raises(pybpf.Error, match="64 bits|8 bytes"):
        p.update(0, [2 ** 64] * possible_cpus())


# -- globals ---------------------------------------------------------------------------------

def check_globals_against_bpftool(obj) -> None:
    for m in obj.maps.values():
        if m.value_type is None or m.value_type.kind != Kind.DATASEC:
            continue
        (entry,) = bpftool_dump(m)
        (key, value), = m.items()
        assert key == bytes(4) and entry["key"] == ["0x00"] * 4
        assert value.to_python() == from_bpftool(entry["formatted"]["value"], m.btf, m.spec.value_type_id), m.name
        assert bytes(value) == bytes(int(b, 16) for b in entry["value"])


@pytest.mark.kernel
def test_globals_after_read_globals(no_fd_leak):
    with pybpf.load(program("globals_test")) as obj:
        assert obj.programs["read_globals"].test_run().retval == 7042
        v = obj.variables
        assert v["bss_result"].get() == 7042 and v["bss_seen_param"].get() == 42
        assert v["data_counter"].get() == 8
        ds = v["data_struct"].get()
        assert repr(ds) == "data_struct(x=1, y=2, z=[3, 4], w=1234605616436508552)"
        assert (ds.x, ds.y, list(ds.z), ds.w) == (1, 2, [3, 4], 0x1122334455667788)
        assert ds == {"x": 1, "y": 2, "z": [3, 4], "w": 0x1122334455667788}
        assert v["rodata_name"].get() == "pybpf"
        # typed writes through the mmap, read back typed (and by bpftool below)
        v["data_struct"].set({"x": 9, "z": (7, 8)})
        assert v["data_struct"].get().to_python() == {"x": 9, "y": 0, "z": [7, 8], "w": 0}
        ds.y = 77
        v["data_struct"].set(ds)
        assert v["data_struct"].get() == bytes(ds)
        with pytest.raises(pybpf.Error, match="data_struct.y"):
            v["data_struct"].set({"y": 1 << 16})
        check_globals_against_bpftool(obj)


@pytest.mark.kernel
def test_globals_rodata_param_set_before_load(no_fd_leak):
    spec = pybpf.open(program("globals_test"))
    spec.variables["rodata_param"].set(5)
    spec.variables["rodata_name"].set("typed")
    spec.variables["data_struct"].set({"x": 3, "y": 4, "z": [5, 6], "w": 7})
    assert spec.variables["data_struct"].get() == {"x": 3, "y": 4, "z": [5, 6], "w": 7}
    with spec.load() as obj:
        assert obj.programs["read_globals"].test_run().retval == 7005
        assert obj.variables["bss_seen_param"].get() == 5
        assert obj.variables["bss_result"].get() == 7005
        assert obj.variables["rodata_name"].get() == "typed"
        assert obj.variables["data_struct"].get().to_python() == {"x": 3, "y": 4, "z": [5, 6], "w": 7}
        check_globals_against_bpftool(obj)


# -- ring buffer records ---------------------------------------------------------------------

class Event(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_int), ("comm", ctypes.c_char * 16)]


def kill_events(obj, rb_type, sample) -> list:
    """Write ``sample`` into user_ringbuf, kill(self, 0), and return the events seen.
    The tracepoint fires for every kill() on the machine: another process's kill()
    may drain our sample first (its pid then), so retry until one is ours."""
    got = []
    with pybpf.UserRingBuffer(obj.maps["user_ringbuf"]) as urb, \
            pybpf.RingBuffer(obj.maps["kernel_ringbuf"], got.append, type=rb_type) as rb:
        for _ in range(20):
            urb.write(sample)
            os.kill(os.getpid(), 0)
            rb.poll(1000)
            if any(ev.pid == os.getpid() for ev in got):
                break
    return got


@pytest.mark.kernel
def test_ring_buffer_records_typed_by_btf_name(no_fd_leak, not_supported_skip):
    comm = open("/proc/self/comm").read().strip()[:15]
    with not_supported_skip, pybpf.load(program("user_ringbuf")) as obj:
        obj.attach()
        btf = obj.maps["user_ringbuf"].btf
        f = factory_for(btf)
        sample_t = btf.find("struct user_sample").id
        sample = f.from_bytes(sample_t, f.encode(sample_t, {"i": 1, "comm": "from python"}))
        assert bytes(sample) == struct.pack("<i16s", 1, b"from python")
        events = kill_events(obj, "struct event", sample)
        mine = [ev for ev in events if ev.pid == os.getpid()]
        assert mine, events
        ev = mine[0]
        assert ev.comm == comm and len(bytes(ev)) == 20
        assert ev == {"pid": os.getpid(), "comm": comm}
        assert repr(ev) == f"event(pid={os.getpid()}, comm={comm!r})"
        assert obj.variables["read"].get() >= 1


@pytest.mark.kernel
def test_ring_buffer_records_typed_by_ctypes(no_fd_leak, not_supported_skip):
    comm = open("/proc/self/comm").read().strip()[:15]
    with not_supported_skip, pybpf.load(program("user_ringbuf")) as obj:
        obj.attach()
        events = kill_events(obj, Event, struct.pack("<i16s", 2, b"plain bytes"))
        mine = [ev for ev in events if ev.pid == os.getpid()]
        assert mine and all(isinstance(ev, Event) for ev in events)
        assert mine[0].comm == comm.encode() and ctypes.sizeof(mine[0]) == 20
