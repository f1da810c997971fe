"""pybpf/ringbuf/_mapping.py against the kernel: what both ring kinds share, the maps'
mmap layout and permissions, the map type checks, and closing (every fd and mapping
released, a closed buffer refusing work)."""

from __future__ import annotations

import mmap
import types

import pytest

import pybpf
from pybpf.kernel.constants import MapType
from pybpf.ringbuf import RingBuffer, UserRingBuffer

from ringbuf_common import obj  # noqa: F401  (the fixture)
from ringbuf_common import bpf_map_mappings, Collect, PAGE, SIZE


@pytest.mark.kernel
def test_ringbuf_mmap_permissions(obj):
    fd = obj.maps["rb"].fd
    # consumer page: read-write, exactly one page
    with mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=0):
        pass
    with pytest.raises(PermissionError):
        mmap.mmap(fd, 2 * PAGE, access=mmap.ACCESS_WRITE, offset=0)
    # producer page and data: read-only
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=PAGE)
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=2 * PAGE)
    with mmap.mmap(fd, PAGE + 2 * SIZE, access=mmap.ACCESS_READ, offset=PAGE):
        pass


# --- USER_RINGBUF: user -> kernel -------------------------------------------

@pytest.mark.kernel
def test_user_ringbuf_mmap_permissions(obj):
    fd = obj.maps["urb"].fd
    with pytest.raises(PermissionError):
        mmap.mmap(fd, PAGE, access=mmap.ACCESS_WRITE, offset=0)  # consumer page
    with mmap.mmap(fd, PAGE, access=mmap.ACCESS_READ, offset=0):
        pass
    with mmap.mmap(fd, PAGE + 2 * SIZE, access=mmap.ACCESS_WRITE, offset=PAGE):
        pass


# --- life cycle and errors --------------------------------------------------

@pytest.mark.kernel
def test_close_releases_every_fd_and_mapping(no_fd_leak, obj):
    base = bpf_map_mappings()
    rb = RingBuffer(obj.maps["rb"], Collect())
    urb = UserRingBuffer(obj.maps["urb"])
    assert bpf_map_mappings() == base + 4
    urb.reserve(8)  # left pending: close still unmaps
    rb.close()
    urb.close()
    assert bpf_map_mappings() == base
    rb.close()  # idempotent
    urb.close()
    with RingBuffer(obj.maps["rb"], Collect()), UserRingBuffer(obj.maps["urb"]):
        assert bpf_map_mappings() == base + 4
    assert bpf_map_mappings() == base


@pytest.mark.kernel
def test_a_closed_buffer_raises_closed_error(obj):
    rb = RingBuffer(obj.maps["rb"], Collect())
    rb.close()
    for call in (rb.consume, rb.poll, rb.fileno):
        with pytest.raises(pybpf.ClosedError):
            call()
    urb = UserRingBuffer(obj.maps["urb"])
    sample = urb.reserve(8)
    urb.close()
    assert urb.closed and rb.closed
    with pytest.raises(pybpf.ClosedError):
        urb.reserve(8)
    with pytest.raises(pybpf.ClosedError):
        urb.reserve_blocking(8, 10)
    with pytest.raises(pybpf.ClosedError):
        urb.write(b"1234")
    with pytest.raises(pybpf.ClosedError):
        urb.submit(sample)
    with pytest.raises(ValueError):
        sample.data[0] = 1  # released by close


def test_wrong_map_type_raises_a_clear_error():
    rb_like = types.SimpleNamespace(fd=-1, type=MapType.RINGBUF, max_entries=SIZE, name="rb")
    urb_like = types.SimpleNamespace(fd=-1, type=MapType.USER_RINGBUF, max_entries=SIZE, name="urb")
    hash_like = types.SimpleNamespace(fd=-1, type=MapType.HASH, max_entries=SIZE, name="h")
    with pytest.raises(pybpf.Error, match="RingBuffer needs a RINGBUF map; map 'urb' is a USER_RINGBUF.*UserRingBuffer"):
        RingBuffer(urb_like, print)
    with pytest.raises(pybpf.Error, match="UserRingBuffer needs a USER_RINGBUF map; map 'rb' is a RINGBUF"):
        UserRingBuffer(rb_like)
    with pytest.raises(pybpf.Error, match="map 'h' is a HASH map"):
        RingBuffer(hash_like, print)
    with pytest.raises(pybpf.Error, match="needs a pybpf Map"):
        UserRingBuffer(object())
    bad_size = types.SimpleNamespace(fd=-1, type=MapType.RINGBUF, max_entries=3 * PAGE, name="odd")
    with pytest.raises(pybpf.Error, match="power of two"):
        RingBuffer(bad_size, print)
    with pytest.raises(pybpf.Error, match="callable"):
        RingBuffer(rb_like, None)


@pytest.mark.kernel
def test_wrong_map_type_on_real_maps(no_fd_leak, obj):
    with pytest.raises(pybpf.Error, match="use UserRingBuffer"):
        RingBuffer(obj.maps["urb"], print)
    with pytest.raises(pybpf.Error, match="use RingBuffer"):
        UserRingBuffer(obj.maps["rb"])
