"""BPF iterators: SEC("iter/<target>") programs and reading what they print.

An iterator program runs once per object the kernel walks (every task, every
element of a map...) and writes text or bytes with ``BPF_SEQ_PRINTF`` /
``bpf_seq_write``.  Attaching it makes a link (BPF_LINK_CREATE, attach type
BPF_TRACE_ITER, with the target's parameters in ``iter_info``); each
BPF_ITER_CREATE on that link gives a new file whose ``read()`` runs one walk::

    with pybpf.load("iter.o") as obj:
        it = obj.programs["dump_task"].iterate()
        for line in it.lines():
            print(line)
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from collections.abc import Iterator as _Iter

from ..errors import Error, SyscallError
from ..kernel import syscall as sc
from ..kernel.link_attrs import IterCreateAttr, LinkCreateAttr
from ..kernel.constants import AttachType, Cmd
from .base import Link

_READ_SIZE = 64 * 1024
# iterators over the elements of a map given in iter_info
_MAP_ITERS = ("bpf_map_elem", "bpf_sk_storage_map", "sockmap")

# bpf_cgroup_iter_order
CGROUP_ITER_ORDER_UNSPEC = 0
CGROUP_ITER_SELF_ONLY = 1
CGROUP_ITER_DESCENDANTS_PRE = 2
CGROUP_ITER_DESCENDANTS_POST = 3
CGROUP_ITER_ANCESTORS_UP = 4


class IterLinkInfo(ctypes.Union):
    """``union bpf_iter_link_info``: what an iterator walks (a map, a cgroup, a task)."""

    class _Map(ctypes.Structure):
        _fields_ = [("map_fd", ctypes.c_uint32)]

    class _Cgroup(ctypes.Structure):
        _fields_ = [("order", ctypes.c_uint32), ("cgroup_fd", ctypes.c_uint32), ("cgroup_id", ctypes.c_uint64)]

    class _Task(ctypes.Structure):
        _fields_ = [("tid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("pid_fd", ctypes.c_uint32)]

    _fields_ = [("map", _Map), ("cgroup", _Cgroup), ("task", _Task)]


class Iterator(Link):
    """An attached iterator program.  ``read()`` runs the iterator once and returns all it
    wrote; ``lines()`` yields its text output line by line as it is produced.  Closing it
    (or the object) detaches the program.
    """

    def __init__(self, program, target: str, link_fd: int):
        super().__init__(program, "iter", target, [link_fd])

    def open(self) -> int:
        """A new iterator file (BPF_ITER_CREATE): reading it to the end runs one walk.
        The caller closes it."""
        return sc.bpf(Cmd.ITER_CREATE, IterCreateAttr(link_fd=self.fd))

    def chunks(self) -> _Iter[bytes]:
        """The output of one walk, in the pieces the kernel hands out."""
        fd = self.open()
        try:
            while True:
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except OSError as e:
                    raise SyscallError("read(iterator)", e.errno,
                                       f"iterator {self.program.name!r} ({self.target}) failed") from None
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    def read(self) -> bytes:
        """Run the iterator once and return everything it wrote."""
        return b"".join(self.chunks())

    def lines(self, encoding: str = "utf-8") -> _Iter[str]:
        """Run the iterator once and yield its output's lines (without the newline)."""
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *done, pending = pending.split(b"\n")
            for line in done:
                yield line.decode(encoding, "replace")
        if pending:
            yield pending.decode(encoding, "replace")

    def __iter__(self) -> _Iter[str]:
        return self.lines()


def attach_iter(program, target: str = "", *, map=None, tid: int = 0, pid: int = 0, pid_fd: int = 0,
                cgroup_fd: int = 0, cgroup_id: int = 0, order: int = CGROUP_ITER_ORDER_UNSPEC) -> Iterator:
    """Attach an iter program (BPF_LINK_CREATE, BPF_TRACE_ITER).

    ``map`` (a :class:`~pybpf.Map` or fd) for map element iterators (iter/bpf_map_elem,
    iter/bpf_sk_storage_map...); ``tid``/``pid``/``pid_fd`` restrict task iterators to one
    thread or process; ``cgroup_fd``/``cgroup_id`` with ``order`` for iter/cgroup.
    """
    if program.spec.sec_def.attach != "iter":
        raise Error(f"program {program.name!r} (section {program.section!r}) is not an iterator "
                    f"(SEC(\"iter/<target>\"))")
    if target and target != program.spec.attach_target:
        raise Error(f"program {program.name!r} was loaded for iterator {program.spec.attach_target!r}; "
                    f"to iterate {target!r} set spec.programs[{program.name!r}].attach_target before loading")
    info = IterLinkInfo()
    used = False
    if map is not None:
        info.map.map_fd = map if isinstance(map, int) else map.fd
        used = True
    elif tid or pid or pid_fd:
        info.task.tid, info.task.pid, info.task.pid_fd = tid, pid, pid_fd
        used = True
    elif cgroup_fd or cgroup_id or order:
        info.cgroup.cgroup_fd, info.cgroup.cgroup_id, info.cgroup.order = cgroup_fd, cgroup_id, order
        used = True
    attr = LinkCreateAttr(prog_fd=program.fd, attach_type=AttachType.TRACE_ITER)
    if used:
        attr.iter_info = ctypes.addressof(info)
        attr.iter_info_len = ctypes.sizeof(info)
    try:
        fd = sc.bpf(Cmd.LINK_CREATE, attr)
    except SyscallError as e:
        hint = ""
        if map is None and e.errno in (_errno.EBADF, _errno.EINVAL) and program.spec.attach_target in _MAP_ITERS:
            hint = " (this iterator walks a map: give it with iterate(map=...))"
        raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach iterator "
                                          f"{program.spec.attach_target!r}{hint}") from None
    return Iterator(program, program.spec.attach_target, fd)


__all__ = ["Iterator", "IterLinkInfo", "attach_iter"]
