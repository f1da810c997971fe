#!/usr/bin/env python3
"""SIGINT at random moments of load / attach / poll / close: does anything leak?

Two kinds of random trial, each in a fresh subprocess, with the signal sent
after a seeded random delay, and one sweep:

* library trials (``--trials N``): the child loads several objects under
  ``programs/`` over and over (load, attach, ring/user ring/perf buffers,
  poll, test runs, close).  When the KeyboardInterrupt reaches it, it does
  what a user does: ``close()`` on everything it holds (twice, as allowed),
  then reports the BPF fds and BPF map mappings it still has, against a
  baseline taken after one uninterrupted cycle.  A child that keeps cycling
  until its deadline never saw the interrupt: it was swallowed.
* CLI trials (``--cli N``): ``python -m pybpf load OBJECT`` gets SIGINT at a
  random moment from its start: the exit code must be 130, stderr must hold no
  traceback, and no program of the object may stay in the kernel once it exits.
  A SIGINT in the interpreter's own start-up (the first ~20 ms: site, runpy),
  before any pybpf code runs, gets CPython's traceback (or, in the first few ms,
  the default action of SIGINT); those are counted apart
  (``interpreter_startup``), and ``tracebacks`` / ``not_130`` count the rest.
* the syscall sweep (``--every-syscall``): one child runs the library cycle once
  for each bpf() and perf_event_open call of a cycle, with a real SIGINT just as
  that call returned (counted in the order the cycle makes them), then closes
  everything; each run must see the KeyboardInterrupt and end holding what it
  held before.  Deterministic: every syscall of the cycle gets its interrupt.

    python tools/sigint_trials.py --trials 400 --cli 100 --every-syscall --seed 1

Prints one line per failing trial and a summary; ``--json`` prints the
summary as JSON (the tests read it).  Exit status 1 when any trial failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = os.path.join(ROOT, "programs")

# what the library child cycles through: tracepoint and raw tracepoint links, ring buffer and
# user ring buffer, a perf event array, syscall programs with test runs, mmap'ed globals
CYCLE = ("tracepoint_test", "user_ringbuf", "perf_test", "ringbuf_test", "globals_test", "maps_test")

_CHILD_CYCLE = r"""
import gc, os, sys, time, traceback
sys.path.insert(0, ROOT)
import pybpf
from pybpf.kernel.constants import MapType

swallowed_where = []
def hook(u):
    if isinstance(u.exc_value, KeyboardInterrupt):
        swallowed_where.append(f"{u.err_msg or 'Exception ignored in'}: {u.object!r}")
sys.unraisablehook = hook

def bpf_handles():
    kinds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("anon_inode:") and any(k in target for k in ("bpf", "btf", "perf_event", "eventpoll")):
            kinds[target] = kinds.get(target, 0) + 1
    with open("/proc/self/maps") as f:
        n = sum(1 for line in f if "bpf-map" in line or "bpf_map" in line)
    if n:
        kinds["mmap:bpf-map"] = n
    return kinds

held = []
phase = ["start"]

def cycle():
    for name in CYCLE:
        phase[0] = "load " + name
        obj = pybpf.load(os.path.join(PROGRAMS, name + ".o"))
        held.append(obj)
        phase[0] = "attach " + name
        obj.attach()
        for m in obj.maps.values():
            if m.type == MapType.RINGBUF:
                phase[0] = "ringbuf " + name
                rb = pybpf.RingBuffer(m, lambda r: None)
                held.append(rb)
                phase[0] = "poll " + name
                rb.poll(1)
            elif m.type == MapType.USER_RINGBUF:
                phase[0] = "user ringbuf " + name
                u = pybpf.UserRingBuffer(m)
                held.append(u)
                u.write(bytes(20))
            elif m.type == MapType.PERF_EVENT_ARRAY:
                phase[0] = "perfbuf " + name
                pb = pybpf.PerfBuffer(m, lambda cpu, r: None)
                held.append(pb)
                phase[0] = "perf poll " + name
                pb.poll(1)
        if name == "globals_test":
            phase[0] = "variables " + name
            for v in obj.variables.values():
                v.get()
        if name == "maps_test":
            phase[0] = "map ops " + name
            for m in obj.maps.values():
                list(m.items())
    phase[0] = "close"
    while held:
        held[-1].close()      # a user's 'with' block: what it holds stays held until close() returns
        held.pop()


