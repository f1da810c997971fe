"""pybpf's on-disk caches, under ``$XDG_CACHE_HOME/pybpf`` (default ``~/.cache/pybpf``).

Each cache is a folder of files named by a key that covers everything the
content depends on (content hashes, the boot, pybpf's own code), so an entry is
either right or never looked up; nothing is ever invalidated in place.

- ``btf/``: the record index of a BTF blob (kernel/btf.py);
- ``core/``: CO-RE candidate names and resolved relocations for the running
  kernel, per boot (loader/core.py), and the vmlinux types that attach targets
  name (loader/attach_btf.py);
- ``spec/``: parsed objects, per object content (spec/object.py).

Set ``PYBPF_CACHE=0`` to neither read nor write any of them.  A cache that
cannot be written (a read-only home) is not an error: the work is done every
time instead.

What the cache trusts, and why.  pybpf often runs as root, entries hold pickles
(which run code when loaded) and CO-RE offsets (which the verifier cannot check),
and ``$XDG_CACHE_HOME`` or ``$HOME`` may point into another user's files (``sudo
-E``, ``su`` without ``-``).  So:

- the path is walked from ``/`` one folder at a time with directory fds
  (``O_NOFOLLOW | O_DIRECTORY``, no symlink anywhere): every folder on the way must
  belong to root or to the current user and be writable by nobody else (a
  root-owned sticky folder such as ``/tmp`` excepted), and ``pybpf/`` and the cache
  folders must belong to the current user; otherwise the cache is not used;
- entries are opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block), must be
  regular files of the current user writable by nobody else, and are bounded in size;
- every entry carries its own name (the hash of its key) and a keyed BLAKE2b MAC of
  its kind, name and payload under a per-user secret (``pybpf/secret``, mode 0600,
  made on first use), checked before anything is unpickled: a renamed, swapped,
  truncated, bit-flipped or planted entry is never used;
- trimming removes only names pybpf writes, in the verified folder;
- pickles are read by :class:`SpecUnpickler`, which names only pybpf's own data
  classes: even an entry that got past the MAC cannot call any other code.  A format
  that cannot name code at all was measured 14x (marshal) to 24x (json) slower to
  read than this, 1.05x pickle (tools/bench/bench_cache_format.py).
"""

from __future__ import annotations

import _thread
import os
import stat
from _operator import _compare_digest   # hmac.compare_digest, without hmac's hashlib/OpenSSL import

try:  # blake2b without hashlib: hashlib loads OpenSSL first (~3.5 ms of every process start)
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import blake2b

try:  # the C pickler alone (the spec and core caches use it): pickle.py also imports re,
    import _pickle as pickle   # ~3 ms of every process start
except ImportError:  # pragma: no cover - other Pythons
    import pickle

__all__ = ["LIMITS", "enabled", "folder", "digest", "code_stamp", "read", "write", "pickle", "SpecUnpickler"]



class SpecUnpickler(pickle.Unpickler):
    """The C unpickler, allowed to name only the classes pybpf's entries hold.

    A MAC'd entry was written by this user's pybpf, so this is the second line: even a
    pickle that got past the MAC can only rebuild pybpf's own data classes (whose
    construction runs none of the entry's code), never call ``os.system`` or any other
    global.  ``find_class`` runs once per class per entry, so reading costs what
    ``pickle.loads`` does (tools/bench/bench_cache_format.py)."""

    allowed = frozenset({
        ("builtins", "bytearray"),            # how protocols before 5 write a bytearray
        ("pybpf.spec.btf", "BTF"),
        ("pybpf.spec.btf_ext", "BTFExt"), ("pybpf.spec.btf_ext", "CoreRelo"),
        ("pybpf.spec.btf_ext", "FuncInfo"), ("pybpf.spec.btf_ext", "LineInfo"),
        ("pybpf.spec.object", "ObjectSpec"), ("pybpf.spec.object", "ProgramSpec"),
        ("pybpf.spec.object", "MapSpec"), ("pybpf.spec.object", "VariableSpec"),
        ("pybpf.spec.object", "ExternSpec"), ("pybpf.spec.object", "FunctionSpec"),
        ("pybpf.spec.object", "Relocation"), ("pybpf.spec.object", "Symbol"),
        ("pybpf.spec.object", "ZeroImage"),
        ("pybpf.spec.sections", "SectionDef"),
    })

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"a cache entry names {module}.{name}, which no pybpf entry holds")
        return super().find_class(module, name)

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


