"""The one place pybpf calls ``bpf(2)``, and thin typed helpers on top of it.

Every BPF command goes through :func:`bpf`, which retries interrupted calls and
turns a failure into :class:`pybpf.errors.SyscallError` (or
:class:`pybpf.errors.PermissionError` for EPERM/EACCES) naming the command.

Buffers passed to the helpers are writable bytes-like objects (``bytearray``,
ctypes arrays and structures).  They must be exactly as large as the kernel
will read or write: the kernel copies ``key_size``/``value_size`` bytes (for
per-CPU maps ``round_up(value_size, 8) * possible CPUs``) without knowing how
big the Python buffer is.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from .. import errors
from ..resource import interrupt_pending
from .attrs import EnableStatsAttr, GetIdAttr, InfoByFdAttr, MapBatchAttr, MapElemAttr, MapFdAttr, ObjPinAttr
from .constants import Cmd

#: libc, with errno captured after each foreign call (``ctypes.get_errno()``).
libc = ctypes.CDLL(None, use_errno=True)

_bpf_syscall = libc["syscall"]   # a separate function object: own argtypes
_bpf_syscall.restype = ctypes.c_long
_bpf_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)

#: libc's mmap and munmap, for mappings the mmap module cannot make: at a given address (arena
#: maps), or without keeping a duplicate of the file's fd open (vmlinux BTF)
libc_mmap = libc["mmap"]
libc_mmap.restype = ctypes.c_void_p
libc_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
libc_munmap = libc["munmap"]
libc_munmap.restype = ctypes.c_int
libc_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = (1 << 64) - 1 if ctypes.sizeof(ctypes.c_void_p) == 8 else (1 << 32) - 1

# System call numbers differ per architecture; these two are the ones we run on.
_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}

# The verifier can be interrupted by a signal and then fails with EAGAIN;
# libbpf and cilium/ebpf simply try again.  Bound it so a real EAGAIN surfaces.
_PROG_LOAD_EAGAIN_ATTEMPTS = 5


def syscall_number(table: dict[str, int], name: str) -> int:
    """The number of system call *name* on this machine, from *table*
    (``os.uname().machine`` -> number)."""
    machine = os.uname().machine
    try:
        return table[machine]
    except KeyError:
        raise errors.NotSupportedError(
            f"pybpf does not know the {name} system call number on {machine!r} "
            f"(supported: {', '.join(sorted(table))})") from None


def command_name(cmd: int) -> str:
    """``"BPF_MAP_CREATE"`` for ``Cmd.MAP_CREATE``; ``"BPF_CMD_99"`` for unknown numbers."""
    try:
        return "BPF_" + Cmd(cmd).name
    except ValueError:
        return f"BPF_CMD_{int(cmd)}"


_CAP_SYS_ADMIN = 21
_CAP_BPF = 39


def _effective_caps() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def bpf_capable() -> bool:
    """True if CAP_BPF or CAP_SYS_ADMIN is in this process's effective set (root without
    capabilities, as under ``setpriv --bounding-set=-all``, is not)."""
    caps = _effective_caps()
    if caps is None:
        return os.geteuid() == 0
    return bool(caps >> _CAP_BPF & 1 or caps >> _CAP_SYS_ADMIN & 1)


def every_bpf_capability() -> bool:
    """True if this process passes every capability check of bpf(2): CAP_SYS_ADMIN is in
    its effective set, which bpf_token_capable() (kernel/bpf/token.c) accepts for CAP_BPF,
    CAP_PERFMON and CAP_NET_ADMIN too.  An EPERM such a process gets is the kernel's policy
    (lockdown, an LSM, a build that withholds the feature), not a missing privilege."""
    caps = _effective_caps()
    return caps is not None and bool(caps >> _CAP_SYS_ADMIN & 1)


# commands the kernel allows only with CAP_SYS_ADMIN (kernel/bpf/syscall.c: bpf_obj_get_next_id,
# bpf_*_get_fd_by_id and bpf_enable_stats check capable(CAP_SYS_ADMIN), CAP_BPF is not enough)
_SYS_ADMIN_CMDS = {
    Cmd.PROG_GET_NEXT_ID: "listing BPF programs", Cmd.MAP_GET_NEXT_ID: "listing BPF maps",
    Cmd.BTF_GET_NEXT_ID: "listing BTF objects", Cmd.LINK_GET_NEXT_ID: "listing BPF links",
    Cmd.PROG_GET_FD_BY_ID: "opening a BPF program by id", Cmd.MAP_GET_FD_BY_ID: "opening a BPF map by id",
    Cmd.BTF_GET_FD_BY_ID: "opening a BTF object by id", Cmd.LINK_GET_FD_BY_ID: "opening a BPF link by id",
    Cmd.ENABLE_STATS: "BPF_ENABLE_STATS (run-time statistics)",
}


def _permission_hint(cmd: int) -> str:
    if cmd in _SYS_ADMIN_CMDS and not every_bpf_capability():
        return f"{_SYS_ADMIN_CMDS[cmd]} needs CAP_SYS_ADMIN (run as root with it; CAP_BPF is not enough)"
    if not bpf_capable():
        return "needs root (CAP_BPF, CAP_PERFMON)"
    if cmd in (Cmd.MAP_UPDATE_ELEM, Cmd.MAP_DELETE_ELEM, Cmd.MAP_UPDATE_BATCH,
               Cmd.MAP_DELETE_BATCH, Cmd.MAP_LOOKUP_AND_DELETE_ELEM):
        return "the map is frozen or read-only for user space"
    return ("refused even for root: kernel lockdown, an LSM policy, or an operation "
            "this kernel does not allow")


def _raw_bpf(cmd: int, attr: ctypes.Structure, size: int | None) -> tuple[int, int]:
    """Calls bpf(2); returns ``(result, 0)`` or ``(-1, errno)``.  Retries EINTR
    always and EAGAIN for BPF_PROG_LOAD."""
    nr = syscall_number(_NR_BPF, "bpf")
    if size is None:
        size = ctypes.sizeof(attr)
    address = ctypes.addressof(attr)
    eagain_left = _PROG_LOAD_EAGAIN_ATTEMPTS
    while True:
        ctypes.set_errno(0)
        result = _bpf_syscall(nr, int(cmd), address, size)
        if result >= 0:
            return result, 0
        err = ctypes.get_errno()
        if err in (_errno.EINTR, _errno.EAGAIN) and interrupt_pending():
            # a Ctrl-C came during the call (the verifier stops with EAGAIN on a pending
            # signal) and waits at the end of a deferred_signals() section: nothing was
            # made, so give up now instead of starting the work again
            return -1, err
        if err == _errno.EINTR:
            continue
        if err == _errno.EAGAIN and cmd == Cmd.PROG_LOAD and eagain_left > 1:
            eagain_left -= 1
            continue
        return -1, err


def _error(cmd: int, err: int, message: str | None = None) -> errors.SyscallError:
    name = command_name(cmd)
    if err in (_errno.EPERM, _errno.EACCES):
        hint = _permission_hint(cmd)
        return errors.PermissionError(name, err, f"{message}; {hint}" if message else hint)
    return errors.SyscallError(name, err, message)


def bpf(cmd: Cmd, attr: ctypes.Structure, size: int | None = None) -> int:
    """Runs bpf(2) command *cmd* with *attr* (a ctypes structure from
    :mod:`pybpf.kernel.attrs`); *size* defaults to ``sizeof(attr)``.

    Returns the kernel's result: a new file descriptor for the commands that
    create one (the caller owns it), else 0.  The kernel may write results back
    into *attr*.  Raises :class:`pybpf.errors.PermissionError` on EPERM/EACCES
    and :class:`pybpf.errors.SyscallError` (``.command == "BPF_MAP_CREATE"``,
    ``.errno``) otherwise.
    """
    result, err = _raw_bpf(cmd, attr, size)
    if err:
        raise _error(cmd, err)
    return result


# ---------------------------------------------------------------------------
# Typed helpers
# ---------------------------------------------------------------------------

class _Buffer:
    """The address of a bytes-like object, kept alive while in use.

    Read-only objects (``bytes``) are copied, so only pass them where the kernel
    only reads.
    """

    def __init__(self, obj):
        view = memoryview(obj)
        if view.readonly:
            obj = bytearray(view)
            view = memoryview(obj)
        self.size = view.nbytes
        # A zero-length array still needs a valid (unused) address.
        self._array = (ctypes.c_char * max(self.size, 1)).from_buffer(
            obj if self.size else bytearray(1))
        self.address = ctypes.addressof(self._array)


def _address(buf) -> tuple[int, object]:
    """(address, keep-alive) of *buf*, or (0, None) for None."""
    if buf is None:
        return 0, None
    holder = _Buffer(buf)
    return holder.address, holder


def obj_get_info_by_fd(fd: int, info):
    """Fills *info* (a :class:`~pybpf.kernel.attrs.ProgInfo`, ``MapInfo``,
    ``BtfInfo`` or ``LinkInfo`` instance, pointer fields set by the caller if
    wanted) through BPF_OBJ_GET_INFO_BY_FD and returns it.

    A kernel older than the structure leaves the fields it does not know at 0.
    """
    attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
    return info


def _map_elem(cmd: Cmd, fd: int, key, value, flags: int, missing_ok: bool) -> bool:
    key_address, key_keep = _address(key)
    value_address, value_keep = _address(value)
    attr = MapElemAttr(map_fd=fd, key=key_address, value=value_address, flags=flags)
    _, err = _raw_bpf(cmd, attr, None)
    del key_keep, value_keep
    if err == _errno.ENOENT and missing_ok:
        return False
    if err:
        raise _error(cmd, err)
    return True


def map_lookup_elem(fd: int, key, value, flags: int = 0) -> bool:
    """Copies the value stored under *key* into the writable buffer *value*.

    Returns False (leaving *value* untouched) when the key is not in the map.
    *flags* may be ``BPF_F_LOCK``.
    """
    return _map_elem(Cmd.MAP_LOOKUP_ELEM, fd, key, value, flags, missing_ok=True)


def map_lookup_and_delete_elem(fd: int, key, value, flags: int = 0) -> bool:
    """Like :func:`map_lookup_elem`, then deletes the element (``key`` is None
    for queue and stack maps, which pop).  Returns False when there was none."""
    return _map_elem(Cmd.MAP_LOOKUP_AND_DELETE_ELEM, fd, key, value, flags, missing_ok=True)


def map_update_elem(fd: int, key, value, flags: int = 0) -> None:
    """Stores *value* under *key*; *flags* is ``BPF_ANY``, ``BPF_NOEXIST`` or
    ``BPF_EXIST`` (optionally ``| BPF_F_LOCK``)."""
    _map_elem(Cmd.MAP_UPDATE_ELEM, fd, key, value, flags, missing_ok=False)


def map_delete_elem(fd: int, key) -> bool:
    """Deletes *key*; returns False when it was not in the map."""
    return _map_elem(Cmd.MAP_DELETE_ELEM, fd, key, None, 0, missing_ok=True)


def map_get_next_key(fd: int, key, next_key) -> bool:
    """Writes the key following *key* (the first key when *key* is None) into
    *next_key*.  Returns False after the last key."""
    key_address, key_keep = _address(key)
    next_address, next_keep = _address(next_key)
    attr = MapElemAttr(map_fd=fd, key=key_address, next_key=next_address)
    _, err = _raw_bpf(Cmd.MAP_GET_NEXT_KEY, attr, None)
    del key_keep, next_keep
    if err == _errno.ENOENT:
        return False
    if err:
        raise _error(Cmd.MAP_GET_NEXT_KEY, err)
    return True


def map_freeze(fd: int) -> None:
    """Makes the map read-only for user space (BPF_MAP_FREEZE), as done for
    ``.rodata`` after it is filled."""
    bpf(Cmd.MAP_FREEZE, MapFdAttr(map_fd=fd))


def map_batch(cmd: Cmd, fd: int, keys, values, count: int, in_batch=None, out_batch=None,
              elem_flags: int = 0, flags: int = 0, allowed: tuple = ()) -> tuple[int, int]:
    """One BPF_MAP_LOOKUP_BATCH / LOOKUP_AND_DELETE_BATCH / UPDATE_BATCH / DELETE_BATCH over
    ``count`` elements: *keys* and *values* are buffers of ``count`` packed keys and values
    (*values* None for DELETE_BATCH), *in_batch*/*out_batch* the opaque cursor buffers of the
    lookups (None: start at the beginning / no cursor).

    Returns ``(elements done, errno)``: the kernel reports in ``count`` how many elements it
    processed, also when it fails; errnos in *allowed* (ENOENT at the end of a lookup, ENOSPC
    for a hash bucket larger than ``count``, whose size it then reports) are returned, other
    failures raise, with the number done in the exception's ``done``."""
    key_address, key_keep = _address(keys)
    value_address, value_keep = _address(values)
    in_address, in_keep = _address(in_batch)
    out_address, out_keep = _address(out_batch)
    attr = MapBatchAttr(in_batch=in_address, out_batch=out_address, keys=key_address, values=value_address,
                        count=count, map_fd=fd, elem_flags=elem_flags, flags=flags)
    _, err = _raw_bpf(cmd, attr, None)
    del key_keep, value_keep, in_keep, out_keep
    if err and err not in allowed:
        failure = _error(cmd, err)
        # how many the kernel processed before it failed; it writes count back only once it
        # reached its loop, so an untouched count means a refusal before any element
        failure.done = attr.count if attr.count != count else 0
        raise failure
    return attr.count, err


def enable_stats(stats_type: int = 0) -> int:
    """BPF_ENABLE_STATS: a new fd that keeps run-time statistics (``stats_type``
    BPF_STATS_RUN_TIME, 0) on for every program until it is closed."""
    return bpf(Cmd.ENABLE_STATS, EnableStatsAttr(type=stats_type))


def obj_pin(fd: int, path: str) -> None:
    """Pins the map, program, link or BTF *fd* at *path* on a bpffs mount."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    bpf(Cmd.OBJ_PIN, ObjPinAttr(pathname=ctypes.addressof(name), bpf_fd=fd))


def obj_get(path: str, flags: int = 0) -> int:
    """Opens the object pinned at *path*; returns a new fd.  *flags* may be
    ``BPF_F_RDONLY`` or ``BPF_F_WRONLY``."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(Cmd.OBJ_GET, ObjPinAttr(pathname=ctypes.addressof(name), file_flags=flags))


def get_next_id(cmd: Cmd, start_id: int = 0) -> int | None:
    """The next id after *start_id* for *cmd* (``Cmd.PROG_GET_NEXT_ID``,
    ``MAP_GET_NEXT_ID``, ``BTF_GET_NEXT_ID``, ``LINK_GET_NEXT_ID``), or None
    after the last one."""
    attr = GetIdAttr(start_id=start_id)
    _, err = _raw_bpf(cmd, attr, None)
    if err == _errno.ENOENT:
        return None
    if err:
        raise _error(cmd, err)
    return attr.next_id


def get_fd_by_id(cmd: Cmd, object_id: int, open_flags: int = 0) -> int:
    """A new fd for the object *object_id* (*cmd* is ``Cmd.PROG_GET_FD_BY_ID``,
    ``MAP_GET_FD_BY_ID``, ``BTF_GET_FD_BY_ID`` or ``LINK_GET_FD_BY_ID``)."""
    return bpf(cmd, GetIdAttr(start_id=object_id, open_flags=open_flags))


__all__ = [
    "bpf", "command_name", "syscall_number", "libc",
    "obj_get_info_by_fd", "map_lookup_elem", "map_lookup_and_delete_elem",
    "map_update_elem", "map_delete_elem", "map_get_next_key", "map_freeze",
    "obj_pin", "obj_get", "get_next_id", "get_fd_by_id", "map_batch", "enable_stats",
]
