"""`python -m pybpf load` runs objects in the style of the real profilers (issue 12):

* programs/javagc_style: libbpf-tools' javagc: SEC("usdt") programs naming no probe, given
  on the command line (--usdt PROG=PROVIDER:NAME) with --pid or --usdt-binary, GC durations
  sent through a perf buffer.  The "JVM" is a C program of ours with HotSpot's gc__begin /
  gc__end probes (sys/sdt.h), built here with gcc.
* programs/profile_style: libbpf-tools' profile: samples counted per stack id in a hash
  map, a STACK_TRACE map whose value_size the object leaves to user space (--value-size),
  and a usdt//proc/self/exe program (profile's converter), which the CLI cannot attach.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, program

pytestmark = pytest.mark.kernel
PYTHON = sys.executable

FAKE_JVM = r"""
#include <sys/sdt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void pause_ms(long ms) { struct timespec t = {ms / 1000, (ms % 1000) * 1000000L}; nanosleep(&t, 0); }

int main(int argc, char **argv)
{
	int cycles = atoi(argv[1]);
	long gc_ms = atol(argv[2]);

	if (getchar() == EOF)		/* the test says when the tracer is attached */
		return 1;
	for (int i = 0; i < cycles; i++) {
		int full = i % 2;
		DTRACE_PROBE1(hotspot, gc__begin, full);
		pause_ms(gc_ms * (i + 1));
		DTRACE_PROBE1(hotspot, gc__end, full);
	}
	return 0;
}
"""

GC_ROW = re.compile(r"^\d\d:\d\d:\d\d GC_EV cpu=(\d+) pid=(\d+) duration_ns=(\d+) arg0=(-?\d+)$")


@pytest.fixture(scope="module")
def fake_jvm(tmp_path_factory):
    d = tmp_path_factory.mktemp("jvm")
    (d / "jvm.c").write_text(FAKE_JVM)
    subprocess.run(["gcc", "-O2", "-o", str(d / "jvm"), str(d / "jvm.c")], check=True, timeout=60)
    return str(d / "jvm")


def stop(*procs) -> None:
    for p in procs:
        if p is None:
            continue
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def run_gc_session(jvm: str, cycles: int, gc_ms: int, cli_args, attached: int):
    """Start the fake JVM, then the session; once `attached` programs say so on stderr, let
    the JVM run its GCs; return (stdout lines, stderr, returncode, JVM pid)."""
    target = subprocess.Popen([jvm, str(cycles), str(gc_ms)], stdin=subprocess.PIPE)
    session = None
    try:
        args = [a.replace("{pid}", str(target.pid)) for a in cli_args]
        session = subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("javagc_style"), *args],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err = []
        while sum("attached" in line and "not attached" not in line for line in err) < attached:
            line = session.stderr.readline()
            assert line, "".join(err)
            err.append(line)
        time.sleep(0.3)             # the perf buffer goes in after the attach lines
        target.stdin.write(b"\n")
        target.stdin.flush()
        out, rest = session.communicate(timeout=60)
        target.wait(timeout=30)
        return out.splitlines(), "".join(err) + rest, session.returncode, target.pid
    finally:
        stop(session, target)


def gc_rows(lines):
    rows = []
    for line in lines:
        m = GC_ROW.match(line)
        assert m, line
        rows.append(tuple(int(g) for g in m.groups()))
    return rows


def check_durations(rows, pid, gc_ms):
    for i, (cpu, rpid, duration, arg0) in enumerate(rows):
        assert rpid == pid
        assert arg0 == i % 2                             # gc__end's is_full, read by bpf_usdt_arg
        expected = gc_ms * (i + 1) * 1_000_000
        assert expected <= duration < expected + 50_000_000, (i, duration)


def test_javagc_style_with_pid_and_probes_on_the_command_line(fake_jvm, no_fd_leak):
    lines, err, rc, pid = run_gc_session(
        fake_jvm, 4, 20, ["--pid", "{pid}", "--usdt", "gc_begin=hotspot:gc__begin",
                          "--usdt", "gc_end=hotspot:gc__end", "--count", "4", "--duration", "30"], attached=2)
    assert rc == 0, err
    assert f"attached gc_begin (usdt) to {fake_jvm}:hotspot:gc__begin in process {pid} (1 site)" in err
    assert f"attached gc_end (usdt) to {fake_jvm}:hotspot:gc__end in process {pid} (1 site)" in err
    rows = gc_rows(lines)
    assert len(rows) == 4                              # --count 4: one record per GC, exactly
    check_durations(rows, pid, 20)


def test_javagc_style_with_a_binary_path_for_every_process(fake_jvm, no_fd_leak):
    lines, err, rc, pid = run_gc_session(
        fake_jvm, 3, 10, ["--usdt-binary", fake_jvm, "--usdt", "gc_begin=hotspot:gc__begin",
                          "--usdt", "gc_end=hotspot:gc__end", "--count", "3", "--duration", "30"], attached=2)
    assert rc == 0, err
    assert f"attached gc_begin (usdt) to {fake_jvm}:hotspot:gc__begin in every process (1 site)" in err
    check_durations(gc_rows(lines), pid, 10)


def test_javagc_style_without_probes_says_how_to_name_them(no_fd_leak):
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("javagc_style"), "--duration", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert ("pybpf: not attached: gc_begin, gc_end: its section names no probe: give --usdt "
            "PROG=[PATH:]PROVIDER:NAME") in proc.stderr
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("javagc_style"), "--usdt",
                           "gc_start=hotspot:gc__begin"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--usdt: 'gc_start' is not a usdt program of this object (its usdt programs: gc_begin, gc_end)" \
        in proc.stderr


BUSY = """
import time
def busy_function():
    end = time.monotonic() + 20
    while time.monotonic() < end:
        pass
