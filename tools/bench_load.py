#!/usr/bin/env python3
"""Benchmark: loading BPF objects with pybpf vs libbpf (bpftool prog loadall), whole process.

For each object, the median wall time (all columns of all objects in one round
robin, so the machine's noise falls on every column alike) of:

- ``bpftool``: ``bpftool prog loadall OBJ /sys/fs/bpf/...`` (libbpf; the pins are
  removed after each run);
- ``warm``: ``python -c "import pybpf; pybpf.load(OBJ).close()"`` in a fresh
  virtualenv, as a user runs it: bytecode compiled, pybpf's caches warm;
- ``new``: the first load of a new object (the file with other trailing bytes each
  run, as after a recompile): the object's own cache entries (parsed spec, CO-RE
  resolutions) are cold, so it is parsed (pyelftools imported) and relocated in the
  process; what is per boot (vmlinux BTF's record index, CO-RE candidates, attach
  targets) is warm, as on a machine where pybpf ran before;
- ``cold``: every cache cold: an empty cache folder (``XDG_CACHE_HOME``) each run,
  as the first pybpf process of a boot;
- ``in-proc``: ``pybpf.load(OBJ)`` alone, timed inside a warm process.

Then a phase breakdown per object (medians, in ms), for warm and new loads:
Python start-up (``python -c pass``), ``import pybpf`` (and its runtime classes), parse (``pybpf.open``),
relocation (the rest of ``load()``: linking, CO-RE, attach targets, map and
program set-up) and syscalls (time inside ``bpf(2)``: map creation, program
loads with the verifier, BTF load, probes).  The goals are checked on the median
over the objects bpftool loads.

    sudo python tools/bench_load.py [OBJ ...] [--runs N]

The virtualenv is made in a temporary folder with no packages of its own: a .pth
file puts this checkout and the interpreter's site-packages (pyelftools) on its
path, but the hooks of that site-packages' own .pth files do not run.  Default
objects: the libbpf-tools-style programs/tools_*.o, execsnoop.o and
syscall_latency.o, programs/user_ringbuf.o and the CO-RE objects programs/core_*.o.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: (column, goal as a ratio to bpftool's whole process)
GOALS = {"warm": 2.5, "new": 5.0, "in-proc": 0.5}

#: run in the virtualenv: times each phase of one load and prints them as JSON (ms)
PHASES = r"""
import sys, time, json
t0 = time.perf_counter()
import pybpf
from pybpf import Map, Object, ObjectSpec, Program     # as IN_PROCESS: what 'import pybpf' was
t1 = time.perf_counter()
from pybpf.kernel import syscall as _sc
_raw, _spent = _sc._bpf_syscall, [0.0]
def _timed(*args):
    t = time.perf_counter()
    try:
        return _raw(*args)
    finally:
        _spent[0] += time.perf_counter() - t
_sc._bpf_syscall = _timed
t2 = time.perf_counter()
spec = pybpf.open(sys.argv[1])
t3 = time.perf_counter()
obj = spec.load()
t4 = time.perf_counter()
obj.close()
print(json.dumps({"import": t1 - t0, "parse": t3 - t2, "relocation": t4 - t3 - _spent[0],
                  "syscalls": _spent[0], "load": t4 - t2}))
