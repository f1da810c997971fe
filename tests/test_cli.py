"""The command line: the tutorial session as a user runs it, errors, Ctrl-C, no root."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import pybpf
from conftest import ROOT, program

PYTHON = sys.executable


def _prog_exists(prog_id: int) -> bool:
    """Whether the kernel still has the BPF program with this id."""
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.constants import Cmd
    try:
        fd = sc.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id)
    except pybpf.Error:
        return False
    os.close(fd)
    return True


def _prog_names(pid: int) -> dict[int, str]:
    """{id: name} of the BPF programs process PID holds open (its own, not another test's)."""
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import ProgInfo
    from pybpf.kernel.constants import Cmd
    names = {}
    for prog_id in _prog_fds_of(pid):
        try:
            fd = sc.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, prog_id)
        except pybpf.Error:
            continue
        try:
            names[prog_id] = sc.obj_get_info_by_fd(fd, ProgInfo()).name.decode()
        finally:
            os.close(fd)
    return names


class Session:
    """``python -m pybpf ...`` running in the repository root, stdout read line by line."""

    def __init__(self, *args, **kwargs):
        self.proc = subprocess.Popen([PYTHON, "-m", "pybpf", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **kwargs)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:        # a failed test: the CLI must not outlive it
            self.proc.kill()
            self.proc.wait()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, predicate, timeout=20.0, on_idle=None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if on_idle:
                    on_idle()
                continue
            if line is None:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        self.proc.kill()
        raise AssertionError(f"no matching line; got {self.seen!r}; stderr: {self.proc.stderr.read()!r}")

    def finish(self, timeout=10.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        while True:
            line = self.lines.get(timeout=5)
            if line is None:
                break
            self.seen.append(line)
        return self.proc.returncode, self.proc.stderr.read()


@pytest.mark.kernel
def test_seed_session_rows_per_kill():
    """The README's seed command: a Draining line, the header, one row per kill() seen.

    The tracepoint sees every process's kill(); rows from other processes may come
    in between, so we wait for three of ours and check every row's shape."""
    s = Session("load", program("user_ringbuf"))
    s.wait_for(lambda l: l.startswith("TIME"))
    progs = _prog_names(s.proc.pid)
    assert list(progs.values()) == ["kill_exit"]
    assert s.seen[0] == "Draining current samples..."
    assert s.seen[1].split() == ["TIME", "EVENT", "COMM", "PID"]
    kill = lambda: os.kill(os.getpid(), 0)  # noqa: E731 - kill(2) with signal 0: the traced syscall
    comm = open("/proc/self/comm").read().strip()[:15]
    ours = []
    while len(ours) < 3:
        row = s.wait_for(lambda l: l[:2].isdigit(), on_idle=kill)
        ts, event, row_comm, pid = row.rsplit(None, 1)[0].split(None, 2) + [row.split()[-1]]
        assert time.strptime(ts, "%H:%M:%S")
        assert event == "SIGN"
        if int(pid) == os.getpid():
            assert row_comm.strip() == comm
            ours.append(row)
        s.wait_for(lambda l: l == "Draining current samples...")
    s.proc.send_signal(signal.SIGINT)
    code, err = s.finish()
    assert code == 130, err                               # 128 + SIGINT, as shells report it
    assert not any(_prog_exists(i) for i in progs)        # unloaded once the CLI is gone


@pytest.mark.kernel
def test_ctrl_c_exits_cleanly_and_unloads():
    s = Session("load", program("user_ringbuf"))
    s.wait_for(lambda l: l.startswith("TIME"))
    progs = _prog_names(s.proc.pid)
    assert list(progs.values()) == ["kill_exit"]
    s.proc.send_signal(signal.SIGINT)
    code, err = s.finish()
    assert code == 130, err
    assert "Traceback" not in err
    assert not any(_prog_exists(i) for i in progs)


@pytest.mark.kernel
def test_feed_answered_in_the_tutorial():
    """The tutorial with --feed: the BPF side answers each sample drained with an event
    (its content is not read there: test_feed_json_sample_by_btf_type checks what is written)."""
    s = Session("load", program("user_ringbuf"), "--count", "1", "--feed", 'user_ringbuf={"i": 7, "comm": "x"}')
    s.wait_for(lambda l: l.startswith("TIME"))
    s.wait_for(lambda l: l[:2].isdigit(), on_idle=lambda: os.kill(os.getpid(), 0))
    code, err = s.finish()
    assert code == 0, err


@pytest.mark.kernel
def test_feed_json_sample_by_btf_type():
    """--feed MAP=JSON with --type: the sample the kernel drains is exactly the JSON encoded by
    that BTF struct (none of its values is what the default sample holds: our pid, a number).
    ringbuf_test's `drain` echoes each sample of `urb` into `rb`, which the CLI prints in hex."""
    fields = {"count": 0xA1B2C3, "size": 77, "discard_every": 5, "start_seq": 0x7EADBEEF, "flags": 0x1122334455}
    assert os.getpid() not in fields.values()
    with Session("load", program("ringbuf_test"), "--count", "2", "--type", "urb=struct produce_args",
                 "--feed", "urb=" + json.dumps(fields)) as s:
        want = struct.pack("<IIIIQ", *fields.values())        # struct produce_args: 4 u32, a u64
        for n in range(2):                                    # a sample at start, one after each record
            s.wait_for(lambda l: l == "Draining current samples...")
            # drain_args: flags, echo; returns the number of samples drained
            assert _run_program_of(s.proc.pid, "drain", struct.pack("<QI4x", 0, 1)) == 1
            row = s.wait_for(lambda l: " bytes: " in l)
            assert row.split()[2:4] == ["rb", str(len(want))]
            assert bytes.fromhex(row.split()[-1]) == want
        code, err = s.finish()
        assert code == 0, err


def _run_program_of(pid: int, name: str, ctx: bytes) -> int:
    """BPF_PROG_TEST_RUN of the program NAME that process PID holds open (found through its
    /proc fdinfo, so another test's program of the same name is never run, waiting for the
    process to load it); returns retval."""
    import ctypes
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.attrs import ProgInfo, TestRunAttr
    from pybpf.kernel.constants import Cmd
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for fd in _prog_fds_of(pid):
            ours = sc.get_fd_by_id(Cmd.PROG_GET_FD_BY_ID, fd)
            try:
                if sc.obj_get_info_by_fd(ours, ProgInfo()).name.decode() != name:
                    continue
                buf = ctypes.create_string_buffer(ctx, len(ctx))
                attr = TestRunAttr(prog_fd=ours, ctx_in=ctypes.addressof(buf), ctx_size_in=len(ctx))
                sc.bpf(Cmd.PROG_TEST_RUN, attr)
                return attr.retval
            finally:
                os.close(ours)
        time.sleep(0.05)
    raise AssertionError(f"process {pid} holds no program {name!r}")


def _prog_fds_of(pid: int) -> list[int]:
    """Ids of the BPF programs process PID has open (the prog_id lines of its fdinfo)."""
    ids = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        ids += [int(l.split()[1]) for l in info.splitlines() if l.startswith("prog_id:")]
    return ids


@pytest.mark.kernel
def test_generic_object_streams_hex_or_fields():
    """An object without tutorial types loads, prints each record of its ring buffer in hex
    (map name, length, bytes) and stops after --count; records are made by running the loaded
    `produce` program (seq at offset 0, then .bss `fill`, zero) with sizes not multiples of 8."""
    with Session("load", program("ringbuf_test"), "--count", "3") as s:
        first = 0x1A2B3C40
        # produce_args: count, size, discard_every, start_seq, flags
        assert _run_program_of(s.proc.pid, "produce", struct.pack("<IIIIQ", 3, 13, 0, first, 0)) == 3
        code, err = s.finish(timeout=20)
        assert code == 0, err
        rows = [l for l in s.seen if " bytes: " in l]
        assert len(rows) == 3, s.seen
        for i, row in enumerate(rows):
            ts, label, name, size, _, data = row.split()
            assert time.strptime(ts, "%H:%M:%S")
            assert (name, size) == ("rb", "13")
            assert bytes.fromhex(data) == struct.pack("<I", first + i) + bytes(9)


@pytest.mark.kernel
def test_rate_counts_the_records_streamed():
    """--rate prints a line a second with each ring buffer's records/s and bytes/s since the
    previous line: 3 records of 13 bytes, made in the first second, are in one of the two
    lines (a line comes 1 to 1.5 s after the previous one: select's timeout is 0.5 s)."""
    with Session("load", program("ringbuf_test"), "--rate", "--duration", "2.6") as s:
        assert _run_program_of(s.proc.pid, "produce", struct.pack("<IIIIQ", 3, 13, 0, 1, 0)) == 3
        code, err = s.finish(timeout=20)
        assert code == 0, err
        assert len([l for l in s.seen if " bytes: " in l]) == 3, s.seen
        rates = [l for l in err.splitlines() if l.startswith("pybpf: rb: ")]
        assert len(rates) == 2, err
        nonzero = [l.split()[2:5:2] for l in rates if not l.startswith("pybpf: rb: 0 records/s")]
        assert len(nonzero) == 1, err
        records, nbytes = float(nonzero[0][0]), float(nonzero[0][1].rstrip(",").removesuffix("B/s"))
        assert 3 / 1.6 <= records <= 3 and abs(nbytes / records - 13) < 0.1, err


def test_without_root_says_so_in_one_line():
    """Without CAP_BPF/CAP_SYS_ADMIN: root drops every capability (setpriv clears the bounding
    and inheritable sets, so the execve gives none), which works wherever the interpreter is."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop capabilities"
    proc = subprocess.run([setpriv, "--bounding-set=-all", "--inh-caps=-all", PYTHON, "-m", "pybpf", "load",
                           program("user_ringbuf")], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYBPF_CACHE="0"))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "root" in lines[0] and "CAP_BPF" in lines[0]
    assert proc.stdout == ""


def test_missing_file_is_one_clear_error(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", str(tmp_path / "nope.o")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("pybpf: error: cannot read BPF object")
    assert "Traceback" not in proc.stderr


def test_not_an_object_is_one_clear_error(tmp_path):
    bogus = tmp_path / "bogus.o"
    bogus.write_bytes(b"#!/bin/sh\necho hi\n")
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", str(bogus)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "not an ELF file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.kernel
def test_verifier_rejection_shows_source_line():
    proc = subprocess.run([PYTHON, "-m", "pybpf", "load", program("verifier_fail")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "val = v[idx]; /* deliberate out-of-bounds */" in proc.stderr
    assert "invalid access to map value" in proc.stderr
    assert "Traceback" not in proc.stderr


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pybpf", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_inspect_describes_programs_maps_and_globals():
    """Offline, as a student would look at the tutorial object (no root needed)."""
    proc = _run("inspect", program("user_ringbuf"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "kill_exit: section 'tracepoint/syscalls/sys_exit_kill', TRACEPOINT" in out
    assert "subprograms: do_nothing_cb" in out
    assert "relocations: map user_ringbuf, map kernel_ringbuf, global read" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    maps = {r[0]: r for r in rows}
    assert maps["user_ringbuf"][1:5] == ["USER_RINGBUF", "0", "0", "262144"]
    assert maps["kernel_ringbuf"][1:5] == ["RINGBUF", "0", "0", "262144"]
    assert maps["user_rin.bss"][1:6] == ["ARRAY", "4", "24", "1", "MMAPABLE"]
    assert [".bss", "0", "4", "int", "read", "0"] in rows


def test_inspect_struct_layout_shows_holes_and_padding():
    proc = _run("inspect", program("globals_test"), "--type", "struct data_struct")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "struct data_struct {"
    offsets = {l.split()[1].rstrip(";").split("[")[0]: l.split("/*")[1].split()[:2]
               for l in lines if "/*" in l and ";" in l.split("/*")[0]}
    assert offsets == {"x": ["0", "4"], "y": ["4", "2"], "z": ["6", "2"], "w": ["8", "8"]}
    assert "size: 16, cachelines: 1, members: 4" in proc.stdout


def _callback_offset(name: str, prog: str) -> int:
    """The imm the loaded PROG's ld_imm64 of its one callback gets, from the object: the
    relocation names the callback's function (a section symbol + the insn's own imm), which
    is linked right after PROG's instructions; the imm is relative to the insn after the pair."""
    import struct as st
    import pybpf
    spec = pybpf.open(program(name))
    main = spec.programs[prog].function
    (reloc,) = [r for r in main.relocations if spec.symbol_section(r.symbol) != main.section
                and spec.symbol_section(r.symbol) != ".maps"]
    imm = st.unpack_from("<i", bytes(main.insns), reloc.insn * 8 + 4)[0]
    callee = spec.function_at(spec.symbol_section(reloc.symbol), (reloc.symbol.value + imm) // 8)
    assert callee is not None and callee.name == "do_nothing_cb"
    return main.insn_cnt - (reloc.insn + 1)        # the callee starts right after main's insns


def test_inspect_disasm_names_helpers_maps_and_source():
    proc = _run("inspect", program("user_ringbuf"), "--disasm")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "r1 = map[user_ringbuf]" in out
    assert f"r2 = subprog[+{_callback_offset('user_ringbuf', 'kill_exit')}#do_nothing_cb]" in out
    assert "call bpf_user_ringbuf_drain#209" in out
    assert "; bpf_user_ringbuf_drain(&user_ringbuf, do_nothing_cb, NULL, 0);" in out
    assert "long do_nothing_cb(struct bpf_dynptr * dynptr, void * context):" in out


@pytest.mark.parametrize("fmt", ["raw", "c"])
def test_btf_dump_matches_bpftool(fmt):
    import shutil
    bpftool = shutil.which("bpftool") or ("/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else None)
    if bpftool is None:
        pytest.skip("bpftool is not installed (tools/install-test-deps.sh installs it)")
    ours = _run("btf", "dump", program("user_ringbuf"), "--format", fmt)
    assert ours.returncode == 0, ours.stderr
    extra = ["format", "c"] if fmt == "c" else []
    theirs = subprocess.run([bpftool, "btf", "dump", "file", program("user_ringbuf"), *extra],
                            capture_output=True, text=True, check=True)
    assert ours.stdout == theirs.stdout
