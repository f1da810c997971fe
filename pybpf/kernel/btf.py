"""The kernel's BTF: vmlinux, module BTF (split on top of vmlinux) and BTF objects by id.

Parsed BTF is memoized per process by the blob's content hash, and the record
index of a blob is cached on disk (``$XDG_CACHE_HOME/pybpf/btf``) under the same
hash, so a second process opening the same vmlinux skips the index pass.
"""

from __future__ import annotations

import ctypes
import os

from .. import _cache
from ..errors import BTFError, Error
from ..spec.btf import BTF, Kind
from . import syscall as sc
from .attrs import BtfInfo
from .constants import Cmd

VMLINUX = "/sys/kernel/btf/vmlinux"

_memo: dict[tuple, BTF] = {}


def forget() -> None:
    """Drop the in-process memo (the next open parses again, from the disk index cache)."""
    _memo.clear()
    _by_path.clear()


_boot_id: list = []


def boot_id() -> str | None:
    """This boot's random id (/proc/sys/kernel/random/boot_id), None if unreadable; read once
    per process (it cannot change while the process runs)."""
    if not _boot_id:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id.append(f.read().strip())
        except OSError:
            _boot_id.append(None)
    return _boot_id[0]


def parse_cached(raw: bytes, *, source: str, base: BTF | None = None, identity: str | None = None) -> BTF:
    """A BTF for ``raw``: the same object again within this process, and the record
    index from the disk cache across processes (both keyed by the content's hash, or by
    ``identity``, a name that changes whenever the content can: hashing vmlinux BTF
    costs ~10 ms).  A bytearray ``raw`` is kept by the BTF, not copied."""
    digest = identity or _cache.digest(raw)
    key = (digest, id(base) if base is not None else None)
    btf = _memo.get(key)
    if btf is not None:
        return btf
    import array       # here: importing it (it registers with collections.abc) costs every load ~0.2 ms
    name = f"{digest}.idx"
    cached = _cache.read("btf", name)
    offsets = None
    if cached is not None and len(cached) % 4 == 0:
        offsets = array.array("I")
        offsets.frombytes(cached)
    btf = BTF(raw, source=source, base=base, index=offsets, copy=False)
    if offsets is None:
        _cache.write("btf", name, array.array("I", btf._offsets).tobytes())
    _memo[key] = btf
    return btf


_by_path: dict[str, tuple] = {}


