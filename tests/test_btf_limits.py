"""Bounded walks over BTF and sizes checked before anything is allocated.

Loops and absurd depths in BTF (a typedef of itself, a pointer to itself, a
struct or array containing itself, 5000-deep modifier chains) are a BTFError
naming the type id in every walk (open, typed values, inspect, btf dump); a
``.bss`` claiming 1 GiB opens and loads within bounded memory; sizes the
kernel cannot take are refused naming the section and size.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from elftools.elf.elffile import ELFFile

import pybpf
from pybpf import inspect as pinspect
from pybpf.errors import BTFError, ObjectError
from pybpf.spec import btf_dump
from pybpf.spec.btf import MAX_RESOLVE_DEPTH, Kind
from pybpf.spec.object import MAX_ARRAY_VALUE_SIZE, ObjectSpec, ZeroImage
from pybpf.spec.typed import TypeFactory

from btf_builder import BTFBuilder
from conftest import ROOT, program

RSS_LIMIT_MB = 256
GIB = 1 << 30


# -- loops and depth ---------------------------------------------------------------------------


def _loops():
    """(what, BTF builder, the type id to start from, a type id the error must name)."""
    b = BTFBuilder(); b.int_("int", 4); a = b.typedef("A", 3); b.typedef("B", 2)
    yield "typedef loop", b, a
    b = BTFBuilder(); b.int_("int", 4); p = b.ptr(2)
    yield "pointer to itself", b, p
    b = BTFBuilder(); b.int_("int", 4); s = b.struct("S", 8, [("s", 2, 0)])
    yield "struct containing itself", b, s
    b = BTFBuilder(); b.int_("int", 4); arr = b.array(2, 4)
    yield "array of itself", b, arr
    b = BTFBuilder(); b.int_("int", 4); c = b.const(3); b.volatile(2)
    yield "const/volatile loop", b, c
    b = BTFBuilder(); cur = b.int_("int", 4)
    for k in range(5000):
        cur = b.const(cur) if k % 2 else b.typedef(f"t{k}", cur)
    yield "5000-deep modifiers", b, cur


LOOPS = list(_loops())


def _named(exc, *ids) -> bool:
    return any(f"[{i}]" in str(exc) for i in ids)


@pytest.mark.parametrize("what,builder,tid", LOOPS, ids=[c[0] for c in LOOPS])
def test_typed_value_of_a_loop_is_a_btf_error(what, builder, tid):
    btf = builder.btf()
    if btf[tid].kind == Kind.PTR:      # a pointer is an address whatever it points to
        assert TypeFactory(btf).ctype(tid) is not None
        return
    with pytest.raises(BTFError) as exc:
        TypeFactory(btf).ctype(tid)
    assert _named(exc.value, *range(1, len(btf.types)))


@pytest.mark.parametrize("what,builder,tid", LOOPS, ids=[c[0] for c in LOOPS])
def test_btf_dump_of_a_loop_is_a_btf_error_naming_the_type(what, builder, tid):
    btf = builder.btf()
    if what == "5000-deep modifiers":
        # types are visited from id 1: each step of the chain is short (libbpf prints it too)
        assert "t4998" in btf_dump.format_c(btf)
        return
    with pytest.raises(BTFError) as exc:
        btf_dump.format_c(btf)
    assert _named(exc.value, 2, 3)
    assert btf_dump.format_raw(btf).count("\n") >= len(btf) - 1    # the raw dump follows no references


@pytest.mark.parametrize("what,builder,tid", LOOPS, ids=[c[0] for c in LOOPS])
def test_btf_walks_of_a_loop_end(what, builder, tid):
    btf = builder.btf()
    name = btf.type_name(tid)        # a message helper: a loop ends in "..."
    assert len(name) < 400
    if what in ("typedef loop", "const/volatile loop", "5000-deep modifiers"):
        with pytest.raises(BTFError) as exc:
            btf.skip_mods(tid)
        assert _named(exc.value, tid)
    if what not in ("struct containing itself", "pointer to itself"):   # both have a size of their own
        with pytest.raises(BTFError):
            btf.size_of(tid)


@pytest.mark.parametrize("what,builder,tid", LOOPS, ids=[c[0] for c in LOOPS])
def test_inspect_layout_of_a_loop_is_a_pybpf_error(what, builder, tid):
    btf = builder.btf()
    if what == "struct containing itself":
        # offsets and sizes come from the struct's own record: nothing to follow
        assert "struct S {" in pinspect.layout(btf, tid)
        return
    with pytest.raises(pybpf.Error):
        pinspect.layout(btf, tid)


def test_inspect_declarator_of_an_array_of_itself():
    b = BTFBuilder(); b.int_("int", 4); arr = b.array(2, 4)
    with pytest.raises(BTFError) as exc:
        pinspect._decl(b.btf(), arr, "x")
    assert _named(exc.value, arr)


def test_nesting_at_the_kernel_limit_is_fine_one_more_is_refused():
    """MAX_RESOLVE_DEPTH modifiers resolve; one more is the kernel's refusal too."""
    def chain(n):
        b = BTFBuilder(); cur = b.int_("int", 4)
        for _ in range(n):
            cur = b.const(cur)
        return b.btf(), cur
    btf, tid = chain(MAX_RESOLVE_DEPTH)
    assert btf.skip_mods(tid) == 1 and TypeFactory(btf).ctype(tid) is not None
    btf, tid = chain(MAX_RESOLVE_DEPTH + 1)
    with pytest.raises(BTFError):
        btf.skip_mods(tid)