busy_function()
"""


def held_map_ids(pid: int) -> set[int]:
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("map_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def bpftool(*args: str):
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_profile_style_needs_the_stack_depth(no_fd_leak):
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("profile_style"), "--max-entries",
                           "stacks=1024"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "pybpf: error: map 'stacks' (STACK_TRACE) has value_size 0: the object leaves the stack depth for user "
        "space to set before loading; give --value-size stacks=N, N = 8 x the deepest stack to keep "
        "(e.g. stacks=1016: 127 frames, bcc's profile's default)")


def test_profile_style_counts_stacks_of_a_busy_process(no_fd_leak):
    busy = subprocess.Popen([PYTHON, "-c", BUSY])
    session = None
    try:
        session = subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("profile_style"),
                                    "--max-entries", "stacks=1024", "--value-size", "stacks=1016",
                                    "--set", f"target_tgid={busy.pid}", "--sample-freq", "200"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err = []
        while not any("no ring or perf buffer to stream" in line for line in err):
            line = session.stderr.readline()
            assert line, "".join(err)
            err.append(line)
        time.sleep(2.0)
        ids = held_map_ids(session.pid)
        maps = {m["name"]: m for m in bpftool("map", "show") if m["id"] in ids}
        assert maps["stacks"]["bytes_value"] == 1016 and maps["stacks"]["max_entries"] == 1024
        entries = bpftool("map", "dump", "id", str(maps["samples"]["id"]))
        stack_ids = {e["formatted"]["key"]["user_stack_id"] for e in entries}
        stack = bpftool("map", "lookup", "id", str(maps["stacks"]["id"]), "key",
                        *[str(b) for b in max(stack_ids).to_bytes(4, "little")])
        code = executable_ranges(busy.pid)
    finally:
        stop(session, busy)
    text = "".join(err)
    assert "attached on_cpu_sample (perf_event) to a 200 Hz cpu-clock sampling event" in text
    assert "pybpf: not attached: converter: its section names the loader's own executable (/proc/self/exe" in text
    keys = [e["formatted"]["key"] for e in entries]
    counts = [e["formatted"]["value"] for e in entries]
    assert {k["pid"] for k in keys} == {busy.pid} and {k["comm"] for k in keys} == {"python"}
    # 2 s of one busy CPU at 200 Hz: about 400 samples (the counts are read while it runs)
    assert 150 <= sum(counts) <= 600, sum(counts)
    # user-mode samples: a user stack id each; no kernel stack (-EFAULT, as bcc's profile shows it)
    assert min(stack_ids) >= 0
    raw = bytes(int(b, 16) for b in stack["value"])
    frames = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    frames = frames[:frames.index(0)] if 0 in frames else frames
    # the first frame is the sampled instruction: a code address of the busy process (this
    # Python is built without frame pointers, so the frames after it are not reliable and are
    # not checked: the kernel walks frame pointers, as the tutorial's profile shows)
    assert frames and any(lo <= frames[0] < hi for lo, hi in code), (frames, code)


def executable_ranges(pid: int) -> list[tuple[int, int]]:
    out = []
    for line in open(f"/proc/{pid}/maps"):
        addr, perms = line.split()[:2]
        if "x" in perms:
            lo, hi = addr.split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out
