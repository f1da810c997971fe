"""Perf buffers: read a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` map.

The older way for a BPF program to stream records (``bpf_perf_event_output``):
one perf ring per CPU.  :class:`PerfBuffer` does what libbpf's ``perf_buffer``
does (tools/lib/bpf/libbpf.c), without libbpf:

* per CPU, ``perf_event_open`` a software event ``PERF_COUNT_SW_BPF_OUTPUT``
  (``sample_type = PERF_SAMPLE_RAW``, one wakeup per sample), map its ring
  (``struct perf_event_mmap_page`` then ``page_count`` data pages, read-write
  so that we can move ``data_tail``), enable it, and store its fd in the map at
  the CPU's index, where ``bpf_perf_event_output(..., BPF_F_CURRENT_CPU, ...)``
  finds it;
* read records from ``data_tail`` up to ``data_head`` (acquire: pairs with the
  kernel's ``smp_store_release`` in perf_output_put_handle), then release
  ``data_tail`` once per batch.  The data area is mapped once, so a record
  that wraps around its end is copied into one piece;
* ``PERF_RECORD_SAMPLE``: ``u32 size`` then the raw data, padded by the kernel
  so that size + 4 is a multiple of 8 (the callback gets ``size`` bytes, as
  with libbpf and bcc); ``PERF_RECORD_LOST``: ``u64 id, u64 lost`` when the
  ring was full.
"""

from __future__ import annotations

import mmap
import select
import struct
import threading
from collections.abc import Callable

from .. import atomics
from ..resource import deferred_signals
from ..errors import ClosedError, Error
from ..kernel import perf
from ..kernel import syscall as sc
from ..kernel.attrs import MapInfo
from ..kernel.constants import MapType
from ..kernel.cpus import online_cpus
from ._mapping import _claim, _Consumer, _Mapping, _release_quietly, _run_all, _Waiter
from .reader import _stops

__all__ = ["PerfBuffer"]

_HEADER = struct.Struct("=IHH")        # struct perf_event_header: type, misc, size
_LOST = struct.Struct("=QQ")           # after the header: id, lost
_U32 = struct.Struct("=I")
_HEAD = perf.PERF_MMAP_PAGE_DATA_HEAD  # offsets in struct perf_event_mmap_page
_TAIL = perf.PERF_MMAP_PAGE_DATA_TAIL
_DATA_OFFSET = perf.PERF_MMAP_PAGE_DATA_OFFSET


class _CpuRing:
    """The perf event and mapped ring of one CPU.

    The event fd is held by a file object (``open(fd, closefd=True)``) from the
    moment perf_event_open returns: closing it is idempotent, and a ring lost
    to an interrupt closes its fd when it is garbage.  Each teardown step is
    done once (a second close() does only what the first could not).
    """

    def __init__(self, cpu: int, file):
        self.cpu = cpu
        self.file = file
        self.fd = file.fileno()
        self.mappings: list[_Mapping] = []
        self.mapping = None
        self.data = None
        self.size = 0
        self.in_map = False   # its fd is in the map's slot for the CPU
        self.enabled = False

    def map(self, data_size: int, name: str) -> None:
        page = mmap.PAGESIZE
        mapping = _Mapping(self.fd, page + data_size, 0, True, f"perf ring of CPU {self.cpu}", name, self.mappings)
        self.mapping = mapping
        self.size = data_size
        header = mapping.mem[:page]
        # the data starts at data_offset (Linux 4.1+; one page before that)
        offset = struct.unpack_from("=Q", header, _DATA_OFFSET)[0] or page
        header.release()
        self.head_addr = mapping.addr + _HEAD
        self.tail_addr = mapping.addr + _TAIL
        self.data = mapping.mem[offset:offset + data_size]

    def close(self, map_fd: int) -> None:
        _run_all([lambda: self._clear_slot(map_fd), self._disable, self._unmap, self.file.close])

    def _clear_slot(self, map_fd: int) -> None:
        if self.in_map:
            try:
                sc.map_delete_elem(map_fd, struct.pack("=I", self.cpu))
            except Error:
                pass  # the map may be gone already
            self.in_map = False

    def _disable(self) -> None:
        if self.enabled and not self.file.closed:
            try:
                perf.ioctl(self.fd, perf.PERF_EVENT_IOC_DISABLE, 0)
            except Error:
                pass
            self.enabled = False

    def _unmap(self) -> None:
        if self.data is not None:
            _release_quietly(self.data)
        _run_all([m.close for m in self.mappings])
        self.data = None


