"""User -> kernel: :class:`UserRingBuffer` writes samples into a
``BPF_MAP_TYPE_USER_RINGBUF`` map, which a BPF program drains with
``bpf_user_ringbuf_drain``."""

from __future__ import annotations

import ctypes
import gc
import inspect
import mmap
import os
import queue
import select
import struct
import sys
import time
import weakref

from .. import atomics
from ..resource import Resource
from ..errors import ClosedError, Error, RingBufferFullError, TimeoutError
from ..kernel.constants import MapType
from ..spec.typed import _INT_TYPES, _check_int, factory_for, record_type_id
from ._mapping import (
    _ALIGN, _BUSY, _DISCARD, _HDR, _HDR_SHIFT, _ROUND, _UNPACK_RUN, _claim, _inside, _Mapping, _check_map,
    _release_quietly, _run_all, _unclaim, _Waiter,
)

__all__ = ["UserRingBuffer", "Sample", "SampleSizeError", "SampleClosedError", "SampleExportedError"]

# x86 is TSO: a store-release is a plain store (the kernel's smp_store_release
# is a compiler barrier and a MOV there).  A memoryview store is a MOV the C
# compiler cannot move across the interpreter's calls, so the Python paths of
# the user ring producer publish producer_pos with it: ~40 ns instead of a
# ~150-350 ns ctypes call.  Elsewhere (arm64...) they call the C helper.  The
# per-sample fast paths (the C base class, _atomics.Producer) use C11
# release/acquire/xchg, right on every architecture.
_PLAIN_RELEASE = os.uname().machine.lower() in ("x86_64", "amd64", "i386", "i686")
# A user sample must fit a struct bpf_dynptr (DYNPTR_MAX_SIZE): a larger one
# makes the kernel's drain fail with -E2BIG and wedges the ring.
_DYNPTR_MAX_SIZE = (1 << 24) - 1
# reserve_blocking(): back-off bounds when EPOLLOUT fires (any byte free) but
# the sample does not fit yet.
_FULL_BACKOFF_MIN = 0.0005
_FULL_BACKOFF_MAX = 0.01


class SampleSizeError(Error, ValueError):
    """A user ring buffer sample is larger than the ring (or the kernel) allows."""



# --- user -> kernel ---------------------------------------------------------

class SampleClosedError(ClosedError, ValueError):
    """A sample was read, written or exported after submit/discard (or after its
    ring buffer was closed): the kernel owns that memory now.  Also a
    ``ValueError``, as with a released ``memoryview``."""


class SampleExportedError(Error, BufferError):
    """submit/discard refused: a buffer export of the sample (a ``memoryview``,
    a ctypes object from ``from_buffer``, a numpy array...) is still alive and
    could write into the ring after the commit.  Drop it and try again; the
    sample stays reserved.  Also a ``BufferError``, as ``mmap.close()`` raises
    with live exports."""


try:
    _atomics = atomics.module()
except Error:  # the C helper is not built: UserRingBuffer() says so
    _atomics = None
    _SampleBuffer = _ProducerBase = object
    _new_sample = None
else:
    _atomics.set_errors(SampleClosedError, SampleExportedError)
    _SampleBuffer = _atomics.SampleBuffer
    _ProducerBase = _atomics.Producer
    _new_sample = _atomics.new_sample


class Sample(_SampleBuffer):
    """A sample reserved in a :class:`UserRingBuffer`: a writable buffer of exactly
    the reserved size, straight into the ring, to fill and then submit.

    It *is* the buffer: ``struct.pack_into(fmt, sample, 0, ...)``,
    ``sample[0:4] = b"..."``, ``memoryview(sample)``,
    ``ctypes.T.from_buffer(sample)``, ``bytes(sample)`` and ``len(sample)``
    work on it; ``sample[i]`` reads an int and ``sample[a:b]`` a ``bytes`` copy.
    ``sample.data`` is one writable ``memoryview`` of it, kept by the sample and
    released by the commit (the pre-buffer API).

    :meth:`UserRingBuffer.submit` (or :meth:`submit`) hands it to the kernel,
    :meth:`UserRingBuffer.discard` gives the space back.  After that the kernel
    owns the memory, so nothing may write into it:

    * the sample refuses reads, writes and new exports
      (:class:`SampleClosedError`, a :class:`pybpf.ClosedError` and
      ``ValueError``; ``struct.pack_into`` turns it into its own
      ``TypeError``), and ``sample.data`` is released;
    * the sample counts its buffer exports, and submit/discard refuse while one
      you made is alive (:class:`SampleExportedError`, a ``BufferError``),
      leaving the sample reserved: ``del`` the ctypes object or numpy array,
      ``release()`` the memoryview, and submit again.  A plain memoryview
      could not guarantee this: views and ctypes objects made from it outlive
      its ``release()``.  Temporary exports (``struct.pack_into``, slicing,
      ``bytes()``) are gone when the call returns.

    As a context manager it submits on success and discards if the block
    raises: ``with urb.reserve(8) as s: struct.pack_into("<Q", s, 0, 42)``.
    """

    __slots__ = ()

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
        if self not in ring._pending:
            return  # already submitted or discarded inside the block
        if exc_type is None:
            self.submit()
        else:
            self.discard()

    def __repr__(self) -> str:
        state = "submitted or discarded" if self.committed else "reserved"
        return f"<Sample {len(self)} bytes at position {self._pos}, {state}>"


class _ReleaseStores:
    """``cells[i] = v``: a release store of the u64 at ``addr + 8 * i`` through the
    C helper, where a memoryview store is not one (not x86: see _PLAIN_RELEASE)."""

    __slots__ = ("_addr", "_store")

    def __init__(self, addr: int, store):
        self._addr = addr
        self._store = store

    def __setitem__(self, i: int, value: int) -> None:
        self._store(self._addr + 8 * i, value)


def _Mutex():
    """A mutex made of a one-token ``queue.SimpleQueue`` (``take()`` is its
    ``get()``: waits, interruptibly, while another thread has the token;
    ``give()`` puts it back), as an ``_atomics.Mutex``, which marks it held
    between the two so that the C fast paths of the producer (``Producer``)
    can see that a Python method is running, and hand over to it.
    Uncontended, a get/put pair costs half of ``threading.Lock``'s
    acquire/release in CPython 3.11 (which parses keyword arguments and reads
    the clock on every acquire).  ``with mutex:`` for the paths that are not hot."""
    q = queue.SimpleQueue()
    q.put(None)
    return _atomics.Mutex(q.get, q.put)


