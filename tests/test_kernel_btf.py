"""Kernel BTF: vmlinux parsing and caching, BTF by id, and kernel objects carrying their types."""

from __future__ import annotations

import array
import os
import struct

import pytest

from pybpf import _cache

import pybpf
from pybpf.kernel import btf as kbtf
from pybpf.kernel import syscall as sc
from pybpf.kernel.attrs import MapInfo, ProgInfo
from pybpf.spec.btf import BTF, Kind

from btf_builder import BTFBuilder
from conftest import program

VMLINUX = "/sys/kernel/btf/vmlinux"
needs_vmlinux = pytest.mark.skipif(not os.path.exists(VMLINUX), reason="kernel has no BTF at " + VMLINUX)


@needs_vmlinux
def test_vmlinux_is_memoized_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kbtf.forget()
    first = kbtf.vmlinux_btf()
    assert kbtf.vmlinux_btf() is first
    task = first.find("struct task_struct")
    assert task.kind == Kind.STRUCT and task.size > 1000
    assert any(m.name == "pid" for m in task.members)


@needs_vmlinux
def test_disk_index_cache_is_used_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kbtf.forget()
    fresh = kbtf.vmlinux_btf()
    cached = list((tmp_path / "pybpf" / "btf").glob("*.idx"))
    assert len(cached) == 1
    offsets = array.array("I")
    offsets.frombytes(_cache.read("btf", cached[0].name))     # the payload, once its MAC checks
    assert list(offsets) == list(fresh._offsets)
    # a new process (memo cleared) gets the same types from the cached index
    kbtf.forget()
    again = kbtf.vmlinux_btf()
    assert again is not fresh
    assert len(again) == len(fresh)
    assert again.find("struct task_struct").size == fresh.find("struct task_struct").size
    # a corrupt cache entry is not trusted: the index pass runs again
    cached[0].write_bytes(cached[0].read_bytes()[:-12] + array.array("I", [0, 4, 8]).tobytes())
    kbtf.forget()
    third = kbtf.vmlinux_btf()
    assert len(third) == len(fresh)
    assert third[len(fresh)].name == fresh[len(fresh)].name


def _kernel_maps_vmlinux() -> bool:
    """What this kernel says: can its vmlinux BTF be mapped (private, read-only; Linux 6.16+)?"""
    import mmap
    with open(VMLINUX, "rb") as f:
        try:
            mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ).close()
            return True
        except OSError:
            return False


