"""USDT probes (pybpf/links/usdt.py, programs/usdt_test.bpf.c built with libbpf's usdt.bpf.h).

Offline: argument strings parsed and encoded into usdt.bpf.h's struct __bpf_usdt_spec,
notes read against readelf.  In the kernel: C programs with sys/sdt.h probes built here
with gcc (PIE, non-PIE, a shared library, a semaphore); what bpf_usdt_arg(),
bpf_usdt_arg_cnt() and bpf_usdt_cookie() return in the program is compared with what the
traced program itself passed; the semaphore is read by the traced program.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import struct
import subprocess
import sys

import pytest

import pybpf
from pybpf.links.usdt import (ARG_CONST, ARG_REG, ARG_REG_DEREF, ARG_SIB, SpecLayout, UsdtArg, encode_spec,
                              find_sites, list_probes, parse_note_desc, parse_usdt_arg, parse_usdt_args,
                              parse_usdt_target, spec_ids_in_use)

from conftest import program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- offline: argument strings --------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("-4@%eax", UsdtArg("-4@%eax", 4, True, ARG_REG, reg_off=80)),
    ("8@%rdx", UsdtArg("8@%rdx", 8, False, ARG_REG, reg_off=96)),
    ("-1@%sil", UsdtArg("-1@%sil", 1, True, ARG_REG, reg_off=104)),
    ("2@%r9w", UsdtArg("2@%r9w", 2, False, ARG_REG, reg_off=64)),
    ("8@-8(%rbp)", UsdtArg("8@-8(%rbp)", 8, False, ARG_REG_DEREF, val_off=-8, reg_off=32)),
    ("-4@-1204(%rbp)", UsdtArg("-4@-1204(%rbp)", 4, True, ARG_REG_DEREF, val_off=-1204, reg_off=32)),
    ("8@(%rsp)", UsdtArg("8@(%rsp)", 8, False, ARG_REG_DEREF, val_off=0, reg_off=152)),
    ("4@$5", UsdtArg("4@$5", 4, False, ARG_CONST, val_off=5)),
    ("-4@$-9", UsdtArg("-4@$-9", 4, True, ARG_CONST, val_off=-9)),
    ("1@-96(%rbp,%rax,8)", UsdtArg("1@-96(%rbp,%rax,8)", 1, False, ARG_SIB, val_off=-96, reg_off=32,
                                   idx_reg_off=80, scale_shift=3)),
    ("-2@(%rbx,%rcx)", UsdtArg("-2@(%rbx,%rcx)", 2, True, ARG_SIB, reg_off=40, idx_reg_off=88)),
])
def test_parse_arg(text, want):
    arg, end = parse_usdt_arg(text)
    assert arg == want and end == len(text)


def test_parse_args_libbpf_example():
    # the 12-argument example of libbpf's usdt.c comment
    s = "-4@-1204(%rbp) -4@%edi -8@-1216(%rbp) -8@%r8 -4@$5 -8@%r9 8@%rdx 8@%r10 -4@$-9 -2@%cx -2@%ax -1@%sil"
    args = parse_usdt_args(s)
    assert [(a.size, a.signed, a.type) for a in args] == [
        (4, True, ARG_REG_DEREF), (4, True, ARG_REG), (8, True, ARG_REG_DEREF), (8, True, ARG_REG),
        (4, True, ARG_CONST), (8, True, ARG_REG), (8, False, ARG_REG), (8, False, ARG_REG), (4, True, ARG_CONST),
        (2, True, ARG_REG), (2, True, ARG_REG), (1, True, ARG_REG)]
    assert [a.reg_off for a in args if a.type != ARG_CONST] == [32, 112, 32, 72, 64, 96, 56, 88, 80, 104]
    assert parse_usdt_args("") == [] and parse_usdt_args("  ") == []


@pytest.mark.parametrize("bad, match", [
    ("3@%eax", "size 3"), ("4@%xmm0", "unknown x86-64 register"), ("4@foo(%rip)", "not an x86-64 form"),
    ("4@-8(%rbp,%rax,3)", "scale 3"), ("eax", "not an x86-64 form"),
    (" ".join(["8@%rax"] * 13), "more than 12"),
])
def test_parse_arg_errors(bad, match):
    with pytest.raises(pybpf.Error, match=match):
        parse_usdt_args(bad)


def test_encode_spec_layout():
    """Bytes as usdt.bpf.h's struct __bpf_usdt_spec: 12 args of 16 bytes, cookie @192, arg_cnt @200."""
    args = parse_usdt_args("-4@-20(%rbp) 2@%ax 8@$-3")
    raw = encode_spec(args, 0x1122334455667788)
    assert len(raw) == 208
    val_off, arg_type, reg_off, signed, shift = struct.unpack_from("<qIhbb", raw, 0)
    assert (val_off, arg_type, reg_off, signed, shift) == (-20, ARG_REG_DEREF, 32, 1, 32)
    assert struct.unpack_from("<qIhbb", raw, 16) == (0, ARG_REG, 80, 0, 48)
    assert struct.unpack_from("<qIhbb", raw, 32) == (-3, ARG_CONST, 0, 0, 0)
    assert raw[48:192] == bytes(144)
    assert struct.unpack_from("<Qh", raw, 192) == (0x1122334455667788, 3)
    with pytest.raises(pybpf.Error, match="BPF_USDT_ARG_SIB"):
        encode_spec(parse_usdt_args("1@(%rbp,%rax,8)"), 0)