def test_structs_nested_deeper_than_the_kernel_allows():
    b = BTFBuilder(); cur = b.int_("int", 4)
    for k in range(MAX_RESOLVE_DEPTH + 1):
        cur = b.struct(f"s{k}", 4, [("m", cur, 0)])
    with pytest.raises(BTFError) as exc:
        TypeFactory(b.btf()).ctype(cur)
    assert _named(exc.value, cur)


@pytest.mark.parametrize("members,kflag", [([("x", 1, 40, 8)], 1), ([("x", 1, 64)], 0), ([("x", 1, 0, 0)], 1)],
                         ids=["bitfield past the end", "member past the end", "zero-width int bitfield"])
def test_members_outside_their_struct_are_a_btf_error(members, kflag):
    b = BTFBuilder()
    b.int_("int", 4, bits=0 if members[0][3:] == (0,) else None)
    if members[0][3:] == (0,):     # an INT of 0 bits at an odd offset: no width to read
        members = [("x", 1, 3)]
    s = b.record(4, "S", 4, members, kflag=kflag)
    btf = b.btf()
    with pytest.raises(BTFError) as exc:
        TypeFactory(btf).ctype(s)
    assert _named(exc.value, s) and "'x'" in str(exc.value)


def test_array_larger_than_u32_is_a_btf_error_not_a_crash():
    """ctypes crashes on sizes past ssize_t: nelems are checked first."""
    b = BTFBuilder(); i = b.int_("int", 4); inner = b.array(i, 0xFFFFFFFF); outer = b.array(inner, 0xFFFFFFFF)
    btf = b.btf()
    for tid in (inner, outer):
        with pytest.raises(BTFError):
            TypeFactory(btf).ctype(tid)
        with pytest.raises(BTFError):
            btf.size_of(tid)


# -- crafted objects -----------------------------------------------------------------------------


def _elf(data: bytes) -> ELFFile:
    import io
    return ELFFile(io.BytesIO(data))


def _shdr_offset(data: bytes, name: str) -> int:
    elf = _elf(data)
    for i, sec in enumerate(elf.iter_sections()):
        if sec.name == name:
            return elf["e_shoff"] + i * elf["e_shentsize"]
    raise AssertionError(f"no section {name}")


