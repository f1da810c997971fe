"""close() of the ring and perf buffers when a step of it raises or is interrupted.

Every step of a close (unmapping a ring, closing the epoll set, discarding a
pending sample, taking a perf event out of its map slot, releasing the map's
claim...) is made to raise KeyboardInterrupt in turn, just before or just after
it runs.  Then the first close() raises it, the buffer is closed all the same,
a second close() finishes what the first could not, and nothing is left: no
fd, no mapping, no claim on the map (a new buffer on it works), no BUSY
sample in the user ring, no perf event in the map.  The exception (and the
frames its traceback holds) is kept alive through the checks: nothing may
depend on the garbage collector.

The same for an interrupt during the constructor, right after a resource was
made: the constructor raises, and nothing it made is left.
"""

from __future__ import annotations

import errno
import itertools
import signal
import struct
import sys
import threading
import time

import pytest

import pybpf
from pybpf.ringbuf import perf as perfbuf
from pybpf.kernel.constants import BPF_F_TEST_RUN_ON_CPU
from pybpf.ringbuf.perf import PerfBuffer
from pybpf.ringbuf import RingBuffer, UserRingBuffer, _mapping, reader, user

from conftest import open_fds, program

SIZE = 16384  # both rings in ringbuf_test.bpf.c


def bpf_map_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("bpf-map" in line for line in f)


def produce(obj, count, size) -> int:
    return obj.programs["produce"].test_run(ctx=struct.pack("<IIIIQ", count, size, 0, 0, 0)).retval


def drain(obj) -> int:
    return obj.programs["drain"].test_run(ctx=struct.pack("<QI4x", 0, 0)).retval