def test_layout_from_the_objects_btf():
    """The layout read from programs/usdt_test.o's BTF is the one the encoder assumes by default."""
    spec = pybpf.open(program("usdt_test"))
    m = spec.maps["__bpf_usdt_specs"]
    got = SpecLayout.from_btf(spec.btf, m.value_type_id)
    want = SpecLayout.default()
    assert (got.size, got.arg_size, got.usdt_cookie, got.arg_cnt, got.arg_fields, got.has_sib) == \
        (want.size, want.arg_size, want.usdt_cookie, want.arg_cnt, want.arg_fields, want.has_sib)
    assert m.max_entries == 256


def test_note_desc():
    desc = struct.pack("<QQQ", 0x1085, 0x200f, 0x4010) + b"prov\0name\0-4@%edi 8@%rax\0"
    n = parse_note_desc(desc)
    assert (n.provider, n.name, n.args, n.loc_addr, n.base_addr, n.sema_addr) == \
        ("prov", "name", "-4@%edi 8@%rax", 0x1085, 0x200f, 0x4010)
    assert parse_note_desc(struct.pack("<QQQ", 1, 2, 0) + b"p\0n\0\0").args == ""
    with pytest.raises(pybpf.Error, match="too short"):
        parse_note_desc(b"\0" * 20)
    with pytest.raises(pybpf.Error, match="without provider"):
        parse_note_desc(struct.pack("<QQQ", 1, 2, 0) + b"p\0\0\0")


def test_section_targets():
    assert parse_usdt_target("/usr/bin/python3:python:function__entry") == \
        ("/usr/bin/python3", "python", "function__entry")
    assert parse_usdt_target("libc.so.6:libc:setjmp") == ("libc.so.6", "libc", "setjmp")
    assert parse_usdt_target("pybpf_cli:tick") == (None, "pybpf_cli", "tick")
    with pytest.raises(pybpf.Error, match="PATH:PROVIDER:NAME"):
        parse_usdt_target("tick")
    s = pybpf.open(program("usdt_test"))
    got = {n: (p.sec_def.attach, p.attach_target) for n, p in s.programs.items()}
    assert got == {"on_probe": ("usdt", ""), "on_tick": ("usdt", "pybpf_cli:tick")}


# -- the probed programs ---------------------------------------------------------------------------

LIB = r"""
#include <sys/sdt.h>
void lib_fire(int x)
{
	DTRACE_PROBE2(pybpf_lib, fire, x, x * 3);
}
"""

TRACED = r"""
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* semaphores (sys/sdt.h's naming: provider_name_semaphore); the library's probe has none */
__extension__ unsigned short pybpf_test_sema_semaphore __attribute__((section(".probes")));
__extension__ unsigned short pybpf_test_ints_semaphore __attribute__((section(".probes")));
__extension__ unsigned short pybpf_test_str_semaphore __attribute__((section(".probes")));

void lib_fire(int x);

int main(void)
{
	char line[64];
	static const char msg[] = "hello from usdt";
	volatile int8_t i8 = -5;
	volatile uint8_t u8 = 250;
	volatile int16_t i16 = -30000;
	volatile uint16_t u16 = 65000;
	volatile int32_t i32 = -123456789;
	volatile uint32_t u32 = 4000000000u;
	volatile int64_t i64 = -9000000000LL;
	volatile uint64_t u64 = 18000000000000000000ULL;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready %d\n", getpid());
	while (fgets(line, sizeof(line), stdin)) {
		if (line[0] == 'q')
			break;
		if (line[0] == 'f') {
			DTRACE_PROBE8(pybpf_test, ints, i8, u8, i16, u16, i32, u32, i64, u64);
			DTRACE_PROBE3(pybpf_test, str, msg, -42, (long)sizeof(msg));
			if (pybpf_test_sema_semaphore)
				DTRACE_PROBE1(pybpf_test, sema, 7);
			lib_fire(11);
		}
		printf("sema %u\n", pybpf_test_sema_semaphore);
	}
	return 0;
}
"""