def close_all():
    # what a user does after Ctrl-C: close everything they hold (a second close is allowed)
    errors = []
    for rounds in range(2):
        for r in reversed(held):
            try:
                r.close()
            except BaseException as e:
                errors.append(f"{type(r).__name__}.close: {type(e).__name__}: {e}")
    held.clear()
    gc.collect()
    return errors

def difference(baseline):
    now = bpf_handles()
    return {k: now.get(k, 0) - baseline.get(k, 0) for k in set(now) | set(baseline)
            if now.get(k, 0) != baseline.get(k, 0)}

def interrupted_where():
    tb = traceback.extract_tb(sys.exc_info()[2])
    ours = [f for f in tb if "pybpf" in f.filename]
    last = (ours or tb)[-1]
    return f"{phase[0]} @ {os.path.relpath(last.filename, ROOT)}:{last.lineno} ({last.name})"

cycle()                       # warm-up: kernel facts, caches, lazy imports
"""

# the random trial: SIGINT from the parent at a random moment of the cycles
_CHILD_RANDOM = _CHILD_CYCLE + r"""
t0 = time.monotonic()
cycle()                       # one timed cycle: the parent spreads its delays over it
gc.collect()
baseline = bpf_handles()
print(f"ready {time.monotonic() - t0:.6f}", flush=True)
deadline = time.monotonic() + DEADLINE
where = None
interrupted = False
try:
    while time.monotonic() < deadline:
        cycle()
except KeyboardInterrupt:
    interrupted = True
    where = interrupted_where()
errors = close_all()
leaked = {k: n for k, n in difference(baseline).items() if n > 0}
import json
print("REPORT " + json.dumps({"interrupted": interrupted, "where": where, "leaked": leaked,
                              "close_errors": errors, "swallowed_in": swallowed_where}), flush=True)
"""

# the sweep: one cycle per syscall of a cycle (every bpf() and perf_event_open that made or
# changed something), each interrupted by a real SIGINT just as that syscall returned
_CHILD_SWEEP = _CHILD_CYCLE + r"""
import json, signal
from pybpf.kernel import perf, syscall as sc
from pybpf.kernel.constants import Cmd
real_bpf, real_perf = sc._bpf_syscall, perf._perf_event_open
count, target, fired = [0], [-1], [None]

def after(result, what):
    if result >= 0:
        count[0] += 1            # before the signal: its KeyboardInterrupt leaves at once
        if count[0] - 1 == target[0]:
            fired[0] = what
            os.kill(os.getpid(), signal.SIGINT)
    return result

sc._bpf_syscall = lambda nr, cmd, addr, size: after(real_bpf(nr, cmd, addr, size), f"bpf({Cmd(cmd).name})")
perf._perf_event_open = lambda *args: after(real_perf(*args), "perf_event_open")
cycle()
count[0] = 0
cycle()
total = count[0]
results = []
for n in range(total):
    count[0], target[0], fired[0], where = 0, n, None, None
    gc.collect()
    baseline = bpf_handles()     # each trial against what the process held just before it
    try:
        cycle()
    except KeyboardInterrupt:
        where = interrupted_where()
    errors = close_all()
    results.append({"syscall": n, "what": fired[0], "interrupted": where is not None, "where": where,
                    "leaked": difference(baseline), "close_errors": errors})
