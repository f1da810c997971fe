"""ctypes layouts of ``union bpf_attr`` (one structure per command) and of the
``bpf_*_info`` structures filled by ``BPF_OBJ_GET_INFO_BY_FD``.

Field names are the UAPI names.  Pointers are ``c_uint64`` (``__aligned_u64`` in
the UAPI): store ``ctypes.addressof(buffer)`` in them and keep the buffer alive
until the call returns.  Where the UAPI has an anonymous union, every name of
the union is a field here too (``MapElemAttr.next_key`` is ``value``).

The layouts follow Linux 6.18.  The kernel accepts a shorter attr from old
programs and a longer one from new programs as long as the bytes it does not
know are zero, so these structures also work on older kernels when the newer
fields are left at zero.  ``tests/test_kernel_layouts.py`` checks every size and
offset against the UAPI headers and the running kernel's BTF.

This module holds what loading an object needs (maps, programs, BTF, pins, ids,
test runs and the prog/map/BTF info); the commands of attaching, links and queries
and ``struct bpf_link_info`` are in :mod:`pybpf.kernel.link_attrs`, importable from
here too: building those ~35 ctypes structures took ~1.8 ms of every load.

Layouts assume a 64-bit little-endian ABI (x86_64, aarch64), where ``c_uint64``
is 8-byte aligned like ``__aligned_u64``.
"""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int32, c_uint8, c_uint32, c_uint64

from .constants import BPF_OBJ_NAME_LEN, BPF_TAG_SIZE

ObjName = c_char * BPF_OBJ_NAME_LEN


def _union(name: str, *names: str, ctype=c_uint32) -> type[ctypes.Union]:
    """A union whose members are aliases of one integer field."""
    return type(name, (ctypes.Union,), {"_fields_": [(n, ctype) for n in names]})


# ---------------------------------------------------------------------------
# bpf_attr, one structure per command
# ---------------------------------------------------------------------------