INTS = [-5, 250, -30000, 65000, -123456789, 4000000000, -9000000000, 18000000000000000000]
EVENT = struct.Struct("<IiQ12q12ii32s")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The traced program, PIE and non-PIE, both using libpybpfprobe.so."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probed programs")
    d = tmp_path_factory.mktemp("usdt")
    (d / "lib.c").write_text(LIB)
    (d / "traced.c").write_text(TRACED)
    inc = ["-I/usr/include/x86_64-linux-gnu"]
    lib = d / "libpybpfprobe.so"
    subprocess.run(["gcc", "-O2", "-fPIC", "-shared", *inc, "-o", str(lib), str(d / "lib.c")], check=True,
                   timeout=60)
    out = {"lib": str(lib), "dir": str(d)}
    for name, flags in (("pie", ["-fPIE", "-pie"]), ("nopie", ["-no-pie"])):
        exe = d / f"traced_{name}"
        subprocess.run(["gcc", "-O2", *flags, *inc, "-o", str(exe), str(d / "traced.c"), f"-L{d}",
                        "-lpybpfprobe", f"-Wl,-rpath,{d}"], check=True, timeout=60)
        out[name] = str(exe)
    return out


class Traced:
    """A running traced program, driven line by line through its stdin (bounded waits)."""

    def __init__(self, exe: str):
        self.p = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = int(self.readline().split()[1])

    def readline(self, timeout: float = 10.0) -> str:
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert r, "the traced program did not answer in time"
        return self.p.stdout.readline()

    def fire(self) -> int:
        """Fire every probe once; the semaphore's value the program saw."""
        self.p.stdin.write("f\n")
        self.p.stdin.flush()
        return int(self.readline().split()[1])

    def sema(self) -> int:
        self.p.stdin.write("s\n")
        self.p.stdin.flush()
        return int(self.readline().split()[1])

    def close(self):
        try:
            self.p.stdin.write("q\n")
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(timeout=10)
        self.p.stdout.close()


def readelf_notes(path: str) -> list[tuple]:
    out = subprocess.run(["readelf", "-nW", path], capture_output=True, text=True, check=True, timeout=30).stdout
    return [(m[1], m[2], int(m[3], 16), int(m[4], 16), int(m[5], 16), m[6].strip())
            for m in re.finditer(r"Provider: (\S+)\s+Name: (\S+)\s+Location: 0x([0-9a-f]+), Base: 0x([0-9a-f]+), "
                                 r"Semaphore: 0x([0-9a-f]+)\s+Arguments:([^\n]*)", out)]


def test_notes_match_readelf(built):
    from pybpf.links.usdt import read_notes
    for path in (built["pie"], built["nopie"], built["lib"]):
        _, notes, _, _ = read_notes(path)
        assert [(n.provider, n.name, n.loc_addr, n.base_addr, n.sema_addr, n.args) for n in notes] == \
            readelf_notes(path)
    assert list_probes(built["pie"]) == [("pybpf_test", "ints"), ("pybpf_test", "str"), ("pybpf_test", "sema")]
    e_type, sites = find_sites(built["nopie"], "pybpf_test", "sema")
    assert e_type == "ET_EXEC" and sites[0].sema_offset and sites[0].file_offset < 0x400000
    with pytest.raises(pybpf.Error, match=r"no USDT probe pybpf_test:nope .*it has: pybpf_test:ints"):
        find_sites(built["pie"], "pybpf_test", "nope")
    with pytest.raises(pybpf.Error, match="no USDT probes"):
        find_sites("/bin/true", "a", "b")


# -- in the kernel ----------------------------------------------------------------------------------

def load(str_arg: int = -1):
    s = pybpf.open(program("usdt_test"))
    s.variables["str_arg"].set(str_arg)
    return s.load()


