"""BPF ring buffers: read a RINGBUF map, write a USER_RINGBUF map.

:class:`RingBuffer` consumes the records a BPF program writes into a
``BPF_MAP_TYPE_RINGBUF`` map; :class:`UserRingBuffer` produces samples that a
BPF program drains from a ``BPF_MAP_TYPE_USER_RINGBUF`` map with
``bpf_user_ringbuf_drain``.  Both map the map's pages into this process (no
copies, no syscall per record) and follow the kernel's protocol
(kernel/bpf/ringbuf.c):

* the map fd exposes a consumer page (``consumer_pos``), a producer page
  (``producer_pos``) and the data area, mapped twice back to back so that a
  record that wraps around the end is contiguous;
* each record starts with an 8-byte header ``u32 len; u32 pg_off``; bit 31 of
  ``len`` is BUSY (reserved, not committed), bit 30 is DISCARD; a record takes
  ``round_up(len + 8, 8)`` bytes;
* positions only grow; ``pos & (size - 1)`` indexes the data.

The acquire/release accesses that pair with the kernel's go through the tiny C
helper in :mod:`pybpf.atomics`; everything else is plain Python on memoryviews.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import select
import threading
import time
from typing import Callable

from . import atomics
from .errors import ClosedError, Error, PermissionError, RingBufferFullError, SyscallError, TimeoutError
from .kernel.constants import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, MapType

__all__ = ["RingBuffer", "UserRingBuffer", "Sample", "SampleSizeError"]

_BUSY = BPF_RINGBUF_BUSY_BIT
_DISCARD = BPF_RINGBUF_DISCARD_BIT
_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)
_HDR = BPF_RINGBUF_HDR_SZ
# round_up(len + 8, 8) == (len + _ROUND) & _ALIGN
_ROUND = _HDR + 7
_ALIGN = ~7
# A user sample must fit a struct bpf_dynptr (DYNPTR_MAX_SIZE): a larger one
# makes the kernel's drain fail with -E2BIG and wedges the ring.
_DYNPTR_MAX_SIZE = (1 << 24) - 1
# poll(): back-off when woken with nothing committed (BUSY head record), so that
# a loop around poll() does not spin on the level-triggered EPOLLIN.
_BUSY_BACKOFF = 0.001
# reserve_blocking(): back-off bounds when EPOLLOUT fires (any byte free) but
# the sample does not fit yet.
_FULL_BACKOFF_MIN = 0.0005
_FULL_BACKOFF_MAX = 0.01


class SampleSizeError(Error, ValueError):
    """A user ring buffer sample is larger than the ring (or the kernel) allows."""


# --- mappings ---------------------------------------------------------------

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
    """

    __slots__ = ("mmap", "mem", "addr", "_pybuf", "__weakref__")

    def __init__(self, fd: int, length: int, offset: int, writable: bool, what: str, map_name: str):
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        try:
            self.mmap = mmap.mmap(fd, length, access=access, offset=offset)
        except OSError as exc:
            mode = "read-write" if writable else "read-only"
            message = f"mapping the {what} of map '{map_name}' {mode} ({length} bytes at offset {offset})"
            cls = PermissionError if exc.errno in (_errno.EPERM, _errno.EACCES) else SyscallError
            raise cls("mmap", exc.errno or _errno.EINVAL, message) from None
        self._pybuf = _PyBuffer()
        _PyObject_GetBuffer(self.mmap, ctypes.byref(self._pybuf), _PyBUF_SIMPLE)
        self.addr: int = self._pybuf.buf
        self.mem = memoryview(self.mmap)

    def close(self) -> None:
        """Unmap (idempotent).  Views derived from ``mem`` must be released first."""
        if self._pybuf is None:
            return
        _PyBuffer_Release(ctypes.byref(self._pybuf))
        self._pybuf = None
        self.addr = 0
        self.mem.release()
        try:
            self.mmap.close()  # also closes the fd the mmap module dup()ed
        except BufferError:
            # Someone still holds a slice of a record: the memory stays mapped
            # (never freed under them) until that slice is garbage; the mmap
            # object unmaps and closes its fd then.
            pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: ctypes may be half torn down
            pass


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


# --- kernel -> user ---------------------------------------------------------