class MapCreateAttr(ctypes.Structure):
    """BPF_MAP_CREATE."""

    _fields_ = [
        ("map_type", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("inner_map_fd", c_uint32),
        ("numa_node", c_uint32),
        ("map_name", ObjName),
        ("map_ifindex", c_uint32),
        ("btf_fd", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("map_extra", c_uint64),
        ("value_type_btf_obj_fd", c_int32),
        ("map_token_fd", c_int32),
        ("excl_prog_hash", c_uint64),
        ("excl_prog_hash_size", c_uint32),
    ]


class MapElemAttr(ctypes.Structure):
    """BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_AND_DELETE_ELEM (``next_key`` is
    ``value``)."""

    _anonymous_ = ("_value",)
    _fields_ = [
        ("map_fd", c_uint32),
        ("key", c_uint64),
        ("_value", _union("_ValueOrNextKey", "value", "next_key", ctype=c_uint64)),
        ("flags", c_uint64),
    ]


class MapFdAttr(ctypes.Structure):
    """BPF_MAP_FREEZE (the ``map_fd`` of the map element commands)."""

    _fields_ = [("map_fd", c_uint32)]


class MapBatchAttr(ctypes.Structure):
    """BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_AND_DELETE_BATCH,
    BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH (``bpf_attr.batch``)."""

    _fields_ = [
        ("in_batch", c_uint64),
        ("out_batch", c_uint64),
        ("keys", c_uint64),
        ("values", c_uint64),
        ("count", c_uint32),
        ("map_fd", c_uint32),
        ("elem_flags", c_uint64),
        ("flags", c_uint64),
    ]


class ProgLoadAttr(ctypes.Structure):
    """BPF_PROG_LOAD (``attach_btf_obj_fd`` is ``attach_prog_fd``)."""

    _anonymous_ = ("_attach",)
    _fields_ = [
        ("prog_type", c_uint32),
        ("insn_cnt", c_uint32),
        ("insns", c_uint64),
        ("license", c_uint64),
        ("log_level", c_uint32),
        ("log_size", c_uint32),
        ("log_buf", c_uint64),
        ("kern_version", c_uint32),
        ("prog_flags", c_uint32),
        ("prog_name", ObjName),
        ("prog_ifindex", c_uint32),
        ("expected_attach_type", c_uint32),
        ("prog_btf_fd", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("func_info_cnt", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("line_info", c_uint64),
        ("line_info_cnt", c_uint32),
        ("attach_btf_id", c_uint32),
        ("_attach", _union("_AttachProgOrBtfObj", "attach_prog_fd", "attach_btf_obj_fd")),
        ("core_relo_cnt", c_uint32),
        ("fd_array", c_uint64),
        ("core_relos", c_uint64),
        ("core_relo_rec_size", c_uint32),
        ("log_true_size", c_uint32),     # written back by the kernel (6.4+)
        ("prog_token_fd", c_int32),
        ("fd_array_cnt", c_uint32),
        ("signature", c_uint64),
        ("signature_size", c_uint32),
        ("keyring_id", c_int32),
    ]


class ObjPinAttr(ctypes.Structure):
    """BPF_OBJ_PIN, BPF_OBJ_GET."""

    _fields_ = [
        ("pathname", c_uint64),
        ("bpf_fd", c_uint32),
        ("file_flags", c_uint32),
        ("path_fd", c_int32),
    ]


class TestRunAttr(ctypes.Structure):
    """BPF_PROG_TEST_RUN (``bpf_attr.test``)."""

    __test__ = False  # not a pytest test class, despite the name
    _fields_ = [
        ("prog_fd", c_uint32),
        ("retval", c_uint32),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("data_in", c_uint64),
        ("data_out", c_uint64),
        ("repeat", c_uint32),
        ("duration", c_uint32),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("ctx_in", c_uint64),
        ("ctx_out", c_uint64),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class GetIdAttr(ctypes.Structure):
    """BPF_{PROG,MAP,BTF,LINK}_GET_NEXT_ID and BPF_{PROG,MAP,BTF,LINK}_GET_FD_BY_ID
    (``prog_id``, ``map_id``, ``btf_id`` and ``link_id`` are ``start_id``)."""

    _anonymous_ = ("_id",)
    _fields_ = [
        ("_id", _union("_StartId", "start_id", "prog_id", "map_id", "btf_id", "link_id")),
        ("next_id", c_uint32),
        ("open_flags", c_uint32),
        ("fd_by_id_token_fd", c_int32),
    ]


class InfoByFdAttr(ctypes.Structure):
    """BPF_OBJ_GET_INFO_BY_FD (``bpf_attr.info``)."""

    _fields_ = [
        ("bpf_fd", c_uint32),
        ("info_len", c_uint32),
        ("info", c_uint64),
    ]


class BtfLoadAttr(ctypes.Structure):
    """BPF_BTF_LOAD."""

    _fields_ = [
        ("btf", c_uint64),
        ("btf_log_buf", c_uint64),
        ("btf_size", c_uint32),
        ("btf_log_size", c_uint32),
        ("btf_log_level", c_uint32),
        ("btf_log_true_size", c_uint32),  # written back by the kernel (6.4+)
        ("btf_flags", c_uint32),
        ("btf_token_fd", c_int32),
    ]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS (``bpf_attr.enable_stats``)."""

    _fields_ = [("type", c_uint32)]


# ---------------------------------------------------------------------------
# BPF_OBJ_GET_INFO_BY_FD results
# ---------------------------------------------------------------------------

class ProgInfo(ctypes.Structure):
    """``struct bpf_prog_info``.

    The ``*_insns``, ``map_ids``, ``jited_*``, ``func_info``, ``line_info`` and
    ``prog_tags`` fields are pointers to buffers you provide, with their counts
    or byte lengths; with zero pointers the kernel only reports the counts.
    """

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),          # ns since boot
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ObjName),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32, 1),  # followed by 31 unused bits
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
    ]


class MapInfo(ctypes.Structure):
    """``struct bpf_map_info``."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ObjName),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("btf_vmlinux_id", c_uint32),
        ("map_extra", c_uint64),
        ("hash", c_uint64),
        ("hash_size", c_uint32),
    ]


class BtfInfo(ctypes.Structure):
    """``struct bpf_btf_info`` (``btf`` and ``name`` point to buffers you provide)."""

    _fields_ = [
        ("btf", c_uint64),
        ("btf_size", c_uint32),
        ("id", c_uint32),
        ("name", c_uint64),
        ("name_len", c_uint32),
        ("kernel_btf", c_uint32),
    ]


_LINK_NAMES = frozenset({
    "ProgAttachAttr", "ProgQueryAttr", "RawTracepointOpenAttr", "TaskFdQueryAttr",
    "LinkCreateAttr", "LinkCreatePerfEvent", "LinkCreateKprobeMulti", "LinkCreateTracing",
    "LinkCreateNetfilter", "LinkCreateRelative", "LinkCreateUprobeMulti", "LinkUpdateAttr",
    "LinkDetachAttr", "IterCreateAttr", "ProgBindMapAttr", "TokenCreateAttr", "ProgStreamReadAttr",
    "LinkInfo",
})


def __getattr__(name):
    # the link, attach and query layouts: built on first use (pybpf.kernel.link_attrs)
    if name in _LINK_NAMES or name.startswith("LinkInfo"):
        from . import link_attrs
        return getattr(link_attrs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ObjName",
    "MapCreateAttr", "MapElemAttr", "MapFdAttr", "MapBatchAttr", "ProgLoadAttr",
    "ObjPinAttr", "TestRunAttr", "GetIdAttr", "InfoByFdAttr", "BtfLoadAttr", "EnableStatsAttr",
    "ProgInfo", "MapInfo", "BtfInfo",
] + sorted(_LINK_NAMES)
