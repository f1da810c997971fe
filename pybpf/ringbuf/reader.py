"""Kernel -> user: :class:`RingBuffer` reads the records a BPF program writes
into ``BPF_MAP_TYPE_RINGBUF`` maps, each map a :class:`Ring`."""

from __future__ import annotations

import ctypes
import mmap
import operator
import select
import struct
import threading
import time
from collections.abc import Callable

from .. import atomics
from . import arrays as _arrays
from ..errors import ClosedError, Error
from ..kernel.constants import MapType
from ._mapping import (
    _ALIGN, _DISCARD, _HDR, _LEN_MASK, _ROUND, _UNPACK_RUN, _claim, _Consumer, _Mapping,
    _check_map, _release_quietly, _run_all, _unclaim, _Waiter,
)

__all__ = ["RingBuffer", "Ring"]

# poll(): back-off when woken with nothing committed (BUSY head record), so that
# a loop around poll() does not spin on the level-triggered EPOLLIN.
_BUSY_BACKOFF = 0.001

# --- kernel -> user ---------------------------------------------------------
#
# A batch: pybpf_ringbuf_scan (the C helper) walks the committed headers from
# consumer_pos under one acquire of producer_pos and writes where each payload
# is; Python then makes every record object of the batch with C-level loops
# (map/slice, struct.unpack_from), hands them out, and releases consumer_pos
# once.  Nothing costs a ctypes call per record.

_NO_CALLBACK = object()     # RingBuffer(map) without a callback: read_batch/async only
_BATCH_RECORDS = 8192       # records per scan (the size of the scan's output buffer)
_NOT_UNIFORM = (1 << 64) - 1
_NO_LIMIT = (1 << 64) - 1
# read_batch: struct.Struct objects unpacking runs of equal records, by
# (length, stride): one per power of two up to _UNPACK_RUN records.
_unpackers: dict[tuple[int, int], list] = {}


def _unpacker(length: int, stride: int, count: int) -> struct.Struct:
    """A Struct reading ``count`` back-to-back records of ``length`` bytes (headers skipped)."""
    key = (length, stride)
    table = _unpackers.get(key)
    if table is None:
        if len(_unpackers) >= 64:
            _unpackers.clear()
        table = _unpackers[key] = [None] * (_UNPACK_RUN.bit_length())
    i = count.bit_length() - 1  # count is a power of two
    st = table[i]
    if st is None:
        pad = stride - _HDR - length
        one = f"{_HDR}x{length}s" + (f"{pad}x" if pad else "")
        st = table[i] = struct.Struct("=" + one * count)
    return st


def _unpack_records(out: list, buf, offset: int, length: int, stride: int, n: int) -> None:
    """Appends to ``out`` the ``n`` records of ``length`` bytes whose headers start at
    ``offset`` in ``buf``, ``stride`` apart, as bytes objects (one unpack per run)."""
    step = _UNPACK_RUN
    big = _unpacker(length, stride, step)
    while n >= step:
        out += big.unpack_from(buf, offset)
        offset += step * stride
        n -= step
    while n:
        count = 1 << (n.bit_length() - 1)
        out += _unpacker(length, stride, count).unpack_from(buf, offset)
        offset += count * stride
        n -= count


def _record_ctype(btf, type_spec, what: str):
    """The ctypes type of records of ``type_spec`` (see :func:`pybpf.spec.typed.record_ctype`)."""
    from ..spec.typed import record_ctype
    return record_ctype(btf, type_spec, what)


def _stops(ret) -> bool:
    """True when a callback's return value stops consuming: a negative int, as
    with libbpf's ring_buffer_sample_fn (None, 0 and positive values go on)."""
    return isinstance(ret, int) and not isinstance(ret, bool) and ret < 0


