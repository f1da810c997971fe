"""Link: an attached program; closing it detaches the program.

The base of every attach kind (one module per family in this package): the fds it
owns, ``close()``, and the BPF link operations ``info()``, ``update()`` and
``detach()``.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..resource import Resource, deferred_signals
from ..errors import ClosedError, Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import LinkDetachAttr, LinkUpdateAttr
from ..kernel.link_attrs import LinkInfo as _LinkInfoStruct
from ..kernel.constants import BPF_F_REPLACE as _BPF_F_REPLACE
from ..kernel.constants import AttachType, Cmd, LinkType


class Link(Resource):
    """An attachment of a program.  ``close()`` (or leaving the ``with`` block) detaches it.

    ``fd`` is the BPF link fd, or the perf event fd for a perf-event attachment
    made without BPF links (old kernels).
    """

    def __init__(self, program, kind: str, target: str, fds: list, bpf_link: bool = True):
        self.program = program
        self.kind = kind
        self.target = target
        self._fds = list(fds)
        self._bpf_link = bpf_link       # fds[0] is a BPF link (not a bare perf event)

    @property
    def fd(self) -> int:
        if not self._fds:
            raise ClosedError(f"link {self.kind}:{self.target} is closed")
        return self._fds[0]

    @property
    def closed(self) -> bool:
        return not self._fds

    def close(self) -> None:
        """Detach: close the link fd (and the perf event behind it). Idempotent.

        Signals are deferred meanwhile (closing a perf event waits for the kernel,
        so a Ctrl-C very often lands here): each fd is taken from the link and
        closed as one step, and every fd is closed even if one close fails."""
        first = None
        with deferred_signals():
            if self._fds:
                try:
                    self._undo()
                except Exception as e:   # the fds are closed anyway; the error is raised after
                    first = e
            while self._fds:
                fd = self._fds.pop(0)
                try:
                    os.close(fd)
                except OSError as e:   # close(2) frees the fd even when it reports an error
                    first = first or e
        if first is not None:
            raise first

    def _undo(self) -> None:
        """What an attachment that is not a BPF link undoes before close() closes its fds
        (a setsockopt or BPF_PROG_ATTACH to take back); nothing for BPF links, which detach
        when their fd closes."""

    def _link_fd(self, what: str) -> int:
        fd = self.fd
        if not self._bpf_link:
            raise NotSupportedError(f"link {self.kind}:{self.target} is not a BPF link (this kernel attached "
                                    f"it without one), so it has no {what}")
        return fd

    def info(self) -> "LinkInfo":
        """What the kernel says about this link (BPF_OBJ_GET_INFO_BY_FD): ``.id``, ``.type``,
        ``.prog_id`` and the fields of its kind (``ifindex``, ``attach_type``, ``cgroup_id``...)."""
        return link_info(self._link_fd("link info"))

    def update(self, program, *, old=None) -> None:
        """Swap in ``program`` atomically (BPF_LINK_UPDATE): the attach point runs the old
        program or the new one, never neither.  ``old``: fail (EPERM) unless the link still
        runs that program.  The new program must have the same type and attach type."""
        attr = LinkUpdateAttr(link_fd=self._link_fd("BPF_LINK_UPDATE"), new_prog_fd=program.fd)
        if old is not None:
            attr.old_prog_fd = old.fd
            attr.flags = _BPF_F_REPLACE
        try:
            with deferred_signals():    # the swap and its record in one step: a Ctrl-C comes after both
                sc.bpf(Cmd.LINK_UPDATE, attr)
                self.program = program
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.EPERM and old is not None:
                hint = f" (the link no longer runs {old.name!r})"
            elif e.errno == _errno.EINVAL:
                hint = " (the new program must have the link's program type and attach type)"
            elif e.errno == _errno.EOPNOTSUPP or e.errno == 524:
                hint = " (this kind of link cannot swap its program)"
            raise type(e)(e.command, e.errno, f"link {self.kind}:{self.target}: cannot swap in program "
                                              f"{program.name!r}{hint}") from None

    def detach(self) -> None:
        """Detach the program now (BPF_LINK_DETACH) while the link fd stays open, also for
        other holders of the link (a pinned link, another process): they see a link that
        runs nothing.  ``close()`` still closes the fd."""
        try:
            sc.bpf(Cmd.LINK_DETACH, LinkDetachAttr(link_fd=self._link_fd("BPF_LINK_DETACH")))
        except SyscallError as e:
            hint = " (this kind of link cannot be detached apart from closing it)" \
                if e.errno in (_errno.EOPNOTSUPP, 524) else ""
            raise type(e)(e.command, e.errno, f"link {self.kind}:{self.target}: cannot detach{hint}") from None

    # -- pins and ids (BPF_OBJ_PIN, BPF_OBJ_GET, BPF_LINK_GET_FD_BY_ID) -------------------------

    @classmethod
    def _from_fd(cls, fd: int, pin_path: str | None = None) -> "Link":
        """A Link around BPF link ``fd`` (owned from now on).  Its ``program`` is None (the
        kernel gives a program id: ``info().prog_id``); ``kind`` is the link type (``"xdp"``,
        ``"tracing"``...) and ``target`` what the kernel says it is attached to."""
        try:
            info = link_info(fd)
        except BaseException:
            os.close(fd)
            raise
        kind = info.type.name.lower() if isinstance(info.type, LinkType) else f"type {info.type}"
        link = cls(None, kind, _target_of(info), [fd])
        link._pin_path = pin_path
        link._prog_id = info.prog_id
        return link

    @classmethod
    def from_pinned(cls, path) -> "Link":
        """Open the link pinned at ``path`` (BPF_OBJ_GET).  ``close()`` drops this process's
        reference only: the link stays attached while the pin (or another holder) keeps it;
        :meth:`unpin` then ``close()`` detaches it, :meth:`detach` does at once."""
        from ..live import open_pinned
        path = os.fspath(path)
        with deferred_signals() as section:
            link = cls._from_fd(open_pinned(path, "link"), path)
            section.on_interrupt(link)
        return link

    @classmethod
    def from_id(cls, link_id: int) -> "Link":
        """Open the link the kernel knows as ``link_id`` (BPF_LINK_GET_FD_BY_ID: needs
        CAP_SYS_ADMIN).  ``close()`` drops this process's reference only."""
        from ..live import open_id
        with deferred_signals() as section:
            link = cls._from_fd(open_id("link", link_id))
            section.on_interrupt(link)
        return link

    @property
    def pin_path(self) -> str | None:
        """Where :meth:`pin` pinned the link (or :meth:`from_pinned` opened it); None otherwise."""
        return getattr(self, "_pin_path", None)

    def pin(self, path) -> None:
        """Pin the link at ``path`` on a bpffs mount (BPF_OBJ_PIN): the program stays attached after
        ``close()`` and after this process ends, until the pin is removed (:meth:`unpin`)."""
        from ..live import pin_fd
        fd = self._link_fd("pin (only BPF links can be pinned)")
        with deferred_signals():    # the pin and its record in one step: a Ctrl-C comes after both
            self._pin_path = pin_fd(fd, path, f"link {self.kind}:{self.target}")

    def unpin(self) -> None:
        """Remove the link's pin (made by :meth:`pin`, or the one :meth:`from_pinned` opened): once
        every fd of it is closed, the program is detached."""
        from ..live import unpin_path
        path = self.pin_path
        if path is None:
            raise Error(f"link {self.kind}:{self.target} is not pinned (pin() it, or open it with "
                        f"Link.from_pinned())")
        with deferred_signals():    # the unpin and its record in one step
            unpin_path(path, f"link {self.kind}:{self.target}")
            self._pin_path = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fds[0]}"
        who = self.program.name if self.program is not None else f"prog_id={getattr(self, '_prog_id', '?')}"
        return f"<Link {who} {self.kind}:{self.target} {state}>"


