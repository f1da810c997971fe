"""The load session as a user runs it (issue 14 item 3): a subprocess and its real output for
--no-attach, --filter/--pid, --json, --version, --show-maps/--interval, -v, the verifier's
"rerun with --log" and the console script's usage line."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import tomllib

import pytest

import pybpf
from conftest import ROOT, program

PYTHON = sys.executable


def _run(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pybpf", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _exec_while(proc: subprocess.Popen, argv: list, seconds: float) -> list:
    """Run ``argv`` repeatedly (each bounded to 5 s) while ``proc`` runs, for at most ``seconds``;
    the pids of the processes started."""
    pids = []
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        pids.append(child.pid)
        child.wait(timeout=5)
        time.sleep(0.05)
    return pids


def test_version_is_pyprojects():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert pybpf.__version__ == version
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"python -m pybpf {version}"


def test_console_script_says_pybpf_in_its_usage(tmp_path):
    """The [project.scripts] entry, run as pip's wrapper runs it (a script named pybpf), against
    this checkout; `python -m pybpf` keeps its own name."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        entry = tomllib.load(f)["project"]["scripts"]["pybpf"]
    module, func = entry.split(":")
    script = tmp_path / "pybpf"
    script.write_text(f"import sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([PYTHON, str(script), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: pybpf "), proc.stdout
    proc = subprocess.run([PYTHON, str(script), "--version"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.stdout.strip() == f"pybpf {pybpf.__version__}"
    assert _run("--help").stdout.startswith("usage: python -m pybpf ")


@pytest.mark.kernel
def test_nothing_attached_exits_non_zero_unless_no_attach(no_fd_leak):
    proc = _run("load", program("net_cgroup"))
    assert proc.returncode == 1
    errors = [l for l in proc.stderr.splitlines() if l.startswith("pybpf: error:")]
    assert len(errors) == 1 and "nothing attached" in errors[0], proc.stderr
    proc = _run("load", program("net_cgroup"), "--no-attach", "--duration", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr


@pytest.mark.kernel
def test_json_and_filter_print_only_the_matching_records(no_fd_leak):
    """execsnoop with --json --filter comm=true: /bin/true and /bin/echo are exec'd in turn,
    only true's records come out, each one JSON object with the decoded fields."""
    with subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("execsnoop"), "--json", "--filter", "comm=true",
                           "--count", "3", "--duration", "30"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        time.sleep(1.5)                 # loaded and attached
        _exec_while(proc, ["/bin/echo", "x"], 0.5)
        true_pids = _exec_while(proc, ["/bin/true"], 0.01)
        for _ in range(20):
            if proc.poll() is not None:
                break
            _exec_while(proc, ["/bin/echo", "x"], 0.01)
            true_pids += _exec_while(proc, ["/bin/true"], 0.01)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    records = [json.loads(l) for l in out.splitlines()]
    assert len(records) == 3, out
    for r in records:
        assert r["comm"] == "true" and r["filename"] == "/bin/true" and r["pid"] in true_pids, r


@pytest.mark.kernel
def test_pid_filters_records_by_their_pid_field(no_fd_leak):
    # the pid is known only after the child is forked: run a shell that waits for a line, then execs
    child = subprocess.Popen(["/bin/sh", "-c", "read x; exec /bin/true"], stdin=subprocess.PIPE)
    try:
        with subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("execsnoop"), "--json", "--duration", "20",
                               "--count", "1", "--pid", str(child.pid)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            time.sleep(1.5)
            _exec_while(proc, ["/bin/true"], 0.5)        # other pids: left out
            child.communicate(b"go\n", timeout=5)
            out, err = proc.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert proc.returncode == 0, err
    records = [json.loads(l) for l in out.splitlines()]
    assert [(r["pid"], r["comm"]) for r in records] == [(child.pid, "true")], out


def test_filter_naming_no_field_is_one_error():
    proc = _run("load", program("execsnoop"), "--filter", "nosuch=1", "--duration", "1")
    assert proc.returncode == 1
    assert "no record streamed here has a field 'nosuch'" in proc.stderr and "comm" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.kernel
def test_show_maps_draws_the_log2_histograms_at_exit_and_every_interval(no_fd_leak):
    """syscall_latency.o: struct hist { __u32 slots[] } per key, drawn as print_log2_hist."""
    proc = _run("load", program("syscall_latency"), "--show-maps", "--interval", "1", "--duration", "3.4")
    assert proc.returncode == 0, proc.stderr
    heads = re.findall(r"^map hists: (\d+) histograms?$", proc.stdout, re.M)
    assert len(heads) == 4, proc.stdout      # at 1, 2, 3 s and at exit
    assert int(heads[-1]) >= 1
    assert "usecs" in proc.stdout or "value" in proc.stdout
    rows = re.findall(r"^\s+(\d+) -> (\d+)\s+: (\d+)\s+\|(\**)\s*\|$", proc.stdout, re.M)
    assert rows and any(int(c) > 0 and stars for _, _, c, stars in rows), proc.stdout
    assert "count    distribution" in proc.stdout
    # the other (non-histogram) map is a table of its entries; the ring-less object has no .rodata shown
    assert "start" in proc.stdout
    assert ".rodata" not in proc.stdout


@pytest.mark.kernel
def test_verbose_prints_the_kernels_ids(no_fd_leak):
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import MapInfo, ProgInfo
    from pybpf.kernel.constants import Cmd
    lines: queue.Queue = queue.Queue()
    with subprocess.Popen([PYTHON, "-m", "pybpf", "load", program("execsnoop"), "-v", "--duration", "20"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stderr], daemon=True).start()
        seen = {}
        deadline = time.monotonic() + 15
        while len(seen) < 4 and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            m = re.match(r"pybpf: (program|map) (\S+) id (\d+)", line)
            if m and m.group(2) in ("enter_execve", "exit_execve", "execs", "events"):
                seen[m.group(2)] = (m.group(1), int(m.group(3)))
        try:
            assert len(seen) == 4, seen
            for name, (kind, obj_id) in seen.items():
                cmd, info = (Cmd.PROG_GET_FD_BY_ID, ProgInfo()) if kind == "program" else (Cmd.MAP_GET_FD_BY_ID, MapInfo())
                fd = sc.get_fd_by_id(cmd, obj_id)
                try:
                    assert sc.obj_get_info_by_fd(fd, info).name.decode() == name[:15]
                finally:
                    os.close(fd)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.kernel
def test_verifier_rejection_says_rerun_with_log():
    proc = _run("load", program("verifier_fail"))
    assert proc.returncode == 1
    assert "rerun with --log" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("load", program("verifier_fail"), "--log")
    assert proc.returncode == 1
    assert "rerun with --log" not in proc.stderr
    assert "processed" in proc.stderr          # the verifier log's last line: processed N insns
