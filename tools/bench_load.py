#!/usr/bin/env python3
"""Benchmark: loading BPF objects with pybpf vs libbpf (bpftool prog loadall), whole process.

For each object, the median wall time (runs interleaved, so machine noise hits all
columns alike) of:

- ``bpftool prog loadall OBJ /sys/fs/bpf/...`` (libbpf; the pins are removed after);
- ``python -c "import pybpf; pybpf.load(OBJ).close()"`` in a fresh virtualenv
  (``venv``): a user's install, where interpreter start-up is Python's own;
- a new object (``new object``: the file with different trailing bytes each run,
  as after a recompile): parsed (pyelftools imported), vmlinux BTF read and CO-RE
  resolved in the process, with the per-kernel caches (vmlinux BTF's record index,
  candidate names) warm;
- the same with ``PYBPF_CACHE=0`` (``no caches``);
- the same with this machine's interpreter as it is (``machine``): its
  site-packages run start-up hooks (here a sandbox's certifi hook, ~30-50 ms)
  that are not pybpf's and not in a user's virtualenv.

    sudo python tools/bench_load.py [OBJ ...] [--runs N]

The virtualenv is made in a temporary folder with no packages of its own: a .pth
file puts this checkout and the interpreter's site-packages (pyelftools) on its
path, but the hooks of that site-packages' own .pth files do not run.  Default
objects: programs/user_ringbuf.o and the CO-RE objects programs/core_*.o.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def make_venv(where: str) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", where], check=True)
    py = os.path.join(where, "bin", "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "pybpf-bench.pth"), "w") as f:
        f.write(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    return py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("objects", nargs="*")
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_load: needs root (it loads programs)", file=sys.stderr)
        return 1
    if not os.path.isdir("/sys/fs/bpf"):
        print("bench_load: bpffs is not mounted at /sys/fs/bpf", file=sys.stderr)
        return 1
    objects = args.objects or [os.path.join(ROOT, "programs", "user_ringbuf.o")] + \
        sorted(glob.glob(os.path.join(ROOT, "programs", "core_*.o")))
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    tmp = tempfile.mkdtemp(prefix="bench_load_")
    try:
        venv_py = make_venv(os.path.join(tmp, "venv"))
        # as a user runs it: bytecode cached (this workplace sets PYTHONDONTWRITEBYTECODE), and a
        # cache folder of the benchmark's own
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYBPF_CACHE")}
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        cold_env = dict(env, PYBPF_CACHE="0")
        pin = os.path.join("/sys/fs/bpf", f"bench_load_{os.getpid()}")

        def unpin():
            shutil.rmtree(pin, ignore_errors=True)

        def columns(obj: str) -> dict:
            code = f"import pybpf; pybpf.load({obj!r}).close()"
            # a new object each run (a recompile): the same file with a different trailing byte
            # pattern after its last section, so neither its parse nor its CO-RE resolutions are
            # cached; what is per kernel (vmlinux BTF's record index, candidate names) is
            fresh = os.path.join(tmp, "new_" + os.path.basename(obj))
            with open(obj, "rb") as f:
                body = f.read()

            runs = itertools.count()

            def renew():
                with open(fresh, "wb") as f:
                    f.write(body + next(runs).to_bytes(8, "little"))
            renew()
            new_code = f"import pybpf; pybpf.load({fresh!r}).close()"
            machine_env = dict(env, PYTHONPATH=ROOT)
            return {
                "bpftool": ([bpftool, "prog", "loadall", obj, pin], env, unpin),
                "venv": ([venv_py, "-c", code], env, None),
                "new": ([venv_py, "-c", new_code], env, renew),
                "cold": ([venv_py, "-c", code], cold_env, None),
                "machine": ([sys.executable, "-c", code], machine_env, None),
            }

        def measure(cols: dict) -> dict:
            times: dict = {k: [] for k in cols}
            for i in range(args.runs + 1):              # round robin; the first round warms up
                for name, (cmd, e, after) in cols.items():
                    t = time.perf_counter()
                    proc = subprocess.run(cmd, env=e, cwd=tmp, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
                    dt = time.perf_counter() - t
                    if after:
                        after()
                    if proc.returncode != 0:
                        times[name] = None
                        continue
                    if i and times[name] is not None:
                        times[name].append(dt)
            return {k: statistics.median(v) if v else float("nan") for k, v in times.items()}

        start = measure({"venv": ([venv_py, "-c", "pass"], env, None),
                         "machine": ([sys.executable, "-c", "pass"], env, None)})
        print(f"interpreter start, 'python -c pass': {start['venv'] * 1e3:.1f} ms in the virtualenv, "
              f"{start['machine'] * 1e3:.1f} ms with this machine's site-packages hooks; "
              f"medians of {args.runs} interleaved runs\n")
        print(f"{'object':<16} {'bpftool':>8} {'pybpf':>15} {'new object':>15} {'no caches':>15} "
              f"{'machine':>15}")
        # every column of every object in one round robin: noise (this machine's is large and
        # comes in bursts) falls on all of them alike
        cols = {(obj, k): c for obj in objects for k, c in columns(os.path.abspath(obj)).items()}
        results = measure(cols)
        for obj in objects:
            r = {k: results[(obj, k)] for k in ("bpftool", "venv", "new", "cold", "machine")}
            lib = r["bpftool"]

            def cell(k):
                ratio = f"{r[k] / lib:5.2f}x" if lib == lib else "     -"    # NaN: bpftool refused it
                return f"{r[k] * 1e3:6.1f}ms {ratio}"
            refused = lib != lib
            print(f"{os.path.basename(obj):<16} {'refuses' if refused else f'{lib * 1e3:6.1f}ms':>8} {cell('venv')} {cell('new')} {cell('cold')} "
                  f"{cell('machine')}")
        print("\npybpf: the same object again (warm disk caches); new object: first load of an object "
              "(a recompile);\nno caches: PYBPF_CACHE=0; machine: as 'pybpf', with this machine's "
              "interpreter and its site hooks")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