def events(obj, t: Traced | None = None, fires: int = 1) -> list[dict]:
    """Fire ``t``'s probes ``fires`` times and read the ring buffer's events."""
    got = []
    with pybpf.RingBuffer(obj.maps["events"], lambda r: got.append(bytes(r))) as rb:
        if t is not None:
            for _ in range(fires):
                t.fire()
        rb.poll(200)
    out = []
    for raw in got:
        pid, cnt, cookie, *rest = EVENT.unpack(raw[:EVENT.size])
        args, rets, str_ret, s = tuple(rest[:12]), tuple(rest[12:24]), rest[24], rest[25]
        out.append({"pid": pid, "cnt": cnt, "cookie": cookie, "args": args[:max(cnt, 0)], "rets": rets,
                    "str_ret": str_ret, "str": s.split(b"\0")[0].decode()})
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_args_of_every_size_and_sign(built, kind, no_fd_leak):
    t = Traced(built[kind])
    try:
        with load() as obj:
            with obj.programs["on_probe"].attach_usdt(built[kind], "pybpf_test", "ints", cookie=0xdeadbeef) as link:
                assert len(link.sites) == 1 and link.info().type == pybpf.kernel.constants.LinkType.PERF_EVENT
                ev = events(obj, t, fires=3)
            assert len(ev) == 3
            for e in ev:
                assert e["pid"] == t.pid and e["cnt"] == 8 and e["cookie"] == 0xdeadbeef
                # bpf_usdt_arg gives s64: unsigned 64-bit values come back as their bits
                assert [a & (1 << 64) - 1 for a in e["args"]] == [v & (1 << 64) - 1 for v in INTS]
                assert list(e["args"][:7]) == INTS[:7]
                assert e["rets"][:8] == (0,) * 8 and all(r == -2 for r in e["rets"][8:])   # -ENOENT past arg_cnt
            assert events(obj, t) == []          # closed: nothing fires any more
            assert spec_ids_in_use(obj.maps["__bpf_usdt_specs"]) == 0
    finally:
        t.close()


@pytest.mark.kernel
def test_string_pointer_and_constant(built, no_fd_leak):
    t = Traced(built["pie"])
    try:
        with load(str_arg=0) as obj, obj.programs["on_probe"].attach_usdt(built["pie"], "pybpf_test", "str"):
            ev = events(obj, t)
        assert len(ev) == 1
        e = ev[0]
        assert e["cnt"] == 3 and e["str"] == "hello from usdt" and e["str_ret"] == len("hello from usdt") + 1
        assert e["args"][1:] == (-42, 16) and e["cookie"] == 0
    finally:
        t.close()


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["pie", "nopie"])
def test_semaphore_counted_while_attached(built, kind, no_fd_leak):
    t = Traced(built[kind])
    t2 = None
    try:
        assert t.sema() == 0 and t.fire() == 0
        with load() as obj:
            link = obj.programs["on_probe"].attach_usdt(built[kind], "pybpf_test", "sema", cookie=5)
            assert t.sema() == 1
            t2 = Traced(built[kind])             # started after the attach: the kernel counts it up too
            assert t2.sema() == 1
            ev = events(obj, t)
            assert [(e["cnt"], e["args"], e["cookie"]) for e in ev] == [(1, (7,), 5)]
            # a second link on the same site shares the kernel's uprobe (one per inode and
            # offset), which counts the semaphore once: it stays up until both are closed
            link2 = obj.programs["on_probe"].attach_usdt(built[kind], "pybpf_test", "sema")
            assert t.sema() == 1
            link.close()
            assert t.sema() == 1 and t2.sema() == 1
            link = link2
            link.close()
            assert t.sema() == 0 and t2.sema() == 0
            assert events(obj, t) == []           # the probe is skipped again by the program itself
    finally:
        t.close()
        if t2 is not None:
            t2.close()


@pytest.mark.kernel
def test_shared_library(built, no_fd_leak):
    t = Traced(built["pie"])
    try:
        with load() as obj:
            with obj.programs["on_probe"].attach_usdt(built["lib"], "pybpf_lib", "fire", cookie=99) as link:
                assert link.target == f"{built['lib']}:pybpf_lib:fire"
                ev = events(obj, t, fires=2)
        assert [(e["pid"], e["cnt"], e["args"], e["cookie"]) for e in ev] == [(t.pid, 2, (11, 33), 99)] * 2
    finally:
        t.close()


@pytest.mark.kernel
def test_pid_filter(built, no_fd_leak):
    a, b = Traced(built["pie"]), Traced(built["pie"])
    try:
        with load() as obj, obj.programs["on_probe"].attach_usdt(built["pie"], "pybpf_test", "ints", pid=b.pid):
            got = []
            with pybpf.RingBuffer(obj.maps["events"], lambda r: got.append(EVENT.unpack(bytes(r)[:EVENT.size])[0])) \
                    as rb:
                for _ in range(3):
                    a.fire()
                    b.fire()
                rb.poll(200)
        assert got == [b.pid] * 3
    finally:
        a.close()
        b.close()


