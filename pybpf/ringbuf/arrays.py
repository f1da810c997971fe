"""numpy arrays of ring buffer records: :meth:`RingBuffer.read_array` and
:meth:`UserRingBuffer.write_array`.

Both move a whole batch with one C loop of the helper (pybpf/_atomics.c:
``pybpf_ringbuf_copy`` copies committed records into the array back to back,
``pybpf_user_ringbuf_fill`` writes headers and samples from it) and one
release of consumer_pos or producer_pos per batch: no Python object per
record.  numpy is imported on first use (``pip install 'pybpf[numpy]'``).
"""

from __future__ import annotations

from ..errors import ClosedError, Error
from ..spec.dtypes import numpy, resolve_dtype
from ._mapping import _ALIGN, _ROUND

__all__ = ["RecordSizeError", "read_ring", "write_samples"]

_NO_SIZE = (1 << 64) - 1


class RecordSizeError(Error, ValueError):
    """:meth:`RingBuffer.read_array` met a committed record whose length is not the
    dtype's itemsize.  The record (and everything after it) stays in the ring,
    unconsumed: read it with ``read_batch()``, or pass a ``dtype`` of its size.
    ``length`` is its length, ``itemsize`` the dtype's."""

    def __init__(self, message: str, length: int, itemsize: int):
        super().__init__(message)
        self.length = length
        self.itemsize = itemsize


def ring_dtype(ring, dtype):
    """The dtype read_array uses on ``ring``: ``dtype``, or the ring's record type
    (given to RingBuffer, else declared by the program, even with type=memoryview)."""
    what = f"ring buffer '{ring.name}'"
    if dtype is None:
        cached = ring._np_dtype
        if cached is not None:
            return cached
        if ring._array_type_spec is None:
            raise Error(f"{what}: read_array() needs a record type: the program declares none for the map "
                        "(btf_decl_tag(\"pybpf:record=struct ...\")), so pass dtype= (a numpy dtype, "
                        "or a type spelling such as 'struct event')")
        ring._np_dtype = resolve_dtype(ring._btf, ring._array_type_spec, what)
        return ring._np_dtype
    return resolve_dtype(ring._btf, dtype, what)


def read_ring(ring, max_records: int | None, dtype):
    """One ring's part of read_array (the owner's lock held, not closed)."""
    np = numpy()
    dt = ring_dtype(ring, dtype)
    item = dt.itemsize
    if not item:
        raise Error(f"ring buffer '{ring.name}': records cannot be read as a 0-byte dtype")
    owner = ring._owner
    load = owner._load_u64
    cons = load(ring._cons_addr)   # only we write it
    limit = load(ring._prod_addr)  # one pass: what is there now
    # every record the array takes is item bytes: an upper bound on how many
    cap = (limit - cons) // ((item + _ROUND) & _ALIGN)
    if max_records is not None:
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 0:
            raise Error(f"max_records must be a non-negative int or None, not {max_records!r}")
        cap = min(cap, max_records)
    out = np.empty(cap, dt)
    res = owner._res
    n = owner._copy(ring._prod_addr, ring._data_addr, ring._mask, cons, limit, cap,
                    out.ctypes.data, item, owner._res_addr)
    end, discards, other = res[0], res[2], res[3]
    if end != cons:
        # pairs with the kernel's smp_load_acquire of consumer_pos: the space is free
        owner._store_u64(ring._cons_addr, end)
    ring.records += n
    ring.bytes += n * item
    ring.discards += discards
    if not n and other != _NO_SIZE:
        raise RecordSizeError(f"ring buffer '{ring.name}': a {other}-byte record does not match the dtype's "
                              f"{item} bytes ({dt}); it stays in the ring: read it with read_batch(), or pass "
                              "a dtype of its size", other, item)
    if n == cap:
        return out
    return out[:n].copy() if n < cap // 2 else out[:n]


def read_array(owner, rings, max_records: int | None, dtype):
    """RingBuffer.read_array over ``rings`` (the owner's lock held)."""
    if len(rings) == 1:
        return read_ring(rings[0], max_records, dtype)
    np = numpy()
    parts = []
    left = max_records
    for ring in rings:
        try:
            got = read_ring(ring, left, dtype)
        except RecordSizeError:
            if parts:
                break  # the records before it are returned; the next call raises
            raise
        parts.append(got)
        if left is not None:
            left -= len(got)
            if not left:
                break
    # dtype= keeps the record dtype whole: numpy 2 would pack a padded struct dtype
    return np.concatenate(parts, dtype=parts[0].dtype) if len(parts) > 1 else parts[0]


def sample_array(urb, arr):
    """``arr`` as a C-contiguous numpy array, its samples along the first axis,
    and the size of one sample; checks the sample type's size when there is one."""
    np = numpy()
    a = np.ascontiguousarray(arr)  # a copy only when arr is not contiguous already
    if a.ndim == 0:
        a = a.reshape(1)
    if a.dtype.hasobject:
        raise Error(f"user ring buffer '{urb.name}': write_array() takes arrays of plain data, not {a.dtype}")
    size = a.itemsize
    for dim in a.shape[1:]:
        size *= dim
    if urb._ctype is not None:
        want = urb._typed_size("write_array")
        if size != want:
            raise Error(f"user ring buffer '{urb.name}': write_array() got {size}-byte samples ({a.dtype}), "
                        f"but the sample type is {want} bytes")
    if size > urb.max_sample:
        urb._check_size(size)  # raises SampleSizeError
    return a, size


def write_samples(urb, a, first: int, size: int) -> int:
    """Writes samples a[first:] as far as they fit (the mutex held, not closed); returns how many."""
    if urb._closed:
        raise ClosedError(f"user ring buffer '{urb.name}' is closed")
    stride = (size + _ROUND) & _ALIGN
    want = len(a) - first
    if urb.size - (urb._prod - urb._cons) < want * stride:
        urb._room(want * stride)  # reloads consumer_pos
    n = min(want, (urb.size - (urb._prod - urb._cons)) // stride)
    if n:
        urb._prod = urb._fill(urb._data_addr, urb._mask, urb._prod, a.ctypes.data + first * size, size, n)
        urb._publish()  # release: the headers and samples written before are visible with it
        urb.records += n
        urb.bytes += n * size
    return n