print("REPORT " + json.dumps({"total": total, "results": results}), flush=True)
"""


def _default_sigint() -> None:
    # a shell's background job starts with SIGINT ignored, and its children inherit that
    # (Python then installs no KeyboardInterrupt handler): give the child the default back
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _report(stdout: str) -> dict | None:
    """The JSON a child printed on its ``REPORT`` line (None when it printed none)."""
    return next((json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("REPORT ")), None)


def run_library_trial(rng: random.Random, python: str, span: float = 1.0) -> dict:
    """One child; SIGINT after a delay drawn uniformly from [0, span x one cycle of the child]."""
    fraction = rng.uniform(0.0, span)
    code = f"ROOT = {ROOT!r}\nPROGRAMS = {PROGRAMS!r}\nCYCLE = {CYCLE!r}\nDEADLINE = 10.0\n" + _CHILD_RANDOM
    proc = subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "ready":
        out, err = proc.communicate(timeout=30)
        return {"ok": False, "delay": 0.0, "error": f"child did not start: {ready}{out}{err[-2000:]}"}
    delay = fraction * float(ready[1])
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"ok": False, "delay": delay, "error": "child hung after SIGINT"}
    report = _report(out)
    if report is None:
        return {"ok": False, "delay": delay, "error": f"no report (rc {proc.returncode}): {err[-2000:]}"}
    report["delay"] = delay
    report["swallowed"] = not report["interrupted"]
    report["ok"] = not report["leaked"] and report["interrupted"]
    return report


def run_sweep(python: str) -> dict:
    """One child that runs a cycle once for each syscall of a cycle, interrupted just as that
    syscall returned; each result says whether the interrupt reached the child and what the
    child still held once it closed everything."""
    code = f"ROOT = {ROOT!r}\nPROGRAMS = {PROGRAMS!r}\nCYCLE = {CYCLE!r}\n" + _CHILD_SWEEP
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=900,
                          preexec_fn=_default_sigint)
    report = _report(proc.stdout)
    if report is None:
        raise SystemExit(f"sweep child gave no report (rc {proc.returncode}): {proc.stderr[-3000:]}")
    return report


# -- CLI trials ---------------------------------------------------------------------------------------

def _prog_ids() -> dict[int, str]:
    """id -> name of every BPF program in the kernel."""
    sys.path.insert(0, ROOT)
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import ProgInfo
    from pybpf.kernel.constants import Cmd
    out = {}
    pid = 0
    while True:
        pid = sc.get_next_id(Cmd.PROG_GET_NEXT_ID, pid)
        if pid is None:
            return out
        try:
            fd = sc.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, pid)
        except Exception:
            continue
        try:
            out[pid] = bytes(sc.obj_get_info_by_fd(fd, ProgInfo()).name).rstrip(b"\0").decode()
        finally:
            os.close(fd)


def _held_prog_ids() -> set[int]:
    """Program ids some live process holds an fd of (their fdinfo's prog_id)."""
    held = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                try:
                    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                        for line in f:
                            if line.startswith("prog_id:"):
                                held.add(int(line.split()[1]))
                except OSError:
                    pass
        except OSError:
            pass
    return held


def _object_prog_names(path: str) -> set[str]:
    sys.path.insert(0, ROOT)
    import pybpf
    return {p.name[:15] for p in pybpf.open(path).programs.values()}


def ended_before_pybpf(returncode: int, stderr: str) -> bool:
    """Did a CLI process that got SIGINT end before the first line of pybpf ran?  Then its
    outcome is CPython's: in the interpreter's own start-up (site, runpy finding the package)
    the signal gets CPython's traceback, with no pybpf frame in it; earlier still, before
    CPython installs its SIGINT handler, the signal's default action ends the process (what a
    shell reports as 130), with nothing printed."""
    if "Traceback" in stderr:
        frames = [line for line in stderr.splitlines() if line.lstrip().startswith("File ")]
        return not any(os.sep + "pybpf" + os.sep in f for f in frames)
    return returncode == -signal.SIGINT and not stderr.strip()


def run_cli_trial(rng: random.Random, max_delay: float, python: str, name: str, names: set[str]) -> dict:
    delay = rng.uniform(0.0, max_delay)
    before = max(_prog_ids(), default=0)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([python, "-m", "pybpf", "load", os.path.join(PROGRAMS, name + ".o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            preexec_fn=_default_sigint)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"ok": False, "delay": delay, "object": name, "error": "still running 15 s after SIGINT (swallowed)",
                "swallowed": True}
    left = {}
    for _ in range(20):     # links and programs of an exited process go within moments
        held = _held_prog_ids()
        left = {i: n for i, n in _prog_ids().items() if i > before and n in names and i not in held}
        if not left:
            break
        time.sleep(0.1)
    traceback_printed = "Traceback" in err
    before_pybpf = ended_before_pybpf(proc.returncode, err)
    report = {"delay": delay, "object": name, "rc": proc.returncode, "traceback": traceback_printed,
              "before_pybpf": before_pybpf, "left_in_kernel": sorted(left.values()), "swallowed": False}
    if traceback_printed:
        report["stderr"] = err[-1500:]
    report["ok"] = (proc.returncode == 130 and not traceback_printed and not left) or (before_pybpf and not left)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=400, help="library trials (default 400)")
    ap.add_argument("--cli", type=int, default=0, help="CLI trials (default 0)")
    ap.add_argument("--every-syscall", action="store_true",
                    help="also one cycle per syscall of a cycle, interrupted just as that syscall returned")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--span", type=float, default=1.2,
                    help="library: SIGINT within this many cycles of the child's start (default 1.2)")
    ap.add_argument("--cli-max-delay", type=float, default=1.0, help="latest SIGINT after the CLI starts")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--verbose", action="store_true", help="print every trial")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    summary = {"seed": args.seed, "library": {}, "cli": {}}
    failures = []

    if args.trials:
        leaks = swallowed = errors = 0
        by_where = collections.Counter()
        kinds = collections.Counter()
        close_errors = 0
        for i in range(args.trials):
            r = run_library_trial(rng, args.python, args.span)
            if "error" in r:
                errors += 1
            if r.get("leaked"):
                leaks += 1
                by_where[r.get("where")] += 1
                kinds.update(r["leaked"])
            if r.get("swallowed"):
                swallowed += 1
                by_where["swallowed: " + "; ".join(r.get("swallowed_in") or ["(no unraisable hook call)"])] += 1
            close_errors += bool(r.get("close_errors"))
            if not r["ok"] or args.verbose:
                line = f"library trial {i}: delay {r['delay']:.3f}s " + json.dumps({k: v for k, v in r.items()
                                                                                    if k not in ("ok", "delay")})
                print(line, file=sys.stderr)
                if not r["ok"]:
                    failures.append(line)
        summary["library"] = {"trials": args.trials, "span": args.span, "leaking": leaks,
                              "swallowed": swallowed, "errors": errors, "close_raised": close_errors,
                              "leaked_kinds": dict(kinds), "where": dict(by_where.most_common())}
    if args.every_syscall:
        report = run_sweep(args.python)
        results = report["results"]
        for r in results:
            ok = r["interrupted"] and not r["leaked"] and not r["close_errors"]
            if not ok or args.verbose:
                line = "syscall sweep: " + json.dumps(r)
                print(line, file=sys.stderr)
                if not ok:
                    failures.append(line)
        summary["every_syscall"] = {
            "syscalls": report["total"], "leaking": sum(bool(r["leaked"]) for r in results),
            "swallowed": sum(not r["interrupted"] for r in results),
            "close_raised": sum(bool(r["close_errors"]) for r in results),
            "kinds": dict(collections.Counter(r["what"] for r in results).most_common())}
    if args.cli:
        objects = ("user_ringbuf", "tracepoint_test", "ringbuf_test")
        names = {o: _object_prog_names(os.path.join(PROGRAMS, o + ".o")) for o in objects}
        bad_rc = tracebacks = startup = left = swallowed = 0
        rcs = collections.Counter()
        for i in range(args.cli):
            obj = objects[i % len(objects)]
            r = run_cli_trial(rng, args.cli_max_delay, args.python, obj, names[obj])
            rcs[str(r.get("rc"))] += 1
            startup += bool(r.get("before_pybpf"))
            bad_rc += r.get("rc") != 130 and not r.get("before_pybpf")
            tracebacks += bool(r.get("traceback")) and not r.get("before_pybpf")
            left += bool(r.get("left_in_kernel"))
            swallowed += bool(r.get("swallowed"))
            if not r["ok"] or args.verbose:
                line = f"cli trial {i}: delay {r['delay']:.3f}s " + json.dumps({k: v for k, v in r.items()
                                                                                if k not in ("ok", "delay")})
                print(line, file=sys.stderr)
                if not r["ok"]:
                    failures.append(line)
        summary["cli"] = {"trials": args.cli, "max_delay": args.cli_max_delay, "exit_codes": dict(rcs),
                          "not_130": bad_rc, "tracebacks": tracebacks,
                          "interpreter_startup": startup, "left_in_kernel": left,
                          "swallowed": swallowed}
    if args.json:
        print(json.dumps(summary))
    else:
        for part in ("library", "every_syscall", "cli"):
            if summary.get(part):
                print(f"{part}: " + ", ".join(f"{k}={v}" for k, v in summary[part].items()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