class UserRingBuffer(_ProducerBase, Resource):
    """Producer for a ``BPF_MAP_TYPE_USER_RINGBUF`` map.

    ``reserve(n)`` returns a :class:`Sample`, a writable buffer of exactly
    ``n`` bytes over the ring's memory (``struct.pack_into(fmt, sample, 0,
    ...)``), then ``submit(sample)`` (or ``discard(sample)``) hands it to the
    kernel; a BPF program reads the
    submitted samples in order with ``bpf_user_ringbuf_drain``.  Several samples
    may be reserved at once; the drain stops at the oldest unsubmitted one.
    :meth:`write` does reserve + copy + submit in one call, :meth:`write_batch`
    publishes many samples with one release of producer_pos.

    Counters: ``records`` and ``bytes`` submitted, ``discards``; :attr:`free`
    is the room left now.

    One producer per map: the methods are serialized with a mutex, so threads
    of this process may share the object.  A second UserRingBuffer on a map
    this process already produces into (the same map through another fd
    included, by its kernel id) raises :class:`pybpf.InUseError` until the
    first is closed: each would keep its own producer_pos and write over the
    other's samples.  :meth:`close` from another thread wakes a
    :meth:`reserve_blocking` (or a blocking :meth:`write`/:meth:`write_batch`)
    waiting for room, which raises :class:`pybpf.ClosedError`.  Use as a
    context manager or call :meth:`close`.

    Typed samples: ``type`` is the sample's C type, by default the one the
    program declares for the map (``btf_decl_tag("pybpf:record=struct x")``,
    the map's ``record_type``), or a spelling such as ``"struct x"`` found in
    the object's BTF, or a ctypes type.  With it, ``reserve()`` (no size)
    returns the sample as a typed view into the ring (``entry.i = 1;
    entry.comm = "hello"; urb.submit(entry)``), and :meth:`write` /
    :meth:`write_batch` take dicts, tuples and typed values besides bytes.

    Speed: the base class, ``pybpf._atomics.Producer`` (C), keeps the
    producer's state and does the common case of ``reserve(n)``,
    ``submit(sample)``, ``write(data)`` and ``write_batch(list of equal-length
    bytes)`` without running Python code; every other case goes to the Python
    method of the same name with ``_slow`` appended (``_reserve_slow``...),
    where the rules and their documentation are.
    """

    def __init__(self, map, type=None):  # noqa: A002 - the name RingBuffer uses
        fd, self.name, size = _check_map(map, MapType.USER_RINGBUF)
        self._resolve_type(map, type)
        lib = atomics.library()  # fails clearly if the C helper is not built
        atomics.module()  # and an old build without SampleBuffer or Producer
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._fill = lib.pybpf_user_ringbuf_fill  # write_array
        self.size = size
        self._mask = size - 1
        self.max_sample = min(size - _HDR, _DYNPTR_MAX_SIZE)
        self.records = 0
        self.bytes = 0
        self.discards = 0
        self._lock = _Mutex()
        self._take, self._give = self._lock.take, self._lock.give
        self._pending: set[Sample] = set()  # reserved, not yet submitted or discarded
        self._leases: dict[Sample, _Lease] = {}  # pending samples reserved as typed views
        self._closed = True  # until fully set up
        self._waiter = None
        self._views = ()
        self._maps = []    # each mapping joins before it is made: _teardown finds it whatever happens
        self._claims = []  # the map (by kernel id) this object is the producer of
        self._data = self._hdr = self._prod_pos = self._mapping = None
        page = mmap.PAGESIZE
        try:
            _claim("producer", fd, self.name, self, self._claims,
                   "A user ring buffer has one producer_pos, so two producers would reserve the same bytes "
                   "and write over each other's samples",
                   "share that UserRingBuffer between threads (its methods are serialized) or close it first")
            # consumer page: the kernel refuses a writable mapping (EPERM)
            cons = _Mapping(fd, page, 0, False, "consumer page", self.name, self._maps)
            prod = _Mapping(fd, page + 2 * size, page, True, "producer page and data", self.name, self._maps)
            self._cons_addr = cons.addr
            self._prod_addr = prod.addr
            self._data_addr = prod.addr + page
            self._attach(prod.mmap, page, cons.addr, Sample)  # the C fast paths (Producer)
            data = prod.mem[page:]
            hdr = data.cast("Q")  # a whole header in one store: len, then pg_off = 0
            prod_pos = prod.mem[:8].cast("Q")
            self._views = (prod_pos, hdr, data)
            self._data, self._hdr = data, hdr
            # samples are buffers over this mapping: the one whose header is at
            # data offset off starts at _payload + off
            self._mapping = prod.mmap
            self._payload = page + _HDR
            self._set_release(_PLAIN_RELEASE)
            self._prod = self._load_u64(self._prod_addr)  # we are the only writer from here on
            self._cons = self._load_u64(self._cons_addr)  # cached; reloaded when short of room
            self._waiter = _Waiter(select.epoll)
            self._waiter.register(fd, select.EPOLLOUT)  # level-triggered: fires while any byte is free
            self._closed = False
        except BaseException:
            self._teardown()
            raise

    # -- life cycle --

    def close(self) -> None:
        """Unmaps the ring and closes the epoll fd.  Idempotent.

        Samples reserved and not yet submitted are discarded (a BUSY sample left
        behind would stop the kernel's drain for good).  Wakes the threads
        waiting for room in :meth:`reserve_blocking` (they raise
        :class:`pybpf.ClosedError`).  Every step runs even if one fails or is
        interrupted (KeyboardInterrupt), and the next close() finishes what is
        left.
        """
        self._closed = True  # before the mutex: a waiter woken now sees it
        _run_all([self._waiter.close if self._waiter is not None else _nothing, self._locked_teardown])

    def _locked_teardown(self) -> None:
        while True:
            try:
                self._take(True, 0.1)
                break
            except queue.Empty:
                # Methods hold the mutex briefly (never while waiting); one held
                # by no running method was lost to an interrupt right after its
                # take() (see _inside): go on, and put the token back after.
                if not _inside((self, self._lock), _producer_codes(), skip_current=True):
                    break
        try:
            self._closed = True
            self._teardown()
        finally:
            self._give(None)

    def _discard_by_force(self, sample: Sample) -> None:
        # by force, even with live exports: a BUSY sample left behind would
        # stop the kernel's drain for good (the memory stays mapped for them)
        if not sample.committed:
            sample._commit(len(sample) | _DISCARD, True)
            self.discards += 1
        self._pending.discard(sample)

    def _unmap(self) -> None:
        self._detach()  # the C fast paths first: they hold an export of the mapping
        self._data = self._hdr = self._prod_pos = self._mapping = None
        _run_all([*(lambda v=v: _release_quietly(v) for v in self._views), *(m.close for m in self._maps)])
        self._views = ()
        self._maps = []

    def _teardown(self) -> None:
        """(mutex held, or never shared) every step idempotent: see close()."""
        steps = [(lambda s=s: self._discard_by_force(s)) for s in list(self._pending)]
        steps += [(lambda s=s: self._leases.pop(s).retire()) for s in list(self._leases)]
        steps.append(self._unmap)
        if self._waiter is not None:
            steps.append(self._waiter.close)  # the fds go now, or when the last waiter leaves
        steps += [(lambda key=key: _unclaim(key, self)) for key in self._claims]
        _run_all(steps)
        self._claims = []

    def __del__(self) -> None:
        if getattr(self, "_maps", None) or getattr(self, "_claims", None):
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
        return self._waiter.fileno()

    epoll_fd = fileno

    # -- producing --
    #
    # Headers are written with plain stores: a new sample's header before the
    # producer_pos release that makes it visible, a reserved sample's commit
    # with a release of its own (the xchg of libbpf's user_ringbuf_commit, a
    # plain store on x86, see _PLAIN_RELEASE).

    def _check_size(self, n: int) -> int:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SampleSizeError(f"sample size must be a non-negative int, not {n!r}")
        if n > self.max_sample:  # covers the BUSY/DISCARD bits and round_up(n + 8, 8) > size
            raise SampleSizeError(f"a {n}-byte sample does not fit user ring buffer '{self.name}': "
                                  f"at most {self.max_sample} bytes")
        return (n + _ROUND) & _ALIGN

    def _set_release(self, plain: bool) -> None:
        """The release store ``_prod_pos[0] = pos`` (producer_pos): a memoryview
        store on x86, the C helper elsewhere (see _PLAIN_RELEASE).  A reserved
        sample's commit is an xchg in the C helper (SampleBuffer._commit)."""
        if plain:
            self._prod_pos = self._views[0]
        else:
            self._prod_pos = _ReleaseStores(self._prod_addr, self._store_u64)

    def _publish(self) -> None:
        """Releases producer_pos up to everything written (mutex held)."""
        # pairs with the drain's smp_load_acquire of producer_pos: the headers and
        # payloads written before are visible to the kernel with it
        self._prod_pos[0] = self._prod

    def _room(self, total: int) -> bool:
        """True when ``total`` more bytes fit (mutex held)."""
        if self.size - (self._prod - self._cons) >= total:
            return True
        # pairs with the kernel's smp_store_release of consumer_pos after a drain
        self._cons = self._load_u64(self._cons_addr)
        return self.size - (self._prod - self._cons) >= total

    def _reserve(self, n: int, total: int) -> Sample | None:
        """Reserves (mutex held); None when there is no room."""
        if self._closed:
            raise ClosedError(f"user ring buffer '{self.name}' is closed")
        prod = self._prod
        if prod + total - self._cons > self.size and not self._room(total):
            return None
        off = prod & self._mask
        # BUSY first: the drain stops at this sample until it is committed
        self._hdr[off >> 3] = (n | _BUSY) << _HDR_SHIFT
        self._prod = end = prod + total
        self._prod_pos[0] = end  # release: the BUSY header with it
        sample = _new_sample(Sample, self._mapping, self._payload + off, n, self, prod)
        self._pending.add(sample)
        return sample

    def _full_error(self, n: int, total: int) -> RingBufferFullError:
        free = self.size - (self._prod - self._cons)
        return RingBufferFullError(f"user ring buffer '{self.name}' is full: a {n}-byte sample needs "
                                   f"{total} bytes (with header and padding), {free} of {self.size} free")

    def _reserve_slow(self, n: int | None = None):
        """reserve(): Reserves an ``n``-byte sample: a writable buffer of exactly ``n`` bytes
        over the ring's memory (a :class:`Sample`).  Fill it (``struct.pack_into``,
        slice assignment, ``ctypes.T.from_buffer``...), then :meth:`submit` or
        :meth:`discard` it; drop views of it first (see :class:`Sample`).

        With no size, reserves one sample of the sample type (see the class) and
        returns it as a typed view into the ring, zeroed: set its fields
        (``entry.i = os.getpid(); entry.comm = "hello"``: ints are range-checked,
        char arrays take str or bytes, unknown fields are refused), then
        ``submit(entry)`` or ``discard(entry)`` (or ``with urb.reserve() as
        entry:``, which submits at the end of the block, or discards if it
        raises).  Once submitted the view and anything taken from it refuse
        reads and writes (:class:`SampleClosedError`), and submit refuses while
        a raw export of it (``memoryview(entry)``...) is alive.

        Raises :class:`RingBufferFullError` if the ring has no room now, and
        :class:`SampleSizeError` (a :class:`pybpf.Error` and ``ValueError``) if
        ``n`` can never fit (more than :attr:`max_sample`).
        """
        # Producer.reserve (C) comes here for all but an int n that fits now
        # (and the mutex not held); this is still the one place for the
        # rules, with the usual case spelled out and the rest in _reserve.
        if n.__class__ is not int or n < 0 or n > self.max_sample:
            if n is None:
                return self._typed_view(self.reserve(self._typed_size("reserve")))
            self._check_size(n)  # raises, or accepts an int subclass
        total = (n + _ROUND) & _ALIGN
        self._take()
        try:
            prod = self._prod
            if prod + total - self._cons > self.size:
                sample = self._reserve(n, total)  # reloads consumer_pos
                if sample is None:
                    raise self._full_error(n, total)
                return sample
            off = prod & self._mask
            index = off >> 3
            try:
                self._hdr[index] = (n | _BUSY) << _HDR_SHIFT
            except TypeError:  # None: closed (_reserve says so)
                return self._reserve(n, total)
            self._prod = end = prod + total
            self._prod_pos[0] = end  # release: the BUSY header with it
            sample = _new_sample(Sample, self._mapping, self._payload + off, n, self, prod)
            self._pending.add(sample)
            return sample
        finally:
            self._give(None)

    def _wait_for_room(self, total: int, deadline: float | None, backoff: float) -> float:
        """Waits (mutex not held) until ``total`` bytes may fit or the deadline; returns the next back-off."""
        waiter = self._waiter
        closed = f"user ring buffer '{self.name}' is closed"
        if waiter is None or self._closed:
            raise ClosedError(closed)
        remaining = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        woke = waiter.wait(remaining, 1, closed)  # close() from another thread: ClosedError at once
        if self._closed:
            raise ClosedError(closed)
        if woke:
            # EPOLLOUT fires while ANY byte is free; if the sample still does
            # not fit, wait for the drain a little instead of spinning.
            with self._lock:
                if self._closed:
                    raise ClosedError(f"user ring buffer '{self.name}' is closed")
                fits = self._room(total)
            if not fits:
                pause = backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                backoff = min(backoff * 2, _FULL_BACKOFF_MAX)
        return backoff

    def reserve_blocking(self, n: int | None = None, timeout_ms: int | float | None = -1):
        """Like :meth:`reserve` (the same writable buffer, or with no size the
        same typed view), but waits up to ``timeout_ms`` (-1 or None: forever)
        for room.

        Raises :class:`pybpf.TimeoutError` when the time is up, and
        :class:`pybpf.ClosedError` when :meth:`close` is called meanwhile (from
        another thread: it wakes the wait at once).
        """
        if n is None:
            return self._typed_view(self.reserve_blocking(self._typed_size("reserve_blocking"), timeout_ms))
        total = self._check_size(n)
        forever = timeout_ms is None or timeout_ms < 0
        deadline = None if forever else time.monotonic() + timeout_ms / 1000
        backoff = _FULL_BACKOFF_MIN
        while True:
            with self._lock:
                sample = self._reserve(n, total)
                if sample is not None:
                    return sample
            if not forever and deadline - time.monotonic() <= 0:
                with self._lock:
                    free = self.size - (self._prod - self._cons)
                raise TimeoutError(f"user ring buffer '{self.name}': no room for a {n}-byte sample "
                                   f"({total} bytes) within {timeout_ms} ms; {free} of {self.size} bytes free")
            backoff = self._wait_for_room(total, deadline, backoff)

    def _commit(self, sample: Sample, flag: int, what: str) -> None:
        """submit/discard, mutex held."""
        if sample.__class__ is not Sample and not isinstance(sample, Sample):
            raise Error(f"{what}() takes a Sample from reserve(), not {type(sample).__name__}")
        if self._closed:
            raise ClosedError(f"user ring buffer '{self.name}' is closed")
        if sample not in self._pending:
            if sample._ring is not self:
                raise Error(f"{what}(): the sample belongs to another ring buffer")
            raise Error(f"{what}(): the sample was already submitted or discarded")
        # the header's len, BUSY cleared (DISCARD set to discard), with an xchg:
        # pairs with the drain's smp_load_acquire of the header; refuses while
        # a buffer export is alive (the sample stays reserved)
        n = sample._commit(len(sample) | flag)
        self._pending.remove(sample)
        if flag:
            self.discards += 1
        else:
            self.records += 1
            self.bytes += n

    def _submit_slow(self, sample: Sample) -> None:
        """submit(): Commits ``sample``: the kernel's drain will hand it to the BPF program.

        Raises :class:`SampleExportedError` (the sample stays reserved) while a
        buffer export of it is alive; see :class:`Sample`.  Takes the typed
        view :meth:`reserve` returns with no size as well.
        """
        if sample.__class__ is not Sample and not isinstance(sample, Sample):
            return self._commit_view(sample, 0, "submit")
        self._take()
        try:
            if sample in self._pending:
                # xchg of the header (BUSY cleared): pairs with the drain's
                # smp_load_acquire; refuses while an export is alive
                n = sample._commit(len(sample))
                self._pending.remove(sample)
                self.records += 1
                self.bytes += n
            else:
                # not a pending sample of ours, or closed (close() empties
                # pending): _commit says which
                self._commit(sample, 0, "submit")
        finally:
            self._give(None)

    def discard(self, sample: Sample) -> None:
        """Abandons ``sample``: the kernel's drain skips it and frees the space.

        Refuses as :meth:`submit` does while a buffer export is alive.
        """
        if sample.__class__ is not Sample and not isinstance(sample, Sample):
            return self._commit_view(sample, _DISCARD, "discard")
        self._take()
        try:
            self._commit(sample, _DISCARD, "discard")
        finally:
            self._give(None)

    def _write_slow(self, data, timeout_ms: int | float | None = 0) -> None:
        """write(): Copies ``data`` into the ring as one sample: any bytes-like object as
        it is, or, with a sample type (see the class), a dict or tuple of its
        fields or a typed value, encoded by the type (unknown fields, values
        out of range and wrong sizes raise :class:`pybpf.Error` naming the
        field).

        ``timeout_ms=0`` (the default) raises :class:`RingBufferFullError` at
        once when there is no room; otherwise waits as :meth:`reserve_blocking`.
        """
        if data.__class__ is bytes or data.__class__ is bytearray:
            payload, n = data, len(data)
        else:
            payload = self._payload_of(data)
            n = len(payload) if payload.__class__ is bytes else payload.nbytes
        total = self._check_size(n) if n > self.max_sample else (n + _ROUND) & _ALIGN
        if timeout_ms != 0:
            sample = self.reserve_blocking(n, timeout_ms)
            try:
                sample[:] = payload
            except BaseException:
                self.discard(sample)
                raise
            self.submit(sample)
            return
        self._take()
        try:
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            prod = self._prod
            if prod + total - self._cons > self.size and not self._room(total):
                raise self._full_error(n, total)
            off = prod & self._mask
            start = off + _HDR
            self._data[start:start + n] = payload
            # committed from the start: it becomes visible with producer_pos
            self._hdr[off >> 3] = n << _HDR_SHIFT
            self._prod = prod + total
            self._publish()
            self.records += 1
            self.bytes += n
        finally:
            self._give(None)

    def _write_batch_slow(self, samples, timeout_ms: int | float | None = 0) -> int:
        """write_batch(): Copies every bytes-like object of ``samples`` into the ring, in order, as
        one sample each, and publishes them with one release of producer_pos.
        With a sample type, items may also be dicts, tuples or typed values (as
        :meth:`write` takes them); they are all encoded before anything is written.

        Returns how many were written: all of them, or fewer when the ring
        fills up (``timeout_ms=0``, the default) or stays full for
        ``timeout_ms`` (-1 or None: wait as long as it takes).  Raises
        :class:`SampleSizeError` before writing anything if a sample can never
        fit.  A list or tuple of equal-length ``bytes`` that all fit takes the
        fastest path (Producer.write_batch: one C loop); other equal-length
        ``bytes`` samples one ``struct.pack_into`` per run of samples.
        """
        items = samples if samples.__class__ is list or samples.__class__ is tuple else list(samples)
        count = len(items)
        if not count:
            return 0
        uniform = _uniform_length(items)
        if uniform >= 0:
            views, sizes, biggest = items, None, uniform
            if biggest > self.max_sample:
                self._check_size(biggest)  # raises
        else:
            views, sizes = self._sample_views(items)
        forever = timeout_ms is None or timeout_ms < 0
        deadline = None if forever else time.monotonic() + timeout_ms / 1000
        backoff = _FULL_BACKOFF_MIN
        written = 0
        while True:
            with self._lock:
                if self._closed:
                    raise ClosedError(f"user ring buffer '{self.name}' is closed")
                if uniform >= 0:
                    try:
                        written += self._write_uniform(views, written, uniform)
                    except (TypeError, struct.error):
                        # equal lengths, but not all bytes/bytearray (struct's
                        # "s" takes no other): nothing was published, go generic
                        uniform = -1
                        views, sizes = self._sample_views(items)
                        written += self._write_each(views, sizes, written)
                else:
                    written += self._write_each(views, sizes, written)
                if written == count:
                    return count
                needed = ((uniform if uniform >= 0 else sizes[written]) + _ROUND) & _ALIGN
            if timeout_ms == 0 or (not forever and deadline - time.monotonic() <= 0):
                return written
            backoff = self._wait_for_room(needed, deadline, backoff)

    def write_array(self, arr, timeout_ms: int | float | None = 0) -> int:
        """Publishes every element of ``arr`` (along its first axis) as one sample
        each, in order: a numpy array of records (a structured dtype, e.g. from
        ``read_array()`` or built with the sample type's layout) or of plain
        numbers.  One C loop writes the headers and copies the samples, and
        one release of producer_pos per batch publishes them.

        Every sample is ``arr[0].nbytes`` bytes; with a sample type (see the
        class), that must be its size (:class:`pybpf.Error` otherwise, before
        anything is written).  Returns how many were written, as
        :meth:`write_batch` does: all, or fewer when the ring fills up
        (``timeout_ms=0``, the default) or stays full for ``timeout_ms`` (-1 or
        None: wait as long as it takes).  Needs numpy.
        """
        from .arrays import sample_array, write_samples
        a, size = sample_array(self, arr)
        count = len(a)
        if not count:
            return 0
        forever = timeout_ms is None or timeout_ms < 0
        deadline = None if forever else time.monotonic() + timeout_ms / 1000
        backoff = _FULL_BACKOFF_MIN
        written = 0
        while True:
            with self._lock:
                written += write_samples(self, a, written, size)
            if written == count:
                return count
            if timeout_ms == 0 or (not forever and deadline - time.monotonic() <= 0):
                return written
            backoff = self._wait_for_room((size + _ROUND) & _ALIGN, deadline, backoff)

    def _sample_views(self, items) -> tuple[list, list]:
        """Every sample as bytes-like 'B' data and its size; raises SampleSizeError first."""
        views = [x if x.__class__ is bytes or x.__class__ is bytearray else self._payload_of(x)
                 for x in items]
        sizes = [len(v) if v.__class__ is not memoryview else v.nbytes for v in views]
        biggest = max(sizes)
        if biggest > self.max_sample:
            self._check_size(biggest)  # raises
        return views, sizes

    def _write_uniform(self, items, first: int, length: int) -> int:
        """Writes items[first:] (bytes of ``length`` bytes each) as far as they fit (mutex held).

        Per run of up to 256 samples: one struct.pack_into writes the payloads
        (zeros where the headers go), one strided memoryview store writes the
        headers.  The data area is mapped twice, so a run that wraps is
        contiguous.  Raises TypeError or struct.error before anything is
        published if an item is not bytes/bytearray.
        """
        stride = (length + _ROUND) & _ALIGN
        want = len(items) - first
        if self.size - (self._prod - self._cons) < want * stride:
            self._room(want * stride)
        n = min(want, (self.size - (self._prod - self._cons)) // stride)
        if not n:
            return 0
        data, hdr, mask = self._data, self._hdr, self._mask
        step = stride >> 3
        prod = self._prod
        done = 0
        while done < n:
            run = min(n - done, _UNPACK_RUN)
            run = 1 << (run.bit_length() - 1)
            packer, headers = _packer(length, stride, run)
            off = prod & mask
            packer.pack_into(data, off, *items[first + done:first + done + run])
            i = off >> 3
            hdr[i:i + run * step:step] = headers
            prod += run * stride
            done += run
        self._prod = prod
        self._publish()
        self.records += n
        self.bytes += n * length
        return n

    def _write_each(self, views, sizes, first: int) -> int:
        """Writes views[first:] as far as they fit; under the lock."""
        data, hdr, mask = self._data, self._hdr, self._mask
        prod = self._prod
        n = 0
        nbytes = 0
        for i in range(first, len(views)):
            size = sizes[i]
            total = (size + _ROUND) & _ALIGN
            if self.size - (prod - self._cons) < total:
                self._prod = prod  # _room measures from it
                if not self._room(total):
                    break
            off = prod & mask
            data[off + _HDR:off + _HDR + size] = views[i]
            hdr[off >> 3] = size << _HDR_SHIFT
            prod += total
            n += 1
            nbytes += size
        self._prod = prod
        if n:
            self._publish()
            self.records += n
            self.bytes += nbytes
        return n

    @property
    def free(self) -> int:
        """Bytes free in the ring now (a sample takes round_up(n + 8, 8))."""
        with self._lock:
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            self._cons = self._load_u64(self._cons_addr)
            return self.size - (self._prod - self._cons)

    # -- typed samples --

    def _resolve_type(self, map, type) -> None:  # noqa: A002
        """Sets sample_type (what to encode by) from ``type`` or the map's declaration."""
        if type is None:
            type = getattr(map, "record_type", None)  # the pybpf:record= tag, if the program has one
        if type is memoryview or type is bytes:
            type = None
        self._btf = getattr(map, "btf", None)
        self._type_id = 0
        self._ctype = None
        if type is not None:
            what = f"user ring buffer '{self.name}'"
            if isinstance(type, type_) and issubclass(type, _CDATA):
                self._ctype = type  # a ctypes type, as is
            else:  # a BTF type (the declared one), a spelling ("struct x") or an id
                self._type_id = record_type_id(self._btf, type, what)
                self._ctype = factory_for(self._btf).ctype(self._type_id)
        self.sample_type = self._ctype
        """The ctypes type of a sample (None without a declared or given type)."""

    def _no_type(self, what: str) -> Error:
        return Error(f"user ring buffer '{self.name}' has no sample type for {what}: declare it in the program "
                     f"(btf_decl_tag(\"pybpf:record=struct x\") on the map), pass "
                     f"UserRingBuffer(map, type=\"struct x\"), or use bytes / reserve(n)")

    def _typed_size(self, what: str) -> int:
        if self._ctype is None:
            raise self._no_type(f"{what}() without a size")
        return ctypes.sizeof(self._ctype)

    def _typed_view(self, sample: Sample):
        """The reserved ``sample`` as a zeroed typed view (discarded if that fails)."""
        try:
            view = _view_class(self._ctype).from_buffer(sample)
            ctypes.memset(ctypes.addressof(view), 0, len(sample))
            lease = _Lease(sample, self)
            view.__dict__["_lease_"] = lease
            lease.root = weakref.ref(view)
            with self._lock:
                self._leases[sample] = lease
        except BaseException:
            view = None
            self.discard(sample)
            raise
        return view

    def _commit_view(self, view, flag: int, what: str) -> None:
        """submit/discard of a typed view."""
        lease = getattr(view, "__dict__", {}).get("_lease_") if isinstance(view, _CDATA) else None
        if lease is None:
            raise Error(f"{what}() takes a Sample from reserve(n) or a typed sample from reserve(), "
                        f"not {type(view).__name__}")
        if lease.ring is not self:
            raise Error(f"{what}(): the sample belongs to another ring buffer")
        if lease.root is None or lease.root() is not view:
            if lease.sample.committed:
                raise Error(f"{what}(): the sample was already submitted or discarded")
            raise Error(f"{what}() takes the sample reserve() returned, not a member of it")
        sample = lease.sample
        exports = _raw_exports(view)
        if exports and not sample.committed:
            raise SampleExportedError(
                f"{what}() refused: {exports} raw export(s) of the typed sample (memoryview, from_buffer, "
                f"a ctypes object made from it) still alive could write into the ring after the commit; drop "
                f"them and {what} again (the sample stays reserved)")
        with self._lock:
            if self._closed:
                raise ClosedError(f"user ring buffer '{self.name}' is closed")
            if sample not in self._pending:
                raise Error(f"{what}(): the sample was already submitted or discarded")
            # the view's own export of the Sample goes first: the commit refuses while any is alive
            _release_exports_of(view)
            self._commit(sample, flag, what)
            self._leases.pop(sample, None)
        lease.retire()

    def _payload_of(self, value):
        """A sample's bytes: bytes-like objects as they are, the rest encoded by the sample type."""
        if isinstance(value, (dict, list, tuple)) or (self._ctype is not None and isinstance(value, _CDATA)):
            return self._encode(value)
        try:
            return memoryview(value).cast("B")
        except TypeError:
            return self._encode(value)

    def _encode(self, value) -> bytes:
        what = f"user ring buffer '{self.name}'"
        if self._ctype is None:
            raise self._no_type(f"a {type(value).__name__} sample")
        if self._type_id:
            return factory_for(self._btf).convert(self._type_id, value)
        ct = self._ctype   # a ctypes type given as is
        size = ctypes.sizeof(ct)
        if isinstance(value, _CDATA):
            if ctypes.sizeof(value) != size:
                raise Error(f"{what}: a sample is {size} bytes ({ct.__name__}), got a {type(value).__name__} "
                            f"of {ctypes.sizeof(value)}")
            return bytes(memoryview(value).cast("B"))
        buf = bytearray(size)
        _fill(_detached_view(ct, buf), value, ct.__name__)
        return bytes(buf)


# --- typed samples -----------------------------------------------------------
#
# reserve() with no size returns the sample as a typed view: an instance of a
# guarded subclass of the sample's ctypes type (pybpf.spec.typed), made with
# from_buffer over the Sample, so it is one export of the Sample as any ctypes
# view is.  submit(view)/discard(view) take it back: they refuse while a raw
# export of the view itself (memoryview(view), T.from_buffer(view), a ctypes
# object based on it) is alive, release the view's export, commit, and then
# point the view (and the nested views handed out from it) at a private buffer,
# so that nothing reachable from them writes into the ring any more; their
# fields refuse reads and writes from then on (SampleClosedError).

def _b_ptr_offset() -> int | None:
    """Where CPython keeps a ctypes object's data pointer (CDataObject.b_ptr,
    right after PyObject_HEAD), checked on a probe; None if not found there."""
    off = 2 * ctypes.sizeof(ctypes.c_ssize_t)
    probe = (ctypes.c_char * 8)()
    try:
        found = ctypes.c_void_p.from_address(id(probe) + off).value
    except (ValueError, OSError):
        return None
    return off if found == ctypes.addressof(probe) else None


_B_PTR = _b_ptr_offset()
_CDATA = ctypes.Structure.__mro__[1]  # _ctypes._CData: every ctypes instance
_COMPOUND = (ctypes.Structure, ctypes.Union, ctypes.Array)


def _repoint(view, addr: int) -> None:
    """Makes the ctypes object ``view`` use the memory at ``addr`` from now on."""
    if _B_PTR is not None:
        ctypes.c_void_p.from_address(id(view) + _B_PTR).value = addr


class _Lease:
    """What a typed view and the nested views made from it share: the Sample
    they are over, and what submit/discard needs to retire them."""

    __slots__ = ("sample", "ring", "root", "children", "spare")

    def __init__(self, sample, ring):
        self.sample = sample
        self.ring = ring
        self.root = None        # the view reserve() returned (weak: nothing else keeps it alive)
        self.children = []      # weak references to the nested views handed out
        self.spare = None       # the private memory the views use once retired

    def check(self) -> None:
        if self.sample.committed:
            raise SampleClosedError("this typed sample was submitted or discarded (or its ring buffer closed): "
                                    "the kernel owns that memory now; reserve() a new one")

    def adopt(self, value):
        """A guarded view of ``value``, a struct/union/array inside the sample."""
        cls = _view_class(type(value))
        child = cls.from_address(ctypes.addressof(value))
        child.__dict__["_lease_"] = self
        children = self.children
        if len(children) > 64:
            children[:] = [r for r in children if r() is not None]
        children.append(weakref.ref(child))
        return child

    def retire(self) -> None:
        """After the commit: the root view's export of the Sample released, and
        every view still alive pointed at private memory.  Idempotent."""
        root = self.root() if self.root is not None else None
        if root is None and not self.children:
            return
        size = len(self.sample)
        if self.spare is None:
            self.spare = ctypes.create_string_buffer(max(size, 1))
        base = ctypes.addressof(self.spare)
        if root is not None:
            start = ctypes.addressof(root)
            for ref in self.children:
                child = ref()
                if child is not None:
                    _repoint(child, base + (ctypes.addressof(child) - start))
            _repoint(root, base)
            _release_exports_of(root)
        self.children = []
        self.root = None


def _release_exports_of(view) -> None:
    """Releases the memoryview from_buffer keeps in ``view`` (its export of the Sample)."""
    objects = view._objects
    values = objects.values() if isinstance(objects, dict) else (objects,)
    for v in list(values):
        if isinstance(v, memoryview):
            v.release()


def _raw_exports(view) -> int:
    """How many raw exports of ``view`` are alive: buffers exported from it
    (memoryview, from_buffer) and ctypes objects based on it.  Cheap when
    nothing but a name or two refers to it; a scan of the referrers otherwise."""
    # the caller's reference(s), our frames' arguments and getrefcount's own
    if sys.getrefcount(view) <= _PLAIN_REFS:
        return 0
    found = 0
    for r in gc.get_referrers(view):
        if type(r).__name__ == "managedbuffer" or isinstance(r, _CDATA):
            found += 1
        elif isinstance(r, dict) and any(isinstance(o, _CDATA) for o in gc.get_referrers(r)):
            found += 1   # a ctypes object's _objects (ctypes.pointer(view), byref...)
    return found


# references to a typed view that submit(view) finds when the caller has it in
# one variable: the variable, submit's and _commit_view's arguments, getrefcount's
_PLAIN_REFS = 5


def _field_error(label: str, name: str, value, e: Exception) -> Error:
    if isinstance(e, Error):
        return Error(f"{label}.{name}: {e}")
    return Error(f"{label}.{name}: cannot set {value!r} ({e})")


def _struct_members(ct) -> tuple:
    members = getattr(ct, "_members_", None)
    if members is None:
        members = tuple(f[0] for f in ct._fields_)
    return members


def _guarded_member(ct, label: str, name: str) -> property:
    desc = inspect.getattr_static(ct, name)
    probe = desc.__get__(ct(), ct)
    nested = isinstance(probe, _COMPOUND)
    bits = getattr(ct, "_int_bits_", {}).get(name)
    if bits is None:  # a plain ctypes structure: its integer fields (not bitfields)
        for field in getattr(ct, "_fields_", ()):
            if field[0] == name and len(field) == 2 and field[1] in _INT_TYPES:
                bits = 8 * ctypes.sizeof(field[1])

    def get(self):
        lease = self._lease_
        lease.check()
        value = desc.__get__(self, None)
        return lease.adopt(value) if nested else value

    def set(self, value):
        lease = self._lease_
        lease.check()
        if nested:
            _fill(lease.adopt(desc.__get__(self, None)), value, f"{label}.{name}")
            return
        try:
            if bits:  # ctypes would silently truncate
                value = _check_int(value, bits, f"{label}.{name}")
                desc.__set__(self, value)
            else:
                desc.__set__(self, value)
        except Exception as e:
            if isinstance(e, Error) and str(e).startswith(f"{label}.{name}"):
                raise
            raise _field_error(label, name, value, e) from None

    return property(get, set, doc=f"field {name} of the sample (refused once it is submitted)")


def _fill(view, value, what: str) -> None:
    """Assigns a whole nested value: a dict/tuple/list of fields, bytes, or a ctypes value."""
    size = ctypes.sizeof(view)
    if isinstance(value, (bytes, bytearray, memoryview)) or isinstance(value, _CDATA):
        raw = bytes(value)
        if isinstance(view, ctypes.Array) and view._type_ is ctypes.c_char and isinstance(value, (bytes, bytearray)):
            raw = raw + bytes(size - len(raw)) if len(raw) <= size else raw
        if len(raw) != size:
            raise Error(f"{what} is {size} bytes, got {len(raw)}")
        ctypes.memmove(ctypes.addressof(view), raw, size)
        return
    if isinstance(view, ctypes.Array):
        if not isinstance(value, (list, tuple)):
            raise Error(f"{what} takes a list, not {type(value).__name__} {value!r}")
        if len(value) > len(view):
            raise Error(f"{what}: {len(value)} elements do not fit in {len(view)}")
        for i, v in enumerate(value):
            view[i] = v
        return
    members = _struct_members(type(view).__mro__[1])
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        if len(value) > len(members):
            raise Error(f"{what} has {len(members)} fields, got {len(value)} values")
        items = zip(members, value)
    else:
        raise Error(f"{what} takes a dict or tuple of fields, not {type(value).__name__}")
    for name, v in items:
        setattr(view, name, v)


def _make_struct_view(ct):
    label = getattr(ct, "_btf_name_", None) or ct.__name__
    if label == "?":
        label = ct.__name__
    members = _struct_members(ct)
    ns = {name: _guarded_member(ct, label, name) for name in members}
    fields = ", ".join(members)
    fields_of_ct = {f[0] for f in getattr(ct, "_fields_", ())}

    def __setattr__(self, name, value):
        if " " in name and name in fields_of_ct:  # pybpf's raw fields ("raw op"), set by the properties
            self._lease_.check()
            object.__setattr__(self, name, value)
            return
        if name not in ns:
            raise Error(f"{label} has no field {name!r} (fields: {fields})")
        ns[name].__set__(self, value)

    def __bytes__(self):
        self._lease_.check()
        return ctypes.string_at(ctypes.addressof(self), ctypes.sizeof(self))

    def __repr__(self):
        if self._lease_.sample.committed:
            return f"<{label} sample, submitted or discarded>"
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in members)
        return f"{label}({inner})"

    def to_python(self):
        """The sample's fields as plain Python values (dict)."""
        self._lease_.check()
        return {n: (getattr(self, n).to_python() if hasattr(getattr(self, n), "to_python") else getattr(self, n))
                for n in members}

    def __eq__(self, other):
        return bytes(self) == bytes(other) if isinstance(other, (bytes, bytearray, _CDATA)) else \
            self.to_python() == other

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        lease = self._lease_
        if lease.root is None or lease.root() is not self:
            raise Error("only the sample reserve() returned can be used as a context manager, not a member of it")
        if lease.sample.committed:
            return  # submitted or discarded inside the block
        if exc_type is None:
            lease.ring.submit(self)
        else:
            lease.ring.discard(self)

    ns.update(__setattr__=__setattr__, __bytes__=__bytes__, __repr__=__repr__, to_python=to_python,
              __eq__=__eq__, __hash__=None, __enter__=__enter__, __exit__=__exit__,
              __doc__=f"A {label} reserved in a user ring buffer: set its fields, then submit it.",
              _pybpf_sample_view_=True)
    return type(ct.__name__, (ct,), ns)


