"""opensnoop into numpy: the openat() calls of one process as one structured array.

    sudo python examples/opensnoop_numpy.py --opens 1000

Loads programs/tools_opensnoop.o (libbpf-tools' opensnoop in miniature: a
tracepoint pair on openat, a ring buffer of ``struct event``, a per-CPU array of
counters), traces this script's own process, makes ``--opens`` openat() calls
(every third one on a file that does not exist), reading the events in batches
with ``RingBuffer.read_array()`` (one structured array each, no Python object per
event) and the counters with ``Map.values_array()``,
and summarises them with numpy.  Needs ``pip install 'pybpf[numpy]'``.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import pybpf
from pybpf.spec.dtypes import c_strings

OBJECT = Path(__file__).resolve().parent.parent / "programs" / "tools_opensnoop.o"
COUNTERS = ("entered", "sent", "dropped", "failed")   # enum open_stat


def make_opens(folder: str, start: int, stop: int) -> tuple[int, int]:
    """openat() calls number start..stop-1 in ``folder``, every third one failing; (opened, failed)."""
    present = os.path.join(folder, "present")
    opened = failed = 0
    if not os.path.exists(present):
        with open(present, "w") as f:                 # an openat() too
            f.write("x")
        opened += 1
    for i in range(start, stop):
        try:
            fd = os.open(present if i % 3 else os.path.join(folder, f"missing-{i}"), os.O_RDONLY)
        except FileNotFoundError:
            failed += 1
        else:
            os.close(fd)
            opened += 1
    return opened, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=1000, help="openat() calls to make and trace")
    args = parser.parse_args(argv)

    spec = pybpf.open(OBJECT)
    spec.variables["targ_tgid"].set(os.getpid())        # .rodata: only this process
    with spec.load() as obj, tempfile.TemporaryDirectory() as folder:
        obj.attach()
        with pybpf.RingBuffer(obj.maps["events"]) as rb:
            opened = failed = 0
            batches = []
            # the 256 KiB ring holds ~840 events: read it every 256 opens, as a tool polls
            for start in range(0, args.opens, 256):
                o, f = make_opens(folder, start, min(start + 256, args.opens))
                opened, failed = opened + o, failed + f
                batches.append(rb.read_array())       # dtype: struct event, from BTF
            events = np.concatenate(batches, dtype=batches[0].dtype)   # dtype=: keep the padding
        counters = obj.maps["stats"].values_array().sum(axis=1)   # (4, CPUs) summed per counter

    # char arrays are bytes of their whole size: after a C string's NUL come whatever bytes
    # the ring held before (bpf_probe_read_user_str stops at the NUL); c_strings cuts there
    fname = c_strings(events["fname"])
    mine = events[np.char.startswith(fname, folder.encode())]
    fname = fname[np.char.startswith(fname, folder.encode())]
    ok = mine["ret"] >= 0
    print(f"{len(events)} events ({events.dtype.itemsize} bytes each, fields: {', '.join(events.dtype.names)})")
    print(f"openat() in {folder}: {int(ok.sum())} opened, {int((mine['ret'] == -errno.ENOENT).sum())} ENOENT "
          f"(made: {opened} opened, {failed} failed)")
    print("counters: " + ", ".join(f"{name} {int(v)}" for name, v in zip(COUNTERS, counters)))
    names, counts = np.unique(fname, return_counts=True)
    top = np.argsort(counts)[::-1][:3]
    for i in top:
        print(f"  {int(counts[i]):6d}  {names[i].decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