def with_section_size(data: bytes, name: str, size: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<Q", out, _shdr_offset(data, name) + 32, size)    # Elf64_Shdr.sh_size
    return bytes(out)


def without_btf(data: bytes) -> bytes:
    """The object with .BTF and .BTF.ext renamed (.XTF...): no BTF, the rest unchanged."""
    elf = _elf(data)
    strtab = elf.get_section(elf["e_shstrndx"])
    out = bytearray(data)
    for sec in elf.iter_sections():
        if sec.name in (".BTF", ".BTF.ext"):
            at = strtab["sh_offset"] + sec["sh_name"]
            assert out[at:at + 4] == b".BTF"
            out[at:at + 4] = b".XTF"
    return bytes(out)


GLOBALS = open(program("globals_test"), "rb").read()


@pytest.mark.parametrize("btf", [True, False], ids=["BTF", "no BTF"])
@pytest.mark.parametrize("size", [MAX_ARRAY_VALUE_SIZE + 1, 1 << 40, (1 << 64) - 1])
def test_bss_larger_than_an_array_value_names_section_and_size(size, btf):
    data = with_section_size(GLOBALS, ".bss", size)
    if not btf:
        data = without_btf(data)
    with pytest.raises(ObjectError) as exc:
        ObjectSpec(data, path="big.o")
    assert ".bss" in str(exc.value) and str(size) in str(exc.value)


@pytest.mark.parametrize("btf", [True, False], ids=["BTF", "no BTF"])
def test_bss_of_a_gib_is_not_held_in_the_spec(btf):
    data = with_section_size(GLOBALS, ".bss", GIB)
    if not btf:
        data = without_btf(data)
    spec = ObjectSpec(data, path="big.o")
    bss = spec.internal_map_for_section(".bss")
    assert bss.value_size == GIB and len(bss.data) == GIB and isinstance(bss.data, ZeroImage)
    import pickle
    assert len(pickle.dumps(spec, protocol=-1)) < 1 << 20      # what the spec cache stores
    if btf:
        var = spec.variables["bss_result"]
        assert var.get() == 0
        var.set(0x1122334455667788)
        assert var.get() == 0x1122334455667788
        assert bss.data[var.offset:var.offset + 8] == struct.pack("<Q", 0x1122334455667788)


def test_zero_image_reads_and_writes_like_bytes():
    img = ZeroImage(3 * ZeroImage.PAGE + 5)
    ref = bytearray(len(img))
    for off, chunk in ((5, b"abc"), (ZeroImage.PAGE - 2, b"\1\2\3\4"), (len(img) - 3, b"xyz")):
        img[off:off + len(chunk)] = chunk
        ref[off:off + len(chunk)] = chunk
    assert bytes(img) == bytes(ref) and img == ref and img[ZeroImage.PAGE - 1] == 2
    assert img[-1:] == b"z" and img[10:4] == b""
    assert [off for off, _ in img.written()] == [0, ZeroImage.PAGE, 3 * ZeroImage.PAGE]   # pages touched
    assert not img.is_zero() and ZeroImage(10).is_zero()
    with pytest.raises(pybpf.Error):
        img[0:2] = b"abc"          # an image keeps its size


def test_overlapping_sections_are_refused_before_copying():
    size = len(GLOBALS)
    out = bytearray(GLOBALS)
    for name in (".text", "syscall"):
        h = _shdr_offset(GLOBALS, name)
        struct.pack_into("<QQ", out, h + 24, 0, size)       # sh_offset 0, sh_size = the whole file
    with pytest.raises(ObjectError) as exc:
        ObjectSpec(bytes(out), path="overlap.o")
    assert "overlap" in str(exc.value)


def test_pointer_loop_as_a_map_definition():
    """A map VAR whose type is a pointer to itself: pybpf.open says so (it recursed)."""
    data = bytearray(open(program("maps_test"), "rb").read())
    spec = ObjectSpec(bytes(data), path="maps_test.o")
    btf = spec.btf
    sec = ELFFile(open(program("maps_test"), "rb")).get_section_by_name(".BTF")
    base = sec["sh_offset"] + btf.hdr_len + (btf.type_off - btf.hdr_len)
    var = btf[btf.by_name(".maps", Kind.DATASEC)[0].secinfos[0].type_id]
    ptr = btf.by_kind(Kind.PTR)[0]
    struct.pack_into("<I", data, base + ptr.record_offset + 8, ptr.id)      # ptr -> itself
    struct.pack_into("<I", data, base + var.record_offset + 8, ptr.id)      # the map is that pointer
    with pytest.raises(BTFError) as exc:
        ObjectSpec(bytes(data), path="maps_test.o")
    assert var.name in str(exc.value)


# -- a GiB of .bss in the kernel, memory measured in a subprocess -----------------------------------


_SCRIPT = textwrap.dedent("""
    import json, mmap, struct, sys
    sys.path.insert(0, sys.argv[1])
    import pybpf
    path, mode = sys.argv[2], sys.argv[3]
    out = {}
    try:
        spec = pybpf.open(path)
        out["bss"] = spec.internal_map_for_section(".bss").value_size
        if mode == "load":
            want = spec.variables["data_counter"].get() * 1000 + spec.variables["rodata_param"].get()
            spec.variables["bss_seen_param"].set(0xabcd)       # a page of the .bss written before load
            with spec.load() as obj:
                bss = obj.maps[spec.internal_map_for_section(".bss").name]
                var = spec.variables["bss_seen_param"]
                page = var.offset // mmap.PAGESIZE * mmap.PAGESIZE
                # read back through a mapping of one page: the whole value would be resident
                with mmap.mmap(bss.fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=page) as mm:
                    out["seen_before"] = struct.unpack_from("<I", mm, var.offset - page)[0]
                out["retval"] = obj.programs["read_globals"].test_run().retval
                out["want"] = want
                last = bss.value_size // mmap.PAGESIZE * mmap.PAGESIZE - mmap.PAGESIZE
                with mmap.mmap(bss.fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=last) as mm:
                    out["last_page"] = bytes(mm) == bytes(mmap.PAGESIZE)
    except pybpf.Error as e:
        out["error"] = f"{type(e).__name__}: {e}"
    # VmHWM, not ru_maxrss: execve() folds the parent's (pytest's) peak into ru_maxrss
    out["maxrss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status")
                            if l.startswith("VmHWM:")) / 1024
    print(json.dumps(out))
""")


def _run(path, mode, cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT), str(path), mode], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _cache_bytes(cache) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)


