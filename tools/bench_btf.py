#!/usr/bin/env python3
"""Benchmark: parsing the kernel's BTF (/sys/kernel/btf/vmlinux) with pybpf.

Prints, in one run, pybpf's figures beside the anchors measured on this kind of
machine (../shared/reference/anchors.md) and beside a construct-based parser
written here for the comparison (construct is what pybpf uses for headers, and
what it does NOT use for type records: this shows why).

    python tools/bench_btf.py [--btf FILE] [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import construct as cs  # noqa: E402

from pybpf.kernel import btf as kbtf  # noqa: E402
from pybpf.spec.btf import BTF  # noqa: E402

ANCHOR_INDEX_PASS = 0.12        # s, "a struct-based Python index pass" (anchors.md)
ANCHOR_CONSTRUCT = 6.0          # s, "construct, interpreted" (estimated from 20k types)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# A construct declaration of the whole type section: the readable way, and the slow one.
_KIND_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_KIND_PER_VLEN = {4: 12, 5: 12, 6: 8, 19: 12, 13: 8, 15: 12}
RECORD = cs.Struct(
    "name_off" / cs.Int32ul,
    "info" / cs.Int32ul,
    "size_type" / cs.Int32ul,
    "kind" / cs.Computed(lambda c: (c.info >> 24) & 0x1F),
    "vlen" / cs.Computed(lambda c: c.info & 0xFFFF),
    "extra" / cs.Bytes(lambda c: _KIND_EXTRA.get(c.kind, 0)),
    "vitems" / cs.Array(lambda c: c.vlen if c.kind in _KIND_PER_VLEN else 0,
                       cs.Bytes(lambda c: _KIND_PER_VLEN.get(c.kind, 0))),
)


def construct_parse(types: bytes, limit: int) -> int:
    stream = io.BytesIO(types)
    n = 0
    while stream.tell() < len(types) and n < limit:
        RECORD.parse_stream(stream)
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--btf", default=kbtf.VMLINUX)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--construct-types", type=int, default=20000,
                    help="parse this many records with construct and extrapolate (default 20000)")
    args = ap.parse_args()
    raw = open(args.btf, "rb").read()
    btf = BTF(raw, source=args.btf)
    ntypes = len(btf)
    print(f"BTF {args.btf}: {ntypes} types, {len(raw) / 1e6:.1f} MB; best of {args.repeat}")

    cold = best(lambda: BTF(raw, source=args.btf), args.repeat)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        kbtf.forget()
        kbtf.parse_cached(raw, source=args.btf)            # fills the disk cache

        def from_disk():
            kbtf.forget()
            kbtf.parse_cached(raw, source=args.btf)
        disk = best(from_disk, args.repeat)
        memo = best(lambda: kbtf.parse_cached(raw, source=args.btf), args.repeat)
        boot = None
        if args.btf == kbtf.VMLINUX:
            # how pybpf opens the running kernel's BTF: mapped where the kernel allows it (else
            # read into the BTF's own buffer), the index cached under the boot id (no content hash)
            kbtf.forget()
            kbtf.vmlinux_btf()

            def from_boot():
                kbtf.forget()
                kbtf._mapped.clear()    # as in a new process: map again (the old mappings stay)
                kbtf.vmlinux_btf()
            boot = best(from_boot, args.repeat)

    def decode_all():
        b = BTF(raw, source=args.btf)
        for _ in b:
            pass
    full = best(decode_all, max(1, args.repeat // 2))

    type_section = bytes(raw[btf.type_off:btf.type_off + btf.type_len])
    t = time.perf_counter()
    n = construct_parse(type_section, args.construct_types)
    per = (time.perf_counter() - t) / n
    construct_total = per * ntypes

    rows = [
        ("open (index pass, no cache)", cold, ANCHOR_INDEX_PASS, "struct-based Python index pass"),
        ("open again, new process (disk index cache)", disk, ANCHOR_INDEX_PASS, "struct-based Python index pass"),
        ("open again, same process (memo by content hash)", memo, ANCHOR_INDEX_PASS,
         "struct-based Python index pass"),
    ]
    if boot is not None:
        rows.append(("running kernel's, new process (mapped or read, index per boot)", boot, ANCHOR_INDEX_PASS,
                     "struct-based Python index pass"))
    rows += [
        ("decode every type record to objects", full, None, ""),
        (f"construct, interpreted ({n} records, extrapolated)", construct_total, ANCHOR_CONSTRUCT,
         "construct, interpreted (anchor)"),
    ]
    print(f"\n{'what':<52} {'pybpf':>10} {'anchor':>10} {'anchor/pybpf':>13}")
    for what, secs, anchor, _ in rows:
        a = f"{anchor * 1000:8.1f}ms" if anchor else "-"
        ratio = f"{anchor / secs:12.1f}x" if anchor else "-"
        print(f"{what:<52} {secs * 1000:8.1f}ms {a:>10} {ratio:>13}")
    print(f"\nconstruct / pybpf index pass: {construct_total / cold:.0f}x slower "
          f"(why type records are parsed with precompiled struct views, not construct)")
    print(f"goal: open under 150 ms: {'met' if cold < 0.150 else 'NOT met'} ({cold * 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