#: entries larger than this are not read (the vmlinux index is ~0.5 MB, parsed objects far less)
MAX_ENTRY = 64 << 20
_MAGIC = b"pybpfC1\0"
_MAC_SIZE = 32
_SECRET = "secret"
_SUFFIXES = (".pickle", ".idx", ".json", ".names", ".tmp")
_secrets: dict = {}


def _safe_folder(st, own: bool) -> bool:
    """May this folder hold (or lead to) our cache?  ``own``: it must be the current
    user's; else root's will do too.  Nobody else may write into it (a root-owned sticky
    folder, like /tmp, lets others add names but not replace ours)."""
    if not stat.S_ISDIR(st.st_mode):
        return False
    uid = os.geteuid()
    if st.st_uid != uid and (own or st.st_uid != 0):
        return False
    if st.st_mode & 0o022:
        return not own and st.st_uid == 0 and bool(st.st_mode & stat.S_ISVTX)
    return True


def _open_folder(kind: str | None, create: bool) -> int | None:
    """A directory fd of ``<base>/pybpf[/kind]``, reached from ``/`` without following a
    symlink and checked folder by folder (see the module's docstring); None if the cache
    cannot be trusted or (``create`` False) does not exist yet."""
    path = os.path.join(os.path.dirname(folder("x")), kind) if kind else os.path.dirname(folder("x"))
    path = os.path.abspath(path)
    parts = [p for p in path.split(os.sep) if p]
    ours = len(parts) - (2 if kind else 1)      # parts from here on are pybpf's own folders
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open("/", flags)
    except OSError:
        return None
    try:
        if not _safe_folder(os.fstat(fd), False):
            return None
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if not _safe_folder(os.fstat(fd), i >= ours):
                return None
        out, fd = fd, -1
        return out
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _read_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """A regular file of ours in ``dir_fd`` that nobody else can write, at most ``limit``
    bytes; None otherwise.  ``O_NONBLOCK``: opening a FIFO planted under the name does not
    wait for a writer (and S_ISREG then refuses it)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
                or st.st_size > limit):
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return None
        try:
            os.utime(fd)    # used now: the last to be trimmed
        except OSError:
            pass
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_file(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> bool:
    """Store ``name`` in ``dir_fd`` atomically (a reader sees the old file or the whole new
    one); False if that failed."""
    tmp = f".{name}.{os.getpid()}.{_thread.get_ident()}.tmp"     # one per writer
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        return False


def _secret(create: bool) -> bytes | None:
    """The current user's MAC key (32 random bytes in ``pybpf/secret``), made on first use."""
    base = os.path.dirname(folder("x"))
    key = (base, os.geteuid())
    secret = _secrets.get(key)
    if secret is not None:
        return secret
    fd = _open_folder(None, create)
    if fd is None:
        return None
    try:
        secret = _read_file(fd, _SECRET, 64)
        if secret is None and create:
            fresh = os.urandom(32)
            tmp = f".{_SECRET}.{os.getpid()}.{_thread.get_ident()}.tmp"
            try:
                wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=fd)
                try:
                    os.write(wfd, fresh)
                finally:
                    os.close(wfd)
                try:
                    os.link(tmp, _SECRET, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass    # another process made it first: use theirs
                finally:
                    os.unlink(tmp, dir_fd=fd)
            except OSError:
                return None
            secret = _read_file(fd, _SECRET, 64)
    finally:
        os.close(fd)
    if secret is None or len(secret) != 32:
        return None
    _secrets[key] = secret
    return secret


def _mac(secret: bytes, kind: str, name: str, payload) -> bytes:
    h = blake2b(key=secret, digest_size=_MAC_SIZE, person=b"pybpf-cache")
    h.update(f"{kind}\0{name}\0".encode())
    h.update(payload)
    return h.digest()


def _valid_name(name: str) -> bool:
    # ASCII letters, digits and "._-" only (str methods: a loop over the characters cost ~1 ms
    # per write, in _trim's pass over a folder)
    return (0 < len(name) <= 200 and name.endswith(_SUFFIXES) and not name.startswith(".")
            and name.isascii() and name.replace(".", "a").replace("_", "a").replace("-", "a").isalnum())


def _fds_owned(fn):
    """Run ``fn`` as one deferred-signals section (pybpf.resource): the folder walk swaps
    directory fds one for the next, and a KeyboardInterrupt between a close and the swap
    would close an fd twice (maybe someone else's by then) or leak one.  Cache reads and
    writes are bounded (MAX_ENTRY), so Ctrl-C waits at most that long."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        from .resource import deferred_signals
        with deferred_signals():
            return fn(*args, **kwargs)
    return run


@_fds_owned
def read(kind: str, name: str) -> bytes | None:
    """The payload of entry ``name``, or None if absent, disabled, or not verified (see the
    module's docstring: folders, file, its own name and its MAC are all checked)."""
    if not enabled() or not _valid_name(name):
        return None
    secret = _secret(False)
    if secret is None:
        return None
    fd = _open_folder(kind, False)
    if fd is None:
        return None
    try:
        raw = _read_file(fd, name, MAX_ENTRY)
    finally:
        os.close(fd)
    if raw is None:
        return None
    # entry: magic, name length (u16), name, MAC, payload
    head = len(_MAGIC) + 2
    if len(raw) < head or raw[:len(_MAGIC)] != _MAGIC:
        return None
    n = int.from_bytes(raw[len(_MAGIC):head], "little")
    if raw[head:head + n] != name.encode():      # renamed: another key's entry
        return None
    mac = raw[head + n:head + n + _MAC_SIZE]
    with memoryview(raw) as view:
        if len(mac) != _MAC_SIZE or not _compare_digest(mac, _mac(secret, kind, name, view[head + n + _MAC_SIZE:])):
            return None
    return raw[head + n + _MAC_SIZE:]


@_fds_owned
def write(kind: str, name: str, data: bytes) -> None:
    """Store an entry atomically (readers see the old entry or the whole new one), with its
    name and MAC; nothing if the cache is disabled or its folders are not trustworthy."""
    if not enabled() or not _valid_name(name) or name.endswith(".tmp"):
        return
    secret = _secret(True)
    if secret is None:
        return
    fd = _open_folder(kind, True)
    if fd is None:
        return
    try:
        encoded = name.encode()
        entry = b"".join((_MAGIC, len(encoded).to_bytes(2, "little"), encoded,
                          _mac(secret, kind, name, data), data))
        if _write_file(fd, name, entry):
            _trim(fd, LIMITS.get(kind, 256))
    finally:
        os.close(fd)


def _trim(dir_fd: int, keep: int) -> None:
    """Remove the least recently used entries of a cache folder beyond ``keep``: only
    regular files with names pybpf writes, in the folder already verified.  A folder over
    its bound loses its oldest eighth at once, so the pass that stats every entry runs once
    per ``keep // 8`` writes, not on every write of a full folder (~1.5 ms at 256)."""
    if len(os.listdir(dir_fd)) <= keep:
        return          # an upper bound on the entries: no name check nor stat on each write
    with os.scandir(dir_fd) as it:
        found = [e for e in it if _valid_name(e.name) and e.is_file(follow_symlinks=False)]
    if len(found) <= keep:
        return
    entries = []
    for e in found:
        try:
            entries.append((e.stat(follow_symlinks=False).st_mtime_ns, e.name))
        except OSError:
            pass        # removed meanwhile
    entries.sort()
    for _, name in entries[:len(entries) - (keep - keep // 8)]:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
