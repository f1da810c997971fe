"""bpffs and BPF fds by path or id: what kind of object an fd is, pinning (BPF_OBJ_PIN,
with libbpf's parent-directory rule), opening a pin (BPF_OBJ_GET) or an id
(BPF_*_GET_FD_BY_ID).  The kernel-interface part of pinning, used by the loader
(pin_root) and by the runtime objects' pin()/from_pinned()/from_id()."""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from ..errors import Error, SyscallError
from . import syscall as sc
from .constants import Cmd

# the anon inode names the kernel gives BPF fds (kernel/bpf/syscall.c bpf_map_new_fd,
# bpf_prog_new_fd, bpf_link_settle; kernel/bpf/btf.c btf_new_fd); bpf_link_new_fd
# (BPF_OBJ_GET, BPF_LINK_GET_FD_BY_ID) names a link "bpf-link", bpf_link_settle "bpf_link"
_FD_KINDS = {"anon_inode:bpf-map": "map", "anon_inode:bpf-prog": "program", "anon_inode:bpf_link": "link",
             "anon_inode:bpf-link": "link", "anon_inode:btf": "btf"}
_OPEN_WITH = {"map": "pybpf.Map.from_pinned", "program": "pybpf.Program.from_pinned",
              "link": "pybpf.Link.from_pinned", "btf": "a BTF reader"}


def fd_kind(fd: int) -> str | None:
    """``"map"``, ``"program"``, ``"link"`` or ``"btf"`` for a BPF fd (None for anything else)."""
    try:
        return _FD_KINDS.get(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


# -- bpffs -----------------------------------------------------------------------------------------

BPF_FS_MAGIC = 0xCAFE4A11
_statfs = sc.libc["statfs"]
_statfs.restype = ctypes.c_int
_statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)


def on_bpffs(path) -> bool:
    """True if ``path`` (which must exist) is on a BPF filesystem (statfs f_type BPF_FS_MAGIC,
    as libbpf's check_path)."""
    buf = ctypes.create_string_buffer(256)      # struct statfs is 120 bytes; f_type comes first
    if _statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def _bpffs_hint(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    if os.path.isdir(parent) and not on_bpffs(parent):
        return (f"{parent} is not on a BPF filesystem: pins live on a bpffs mount, such as /sys/fs/bpf "
                f"(mount -t bpf bpf /sys/fs/bpf)")
    return ""


def make_pin_dir(path: str) -> bool:
    """libbpf's make_parent_dir: create the directory of pin ``path`` (one level, mode 0700) if it
    is missing, and check that it is on bpffs.  Returns True if it was created here."""
    parent = os.path.dirname(os.path.abspath(path))
    created = False
    try:
        os.mkdir(parent, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as e:
        raise Error(f"cannot pin at {path}: cannot create {parent}: {e.strerror}") from None
    if not on_bpffs(parent):
        if created:
            os.rmdir(parent)
        raise Error(f"cannot pin at {path}: {parent} is not on a BPF filesystem; pins live on a bpffs mount "
                    f"such as /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")
    return created


def pin_fd(fd: int, path, what: str) -> str:
    """BPF_OBJ_PIN of ``fd`` at ``path`` (its directory made if missing, as libbpf does);
    returns the path.  ``what`` names the object in errors (``"map 'counts'"``)."""
    path = os.fspath(path)
    make_pin_dir(path)
    try:
        sc.obj_pin(fd, path)
    except SyscallError as e:
        hint = ""
        if e.errno == _errno.EEXIST:
            hint = " (something is pinned there already: unpin it (unlink the file) or choose another path)"
        elif e.errno == _errno.ENOENT:
            hint = " (its directory does not exist)"
        elif e.errno in (_errno.EPERM, _errno.EACCES):
            extra = _bpffs_hint(path)
            hint = f" ({extra})" if extra else ""
        raise type(e)(e.command, e.errno, f"{what}: cannot pin at {path}{hint}") from None
    return path


def unpin_path(path, what: str) -> None:
    """Remove the pin at ``path`` (unlink: the object goes once nothing else holds it)."""
    try:
        os.unlink(os.fspath(path))
    except FileNotFoundError:
        raise Error(f"{what}: nothing is pinned at {path}") from None
    except OSError as e:
        raise Error(f"{what}: cannot unpin {path}: {e.strerror}") from None


def open_pinned(path, kind: str, flags: int = 0) -> int:
    """A new fd for the object pinned at ``path`` (BPF_OBJ_GET), which must be a ``kind``
    (``"map"``, ``"program"``, ``"link"``); the caller owns the fd (call this inside a
    deferred-signals section)."""
    path = os.fspath(path)
    try:
        fd = sc.obj_get(path, flags)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            raise Error(f"nothing is pinned at {path}") from None
        hint = ""
        if e.errno in (_errno.EPERM, _errno.EACCES):
            hint = _bpffs_hint(path) or (f"{path} is not a pinned BPF object" if os.path.exists(path) and
                                         not on_bpffs(path) else "")
        raise type(e)(e.command, e.errno, f"cannot open the {kind} pinned at {path}" +
                      (f": {hint}" if hint else "")) from None
    found = fd_kind(fd)
    if found != kind:
        os.close(fd)
        raise Error(f"{path} is a pinned BPF {found or 'object'}, not a {kind}"
                    + (f": open it with {_OPEN_WITH[found]}()" if found in _OPEN_WITH else ""))
    return fd


_BY_ID = {"program": Cmd.PROG_GET_FD_BY_ID, "map": Cmd.MAP_GET_FD_BY_ID, "link": Cmd.LINK_GET_FD_BY_ID,
          "btf": Cmd.BTF_GET_FD_BY_ID}


def open_id(kind: str, object_id: int, flags: int = 0) -> int:
    """A new fd for the ``kind`` with id ``object_id`` (BPF_*_GET_FD_BY_ID; needs CAP_SYS_ADMIN).
    ``flags``: BPF_F_RDONLY / BPF_F_WRONLY for maps.  The caller owns the fd."""
    if not isinstance(object_id, int) or isinstance(object_id, bool) or not 0 < object_id < 1 << 32:
        raise Error(f"a BPF {kind} id is a positive 32-bit integer, not {object_id!r}")
    try:
        return sc.get_fd_by_id(_BY_ID[kind], object_id, flags)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            raise Error(f"there is no BPF {kind} with id {object_id} (it was released, or never existed)") from None
        raise
