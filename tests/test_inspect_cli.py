"""``python -m pybpf inspect`` run as a user runs it (a subprocess, its real output): CO-RE
relocations (checked against libbpf's own debug log from ``bpftool -d prog loadall``), ring
buffer record types, instruction counts that add up, ``--program`` alone, ``--json``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def _run(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([PYTHON, "-m", "pybpf", "inspect", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    return proc


def _ok(*args) -> str:
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _libbpf_log(obj: str) -> str:
    """libbpf's debug log of loading every program of OBJ (bpftool -d prog loadall), pins removed."""
    pin = f"/sys/fs/bpf/pybpf_inspect_test_{os.getpid()}"
    try:
        proc = subprocess.run(["bpftool", "-d", "prog", "loadall", obj, pin], capture_output=True, text=True,
                              timeout=120)
    finally:
        if os.path.isdir(pin):
            for name in os.listdir(pin):
                os.unlink(os.path.join(pin, name))
            os.rmdir(pin)
    assert not os.path.exists(pin)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


_SPEC = re.compile(r"prog '(\w+)': relo #(\d+): (<\w+> .*)$")
_CAND = re.compile(r"prog '(\w+)': relo #(\d+): matching candidate #0 (<\w+> .*)$")
_PATCH = re.compile(r"prog '(\w+)': relo #(\d+): patched insn #(\d+) \(.*?\) imm(?:64)? (\d+) -> (\d+)$")


def test_core_listing_matches_libbpf_debug_log():
    """Every CO-RE relocation of core_heavy.o: kind, local type and access path as libbpf prints
    them, and with --kernel the candidate it matched and the value it patched, for all 115."""
    if os.geteuid() != 0 or shutil.which("bpftool") is None:
        pytest.skip("needs root and bpftool (libbpf's log is the reference)")
    obj = program("core_heavy")
    log = _libbpf_log(obj)
    want_spec, want_cand, want_patch = {}, {}, {}
    for line in log.splitlines():
        line = line.removeprefix("libbpf: ").rstrip()
        if m := _CAND.search(line):
            want_cand[(m[1], int(m[2]))] = m[3]
        elif m := _PATCH.search(line):
            want_patch[(m[1], int(m[2]))] = (int(m[3]), int(m[4]), int(m[5]))
        elif m := _SPEC.search(line):
            want_spec[(m[1], int(m[2]))] = m[3]
    assert len(want_spec) == 115, log[-3000:]

    data = json.loads(_ok(obj, "--core", "--kernel", "--json"))
    got_spec, got_cand, got_patch = {}, {}, {}
    for f in data:
        for r in f["relocations"]:
            key = (f["function"], r["index"])
            got_spec[key] = r["spec"]
            k = r["kernel"]
            assert not k["poison"] and not k.get("error"), (key, k)
            got_cand[key] = k["target"]
            got_patch[key] = (r["insn"], r["imm"], k["new"])
    assert got_spec == want_spec
    assert got_cand == want_cand
    assert got_patch == want_patch

    # the text form says the same, one line per relocation (and one per resolution with --kernel)
    text = _ok(obj, "--core", "--kernel")
    assert text.startswith("CO-RE relocations (115):\n")
    for (fn, i), spec in want_spec.items():
        assert f"relo #{i}: insn #{want_patch[(fn, i)][0]}: {spec}\n" in text
    assert text.count("\n      kernel: ") == 115
    for key, cand in want_cand.items():
        assert f"      kernel: {cand}: {want_patch[key][1]} -> {want_patch[key][2]}\n" in text
    # without --kernel: the local side only, no kernel needed
    local = _ok(obj, "--core")
    assert "kernel:" not in local and local.count("    relo #") == 115
    assert "relo #0: insn #15: <byte_off> [5] struct task_struct.pid (0:92 @ offset 1264)" in local


