"""sk_msg and sk_skb programs on a SOCKMAP or SOCKHASH.

A sockmap runs up to four programs, one per attach type: SK_MSG_VERDICT (sk_msg, on each
message sent), SK_SKB_STREAM_PARSER, SK_SKB_STREAM_VERDICT and SK_SKB_VERDICT (sk_skb, on
data received; the two verdict kinds exclude each other).  A BPF link of type
BPF_LINK_TYPE_SOCKMAP (Linux 6.10) holds one; before it, BPF_PROG_ATTACH with the map fd as
target and BPF_PROG_DETACH undo each other.

Kernel rule worth knowing: a socket gets the map's programs when it is added to the map
(net/core/sock_map.c sock_map_link copies them into the socket's psock).  Attach the
programs first, then add sockets; detaching a program changes what sockets added later
get, not the sockets already in the map.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..errors import Error, NotSupportedError, SyscallError
from ..kernel import syscall as sc
from ..kernel.attrs import ProgInfo
from ..kernel.link_attrs import LinkCreateAttr, ProgAttachAttr, ProgQueryAttr
from ..kernel.constants import AttachType, Cmd, MapType, ProgType
from ..resource import deferred_signals
from .base import Link, _fd_link

_ATTACH_TYPES = {
    ProgType.SK_MSG: (AttachType.SK_MSG_VERDICT,),
    ProgType.SK_SKB: (AttachType.SK_SKB_STREAM_PARSER, AttachType.SK_SKB_STREAM_VERDICT,
                      AttachType.SK_SKB_VERDICT),
}


def _lacks(enum: str, member: str) -> bool:
    """True when the running kernel's BTF has ``enum`` without ``member`` (False when there
    is no BTF to tell)."""
    from ..kernel.btf import enum_names, running_btf
    names = enum_names(running_btf(None), enum)
    return names is not None and member not in names


def _prog_id(fd: int) -> int:
    return sc.obj_get_info_by_fd(fd, ProgInfo()).id


def _attached_prog_id(map_fd: int, attach_type: int) -> int | None:
    """The id of the program the map runs for ``attach_type`` (0: none), or None when the
    kernel cannot say (BPF_PROG_QUERY on sockmaps came with Linux 6.0)."""
    ids = (ctypes.c_uint32 * 1)()
    attr = ProgQueryAttr(target_fd=map_fd, attach_type=attach_type, prog_cnt=1)
    attr.prog_ids = ctypes.addressof(ids)
    try:
        sc.bpf(Cmd.PROG_QUERY, attr)
    except SyscallError:
        return None
    return ids[0] if attr.prog_cnt else 0


def _map_fd(m) -> tuple[int, str]:
    if isinstance(m, int):
        return m, f"fd {m}"
    fd = m.fd          # a pybpf Map (ClosedError when closed)
    mtype = getattr(m, "type", None)
    if mtype is not None and mtype not in (MapType.SOCKMAP, MapType.SOCKHASH):
        raise Error(f"map {m.name!r} is a {getattr(mtype, 'name', mtype)}: sk_msg and sk_skb programs "
                    f"attach to a SOCKMAP or SOCKHASH")
    return fd, m.name


def _attach_type(program) -> AttachType:
    allowed = _ATTACH_TYPES.get(program.type)
    if allowed is None:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section {program.section!r}): "
                    f"only sk_msg and sk_skb programs attach to a sockmap")
    attach_type = program.spec.expected_attach_type
    if attach_type not in allowed:
        raise Error(f"program {program.name!r} (section {program.section!r}) does not say what it does on "
                    f"the sockmap: use a section sk_msg, sk_skb/stream_parser, sk_skb/stream_verdict or "
                    f"sk_skb/verdict")
    return AttachType(attach_type)


def _explain(e: SyscallError, program, target: str, attach_type: AttachType) -> SyscallError:
    hint = ""
    if e.errno == _errno.EBUSY:
        hint = (" (the map already has a program of this attach type held by a BPF link, or a "
                "stream verdict and an skb verdict were both asked for: they exclude each other)")
    elif e.errno == _errno.EOPNOTSUPP:
        hint = " (this kernel's sockmaps do not take this attach type: CONFIG_BPF_STREAM_PARSER?)"
    elif e.errno == _errno.EINVAL:
        hint = " (is the target a SOCKMAP or SOCKHASH?)"
    return type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to sockmap {target} as "
                                       f"{attach_type.name}{hint}")


class SockmapProgLink(Link):
    """A sockmap program attached with BPF_PROG_ATTACH (kernels without sockmap links, or
    ``legacy=True``).  It holds duplicates of the map and program fds, so that close()
    can BPF_PROG_DETACH exactly this program from exactly this map even after the object
    that loaded them was closed; the kernel refuses (ENOENT) to detach a program that is
    not the attached one, so a program someone else attached since is left in place.

    Not a BPF link: ``info()`` raises :class:`~pybpf.NotSupportedError`; ``update(prog)``
    is BPF_PROG_ATTACH of ``prog`` (the kernel swaps the map's program in one step);
    ``detach()`` is BPF_PROG_DETACH now, and close() then only closes the fds.
    """

    def __init__(self, program, target: str, attach_type: AttachType, map_fd: int, prog_fd: int):
        super().__init__(program, "sockmap", target, [map_fd, prog_fd], bpf_link=False)
        self.attach_type = attach_type
        self._attached = False

    def _prog_attach(self, prog_fd: int) -> None:
        sc.bpf(Cmd.PROG_ATTACH, ProgAttachAttr(target_fd=self.fd, attach_bpf_fd=prog_fd,
                                               attach_type=self.attach_type))

    def _prog_detach(self) -> None:
        if not self._attached:
            return
        self._attached = False
        try:
            sc.bpf(Cmd.PROG_DETACH, ProgAttachAttr(target_fd=self._fds[0], attach_bpf_fd=self._fds[1],
                                                   attach_type=self.attach_type))
        except SyscallError as e:
            if e.errno == _errno.ENOENT:
                return      # our program is no longer the attached one: nothing of ours to remove
            raise type(e)(e.command, e.errno, f"program {self.program.name!r}: cannot detach from sockmap "
                                              f"{self.target} ({self.attach_type.name})") from None

    def _undo(self) -> None:
        """BPF_PROG_DETACH the program, then close the link's map and program fds.  Idempotent;
        the fds are closed even when the detach fails (the error is raised after)."""
        self._prog_detach()

    def info(self):
        """Attached with BPF_PROG_ATTACH, so no BPF link info: raises NotSupportedError."""
        self.fd
        raise NotSupportedError(f"link sockmap:{self.target} was attached with BPF_PROG_ATTACH, not a BPF "
                                f"link (sockmap links came with Linux 6.10): it has no link info; the program "
                                f"is link.program")

    def update(self, program, *, old=None) -> None:
        """Put ``program`` in this program's place (BPF_PROG_ATTACH replaces the map's program
        of this attach type in one step).  ``old``: fail unless the map still runs it."""
        self.fd
        if not self._attached:
            raise Error(f"link sockmap:{self.target} was detached: attach a program again")
        attach_type = _attach_type(program)
        if attach_type != self.attach_type:
            raise Error(f"link sockmap:{self.target} is {self.attach_type.name}; program {program.name!r} "
                        f"is {attach_type.name}")
        if old is not None:
            running = _attached_prog_id(self._fds[0], self.attach_type)
            if running is not None and running != _prog_id(old.fd):
                raise Error(f"link sockmap:{self.target}: the map no longer runs {old.name!r}")
        with deferred_signals():
            new_fd = os.dup(program.fd)
            try:
                self._prog_attach(new_fd)
            except SyscallError as e:
                os.close(new_fd)
                raise _explain(e, program, self.target, attach_type) from None
            old_fd, self._fds[1] = self._fds[1], new_fd
            os.close(old_fd)
        self.program = program

    def detach(self) -> None:
        """BPF_PROG_DETACH now; the link keeps its fds until ``close()``."""
        self.fd
        self._prog_detach()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("attached" if self._attached else "detached")
        return f"<SockmapProgLink {self.program.name} sockmap:{self.target} {self.attach_type.name} {state}>"


def attach_sockmap(program, map, *, legacy: bool = False) -> Link:
    """Attach an sk_msg or sk_skb program to ``map`` (a SOCKMAP or SOCKHASH: a
    :class:`pybpf.Map` or its fd) as the attach type its section says (sk_msg,
    sk_skb/stream_parser, sk_skb/stream_verdict, sk_skb/verdict).

    A BPF link (BPF_LINK_TYPE_SOCKMAP) where the kernel has one (6.10+), else (or with
    ``legacy=True``) BPF_PROG_ATTACH, returned as a :class:`SockmapProgLink`.  Either way
    close() removes this program and nothing else.  A map already running another
    program of that attach type is refused (attaching would silently replace it).
    Sockets get the map's programs when they are added: attach before adding them."""
    attach_type = _attach_type(program)
    map_fd, target = _map_fd(map)

    running = _attached_prog_id(map_fd, attach_type)
    if running:
        raise Error(f"program {program.name!r}: sockmap {target} already runs program id {running} as "
                    f"{attach_type.name}; attaching would replace it silently: detach that one first")

    if not legacy and not _lacks("bpf_link_type", "BPF_LINK_TYPE_SOCKMAP"):
        def make() -> int:
            try:
                return sc.bpf(Cmd.LINK_CREATE, LinkCreateAttr(prog_fd=program.fd, target_fd=map_fd,
                                                              attach_type=attach_type))
            except SyscallError as e:
                raise _explain(e, program, target, attach_type) from None
        return _fd_link(program, "sockmap", target, make)

    with deferred_signals() as section:
        dups = []
        try:
            dups.append(os.dup(map_fd))
            dups.append(os.dup(program.fd))
        except OSError as e:
            for fd in dups:
                os.close(fd)
            raise SyscallError("dup", e.errno, f"sockmap {target}: not an open map fd") from None
        link = SockmapProgLink(program, target, attach_type, dups[0], dups[1])
        section.on_interrupt(link)
        try:
            link._prog_attach(dups[1])
        except SyscallError as e:
            link.close()
            raise _explain(e, program, target, attach_type) from None
        link._attached = True
    return link


__all__ = ["attach_sockmap", "SockmapProgLink"]
