"""numpy arrays of records: RingBuffer.read_array, UserRingBuffer.write_array and
the dtypes made from BTF (pybpf.spec.dtypes).

Kernel side as in tests/test_ringbuf_batch.py: programs/ringbuf_test.bpf.c
(16 KiB rings, records of any size, ``drain`` echoing user samples into
``rb``) and programs/bench_ringbuf.bpf.c (64 MiB rings, 24-byte
``struct bench_event`` declared as ``rb``'s record type; ``hold`` keeps a
record BUSY at the head).
"""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest

import pybpf  # noqa: E402
from pybpf.ringbuf import RecordSizeError, RingBuffer, UserRingBuffer  # noqa: E402
from pybpf.spec.dtypes import c_strings, dtype_of  # noqa: E402

from btf_builder import BTFBuilder  # noqa: E402
from conftest import program  # noqa: E402
from ringbuf_common import FILL, SIZE, drain, produce, record, seen  # noqa: E402
from test_ringbuf_batch import FakeRing, bench_produce, run_hold  # noqa: E402,F401
from test_ringbuf_batch import fake  # noqa: E402,F401  (the fixture)


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        o.variables["fill"].set(FILL)
        yield o


@pytest.fixture
def bench():
    with pybpf.load(program("bench_ringbuf")) as o:
        yield o


def rec_dtype(size: int):
    """ringbuf_test's records of ``size`` bytes: u32 seq, then FILL's bytes."""
    return np.dtype([("seq", "<u4"), ("fill", "u1", (size - 4,))])


# --- dtypes from BTF (no kernel) ---------------------------------------------------

