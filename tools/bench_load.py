#!/usr/bin/env python3
"""Benchmark: loading BPF objects with pybpf vs libbpf (bpftool prog loadall), whole process.

For each object, prints the median wall time of:
- ``bpftool prog loadall OBJ /sys/fs/bpf/...`` (libbpf; the pins are removed after);
- ``python3 -c "import pybpf; pybpf.load(OBJ).close()"`` (pybpf, whole process);
- the interpreter alone (``python3 -c pass``), and pybpf's in-process load time
  (after import), so the ratio can be read apart.

    sudo python tools/bench_load.py [OBJ ...] [--runs N]

Default objects: programs/user_ringbuf.o (anchor ~3 ms with bpftool) and the
CO-RE objects programs/core_*.o when present (anchor ~27 ms).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

ANCHORS = {"user_ringbuf.o": 0.003}
ANCHOR_CORE = 0.027


# as a user runs it: bytecode cached in __pycache__ (this workplace sets PYTHONDONTWRITEBYTECODE,
# which would recompile every module in every run)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list, runs: int, after=None) -> float:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV)  # warm up
    if after:
        after()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=ENV)
        times.append(time.perf_counter() - t)
        if after:
            after()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("objects", nargs="*")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_load: needs root (it loads programs)", file=sys.stderr)
        return 1
    objects = args.objects or [os.path.join(ROOT, "programs", "user_ringbuf.o")] + \
        sorted(glob.glob(os.path.join(ROOT, "programs", "core_*.o")))
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists("/sys/fs/bpf"):
        print("bench_load: bpffs is not mounted at /sys/fs/bpf", file=sys.stderr)
        return 1
    py = sys.executable
    interp = wall([py, "-c", "pass"], args.runs)
    imported = wall([py, "-c", "import pybpf, pybpf.loader.core"], args.runs)
    import pybpf  # noqa: E402
    print(f"interpreter start ({py} -c pass): {interp * 1000:.1f} ms; with 'import pybpf': "
          f"{imported * 1000:.1f} ms; median of {args.runs} runs\n")
    print(f"{'object':<24} {'bpftool':>9} {'pybpf':>9} {'pybpf/bpftool':>14} {'in-process':>11} {'anchor':>8}")
    for obj in objects:
        name = os.path.basename(obj)
        pin = tempfile.mkdtemp(prefix="bench_", dir="/sys/fs/bpf")
        os.rmdir(pin)

        def unpin():
            shutil.rmtree(pin, ignore_errors=True)
        try:
            lib = wall([bpftool, "prog", "loadall", obj, pin], args.runs, after=unpin)
        except subprocess.CalledProcessError:
            lib = float("nan")
        ours = wall([py, "-c", f"import pybpf; pybpf.load({obj!r}).close()"], args.runs)
        inproc = []
        for _ in range(args.runs):
            t = time.perf_counter()
            pybpf.load(obj).close()
            inproc.append(time.perf_counter() - t)
        anchor = ANCHORS.get(name, ANCHOR_CORE if name.startswith("core_") else None)
        a = f"{anchor * 1000:6.1f}ms" if anchor else "-"
        print(f"{name:<24} {lib * 1000:7.1f}ms {ours * 1000:7.1f}ms {ours / lib:13.1f}x "
              f"{statistics.median(inproc) * 1000:9.1f}ms {a:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