class Ring:
    """One ring of a :class:`RingBuffer`: a mapped ``RINGBUF`` map, its callback and counters.

    ``RingBuffer.rings`` lists them (the first is the map given to the
    constructor, then one per :meth:`RingBuffer.add`).  Counters: ``records``
    and ``bytes`` (payload bytes) handed out, ``discards`` (discarded records
    skipped); :attr:`available` is what the ring holds now.
    """

    def __init__(self, owner: RingBuffer, map, callback, type):  # noqa: A002
        self._owner = owner
        fd, self.name, size = _check_map(map, MapType.RINGBUF)
        self.fd = fd
        self.size = size
        self._mask = size - 1
        # Batch at most a quarter ring between consumer_pos releases when calling
        # back, so that a slow callback does not hold back the whole ring.
        self._batch_bytes = max(size // 4, _HDR)
        self.records = 0
        self.bytes = 0
        self.discards = 0
        self._btf = getattr(map, "btf", None)
        declared = getattr(map, "record_type", None)  # declared in the program, if any
        if type is None:
            type = declared
        if type is memoryview or type is bytes:
            type = None                               # raw records asked for explicitly
        self._type = type
        self._ctype = None                            # read_batch's array type, made on first use
        self._np_dtype = None                         # read_array's dtype of the record type, made on first use
        self._array_type_spec = self._type if self._type is not None else declared  # read_array's default
        self._callback = None
        if callback is not _NO_CALLBACK:
            if type is not None:
                from ..spec.typed import record_decoder
                decode = record_decoder(self._btf, type, f"ring buffer '{self.name}'")

                def typed(record, _decode=decode, _cb=callback):
                    return _cb(_decode(record))
                self._callback = typed
            else:
                self._callback = callback
        self._maps = []   # each mapping joins before it is made: _teardown finds it whatever happens
        self._views = []
        self._data = None
        page = mmap.PAGESIZE
        try:
            # consumer page: the only part user space may write
            cons = _Mapping(fd, page, 0, True, "consumer page", self.name, self._maps)
            # producer page + data twice, read-only
            prod = _Mapping(fd, page + 2 * size, page, False, "producer page and data", self.name, self._maps)
            self._cons_addr = cons.addr
            self._prod_addr = prod.addr
            self._data_addr = prod.addr + page
            self._views.append(prod.mem)  # released with the rest if the slice below is cut short
            self._data = prod.mem[page:]
            self._views.append(self._data)
        except BaseException:
            self._teardown()
            raise

    def _teardown(self) -> None:
        """Releases the views, then unmaps; every step runs even if one raises, and
        a call cut short (KeyboardInterrupt) is finished by the next one."""
        _run_all([*(lambda v=v: _release_quietly(v) for v in reversed(self._views)),
                  *(m.close for m in self._maps)])
        self._views = []
        self._data = None
        self._maps = []

    def __repr__(self) -> str:
        return f"<Ring '{self.name}' {self.size} bytes, {self.records} records>"

    @property
    def available(self) -> int:
        """Bytes between consumer_pos and producer_pos now (records being written included)."""
        owner = self._owner
        if not owner._lock.acquire(blocking=False):
            # A consume is running (maybe this is its callback): the mappings
            # stay until it returns, whatever close() does meanwhile.
            owner._check()
            return owner._load_u64(self._prod_addr) - owner._load_u64(self._cons_addr)
        try:
            owner._check()
            return owner._load_u64(self._prod_addr) - owner._load_u64(self._cons_addr)
        finally:
            owner._leave()

    def read_batch(self, max_records: int | None = None, type=None):  # noqa: A002
        """:meth:`RingBuffer.read_batch` for this ring alone."""
        owner = self._owner
        owner._enter()
        try:
            return self._read(max_records, type)
        finally:
            owner._leave()

    def read_array(self, max_records: int | None = None, dtype=None):
        """:meth:`RingBuffer.read_array` for this ring alone."""
        owner = self._owner
        owner._enter()
        try:
            return _arrays.read_ring(self, max_records, dtype)
        finally:
            owner._leave()

    # -- the batch loops (the owner's lock held, not closed) --

    def _scan(self, cons: int, limit: int, max_bytes: int, max_records: int, copy=None, copy_size: int = 0) -> int:
        owner = self._owner
        return owner._scan(self._prod_addr, self._data_addr, self._mask, cons, limit, max_bytes,
                           max_records, owner._out_addr, owner._res_addr, copy, copy_size)

    def _consume(self) -> int:
        """Hands every committed record to the callback, batch by batch; returns how
        many, or the callback's negative return value that stopped it."""
        owner = self._owner
        callback = self._callback
        if callback is None:
            raise Error(f"ring buffer '{self.name}' has no callback: use read_batch(), "
                        "or give one to RingBuffer()/add()")
        store = owner._store_u64
        res, out, outv = owner._res, owner._out, owner._outv
        deliver, at, at_addr = owner._deliver, owner._at, owner._at_addr
        data, mask, cons_addr = self._data, self._mask, self._cons_addr
        total = 0
        cons = owner._load_u64(cons_addr)  # only we write it
        while not owner._closed:
            n = self._scan(cons, _NO_LIMIT, self._batch_bytes, _BATCH_RECORDS)
            end = res[0]
            if end == cons:
                break
            if not n:  # only discarded records
                self.discards += res[3]
                store(cons_addr, end)
                cons = end
                continue
            common = res[2]
            base = cons & mask
            batch = data[base:base + (end - cons)]
            if common != _NOT_UNIFORM:
                first = out[0]
                stride = (common + _ROUND) & _ALIGN
                stop = first + n * stride
                starts = range(first, stop, stride)
                ends = range(first + common, stop + common, stride)
                offsets_addr = 0
            else:
                offsets = outv[:2 * n].tolist()
                starts, ends = offsets[0::2], offsets[1::2]
                first = stride = common = 0
                offsets_addr = owner._out_addr
            # the loop is the C helper's (deliver): callback(batch[start:end]) per record, each
            # view released when the callback kept it (else just freed), a kept export refused
            try:
                done, stopped = deliver(batch, first, stride, common, n, offsets_addr, callback, owner,
                                        _stops, at_addr)
            except BaseException:
                batch.release()
                if at[0]:       # the records handed over, the one whose callback raised included
                    total += self._stop_at(at[0] - 1, cons, starts, ends)
                if at[1]:
                    raise Error(f"ring buffer '{self.name}': the callback kept a buffer export of "
                                "its record (e.g. numpy.frombuffer); copy it with bytes(record)") from None
                raise
            batch.release()
            if done < n or stopped is not None:    # stopped by the callback's return value, or closed
                total += self._stop_at(done - 1, cons, starts, ends)
                return stopped if stopped is not None else total
            total += n
            self.records += n
            self.bytes += n * common if offsets_addr == 0 else sum(ends) - sum(starts)
            self.discards += res[3]
            # Only positions read from headers go here (CVE-2024-41009).
            store(cons_addr, end)
            cons = end
        return total

    def _stop_at(self, k: int, cons: int, starts, ends) -> int:
        """Consumption stopped after record ``k`` of a batch from ``cons``: moves
        consumer_pos just past it and counts; returns the records done."""
        end = cons + ((ends[k] + 7) & _ALIGN)
        self.records += k + 1
        self.bytes += sum(ends[:k + 1]) - sum(starts[:k + 1])
        self.discards += self._count_discards(cons, end)
        self._owner._store_u64(self._cons_addr, end)
        return k + 1

    def _count_discards(self, cons: int, end: int) -> int:
        hdr = self._data[:2 * self.size].cast("I")
        try:
            count = 0
            while cons < end:
                length = hdr[(cons & self._mask) >> 2]
                count += bool(length & _DISCARD)
                cons += ((length & _LEN_MASK) + _ROUND) & _ALIGN
            return count
        finally:
            hdr.release()

    def _read(self, max_records: int | None, type):  # noqa: A002
        """One pass: the records committed now, as a list of bytes or a ctypes array."""
        owner = self._owner
        if type is None:
            type = self._type
        elif type is memoryview or type is bytes:
            type = None
        if max_records is None:
            remaining = _NO_LIMIT
        elif isinstance(max_records, int) and max_records >= 0:
            remaining = max_records
        else:
            raise Error(f"max_records must be a non-negative int or None, not {max_records!r}")
        if type is not None:
            return self._read_typed(remaining, type)
        records: list = []
        store = owner._store_u64
        res, out, outv = owner._res, owner._out, owner._outv
        data, mask, cons_addr, size = self._data, self._mask, self._cons_addr, self.size
        cons = owner._load_u64(cons_addr)
        limit = _NO_LIMIT
        while remaining:
            n = self._scan(cons, limit, size, min(remaining, _BATCH_RECORDS))
            end = res[0]
            if end == cons:
                break
            limit = res[1]  # one pass: stop at the producer_pos seen first
            if n:
                base = cons & mask
                common = res[2]
                if common != _NOT_UNIFORM:
                    _unpack_records(records, data, base + out[0] - _HDR, common, (common + _ROUND) & _ALIGN, n)
                    self.bytes += n * common
                else:
                    blob = data[base:base + (end - cons)].tobytes()
                    offsets = outv[:2 * n].tolist()
                    starts, ends = offsets[0::2], offsets[1::2]
                    records += map(blob.__getitem__, map(slice, starts, ends))
                    self.bytes += sum(ends) - sum(starts)
                self.records += n
                remaining -= n
            self.discards += res[3]
            store(cons_addr, end)  # the records are copies: release at once
            cons = end
        return records

    def _array_type(self, type):  # noqa: A002
        if type is self._type:
            if self._ctype is None:
                self._ctype = _record_ctype(self._btf, type, f"ring buffer '{self.name}'")
            return self._ctype
        return _record_ctype(self._btf, type, f"ring buffer '{self.name}'")

    def _read_typed(self, remaining: int, type):  # noqa: A002
        """Like _read, into one ctypes array of the record type (records at least that long).

        The scan copies each record's first sizeof(type) bytes into the array
        as it goes: one memcpy per record in C, no Python per record.
        """
        owner = self._owner
        ctype = self._array_type(type)
        item = ctypes.sizeof(ctype)
        if not item:
            raise Error(f"ring buffer '{self.name}': records cannot be read as a 0-byte type")
        load, store = owner._load_u64, owner._store_u64
        res, outv = owner._res, owner._outv
        cons_addr = self._cons_addr
        cons = load(cons_addr)
        limit = load(self._prod_addr)  # one pass: what is there now
        # every record the array can take is at least item bytes: an upper bound
        cap = min(remaining, (limit - cons) // ((item + _ROUND) & _ALIGN))
        buf = bytearray(cap * item)
        total = 0
        short = None
        if cap:
            window = (ctypes.c_char * len(buf)).from_buffer(buf)
            addr = ctypes.addressof(window)
            try:
                while total < cap:
                    n = self._scan(cons, limit, self.size, min(cap - total, _BATCH_RECORDS), addr + total * item, item)
                    end = res[0]
                    if end == cons:
                        break
                    common, discards = res[2], res[3]
                    if n and (common == _NOT_UNIFORM or common < item):
                        offsets = outv[:2 * n].tolist()
                        starts, ends = offsets[0::2], offsets[1::2]
                        lengths = list(map(operator.sub, ends, starts))
                        if min(lengths) < item:
                            # A record too short for the type: the ones before it
                            # are returned; a call that meets it first consumes it
                            # and raises.
                            k = next(i for i, length in enumerate(lengths) if length < item)
                            if k == 0 and total == 0:
                                short = lengths[0]
                                end = cons + ((ends[0] + 7) & _ALIGN)
                                self.records += 1
                                self.bytes += short
                            else:
                                end = cons + starts[k] - _HDR
                            discards = self._count_discards(cons, end)
                            n, starts, ends = k, starts[:k], ends[:k]
                            cap = total + n
                        self.bytes += sum(ends) - sum(starts)
                    else:
                        self.bytes += n * common
                    self.discards += discards
                    self.records += n
                    total += n
                    store(cons_addr, end)
                    cons = end
            finally:
                del window  # the export: buf may shrink now
        del buf[total * item:]
        if short is not None:
            name = getattr(ctype, "_btf_name_", None) or ctype.__name__
            raise Error(f"ring buffer '{self.name}': a {short}-byte record is shorter than {name} "
                        f"({item} bytes); it was consumed")
        return (ctype * total).from_buffer(buf) if total else (ctype * 0)()


class RingBuffer(_Consumer):
    """Consumer of ``BPF_MAP_TYPE_RINGBUF`` maps.

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

    :meth:`read_batch` returns the committed records as copies instead (bytes,
    or one ctypes array of the record type), which is several times faster
    than a callback per record; ``await rb.read_batch_async()`` and
    ``async for record in rb`` do the same under asyncio.  The callback may be
    left out when only these are used.

    :meth:`add` adds more rings (libbpf's ``ring_buffer__add``), each with its
    own callback; :meth:`poll` waits for all of them with one epoll fd
    (:meth:`fileno`).  Counters: ``records``, ``bytes``, ``discards`` (totals;
    per ring in :attr:`rings`).

    Records are handed out in batches: consumer_pos is released once per batch
    (at most a quarter of the ring when calling back), after the batch.  If the
    callback raises, consumption stops, the record counts as consumed and the
    exception propagates.  If it returns a negative int (as a libbpf
    ``ring_buffer_sample_fn`` may), consumption stops too, the record counts
    as consumed, and :meth:`consume`/:meth:`poll` return that value; ``None``,
    0 and positive values go on.

    One consumer at a time: consume/poll/read_batch while another runs (from
    the callback or another thread) raises :class:`pybpf.Error`.  One consumer
    per ring in the process, as the kernel's protocol requires (a single
    consumer_pos): a second RingBuffer on a map that one already reads (the
    same map through another fd included, by its kernel id) raises
    :class:`pybpf.InUseError` until that one is closed; use :meth:`add` to
    read several maps with one object.

    :meth:`close` may be called from the callback or another thread: it takes
    effect when the running consume returns, and wakes a :meth:`poll` waiting
    in another thread at once (that poll raises :class:`pybpf.ClosedError`).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, map, callback: Callable[[memoryview], object] = _NO_CALLBACK, type=None):  # noqa: A002
        if callback is not _NO_CALLBACK and not callable(callback):
            raise Error(f"RingBuffer callback must be callable, not {callback!r}")
        _check_map(map, MapType.RINGBUF)  # a clear error before anything is mapped
        self.name = getattr(map, "name", "?")
        self.size = map.max_entries
        lib = atomics.library()  # fails clearly if the C helper is not built
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._scan = lib.pybpf_ringbuf_scan
        self._copy = lib.pybpf_ringbuf_copy  # read_array
        self._out = (ctypes.c_uint32 * (2 * _BATCH_RECORDS))()
        self._outv = memoryview(self._out).cast("B").cast("I")
        self._res = (ctypes.c_uint64 * 4)()
        self._out_addr = ctypes.addressof(self._out)
        self._res_addr = ctypes.addressof(self._res)
        self._deliver = atomics.module().deliver  # consume()'s per-record loop
        self._at = (ctypes.c_uint64 * 2)()        # deliver's record index, kept-export flag
        self._at_addr = ctypes.addressof(self._at)
        self._lock = threading.Lock()  # held while consuming: the mappings stay alive
        self._closed = True  # until fully set up: close() then undoes what exists
        self._rings: list[Ring] = []
        self._by_fd: dict[int, Ring] = {}
        self._claims: list = []   # the maps (by kernel id) this object is the consumer of
        self._waiters: list = []  # (loop, future) of read_batch_async calls waiting
        self._waiter = None       # the epoll set poll() waits on; close() wakes it
        try:
            self._waiter = _Waiter(select.epoll)
            self._closed = False
            self._add(map, callback, type)
        except BaseException:
            self._closed = True
            self._teardown()
            raise

    def add(self, map, callback: Callable[[memoryview], object] = _NO_CALLBACK, type=None) -> Ring:  # noqa: A002
        """Adds another ring (a ``RINGBUF`` map) with its own callback and type; returns it.

        Its records reach its callback from the same :meth:`consume`/:meth:`poll`,
        and its fd joins the epoll set behind :meth:`fileno`.
        """
        if callback is not _NO_CALLBACK and not callable(callback):
            raise Error(f"RingBuffer callback must be callable, not {callback!r}")
        self._enter()
        try:
            return self._add(map, callback, type)
        finally:
            self._leave()

    def _add(self, map, callback, type) -> Ring:  # noqa: A002
        fd, name, _ = _check_map(map, MapType.RINGBUF)
        if fd in self._by_fd:
            raise Error(f"map '{name}' (fd {fd}) is already a ring of this RingBuffer")
        claimed = len(self._claims)
        key = _claim("consumer", fd, name, self, self._claims,
                     "A ring buffer has one consumer_pos, so two consumers would hand out the same "
                     "records twice", "close that RingBuffer first, or add() the map's callback to it")
        if key is not None and len(self._claims) == claimed:  # this object has the map already (another fd)
            raise Error(f"map '{name}' ({key[1][0]} {key[1][-1]}) is already a ring of this RingBuffer")
        try:
            ring = Ring(self, map, callback, type)
            try:
                self._waiter.register(fd, select.EPOLLIN)  # level-triggered (see poll)
            except BaseException:
                ring._teardown()
                raise
        except BaseException:
            if key is not None:
                _unclaim(key, self)
                self._claims.remove(key)
            raise
        self._rings.append(ring)
        self._by_fd[fd] = ring
        return ring

    # -- life cycle --

    def close(self) -> None:
        """Unmaps the rings and closes the epoll fd.  Idempotent.

        Wakes a :meth:`poll` waiting in another thread (it raises
        :class:`pybpf.ClosedError`), ends ``async for`` loops and wakes
        ``read_batch_async`` waiters (they raise :class:`pybpf.ClosedError`).
        A consume running in another thread (or the callback calling close())
        stops after the current record, and the rings are unmapped when it
        returns.  Every step runs even if one fails or is interrupted
        (KeyboardInterrupt), and the next close() finishes what is left.
        """
        self._closed = True
        steps = [(lambda w=w: self._wake_async(w)) for w in list(self._waiters)]
        if self._waiter is not None:
            steps.append(self._waiter.close)
        steps.append(self._try_teardown)
        _run_all(steps)

    @staticmethod
    def _wake_async(waiter) -> None:
        try:
            waiter[0].call_soon_threadsafe(_wake, waiter[1])
        except RuntimeError:  # loop closed
            pass

    _KIND = "ring buffer"

    def _lock_holders(self) -> tuple:
        return (self, *self._rings)

    def _lock_codes(self) -> frozenset:
        return _consumer_codes()

    def _release_steps(self) -> list:
        steps = [ring._teardown for ring in self._rings]
        if self._waiter is not None:
            steps.append(self._waiter.close)  # the fds go now, or when the last poll() leaves
        if getattr(self, "_outv", None) is not None:
            steps.append(self._outv.release)
        return steps

    def __repr__(self) -> str:
        if self._closed:
            return f"<RingBuffer '{self.name}' closed>"
        more = f" + {len(self._rings) - 1} more rings" if len(self._rings) > 1 else ""
        return f"<RingBuffer '{self.name}' {self.size} bytes{more}>"

    def _enter(self) -> None:
        """Takes the consumer lock (one consumer at a time), or raises."""
        if not self._lock.acquire(blocking=False):
            self._check()
            raise Error(f"ring buffer '{self.name}': consume/poll/read_batch called from its own callback "
                        "or from two threads at once")
        if self._closed:
            self._lock.release()
            self._try_teardown()
            self._check()

    def _leave(self) -> None:
        self._lock.release()
        if self._closed:
            self._try_teardown()

    # -- counters --

    @property
    def rings(self) -> tuple[Ring, ...]:
        """The rings, in the order they were added (the constructor's first)."""
        return tuple(self._rings)

    @property
    def records(self) -> int:
        """Records handed out so far (all rings)."""
        return sum(r.records for r in self._rings)

    @property
    def bytes(self) -> int:
        """Payload bytes handed out so far (all rings)."""
        return sum(r.bytes for r in self._rings)

    @property
    def discards(self) -> int:
        """Discarded records skipped so far (all rings)."""
        return sum(r.discards for r in self._rings)

    @property
    def _callback(self):
        # the first ring's callback (as it is called: typed records decoded)
        return self._rings[0]._callback if self._rings else None

    @_callback.setter
    def _callback(self, callback) -> None:
        self._rings[0]._callback = callback

    # -- reading --

    def fileno(self) -> int:
        """An fd that is readable while a ring has data (for select/asyncio)."""
        if self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")
        return self._waiter.fileno()

    epoll_fd = fileno

    def consume(self) -> int:
        """Hands every committed record of every ring to its callback; returns how many.

        Never blocks.  Stops at the first record still being written (BUSY).
        A callback that returns a negative int stops it (later rings are not
        read), and that value is returned, as libbpf's ``ring_buffer__consume``.
        """
        self._enter()
        try:
            n = 0
            for ring in self._rings:
                got = ring._consume()
                if got < 0:
                    return got
                n += got
                if self._closed:
                    break
            return n
        finally:
            self._leave()

    def _consume_ready(self, fds) -> int:
        self._enter()
        try:
            n = 0
            for fd in fds:
                ring = self._by_fd.get(fd)
                if ring is not None and not self._closed:
                    got = ring._consume()
                    if got < 0:
                        return got  # stopped by a callback
                    n += got
            return n
        finally:
            self._leave()

    def poll(self, timeout_ms: int | float | None = -1) -> int:
        """Waits up to ``timeout_ms`` (-1 or None: forever) for data, then consumes.

        Returns the number of records handed to the callbacks: 0 on timeout, and
        possibly 0 when woken by a record that is still being written (then it
        backs off ~1 ms first, so a loop around poll() does not spin), or the
        negative value a callback returned to stop it (see :meth:`consume`).
        Signals interrupting the wait are retried (PEP 475); KeyboardInterrupt
        propagates.  :meth:`close` from another thread wakes the wait at once,
        and poll raises :class:`pybpf.ClosedError` (as it does when called on
        a closed ring buffer).
        """
        waiter = self._waiter
        if waiter is None or self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")
        timeout = -1 if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        deadline = time.monotonic() + timeout if timeout >= 0 else None
        ready = waiter.wait(timeout, max(len(self._rings), 1), f"ring buffer '{self.name}' is closed")
        if not ready:
            return 0
        n = self._consume_ready(ready)
        if n or self._closed:
            return n
        # Woken but nothing committed at the head (BUSY record), or only discards.
        pause = _BUSY_BACKOFF if deadline is None else min(_BUSY_BACKOFF, max(0.0, deadline - time.monotonic()))
        if pause:
            time.sleep(pause)
        return self.consume()

    def read_batch(self, max_records: int | None = None, type=None):  # noqa: A002
        """Takes the records committed now (at most ``max_records``), as copies.

        Returns a list of ``bytes``, one per record, in order, discarded records
        skipped; they stay valid after the call (the ring space is released
        before it returns).  Never blocks; an empty list when there is nothing.

        With ``type`` (a ctypes type or a BTF type spelling), or when the ring
        has a record type (``RingBuffer(..., type=)`` or declared by the
        program), returns one ctypes array of that type instead
        (``records[i].pid``; no numpy needed): the fast path for fixed-size
        records.  Records longer than the type are cut to it; a shorter record
        raises :class:`pybpf.Error` (after the records before it were returned
        by the previous call).  ``type=bytes`` gives raw records always.

        With several rings, every ring is read in order and the result is a
        list (typed records as separate values).
        """
        self._enter()
        try:
            if len(self._rings) == 1:
                return self._rings[0]._read(max_records, type)
            records: list = []
            left = max_records
            for ring in self._rings:
                got = ring._read(left, type)
                records += got
                if left is not None:
                    left -= len(got)
                    if not left:
                        break
            return records
        finally:
            self._leave()

    def read_array(self, max_records: int | None = None, dtype=None):
        """Takes the records committed now (at most ``max_records``) as one numpy
        structured array, copied out of the ring by one C loop; consumer_pos is
        released once, after the copy.  Never blocks; an empty array when there
        is nothing.

        ``dtype`` is the record's: by default the ring's record type
        (``RingBuffer(..., type=)``, or the one the program declares), turned
        into a numpy dtype from BTF (nested structs, arrays as sub-arrays, char
        arrays as ``S<n>`` bytes, enums as ints, padding kept); or a numpy
        dtype, a ctypes type or a BTF type spelling.  Then
        ``arr["pid"]``, ``np.bincount(arr["cpu"])``, ``arr["ns"].sum()``...

        Every record must be exactly ``dtype.itemsize`` bytes.  At the first
        record of another length the call stops: the records before it are
        returned, and the call that meets it first raises
        :class:`~pybpf.ringbuf.RecordSizeError`, leaving it (and all after it)
        unconsumed for :meth:`read_batch`.  Discarded records are skipped.

        With several rings, each is read in order and the arrays concatenated
        (one dtype for all).  Needs numpy (``pip install 'pybpf[numpy]'``).
        """
        self._enter()
        try:
            return _arrays.read_array(self, self._rings, max_records, dtype)
        finally:
            self._leave()

    async def read_batch_async(self, max_records: int | None = None, type=None):  # noqa: A002
        """:meth:`read_batch` under asyncio: waits (without blocking the loop) until
        there is at least one record.  Raises :class:`pybpf.ClosedError` when
        the ring buffer is closed meanwhile."""
        import asyncio
        woken = False
        while True:
            records = self.read_batch(max_records, type)
            if len(records):
                return records
            if woken:
                # Readable but nothing committed (BUSY head record, discards):
                # back off instead of spinning on the level-triggered fd.
                await asyncio.sleep(_BUSY_BACKOFF)
                woken = False
                continue
            await self._readable()
            woken = True

    async def _readable(self) -> None:
        import asyncio
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiter = (loop, future)
        self._waiters.append(waiter)  # before the check: close() either sees it or we see _closed
        try:
            epoll = self._waiter
            if self._closed or epoll is None:
                raise ClosedError(f"ring buffer '{self.name}' is closed")
            fd = epoll.fileno()
            try:
                loop.add_reader(fd, _wake, future)
            except (ValueError, OSError):
                self._check()  # closed meanwhile
                raise
            try:
                await future
            finally:
                loop.remove_reader(fd)
        finally:
            self._waiters.remove(waiter)
        self._check()

    def __aiter__(self):
        """``async for record in rb``: records as :meth:`read_batch` gives them,
        waiting for more without blocking the event loop; ends when the ring
        buffer is closed."""
        return self._records_async()

    async def _records_async(self):
        while True:
            try:
                records = await self.read_batch_async()
            except ClosedError:
                return
            for record in records:
                yield record


_CONSUMER_CODES = None


def _consumer_codes() -> frozenset:
    """The code of the methods that run with a RingBuffer's consumer lock held."""
    global _CONSUMER_CODES
    if _CONSUMER_CODES is None:
        _CONSUMER_CODES = frozenset(f.__code__ for f in (
            RingBuffer.consume, RingBuffer._consume_ready, RingBuffer.read_batch, RingBuffer.add,
            RingBuffer._enter, Ring.read_batch, Ring.available.fget))
    return _CONSUMER_CODES


def _wake(future) -> None:
    if not future.done():
        future.set_result(None)