class Interrupter:
    """Raises KeyboardInterrupt at the k-th call (counted from :meth:`arm`) of any
    patched step in the main thread, before the step runs or just after it returned."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.k = None
        self.after = False
        self.calls = 0
        self.hit = None
        self.real_signal = False

    def patch(self, owner, *names) -> None:
        for name in names:
            real = getattr(owner, name)
            self.monkeypatch.setattr(owner, name, self._wrap(real, f"{getattr(owner, '__name__', owner)}.{name}"))

    def _wrap(self, real, label):
        def step(*args, **kwargs):
            if sys._getframe(1).f_code.co_name == "__del__" or threading.current_thread() is not threading.main_thread():
                # not counted: the garbage collector's timing; and KeyboardInterrupt
                # only ever reaches the main thread
                return real(*args, **kwargs)
            n = self.calls
            self.calls += 1
            if n == self.k and not self.after:
                self.hit = f"before {label}"
                self.k = None
                raise KeyboardInterrupt(self.hit)
            result = real(*args, **kwargs)
            if n == self.k and self.after:
                self.hit = f"after {label}"
                self.k = None
                if self.real_signal:
                    # Python's SIGINT handler raises at the next bytecode boundary:
                    # wherever that is (pybpf may defer it to the end of a section)
                    signal.raise_signal(signal.SIGINT)
                else:
                    raise KeyboardInterrupt(self.hit)
            return result
        return step

    def arm(self, k: int, after: bool, real_signal: bool = False) -> None:
        self.k, self.after, self.calls, self.hit = k, after, 0, None
        self.real_signal = real_signal

    def disarm(self) -> None:
        self.k = None


@pytest.fixture
def interrupter(monkeypatch):
    return Interrupter(monkeypatch)


@pytest.fixture
def obj():
    with pybpf.load(program("ringbuf_test")) as o:
        yield o


def interrupt_every_step(interrupter, make, check) -> list[str]:
    """For k = 0, 1, ...: make a buffer, close it with an interrupt at step k
    (before, then after the step), close it again, check; until a close meets
    no step k.  Returns the steps interrupted."""
    hits = []
    for after in (False, True):
        for k in itertools.count():
            assert k < 100, "close() never got past its steps"
            buf = make()
            interrupter.arm(k, after)
            try:
                buf.close()
            except KeyboardInterrupt as exc:
                kept = exc  # its traceback holds the frames of the close
            else:
                interrupter.disarm()
                check(buf)
                break
            finally:
                interrupter.disarm()
            assert interrupter.hit == str(kept)
            hits.append(interrupter.hit)
            assert buf.closed
            buf.close()  # finishes the job
            check(buf)
            del kept
    return hits


@pytest.mark.kernel
def test_an_interrupted_ring_buffer_close_is_finished_by_the_next(obj, interrupter):
    m = obj.maps["rb"]
    fds, base = open_fds(), bpf_map_mappings()
    interrupter.patch(reader.Ring, "_teardown")
    interrupter.patch(_mapping._Mapping, "close")
    interrupter.patch(_mapping._Waiter, "close", "_release")
    interrupter.patch(reader, "_release_quietly")
    interrupter.patch(_mapping, "_unclaim")                   # the consumers' shared teardown
    interrupter.patch(reader.RingBuffer, "_try_teardown")
    got = []

    def make():
        rb = RingBuffer(m, lambda r: got.append(bytes(r)))
        assert produce(obj, 1, 8) == 1 and rb.consume() == 1
        return rb

    def check(rb):
        assert open_fds() == fds
        assert bpf_map_mappings() == base
        with pytest.raises(pybpf.ClosedError):
            rb.poll(0)
        with RingBuffer(m, lambda r: got.append(bytes(r))) as again:  # the claim is gone
            assert produce(obj, 1, 8) == 1 and again.consume() == 1

    hits = interrupt_every_step(interrupter, make, check)
    for step in ("Ring._teardown", "_Mapping.close", "_Waiter.close", "_Waiter._release", "_unclaim"):
        assert any(step in h for h in hits), (step, hits)


@pytest.mark.kernel
def test_an_interrupted_user_ring_buffer_close_is_finished_by_the_next(obj, interrupter):
    m = obj.maps["urb"]
    fds, base = open_fds(), bpf_map_mappings()
    interrupter.patch(user.UserRingBuffer, "_discard_by_force", "_unmap", "_locked_teardown")
    interrupter.patch(_mapping._Mapping, "close")
    interrupter.patch(_mapping._Waiter, "close", "_release")
    interrupter.patch(user, "_release_quietly", "_unclaim")

    def make():
        urb = UserRingBuffer(m)
        urb.write(struct.pack("<I", 1))
        urb.reserve(4)[:] = struct.pack("<I", 2)  # left pending: close discards it
        urb.reserve(8)
        return urb

    def check(urb):
        assert open_fds() == fds
        assert bpf_map_mappings() == base
        with pytest.raises(pybpf.ClosedError):
            urb.write(b"x")
        with UserRingBuffer(m) as again:  # the claim is gone, and no BUSY sample stops the drain
            again.write(struct.pack("<I", 3))
            assert drain(obj) == 2
            assert again.free == SIZE

    hits = interrupt_every_step(interrupter, make, check)
    for step in ("_discard_by_force", "_unmap", "_Mapping.close", "_Waiter._release", "_unclaim"):
        assert any(step in h for h in hits), (step, hits)


@pytest.mark.kernel
def test_an_interrupted_perf_buffer_close_is_finished_by_the_next(interrupter):
    with pybpf.load(program("perf_test")) as perf_obj:
        m = perf_obj.maps["events"]
        fds = open_fds()
        interrupter.patch(perfbuf._CpuRing, "_clear_slot", "_disable", "_unmap")
        interrupter.patch(_mapping._Mapping, "close")
        interrupter.patch(_mapping._Waiter, "close", "_release")
        interrupter.patch(_mapping, "_unclaim")               # the consumers' shared teardown
        interrupter.patch(perfbuf.sc, "map_delete_elem")
        interrupter.patch(perfbuf.perf, "ioctl")
        interrupter.patch(perfbuf.perf, "perf_event_open")

        def output(cpu):
            ret = perf_obj.programs["output"].test_run(ctx=struct.pack("<QQ", 1, 8), flags=BPF_F_TEST_RUN_ON_CPU,
                                                       cpu=cpu).retval
            return ret - (1 << 32) if ret > 0x7FFFFFFF else ret

        cpus = []

        def make():
            pb = PerfBuffer(m, print)
            cpus[:] = pb.cpus
            return pb

        def check(pb):
            assert open_fds() == fds
            for cpu in cpus:
                assert output(cpu) == -errno.ENOENT  # no event left in the CPU's slot
            with PerfBuffer(m, lambda cpu, rec: None) as again:
                assert output(again.cpus[0]) == 0 and again.consume() == 1

        hits = interrupt_every_step(interrupter, make, check)
    for step in ("_clear_slot", "_disable", "_unmap", "_Mapping.close", "_Waiter._release", "_unclaim"):
        assert any(step in h for h in hits), (step, hits)


@pytest.mark.kernel
def test_an_interrupted_close_still_wakes_the_poller_and_the_next_finishes(obj, interrupter):
    m = obj.maps["rb"]
    fds, base = open_fds(), bpf_map_mappings()
    interrupter.patch(_mapping._Waiter, "close", "_release")
    interrupter.patch(reader.Ring, "_teardown")
    interrupter.patch(reader.RingBuffer, "_try_teardown")
    for after in (False, True):
        for k in range(4):
            rb = RingBuffer(m, print)
            errors = []

            def run():
                try:
                    rb.poll(-1)
                except pybpf.ClosedError as exc:
                    errors.append(exc)

            waiter = threading.Thread(target=run, daemon=True)
            waiter.start()
            time.sleep(0.05)
            interrupter.arm(k, after)
            try:
                rb.close()
            except KeyboardInterrupt:
                pass
            finally:
                interrupter.disarm()
            rb.close()
            waiter.join(2)
            assert not waiter.is_alive() and len(errors) == 1
            assert open_fds() == fds
            assert bpf_map_mappings() == base


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["RingBuffer", "UserRingBuffer", "PerfBuffer"])
def test_an_interrupt_in_the_constructor_leaves_nothing(kind, interrupter):
    """A real SIGINT just after each resource is made (the claim, each mapping,
    the epoll set with its bell, each perf event): the constructor raises
    KeyboardInterrupt and has released everything, the exception still alive."""
    name = {"RingBuffer": "ringbuf_test", "UserRingBuffer": "ringbuf_test", "PerfBuffer": "perf_test"}[kind]
    with pybpf.load(program(name)) as o:
        m = o.maps[{"RingBuffer": "rb", "UserRingBuffer": "urb", "PerfBuffer": "events"}[kind]]
        make = {"RingBuffer": lambda: RingBuffer(m, print), "UserRingBuffer": lambda: UserRingBuffer(m),
                "PerfBuffer": lambda: PerfBuffer(m, print)}[kind]
        fds, base = open_fds(), bpf_map_mappings()
        interrupter.patch(_mapping, "_PyObject_GetBuffer", "_ring_identity")  # just after each mmap, the claim
        interrupter.patch(_mapping._Waiter, "register")                       # epoll and bell made
        interrupter.patch(perfbuf.perf, "ioctl")
        interrupter.patch(perfbuf.perf, "perf_event_open")
        interrupter.patch(perfbuf.sc, "map_update_elem")
        hits = []
        for k in itertools.count():
            assert k < 100
            interrupter.arm(k, True, real_signal=True)
            buf = None
            try:
                buf = make()
                time.sleep(0)  # (a boundary where a signal not deferred has surely been handled)
            except KeyboardInterrupt as exc:
                hit = interrupter.hit
                hits.append(hit)
                assert buf is None, hit  # raised in the constructor, not after it
                assert open_fds() == fds, hit
                assert bpf_map_mappings() == base, hit
                del exc
            else:
                interrupter.disarm()
                buf.close()
                break
            finally:
                interrupter.disarm()
        with make():  # no claim was left behind
            pass
        assert open_fds() == fds
    assert len(hits) >= 3, hits


@pytest.mark.kernel
def test_close_after_a_failed_step_releases_the_rest(obj, monkeypatch, no_fd_leak):
    """An ordinary exception in one step (not an interrupt): the other steps still run."""
    base = bpf_map_mappings()
    rb = RingBuffer(obj.maps["rb"], print)
    urb = UserRingBuffer(obj.maps["urb"])
    calls = []
    real = _mapping._Mapping.close

    def failing(self):
        calls.append(self)
        if len(calls) == 1:
            raise OSError(errno.EIO, "refused once by the test")
        real(self)

    monkeypatch.setattr(_mapping._Mapping, "close", failing)
    with pytest.raises(OSError):
        rb.close()
    assert bpf_map_mappings() == base + 2 + 1  # the urb's two, and the ring's mapping that refused
    rb.close()
    urb.close()
    assert bpf_map_mappings() == base
    assert len(calls) >= 4


# --- a lock lost to an interrupt ---------------------------------------------
#
# KeyboardInterrupt can land right after a lock's C-level acquire returned and
# before the try that releases it: the lock is then held by nobody.  Simulated
# here by taking the lock by hand.  close() still releases everything (and a
# lock held by a running method still makes close() wait for it).

@pytest.mark.kernel
def test_close_releases_a_ring_buffer_whose_consumer_lock_was_lost(no_fd_leak, obj):
    base = bpf_map_mappings()
    rb = RingBuffer(obj.maps["rb"], print)
    assert rb._lock.acquire(blocking=False)  # lost: nobody will release it
    rb.close()
    assert bpf_map_mappings() == base
    with pytest.raises(pybpf.ClosedError):
        rb.consume()
    with RingBuffer(obj.maps["rb"], print):
        pass


@pytest.mark.kernel
def test_close_releases_a_user_ring_buffer_whose_mutex_token_was_lost(no_fd_leak, obj):
    base = bpf_map_mappings()
    urb = UserRingBuffer(obj.maps["urb"])
    urb.reserve(8)  # pending: must be discarded or the drain is stuck
    urb._take()  # lost: nobody will give it back
    t0 = time.monotonic()
    urb.close()
    assert time.monotonic() - t0 < 1.0
    assert bpf_map_mappings() == base
    with pytest.raises(pybpf.ClosedError):
        urb.write(b"x")  # the token is back: a ClosedError, not a hang
    with UserRingBuffer(obj.maps["urb"]) as again:
        again.write(b"y" * 4)
        assert drain(obj) == 1


@pytest.mark.kernel
def test_close_waits_for_a_producer_that_holds_the_mutex(no_fd_leak, obj):
    urb = UserRingBuffer(obj.maps["urb"])
    urb.write(b"a" * (SIZE - 16))  # nearly full: the next write asks _room, mutex held
    inside, release = threading.Event(), threading.Event()
    real_room = urb._room

    def slow_room(total):
        inside.set()
        assert release.wait(5)
        return real_room(total)

    urb._room = slow_room
    errors = []

    def writer():
        try:
            urb.write(b"b" * 64)
        except pybpf.Error as exc:
            errors.append(exc)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert inside.wait(5)
    closer = threading.Thread(target=urb.close, daemon=True)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # waits: the writer is inside, with the ring mapped
    release.set()
    t.join(5)
    closer.join(5)
    assert not closer.is_alive() and urb.closed
    assert len(errors) == 1 and isinstance(errors[0], pybpf.RingBufferFullError)


@pytest.mark.kernel
def test_close_releases_a_perf_buffer_whose_lock_was_lost(no_fd_leak):
    with pybpf.load(program("perf_test")) as perf_obj:
        pb = PerfBuffer(perf_obj.maps["events"], print)
        cpu = pb.cpus[0]
        assert pb._lock.acquire(blocking=False)
        pb.close()
        ret = perf_obj.programs["output"].test_run(ctx=struct.pack("<QQ", 1, 8), flags=BPF_F_TEST_RUN_ON_CPU,
                                                   cpu=cpu).retval
        assert (ret - (1 << 32) if ret > 0x7FFFFFFF else ret) == -errno.ENOENT
        with PerfBuffer(perf_obj.maps["events"], print):
            pass
