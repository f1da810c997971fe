#!/usr/bin/env python3
"""Ring buffer throughput: pybpf against libbpf's C loops and Python over libbpf.

    python tools/bench_ringbuf.py [--records N] [--rounds R] [--json FILE]

Everything runs in this one process, on the maps of one object,
programs/bench_ringbuf.o (64 MiB RINGBUF ``rb``, 64 MiB USER_RINGBUF ``urb``,
24-byte records, 32 bytes in the ring with their header):

* consume: before each timed run the SEC("syscall") program ``produce`` fills
  ``rb`` with N records through BPF_PROG_TEST_RUN (not timed); the run then
  takes all N with one consumer.  Every consumer does the same task: sum the
  low 32 bits of each record's first u64 (``seq``), so that every record is
  read, and the sum is checked against the expected one:
    - libbpf's C loop: ``ring_buffer__consume`` with a C callback, as libbpf's
      documentation shows it (tools/bench/ringbuf_bench.c, built now against
      Debian's libbpf-dev);
    - Python over libbpf through ctypes: libbpf's loop calls a ctypes callback
      per record that reads the field with ``ctypes.c_uint64.from_address``,
      bare, and wrapped the way bcc's ``RingBuf.open_ring_buffer`` wraps the
      user's (``int(ret)`` with a fallback to 0);
    - pybpf: ``consume()`` with a callback per record (a memoryview each,
      ``struct.unpack_from``), ``read_batch()`` in batches of 65536 records and
      of all N at once, each followed by a loop over the records, and
      ``read_batch(type=...)`` (one ctypes array of ``struct bench_event``)
      with a loop reading ``.seq``.
* produce: N samples of the same 24 bytes into ``urb`` (timed), then ``drain``
  empties it through BPF_PROG_TEST_RUN (not timed): libbpf's C
  ``user_ring_buffer__reserve`` + memcpy + ``user_ring_buffer__submit``; the
  same calls through ctypes; pybpf ``reserve()`` + copy + ``submit()`` (the
  sample is a buffer: ``sample[:] = payload``, ``struct.pack_into``, and the
  older ``sample.data[:] = payload``), ``write()``, and ``write_batch()`` of a
  prepared list of N payloads.  The rings are set up before the clock starts.

Each variant runs R rounds, interleaved (round 1 of every variant, then round
2...), so that load from other processes hits them alike; the table shows the
best and the median rate and ratios of the best rates, and the C rows beside
the figures of ../shared/reference/anchors.md (a warning when they differ by
more than 30%).  Times are wall time around the consume/produce call
(time.perf_counter, CLOCK_MONOTONIC in C).  Needs root, cc and libbpf-dev (for
the libbpf rows; without them those rows are skipped).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import statistics
import struct
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pybpf  # noqa: E402
from pybpf.ringbuf import RingBuffer, UserRingBuffer  # noqa: E402

OBJECT = ROOT / "programs" / "bench_ringbuf.o"
C_SOURCE = ROOT / "tools" / "bench" / "ringbuf_bench.c"
BUILD_DIR = ROOT / "tools" / ".bench"
RECORD = 24
BATCH = 65536
# Wall time around the call (CLOCK_MONOTONIC in the C runs too), as the
# anchors are measured; best of the rounds keeps the least disturbed run.
clock = time.perf_counter
FIRST = struct.Struct("=I").unpack_from  # the low 32 bits of the first u64 (little-endian)
ANCHORS = ROOT.parent / "shared" / "reference" / "anchors.md"


# --- libbpf ------------------------------------------------------------------

def build_c_bench() -> ctypes.CDLL | str:
    """Builds tools/bench/ringbuf_bench.c against libbpf (-lbpf); the library, or why not."""
    BUILD_DIR.mkdir(exist_ok=True)
    lib = BUILD_DIR / "libringbuf_bench.so"
    if not lib.exists() or lib.stat().st_mtime < C_SOURCE.stat().st_mtime:
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-O2", "-Wall", "-shared", "-fPIC", "-o", str(lib), str(C_SOURCE), "-lbpf"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            return f"{cc} not found"
        if proc.returncode:
            return f"building {C_SOURCE.name} failed (apt-get install libbpf-dev?):\n{proc.stderr}"
    c = ctypes.CDLL(str(lib))
    c.bench_consume.restype = ctypes.c_long
    c.bench_consume.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_longlong), ctypes.POINTER(ctypes.c_ulonglong)]
    c.bench_produce.restype = ctypes.c_long
    c.bench_produce.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_char_p, ctypes.c_int,
                                ctypes.POINTER(ctypes.c_longlong)]
    return c


def load_libbpf() -> ctypes.CDLL | str:
    for name in ("libbpf.so.1", "libbpf.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return "libbpf.so not found (apt-get install libbpf1)"
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.ring_buffer__consume.restype = ctypes.c_int
    lib.ring_buffer__consume.argtypes = [ctypes.c_void_p]
    lib.ring_buffer__free.restype = None
    lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
    lib.user_ring_buffer__new.restype = ctypes.c_void_p
    lib.user_ring_buffer__new.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.user_ring_buffer__reserve.restype = ctypes.c_void_p
    lib.user_ring_buffer__reserve.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.user_ring_buffer__submit.restype = None
    lib.user_ring_buffer__submit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.user_ring_buffer__free.restype = None
    lib.user_ring_buffer__free.argtypes = [ctypes.c_void_p]
    return lib


# libbpf's ring_buffer_sample_fn; bcc declares its _RINGBUF_CB_TYPE the same way
RINGBUF_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


def bcc_style_callback(callback):
    """The per-record wrapper bcc's RingBuf.open_ring_buffer puts around the user's callback."""
    def ringbuf_cb_(ctx, data, size):
        try:
            ret = callback(ctx, data, size)
            try:
                ret = int(ret)  # a callback that returns nothing gives 0
            except Exception:
                ret = 0
        except IOError as e:
            if e.errno == 32:  # EPIPE
                sys.exit()
            raise
        return ret
    return RINGBUF_CB(ringbuf_cb_)


# --- the runs ------------------------------------------------------------------

class Bench:
    def __init__(self, obj, records: int, libc_bench, libbpf):
        self.obj = obj
        self.n = records
        self.expected_sum = records * (records - 1) // 2  # seq = 0 .. N-1
        self.total = 0  # the sum the last consumer run read
        self.rb_map = obj.maps["rb"]
        self.urb_map = obj.maps["urb"]
        self.produce_prog = obj.programs["produce"]
        self.drain_prog = obj.programs["drain"]
        self.c = libc_bench if not isinstance(libc_bench, str) else None
        self.libbpf = libbpf if not isinstance(libbpf, str) else None
        self.payload = bytes(range(RECORD))  # what every producer row writes
        self.payloads = [self.payload] * records
        try:
            import numpy as np
        except ImportError:
            np = None
        self.np = np
        if np is not None:  # the same 24 bytes N times, as one array
            self.payload_array = np.frombuffer(self.payload * records, dtype=np.dtype((np.void, RECORD)))
            self.low32 = np.dtype({"names": ["low"], "formats": ["<u4"], "offsets": [0], "itemsize": RECORD})
        # consumers kept across rounds (their set-up is not what is measured)
        # (one RingBuffer: a map has one consumer per process; each row asks for its record kind)
        self.rb_raw = self.rb_batch = self.rb_typed = RingBuffer(self.rb_map, self._add, type=memoryview)
        self.record_type = self.rb_map.record_type  # the program declares struct bench_event
        if self.libbpf:
            from_address = ctypes.c_uint64.from_address

            def user_callback(ctx, data, size):
                self.total += from_address(data).value & 0xFFFFFFFF

            self._bcc_cb = bcc_style_callback(user_callback)

            def bare(ctx, data, size):
                self.total += from_address(data).value & 0xFFFFFFFF
                return 0
            self._bare_cb = RINGBUF_CB(bare)
            self.bcc_rb = self.libbpf.ring_buffer__new(self.rb_map.fd, ctypes.cast(self._bcc_cb, ctypes.c_void_p),
                                                       None, None)
            self.bare_rb = self.libbpf.ring_buffer__new(self.rb_map.fd, ctypes.cast(self._bare_cb, ctypes.c_void_p),
                                                        None, None)

    def close(self):
        self.rb_raw.close()
        if self.libbpf:
            self.libbpf.ring_buffer__free(self.bcc_rb)
            self.libbpf.ring_buffer__free(self.bare_rb)

    def _add(self, record, _first=FIRST):
        self.total += _first(record)[0]

    def fill(self):
        self.total = 0
        ret = self.produce_prog.test_run(ctx=struct.pack("<IIQ", self.n, 0, 1)).retval  # BPF_RB_NO_WAKEUP
        if ret != self.n:
            raise SystemExit(f"produce wrote {ret} records, not {self.n} (ring not empty?)")

    def check_sum(self):
        if self.total != self.expected_sum:
            raise SystemExit(f"a consumer summed {self.total}, not {self.expected_sum}: it did not read every record")

    def empty_user_ring(self):
        while self.drain_prog.test_run(ctx=bytes(8)).retval > 0:
            pass

    # each returns (records, seconds)

    def c_consume(self):
        ns = ctypes.c_longlong()
        total = ctypes.c_ulonglong()
        got = self.c.bench_consume(self.rb_map.fd, ctypes.byref(ns), ctypes.byref(total))
        self.total = total.value
        return got, ns.value / 1e9

    def bcc_consume(self):
        t0 = clock()
        got = self.libbpf.ring_buffer__consume(self.bcc_rb)
        return got, clock() - t0

    def bare_consume(self):
        t0 = clock()
        got = self.libbpf.ring_buffer__consume(self.bare_rb)
        return got, clock() - t0

    def pybpf_consume(self):
        t0 = clock()
        got = self.rb_raw.consume()
        return got, clock() - t0

    def pybpf_read_batches(self):
        rb, first = self.rb_batch, FIRST
        got = total = 0
        t0 = clock()
        while True:
            records = rb.read_batch(BATCH, type=bytes)
            if not records:
                break
            for record in records:
                total += first(record)[0]
            got += len(records)
        t = clock() - t0
        self.total = total
        return got, t

    def pybpf_read_all(self):
        first = FIRST
        total = 0
        t0 = clock()
        records = self.rb_batch.read_batch(type=bytes)
        for record in records:
            total += first(record)[0]
        t = clock() - t0
        self.total = total
        return len(records), t

    def pybpf_read_typed(self):
        total = 0
        t0 = clock()
        records = self.rb_typed.read_batch(type=self.record_type)
        for record in records:
            total += record.seq & 0xFFFFFFFF
        t = clock() - t0
        self.total = total
        return len(records), t

    def pybpf_read_array(self):
        np = self.np
        t0 = clock()
        arr = self.rb_typed.read_array()
        total = int((arr["seq"] & 0xFFFFFFFF).sum())
        t = clock() - t0
        self.total = total
        return len(arr), t

    def pybpf_read_array_view(self):
        # the same sum, read as the low u32 of each record (a strided view, no temporary array)
        t0 = clock()
        arr = self.rb_typed.read_array()
        total = int(arr.view(self.low32)["low"].sum(dtype=self.np.uint64))
        t = clock() - t0
        self.total = total
        return len(arr), t

    def c_produce(self):
        ns = ctypes.c_longlong()
        got = self.c.bench_produce(self.urb_map.fd, self.n, self.payload, RECORD, ctypes.byref(ns))
        return got, ns.value / 1e9

    def ctypes_produce(self):
        lib, n, payload = self.libbpf, self.n, self.payload
        reserve, submit, memmove = lib.user_ring_buffer__reserve, lib.user_ring_buffer__submit, ctypes.memmove
        urb = lib.user_ring_buffer__new(self.urb_map.fd, None)
        try:
            t0 = clock()
            for _ in range(n):
                sample = reserve(urb, RECORD)
                memmove(sample, payload, RECORD)
                submit(urb, sample)
            return n, clock() - t0
        finally:
            lib.user_ring_buffer__free(urb)

    def pybpf_reserve_submit(self):
        n, payload = self.n, self.payload
        with UserRingBuffer(self.urb_map) as urb:
            reserve, submit = urb.reserve, urb.submit
            t0 = clock()
            for _ in range(n):
                sample = reserve(RECORD)
                sample[:] = payload
                submit(sample)
            return n, clock() - t0

    def pybpf_reserve_pack_into(self):
        n = self.n
        fields = struct.unpack("=QQQ", self.payload)  # the same 24 bytes
        pack_into = struct.Struct("=QQQ").pack_into
        with UserRingBuffer(self.urb_map) as urb:
            reserve, submit = urb.reserve, urb.submit
            t0 = clock()
            for _ in range(n):
                sample = reserve(RECORD)
                pack_into(sample, 0, *fields)
                submit(sample)
            return n, clock() - t0

    def pybpf_reserve_data(self):
        n, payload = self.n, self.payload
        with UserRingBuffer(self.urb_map) as urb:
            reserve, submit = urb.reserve, urb.submit
            t0 = clock()
            for _ in range(n):
                sample = reserve(RECORD)
                sample.data[:] = payload
                submit(sample)
            return n, clock() - t0

    def pybpf_write(self):
        n, payload = self.n, self.payload
        with UserRingBuffer(self.urb_map) as urb:
            write = urb.write
            t0 = clock()
            for _ in range(n):
                write(payload)
            return n, clock() - t0

    def pybpf_write_array(self):
        with UserRingBuffer(self.urb_map) as urb:
            t0 = clock()
            got = urb.write_array(self.payload_array)
            return got, clock() - t0

    def pybpf_write_batch(self):
        with UserRingBuffer(self.urb_map) as urb:
            t0 = clock()
            got = urb.write_batch(self.payloads)
            return got, clock() - t0


CONSUMERS = [
    ("libbpf C loop: ring_buffer__consume", "c_consume", "c"),
    ("Python over libbpf (ctypes), bare callback", "bare_consume", "libbpf"),
    ("Python over libbpf (ctypes), bcc's wrapper", "bcc_consume", "libbpf"),
    ("pybpf consume(), callback per record", "pybpf_consume", None),
    (f"pybpf read_batch({BATCH}) + loop, until empty", "pybpf_read_batches", None),
    ("pybpf read_batch() all + loop", "pybpf_read_all", None),
    ("pybpf read_batch() typed + loop over .seq", "pybpf_read_typed", None),
    ("pybpf read_array() + numpy (seq & mask).sum()", "pybpf_read_array", "numpy"),
    ("pybpf read_array() + numpy sum of a u32 view", "pybpf_read_array_view", "numpy"),
]
PRODUCERS = [
    ("libbpf C: reserve + memcpy + submit", "c_produce", "c"),
    ("Python over libbpf (ctypes): reserve/submit", "ctypes_produce", "libbpf"),
    ("pybpf reserve(); s[:] = payload; submit()", "pybpf_reserve_submit", None),
    ("pybpf reserve(); pack_into(s); submit()", "pybpf_reserve_pack_into", None),
    ("pybpf reserve(); s.data[:] = ...; submit()", "pybpf_reserve_data", None),
    ("pybpf write()", "pybpf_write", None),
    ("pybpf write_batch()", "pybpf_write_batch", None),
    ("pybpf write_array()", "pybpf_write_array", "numpy"),
]


def run(bench: Bench, table, before, after, rounds: int) -> dict:
    """Every variant of ``table`` ``rounds`` times, interleaved; records/s of each run."""
    rates = {name: [] for name, _, _ in table}
    for _ in range(rounds):
        for name, method, needs in table:
            if (needs == "c" and bench.c is None or needs == "libbpf" and bench.libbpf is None
                    or needs == "numpy" and bench.np is None):
                continue
            before()
            got, seconds = getattr(bench, method)()
            after()
            if got != bench.n:
                raise SystemExit(f"{name}: {got} records, expected {bench.n}")
            rates[name].append(got / seconds)
    return {name: r for name, r in rates.items() if r}


def show(title: str, rates: dict, refs: list[tuple[str, str]]) -> None:
    best = {name: max(r) for name, r in rates.items()}
    cols = [label for label, ref in refs if ref in best]
    print(f"\n{title}")
    header = f"  {'':46s} {'best M/s':>9s} {'median':>8s}" + "".join(f" {c:>12s}" for c in cols)
    print(header)
    for name, r in rates.items():
        line = f"  {name:46s} {best[name] / 1e6:9.2f} {statistics.median(r) / 1e6:8.2f}"
        for label, ref in refs:
            if ref in best:
                line += f" {best[name] / best[ref]:11.3g}x"
        print(line)


def anchors() -> dict[str, tuple[float, float]]:
    """The libbpf C figures of anchors.md, M records/s (low, high), by row name."""
    import re
    try:
        text = ANCHORS.read_text()
    except OSError:
        return {}
    found = {}
    for key, row in (("consume", CONSUMERS[0][0]), ("produce", PRODUCERS[0][0])):
        for line in text.splitlines():
            if "libbpf C" in line and (("ring_buffer__consume" in line) if key == "consume" else ("user_ring_buffer__reserve" in line)):
                m = re.search(r"\|\s*([\d.]+)(?:-([\d.]+))?\s*M (?:records|samples)/s", line)
                if m:
                    lo = float(m.group(1))
                    found[row] = (lo, float(m.group(2) or lo))
                break
    return found


def show_anchors(rates: dict, refs: dict) -> None:
    for name, (lo, hi) in refs.items():
        if name not in rates:
            continue
        best = max(rates[name]) / 1e6
        line = f"  {name}: {best:.1f} M/s here, {lo:g}-{hi:g} M/s in anchors.md"
        if best < lo * 0.7 or best > hi * 1.3:
            line += "  WARNING: more than 30% off: find out why before quoting a ratio"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1 << 20, help="records per run (default 1Mi; at most 2Mi)")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each variant (default 5)")
    ap.add_argument("--json", help="also write the rates (records/s, every round) to this file")
    ap.add_argument("--only", choices=("consume", "produce"), help="run one half only")
    args = ap.parse_args(argv)
    if not 0 < args.records < (64 << 20) // 32:
        ap.error("--records must be between 1 and 2Mi - 1 (the 64 MiB rings)")
    c = build_c_bench()
    libbpf = load_libbpf()
    for what in (c, libbpf):
        if isinstance(what, str):
            print(f"note: libbpf rows skipped: {what}", file=sys.stderr)
    with pybpf.load(str(OBJECT)) as obj:
        bench = Bench(obj, args.records, c, libbpf)
        try:
            bench.rb_batch.read_batch()  # start empty
            bench.empty_user_ring()
            consume = produce = {}
            if args.only != "produce":
                consume = run(bench, CONSUMERS, bench.fill, bench.check_sum, args.rounds)
            if args.only != "consume":
                produce = run(bench, PRODUCERS, lambda: None, bench.empty_user_ring, args.rounds)
        finally:
            bench.close()
    print(f"{args.records} records of {RECORD} bytes, 64 MiB rings, best of {args.rounds} interleaved rounds; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if consume:
        show("kernel -> user (RINGBUF), consume: sum of the low 32 bits of each record's first u64", consume,
             [("/ libbpf C", CONSUMERS[0][0]), ("/ ctypes way", CONSUMERS[1][0])])
    if produce:
        show("user -> kernel (USER_RINGBUF), produce: the same 24 bytes each", produce,
             [("/ libbpf C", PRODUCERS[0][0])])
    refs = anchors()
    if refs and (consume or produce):
        print(f"\nC anchors ({ANCHORS}):")
        show_anchors({**consume, **produce}, refs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": args.records, "consume": consume, "produce": produce}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
