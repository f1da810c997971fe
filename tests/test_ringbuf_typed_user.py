"""Typed user ring buffer samples (issue 14): reserve() with no size gives a typed
view into the ring, write()/write_batch() take dicts, tuples and typed values.
Everything is checked on what the kernel's drain received: the echo of
ringbuf_test's ``drain``, the tracepoint of user_ringbuf, the hash map of
ring_commands."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

import pybpf
from pybpf.ringbuf import RingBuffer, Sample, SampleClosedError, SampleExportedError, UserRingBuffer
from conftest import program

pytestmark = pytest.mark.kernel


class Inner(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint16), ("y", ctypes.c_uint16)]


class Outer(ctypes.Structure):  # 20 bytes, nested members and arrays
    _fields_ = [("a", ctypes.c_uint32), ("inner", Inner), ("arr", ctypes.c_uint8 * 4), ("items", Inner * 2)]


@pytest.fixture
def rt(no_fd_leak):
    with pybpf.load(program("ringbuf_test")) as obj:
        yield obj


def echoed(obj, count: int) -> list[bytes]:
    """Drains ringbuf_test's urb with echo: the samples the kernel received, in order."""
    got = []
    with RingBuffer(obj.maps["rb"], lambda r: got.append(bytes(r))) as rb:
        ret = struct.unpack("<i", struct.pack("<I", obj.programs["drain"].test_run(
            ctx=struct.pack("<QI4x", 0, 1)).retval))[0]
        assert ret == count
        assert obj.variables["echo_failures"].get() == 0
        assert rb.consume() == count
    return got


def produce_args(count, size, discard_every, start_seq, flags) -> bytes:
    return struct.pack("<IIIIQ", count, size, discard_every, start_seq, flags)


@pytest.fixture
def commands(no_fd_leak):
    with pybpf.load(program("ring_commands")) as obj:
        yield obj


def apply(obj) -> int:
    return obj.programs["apply"].test_run().retval


def table(obj) -> dict:
    return dict(obj.maps["table"].items())


def test_typed_reserve_fill_submit_reaches_the_tutorial_tracepoint(no_fd_leak):
    with pybpf.load(program("user_ringbuf")) as obj:
        events = []
        with obj.programs["kill_exit"].attach(), \
                RingBuffer(obj.maps["kernel_ringbuf"], events.append) as rb, \
                UserRingBuffer(obj.maps["user_ringbuf"]) as urb:
            assert ctypes.sizeof(urb.sample_type) == 20  # struct user_sample, from the map's decl tag
            entry = urb.reserve()
            assert entry.i == 0 and entry.comm == ""     # zeroed, whatever the ring held
            entry.i = os.getpid()
            entry.comm = b"hello"
            assert bytes(entry) == struct.pack("<i16s", os.getpid(), b"hello")
            urb.submit(entry)
            os.kill(os.getpid(), 0)  # sys_exit_kill drains the user ring
            assert rb.poll(1000) == 1
            assert obj.variables["read"].get() == 1
            assert urb.free == urb.size
            assert urb.records == 1 and urb.bytes == 20
        assert [e.pid for e in events] == [os.getpid()]


def test_typed_view_by_name_reaches_the_drain_byte_for_byte(rt):
    with UserRingBuffer(rt.maps["urb"], type="struct produce_args") as urb:
        e = urb.reserve()
        e.count, e.size, e.discard_every, e.start_seq, e.flags = 1, 2, 3, 4, 1 << 40
        urb.submit(e)
        with urb.reserve_blocking(timeout_ms=1000) as e2:  # submitted at the end of the block
            e2.flags = 7
        assert isinstance(urb.reserve(24), Sample)  # reserve(n) is still the writable buffer
    assert echoed(rt, 2) == [produce_args(1, 2, 3, 4, 1 << 40), produce_args(0, 0, 0, 0, 7)]


def test_nested_members_and_arrays_of_a_ctypes_sample_type(rt):
    with UserRingBuffer(rt.maps["urb"], type=Outer) as urb:
        e = urb.reserve()
        e.a = 1
        e.inner.x = 2
        e.arr[1] = 3
        e.items = [{"x": 4}, (5, 6)]
        inner, arr = e.inner, e.arr
        urb.submit(e)
        # whatever was taken from the view refuses too once submitted
        for write in (lambda: setattr(inner, "x", 9), lambda: arr.__setitem__(0, 9), lambda: inner.x):
            with pytest.raises(SampleClosedError):
                write()
    want = struct.pack("<IHH4BHHHH", 1, 2, 0, 0, 3, 0, 0, 4, 0, 5, 6)
    assert echoed(rt, 1) == [want]


def test_write_takes_dicts_tuples_typed_values_and_bytes(rt):
    with UserRingBuffer(rt.maps["urb"], type="struct produce_args") as urb:
        typed = urb.sample_type()
        typed.count, typed.flags = 9, 10
        urb.write({"count": 1, "flags": 2})
        urb.write((3, 4, 5, 6, 7))
        urb.write(typed)
        urb.write(produce_args(11, 12, 13, 14, 15))       # bytes pass through
        urb.write(bytearray(b"short"))                     # as they are, whatever their size
    assert echoed(rt, 5) == [produce_args(1, 0, 0, 0, 2), produce_args(3, 4, 5, 6, 7),
                             produce_args(9, 0, 0, 0, 10), produce_args(11, 12, 13, 14, 15), b"short"]


