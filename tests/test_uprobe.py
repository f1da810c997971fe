"""uprobes and uretprobes (programs/uprobe_tool.bpf.c): libbpf's ``uprobe/PATH:FUNC[+OFFSET]``
sections, attach through the uprobe PMU with the function's file offset, and a
funclatency-style tool on a function of a small C program compiled here.

File offsets are checked against ``readelf`` (an independent reading of the ELF);
counts against what the traced program itself computes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

import pybpf
from pybpf.links import parse_uprobe_target, resolve_binary, uprobe_file_offset

from conftest import program

N = 41
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

WORKER = r"""
#include <stdio.h>
#include <stdlib.h>

/* the probed function: sum of 0..n */
__attribute__((noinline)) int work(int n)
{
	int s = 0;

	for (int i = 0; i <= n; i++) {
		s += i;
		__asm__ volatile("" : "+r"(s));
	}
	return s;
}

int main(int argc, char **argv)
{
	int n = atoi(argv[1]);
	long total = 0;

	for (int i = 0; i < n; i++)
		total += work(i);
	printf("%ld\n", total);
	return 0;
}
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A non-PIE executable: its functions' addresses differ from their file offsets."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probed program")
    d = tmp_path_factory.mktemp("uprobe")
    (d / "worker.c").write_text(WORKER)
    exe = d / "worker"
    subprocess.run(["gcc", "-O1", "-no-pie", "-o", str(exe), str(d / "worker.c")], check=True)
    return str(exe)


def readelf_offset(path: str, func: str) -> int:
    """File offset of ``func`` from readelf's symbol table and program headers."""
    syms = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True, check=True).stdout
    values = {int(m.group(1), 16) for m in re.finditer(rf"^\s*\d+:\s+([0-9a-f]+)\s+\d+\s+(?:FUNC|IFUNC)\s+\S+\s+\S+\s+\d+\s+"
                                                       rf"{re.escape(func)}(?:@\S*)?$", syms, re.M)}
    assert len(values) == 1, values
    vaddr = values.pop()
    phdrs = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True, check=True).stdout
    for m in re.finditer(r"^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x([0-9a-f]+)",
                         phdrs, re.M):
        off, va, memsz = (int(x, 16) for x in m.groups())
        if va <= vaddr < va + memsz:
            return vaddr - va + off
    raise AssertionError(f"{func} not in a LOAD segment")


def load(getpid_tgid: int = 0):
    s = pybpf.open(program("uprobe_tool"))
    s.variables["getpid_tgid"].set(getpid_tgid)
    return s.load()


def run_worker(worker: str, n: int) -> int:
    return int(subprocess.run([worker, str(n)], capture_output=True, text=True, check=True).stdout)


# -- offline --------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("/usr/bin/bash:readline", ("/usr/bin/bash", "readline", 0)),
    ("libc.so.6:malloc+0x10", ("libc.so.6", "malloc", 16)),
    ("/opt/a:b/c:func+8", ("/opt/a:b/c", "func", 8)),
    ("/bin/x:0x1139", ("/bin/x", "0x1139", 0)),
])
def test_parse_target(target, expected):
    assert parse_uprobe_target(target) == expected


@pytest.mark.parametrize("bad", ["/bin/true", "/bin/true:", ":func", "/bin/true:f+zz"])
def test_parse_target_errors(bad):
    with pytest.raises(pybpf.Error, match="uprobe target"):
        parse_uprobe_target(bad)


def test_binary_resolution_like_libbpf():
    assert os.path.samefile(resolve_binary("libc.so.6"), LIBC)          # library directories
    assert os.path.samefile(resolve_binary("true"), shutil.which("true"))  # PATH
    with pytest.raises(pybpf.Error, match="not found in PATH"):
        resolve_binary("no-such-program-pybpf")
    with pytest.raises(pybpf.Error, match="does not exist"):
        resolve_binary("/nonexistent/bin")


def test_file_offsets_match_readelf(worker):
    assert uprobe_file_offset(LIBC, "getpid") == readelf_offset(LIBC, "getpid")   # versioned getpid@@GLIBC
    off = uprobe_file_offset(worker, "work")
    assert off == readelf_offset(worker, "work")
    assert off < 0x400000        # non-PIE: the address (0x40xxxx) was mapped to a file offset
    with pytest.raises(pybpf.Error, match="no function 'no_such_function'"):
        uprobe_file_offset(worker, "no_such_function")