@pytest.mark.kernel
def test_spec_ids_shared_and_given_back(built, no_fd_leak):
    """Two links of one object take distinct spec ids (each its own cookie); closing gives them back."""
    t = Traced(built["pie"])
    try:
        with load() as obj:
            p = obj.programs["on_probe"]
            specs = obj.maps["__bpf_usdt_specs"]
            l1 = p.attach_usdt(built["pie"], "pybpf_test", "ints", cookie=1)
            l2 = p.attach_usdt(built["lib"], "pybpf_lib", "fire", cookie=2)
            assert spec_ids_in_use(specs) == 2 and set(l1.spec_ids + l2.spec_ids) == {0, 1}
            ev = events(obj, t)
            assert sorted((e["cookie"], e["cnt"]) for e in ev) == [(1, 8), (2, 2)]
            freed = l1.spec_ids
            l1.close()
            assert spec_ids_in_use(specs) == 1
            l3 = p.attach_usdt(built["pie"], "pybpf_test", "str", cookie=3)
            assert l3.spec_ids == freed                  # the freed id is used again
            ev = events(obj, t)
            assert sorted((e["cookie"], e["cnt"]) for e in ev) == [(2, 2), (3, 3)]
        assert l2.closed and l3.closed                   # the object's close detached them
    finally:
        t.close()


@pytest.mark.kernel
def test_refusals(built, no_fd_leak):
    with load() as obj:
        p = obj.programs["on_probe"]
        with pytest.raises(pybpf.Error, match="no USDT probe pybpf_test:missing"):
            p.attach_usdt(built["pie"], "pybpf_test", "missing")
        with pytest.raises(pybpf.Error, match="names no binary.*--pid"):
            obj.programs["on_tick"].attach()
        with pytest.raises(pybpf.SyscallError, match="no process"):
            p.attach_usdt(built["pie"], "pybpf_test", "ints", pid=2 ** 22 + 12345)
        assert spec_ids_in_use(obj.maps["__bpf_usdt_specs"]) == 0 and obj.links == []
    plain = pybpf.open(program("uprobe_tool")).load()
    with plain, pytest.raises(pybpf.Error, match="usdt.bpf.h"):
        plain.programs["func_entry"].attach_usdt(built["pie"], "pybpf_test", "ints")


TICKER = r"""
#include <sys/sdt.h>
#include <stdio.h>
#include <unistd.h>
int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (long n = 1; n <= 400; n++) {
		DTRACE_PROBE2(pybpf_cli, tick, n, -n);
		usleep(20000);
	}
	return 0;
}
"""


@pytest.mark.kernel
def test_cli_load_pid(built):
    """python -m pybpf load programs/usdt_test.o --pid N: on_tick probes N's executable, only N."""
    d = built["dir"]
    src = os.path.join(d, "ticker.c")
    with open(src, "w") as f:
        f.write(TICKER)
    exe = os.path.join(d, "ticker")
    subprocess.run(["gcc", "-O2", "-I/usr/include/x86_64-linux-gnu", "-o", exe, src], check=True, timeout=60)
    a = subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)
    b = subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)     # same binary, other process
    try:
        for p in (a, b):
            assert p.stdout.readline().strip() == "ready"
        cli = subprocess.run([sys.executable, "-m", "pybpf", "load", program("usdt_test"), "--pid", str(a.pid),
                              "--count", "5", "--duration", "20"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
    finally:
        for p in (a, b):
            p.kill()
            p.wait(timeout=10)
            p.stdout.close()
    assert cli.returncode == 0, cli.stderr
    assert f"attached on_tick (usdt/pybpf_cli:tick) to {os.path.realpath(exe)}:pybpf_cli:tick in process {a.pid}" \
        in cli.stderr
    pids = {int(m) for m in re.findall(r"pid[=:]\s*(\d+)", cli.stdout)}
    assert pids == {a.pid}, cli.stdout
    pairs = [(int(x), int(y)) for x, y in re.findall(r"arg_cnt=2 cookie=0 args=\[(\d+),(-\d+),", cli.stdout)]
    assert len(pairs) == 5 and all(y == -x for x, y in pairs), cli.stdout      # DTRACE_PROBE2(.., n, -n)
    assert [x for x, _ in pairs] == sorted(x for x, _ in pairs)