def _make_array_view(ct):
    elem = ct._type_
    label = getattr(ct, "_btf_name_", None) or ct.__name__
    nested = issubclass(elem, _COMPOUND)
    bits = 8 * ctypes.sizeof(elem) if issubclass(elem, ctypes._SimpleCData) and elem not in (
        ctypes.c_char, ctypes.c_bool, ctypes.c_float, ctypes.c_double) else 0
    base_get, base_set = ct.__getitem__, ct.__setitem__

    def __getitem__(self, i):
        lease = self._lease_
        lease.check()
        v = base_get(self, i)
        return lease.adopt(v) if nested and not isinstance(i, slice) else v

    def __setitem__(self, i, value):
        lease = self._lease_
        lease.check()
        if nested and not isinstance(i, slice):
            _fill(lease.adopt(base_get(self, i)), value, f"{label}[{i}]")
            return
        if bits and not isinstance(i, slice):
            value = _check_int(value, bits, f"{label}[{i}]")
        try:
            base_set(self, i, value)
        except (TypeError, ValueError) as e:
            raise Error(f"{label}[{i}]: cannot set {value!r} ({e})") from None

    def __bytes__(self):
        self._lease_.check()
        return ctypes.string_at(ctypes.addressof(self), ctypes.sizeof(self))

    def __repr__(self):
        if self._lease_.sample.committed:
            return f"<{label} in a sample, submitted or discarded>"
        return repr(list(self[i] for i in range(len(self))))

    return type(ct.__name__, (ct,), {"__getitem__": __getitem__, "__setitem__": __setitem__,
                                     "__bytes__": __bytes__, "__repr__": __repr__, "__hash__": None})


