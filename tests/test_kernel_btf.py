"""Kernel BTF: vmlinux parsing and caching, BTF by id, and kernel objects carrying their types."""

from __future__ import annotations

import array
import os

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