class RingBuffer:
    """Consumer of a ``BPF_MAP_TYPE_RINGBUF`` map.

    ``RingBuffer(map, callback)`` maps the ring; :meth:`consume` and
    :meth:`poll` call ``callback(record)`` once per committed record, in order,
    skipping discarded ones.  ``record`` is a read-only ``memoryview`` of the
    payload, straight into the ring (no copy).  It is valid only during the
    callback: pybpf releases it when the callback returns (later use raises
    ``ValueError``), and the kernel may overwrite that memory afterwards.  Copy
    what you keep (``bytes(record)``, ``struct.unpack_from``); do not keep
    slices of it either (they are not released and would read recycled data).

    With ``type`` (a BTF type spelling such as ``"struct event"``, or a ctypes
    type), or when the program declares the map's record type, the callback
    gets a typed copy instead: ``event(pid=1707, comm='bash')``, with fields as
    attributes and ``bytes(value)`` the raw record.  ``type=memoryview`` keeps
    raw records even when the program declares a type.

    If the callback raises, consumption stops, the record counts as consumed
    and the exception propagates.  Its return value is ignored.

    One consumer at a time: consume/poll while another consume/poll runs
    (from the callback or another thread) raises :class:`pybpf.Error`.
    :meth:`close` may be called from the callback or another thread: it takes
    effect when the running consume returns.  Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, map, callback: Callable[[memoryview], object], type=None):  # noqa: A002
        if not callable(callback):
            raise Error(f"RingBuffer callback must be callable, not {callback!r}")
        fd, self.name, size = _check_map(map, MapType.RINGBUF)
        if type is None:
            type = getattr(map, "record_type", None)  # declared in the program, if any
        if type is memoryview:
            type = None                               # raw records asked for explicitly
        if type is not None:
            from .spec.typed import record_decoder
            decode = record_decoder(getattr(map, "btf", None), type, f"ring buffer '{self.name}'")
            raw_callback = callback

            def callback(record, _decode=decode, _cb=raw_callback):
                return _cb(_decode(record))
        lib = atomics.library()  # fails clearly if the C helper is not built
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._fence = lib.pybpf_fence_acquire
        self._callback = callback
        self.size = size
        self._mask = size - 1
        # Batch at most a quarter ring between consumer_pos releases, so that a
        # slow callback does not hold back the whole ring from the producers.
        self._batch = max(size // 4, _HDR)
        self._lock = threading.Lock()  # held while consuming: the mappings stay alive
        self._closed = True  # until fully set up: close() then undoes what exists
        self._epoll = None
        self._views = ()
        self._maps = []
        page = mmap.PAGESIZE
        try:
            # consumer page: the only part user space may write
            cons = _Mapping(fd, page, 0, True, "consumer page", self.name)
            self._maps.append(cons)
            # producer page + data twice, read-only
            prod = _Mapping(fd, page + 2 * size, page, False, "producer page and data", self.name)
            self._maps.append(prod)
            self._cons_addr = cons.addr
            self._prod_addr = prod.addr
            data = prod.mem[page:]
            hdr = data.cast("I")  # native u32 loads: single-copy atomic, aligned
            self._views = (hdr, data)
            self._data, self._hdr = data, hdr
            self._epoll = select.epoll(1)
            self._epoll.register(fd, select.EPOLLIN)  # level-triggered (see consume)
            self._closed = False
        except BaseException:
            self._teardown()
            raise

    # -- life cycle --

    def close(self) -> None:
        """Unmaps the ring and closes the epoll fd.  Idempotent."""
        self._closed = True
        self._try_teardown()

    def _try_teardown(self) -> None:
        # If a consume is running, it tears down when it is done (it checks
        # _closed after releasing the lock, so one of the two always does).
        if self._lock.acquire(blocking=False):
            try:
                self._teardown()
            finally:
                self._lock.release()

    def _teardown(self) -> None:
        for view in self._views:
            view.release()
        self._views = ()
        self._data = self._hdr = None
        for m in self._maps:
            m.close()
        self._maps = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_maps", None):
            self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"<RingBuffer '{self.name}' {state}>"

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")

    # -- reading --

    def fileno(self) -> int:
        """An fd that is readable while the ring has data (for select/asyncio)."""
        if self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")
        return self._epoll.fileno()

    epoll_fd = fileno

    def consume(self) -> int:
        """Hands every committed record to the callback; returns how many.

        Never blocks.  Stops at the first record still being written (BUSY).
        """
        if not self._lock.acquire(blocking=False):
            self._check()
            raise Error(f"ring buffer '{self.name}': consume/poll called from its own callback "
                        "or from two threads at once")
        try:
            self._check()
            return self._consume()
        finally:
            self._lock.release()
            if self._closed:
                self._try_teardown()

    def _consume(self) -> int:
        load, store, fence = self._load_u64, self._store_u64, self._fence
        cons_addr, prod_addr = self._cons_addr, self._prod_addr
        hdr, data, mask, batch = self._hdr, self._data, self._mask, self._batch
        callback = self._callback
        n = 0
        cons = load(cons_addr)  # only we write it
        while not self._closed:
            prod = load(prod_addr)  # pairs with the kernel's smp_store_release
            # Pass 1: find the committed prefix with plain header loads...
            end = cons
            while end < prod:
                length = hdr[(end & mask) >> 2]
                if length & _BUSY:
                    break  # not committed yet: everything after it waits too
                end += ((length & _LEN_MASK) + _ROUND) & _ALIGN
                if end - cons >= batch:
                    break
            if end == cons:
                return n
            # ...then one acquire fence for the whole batch: the payload reads
            # below cannot see data older than the header's commit (the
            # kernel's xchg in bpf_ringbuf_commit).
            fence()
            # Pass 2: hand out the records.  Headers do not change until we
            # release consumer_pos past them, so these re-reads see pass 1's values.
            pos = cons
            try:
                while pos < end and not self._closed:  # close() from the callback stops here
                    off = pos & mask
                    length = hdr[off >> 2]
                    size = length & _LEN_MASK
                    pos += (size + _ROUND) & _ALIGN
                    if length & _DISCARD:
                        continue
                    start = off + _HDR
                    record = data[start:start + size]
                    n += 1
                    try:
                        callback(record)
                    except BaseException:
                        _release_quietly(record)  # the callback's exception matters more
                        raise
                    try:
                        record.release()  # a reference kept past the callback cannot read the ring
                    except BufferError as exc:
                        raise Error(f"ring buffer '{self.name}': the callback kept a buffer export of "
                                    "its record (e.g. numpy.frombuffer); copy it with bytes(record)") from exc
            finally:
                # Only positions read from headers go here (CVE-2024-41009).
                store(cons_addr, pos)
            cons = pos
        return n

    def poll(self, timeout_ms: int | float | None = -1) -> int:
        """Waits up to ``timeout_ms`` (-1 or None: forever) for data, then consumes.

        Returns the number of records handed to the callback: 0 on timeout, and
        possibly 0 when woken by a record that is still being written (then it
        backs off ~1 ms first, so a loop around poll() does not spin).  Signals
        interrupting the wait are retried (PEP 475); KeyboardInterrupt propagates.
        """
        epoll = self._epoll
        if epoll is None or self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")
        timeout = -1 if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        deadline = time.monotonic() + timeout if timeout >= 0 else None
        try:
            ready = epoll.poll(timeout, 1)
        except (ValueError, OSError):
            self._check()  # closed by another thread during the wait
            raise
        if not ready:
            return 0
        n = self.consume()
        if n or self._closed:
            return n
        # Woken but nothing committed at the head (BUSY record), or only discards.
        pause = _BUSY_BACKOFF if deadline is None else min(_BUSY_BACKOFF, max(0.0, deadline - time.monotonic()))
        if pause:
            time.sleep(pause)
        return self.consume()


# --- user -> kernel ---------------------------------------------------------

class Sample:
    """A sample reserved in a :class:`UserRingBuffer`, to fill and then submit.

    ``sample.data`` is a writable ``memoryview`` of exactly the reserved size,
    straight into the ring; ``sample[...]`` reads and writes through it.  It is
    released by :meth:`submit`/:meth:`discard` (the kernel owns the memory
    after that).  As a context manager it submits on success and discards if
    the block raises.
    """

    __slots__ = ("data", "_ring", "_pos")

    def __init__(self, ring: UserRingBuffer, pos: int, data: memoryview):
        self.data = data
        self._ring = ring
        self._pos = pos

    def __len__(self) -> int:
        return self.data.nbytes

    def __getitem__(self, index):
        return self.data[index]

    def __setitem__(self, index, value) -> None:
        self.data[index] = value

    def submit(self) -> None:
        """Commits the sample: the kernel's drain will see it."""
        self._ring.submit(self)

    def discard(self) -> None:
        """Gives the space back: the kernel's drain skips the sample."""
        self._ring.discard(self)

    def __enter__(self) -> Sample:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ring = self._ring
        if ring._closed:
            if exc_type is None:
                self.submit()  # raises ClosedError
            return
        if ring._pending.get(self._pos) is not self:
            return  # already submitted or discarded inside the block
        if exc_type is None:
            self.submit()
        else:
            self.discard()

    def __repr__(self) -> str:
        try:
            return f"<Sample {len(self)} bytes at position {self._pos}>"
        except ValueError:
            return f"<Sample at position {self._pos} (submitted or discarded)>"