def test_gib_bss_opens_from_file_and_cache_in_bounded_memory(tmp_path):
    path = tmp_path / "big_bss.o"
    path.write_bytes(with_section_size(GLOBALS, ".bss", GIB))
    cache = tmp_path / "cache"
    first = _run(path, "open", cache)        # parsed, then written to the cache
    again = _run(path, "open", cache)        # read from the cache
    for r in (first, again):
        assert "error" not in r and r["bss"] == GIB
        assert r["maxrss_mb"] < RSS_LIMIT_MB
    assert 0 < _cache_bytes(cache) < 1 << 20


@pytest.mark.kernel
def test_gib_bss_loads_in_bounded_memory(tmp_path):
    path = tmp_path / "big_bss.o"
    path.write_bytes(with_section_size(GLOBALS, ".bss", GIB))
    r = _run(path, "load", tmp_path / "cache")
    assert r["maxrss_mb"] < RSS_LIMIT_MB, r
    # this kernel takes value_size up to INT_MAX (array_map_alloc_check): a clean load
    assert "error" not in r, r
    assert r["seen_before"] == 0xabcd                  # the page written before load reached the map
    assert r["retval"] == r["want"]                     # the program ran against the GiB .bss
    assert r["last_page"]                               # zero-filled by the kernel


@pytest.mark.kernel
def test_bss_variable_set_before_load_reaches_the_kernel(no_fd_leak):
    spec = pybpf.open(program("globals_test"))
    bss = spec.internal_map_for_section(".bss")
    spec.variables["bss_result"].set(0x0102030405060708)
    with spec.load() as obj:
        raw = bytes(obj.maps[bss.name].lookup(0))
        off = spec.variables["bss_result"].offset
        assert raw[off:off + 8] == struct.pack("<Q", 0x0102030405060708)
        assert raw[:off] + raw[off + 8:] == bytes(len(raw) - 8)