def test_section_targets():
    s = pybpf.open(program("uprobe_tool"))
    got = {n: (p.sec_def.attach, p.attach_target) for n, p in s.programs.items()}
    assert got == {"func_entry": ("uprobe", ""), "func_exit": ("uretprobe", ""),
                   "getpid_entry": ("uprobe", "libc.so.6:getpid"),
                   "getpid_exit": ("uretprobe", "libc.so.6:getpid")}


# -- in the kernel -------------------------------------------------------------------------------

@pytest.mark.kernel
def test_libc_getpid_from_the_section(no_fd_leak):
    pid = os.getpid()
    with load(getpid_tgid=pid) as obj:
        entry = obj.programs["getpid_entry"].attach()
        exit_ = obj.programs["getpid_exit"].attach()
        assert (entry.kind, entry.target, exit_.kind) == ("uprobe", "libc.so.6:getpid", "uretprobe")
        for _ in range(N):
            os.getpid()                           # a libc getpid() call each time
        assert obj.variables["getpid_calls"].get() == N
        assert obj.variables["last_getpid_ret"].get() == pid
        entry.close()
        os.getpid()
        assert obj.variables["getpid_calls"].get() == N


@pytest.mark.kernel
def test_attach_to_one_process(no_fd_leak):
    with load() as obj:                           # no filter in the program: the perf event filters
        obj.programs["getpid_entry"].attach_uprobe(pid=os.getpid())
        for _ in range(N):
            os.getpid()
        assert obj.variables["getpid_calls"].get() == N


@pytest.mark.kernel
def test_funclatency_on_a_compiled_function(worker, no_fd_leak):
    with load() as obj:
        obj.programs["func_entry"].attach(target=f"{worker}:work")
        exit_link = obj.programs["func_exit"].attach(target=f"{worker}:work")
        assert exit_link.kind == "uretprobe"
        total = run_worker(worker, N)
        v = obj.variables
        assert v["calls"].get() == N
        assert v["arg_sum"].get() == sum(range(N))
        assert v["ret_sum"].get() == total == sum(i * (i + 1) // 2 for i in range(N))
        hist = [obj.maps["latency_ns"][i] for i in range(32)]
        assert sum(hist) == N
        assert all(c == 0 for c in hist[:6])      # no call returns in under 64 ns through two probes
        assert list(obj.maps["starts"].keys()) == []    # every entry met its return


@pytest.mark.kernel
def test_attach_by_file_offset_and_plus_offset(worker, no_fd_leak):
    off = readelf_offset(worker, "work")
    with load() as obj:
        obj.programs["func_entry"].attach(target=f"{worker}:{off:#x}")
        run_worker(worker, 5)
        assert obj.variables["calls"].get() == 5
    with load() as obj:
        obj.programs["func_entry"].attach(target=f"{worker}:work+0")
        run_worker(worker, 3)
        assert obj.variables["calls"].get() == 3


@pytest.mark.kernel
def test_attach_errors(worker, no_fd_leak):
    with load() as obj:
        with pytest.raises(pybpf.Error, match="names no function to probe"):
            obj.programs["func_entry"].attach()
        with pytest.raises(pybpf.Error, match="uretprobes take no offset"):
            obj.programs["func_exit"].attach(target=f"{worker}:work+4")
        with pytest.raises(pybpf.Error, match="no function 'nope'"):
            obj.programs["func_entry"].attach(target=f"{worker}:nope")
        assert obj.links == []


@pytest.mark.kernel
def test_attach_target_set_before_load(worker, no_fd_leak):
    s = pybpf.open(program("uprobe_tool"))
    for name in ("func_entry", "func_exit"):
        s.programs[name].attach_target = f"{worker}:work"
    s.variables["getpid_tgid"].set(os.getpid())
    with s.load() as obj:
        links = obj.attach()                      # every program now names its target
        assert sorted((l.kind, l.target) for l in links) == [
            ("uprobe", f"{worker}:work"), ("uprobe", "libc.so.6:getpid"),
            ("uretprobe", f"{worker}:work"), ("uretprobe", "libc.so.6:getpid")]
        total = run_worker(worker, 7)
        os.getpid()
        assert obj.variables["calls"].get() == 7 and obj.variables["ret_sum"].get() == total
        assert obj.variables["getpid_calls"].get() >= 1
