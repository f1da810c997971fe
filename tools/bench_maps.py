#!/usr/bin/env python3
"""Map element throughput: batch operations against one element at a time, pybpf against libbpf.

    python tools/bench_maps.py [--entries N] [--rounds R] [--maps hash,percpu,array] [--json FILE]

On the maps of programs/pin_test.o (131072 entries each, __u32 keys, __u64 values):
``batch_hash`` (HASH), ``batch_percpu`` (PERCPU_HASH: one value per possible CPU) and
``batch_array`` (ARRAY).  N keys (default 100,000; spread over the u32 range for the hash maps,
0..N-1 for the array) are written and the whole map is read back; every row is checked to
have handled every element (and the pybpf rows to have read back exactly what was written):

* read the whole map:
    - libbpf's C ``bpf_map_lookup_batch`` in a loop (all entries per call; a hash bucket that
      does not fit is asked again with more room), built now against Debian's libbpf-dev from
      tools/bench/map_batch_bench.c;
    - libbpf's C ``bpf_map_get_next_key`` + ``bpf_map_lookup_elem`` per element;
    - pybpf ``lookup_batch()`` (typed: Python ints, lists for per-CPU values), and with
      ``batch_size=4096``;
    - pybpf ``items()`` (BPF_MAP_GET_NEXT_KEY + BPF_MAP_LOOKUP_ELEM per element, typed);
* write N elements:
    - libbpf's C ``bpf_map_update_batch`` (all in one call) and ``bpf_map_update_elem`` per element;
    - pybpf ``update_batch(dict)`` and ``update(k, v)`` per element.

Each variant runs R rounds, interleaved (round 1 of every variant, then round 2...), so that
load from other processes hits them alike; the table shows the best and the median rate in
elements per second and the ratio of the best rates to libbpf's batch row.  Times are wall time
around the call (time.perf_counter; CLOCK_MONOTONIC in C), the Python rows including the
decoding of every key and value into Python objects.  Needs root, cc and libbpf-dev (for the
libbpf rows; without them those rows are skipped).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pybpf  # noqa: E402
from pybpf.kernel.constants import MapType  # noqa: E402

OBJECT = ROOT / "programs" / "pin_test.o"
C_SOURCE = ROOT / "tools" / "bench" / "map_batch_bench.c"
BUILD_DIR = ROOT / "tools" / ".bench"
MAPS = {"hash": "batch_hash", "percpu": "batch_percpu", "array": "batch_array"}
clock = time.perf_counter


def build_c_bench() -> ctypes.CDLL | str:
    """Builds tools/bench/map_batch_bench.c against libbpf (-lbpf); the library, or why not."""
    BUILD_DIR.mkdir(exist_ok=True)
    lib = BUILD_DIR / "libmap_batch_bench.so"
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
    u32, ptr, done = ctypes.c_uint32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_long)
    for name, args in (("bench_lookup_batch", [ctypes.c_int, u32, u32, u32, u32, ptr, ptr, done]),
                       ("bench_update_batch", [ctypes.c_int, u32, u32, u32, u32, ptr, ptr, done]),
                       ("bench_lookup_loop", [ctypes.c_int, u32, u32, u32, ptr, ptr, done]),
                       ("bench_update_loop", [ctypes.c_int, u32, u32, u32, ptr, ptr, done])):
        fn = getattr(c, name)
        fn.restype = ctypes.c_longlong
        fn.argtypes = args
    return c


class Bench:
    """One map: the elements to write (Python and packed for C) and each variant as a method
    returning (elements handled, seconds)."""

    def __init__(self, m, entries: int, c):
        self.m, self.c = m, c
        self.ncpus = m._ncpus
        self.array = m.type == MapType.ARRAY
        keys = list(range(entries)) if self.array else [k * 2654435761 % (1 << 32) for k in range(1, entries + 1)]
        if self.ncpus:
            self.items = {k: [(k + c) % (1 << 64) for c in range(self.ncpus)] for k in keys}
        else:
            self.items = {k: k * 3 + 1 for k in keys}
        self.n = entries
        self.read_n = m.max_entries if self.array else entries     # an array always has all its entries
        self.stride = m._value_stride()
        self.key_size = m.key_size
        self.packed_keys = (ctypes.c_char * (entries * m.key_size)).from_buffer_copy(m._encode_keys(keys))
        self.packed_values = (ctypes.c_char * (entries * self.stride)).from_buffer_copy(
            m._encode_values(list(self.items.values())))
        self.out_keys = (ctypes.c_char * (m.max_entries * m.key_size))()
        self.out_values = (ctypes.c_char * (m.max_entries * self.stride))()
        self.expected = dict(self.items)
        if self.array:
            self.expected.update({k: 0 for k in range(entries, m.max_entries)})

    # -- preparing --------------------------------------------------------------------------

    def empty(self) -> None:
        if self.array:
            self.m.update_batch({k: 0 for k in range(self.m.max_entries)})
        else:
            self.m.lookup_and_delete_batch()
            assert not self.m.lookup_batch()

    def fill(self) -> None:
        self.empty()
        self.m.update_batch(self.items)

    def check(self) -> None:
        if dict(self.m.lookup_batch()) != self.expected:
            raise SystemExit(f"{self.m.name}: the map does not hold what was written")

    # -- reads ------------------------------------------------------------------------------

    def _c(self, fn, *args) -> tuple[int, float]:
        done = ctypes.c_long(0)
        ns = fn(self.m.fd, *args, ctypes.byref(done))
        if ns < 0:
            raise SystemExit(f"{fn.__name__}: {os.strerror(-ns)}")
        return done.value, ns / 1e9

    def c_lookup_batch(self):
        return self._c(self.c.bench_lookup_batch, self.m.max_entries, self.m.max_entries, self.key_size,
                       self.stride, ctypes.addressof(self.out_keys), ctypes.addressof(self.out_values))

    def c_lookup_loop(self):
        return self._c(self.c.bench_lookup_loop, self.m.max_entries, self.key_size, self.stride,
                       ctypes.addressof(self.out_keys), ctypes.addressof(self.out_values))

    def py_lookup_batch(self):
        t = clock()
        got = self.m.lookup_batch()
        t = clock() - t
        if len(got) != self.read_n or got[0][1] != self.expected[got[0][0]]:
            raise SystemExit("lookup_batch read something else")
        return len(got), t

    def py_lookup_batch_4096(self):
        t = clock()
        got = self.m.lookup_batch(batch_size=4096)
        return len(got), clock() - t

    def py_items(self):
        t = clock()
        got = list(self.m.items())
        return len(got), clock() - t

    # -- writes -----------------------------------------------------------------------------

    def c_update_batch(self):
        return self._c(self.c.bench_update_batch, self.n, self.n, self.key_size, self.stride,
                       ctypes.addressof(self.packed_keys), ctypes.addressof(self.packed_values))

    def c_update_loop(self):
        return self._c(self.c.bench_update_loop, self.n, self.key_size, self.stride,
                       ctypes.addressof(self.packed_keys), ctypes.addressof(self.packed_values))

    def py_update_batch(self):
        t = clock()
        done = self.m.update_batch(self.items)
        return done, clock() - t

    def py_update_loop(self):
        update = self.m.update
        t = clock()
        for k, v in self.items.items():
            update(k, v)
        return self.n, clock() - t


READERS = [
    ("libbpf C bpf_map_lookup_batch", "c_lookup_batch", True),
    ("libbpf C get_next_key + lookup_elem", "c_lookup_loop", True),
    ("pybpf lookup_batch()", "py_lookup_batch", False),
    ("pybpf lookup_batch(batch_size=4096)", "py_lookup_batch_4096", False),
    ("pybpf items() (one at a time)", "py_items", False),
]
WRITERS = [
    ("libbpf C bpf_map_update_batch", "c_update_batch", True),
    ("libbpf C update_elem per element", "c_update_loop", True),
    ("pybpf update_batch(dict)", "py_update_batch", False),
    ("pybpf update(k, v) per element", "py_update_loop", False),
]


def run(bench: Bench, table, rounds: int, reads: bool) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name, _, _ in table}
    for _ in range(rounds):
        for name, method, needs_c in table:
            if needs_c and bench.c is None:
                continue
            if reads:
                bench.fill()
            else:
                bench.empty()
            got, seconds = getattr(bench, method)()
            want = bench.read_n if reads else bench.n
            if got != want:
                raise SystemExit(f"{name}: {got} elements, expected {want}")
            if not reads:
                bench.check()
            rates[name].append(got / seconds)
    return {name: r for name, r in rates.items() if r}


def show(title: str, rates: dict, ref: str) -> None:
    best = {name: max(r) for name, r in rates.items()}
    print(f"\n{title}")
    print(f"  {'':40s} {'best M/s':>9s} {'median':>8s} {'/ C batch':>10s}")
    for name, r in rates.items():
        ratio = f"{best[name] / best[ref]:9.3g}x" if ref in best else ""
        print(f"  {name:40s} {best[name] / 1e6:9.3f} {statistics.median(r) / 1e6:8.3f} {ratio:>10s}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000, help="elements written (default 100,000; at most 131072)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant (default 3)")
    ap.add_argument("--maps", default="hash,percpu,array", help="which maps (default hash,percpu,array)")
    ap.add_argument("--json", help="also write the rates (elements/s, every round) to this file")
    args = ap.parse_args(argv)
    chosen = [m.strip() for m in args.maps.split(",") if m.strip()]
    if any(m not in MAPS for m in chosen):
        ap.error(f"--maps takes {', '.join(MAPS)}")
    if not 0 < args.entries <= 131072:
        ap.error("--entries must be between 1 and 131072 (the maps' max_entries)")
    c = build_c_bench()
    if isinstance(c, str):
        print(f"note: libbpf rows skipped: {c}", file=sys.stderr)
        c = None
    results = {}
    with pybpf.load(str(OBJECT)) as obj:
        print(f"{args.entries} elements (__u32 keys, __u64 values) per map, best of {args.rounds} interleaved "
              f"rounds; {pybpf.loader.possible_cpus()} possible CPUs; load average {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs")
        for which in chosen:
            m = obj.maps[MAPS[which]]
            bench = Bench(m, args.entries, c)
            reads = run(bench, READERS, args.rounds, True)
            writes = run(bench, WRITERS, args.rounds, False)
            kind = f"{m.name} ({m.type.name}, {m.max_entries} entries)"
            show(f"{kind}: read the whole map ({bench.read_n} elements)", reads, READERS[0][0])
            show(f"{kind}: write {bench.n} elements", writes, WRITERS[0][0])
            results[which] = {"reads": reads, "writes": writes}
            bench.empty()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"entries": args.entries, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
