"""uprobe.multi (BPF_TRACE_UPROBE_MULTI, programs/trace_kinds.bpf.c): one link on every
func_* of a C program built here, counted in the program by bpf_get_attach_cookie();
counts equal the calls the program makes, for entry and return probes, and with a pid
filter only the chosen process counts.  Offsets are checked against readelf."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import pybpf
from pybpf.kernel.constants import LinkType
from pybpf.links import uprobe_multi_offsets

from conftest import program
from test_uprobe import readelf_offset

CALLS = {"func_a": 3, "func_b": 5, "func_c": 7}

MULTI_C = r"""
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int func_a(int x) { __asm__ volatile("" : "+r"(x)); return x + 1; }
__attribute__((noinline)) int func_b(int x) { __asm__ volatile("" : "+r"(x)); return x + 2; }
__attribute__((noinline)) int func_c(int x) { __asm__ volatile("" : "+r"(x)); return x + 3; }
__attribute__((noinline)) int other(int x) { __asm__ volatile("" : "+r"(x)); return x + 4; }

int main(int argc, char **argv)
{
	int s = 0;
	char line[8];

	if (argc > 1 && !fgets(line, sizeof(line), stdin))	/* "wait": start when told */
		return 2;
	for (int i = 0; i < 3; i++) s += func_a(i);
	for (int i = 0; i < 5; i++) s += func_b(i);
	for (int i = 0; i < 7; i++) s += func_c(i);
	for (int i = 0; i < 2; i++) s += other(i);
	printf("%d\n", s);
	return 0;
}
"""


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the probed program")
    d = tmp_path_factory.mktemp("umulti")
    (d / "multi.c").write_text(MULTI_C)
    exe = d / "multi"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(d / "multi.c")], check=True, timeout=60)   # a PIE
    return str(exe)


def run(exe):
    subprocess.run([exe], check=True, capture_output=True, timeout=30)


def load(**variables):
    spec = pybpf.open(program("trace_kinds"))
    for name, value in variables.items():
        spec.variables[name].set(value)
    return spec.load()


def test_offsets_match_readelf(multi):
    got = uprobe_multi_offsets(multi, "func_*")
    assert [name for name, _ in got] == ["func_a", "func_b", "func_c"]            # sorted by name
    assert got == [(name, readelf_offset(multi, name)) for name in ("func_a", "func_b", "func_c")]
    assert [n for n, _ in uprobe_multi_offsets(multi, "func_[ac]")] == ["func_a", "func_c"]
    with pytest.raises(pybpf.Error, match="no function of .* matches 'nope_\\*'"):
        uprobe_multi_offsets(multi, "nope_*")


def test_libc_pattern_uses_dynsym():
    libc = pybpf.links.resolve_binary("libc.so.6")
    got = dict(uprobe_multi_offsets(libc, "getpid"))
    assert got == {"getpid": readelf_offset(libc, "getpid")}       # versioned getpid@@GLIBC_2.2.5


@pytest.mark.kernel
def test_counts_by_cookie_equal_the_calls(multi, no_fd_leak):
    with load() as obj:
        prog = obj.programs["count_by_cookie"]
        link = prog.attach_uprobe_multi(multi, "func_*", cookies={"func_a": 1, "func_b": 2, "func_c": 3})
        assert link.symbols == ["func_a", "func_b", "func_c"] and link.cookies == [1, 2, 3]
        info = link.info()
        assert info.type == LinkType.UPROBE_MULTI and info.count == 3 and info.flags == 0 and info.pid == 0
        run(multi)
        counts = obj.variables["entry_counts"].get()
        assert counts[:4] == [0, 3, 5, 7]
        assert sum(counts) == 15 and obj.variables["out_of_range"].get() == 0     # `other` not probed
        link.close()
        run(multi)
        assert obj.variables["entry_counts"].get()[:4] == [0, 3, 5, 7]           # detached


@pytest.mark.kernel
def test_retprobe_with_a_cookie_list(multi, no_fd_leak):
    with load() as obj:
        with obj.programs["count_ret_by_cookie"].attach_uprobe_multi(multi, "func_*", retprobe=True,
                                                                     cookies=[7, 8, 9]) as link:
            assert link.kind == "uretprobe_multi"
            assert link.info().flags == 1                       # BPF_F_UPROBE_MULTI_RETURN
            run(multi)
        assert obj.variables["return_counts"].get()[7:10] == [3, 5, 7]
        assert sum(obj.variables["entry_counts"].get()) == 0


@pytest.mark.kernel
def test_pid_filter(multi, no_fd_leak):
    with load() as obj:
        a = subprocess.Popen([multi, "wait"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        b = subprocess.Popen([multi, "wait"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            with obj.programs["count_by_cookie"].attach_uprobe_multi(multi, "func_b", pid=a.pid, cookies=4) as link:
                assert link.info().pid == a.pid
                for p in (a, b):
                    p.communicate(b"go\n", timeout=30)
                    assert p.returncode == 0
            assert obj.variables["entry_counts"].get()[4] == 5      # a's 5 calls, none of b's
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)


@pytest.mark.kernel
def test_section_target_attached_by_object_attach(no_fd_leak):
    with load(cookie_tgid=os.getpid()) as obj:
        links = obj.attach()
        link = next(l for l in links if l.program.name == "libc_getpid")
        assert (link.kind, link.target, link.symbols) == ("uprobe_multi", "libc.so.6:getpid", ["getpid"])
        for _ in range(25):
            os.getpid()
        assert obj.variables["libc_getpid_calls"].get() == 25


@pytest.mark.kernel
def test_refusals(multi, no_fd_leak):
    with load() as obj:
        prog = obj.programs["count_by_cookie"]
        with pytest.raises(pybpf.Error, match="3 cookies for 2 matched functions"):
            prog.attach_uprobe_multi(multi, "func_[ab]", cookies=[1, 2, 3])
        with pytest.raises(pybpf.Error, match="pattern does not match"):
            prog.attach_uprobe_multi(multi, "func_a", cookies={"func_z": 1})
        with pytest.raises(pybpf.Error, match="no function of"):
            prog.attach_uprobe_multi(multi, "zzz*")
        with pytest.raises(pybpf.Error, match="no process"):
            prog.attach_uprobe_multi(multi, "func_a", pid=2**22 + 12345)
        with pytest.raises(pybpf.Error, match="not loaded for uprobe.multi"):
            obj.programs["uprobe_cookie"].attach_uprobe_multi(multi, "func_a")
        with pytest.raises(pybpf.Error, match="names no function|not 'PATH:PATTERN'"):
            prog.attach()