class UserRingBuffer:
    """Producer for a ``BPF_MAP_TYPE_USER_RINGBUF`` map.

    ``reserve(n)`` returns a :class:`Sample` to fill, then ``submit(sample)``
    (or ``discard(sample)``) hands it to the kernel; a BPF program reads the
    submitted samples in order with ``bpf_user_ringbuf_drain``.  Several samples
    may be reserved at once; the drain stops at the oldest unsubmitted one.
    :meth:`write` does reserve + copy + submit in one call.

    One producer per map: the methods are serialized with a lock, so threads of
    this process may share the object.  Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, map):
        fd, self.name, size = _check_map(map, MapType.USER_RINGBUF)
        lib = atomics.library()  # fails clearly if the C helper is not built
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._xchg = lib.pybpf_xchg_acq_rel_u32
        self.size = size
        self._mask = size - 1
        self.max_sample = min(size - _HDR, _DYNPTR_MAX_SIZE)
        self._lock = threading.Lock()
        self._pending: dict[int, Sample] = {}
        self._closed = True  # until fully set up
        self._epoll = None
        self._views = ()
        self._maps = []
        page = mmap.PAGESIZE
        try:
            # consumer page: the kernel refuses a writable mapping (EPERM)
            cons = _Mapping(fd, page, 0, False, "consumer page", self.name)
            self._maps.append(cons)
            prod = _Mapping(fd, page + 2 * size, page, True, "producer page and data", self.name)
            self._maps.append(prod)
            self._cons_addr = cons.addr
            self._prod_addr = prod.addr
            self._data_addr = prod.addr + page
            data = prod.mem[page:]
            hdr = data.cast("I")
            self._views = (hdr, data)
            self._data, self._hdr = data, hdr
            self._prod = self._load_u64(self._prod_addr)  # we are the only writer from here on
            self._cons = self._load_u64(self._cons_addr)  # cached; reloaded when short of room
            self._epoll = select.epoll(1)
            self._epoll.register(fd, select.EPOLLOUT)  # level-triggered: fires while any byte is free
            self._closed = False
        except BaseException:
            self._teardown()
            raise

    # -- life cycle --

    def close(self) -> None:
        """Unmaps the ring and closes the epoll fd.  Idempotent.

        Samples reserved and not yet submitted are discarded (a BUSY sample left
        behind would stop the kernel's drain for good).
        """
        with self._lock:
            self._closed = True
            self._teardown()

    def _teardown(self) -> None:
        for pos, sample in self._pending.items():
            n = sample.data.nbytes
            _release_quietly(sample.data)
            self._xchg(self._data_addr + (pos & self._mask), n | _DISCARD)
        self._pending.clear()
        for view in self._views:
            view.release()
        self._views = ()
        self._data = self._hdr = None
        for m in self._maps:
            m.close()
        self._maps = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def __enter__(self) -> UserRingBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_maps", None):
            self._closed = True
            self._teardown()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"<UserRingBuffer '{self.name}' {state}>"

    def fileno(self) -> int:
        """An fd that is writable while the ring has any free byte (for select/asyncio)."""
        if self._closed:
            raise ClosedError(f"user ring buffer '{self.name}' is closed")
        return self._epoll.fileno()

    epoll_fd = fileno

    # -- producing --

    def _check_size(self, n: int) -> int:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SampleSizeError(f"sample size must be a non-negative int, not {n!r}")
        if n > self.max_sample:  # covers the BUSY/DISCARD bits and round_up(n + 8, 8) > size
            raise SampleSizeError(f"a {n}-byte sample does not fit user ring buffer '{self.name}': "
                                  f"at most {self.max_sample} bytes")
        return (n + _ROUND) & _ALIGN

    def _reserve(self, n: int, total: int) -> Sample | None:
        """Reserves under the lock; None when there is no room."""
        if self._closed:
            raise ClosedError(f"user ring buffer '{self.name}' is closed")
        prod = self._prod
        size = self.size
        if size - (prod - self._cons) < total:
            # pairs with the kernel's smp_store_release of consumer_pos after a drain
            self._cons = self._load_u64(self._cons_addr)
            if size - (prod - self._cons) < total:
                return None
        off = prod & self._mask
        i = off >> 2
        hdr = self._hdr
        hdr[i] = n | _BUSY  # BUSY before the producer_pos release: the drain stops here
        hdr[i + 1] = 0
        self._prod = prod + total
        self._store_u64(self._prod_addr, prod + total)  # publishes the header too
        start = off + _HDR
        sample = Sample(self, prod, self._data[start:start + n])
        self._pending[prod] = sample
        return sample

    def _full_error(self, n: int, total: int) -> RingBufferFullError:
        free = self.size - (self._prod - self._cons)
        return RingBufferFullError(f"user ring buffer '{self.name}' is full: a {n}-byte sample needs "
                                   f"{total} bytes (with header and padding), {free} of {self.size} free")

    def reserve(self, n: int) -> Sample:
        """Reserves an ``n``-byte sample; fill ``sample.data`` then submit or discard it.

        Raises :class:`RingBufferFullError` if the ring has no room now, and
        :class:`SampleSizeError` (a :class:`pybpf.Error` and ``ValueError``) if
        ``n`` can never fit (more than :attr:`max_sample`).
        """
        if n.__class__ is int and 0 <= n <= self.max_sample:
            total = (n + _ROUND) & _ALIGN
        else:
            total = self._check_size(n)  # raises, or accepts an int subclass
        with self._lock:
            sample = self._reserve(n, total)
            if sample is None:
                raise self._full_error(n, total)
            return sample

    def reserve_blocking(self, n: int, timeout_ms: int | float | None = -1) -> Sample:
        """Like :meth:`reserve`, but waits up to ``timeout_ms`` (-1 or None: forever) for room.

        Raises :class:`pybpf.TimeoutError` when the time is up.
        """
        total = self._check_size(n)
        forever = timeout_ms is None or timeout_ms < 0
        deadline = None if forever else time.monotonic() + timeout_ms / 1000
        backoff = _FULL_BACKOFF_MIN
        while True:
            with self._lock:
                sample = self._reserve(n, total)
                if sample is not None:
                    return sample
                epoll = self._epoll
            remaining = -1 if forever else deadline - time.monotonic()
            if not forever and remaining <= 0:
                with self._lock:
                    free = self.size - (self._prod - self._cons)
                raise TimeoutError(f"user ring buffer '{self.name}': no room for a {n}-byte sample "
                                   f"({total} bytes) within {timeout_ms} ms; {free} of {self.size} bytes free")
            try:
                woke = epoll.poll(remaining, 1)
            except (ValueError, OSError):  # closed by another thread meanwhile
                woke = None
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            if woke:
                # EPOLLOUT fires while ANY byte is free; if the sample still does
                # not fit, wait for the drain a little instead of spinning.
                with self._lock:
                    if self._closed:
                        raise ClosedError(f"user ring buffer '{self.name}' is closed")
                    self._cons = self._load_u64(self._cons_addr)
                    fits = self.size - (self._prod - self._cons) >= total
                if not fits:
                    pause = backoff if forever else min(backoff, max(0.0, deadline - time.monotonic()))
                    time.sleep(pause)
                    backoff = min(backoff * 2, _FULL_BACKOFF_MAX)

    def _commit(self, sample: Sample, flag: int, what: str) -> None:
        if not isinstance(sample, Sample):
            raise Error(f"{what}() takes a Sample from reserve(), not {type(sample).__name__}")
        with self._lock:
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            if self._pending.get(sample._pos) is not sample:
                if sample._ring is not self:
                    raise Error(f"{what}(): the sample belongs to another ring buffer")
                raise Error(f"{what}(): the sample was already submitted or discarded")
            n = sample.data.nbytes
            try:
                sample.data.release()  # no writes through it after the commit
            except BufferError:
                raise Error(f"{what}(): something still holds a buffer export of sample.data "
                            "(e.g. numpy.frombuffer, ctypes from_buffer): drop it first; "
                            "the sample stays reserved") from None
            del self._pending[sample._pos]
            # pairs with the drain's smp_load_acquire of the header
            self._xchg(self._data_addr + (sample._pos & self._mask), n | flag)

    def submit(self, sample: Sample) -> None:
        """Commits ``sample``: the kernel's drain will hand it to the BPF program."""
        self._commit(sample, 0, "submit")

    def discard(self, sample: Sample) -> None:
        """Abandons ``sample``: the kernel's drain skips it and frees the space."""
        self._commit(sample, _DISCARD, "discard")

    def write(self, data, timeout_ms: int | float | None = 0) -> None:
        """Copies ``data`` (any bytes-like object) into the ring as one sample.

        ``timeout_ms=0`` (the default) raises :class:`RingBufferFullError` at
        once when there is no room; otherwise waits as :meth:`reserve_blocking`.
        """
        payload = memoryview(data).cast("B")
        n = payload.nbytes
        sample = self.reserve(n) if timeout_ms == 0 else self.reserve_blocking(n, timeout_ms)
        try:
            sample.data[:] = payload
        except BaseException:
            self.discard(sample)
            raise
        self.submit(sample)

    @property
    def free(self) -> int:
        """Bytes free in the ring now (a sample takes round_up(n + 8, 8))."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            self._cons = self._load_u64(self._cons_addr)
            return self.size - (self._prod - self._cons)
