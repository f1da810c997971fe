"""Socket filters: a SOCKET_FILTER program on one socket with setsockopt(SO_ATTACH_BPF).

There is no BPF link for socket filters: the kernel keeps one filter per socket
(``sk->sk_filter``), set by ``SO_ATTACH_BPF`` and removed by ``SO_DETACH_BPF``.  The
:class:`SocketFilterLink` holds a duplicate of the socket's fd, so it can detach from the
very socket it attached to even after the caller closed (or reused the number of) theirs;
the socket stays open until the link is closed too.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..errors import ClosedError, Error, NotSupportedError, SyscallError
from ..kernel.constants import ProgType
from ..resource import deferred_signals
from .base import Link

# asm-generic/socket.h (the same numbers on x86 and arm64)
SOL_SOCKET = 1
SO_ATTACH_BPF = 50          # Linux 3.19
SO_DETACH_BPF = 27          # = SO_DETACH_FILTER
SO_GET_FILTER = 26          # = SO_ATTACH_FILTER

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_libc.getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.POINTER(ctypes.c_uint32))


def _setsockopt_int(fd: int, option: int, value: int, name: str) -> None:
    v = ctypes.c_int(value)
    while _libc.setsockopt(fd, SOL_SOCKET, option, ctypes.byref(v), ctypes.sizeof(v)) != 0:
        err = ctypes.get_errno()
        if err != _errno.EINTR:
            raise SyscallError(f"setsockopt({name})", err)


def _filter_kind(fd: int) -> str:
    """What filter the socket has now: ``"none"``, ``"classic"``, ``"ebpf"`` (or ``"unknown"``).
    SO_GET_FILTER with optlen 0 writes a classic filter's instruction count (0: no filter)
    into optlen, and fails with EACCES for an eBPF filter, which has no classic program to
    show (net/core/filter.c sk_get_filter)."""
    size = ctypes.c_uint32(0)
    if _libc.getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(size)) == 0:
        return "classic" if size.value else "none"
    return "ebpf" if ctypes.get_errno() == _errno.EACCES else "unknown"


class SocketFilterLink(Link):
    """A socket filter attached with SO_ATTACH_BPF.  ``close()`` detaches it (SO_DETACH_BPF)
    and closes the link's duplicate of the socket fd.

    Not a BPF link, so: ``info()`` raises :class:`~pybpf.NotSupportedError` (the kernel has
    no link object to describe; the program is ``link.program``); ``update(prog)`` attaches
    ``prog`` with SO_ATTACH_BPF, which the kernel swaps in for the old filter in one step;
    ``detach()`` removes the filter now (SO_DETACH_BPF) and leaves ``close()`` only the fd
    to close.  A socket has one filter: if someone else replaced the program on this
    socket, close() leaves theirs (a classic filter, or none) alone, but cannot tell one
    eBPF program from another (the kernel does not show which program filters a socket).
    """

    def __init__(self, program, target: str, sock_fd: int):
        super().__init__(program, "socket", target, [sock_fd], bpf_link=False)
        self._attached = False

    @property
    def socket_fd(self) -> int:
        """The link's own duplicate of the socket's fd."""
        return self.fd

    def _attach(self, program) -> None:
        try:
            _setsockopt_int(self.fd, SO_ATTACH_BPF, program.fd, "SO_ATTACH_BPF")
        except SyscallError as e:
            hint = ""
            if e.errno == _errno.ENOTSOCK:
                hint = " (it is not a socket)"
            elif e.errno == _errno.EPERM:
                hint = " (the socket's filter is locked with SO_LOCK_FILTER)"
            elif e.errno == _errno.ENOPROTOOPT:
                raise NotSupportedError(f"socket {self.target}: this kernel has no SO_ATTACH_BPF "
                                        f"(eBPF socket filters came with Linux 3.19)") from None
            raise type(e)(e.command, e.errno, f"program {program.name!r}: cannot attach to socket "
                                              f"{self.target}{hint}") from None
        self._attached = True

    def _detach(self) -> None:
        if not self._attached:
            return
        fd = self.fd
        self._attached = False
        if _filter_kind(fd) not in ("ebpf", "unknown"):
            return      # no filter, or a classic one someone else set: nothing of ours to remove
        try:
            _setsockopt_int(fd, SO_DETACH_BPF, 0, "SO_DETACH_BPF")
        except SyscallError as e:
            if e.errno == _errno.ENOENT:
                return      # already gone (sk_detach_filter: no filter)
            hint = " (the filter is locked with SO_LOCK_FILTER)" if e.errno == _errno.EPERM else ""
            raise type(e)(e.command, e.errno, f"program {self.program.name!r}: cannot detach from socket "
                                              f"{self.target}{hint}") from None

    def _undo(self) -> None:
        """Detach the filter (SO_DETACH_BPF) and close the socket fd the link holds.  Idempotent;
        the fd is closed even when the detach fails (the error is raised after)."""
        self._detach()

    def info(self):
        """Socket filters have no BPF link, so no link info: raises NotSupportedError."""
        self.fd    # ClosedError first
        raise NotSupportedError(f"link socket:{self.target} is a socket filter attached with "
                                f"setsockopt(SO_ATTACH_BPF), not a BPF link: the kernel keeps no link to "
                                f"describe (the program is link.program)")

    def update(self, program, *, old=None) -> None:
        """Attach ``program`` instead (SO_ATTACH_BPF again: the kernel replaces the socket's
        filter in one step, so every packet meets one program or the other).  ``old``: fail
        unless this link attached that program last."""
        self.fd    # ClosedError first
        if old is not None and old is not self.program:
            raise Error(f"link socket:{self.target}: runs {self.program.name!r}, not {old.name!r}")
        _check_type(program)
        if not self._attached:
            raise Error(f"link socket:{self.target} was detached: attach a program again with "
                        f"program.attach_socket(sock)")
        self._attach(program)
        self.program = program

    def detach(self) -> None:
        """Remove the filter now (SO_DETACH_BPF); the link keeps its socket fd until ``close()``."""
        self.fd
        self._detach()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("attached" if self._attached else "detached")
        return f"<SocketFilterLink {self.program.name} socket:{self.target} {state}>"


def _check_type(program) -> None:
    if program.type != ProgType.SOCKET_FILTER:
        raise Error(f"program {program.name!r} is a {program.type.name} program (section "
                    f"{program.section!r}): only socket filters (SEC(\"socket\")) attach to a socket")


def _socket_fd(sock) -> int:
    if isinstance(sock, int):
        return sock
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        raise Error(f"attach_socket: {sock!r} is neither a socket nor a file descriptor")
    fd = fileno()
    if fd < 0:
        raise ClosedError(f"attach_socket: socket {sock!r} is closed")
    return fd


def attach_socket(program, sock) -> Link:
    """Attach a socket filter (SEC("socket")) to ``sock`` (a socket object or an fd) with
    setsockopt(SO_ATTACH_BPF).  The filter sees each packet the socket receives and
    returns how many bytes of it to keep (0 drops it).  Returns a :class:`SocketFilterLink`
    that holds its own duplicate of the socket fd; closing it detaches (SO_DETACH_BPF)."""
    _check_type(program)
    fd = _socket_fd(sock)
    target = f"fd {fd}"
    with deferred_signals() as section:
        try:
            own = os.dup(fd)
        except OSError as e:
            raise SyscallError("dup", e.errno, f"attach_socket: {sock!r} is not an open socket") from None
        link = SocketFilterLink(program, target, own)
        section.on_interrupt(link)
        try:
            link._attach(program)
        except BaseException:
            link.close()
            raise
    return link
