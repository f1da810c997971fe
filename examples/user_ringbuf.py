#!/usr/bin/env python3
"""The user side of the user ring buffer tutorial (eunomia bpf-developer-tutorial
35), in Python with pybpf, on programs/user_ringbuf.o.

The C original reserves a `struct user_sample` in the user ring buffer, fills
it and submits it (write_samples), then polls the kernel ring buffer; every
kill(2) that returns drains the user ring in the kernel, and the BPF program
answers each sample with a `struct event` (the pid and comm of the process that
called kill), printed here as one row.  After each answer a new sample is
written, so the next kill gets one too.

    sudo python examples/user_ringbuf.py            # then, elsewhere: kill -0 $$
    sudo python examples/user_ringbuf.py --count 3 --pid 1234 --duration 30

Stops after --count rows, after --duration seconds, or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if (REPO / "pybpf" / "__init__.py").exists():
    sys.path.insert(0, str(REPO))  # run from a checkout: its pybpf, not an older installed one

import pybpf  # noqa: E402

OBJECT = REPO / "programs" / "user_ringbuf.o"

exiting = False


def sig_handler(signo, frame):
    global exiting
    exiting = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=0, help="stop after this many rows (0: no limit)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--pid", type=int, default=0, help="only show kills made by this process")
    parser.add_argument("--object", default=str(OBJECT), help="the BPF object (default: %(default)s)")
    args = parser.parse_args()

    signal.signal(signal.SIGINT, sig_handler)
    signal.signal(signal.SIGTERM, sig_handler)
    rows = 0

    with pybpf.load(args.object) as obj:        # maps created, programs verified and loaded
        obj.attach()                            # tracepoint/syscalls/sys_exit_kill

        def handle_event(event):                # a struct event, typed by the map's record tag
            nonlocal rows
            if args.pid and event.pid != args.pid:
                return
            print(f"{time.strftime('%H:%M:%S')} {'SIGN':<5} {event.comm:<16} {event.pid:<7}", flush=True)
            rows += 1

        with pybpf.RingBuffer(obj.maps["kernel_ringbuf"], handle_event) as rb, \
                pybpf.UserRingBuffer(obj.maps["user_ringbuf"]) as user_ringbuf:

            def drain_current_samples():
                print("Draining current samples...", flush=True)

            def write_samples():
                entry = user_ringbuf.reserve()  # a struct user_sample, inside the ring
                entry.i = os.getpid()
                entry.comm = "hello"
                user_ringbuf.submit(entry)      # the next kill(2) drains it
                drain_current_samples()

            write_samples()
            print(f"{'TIME':<8} {'EVENT':<5} {'COMM':<16} {'PID':<7}", flush=True)
            deadline = time.monotonic() + args.duration if args.duration else None
            while not exiting:
                err = rb.poll(100)               # records handled, or a negative error
                if err < 0:
                    print(f"Error polling ring buffer: {err}", file=sys.stderr)
                    return 1
                if err > 0:
                    write_samples()
                if args.count and rows >= args.count:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
            written = user_ringbuf.records
        answered = obj.variables["read"].get()
    print(f"{rows} rows, {written} samples written, {answered} answered by the kernel", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