_view_classes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
type_ = type


class _Detached:
    """A lease for a view over a private buffer (encoding a plain ctypes type's dict)."""

    __slots__ = ("sample",)

    class _Open:
        committed = False

        def __len__(self):
            return 0

    def __init__(self):
        self.sample = self._Open()

    def check(self) -> None:
        pass

    def adopt(self, value):
        child = _view_class(type(value)).from_address(ctypes.addressof(value))
        child.__dict__["_lease_"] = self
        return child


def _detached_view(ct, buf: bytearray):
    view = _view_class(ct).from_buffer(buf)
    view.__dict__["_lease_"] = _Detached()
    return view


def _view_class(ct):
    """The guarded subclass of ctypes type ``ct`` typed samples are made of."""
    cls = _view_classes.get(ct)
    if cls is None:
        if issubclass(ct, ctypes.Array):
            cls = _make_array_view(ct)
        elif issubclass(ct, (ctypes.Structure, ctypes.Union)):
            cls = _make_struct_view(ct)
        else:
            raise Error(f"a typed sample must be a struct, union or array, not {ct.__name__}: use reserve(n)")
        _view_classes[ct] = cls
    return cls


if _ProducerBase is object:  # the C helper is not built (UserRingBuffer() says so): the methods by name
    for _name in ("reserve", "submit", "write", "write_batch"):
        setattr(UserRingBuffer, _name, getattr(UserRingBuffer, f"_{_name}_slow"))
    del _name

