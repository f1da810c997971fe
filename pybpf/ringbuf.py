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

Speed comes from batches, never from a ctypes call per record: the consumer
scans a batch of headers in one C call and releases consumer_pos once per
batch, then makes the batch's Python objects with C-level loops
(``struct.unpack_from`` of a whole run of equal records, ``map``/``slice``);
the producer publishes a whole :meth:`UserRingBuffer.write_batch` with one
producer_pos release.  ``tools/bench_ringbuf.py`` measures all of it against
libbpf (see README, Performance).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap
import operator
import os
import queue
import select
import struct
import sys
import threading
import time
from collections.abc import Callable

from . import atomics
from .resource import Resource
from .errors import ClosedError, Error, PermissionError, RingBufferFullError, SyscallError, TimeoutError
from .kernel.constants import BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, MapType

__all__ = ["RingBuffer", "Ring", "UserRingBuffer", "Sample", "SampleSizeError", "RateMeter"]

_BUSY = BPF_RINGBUF_BUSY_BIT
_DISCARD = BPF_RINGBUF_DISCARD_BIT
_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)
_HDR = BPF_RINGBUF_HDR_SZ
# round_up(len + 8, 8) == (len + _ROUND) & _ALIGN
_ROUND = _HDR + 7
_ALIGN = ~7
# A header as one native u64: u32 len first, u32 pg_off = 0 after it.
_HDR_SHIFT = 0 if sys.byteorder == "little" else 32
# x86 is TSO: a store-release is a plain store (the kernel's smp_store_release
# is a compiler barrier and a MOV there).  A memoryview store is a MOV the C
# compiler cannot move across the interpreter's calls, so the user ring
# producer publishes producer_pos with it: ~40 ns instead of a ~150-350 ns
# ctypes call per sample.  Elsewhere (arm64...) it calls the C helper.
_PLAIN_RELEASE = os.uname().machine.lower() in ("x86_64", "amd64", "i386", "i686")
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
_UNPACK_RUN = 256
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
    from .spec.typed import record_ctype
    return record_ctype(btf, type_spec, what)


class _KeptExport(Exception):
    """A record view could not be released after its callback (internal)."""


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
        if type is None:
            type = getattr(map, "record_type", None)  # declared in the program, if any
        if type is memoryview or type is bytes:
            type = None                               # raw records asked for explicitly
        self._type = type
        self._ctype = None                            # read_batch's array type, made on first use
        self._callback = None
        if callback is not _NO_CALLBACK:
            if type is not None:
                from .spec.typed import record_decoder
                decode = record_decoder(self._btf, type, f"ring buffer '{self.name}'")

                def typed(record, _decode=decode, _cb=callback):
                    return _cb(_decode(record))
                self._callback = typed
            else:
                self._callback = callback
        self._maps = []
        self._views = []
        page = mmap.PAGESIZE
        try:
            # consumer page: the only part user space may write
            cons = _Mapping(fd, page, 0, True, "consumer page", self.name)
            self._maps.append(cons)
            # producer page + data twice, read-only
            prod = _Mapping(fd, page + 2 * size, page, False, "producer page and data", self.name)
            self._maps.append(prod)
        except BaseException:
            self._teardown()
            raise
        self._cons_addr = cons.addr
        self._prod_addr = prod.addr
        self._data_addr = prod.addr + page
        self._data = prod.mem[page:]
        self._views.append(self._data)

    def _teardown(self) -> None:
        for view in reversed(self._views):
            view.release()
        self._views = []
        self._data = None
        for m in self._maps:
            m.close()
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

    # -- the batch loops (the owner's lock held, not closed) --

    def _scan(self, cons: int, limit: int, max_bytes: int, max_records: int, copy=None, copy_size: int = 0) -> int:
        owner = self._owner
        return owner._scan(self._prod_addr, self._data_addr, self._mask, cons, limit, max_bytes,
                           max_records, owner._out_addr, owner._res_addr, copy, copy_size)

    def _consume(self) -> int:
        """Hands every committed record to the callback, batch by batch; returns how many."""
        owner = self._owner
        callback = self._callback
        if callback is None:
            raise Error(f"ring buffer '{self.name}' has no callback: use read_batch(), "
                        "or give one to RingBuffer()/add()")
        store = owner._store_u64
        res, out, outv = owner._res, owner._out, owner._outv
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
            else:
                offsets = outv[:2 * n].tolist()
                starts, ends = offsets[0::2], offsets[1::2]
            # One view at a time, each gone before the next: a list of them
            # would survive into older GC generations and make the collector
            # walk them (and everything else) again and again.
            start = None
            view = None
            try:
                for start, stop in zip(starts, ends):
                    view = batch[start:stop]
                    callback(view)
                    try:
                        view.release()  # a reference kept past the callback cannot read the ring
                    except BufferError:
                        raise _KeptExport from None
                    if owner._closed:  # close() from the callback or another thread stops here
                        break
                else:
                    start = None
            except BaseException as exc:
                if view is not None:
                    _release_quietly(view)
                batch.release()
                if start is not None:  # else interrupted before the first record
                    total += self._stop_at(starts.index(start), cons, starts, ends)
                if isinstance(exc, _KeptExport):
                    raise Error(f"ring buffer '{self.name}': the callback kept a buffer export of "
                                "its record (e.g. numpy.frombuffer); copy it with bytes(record)") from None
                raise
            batch.release()
            if start is not None:  # closed
                return total + self._stop_at(starts.index(start), cons, starts, ends)
            total += n
            self.records += n
            self.bytes += n * common if common != _NOT_UNIFORM else sum(ends) - sum(starts)
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


