"""Arenas: __ulong(map_extra), __arena globals (.addr_space.1) and the arena's memory from Python.

programs/arena_test.bpf.c declares an 8-page arena at map_extra = 0x5 << 40 (__ulong),
five __arena globals (counter = 7, greeting = "hello arena", from_user, seen, page) and
three syscall programs: bump() adds 1 to counter and copies from_user to seen;
alloc_page() takes a page with bpf_arena_alloc_pages, writes 0xc0ffee in its first u64
and stores it in page; read_page() copies the page's second u64 to page_value (.bss).

Section images, symbol values and relocations are read independently with pyelftools;
the arena placement rule is libbpf's (globals at the end of the arena: its size less
their size rounded up to whole pages).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

import pybpf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import MapInfo
from pybpf.kernel.constants import Cmd, MapType
from pybpf.loader import program_load_request
from pybpf.loader.relocate import link_program
from pybpf.spec import insn as I

from conftest import program

ARENA_PAGES = 8                  # programs/arena_test.bpf.c: max_entries
ARENA_ADDR = 0x5 << 40           # programs/arena_test.bpf.c: __ulong(map_extra, ...)
PAGE = mmap.PAGESIZE
ARENA_GLOBALS = ("counter", "greeting", "from_user", "seen", "page")
BPF_PSEUDO_MAP_VALUE = 2


def elf_arena_facts():
    """(.addr_space.1 bytes, {symbol: value} of its symbols, {program: [(insn, symbol)]} of the
    relocations against it), read with pyelftools."""
    with open(program("arena_test"), "rb") as f:
        elf = ELFFile(f)
        sec_idx = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".addr_space.1")
        image = elf.get_section(sec_idx).data()
        symtab = elf.get_section_by_name(".symtab")
        symbols = {s.name: s["st_value"] for s in symtab.iter_symbols()
                   if s["st_shndx"] == sec_idx and s["st_info"]["type"] == "STT_OBJECT"}
        funcs = {s.name: s["st_value"] for s in symtab.iter_symbols() if s["st_info"]["type"] == "STT_FUNC"}
        relocs: dict[str, list] = {name: [] for name in funcs}
        for rel_sec in elf.iter_sections():
            if not isinstance(rel_sec, RelocationSection) or rel_sec.name != ".relsyscall":
                continue            # (.rel.BTF and .rel.BTF.ext name the globals too)
            for r in rel_sec.iter_relocations():
                sym = symtab.get_symbol(r["r_info_sym"])
                if sym["st_shndx"] != sec_idx:
                    continue
                owner = max((n for n, v in funcs.items() if v <= r["r_offset"]), key=lambda n: funcs[n])
                relocs[owner].append(((r["r_offset"] - funcs[owner]) // 8, sym.name))
    return image, symbols, relocs


def data_offset(image_size: int, pages: int = ARENA_PAGES) -> int:
    return pages * PAGE - -(-image_size // PAGE) * PAGE


def kernel_has_kfunc(name: str) -> bool:
    from pybpf.spec.btf import BTF, Kind
    return bool(BTF.load("/sys/kernel/btf/vmlinux").by_name(name, Kind.FUNC))


# -- offline: what the object declares and how it is relocated -------------------------------------

def test_ulong_map_extra_and_arena_image():
    spec = pybpf.open(program("arena_test"))
    arena = spec.maps["arena"]
    image, symbols, _ = elf_arena_facts()
    assert (arena.type, arena.max_entries, arena.map_extra) == (MapType.ARENA, ARENA_PAGES, ARENA_ADDR)
    assert bytes(arena.data) == image
    assert {n: (v.section, v.offset) for n, v in spec.variables.items() if v.map is arena} == \
        {n: (".addr_space.1", symbols[n]) for n in ARENA_GLOBALS}
    assert spec.variables["counter"].get() == 7
    assert spec.variables["greeting"].get() == "hello arena"


def test_arena_relocations_point_past_the_data_offset():
    spec = pybpf.open(program("arena_test"))
    image, symbols, relocs = elf_arena_facts()
    base = data_offset(len(image))
    for name in ("bump", "alloc_page", "read_page"):
        lp = link_program(spec, spec.programs[name])
        refs = {r.insn: r for r in lp.map_refs if r.map_name == "arena" and r.offset is not None}
        assert sorted(refs) == sorted(insn for insn, _ in relocs[name])
        for insn, sym in relocs[name]:
            # clang's addend (the insn's imm) is 0 for these symbol relocations
            assert refs[insn].offset == base + symbols[sym]
        insns = lp.with_map_fds({r.map_name: 3 for r in lp.map_refs})
        for insn, sym in relocs[name]:
            _, _, src, _, imm = I.decode(insns, insn)
            assert (src, imm) == (BPF_PSEUDO_MAP_VALUE, 3)
            assert I.get_imm(insns, insn + 1) == base + symbols[sym]


def test_data_offset_follows_max_entries():
    spec = pybpf.open(program("arena_test"))
    image, symbols, relocs = elf_arena_facts()
    spec.maps["arena"].max_entries = 3
    lp = link_program(spec, spec.programs["bump"])
    insn, sym = relocs["bump"][0]
    assert next(r for r in lp.map_refs if r.insn == insn).offset == data_offset(len(image), 3) + symbols[sym]


def test_arena_too_small_for_its_globals_is_refused_before_the_kernel():
    spec = pybpf.open(program("arena_test"))
    spec.maps["arena"].max_entries = 0
    with pytest.raises(pybpf.ObjectError, match=r"arena 'arena' is 0 bytes .* too small for the object's "
                                                r"\d+ bytes of __arena globals .*max_entries to at least 1"):
        program_load_request(spec, "bump")


# -- in the kernel ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _arena_maps_permitted(request):
    """Kernel tests skip where this kernel refuses arena maps (some builds do, with EPERM
    even for root): only after pybpf itself raised NotSupportedError for the arena alone."""
    if request.node.get_closest_marker("kernel") is None or os.geteuid() != 0:
        return
    try:
        pybpf.load(program("map_arena")).close()
    except pybpf.NotSupportedError as e:
        pytest.skip(f"not supported by this kernel: {e}")


@pytest.mark.kernel
def test_arena_mapped_at_map_extra_with_its_globals_at_the_end(no_fd_leak):
    image, symbols, _ = elf_arena_facts()
    with pybpf.load(program("arena_test")) as obj:
        arena = obj.maps["arena"]
        view = arena.mmap()
        assert arena.address == ARENA_ADDR
        assert len(view) == ARENA_PAGES * PAGE
        assert arena.data_offset == data_offset(len(image))
        assert bytes(view[arena.data_offset:arena.data_offset + len(image)]) == image
        assert obj.variables["counter"].get() == 7
        assert obj.variables["greeting"].get() == "hello arena"
        assert obj.variables["counter"].offset == arena.data_offset + symbols["counter"]
        del view


@pytest.mark.kernel
def test_program_and_python_share_the_arena_globals(no_fd_leak):
    with pybpf.load(program("arena_test")) as obj:
        v = obj.variables
        v["from_user"].set(0x1234_5678_9abc)                  # Python -> program
        assert obj.programs["bump"].test_run().retval == 0
        assert v["seen"].get() == 0x1234_5678_9abc
        assert v["counter"].get() == 8                        # program -> Python
        # the raw mapping is the same memory
        view = obj.maps["arena"].mmap()
        struct.pack_into("<Q", view, v["from_user"].offset, 99)
        obj.programs["bump"].test_run()
        assert struct.unpack_from("<QQ", view, v["counter"].offset)[0] == 9
        assert v["seen"].get() == 99
        del view


@pytest.mark.kernel
def test_page_allocated_by_the_program_is_shared(no_fd_leak):
    if not kernel_has_kfunc("bpf_arena_alloc_pages"):
        with pytest.raises(pybpf.Error, match="bpf_arena_alloc_pages"):
            pybpf.load(program("arena_test"))
        return
    with pybpf.load(program("arena_test")) as obj:
        arena, v = obj.maps["arena"], obj.variables
        assert obj.programs["read_page"].test_run().retval == 1      # no page yet
        assert obj.programs["alloc_page"].test_run().retval == 0
        page = v["page"].get()                                       # a user-space address
        assert arena.address <= page < arena.address + arena.data_offset and page % PAGE == 0
        view = arena.mmap()
        off = page - arena.address
        assert struct.unpack_from("<Q", view, off)[0] == 0xc0ffee
        struct.pack_into("<Q", view, off + 8, 0xfeed_f00d_1234)
        assert obj.programs["read_page"].test_run().retval == 0
        assert v["page_value"].get() == 0xfeed_f00d_1234
        del view


def _mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        return any(int(line.split("-", 1)[0], 16) == addr for line in f)


@pytest.mark.kernel
def test_close_unmaps_the_arena(no_fd_leak):
    obj = pybpf.load(program("arena_test"))
    assert _mapped(ARENA_ADDR)
    obj.close()
    assert not _mapped(ARENA_ADDR)
    # the address is free again: a second load maps it there
    with pybpf.load(program("arena_test")) as again:
        assert again.maps["arena"].address == ARENA_ADDR


@pytest.mark.kernel
def test_view_kept_after_close_reads_zeros_and_the_arena_is_released(no_fd_leak):
    obj = pybpf.load(program("arena_test"))
    arena = obj.maps["arena"]
    kept = arena.mmap()[arena.data_offset:arena.data_offset + 8]   # a slice outlives the map
    assert bytes(kept) == (7).to_bytes(8, "little")
    map_id = sc.obj_get_info_by_fd(arena.fd, MapInfo()).id
    obj.close()
    assert bytes(kept) == bytes(8)                                   # zeros, not a crash
    kept[0] = 1                                                      # writes go nowhere harmful
    # the mapping no longer holds the arena: the kernel frees it (no fd, no mapping left)
    deadline = time.monotonic() + 5
    while True:
        try:
            os.close(sc.get_fd_by_id(Cmd.MAP_GET_FD_BY_ID, map_id))
        except pybpf.SyscallError as e:
            assert e.errno == errno.ENOENT
            break
        assert time.monotonic() < deadline, "the arena stayed in the kernel after close"
        time.sleep(0.05)
    assert _mapped(ARENA_ADDR)                  # zero pages, for the slice
    del kept
    assert not _mapped(ARENA_ADDR)              # unmapped with the last view


@pytest.mark.kernel
def test_address_already_taken_is_named(no_fd_leak):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    MAP_FIXED_NOREPLACE = 0x100000
    taken = libc.mmap(ARENA_ADDR + PAGE, PAGE, mmap.PROT_READ,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    assert taken == ARENA_ADDR + PAGE
    try:
        with pytest.raises(pybpf.Error, match=r"cannot mmap the arena .* at 0x50000000000.*something else is "
                                              r"mapped .*map_extra"):
            pybpf.load(program("arena_test"))
        assert _mapped(ARENA_ADDR + PAGE)                          # ours, untouched
    finally:
        libc.munmap(taken, PAGE)


@pytest.mark.kernel
def test_arena_without_map_extra_gets_an_address_from_the_kernel(no_fd_leak):
    spec = pybpf.open(program("arena_test"))
    spec.maps["arena"].map_extra = 0
    with spec.load() as obj:
        arena = obj.maps["arena"]
        assert arena.address and arena.address % PAGE == 0
        obj.variables["from_user"].set(5)
        obj.programs["bump"].test_run()
        assert (obj.variables["counter"].get(), obj.variables["seen"].get()) == (8, 5)