"""

#: run in the virtualenv: pybpf.load alone, in a process whose imports are done: the modules
#: that ``import pybpf`` imported before it became lazy (the runtime classes and the object
#: spec), so the column measures what it did; the loader's modules are still imported inside
IN_PROCESS = r"""
import sys, time, json
import pybpf
from pybpf import Map, Object, ObjectSpec, Program
t = time.perf_counter()
obj = pybpf.load(sys.argv[1])
dt = time.perf_counter() - t
obj.close()
print(json.dumps({"load": dt}))
"""


def make_venv(where: str) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", where], check=True)
    py = os.path.join(where, "bin", "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "pybpf-bench.pth"), "w") as f:
        f.write(f"{ROOT}\n{sysconfig.get_paths()['purelib']}\n")
    return py


def default_objects() -> list:
    progs = os.path.join(ROOT, "programs")
    return (sorted(glob.glob(os.path.join(progs, "tools_*.o")))
            + [os.path.join(progs, n) for n in ("execsnoop.o", "syscall_latency.o", "user_ringbuf.o")]
            + sorted(glob.glob(os.path.join(progs, "core_*.o"))))


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
    objects = [os.path.abspath(o) for o in args.objects or default_objects()]
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    tmp = tempfile.mkdtemp(prefix="bench_load_")
    load_before = os.getloadavg()
    try:
        venv_py = make_venv(os.path.join(tmp, "venv"))
        # as a user runs it: bytecode cached (this workplace sets PYTHONDONTWRITEBYTECODE), and a
        # cache folder of the benchmark's own
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "PYBPF_CACHE", "PYTHONPATH")}
        env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
        cold_home = os.path.join(tmp, "cold")
        cold_env = dict(env, XDG_CACHE_HOME=cold_home)
        pin = os.path.join("/sys/fs/bpf", f"bench_load_{os.getpid()}")
        phases_py = os.path.join(tmp, "phases.py")
        inproc_py = os.path.join(tmp, "in_process.py")
        with open(phases_py, "w") as f:
            f.write(PHASES)
        with open(inproc_py, "w") as f:
            f.write(IN_PROCESS)

        def unpin():
            shutil.rmtree(pin, ignore_errors=True)

        def wipe_cold():
            shutil.rmtree(cold_home, ignore_errors=True)

        def columns(obj: str) -> dict:
            code = f"import pybpf; pybpf.load({obj!r}).close()"
            # a new object each run (a recompile): the same file with a different trailing byte
            # pattern after its last section, so neither its parse nor its CO-RE resolutions are
            # cached; what is per boot (vmlinux BTF's record index, candidates, attach targets) is
            fresh = os.path.join(tmp, "new_" + os.path.basename(obj))
            fresh_phases = os.path.join(tmp, "phases_" + os.path.basename(obj))
            with open(obj, "rb") as f:
                body = f.read()
            runs = itertools.count()

            def renew():
                for path in (fresh, fresh_phases):
                    with open(path, "wb") as f:
                        f.write(body + next(runs).to_bytes(8, "little"))
            renew()
            return {
                "bpftool": ([bpftool, "prog", "loadall", obj, pin], env, unpin),
                "warm": ([venv_py, "-c", code], env, None),
                "new": ([venv_py, "-c", f"import pybpf; pybpf.load({fresh!r}).close()"], env, renew),
                "cold": ([venv_py, "-c", code], cold_env, wipe_cold),
                "in-proc": ([venv_py, inproc_py, obj], env, None),
                "phases warm": ([venv_py, phases_py, obj], env, None),
                "phases new": ([venv_py, phases_py, fresh_phases], env, None),
            }

        def measure(cols: dict) -> tuple[dict, dict]:
            times: dict = {k: [] for k in cols}
            printed: dict = {k: [] for k in cols}
            for i in range(args.runs + 1):              # round robin; the first round warms up
                for name, (cmd, e, after) in cols.items():
                    t = time.perf_counter()
                    proc = subprocess.run(cmd, env=e, cwd=tmp, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
                    dt = time.perf_counter() - t
                    if after:
                        after()
                    if proc.returncode != 0:
                        if times[name] is not None:
                            err = proc.stderr.decode(errors="replace").strip().splitlines()
                            print(f"bench_load: {name}: {err[-1] if err else proc.returncode}", file=sys.stderr)
                        times[name] = None
                        continue
                    if i and times[name] is not None:
                        times[name].append(dt)
                        if proc.stdout.startswith(b"{"):
                            printed[name].append(json.loads(proc.stdout))
            medians = {k: statistics.median(v) if v else float("nan") for k, v in times.items()}
            phases = {k: {p: statistics.median(r[p] for r in v) for p in v[0]} for k, v in printed.items() if v}
            return medians, phases

        start, _ = measure({"venv": ([venv_py, "-c", "pass"], env, None)})
        py_start = start["venv"]
        cols = {(obj, k): c for obj in objects for k, c in columns(obj).items()}
        results, phases = measure(cols)
        load_after = os.getloadavg()
        print(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
              f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after; {os.cpu_count()} CPUs; "
              f"medians of {args.runs} interleaved runs")
        print(f"Python start-up in the virtualenv ('python -c pass'): {py_start * 1e3:.1f} ms\n")
        names = ("warm", "new", "cold", "in-proc")
        print(f"{'object':<22} {'bpftool':>8} " + " ".join(f"{n:>15}" for n in names))
        ratios: dict = {n: [] for n in names}
        for obj in objects:
            r = {k: results[(obj, k)] for k in ("bpftool",) + names}
            if (obj, "in-proc") in phases:
                r["in-proc"] = phases[(obj, "in-proc")]["load"]     # its own clock, not the process's
            lib = r["bpftool"]
            refused = lib != lib                                    # NaN: bpftool refused it
            cells = []
            for n in names:
                if r[n] != r[n]:
                    cells.append(f"{'fails':>15}")
                    continue
                ratio = r[n] / lib if not refused else float("nan")
                if not refused:
                    ratios[n].append(ratio)
                cells.append(f"{r[n] * 1e3:6.1f}ms {ratio:5.2f}x" if not refused else f"{r[n] * 1e3:6.1f}ms     -")
            print(f"{os.path.basename(obj):<22} {'refuses' if refused else f'{lib * 1e3:6.1f}ms':>8} "
                  + " ".join(cells))
        print(f"{'median ratio':<22} {'':>8} " + " ".join(
            f"{statistics.median(ratios[n]):14.2f}x" if ratios[n] else f"{'-':>15}" for n in names))
        print("\nwarm: caches warm; new: first load of a new object (its own caches cold, the boot's warm);\n"
              "cold: every cache cold (an empty cache folder); in-proc: pybpf.load() alone in a warm process;\n"
              "ratios to bpftool prog loadall's whole process; medians over the objects bpftool loads\n")
        for col, goal in GOALS.items():
            if ratios[col]:
                m = statistics.median(ratios[col])
                print(f"goal {col:<8} <= {goal:.1f}x bpftool: {m:.2f}x  {'met' if m <= goal else 'MISSED'}")
        print("\nphases (ms): Python start-up, import pybpf, parse (pybpf.open), relocation (the rest of "
              "load()), syscalls (inside bpf(2))")
        print(f"{'object':<22} {'load':<5} {'start':>6} {'import':>7} {'parse':>6} {'reloc':>6} {'syscalls':>8} "
              f"{'sum':>6}")
        for obj in objects:
            for kind in ("warm", "new"):
                p = phases.get((obj, f"phases {kind}"))
                if p is None:
                    print(f"{os.path.basename(obj):<22} {kind:<5} fails")
                    continue
                parts = (py_start, p["import"], p["parse"], p["relocation"], p["syscalls"])
                print(f"{os.path.basename(obj):<22} {kind:<5} " + " ".join(
                    f"{v * 1e3:{w}.1f}" for v, w in zip(parts, (6, 7, 6, 6, 8))) + f" {sum(parts) * 1e3:6.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(os.path.join("/sys/fs/bpf", f"bench_load_{os.getpid()}"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
