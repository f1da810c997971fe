"""pybpf's on-disk caches, under ``$XDG_CACHE_HOME/pybpf`` (default ``~/.cache/pybpf``).

Each cache is a folder of files named by a key that covers everything the
content depends on (content hashes, the boot, pybpf's own code), so an entry is
either right or never looked up; nothing is ever invalidated in place.

- ``btf/``: the record index of a BTF blob (kernel/btf.py);
- ``core/``: CO-RE candidate names and resolved relocations for the running
  kernel, per boot (loader/core.py);
- ``spec/``: parsed objects, per object content (spec/object.py).

Set ``PYBPF_CACHE=0`` to neither read nor write any of them.  Entries are only
read when owned by the current user and not writable by anyone else (some are
pickles, and pybpf often runs as root).  A cache that cannot be written (a
read-only home) is not an error: the work is done every time instead.
"""

from __future__ import annotations

import _thread
import os
import stat

try:  # blake2b without hashlib: hashlib loads OpenSSL first (~3.5 ms of every process start)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b

try:  # the C pickler alone (the spec and core caches use it): pickle.py also imports re,
    import _pickle as pickle   # ~3 ms of every process start
except ImportError:  # pragma: no cover - other Pythons
    import pickle

__all__ = ["LIMITS", "enabled", "folder", "digest", "code_stamp", "read", "write", "pickle"]


#: the most entries each cache keeps: a write beyond it removes the least recently used
#: (every read of an entry marks it used); vmlinux BTF indexes are ~0.5 MB, one per boot
LIMITS = {"btf": 16, "core": 512, "spec": 256}


def enabled() -> bool:
    """False when ``PYBPF_CACHE`` is ``0``, ``off``, ``no`` or ``false``."""
    return os.environ.get("PYBPF_CACHE", "1").strip().lower() not in ("0", "off", "no", "false")


def folder(kind: str) -> str:
    """The folder of one cache (``btf``, ``core``, ``spec``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pybpf", kind)


def digest(data, size: int = 16) -> str:
    """A content hash (BLAKE2b, hex) for naming entries."""
    return blake2b(data, digest_size=size).hexdigest()


_stamps: dict = {}


def code_stamp(*packages: str) -> bytes:
    """A stamp of pybpf's own code in ``packages`` (sub-packages such as ``"spec"``): the
    size and modification time of each module, so an entry made by other code (an
    upgrade, an edit in a checkout) is never read."""
    stamp = _stamps.get(packages)
    if stamp is None:
        here = os.path.dirname(os.path.abspath(__file__))
        # this module and the modules whose classes entries hold besides the packages' own
        parts = [__file__] + [os.path.join(here, p) for p in ("_record.py", "kernel/constants.py")]
        for pkg in packages:
            where = os.path.join(here, pkg)
            parts += sorted(os.path.join(where, n) for n in os.listdir(where) if n.endswith(".py"))
        stats = []
        for p in parts:
            st = os.stat(p)
            stats.append(f"{os.path.basename(p)}:{st.st_size}:{st.st_mtime_ns}")
        stamp = _stamps[packages] = digest(" ".join(stats).encode(), 8).encode()
    return stamp


def read(kind: str, name: str) -> bytes | None:
    """The entry's bytes, or None if absent, disabled, or not trustworthy."""
    if not enabled():
        return None
    try:
        fd = os.open(os.path.join(folder(kind), name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        try:
            os.utime(fd)    # used now: the last to be trimmed
        except OSError:
            pass
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def write(kind: str, name: str, data: bytes) -> None:
    """Store an entry atomically (readers see the old entry or the whole new one)."""
    if not enabled():
        return
    where = folder(kind)
    path = os.path.join(where, name)
    tmp = f"{path}.{os.getpid()}.{_thread.get_ident()}.tmp"     # one per writer
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _trim(where, LIMITS.get(kind, 256))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _trim(where: str, keep: int) -> None:
    """Remove the least recently used entries of a cache folder beyond ``keep``."""
    entries = []
    with os.scandir(where) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                entries.append((e.stat(follow_symlinks=False).st_mtime_ns, e.path))
    if len(entries) <= keep:
        return
    entries.sort()
    for _, path in entries[:len(entries) - keep]:
        try:
            os.unlink(path)
        except OSError:
            pass
