"""BPF ring buffers: read a RINGBUF map, write a USER_RINGBUF map (and, beside them,
the perf buffer of a PERF_EVENT_ARRAY map: :mod:`.perf`).

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

The package by concept: :mod:`._mapping` (the record layout and the mmap set-up
both kinds share), :mod:`.reader` (kernel -> user: :class:`RingBuffer`,
:class:`Ring`), :mod:`.user` (user -> kernel: :class:`UserRingBuffer`,
:class:`Sample`), :mod:`.arrays` (numpy: :meth:`RingBuffer.read_array`,
:meth:`UserRingBuffer.write_array`), :mod:`.rate` (:class:`RateMeter`), :mod:`.perf`
(:class:`~pybpf.ringbuf.perf.PerfBuffer`, the older per-CPU perf event rings; imported on
first use, ``pybpf.PerfBuffer``).
"""

from ._mapping import (  # noqa: F401  (the names pybpf.ringbuf had before the split)
    _ALIGN, _BUSY, _DISCARD, _HDR, _HDR_SHIFT, _LEN_MASK, _ROUND, _UNPACK_RUN, _Mapping, _PyBuffer,
    _check_map, _release_quietly,
)
from .arrays import RecordSizeError
from .rate import RateMeter
from .reader import _BATCH_RECORDS, _BUSY_BACKOFF, Ring, RingBuffer  # noqa: F401
from .user import (  # noqa: F401
    _DYNPTR_MAX_SIZE, _PLAIN_RELEASE, Sample, SampleClosedError, SampleExportedError, SampleSizeError,
    UserRingBuffer,
)

__all__ = ["RingBuffer", "Ring", "UserRingBuffer", "Sample", "SampleSizeError", "SampleClosedError",
           "SampleExportedError", "RecordSizeError", "RateMeter"]