def test_write_batch_of_dicts_applied_by_the_command_program(commands):
    with UserRingBuffer(commands.maps["commands"]) as urb:  # struct command, declared on the map
        cmds = [{"op": "CMD_SET", "key": f"k{i}", "value": i} for i in range(100)]
        cmds += [{"op": "CMD_BUMP", "key": "k5", "value": 1000}, {"op": "CMD_DELETE", "key": "k7"},
                 {"op": "CMD_BUMP", "key": "new", "value": 3}]
        assert urb.write_batch(cmds) == 103
        assert apply(commands) == 103
    want = {f"k{i}": i for i in range(100)}
    want["k5"] += 1000
    del want["k7"]
    want["new"] = 3
    assert table(commands) == want
    assert commands.variables["applied"].get() == 103
    assert commands.variables["failed"].get() == 0 and commands.variables["malformed"].get() == 0


def test_typed_commands_through_reserve(commands):
    with UserRingBuffer(commands.maps["commands"]) as urb:
        for key, value in (("alpha", 1), ("beta", 2)):
            c = urb.reserve()
            c.op = "CMD_SET"       # an enum field takes its enumerator's name
            c.key = key
            c.value = value
            urb.submit(c)
        c = urb.reserve()
        c.op, c.key, c.value = "CMD_BUMP", "alpha", 41
        urb.discard(c)             # the drain skips it
        assert apply(commands) == 2
    assert table(commands) == {"alpha": 1, "beta": 2}


def test_errors_name_the_field_and_write_nothing(commands):
    with UserRingBuffer(commands.maps["commands"]) as urb:
        c = urb.reserve()
        with pytest.raises(pybpf.Error, match=r"command has no field 'kee' \(fields: op, pad, key, value\)"):
            c.kee = "x"
        with pytest.raises(pybpf.Error, match=r"command\.key: 17 bytes do not fit in char\[16\]"):
            c.key = "k" * 17
        with pytest.raises(pybpf.Error, match=r"command\.value: .* does not fit in 64 bits"):
            c.value = 1 << 64
        with pytest.raises(pybpf.Error, match=r"not an enumerator"):
            c.op = "CMD_EXPLODE"
        urb.discard(c)
        with pytest.raises(pybpf.Error, match=r"command has no field 'vaule'"):
            urb.write({"op": "CMD_SET", "key": "a", "vaule": 1})
        with pytest.raises(pybpf.Error, match=r"command\.key: 20 bytes do not fit in char\[16\]"):
            urb.write({"op": "CMD_SET", "key": "k" * 20})
        with pytest.raises(pybpf.Error, match=r"command has 4 fields, got 5 values"):
            urb.write((1, 0, "a", 1, 2))
        with pytest.raises(pybpf.Error, match=r"command is 32 bytes, got a Inner of 4"):
            urb.write(Inner(1, 2))
        with pytest.raises(pybpf.Error, match=r"command\.key"):  # one bad item: nothing written
            urb.write_batch([{"op": "CMD_SET", "key": "ok", "value": 1}, {"op": "CMD_SET", "key": "k" * 99}])
        assert urb.records == 0
        assert apply(commands) == 0
    assert table(commands) == {}


def test_a_typed_view_after_submit_is_refused_and_cannot_reach_the_ring(rt):
    with UserRingBuffer(rt.maps["urb"], type="struct produce_args") as urb:
        e = urb.reserve()
        e.count = 1
        urb.submit(e)
        with pytest.raises(SampleClosedError):
            e.count = 2
        with pytest.raises(SampleClosedError):
            e.count  # noqa: B018
        with pytest.raises(SampleClosedError):
            bytes(e)
        with pytest.raises(pybpf.Error, match="already submitted"):
            urb.submit(e)
        assert "submitted" in repr(e)
        # even raw memory taken after the submit is not the ring's any more
        memoryview(e).cast("B")[0] = 0xEE
        # a raw export alive at submit: refused, the sample stays reserved
        e2 = urb.reserve()
        e2.count = 3
        view = memoryview(e2)
        with pytest.raises(SampleExportedError, match="raw export"):
            urb.submit(e2)
        del view
        urb.submit(e2)
    assert echoed(rt, 2) == [produce_args(1, 0, 0, 0, 0), produce_args(3, 0, 0, 0, 0)]


def test_close_with_a_reserved_typed_view(rt):
    urb = UserRingBuffer(rt.maps["urb"], type="struct produce_args")
    e = urb.reserve()
    e.count = 5
    urb.close()  # discarded by force: a BUSY sample would wedge the drain
    with pytest.raises(SampleClosedError):
        e.count = 6
    with UserRingBuffer(rt.maps["urb"]) as urb:
        urb.write(b"after")
    assert echoed(rt, 1) == [b"after"]


def test_no_sample_type_says_what_to_do(rt):
    with UserRingBuffer(rt.maps["urb"]) as urb:  # ringbuf_test declares no record type
        assert urb.sample_type is None
        with pytest.raises(pybpf.Error, match=r"no sample type for reserve\(\) without a size.*type=\"struct x\""):
            urb.reserve()
        with pytest.raises(pybpf.Error, match="no sample type for a dict sample"):
            urb.write({"count": 1})
        assert urb.records == 0
    with pytest.raises(pybpf.Error, match="struct nosuch"):
        UserRingBuffer(rt.maps["urb"], type="struct nosuch")
