"""What both ring buffer kinds share: the record layout and the mmap of a map fd.

The map fd exposes a consumer page (``consumer_pos``), a producer page
(``producer_pos``) and the data area, mapped twice back to back so that a
record that wraps around the end is contiguous (kernel/bpf/ringbuf.c).  Each
record starts with an 8-byte header ``u32 len; u32 pg_off``; bit 31 of ``len``
is BUSY, bit 30 DISCARD; a record takes ``round_up(len + 8, 8)`` bytes.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import os
import select
import sys
import threading
import weakref

from ..errors import ClosedError, Error, InUseError, PermissionError, SyscallError
from ..resource import Resource
from ..kernel.constants import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, MapType

_BUSY = BPF_RINGBUF_BUSY_BIT
_DISCARD = BPF_RINGBUF_DISCARD_BIT
_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)
_HDR = BPF_RINGBUF_HDR_SZ
# round_up(len + 8, 8) == (len + _ROUND) & _ALIGN
_ROUND = _HDR + 7
_ALIGN = ~7
# A header as one native u64: u32 len first, u32 pg_off = 0 after it.
_HDR_SHIFT = 0 if sys.byteorder == "little" else 32
# Runs of equal records are read (reader) and written (user) with one
# struct.Struct of up to this many records.
_UNPACK_RUN = 256


class _PyBuffer(ctypes.Structure):
    """``Py_buffer`` (Include/pybuffer.h): only ``buf`` is used."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.POINTER(_PyBuffer)]
_PyBuffer_Release.restype = None
_PyBUF_SIMPLE = 0


class _Mapping:
    """One shared mmap of a map fd, with its raw address for the C helper.

    The address comes from a buffer export held on the mmap object for as long
    as the mapping is open: ``mmap.close()`` refuses to unmap while an export
    exists, so the address can never outlive the memory.  (ctypes'
    ``from_buffer`` would do the same but refuses read-only mappings.)

    ``into``: a list of its owner's that the mapping joins before anything is
    mapped, so that the owner's close() finds it whatever happens next.
    """

    __slots__ = ("mmap", "mem", "addr", "_pybuf", "__weakref__")

    def __init__(self, fd: int, length: int, offset: int, writable: bool, what: str, map_name: str,
                 into: list | None = None):
        self.mmap = self.mem = self._pybuf = None
        self.addr = 0
        if into is not None:
            into.append(self)
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        try:
            self.mmap = mmap.mmap(fd, length, access=access, offset=offset)
        except OSError as exc:
            mode = "read-write" if writable else "read-only"
            message = f"mapping the {what} of map '{map_name}' {mode} ({length} bytes at offset {offset})"
            cls = PermissionError if exc.errno in (_errno.EPERM, _errno.EACCES) else SyscallError
            raise cls("mmap", exc.errno or _errno.EINVAL, message) from None
        # kept before it is filled: close() releases it whenever the export was
        # taken (releasing a Py_buffer never filled, obj NULL, does nothing)
        self._pybuf = pybuf = _PyBuffer()
        _PyObject_GetBuffer(self.mmap, ctypes.byref(pybuf), _PyBUF_SIMPLE)
        self.addr: int = pybuf.buf
        self.mem = memoryview(self.mmap)

    def close(self) -> None:
        """Unmaps (idempotent; a call cut short is finished by the next one).
        Views derived from ``mem`` must be released first."""
        pybuf = self._pybuf
        if pybuf is not None:
            self.addr = 0
            # a second release of the same Py_buffer is a no-op (it clears obj)
            _PyBuffer_Release(ctypes.byref(pybuf))
            self._pybuf = None
        if self.mem is not None:
            _release_quietly(self.mem)
        if self.mmap is not None:
            try:
                self.mmap.close()  # idempotent; also closes the fd the mmap module dup()ed
            except BufferError:
                # Someone still holds a slice of a record: the memory stays mapped
                # (never freed under them) until that slice is garbage; the mmap
                # object unmaps and closes its fd then.
                pass

    @property
    def closed(self) -> bool:
        return self.mmap is None or self.mmap.closed

    def __del__(self) -> None:
        if self._pybuf is None and (self.mmap is None or self.mmap.closed):
            return  # closed already
        try:
            self.close()
        except Exception:  # interpreter shutdown: ctypes may be half torn down
            pass


def _inside(owners, codes, skip_current: bool = False) -> bool:
    """True when a thread runs one of ``codes`` (functions' ``__code__``) on one of
    ``owners`` (its ``self``).

    How close() tells a lock held by a running method from a lock lost to an
    interrupt: KeyboardInterrupt can land right after a C-level acquire returns
    and before the ``try`` that would release it, and then no thread holds it
    any more.  Only close() asks, and only when the lock is not free.
    """
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if skip_current and ident == me:
            continue
        while frame is not None:
            if frame.f_code in codes:
                this = frame.f_locals.get("self")
                if any(this is owner for owner in owners):
                    return True
            frame = frame.f_back
    return False