def test_core_listing_of_one_program_and_of_an_object_without_core():
    out = _ok(program("core_heavy"), "--core", "--program", "heavy")
    # heavy and the three subprograms it calls
    assert re.findall(r"^  (\w+) (\w+) ", out, re.M) == [
        ("program", "heavy"), ("subprogram", "read_mm"), ("subprogram", "read_signal_cred"),
        ("subprogram", "read_ns_fs_files")]
    assert _ok(program("user_ringbuf"), "--core") == "CO-RE relocations (0):\n  (none)\n"


def test_ring_buffers_show_their_record_type():
    out = _ok(program("user_ringbuf"))
    rows = {line.split()[0]: line for line in out.splitlines() if "RINGBUF" in line}
    assert rows["user_ringbuf"].endswith("record struct user_sample")
    assert rows["kernel_ringbuf"].endswith("record struct event")
    maps = {m["name"]: m for m in json.loads(_ok(program("user_ringbuf"), "--json"))["maps"]}
    assert maps["kernel_ringbuf"]["record_type"] == "struct event"
    assert maps["user_ringbuf"]["record_type"] == "struct user_sample"
    assert "record_type" not in maps["user_rin.bss"]


@pytest.mark.parametrize("name", ["user_ringbuf", "core_heavy", "calls_test"])
def test_instruction_counts_add_up(name):
    """The total is the program's own instructions plus each subprogram's, and it is the count
    --disasm shows (the linked program)."""
    obj = program(name)
    text = _ok(obj)
    data = json.loads(_ok(obj, "--json"))
    disasm = {d["program"]: d for d in json.loads(_ok(obj, "--disasm", "--json"))}
    for p in data["programs"]:
        parts = [p["own_insns"]] + [s["insns"] for s in p["subprograms"]]
        assert sum(parts) == p["insn_cnt"] == disasm[p["name"]]["insn_cnt"], p
        assert "other_insns" not in p
        line = re.search(rf"^    {p['insn_cnt']} instructions(.*)$", text.split(f"  {p['name']}: ", 1)[1], re.M)
        assert line, text
        shown = [int(n) for n in re.findall(r"(\d+) own|\w+ (\d+)(?= \+|$)", line[1]) for n in n if n]
        if p["subprograms"]:
            assert sum(shown) == p["insn_cnt"], line[0]
    if name == "user_ringbuf":
        assert "33 instructions = 9 own + subprograms: do_nothing_cb 24" in text


def test_program_alone_shows_only_that_program():
    out = _ok(program("user_ringbuf"), "--program", "kill_exit")
    assert out.splitlines()[0].startswith("  kill_exit: section 'tracepoint/syscalls/sys_exit_kill'")
    assert "maps (" not in out and "global variables" not in out
    p = json.loads(_ok(program("user_ringbuf"), "--program", "kill_exit", "--json"))
    assert p["name"] == "kill_exit" and p["insn_cnt"] == 33
    bad = _run(program("user_ringbuf"), "--program", "nope")
    assert bad.returncode != 0 and "no program 'nope' (this object has: kill_exit)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_json_for_everything():
    obj = program("globals_test")
    d = json.loads(_ok(obj, "--json"))
    assert {"programs", "maps", "variables"} <= d.keys()
    (lay,) = json.loads(_ok(obj, "--type", "struct data_struct", "--json"))
    assert [(m["name"], m["offset"], m["size"]) for m in lay["members"]] == [
        ("x", 0, 4), ("y", 4, 2), ("z", 6, 2), ("w", 8, 8)]
    assert lay["size"] == 16 and lay["padding"] == 0
    dis = json.loads(_ok(program("user_ringbuf"), "--disasm", "--json"))
    assert any("call bpf_user_ringbuf_drain#209" in line for line in dis[0]["lines"])
    core = json.loads(_ok(program("core_heavy"), "--core", "--json"))
    assert sum(len(f["relocations"]) for f in core) == 115
    r = core[0]["relocations"][0]
    assert (r["kind"], r["type"], r["access"], r["path"]) == ("byte_off", "struct task_struct", "0:92",
                                                               "struct task_struct.pid")
