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


class ProgAttachAttr(ctypes.Structure):
    """BPF_PROG_ATTACH, BPF_PROG_DETACH."""

    _anonymous_ = ("_target", "_relative")
    _fields_ = [
        ("_target", _union("_TargetFdOrIfindex", "target_fd", "target_ifindex")),
        ("attach_bpf_fd", c_uint32),
        ("attach_type", c_uint32),
        ("attach_flags", c_uint32),
        ("replace_bpf_fd", c_uint32),
        ("_relative", _union("_RelativeFdOrId", "relative_fd", "relative_id")),
        ("expected_revision", c_uint64),
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


class ProgQueryAttr(ctypes.Structure):
    """BPF_PROG_QUERY (``bpf_attr.query``; ``count`` is ``prog_cnt``)."""

    _anonymous_ = ("_target", "_count")
    _fields_ = [
        ("_target", _union("_QueryTarget", "target_fd", "target_ifindex")),
        ("attach_type", c_uint32),
        ("query_flags", c_uint32),
        ("attach_flags", c_uint32),
        ("prog_ids", c_uint64),
        ("_count", _union("_ProgCnt", "prog_cnt", "count")),
        ("prog_attach_flags", c_uint64),
        ("link_ids", c_uint64),
        ("link_attach_flags", c_uint64),
        ("revision", c_uint64),
    ]


class RawTracepointOpenAttr(ctypes.Structure):
    """BPF_RAW_TRACEPOINT_OPEN (``bpf_attr.raw_tracepoint``)."""

    _fields_ = [
        ("name", c_uint64),
        ("prog_fd", c_uint32),
        ("cookie", c_uint64),
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


class TaskFdQueryAttr(ctypes.Structure):
    """BPF_TASK_FD_QUERY (``bpf_attr.task_fd_query``)."""

    _fields_ = [
        ("pid", c_uint32),
        ("fd", c_uint32),
        ("flags", c_uint32),
        ("buf_len", c_uint32),
        ("buf", c_uint64),
        ("prog_id", c_uint32),
        ("fd_type", c_uint32),
        ("probe_offset", c_uint64),
        ("probe_addr", c_uint64),
    ]


# --- BPF_LINK_CREATE: the per-attach-type tail union at offset 16 ------------

class LinkCreatePerfEvent(ctypes.Structure):
    """``link_create.perf_event`` (attach type BPF_PERF_EVENT)."""

    _fields_ = [("bpf_cookie", c_uint64)]


class LinkCreateKprobeMulti(ctypes.Structure):
    """``link_create.kprobe_multi`` (BPF_TRACE_KPROBE_MULTI / _SESSION)."""

    _fields_ = [
        ("flags", c_uint32),
        ("cnt", c_uint32),
        ("syms", c_uint64),
        ("addrs", c_uint64),
        ("cookies", c_uint64),
    ]


class LinkCreateTracing(ctypes.Structure):
    """``link_create.tracing`` (fentry/fexit/fmod_ret/lsm)."""

    _fields_ = [
        ("target_btf_id", c_uint32),
        ("cookie", c_uint64),
    ]


class LinkCreateNetfilter(ctypes.Structure):
    """``link_create.netfilter`` (BPF_NETFILTER); also ``LinkInfo.netfilter``."""

    _fields_ = [
        ("pf", c_uint32),
        ("hooknum", c_uint32),
        ("priority", c_int32),
        ("flags", c_uint32),
    ]


class LinkCreateRelative(ctypes.Structure):
    """``link_create.tcx`` / ``.netkit`` / ``.cgroup``: where to insert the program."""

    _anonymous_ = ("_relative",)
    _fields_ = [
        ("_relative", _union("_LinkRelative", "relative_fd", "relative_id")),
        ("expected_revision", c_uint64),
    ]


class LinkCreateUprobeMulti(ctypes.Structure):
    """``link_create.uprobe_multi`` (BPF_TRACE_UPROBE_MULTI / _SESSION)."""

    _fields_ = [
        ("path", c_uint64),
        ("offsets", c_uint64),
        ("ref_ctr_offsets", c_uint64),
        ("cookies", c_uint64),
        ("cnt", c_uint32),
        ("flags", c_uint32),
        ("pid", c_uint32),
    ]


class _LinkCreateIter(ctypes.Structure):
    _fields_ = [
        ("iter_info", c_uint64),
        ("iter_info_len", c_uint32),
    ]


class _LinkCreateTail(ctypes.Union):
    _anonymous_ = ("_iter",)
    _fields_ = [
        ("target_btf_id", c_uint32),
        ("_iter", _LinkCreateIter),
        ("perf_event", LinkCreatePerfEvent),
        ("kprobe_multi", LinkCreateKprobeMulti),
        ("tracing", LinkCreateTracing),
        ("netfilter", LinkCreateNetfilter),
        ("tcx", LinkCreateRelative),
        ("uprobe_multi", LinkCreateUprobeMulti),
        ("netkit", LinkCreateRelative),
        ("cgroup", LinkCreateRelative),
    ]


class LinkCreateAttr(ctypes.Structure):
    """BPF_LINK_CREATE (``bpf_attr.link_create``).

    ``map_fd`` is ``prog_fd`` (struct_ops links), ``target_ifindex`` is
    ``target_fd``.  The attach-type specific part is reached by its UAPI name:
    ``attr.target_btf_id``, ``attr.iter_info``/``iter_info_len``,
    ``attr.perf_event.bpf_cookie``, ``attr.kprobe_multi.syms``,
    ``attr.tracing.cookie``, ``attr.uprobe_multi.path``, ``attr.tcx.relative_fd``...
    ``perf_event_bpf_cookie`` and ``tracing_cookie`` are shortcuts.
    """

    _anonymous_ = ("_prog", "_target", "_tail")
    _fields_ = [
        ("_prog", _union("_ProgOrMapFd", "prog_fd", "map_fd")),
        ("_target", _union("_LinkTarget", "target_fd", "target_ifindex")),
        ("attach_type", c_uint32),
        ("flags", c_uint32),
        ("_tail", _LinkCreateTail),
    ]

    @property
    def perf_event_bpf_cookie(self) -> int:
        """``link_create.perf_event.bpf_cookie``."""
        return self.perf_event.bpf_cookie

    @perf_event_bpf_cookie.setter
    def perf_event_bpf_cookie(self, value: int) -> None:
        self.perf_event.bpf_cookie = value

    @property
    def tracing_cookie(self) -> int:
        """``link_create.tracing.cookie``."""
        return self.tracing.cookie

    @tracing_cookie.setter
    def tracing_cookie(self, value: int) -> None:
        self.tracing.cookie = value


class LinkUpdateAttr(ctypes.Structure):
    """BPF_LINK_UPDATE (``bpf_attr.link_update``)."""

    _anonymous_ = ("_new", "_old")
    _fields_ = [
        ("link_fd", c_uint32),
        ("_new", _union("_NewProgOrMap", "new_prog_fd", "new_map_fd")),
        ("flags", c_uint32),
        ("_old", _union("_OldProgOrMap", "old_prog_fd", "old_map_fd")),
    ]


class LinkDetachAttr(ctypes.Structure):
    """BPF_LINK_DETACH (``bpf_attr.link_detach``)."""

    _fields_ = [("link_fd", c_uint32)]


class EnableStatsAttr(ctypes.Structure):
    """BPF_ENABLE_STATS (``bpf_attr.enable_stats``)."""

    _fields_ = [("type", c_uint32)]


class IterCreateAttr(ctypes.Structure):
    """BPF_ITER_CREATE (``bpf_attr.iter_create``)."""

    _fields_ = [
        ("link_fd", c_uint32),
        ("flags", c_uint32),
    ]


class ProgBindMapAttr(ctypes.Structure):
    """BPF_PROG_BIND_MAP (``bpf_attr.prog_bind_map``)."""

    _fields_ = [
        ("prog_fd", c_uint32),
        ("map_fd", c_uint32),
        ("flags", c_uint32),
    ]


class TokenCreateAttr(ctypes.Structure):
    """BPF_TOKEN_CREATE (``bpf_attr.token_create``)."""

    _fields_ = [
        ("flags", c_uint32),
        ("bpffs_fd", c_uint32),
    ]


class ProgStreamReadAttr(ctypes.Structure):
    """BPF_PROG_STREAM_READ_BY_FD (``bpf_attr.prog_stream_read``)."""

    _fields_ = [
        ("stream_buf", c_uint64),
        ("stream_buf_len", c_uint32),
        ("stream_id", c_uint32),
        ("prog_fd", c_uint32),
    ]


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


class LinkInfoRawTracepoint(ctypes.Structure):
    """``bpf_link_info.raw_tracepoint``."""

    _fields_ = [
        ("tp_name", c_uint64),
        ("tp_name_len", c_uint32),
        ("cookie", c_uint64),
    ]


class LinkInfoTracing(ctypes.Structure):
    """``bpf_link_info.tracing``."""

    _fields_ = [
        ("attach_type", c_uint32),
        ("target_obj_id", c_uint32),
        ("target_btf_id", c_uint32),
        ("cookie", c_uint64),
    ]


class LinkInfoCgroup(ctypes.Structure):
    """``bpf_link_info.cgroup``."""

    _fields_ = [
        ("cgroup_id", c_uint64),
        ("attach_type", c_uint32),
    ]


class LinkInfoIfindex(ctypes.Structure):
    """``bpf_link_info.tcx`` / ``.netkit``."""

    _fields_ = [
        ("ifindex", c_uint32),
        ("attach_type", c_uint32),
    ]


class LinkInfoNetns(ctypes.Structure):
    """``bpf_link_info.netns``."""

    _fields_ = [
        ("netns_ino", c_uint32),
        ("attach_type", c_uint32),
    ]


class LinkInfoXdp(ctypes.Structure):
    """``bpf_link_info.xdp``."""

    _fields_ = [("ifindex", c_uint32)]


class LinkInfoStructOps(ctypes.Structure):
    """``bpf_link_info.struct_ops``."""

    _fields_ = [("map_id", c_uint32)]


class LinkInfoSockmap(ctypes.Structure):
    """``bpf_link_info.sockmap``."""

    _fields_ = [
        ("map_id", c_uint32),
        ("attach_type", c_uint32),
    ]


class LinkInfoKprobeMulti(ctypes.Structure):
    """``bpf_link_info.kprobe_multi``."""

    _fields_ = [
        ("addrs", c_uint64),
        ("count", c_uint32),
        ("flags", c_uint32),
        ("missed", c_uint64),
        ("cookies", c_uint64),
    ]


class LinkInfoUprobeMulti(ctypes.Structure):
    """``bpf_link_info.uprobe_multi``."""

    _fields_ = [
        ("path", c_uint64),
        ("offsets", c_uint64),
        ("ref_ctr_offsets", c_uint64),
        ("cookies", c_uint64),
        ("path_size", c_uint32),
        ("count", c_uint32),
        ("flags", c_uint32),
        ("pid", c_uint32),
    ]


class LinkInfoPerfUprobe(ctypes.Structure):
    """``bpf_link_info.perf_event.uprobe``."""

    _fields_ = [
        ("file_name", c_uint64),
        ("name_len", c_uint32),
        ("offset", c_uint32),
        ("cookie", c_uint64),
        ("ref_ctr_offset", c_uint64),
    ]


class LinkInfoPerfKprobe(ctypes.Structure):
    """``bpf_link_info.perf_event.kprobe``."""

    _fields_ = [
        ("func_name", c_uint64),
        ("name_len", c_uint32),
        ("offset", c_uint32),
        ("addr", c_uint64),
        ("missed", c_uint64),
        ("cookie", c_uint64),
    ]


class LinkInfoPerfTracepoint(ctypes.Structure):
    """``bpf_link_info.perf_event.tracepoint``."""

    _fields_ = [
        ("tp_name", c_uint64),
        ("name_len", c_uint32),
        ("cookie", c_uint64),
    ]


class LinkInfoPerfEventEvent(ctypes.Structure):
    """``bpf_link_info.perf_event.event``."""

    _fields_ = [
        ("config", c_uint64),
        ("type", c_uint32),
        ("cookie", c_uint64),
    ]


class _LinkInfoPerfEventUnion(ctypes.Union):
    _fields_ = [
        ("uprobe", LinkInfoPerfUprobe),
        ("kprobe", LinkInfoPerfKprobe),
        ("tracepoint", LinkInfoPerfTracepoint),
        ("event", LinkInfoPerfEventEvent),
    ]


class LinkInfoPerfEvent(ctypes.Structure):
    """``bpf_link_info.perf_event``: ``type`` is a ``bpf_perf_event_type``."""

    _anonymous_ = ("_u",)
    _fields_ = [
        ("type", c_uint32),
        ("_u", _LinkInfoPerfEventUnion),
    ]


class _LinkInfoUnion(ctypes.Union):
    _fields_ = [
        ("raw_tracepoint", LinkInfoRawTracepoint),
        ("tracing", LinkInfoTracing),
        ("cgroup", LinkInfoCgroup),
        ("netns", LinkInfoNetns),
        ("xdp", LinkInfoXdp),
        ("struct_ops", LinkInfoStructOps),
        ("netfilter", LinkCreateNetfilter),
        ("kprobe_multi", LinkInfoKprobeMulti),
        ("uprobe_multi", LinkInfoUprobeMulti),
        ("perf_event", LinkInfoPerfEvent),
        ("tcx", LinkInfoIfindex),
        ("netkit", LinkInfoIfindex),
        ("sockmap", LinkInfoSockmap),
        ("_raw", c_uint64 * 6),           # the whole 48-byte union
    ]


class LinkInfo(ctypes.Structure):
    """``struct bpf_link_info``.

    ``type`` (a :class:`~pybpf.kernel.constants.LinkType`) says which member of
    the union is valid: ``info.raw_tracepoint``, ``info.tracing``,
    ``info.perf_event.tracepoint``...  (``iter`` is not modelled; ``raw_bytes``
    gives the whole union.)
    """

    _anonymous_ = ("_u",)
    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_u", _LinkInfoUnion),
    ]

    @property
    def raw_bytes(self) -> bytes:
        """The type-specific union as bytes."""
        return bytes(self._u)


__all__ = [
    "ObjName",
    "MapCreateAttr", "MapElemAttr", "MapFdAttr", "MapBatchAttr", "ProgLoadAttr",
    "ObjPinAttr", "ProgAttachAttr", "TestRunAttr", "GetIdAttr", "InfoByFdAttr",
    "ProgQueryAttr", "RawTracepointOpenAttr", "BtfLoadAttr", "TaskFdQueryAttr",
    "LinkCreateAttr", "LinkCreatePerfEvent", "LinkCreateKprobeMulti",
    "LinkCreateTracing", "LinkCreateNetfilter", "LinkCreateRelative",
    "LinkCreateUprobeMulti", "LinkUpdateAttr", "LinkDetachAttr", "EnableStatsAttr",
    "IterCreateAttr", "ProgBindMapAttr", "TokenCreateAttr", "ProgStreamReadAttr",
    "ProgInfo", "MapInfo", "BtfInfo", "LinkInfo",
]