def _run_all(steps) -> None:
    """Calls every step, even when one raises (KeyboardInterrupt included), then
    re-raises the first exception.  Each step must be idempotent: a close()
    cut short is finished by the next call."""
    first = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # noqa: B036 - re-raised below
            if first is None:
                first = exc
    if first is not None:
        try:
            raise first
        finally:
            first = None


class _Consumer(Resource):
    """What RingBuffer and PerfBuffer share: one consumer at a time (``_lock``, held while a
    consume reads the rings), the waiter close() wakes, the map claims, and a teardown that
    runs now, or when the consume that holds the lock returns (it checks ``_closed`` after
    releasing it, so one of the two always does).

    A subclass names itself in ``_KIND`` (for messages), lists in :meth:`_lock_holders` the
    objects whose running methods hold the lock and in :meth:`_lock_codes` those methods'
    code, and returns from :meth:`_release_steps` the idempotent steps that release its rings
    and waiter; the claims go last (a new consumer is accepted once nothing reads the rings).
    """

    _KIND = "buffer"

    def _lock_holders(self) -> tuple:
        return (self,)

    def _lock_codes(self) -> frozenset:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _release_steps(self) -> list:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _try_teardown(self) -> None:
        if self._lock.acquire(blocking=False):
            try:
                self._teardown()
            finally:
                self._lock.release()
        elif not _inside(self._lock_holders(), self._lock_codes()):
            # held by no running method: lost to an interrupt between its acquire and the try
            # that releases it (see _inside); nothing can take it meanwhile (consumes refuse
            # once closed)
            try:
                self._teardown()
            finally:
                try:
                    self._lock.release()
                except RuntimeError:
                    pass  # released meanwhile

    def _teardown(self) -> None:
        # (no consume running) every step idempotent: see close()
        _run_all(self._release_steps() + [(lambda key=key: _unclaim(key, self)) for key in self._claims])
        self._rings = []
        self._by_fd = {}
        self._claims = []

    def __del__(self) -> None:
        if getattr(self, "_rings", None) or getattr(self, "_claims", None):
            self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"{self._KIND} '{self.name}' is closed")


class _Waiter:
    """The epoll set the blocking calls of a buffer wait on, which close() wakes up.

    ``epoll``: the class to make the set with (tests put a stand-in there).
    ``close()`` from another thread must not close the epoll fd under a thread
    in ``epoll_wait``: the kernel keeps the file alive for the waiter, which then
    sleeps on (never woken), and the fd number may be reused meanwhile.  So the
    set also holds the reading end of a socket pair; close() writes a byte to
    the other end, which wakes every waiter (level-triggered), and the fds are
    closed by close() when nobody waits, else by the last waiter to leave.

    A socket pair rather than an eventfd: its ends are C objects that own their
    fds from the instant they are made (an interrupt between a syscall and the
    store of its int result would leak an eventfd).
    """

    __slots__ = ("epoll", "_bell", "_bell_fd", "_lock", "_waiting", "closing")

    def __init__(self, epoll=select.epoll):
        import _socket  # the C socket objects (socket.socketpair detaches them into ints)
        self._lock = threading.Lock()
        self._waiting = 0
        self.closing = False
        self.epoll = self._bell = None
        self._bell_fd = -1
        self.epoll = epoll()
        self._bell = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self._bell[1].setblocking(False)
        self._bell_fd = self._bell[0].fileno()
        self.epoll.register(self._bell_fd, select.EPOLLIN)

    def register(self, fd: int, events: int) -> None:
        self.epoll.register(fd, events)

    def fileno(self) -> int:
        return self.epoll.fileno()

    def wait(self, timeout: float, maxevents: int, closed_message: str) -> list[int]:
        """``epoll.poll``: the fds ready (the bell left out).  Raises ClosedError
        (``closed_message``) when close() was called before or during the wait."""
        entered = False
        try:
            with self._lock:
                if self.closing:
                    raise ClosedError(closed_message)
                self._waiting += 1
                entered = True
            try:
                ready = self.epoll.poll(timeout, maxevents + 1)
            except (ValueError, OSError):
                if self.closing:
                    raise ClosedError(closed_message) from None
                raise
        finally:
            if entered:
                self._leave()
        if self.closing:
            raise ClosedError(closed_message)
        bell = self._bell_fd
        return [fd for fd, _ in ready if fd != bell]

    def _leave(self) -> None:
        with self._lock:
            self._waiting -= 1
            last = self.closing and not self._waiting
        if last:
            self._release()

    def close(self) -> None:
        """Wakes every waiter; closes the fds now if none waits (idempotent)."""
        with self._lock:
            self.closing = True
            if self._waiting:
                # under the lock: the last waiter cannot close the socket meanwhile
                try:
                    self._bell[1].send(b"\0")
                except OSError:
                    pass  # full: a byte is there already
                return
        self._release()

    def _release(self) -> None:
        if self.epoll is not None:
            self.epoll.close()  # idempotent
        if self._bell is not None:
            for end in self._bell:
                end.close()