class RingBuffer(Resource):
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
    exception propagates.  Its return value is ignored.

    One consumer at a time: consume/poll/read_batch while another runs (from
    the callback or another thread) raises :class:`pybpf.Error`.
    :meth:`close` may be called from the callback or another thread: it takes
    effect when the running consume returns.  Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, map, callback: Callable[[memoryview], object] = _NO_CALLBACK, type=None):  # noqa: A002
        if callback is not _NO_CALLBACK and not callable(callback):
            raise Error(f"RingBuffer callback must be callable, not {callback!r}")
        _check_map(map, MapType.RINGBUF)  # a clear error before anything is mapped
        lib = atomics.library()  # fails clearly if the C helper is not built
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._scan = lib.pybpf_ringbuf_scan
        self._out = (ctypes.c_uint32 * (2 * _BATCH_RECORDS))()
        self._outv = memoryview(self._out).cast("B").cast("I")
        self._res = (ctypes.c_uint64 * 4)()
        self._out_addr = ctypes.addressof(self._out)
        self._res_addr = ctypes.addressof(self._res)
        self._lock = threading.Lock()  # held while consuming: the mappings stay alive
        self._closed = True  # until fully set up: close() then undoes what exists
        self._rings: list[Ring] = []
        self._by_fd: dict[int, Ring] = {}
        self._waiters: list = []  # (loop, future) of read_batch_async calls waiting
        self._epoll = None
        try:
            self._epoll = select.epoll()
            self._closed = False
            self._add(map, callback, type)
        except BaseException:
            self._closed = True
            self._teardown()
            raise
        first = self._rings[0]
        self.name = first.name
        self.size = first.size

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
        ring = Ring(self, map, callback, type)
        try:
            self._epoll.register(fd, select.EPOLLIN)  # level-triggered (see poll)
        except BaseException:
            ring._teardown()
            raise
        self._rings.append(ring)
        self._by_fd[fd] = ring
        return ring

    # -- life cycle --

    def close(self) -> None:
        """Unmaps the rings and closes the epoll fd.  Idempotent.

        Ends ``async for`` loops and wakes ``read_batch_async`` waiters (they
        raise :class:`pybpf.ClosedError`).
        """
        self._closed = True
        for loop, future in list(self._waiters):
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # loop closed
                pass
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
        for ring in self._rings:
            ring._teardown()
        self._rings = []
        self._by_fd = {}
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if getattr(self, "_outv", None) is not None:
            self._outv.release()
            self._outv = None

    def __del__(self) -> None:
        if getattr(self, "_rings", None):
            self.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        if self._closed:
            return f"<RingBuffer '{self.name}' closed>"
        more = f" + {len(self._rings) - 1} more rings" if len(self._rings) > 1 else ""
        return f"<RingBuffer '{self.name}' {self.size} bytes{more}>"

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"ring buffer '{self.name}' is closed")

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
        return self._epoll.fileno()

    epoll_fd = fileno

    def consume(self) -> int:
        """Hands every committed record of every ring to its callback; returns how many.

        Never blocks.  Stops at the first record still being written (BUSY).
        """
        self._enter()
        try:
            n = 0
            for ring in self._rings:
                n += ring._consume()
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
                    n += ring._consume()
            return n
        finally:
            self._leave()

    def poll(self, timeout_ms: int | float | None = -1) -> int:
        """Waits up to ``timeout_ms`` (-1 or None: forever) for data, then consumes.

        Returns the number of records handed to the callbacks: 0 on timeout, and
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
            ready = epoll.poll(timeout, max(len(self._rings), 1))
        except (ValueError, OSError):
            self._check()  # closed by another thread during the wait
            raise
        if not ready:
            return 0
        n = self._consume_ready([fd for fd, _ in ready])
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
            epoll = self._epoll
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


def _wake(future) -> None:
    if not future.done():
        future.set_result(None)


# --- user -> kernel ---------------------------------------------------------

class Sample:
    """A sample reserved in a :class:`UserRingBuffer`, to fill and then submit.

    ``sample.data`` is a writable ``memoryview`` of exactly the reserved size,
    straight into the ring; ``sample[...]`` reads and writes through it.  It is
    released by :meth:`submit`/:meth:`discard` (the kernel owns the memory
    after that).  As a context manager it submits on success and discards if
    the block raises.
    """

    # set by UserRingBuffer.reserve (no __init__: cheaper); _index: of the header in u64s
    __slots__ = ("data", "_ring", "_pos", "_index")

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
        if self not in ring._pending:
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


class _ReleaseStores:
    """``cells[i] = v``: a release store of the u64 at ``addr + 8 * i`` through the
    C helper, where a memoryview store is not one (not x86: see _PLAIN_RELEASE)."""

    __slots__ = ("_addr", "_store")

    def __init__(self, addr: int, store):
        self._addr = addr
        self._store = store

    def __setitem__(self, i: int, value: int) -> None:
        self._store(self._addr + 8 * i, value)


class _Mutex:
    """A mutex made of a one-token ``queue.SimpleQueue``: ``get()`` takes the
    token (waiting, interruptibly, while another thread has it), ``put()`` gives
    it back.  Uncontended, a get/put pair costs half of ``threading.Lock``'s
    acquire/release in CPython 3.11 (which parses keyword arguments and reads
    the clock on every acquire), and the user ring producer takes it once or
    twice per sample.  ``with mutex:`` for the paths that are not hot."""

    __slots__ = ("take", "give")

    def __init__(self):
        q = queue.SimpleQueue()
        q.put(None)
        self.take = q.get
        self.give = q.put

    def __enter__(self):
        self.take()

    def __exit__(self, *exc):
        self.give(None)


class UserRingBuffer(Resource):
    """Producer for a ``BPF_MAP_TYPE_USER_RINGBUF`` map.

    ``reserve(n)`` returns a :class:`Sample` to fill, then ``submit(sample)``
    (or ``discard(sample)``) hands it to the kernel; a BPF program reads the
    submitted samples in order with ``bpf_user_ringbuf_drain``.  Several samples
    may be reserved at once; the drain stops at the oldest unsubmitted one.
    :meth:`write` does reserve + copy + submit in one call, :meth:`write_batch`
    publishes many samples with one release of producer_pos.

    Counters: ``records`` and ``bytes`` submitted, ``discards``; :attr:`free`
    is the room left now.

    One producer per map: the methods are serialized with a mutex, so threads
    of this process may share the object.  Use as a context manager or call
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
        self.records = 0
        self.bytes = 0
        self.discards = 0
        self._lock = _Mutex()
        self._take, self._give = self._lock.take, self._lock.give
        self._pending: set[Sample] = set()  # reserved, not yet submitted or discarded
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
            hdr = data.cast("Q")  # a whole header in one store: len, then pg_off = 0
            prod_pos = prod.mem[:8].cast("Q")
            payload = data[_HDR:]  # payload[off:off + n] is the sample whose header is at off
            self._views = (prod_pos, hdr, payload, data)
            self._data, self._hdr, self._payload = data, hdr, payload
            self._set_release(_PLAIN_RELEASE)
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
        for sample in self._pending:
            n = sample.data.nbytes
            _release_quietly(sample.data)
            self._xchg(self._data_addr + (sample._pos & self._mask), n | _DISCARD)
            self.discards += 1
        self._pending.clear()
        for view in self._views:
            view.release()
        self._views = ()
        self._data = self._hdr = self._payload = self._prod_pos = self._commit_hdr = None
        for m in self._maps:
            m.close()
        self._maps = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

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
        """The release stores: ``_prod_pos[0] = pos`` (producer_pos) and
        ``_commit_hdr[i] = header`` (the 8-byte header at data + 8 * i):
        memoryview stores on x86, the C helper elsewhere (see _PLAIN_RELEASE)."""
        if plain:
            self._prod_pos = self._views[0]
            self._commit_hdr = self._hdr
        else:
            self._prod_pos = _ReleaseStores(self._prod_addr, self._store_u64)
            self._commit_hdr = _ReleaseStores(self._data_addr, self._store_u64)

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
        sample = Sample()
        sample.data = self._payload[off:off + n]
        sample._ring = self
        sample._pos = prod
        sample._index = off >> 3
        self._pending.add(sample)
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
        # This and submit() run once per sample: every bytecode shows in the
        # rate (tools/bench_ringbuf.py), so the usual case is spelled out
        # here and everything else goes to _reserve/_commit.
        if n.__class__ is not int or n < 0 or n > self.max_sample:
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
            sample = Sample()
            sample.data = self._payload[off:off + n]
            sample._ring = self
            sample._pos = prod
            sample._index = index
            self._pending.add(sample)
            return sample
        finally:
            self._give(None)

    def _wait_for_room(self, total: int, deadline: float | None, backoff: float) -> float:
        """Waits (mutex not held) until ``total`` bytes may fit or the deadline; returns the next back-off."""
        epoll = self._epoll
        if epoll is None:
            raise ClosedError(f"user ring buffer '{self.name}' is closed")
        remaining = -1 if deadline is None else max(0.0, deadline - time.monotonic())
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
                fits = self._room(total)
            if not fits:
                pause = backoff if deadline is None else min(backoff, max(0.0, deadline - time.monotonic()))
                time.sleep(pause)
                backoff = min(backoff * 2, _FULL_BACKOFF_MAX)
        return backoff

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
        data = sample.data
        n = data.nbytes
        try:
            data.release()  # no writes through it after the commit
        except BufferError:
            raise Error(f"{what}(): something still holds a buffer export of sample.data "
                        "(e.g. numpy.frombuffer, ctypes from_buffer): drop it first; "
                        "the sample stays reserved") from None
        self._pending.remove(sample)
        # release: pairs with the drain's smp_load_acquire of the header
        self._commit_hdr[sample._index] = (n | flag) << _HDR_SHIFT
        if flag:
            self.discards += 1
        else:
            self.records += 1
            self.bytes += n

    def submit(self, sample: Sample) -> None:
        """Commits ``sample``: the kernel's drain will hand it to the BPF program."""
        self._take()
        try:
            try:
                self._pending.remove(sample)
            except (KeyError, TypeError):
                # not a pending sample of ours, or closed (close() empties
                # pending): _commit says which
                return self._commit(sample, 0, "submit")
            data = sample.data
            n = data.nbytes
            try:
                data.release()  # no writes through it after the commit
            except BufferError:
                self._pending.add(sample)
                return self._commit(sample, 0, "submit")  # explains
            # release: pairs with the drain's smp_load_acquire of the header
            self._commit_hdr[sample._index] = n << _HDR_SHIFT
            self.records += 1
            self.bytes += n
        finally:
            self._give(None)

    def discard(self, sample: Sample) -> None:
        """Abandons ``sample``: the kernel's drain skips it and frees the space."""
        self._take()
        try:
            self._commit(sample, _DISCARD, "discard")
        finally:
            self._give(None)

    def write(self, data, timeout_ms: int | float | None = 0) -> None:
        """Copies ``data`` (any bytes-like object) into the ring as one sample.

        ``timeout_ms=0`` (the default) raises :class:`RingBufferFullError` at
        once when there is no room; otherwise waits as :meth:`reserve_blocking`.
        """
        if data.__class__ is bytes or data.__class__ is bytearray:
            payload, n = data, len(data)
        else:
            payload = memoryview(data).cast("B")
            n = payload.nbytes
        total = self._check_size(n) if n > self.max_sample else (n + _ROUND) & _ALIGN
        if timeout_ms != 0:
            sample = self.reserve_blocking(n, timeout_ms)
            try:
                sample.data[:] = payload
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

    def write_batch(self, samples, timeout_ms: int | float | None = 0) -> int:
        """Copies every bytes-like object of ``samples`` into the ring, in order, as
        one sample each, and publishes them with one release of producer_pos.

        Returns how many were written: all of them, or fewer when the ring
        fills up (``timeout_ms=0``, the default) or stays full for
        ``timeout_ms`` (-1 or None: wait as long as it takes).  Raises
        :class:`SampleSizeError` before writing anything if a sample can never
        fit.  Equal-length ``bytes`` samples take the fastest path (one
        ``struct.pack_into`` per run of samples).
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

    def _sample_views(self, items) -> tuple[list, list]:
        """Every sample as bytes-like 'B' data and its size; raises SampleSizeError first."""
        views = [x if x.__class__ is bytes or x.__class__ is bytearray else memoryview(x).cast("B")
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


_packers: dict[tuple[int, int], list] = {}


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


# --- live rates -----------------------------------------------------------------

def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


class RateMeter:
    """Records/s and bytes/s of ring buffers, from their counters: a live status
    line for a consumer loop (``python -m pybpf load`` can print one)::

        meter = RateMeter(rb, urb)
        while True:
            rb.poll(1000)
            print(meter.line(), end="\\r")   # rates since the previous line

    Takes anything with ``records`` and ``bytes`` counters and a ``name``
    (:class:`RingBuffer`, :class:`Ring`, :class:`UserRingBuffer`,
    :class:`pybpf.PerfBuffer`).
    """

    def __init__(self, *buffers, clock: Callable[[], float] = time.monotonic):
        self.buffers = buffers
        self._clock = clock
        self._since = clock()
        self._counts = [(b.records, b.bytes) for b in buffers]

    def rates(self) -> list[tuple[str, float, float]]:
        """(name, records/s, bytes/s) of each buffer since the previous call (or since creation)."""
        now = self._clock()
        elapsed = max(now - self._since, 1e-9)
        counts = [(b.records, b.bytes) for b in self.buffers]
        rates = [(getattr(b, "name", "?"), (r - r0) / elapsed, (n - n0) / elapsed)
                 for b, (r, n), (r0, n0) in zip(self.buffers, counts, self._counts)]
        self._since, self._counts = now, counts
        return rates

    def line(self) -> str:
        """``"events: 1.23M records/s, 29.5MB/s | ..."`` (see :meth:`rates`)."""
        return " | ".join(f"{name}: {_si(records)} records/s, {_si(nbytes)}B/s"
                          for name, records, nbytes in self.rates())