def _target_of(info: "LinkInfo") -> str:
    """What a link opened by pin or id is attached to, from its info (for ``Link.target``)."""
    f = info.fields
    for key, label in (("tp_name", ""), ("ifindex", "ifindex "), ("cgroup_id", "cgroup "), ("netns_ino", "netns "),
                       ("map_id", "map ")):
        if f.get(key):
            return f"{label}{f[key]}"
    if f.get("target_btf_id"):
        return f"btf {f.get('target_obj_id', 0)}:{f['target_btf_id']}"
    return f"link {info.id}"


def _fd_link(program, kind: str, target: str, make) -> Link:
    """A Link around the one fd ``make()`` returns, made in a section (see :func:`_perf_link`)."""
    with deferred_signals() as section:
        link = Link(program, kind, target, [make()])
        section.on_interrupt(link)
    return link




# -- what the kernel says about a link (BPF_OBJ_GET_INFO_BY_FD) ------------------------------------

# bpf_link_info's union member of each link type
_INFO_MEMBER = {
    LinkType.RAW_TRACEPOINT: "raw_tracepoint", LinkType.TRACING: "tracing", LinkType.CGROUP: "cgroup",
    LinkType.NETNS: "netns", LinkType.XDP: "xdp", LinkType.PERF_EVENT: "perf_event",
    LinkType.KPROBE_MULTI: "kprobe_multi", LinkType.STRUCT_OPS: "struct_ops", LinkType.NETFILTER: "netfilter",
    LinkType.TCX: "tcx", LinkType.UPROBE_MULTI: "uprobe_multi", LinkType.NETKIT: "netkit",
    LinkType.SOCKMAP: "sockmap",
}
# user-space pointers and buffer lengths of the union: not facts about the link
_POINTER_FIELDS = frozenset({"tp_name", "tp_name_len", "name_len", "file_name", "func_name", "addrs",
                             "offsets", "ref_ctr_offsets", "cookies", "path", "path_size"})