_packers: dict[tuple[int, int], list] = {}


def _nothing() -> None:
    pass


_PRODUCER_CODES = None


def _producer_codes() -> frozenset:
    """The code of the methods that take a UserRingBuffer's mutex."""
    global _PRODUCER_CODES
    if _PRODUCER_CODES is None:
        u = UserRingBuffer
        # (the C fast paths, Producer.reserve...,  hold no mutex and are not interruptible)
        _PRODUCER_CODES = frozenset(f.__code__ for f in (
            u._reserve_slow, u.reserve_blocking, u._wait_for_room, u._submit_slow, u.discard, u._write_slow,
            u._write_batch_slow, u.write_array, u.free.fget, u._locked_teardown, u._typed_view, u._commit_view))
    return _PRODUCER_CODES


def _uniform_length(items) -> int:
    """The common length of ``items`` when they all have one, else -1 (their
    types are left to struct.pack_into: its "s" takes bytes and bytearray)."""
    try:
        length = len(items[0])
        lengths = list(map(len, items))
    except TypeError:
        return -1
    return length if lengths.count(length) == len(lengths) else -1


def _packer(length: int, stride: int, count: int) -> tuple[struct.Struct, memoryview]:
    """A Struct writing ``count`` back-to-back samples of ``length`` bytes (zeros in
    their 8-byte headers), and the ``count`` headers (native u64: len, pg_off 0)."""
    key = (length, stride)
    table = _packers.get(key)
    if table is None:
        if len(_packers) >= 64:
            _packers.clear()
        table = _packers[key] = [None] * (_UNPACK_RUN.bit_length())
    i = count.bit_length() - 1
    entry = table[i]
    if entry is None:
        pad = stride - _HDR - length
        one = f"{_HDR}x{length}s" + (f"{pad}x" if pad else "")
        headers = memoryview(struct.pack(f"={count}Q", *[length << _HDR_SHIFT] * count)).cast("B").cast("Q")
        entry = table[i] = (struct.Struct("=" + one * count), headers)
    return entry