# --- one consumer and one producer per ring, in this process ---------------
#
# The ring buffer protocol has one consumer_pos and one producer_pos, each
# written by exactly one party: two RingBuffer objects on one map both read
# from consumer_pos and hand out the same records; two UserRingBuffer objects
# each keep their own producer_pos and reserve the same bytes.  The kernel
# cannot tell them apart (same mm), so pybpf refuses the second, keyed by the
# map's kernel id (the same map through another fd is still the same ring).

_claims_lock = threading.Lock()
_claims: dict[tuple[str, int], weakref.ref] = {}


def _ring_identity(fd: int) -> tuple | None:
    """What makes two fds the same ring: the map's kernel id (every BPF map fd
    has the same anonymous inode); for an fd that is not a BPF map (a test's
    memfd), its inode; None when fd is not open (mapping it fails next)."""
    from ..kernel import syscall as sc
    from ..kernel.attrs import MapInfo
    try:
        return ("id", sc.obj_get_info_by_fd(fd, MapInfo()).id)
    except SyscallError:
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        return ("inode", st.st_dev, st.st_ino)


def _claim(role: str, fd: int, name: str, owner, into: list, why: str, what_to_do: str) -> tuple | None:
    """Makes ``owner`` the ``role`` of the map (by kernel id) and appends the claim's
    key to ``into`` (``owner``'s list, for :func:`_unclaim`); returns the key,
    not appended when ``owner`` has the claim already.  Raises InUseError when
    another object of this process has it.  None when ``fd`` is not open."""
    identity = _ring_identity(fd)
    if identity is None:
        return None
    key = (role, identity)
    with _claims_lock:
        ref = _claims.get(key)
        other = ref() if ref is not None else None
        if other is owner:
            return key
        if other is not None:
            raise InUseError(f"map '{name}' ({identity[0]} {identity[-1]}) already has a {role} in this process: "
                             f"{_describe(other)}. {why}; {what_to_do}")
        into.append(key)  # first: cut short after it, the owner's _unclaim is a no-op
        _claims[key] = weakref.ref(owner)
    return key


def _unclaim(key: tuple[str, int], owner) -> None:
    """Ends ``owner``'s claim (idempotent; another owner's claim is left alone)."""
    with _claims_lock:
        ref = _claims.get(key)
        if ref is not None and ref() in (owner, None):
            del _claims[key]


def _describe(owner) -> str:
    try:
        return repr(owner)
    except Exception:  # half set up in another thread
        return f"a {type(owner).__name__}"


def _check_map(map, want: MapType) -> tuple[int, str, int]:
    """Validates ``map`` for a ring buffer of type ``want``; returns (fd, name, size)."""
    cls, other_type, other_cls = _ROLES[want]
    name = getattr(map, "name", "?")
    try:
        fd, map_type, size = map.fd, map.type, map.max_entries
    except AttributeError as exc:
        raise Error(f"{cls} needs a pybpf Map (with fd, type, max_entries, name), not {map!r}") from exc
    if map_type != want:
        try:
            type_name = MapType(map_type).name
        except ValueError:
            type_name = str(map_type)
        hint = f" (use {other_cls} for a {other_type.name} map)" if map_type == other_type else ""
        raise Error(f"{cls} needs a {want.name} map; map '{name}' is a {type_name} map{hint}")
    page = mmap.PAGESIZE
    # The kernel refuses anything else at map creation; this guards fakes and bugs.
    if size <= 0 or size & (size - 1) or size % page:
        raise Error(f"map '{name}': ring size {size} is not a power of two multiple of the page size ({page})")
    return fd, name, size


_ROLES = {
    MapType.RINGBUF: ("RingBuffer", MapType.USER_RINGBUF, "UserRingBuffer"),
    MapType.USER_RINGBUF: ("UserRingBuffer", MapType.RINGBUF, "RingBuffer"),
}


def _release_quietly(view: memoryview) -> None:
    try:
        view.release()
    except BufferError:
        pass  # still exported: the mapping stays alive until the export goes