def _enum(enum_type, value: int):
    try:
        return enum_type(value)
    except ValueError:
        return value


class LinkInfo:
    """What the kernel reports about a link (``struct bpf_link_info``): ``id``, ``type``
    (a :class:`~pybpf.kernel.constants.LinkType`), ``prog_id``, and the fields of the link's
    kind as attributes and in ``fields``: ``ifindex`` (xdp, tcx, netkit), ``attach_type``
    (an :class:`~pybpf.kernel.constants.AttachType`: cgroup, netns, tcx, sockmap, tracing),
    ``cgroup_id``, ``netns_ino``, ``map_id``, ``pf``/``hooknum``/``priority``/``flags``
    (netfilter), ``tp_name`` (raw tracepoints)..."""

    __slots__ = ("id", "type", "prog_id", "fields")

    def __init__(self, id: int, type, prog_id: int, fields: dict):
        self.id, self.type, self.prog_id, self.fields = id, type, prog_id, fields

    @classmethod
    def from_struct(cls, info: _LinkInfoStruct, tp_name: str | None = None) -> "LinkInfo":
        ltype = _enum(LinkType, info.type)
        fields: dict = {}
        member = _INFO_MEMBER.get(ltype)
        if member is not None:
            part = getattr(info, member)
            for name, *_ in part._fields_:
                if name.startswith("_") or name in _POINTER_FIELDS:
                    continue
                value = getattr(part, name)
                if name == "attach_type":
                    value = _enum(AttachType, value)
                fields[name] = value
            if ltype == LinkType.PERF_EVENT:
                fields = {"perf_event_type": info.perf_event.type}
        if tp_name is not None:
            fields["tp_name"] = tp_name
        return cls(info.id, ltype, info.prog_id, fields)

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "fields")[name]
        except KeyError:
            raise AttributeError(f"{self.type!r} link info has no field {name!r}") from None

    def __eq__(self, other):
        if not isinstance(other, LinkInfo):
            return NotImplemented
        return (self.id, self.type, self.prog_id, self.fields) == (other.id, other.type, other.prog_id, other.fields)

    __hash__ = None

    def __repr__(self) -> str:
        kind = getattr(self.type, "name", self.type)
        extra = "".join(f", {k}={v!r}" for k, v in self.fields.items())
        return f"LinkInfo(id={self.id}, type={kind}, prog_id={self.prog_id}{extra})"


def link_info(fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD of BPF link ``fd``, with a raw tracepoint's name."""
    info = sc.obj_get_info_by_fd(fd, _LinkInfoStruct())
    tp_name = None
    if info.type == LinkType.RAW_TRACEPOINT and info.raw_tracepoint.tp_name_len:
        buf = ctypes.create_string_buffer(info.raw_tracepoint.tp_name_len + 1)
        again = _LinkInfoStruct()
        again.raw_tracepoint.tp_name = ctypes.addressof(buf)
        again.raw_tracepoint.tp_name_len = len(buf)
        info = sc.obj_get_info_by_fd(fd, again)
        tp_name = buf.value.decode(errors="replace")
    return LinkInfo.from_struct(info, tp_name)
