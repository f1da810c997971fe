"""ctypes layouts of the ``union bpf_attr`` commands that attach programs and manage
links (PROG_ATTACH/QUERY, RAW_TRACEPOINT_OPEN, LINK_CREATE/UPDATE/DETACH, ITER_CREATE,
TASK_FD_QUERY, PROG_BIND_MAP, TOKEN_CREATE, PROG_STREAM_READ_BY_FD) and of
``struct bpf_link_info``.

Kept apart from :mod:`pybpf.kernel.attrs` (which re-exports every name) because a load
needs none of them; the conventions are that module's: UAPI field names, pointers as
``c_uint64``, every name of an anonymous union a field, Linux 6.18 layouts checked by
``tests/test_kernel_layouts.py``.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint32, c_uint64

from .attrs import _union


# ---------------------------------------------------------------------------
# bpf_attr: attaching, links, queries
# ---------------------------------------------------------------------------


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