def _file_key(st: os.stat_result) -> tuple:
    """What changes when a file's content can have: its size, times and inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _memo_hit(memo: dict, path: str, key: tuple):
    hit = memo.get(path)
    return hit[1] if hit is not None and hit[0] == key else None


def vmlinux_btf(path: str = VMLINUX) -> BTF:
    """The running kernel's BTF (or another vmlinux BTF file).

    Within a process the parsed BTF is reused while the file's size and times are
    unchanged (no re-read, no re-hash); otherwise it is looked up by content hash."""
    try:
        key = _file_key(os.stat(path))
        hit = _memo_hit(_by_path, path, key)
        if hit is not None:
            return hit
    except OSError:
        key = None
    btf = _read_vmlinux(path)
    if key is not None:
        _by_path[path] = (key, btf)
    return btf


#: path -> (file key, read-only view): vmlinux BTF mapped once per process and never unmapped
#: (views of it may live anywhere; the pages are the kernel's own, no memory of this process)
_mapped: dict[str, tuple] = {}


def _map_readonly(path: str) -> memoryview | None:
    """The file at ``path`` mapped read-only, or None where its file system cannot map it.

    /sys/kernel/btf/vmlinux can be mapped since Linux 6.16 (kernel/bpf/sysfs_btf.c
    btf_sysfs_vmlinux_mmap: a private, read-only, non-executable mapping of the kernel's own
    BTF pages), which saves reading 5+ MB into fresh memory: ~3.5 ms of every process that
    needs vmlinux BTF (a new object's CO-RE relocations).  libc's mmap through ctypes, not
    the mmap module: an mmap.mmap holds a duplicate of the file's fd for its lifetime."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        key = _file_key(st)
        hit = _memo_hit(_mapped, path, key)
        if hit is not None:
            return hit
        if st.st_size <= 0:
            return None
        addr = sc.libc_mmap(None, st.st_size, 0x1, 0x02, fd, 0)       # PROT_READ, MAP_PRIVATE
        if addr is None or addr == sc.MAP_FAILED:
            return None                     # MAP_FAILED: a kernel before 6.16, another file system
    finally:
        os.close(fd)
    view = memoryview((ctypes.c_char * st.st_size).from_address(addr)).cast("B").toreadonly()
    _mapped[path] = (key, view)
    return view


def _read_vmlinux(path: str) -> BTF:
    raw = _map_readonly(path) if path == VMLINUX else None
    if raw is None:
        raw = _read_file(path)
    identity = None
    if path == VMLINUX:
        # the running kernel's BTF cannot change within a boot
        boot = boot_id()
        identity = f"vmlinux-{boot}-{len(raw)}" if boot else None
    return parse_cached(raw, source=path, identity=identity)


def _read_file(path: str) -> bytearray:
    try:
        with open(path, "rb", buffering=0) as f:
            # read straight into the bytearray the BTF keeps (no copy of 5+ MB)
            raw = bytearray(os.fstat(f.fileno()).st_size)
            n = 0
            with memoryview(raw) as view:
                while n < len(raw):
                    got = f.readinto(view[n:])
                    if not got:
                        break
                    n += got
            del raw[n:]
            raw += f.read()     # a file that grew meanwhile
    except FileNotFoundError:
        raise Error(f"{path} not found: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF); "
                    f"give a BTF file for it instead") from None
    except OSError as e:
        raise Error(f"cannot read {path}: {e.strerror}") from None
    return raw


def running_btf(facts=None) -> BTF | None:
    """The BTF of the kernel programs are loaded into (None when it has none): the running
    kernel's even when ``facts`` (a :class:`pybpf.loader.facts.KernelFacts`) carries another
    CO-RE target; injected facts (tests) stand for the kernel."""
    if facts is not None and (not facts.running_kernel or not facts._btf_given):
        return facts.btf
    try:
        return vmlinux_btf()
    except Error:
        return None


def enum_names(btf: BTF | None, enum: str) -> set[str] | None:
    """The member names of C enum ``enum`` in ``btf`` (None when it has no such enum): what
    this kernel knows, e.g. ``enum_names(running_btf(), "bpf_cmd")``."""
    if btf is None:
        return None
    for t in btf.by_name(enum):
        if t.kind in (Kind.ENUM, Kind.ENUM64):
            return {v.name for v in t.values}
    return None


def module_btf(name: str, base: BTF | None = None) -> BTF:
    """A kernel module's split BTF from /sys/kernel/btf/<name>, on top of vmlinux."""
    path = os.path.join(os.path.dirname(VMLINUX), name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise Error(f"no BTF for kernel module {name!r} ({path} does not exist)") from None
    return parse_cached(raw, source=path, base=base or vmlinux_btf())


def btf_by_id(btf_id: int, base: BTF | None = None) -> BTF:
    """The BTF object the kernel knows as ``btf_id`` (e.g. a loaded program's or map's BTF)."""
    fd = sc.get_fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id)
    try:
        return btf_from_fd(fd, base=base)
    finally:
        os.close(fd)


def btf_from_fd(fd: int, base: BTF | None = None) -> BTF:
    """The BTF behind a BTF fd (two BPF_OBJ_GET_INFO_BY_FD calls: size, then data)."""
    info = sc.obj_get_info_by_fd(fd, BtfInfo())
    size = info.btf_size
    buf = ctypes.create_string_buffer(size)
    name = ctypes.create_string_buffer(64)
    info = BtfInfo(btf=ctypes.addressof(buf), btf_size=size, name=ctypes.addressof(name), name_len=64)
    sc.obj_get_info_by_fd(fd, info)
    label = name.value.decode(errors="replace") or f"id {info.id}"
    if info.kernel_btf and label != "vmlinux" and base is None:
        base = vmlinux_btf()
    try:
        return parse_cached(buf.raw[:info.btf_size], source=f"kernel BTF {label}", base=base)
    except BTFError:
        raise


def module_btf_fd(module: str) -> int:
    """A new fd for the running kernel's BTF object of ``module`` (BPF_BTF_GET_NEXT_ID over
    every BTF object, matching its name): for ``attach_btf_obj_fd`` and kfunc ``fd_array``
    entries.  The caller closes it."""
    btf_id = 0
    while True:
        btf_id = sc.get_next_id(Cmd.BTF_GET_NEXT_ID, btf_id)
        if btf_id is None:
            raise Error(f"no kernel BTF object for module {module!r} (is the module loaded?)")
        try:
            fd = sc.get_fd_by_id(Cmd.BTF_GET_FD_BY_ID, btf_id)
        except Error:
            continue            # gone meanwhile
        name = ctypes.create_string_buffer(64)
        try:
            info = sc.obj_get_info_by_fd(fd, BtfInfo(name=ctypes.addressof(name), name_len=64))
        except BaseException:
            os.close(fd)
            raise
        if info.kernel_btf and name.value.decode(errors="replace") == module:
            return fd
        os.close(fd)