class PerfBuffer(_Consumer):
    """Consumer of a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` map: one perf ring per CPU.

    ``PerfBuffer(map, callback, lost_callback)`` opens a BPF output event on
    every online CPU (that the map has a slot for) and maps its ring of
    ``page_count`` pages (a power of two).  :meth:`poll` and :meth:`consume`
    call ``callback(cpu, record)`` once per sample, in order per CPU, and
    ``lost_callback(cpu, count)`` when the kernel had to drop ``count`` samples
    because the CPU's ring was full.  A callback that returns a negative int
    stops :meth:`consume`/:meth:`poll`, which return that value.

    ``record`` is a read-only ``memoryview`` of the sample as the kernel
    stored it: ``bpf_perf_event_output``'s data padded with up to 7 bytes (the
    kernel keeps no exact length, as libbpf and bcc show too).  It is valid
    during the callback only (copy what you keep).  With ``type`` (a ctypes
    type or a BTF type spelling), the callback gets a typed copy instead.

    Counters: ``records``, ``bytes`` (as handed out) and ``lost``.  One
    consumer at a time; :meth:`close` (or the context manager) disables the
    events, removes them from the map and unmaps the rings; from another
    thread it wakes a waiting :meth:`poll`, which raises
    :class:`pybpf.ClosedError`.

    One PerfBuffer per map in the process (by the map's kernel id): a second
    would put its own events in the map's slots, and the first would get
    nothing more (:class:`pybpf.InUseError` until the first is closed).
    """

    def __init__(self, map, callback: Callable[[int, memoryview], object],
                 lost_callback: Callable[[int, int], object] | None = None,
                 page_count: int = 8, type=None):  # noqa: A002
        if not callable(callback):
            raise Error(f"PerfBuffer callback must be callable, not {callback!r}")
        if lost_callback is not None and not callable(lost_callback):
            raise Error(f"PerfBuffer lost_callback must be callable or None, not {lost_callback!r}")
        if not isinstance(page_count, int) or page_count <= 0 or page_count & (page_count - 1):
            raise Error(f"PerfBuffer page_count must be a power of two, not {page_count!r}")
        self.name = getattr(map, "name", "?")
        try:
            map_fd, map_type = map.fd, map.type
        except AttributeError as exc:
            raise Error(f"PerfBuffer needs a pybpf Map (with fd, type, name), not {map!r}") from exc
        if map_type != MapType.PERF_EVENT_ARRAY:
            try:
                type_name = MapType(map_type).name
            except ValueError:
                type_name = str(map_type)
            hint = " (use RingBuffer)" if map_type == MapType.RINGBUF else ""
            raise Error(f"PerfBuffer needs a PERF_EVENT_ARRAY map; map '{self.name}' is a {type_name} map{hint}")
        if type is not None and type is not memoryview:
            from ..spec.typed import record_decoder
            decode = record_decoder(getattr(map, "btf", None), type, f"perf buffer '{self.name}'")
            raw = callback

            def callback(cpu, record, _decode=decode, _cb=raw):
                return _cb(cpu, _decode(record))
        lib = atomics.library()
        self._load_u64 = lib.pybpf_load_acquire_u64
        self._store_u64 = lib.pybpf_store_release_u64
        self._callback = callback
        self._lost_callback = lost_callback
        self._map_fd = map_fd
        self.page_count = page_count
        self.records = 0
        self.bytes = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._closed = True
        self._rings: list[_CpuRing] = []
        self._by_fd: dict[int, _CpuRing] = {}
        self._claims: list = []
        self._waiter = None
        try:
            slots = sc.obj_get_info_by_fd(map_fd, MapInfo()).max_entries
            _claim("PerfBuffer", map_fd, self.name, self, self._claims,
                   "A PerfBuffer puts one event per CPU in the map's slots, so a second would take them "
                   "over and the first would get nothing more", "close that PerfBuffer first")
            self._waiter = _Waiter(select.epoll)
            for cpu in online_cpus():
                if cpu < slots:
                    self._open_cpu(cpu)
            if not self._rings:
                raise Error(f"perf buffer '{self.name}': the map has {slots} slots, no online CPU fits")
            self._closed = False
        except BaseException:
            self._teardown()
            raise

    def _open_cpu(self, cpu: int) -> None:
        attr = perf.PerfEventAttr(type=perf.PERF_TYPE_SOFTWARE, config=perf.PERF_COUNT_SW_BPF_OUTPUT,
                                  sample_type=perf.PERF_SAMPLE_RAW, sample_period=1, wakeup_events=1)
        # the fd owned by a file object (closed with it, or when it is garbage) and the
        # ring by this PerfBuffer, with SIGINT/SIGTERM handlers deferred until both are
        with deferred_signals():
            file = open(perf.perf_event_open(attr, pid=-1, cpu=cpu), "rb", buffering=0)  # noqa: SIM115
            ring = _CpuRing(cpu, file)
            self._rings.append(ring)
        fd = ring.fd
        self._by_fd[fd] = ring
        ring.map(self.page_count * mmap.PAGESIZE, self.name)
        ring.enabled = True  # first: disabling one that is not is harmless
        perf.ioctl(fd, perf.PERF_EVENT_IOC_ENABLE, 0)
        ring.in_map = True
        # bpf_perf_event_output(BPF_F_CURRENT_CPU) looks up the CPU's index
        sc.map_update_elem(self._map_fd, struct.pack("=I", cpu), struct.pack("=I", fd))
        self._waiter.register(fd, select.EPOLLIN)

    # -- life cycle --

    def close(self) -> None:
        """Disables the events, takes them out of the map, unmaps.  Idempotent.

        Wakes a :meth:`poll` waiting in another thread (it raises
        :class:`pybpf.ClosedError`); a consume running in another thread stops
        after the current sample and the rings go when it returns.  Every step
        runs even if one fails or is interrupted (KeyboardInterrupt), and the
        next close() finishes what is left.
        """
        self._closed = True
        _run_all([self._waiter.close if self._waiter is not None else _nothing, self._try_teardown])

    _KIND = "perf buffer"

    def _lock_codes(self) -> frozenset:
        return _consumer_codes()

    def _release_steps(self) -> list:
        steps = [(lambda r=r: r.close(self._map_fd)) for r in self._rings]
        if self._waiter is not None:
            steps.append(self._waiter.close)
        return steps

    @property
    def cpus(self) -> list[int]:
        """The CPUs with a ring."""
        return [r.cpu for r in self._rings]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._rings)} CPUs x {self.page_count} pages"
        return f"<PerfBuffer '{self.name}' {state}>"

    def fileno(self) -> int:
        """An fd that is readable when a CPU's ring has samples (for select/asyncio)."""
        self._check()
        return self._waiter.fileno()

    epoll_fd = fileno

    # -- reading --

    def consume(self) -> int:
        """Hands every sample of every CPU's ring to the callback; returns how many.

        A callback that returns a negative int stops it (that sample counts as
        consumed) and that value is returned; ``None``, 0 and positive values
        go on (as :meth:`pybpf.RingBuffer.consume`).
        """
        return self._consume(self._rings)

    def _consume(self, rings) -> int:
        if not self._lock.acquire(blocking=False):
            self._check()
            raise Error(f"perf buffer '{self.name}': consume/poll called from its own callback "
                        "or from two threads at once")
        try:
            self._check()
            n = 0
            for ring in rings:
                got = self._consume_ring(ring)
                if got < 0:
                    return got  # stopped by the callback
                n += got
                if self._closed:
                    break
            return n
        finally:
            self._lock.release()
            if self._closed:
                self.close()

    def _consume_ring(self, ring: _CpuRing) -> int:
        load, store = self._load_u64, self._store_u64
        callback, lost_callback = self._callback, self._lost_callback
        data, mask, size, cpu = ring.data, ring.size - 1, ring.size, ring.cpu
        count = 0
        stopped = None
        tail = load(ring.tail_addr)  # only we write it
        while not self._closed:
            head = load(ring.head_addr)  # pairs with the kernel's smp_store_release of data_head
            if head == tail:
                break
            try:
                while tail < head:
                    off = tail & mask
                    kind, _misc, length = _HEADER.unpack_from(data, off)  # 8-aligned: never split
                    if length < _HEADER.size:
                        raise Error(f"perf buffer '{self.name}': corrupt record header on CPU {cpu}")
                    if off + length <= size:
                        record = data[off:off + length]
                    else:  # wraps around the end of the data area: one piece
                        record = memoryview(bytes(data[off:]) + bytes(data[:off + length - size]))
                    tail += length
                    try:
                        if kind == perf.PERF_RECORD_SAMPLE:
                            raw = _U32.unpack_from(record, 8)[0]
                            sample = record[12:12 + raw]
                            count += 1
                            self.records += 1
                            self.bytes += raw
                            try:
                                ret = callback(cpu, sample)
                            finally:
                                _release_quietly(sample)
                            if ret is not None and _stops(ret):
                                stopped = ret  # consumed: tail is past it
                        elif kind == perf.PERF_RECORD_LOST:
                            lost = _LOST.unpack_from(record, 8)[1]
                            self.lost += lost
                            if lost_callback is not None:
                                lost_callback(cpu, lost)
                    finally:
                        _release_quietly(record)
                    if self._closed or stopped is not None:
                        break
            finally:
                # the records before tail are done with: the kernel may reuse them
                store(ring.tail_addr, tail)
            if stopped is not None:
                return stopped
        return count

    def poll(self, timeout_ms: int | float | None = -1) -> int:
        """Waits up to ``timeout_ms`` (-1 or None: forever) for samples, then consumes
        the CPUs that have some.  Returns the number of samples handed out, or
        the negative value a callback returned to stop it (see :meth:`consume`).
        :meth:`close` from another thread wakes the wait: poll then raises
        :class:`pybpf.ClosedError`."""
        waiter = self._waiter
        if waiter is None or self._closed:
            raise ClosedError(f"perf buffer '{self.name}' is closed")
        timeout = -1 if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        ready = waiter.wait(timeout, len(self._rings), f"perf buffer '{self.name}' is closed")
        if not ready:
            return 0
        # (perf_poll reports a wakeup once: no busy loop on an empty ring)
        by_fd = self._by_fd
        return self._consume([by_fd[fd] for fd in ready if fd in by_fd])


def _nothing() -> None:
    pass


def _consumer_codes() -> frozenset:
    return frozenset(f.__code__ for f in (PerfBuffer.consume, PerfBuffer._consume, PerfBuffer._consume_ring))