@needs_vmlinux
def test_vmlinux_is_mapped_where_the_kernel_allows_it(tmp_path, monkeypatch):
    """No 5 MB read: the kernel's BTF pages are mapped, no fd is kept for the mapping, the same
    types come out as from a read, and the mapping is made once per process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kbtf.forget()
    before = len(os.listdir("/proc/self/fd"))
    mapped = kbtf.vmlinux_btf()
    assert len(os.listdir("/proc/self/fd")) == before
    assert isinstance(mapped.raw, memoryview if _kernel_maps_vmlinux() else bytearray)
    with open(VMLINUX, "rb") as f:
        read = BTF(f.read())
    assert bytes(mapped.raw) == bytes(read.raw) and len(mapped) == len(read)
    for name, kind in (("task_struct", Kind.STRUCT), ("bpf_map_type", Kind.ENUM), ("vfs_read", Kind.FUNC)):
        ours = mapped.first_own(name, kind)
        assert ours is not None and ours.id == read.first_own(name, kind).id
        assert ours.id == min(t.id for t in read.by_name(name, kind))
    if isinstance(mapped.raw, memoryview):
        assert mapped.raw.readonly
        kbtf.forget()
        assert kbtf.vmlinux_btf().raw is mapped.raw          # mapped once per process


def test_records_named_finds_a_hit_behind_an_unaligned_one():
    """The scan for a record's name offset tries every byte: the name offset 0x00050005 is
    bytes 05 00 05 00, and a match two bytes before the record (the last two bytes of the
    record before it, 05 00) must not hide the aligned one.  Raw kept as a bytearray (an
    object's BTF) and as a read-only memoryview (mapped vmlinux BTF) alike."""
    b = BTFBuilder()
    b.int_("int", 4, bit_off=5)                          # its last word ends in bytes 05 00
    b.add("", 1, 0, 4, struct.pack("<I", 32), name_off=0x00050005)
    blob = b.to_bytes()
    for raw in (bytearray(blob), memoryview(bytes(blob)).toreadonly()):
        btf = BTF(raw, copy=False)
        assert list(btf.records_named(0x00050005)) == [1]
        assert list(btf.records_named(b.s("int"))) == [0]


def test_a_mapped_blob_reads_as_a_copied_one():
    """A BTF over a read-only memoryview (mapped vmlinux BTF) reads its strings in place: long
    names (past the first window), every type and the name searches give what a copy gives."""
    b = BTFBuilder()
    long_name = "x" * 300 + "_tail"
    i = b.int_("int", 4, signed=True)
    b.struct(long_name, 8, [("a", i, 0), ("b" * 70, i, 32)])
    b.typedef("t", i)
    blob = b.to_bytes()
    mapped, copied = BTF(memoryview(bytes(blob)).toreadonly(), copy=False), BTF(blob)
    assert isinstance(mapped.raw, memoryview)
    assert [repr(t) for t in mapped.types[1:]] == [repr(t) for t in copied.types[1:]]
    assert mapped[2].name == long_name and mapped[2].members[1].name == "b" * 70
    assert mapped.first_own(long_name, Kind.STRUCT).id == 2
    assert [t.id for t in mapped.by_name("t")] == [3]
    assert mapped.string_bytes() == copied.string_bytes()


def test_split_btf_continues_ids_and_strings():
    """A module-style split BTF on top of a base: ids and string offsets continue after the base."""
    base_builder = BTFBuilder()
    base_builder.int_("int", 4, signed=True)
    base = base_builder.btf(source="base")
    split_builder = BTFBuilder(first_id=2, str_base=len(base_builder.strings))
    split_builder.ptr(1)                    # [2] int *
    split_builder.typedef("myint", 1)       # [3] 'myint', its name after the base's strings
    split = split_builder.btf(base=base, source="split")
    assert split.first_id == 2 and len(split) == 2
    assert split[3].name == "myint" and split[3].type_id == 1
    assert split[1].name == "int"                     # base types through the split
    assert split.type_name(2) == "int *"
    assert [t.id for t in split] == [2, 3]


def test_missing_module_btf_is_a_clear_error():
    with pytest.raises(pybpf.Error, match="no BTF for kernel module 'pybpf_no_such_module'"):
        kbtf.module_btf("pybpf_no_such_module", base=BTF(open(VMLINUX, "rb").read()) if os.path.exists(VMLINUX)
                        else None)


@pytest.mark.kernel
def test_maps_and_programs_carry_their_btf(no_fd_leak):
    """Maps are created with BTF key/value type ids, programs with func_info and line_info,
    and the kernel gives the object's BTF back by id."""
    with pybpf.load(program("maps_test")) as obj:
        h = obj.maps["hash"]
        info = sc.obj_get_info_by_fd(h.fd, MapInfo())
        assert info.btf_id != 0
        kernel_btf = kbtf.btf_by_id(info.btf_id)
        assert kernel_btf.type_name(info.btf_key_type_id) == "__u32"
        assert kernel_btf.type_name(info.btf_value_type_id) == "struct val"
        assert [m.name for m in kernel_btf[info.btf_value_type_id].members] == ["a", "b", "tag"]
        assert len(kernel_btf) == len(obj.spec.btf)
        pinfo = sc.obj_get_info_by_fd(obj.programs["fill"].fd, ProgInfo())
        assert pinfo.btf_id == info.btf_id
        assert pinfo.nr_func_info >= 1
        assert pinfo.nr_line_info >= 5
    with pybpf.load(program("globals_test")) as obj:
        m = obj.maps["globals_.data"]
        info = sc.obj_get_info_by_fd(m.fd, MapInfo())
        datasec = kbtf.btf_by_id(info.btf_id)[info.btf_value_type_id]
        assert datasec.kind == Kind.DATASEC and datasec.name == ".data"
        assert datasec.size == m.value_size