def test_dtype_of_a_record_keeps_offsets_padding_and_nesting():
    b = BTFBuilder()
    u8 = b.int_("unsigned char", 1)
    char = b.int_("char", 1, enc=2, signed=True)
    u16 = b.int_("unsigned short", 2)
    s32 = b.int_("int", 4, signed=True)
    u64 = b.int_("unsigned long long", 8)
    dbl = b.float_("double", 8)
    e = b.enum("state", [("A", 0), ("B", 7)], size=4, signed=True)
    comm = b.array(char, 16)
    addr = b.array(u8, 4)
    grid = b.array(b.array(u16, 3), 2)   # u16 [2][3]
    inner = b.struct("inner", 8, [("lo", s32, 0), ("hi", s32, 32)])
    anon = b.union("", 8, [("as_u64", u64, 0), ("as_f64", dbl, 0)])
    ptr = b.ptr(inner)
    ev = b.struct("event", 80, [
        ("pid", s32, 0), ("state", e, 32), ("ts", u64, 64), ("comm", comm, 128), ("addr", addr, 256),
        ("grid", grid, 288), ("in", b.typedef("inner_t", inner), 384), ("", anon, 448), ("p", ptr, 512),
        ("flag", b.int_("_Bool", 1, enc=4), 576),
    ])  # 7 bytes of tail padding
    btf = b.btf()
    dt = dtype_of(btf, ev)
    assert dt.itemsize == 80
    assert dt.names == ("pid", "state", "ts", "comm", "addr", "grid", "in", "as_u64", "as_f64", "p", "flag")
    assert [dt.fields[n][1] for n in dt.names] == [0, 4, 8, 16, 32, 36, 48, 56, 56, 64, 72]
    assert dt["comm"] == np.dtype("S16") and dt["addr"] == np.dtype(("u1", (4,)))
    assert dt["grid"].shape == (2, 3) and dt["grid"].base == np.dtype("=u2")
    assert dt["state"] == np.dtype("=i4") and dt["p"] == np.dtype("=u8") and dt["flag"] == np.dtype("?")
    assert dt["in"].names == ("lo", "hi")
    # the bytes a C program would write read back by field
    raw = bytearray(80)
    struct.pack_into("<iiQ16s4B", raw, 0, -5, 7, 1 << 40, b"bash", 1, 2, 3, 4)
    struct.pack_into("<6H", raw, 36, *range(6))
    struct.pack_into("<iid", raw, 48, -1, 2, 1.5)
    a = np.frombuffer(bytes(raw), dt)
    assert (a["pid"][0], a["state"][0], a["ts"][0], a["comm"][0]) == (-5, 7, 1 << 40, b"bash")
    assert a["addr"][0].tolist() == [1, 2, 3, 4] and a["grid"][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert (a["in"]["lo"][0], a["in"]["hi"][0], a["as_f64"][0]) == (-1, 2, 1.5)


def test_dtype_of_refuses_bitfields_and_loops_naming_them():
    b = BTFBuilder()
    u32 = b.int_("unsigned int", 4)
    bits = b.struct("flags", 4, [("a", u32, 0, 3), ("b", u32, 3, 5)], kflag=1)
    loop = b.struct("loop", 8, [("next", 0, 0)])
    b.set_member_type(loop, 0, loop + 1)
    b.array(loop, 1)  # loop + 1: an array of the struct itself
    btf = b.btf()
    with pytest.raises(pybpf.Error, match=r"flags\.a is a bitfield"):
        dtype_of(btf, bits)
    with pytest.raises(pybpf.Error, match=str(loop)):
        dtype_of(btf, loop)


# --- read_array --------------------------------------------------------------------

@pytest.mark.kernel
def test_read_array_of_the_declared_type_equals_read_batch(bench):
    with RingBuffer(bench.maps["rb"]) as rb:
        assert bench_produce(bench, 5000, start_seq=10) == 5000
        arr = rb.read_array()
        assert arr.dtype.names == ("seq", "cpu", "flags", "value") and arr.dtype.itemsize == 24
        assert bench_produce(bench, 5000, start_seq=10) == 5000
        raw = rb.read_batch(type=bytes)
        assert rb.records == 10000 and rb.read_array().shape == (0,)
    assert len(arr) == 5000 and arr["seq"].tolist() == list(range(10, 5010))
    # the same records, byte for byte, but for the CPU each run landed on
    again = np.frombuffer(b"".join(raw), arr.dtype)
    for field in ("seq", "flags", "value"):
        assert (arr[field] == again[field]).all()


@pytest.mark.kernel
def test_read_array_across_wrap_around_with_discards(obj):
    dt = rec_dtype(20)   # 32 bytes in the ring: a 16 KiB ring holds 512
    expected_fill = np.frombuffer(FILL[:16], np.uint8)
    with RingBuffer(obj.maps["rb"]) as rb:
        seq = 0
        got, expected = [], []
        for i in range(60):
            n = 37 + i % 200
            assert produce(obj, n, 20, discard_every=5, start_seq=seq) == n - n // 5
            arr = rb.read_array(dtype=dt)
            got += arr["seq"].tolist()
            assert (arr["fill"] == expected_fill).all()
            expected += [seq + j for j in range(n) if (j + 1) % 5]  # produce discards every 5th of a call
            seq += n
        assert seq * 32 > 5 * SIZE  # wrapped around many times
        assert got == expected
        assert rb.discards == seq - len(got) and rb.records == len(got)
        # max_records takes a prefix, the rest stays
        assert produce(obj, 10, 20, start_seq=0) == 10
        assert rb.read_array(4, dt)["seq"].tolist() == [0, 1, 2, 3]
        assert rb.read_array(dtype=dt)["seq"].tolist() == list(range(4, 10))


@pytest.mark.kernel
def test_read_array_stops_at_a_record_of_another_size_and_leaves_it(obj):
    dt = rec_dtype(12)
    with RingBuffer(obj.maps["rb"]) as rb:
        assert produce(obj, 3, 12, start_seq=0) == 3
        assert produce(obj, 2, 20, start_seq=3) == 2
        assert produce(obj, 2, 12, start_seq=5) == 2
        assert rb.read_array(dtype=dt)["seq"].tolist() == [0, 1, 2]
        for _ in range(2):  # raising consumes nothing
            with pytest.raises(RecordSizeError, match="a 20-byte record does not match") as err:
                rb.read_array(dtype=dt)
            assert (err.value.length, err.value.itemsize) == (20, 12)
            assert isinstance(err.value, pybpf.Error) and rb.records == 3
        assert rb.read_batch(2) == [record(3, 20), record(4, 20)]
        assert rb.read_array(dtype=dt)["seq"].tolist() == [5, 6]


@pytest.mark.kernel
def test_read_array_without_a_record_type_asks_for_a_dtype(obj):
    with RingBuffer(obj.maps["rb"]) as rb:
        with pytest.raises(pybpf.Error, match="pass dtype="):
            rb.read_array()


@pytest.mark.kernel
def test_read_array_waits_for_a_busy_record_at_the_head(bench):
    with RingBuffer(bench.maps["rb"]) as rb:
        for attempt in range(10):
            seq = 100 * (attempt + 1)
            during, ret = run_hold(bench, seq, lambda: rb.read_array())
            after = rb.read_array()["seq"].tolist()
            if during is not None:
                break
        else:
            pytest.fail("hold never kept its record BUSY while we looked, 10 times (a starved machine?)")
        assert len(during) == 0 and ret == 1
        assert after == [seq, seq + 1, seq + 2, seq + 3]


def test_read_array_on_a_fake_ring_busy_in_the_middle_and_discards(fake):  # noqa: F811
    dt = np.dtype([("v", "<u4"), ("pad", "u1", (12,))])
    fake.write(b"x" * 3, discard=True)
    fake.write(struct.pack("<I", 1) + bytes(12))
    b = fake.write(struct.pack("<I", 2) + bytes(12), busy=True)
    fake.write(struct.pack("<I", 3) + bytes(12))
    with RingBuffer(fake.map) as rb:
        assert rb.read_array(dtype=dt)["v"].tolist() == [1]
        assert rb.read_array(dtype=dt)["v"].tolist() == []
        fake.commit(b)
        assert rb.read_array(dtype=dt)["v"].tolist() == [2, 3]
        assert (rb.records, rb.discards) == (3, 1)


@pytest.mark.kernel
def test_several_rings_concatenate(obj, bench):
    dt = np.dtype([("seq", "<u8"), ("rest", "V16")])
    with RingBuffer(bench.maps["rb"], type=bytes) as rb:
        with pybpf.load(program("bench_ringbuf")) as other:
            rb.add(other.maps["rb"])
            assert bench_produce(bench, 3, start_seq=0) == 3
            assert bench_produce(other, 2, start_seq=50) == 2
            assert rb.read_array(dtype=dt)["seq"].tolist() == [0, 1, 2, 50, 51]
            # a struct dtype with padding keeps its layout across the rings (numpy 2's
            # concatenate would pack it to 8 bytes)
            padded = np.dtype({"names": ["seq"], "formats": ["<u8"], "itemsize": 24})
            assert bench_produce(bench, 2, start_seq=7) == 2
            assert bench_produce(other, 1, start_seq=9) == 1
            got = rb.read_array(dtype=padded)
            assert got.dtype == padded and got.dtype.itemsize == 24 and got["seq"].tolist() == [7, 8, 9]


# --- write_array -----------------------------------------------------------------

@pytest.mark.kernel
def test_write_array_is_drained_by_the_program_in_order(obj):
    dt = rec_dtype(12)
    samples = np.zeros(300, dt)
    samples["seq"] = np.arange(1000, 1300)
    samples["fill"] = np.arange(8, dtype=np.uint8) * 3
    with UserRingBuffer(obj.maps["urb"]) as urb, RingBuffer(obj.maps["rb"]) as rb:
        echoed = []
        first = 0
        while first < len(samples):  # 24 bytes each in a 16 KiB ring: wraps, drained as we go
            n = urb.write_array(samples[first:first + 250])
            assert n > 0
            assert drain(obj, echo=True) == n
            echoed.append(rb.read_array(dtype=dt))
            first += n
        back = np.concatenate(echoed)
        assert back.tobytes() == samples.tobytes()  # the BPF program saw them in order, byte for byte
        assert seen(obj, 44, 256) == list(range(1044, 1300))  # the program's own record of the last 256
        assert urb.records == 300 and urb.bytes == 300 * 12


@pytest.mark.kernel
def test_write_array_stops_when_full_and_checks_the_sample_type(obj):
    class Sample(ctypes.Structure):
        _fields_ = [("seq", ctypes.c_uint32), ("x", ctypes.c_uint32)]

    with UserRingBuffer(obj.maps["urb"], type=Sample) as urb:
        with pytest.raises(pybpf.Error, match="12-byte samples"):
            urb.write_array(np.zeros(3, rec_dtype(12)))
        arr = np.zeros(1000, np.dtype(Sample))  # 16 bytes each in the ring: 1024 fit
        arr["seq"] = np.arange(1000)
        assert urb.write_array(arr) == 1000
        assert urb.write_array(arr) == SIZE // 16 - 1000  # then full: a prefix
        assert drain(obj) == SIZE // 16
        assert urb.write_array(arr[:0]) == 0


def test_c_strings_cut_each_element_at_its_first_nul():
    a = np.array([b"present\0I\x22 python", b"ab", b"", b"\0junk", b"full-width-x"], dtype="S12")
    assert a[0] != b"present"                        # numpy keeps the bytes after the NUL
    got = c_strings(a)
    assert got.tolist() == [b"present", b"ab", b"", b"", b"full-width-x"]
    assert a[0] == b"present\0I\x22 p"                  # the input is left as it was
    field = np.zeros(2, np.dtype([("n", "<u4"), ("s", "S6")]))
    field["s"] = [b"x\0yz", b"abc"]
    assert c_strings(field["s"]).tolist() == [b"x", b"abc"]   # a strided field view
    with pytest.raises(pybpf.Error, match="dtype S<n>"):
        c_strings(np.zeros(2, "<u4"))
