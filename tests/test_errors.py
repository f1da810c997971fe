"""Errors: malformed or unsupported input and kernel refusals give a pybpf.Error that
names the problem, never a deep traceback from the parser, and never leak fds.

Malformed objects are made by byte surgery on copies of the committed objects.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile

import pybpf
from pybpf.spec.btf import BTF, Kind
from pybpf.spec.object import ObjectSpec

from conftest import PROGRAMS, program

ELF64_SHDR_SIZE = 64


def read(name: str) -> bytearray:
    with open(program(name), "rb") as f:
        return bytearray(f.read())


def sections(data: bytes) -> dict:
    """name -> (index, file offset, size, sh_name, section header offset)."""
    elf = ELFFile(io.BytesIO(bytes(data)))
    shoff = elf["e_shoff"]
    return {s.name: (i, s["sh_offset"], s["sh_size"], s["sh_name"], shoff + i * ELF64_SHDR_SIZE)
            for i, s in enumerate(elf.iter_sections())}


def write(tmp_path, data: bytes, name: str = "bad.o") -> str:
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def open_error(path: str) -> pybpf.Error:
    """pybpf.open must fail with a pybpf.Error (anything else fails the test)."""
    with pytest.raises(pybpf.Error) as exc:
        pybpf.open(path)
    return exc.value


# -- not an object at all ------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.o")
    e = open_error(path)
    assert isinstance(e, pybpf.ObjectError)
    assert path in str(e) and "No such file" in str(e)


def test_directory_instead_of_file(tmp_path):
    e = open_error(str(tmp_path))
    assert isinstance(e, pybpf.ObjectError) and str(tmp_path) in str(e)


def test_empty_file(tmp_path):
    path = write(tmp_path, b"")
    e = open_error(path)
    assert isinstance(e, pybpf.ObjectError)
    assert "not an ELF file" in str(e) and path in str(e)


def test_text_file(tmp_path):
    e = open_error(write(tmp_path, b"int main(void) { return 0; }\n"))
    assert "not an ELF file" in str(e)


def test_x86_64_executable_is_not_a_bpf_object(tmp_path):
    exe = shutil.which("true") or "/bin/true"
    e = open_error(exe)
    assert isinstance(e, pybpf.ObjectError)
    assert "not a BPF object" in str(e) and "X86_64" in str(e)


def test_x86_64_relocatable_object_is_not_a_bpf_object(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build an x86-64 object")
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run([cc, "-c", "-o", str(tmp_path / "x.o"), str(src)], check=True)
    e = open_error(str(tmp_path / "x.o"))
    assert "not a BPF object" in str(e)


def test_32_bit_elf(tmp_path):
    data = read("calls_test")
    data[4] = 1                             # EI_CLASS = ELFCLASS32
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.ObjectError)


def test_big_endian_elf(tmp_path):
    data = read("calls_test")
    data[5] = 2                             # EI_DATA = ELFDATA2MSB
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.ObjectError)


# -- truncated -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["calls_test", "globals_test", "user_ringbuf"])
def test_truncated_elf_at_every_cut(name):
    data = bytes(read(name))
    # every byte of the ELF header, then cut points through the whole file
    cuts = sorted(set(range(0, 80)) | set(range(80, len(data), 7)) | {len(data) - 1})
    for cut in cuts:
        try:
            ObjectSpec(data[:cut], path=f"{name}[:{cut}]")
        except pybpf.Error as e:
            assert f"{name}[:{cut}]" in str(e)
        else:
            pytest.fail(f"{name} cut at {cut} of {len(data)} bytes parsed without error")


def test_truncated_file_message(tmp_path):
    data = read("calls_test")
    e = open_error(write(tmp_path, data[:len(data) // 2]))
    assert isinstance(e, pybpf.ObjectError)
    assert "truncated" in str(e)


# -- corrupted sections ------------------------------------------------------------------------

def test_unknown_program_section_name(tmp_path):
    data = read("calls_test")
    _, off, size, _, _ = sections(data)[".strtab"]
    strtab = data[off:off + size]
    assert strtab.count(b"syscall\0") == 1       # shared by "syscall" and ".relsyscall"
    data[off:off + size] = strtab.replace(b"syscall\0", b"sysfoo\0\0")
    e = open_error(write(tmp_path, data))
    assert type(e) is pybpf.ObjectError
    assert "'sysfoo'" in str(e) and "unknown section name" in str(e)
    assert "compute" in str(e)                  # the function in it


def test_legacy_maps_section(tmp_path):
    data = read("calls_test")
    _, _, _, sh_name, hdr = sections(data)[".maps"]
    struct.pack_into("<I", data, hdr, sh_name + 1)  # ".maps" -> "maps"
    assert "maps" in sections(data)
    e = open_error(write(tmp_path, data))
    assert type(e) is pybpf.ObjectError
    assert "legacy 'maps' section" in str(e)


def test_stripped_object_without_symtab(tmp_path):
    data = read("calls_test")
    _, _, _, sh_name, hdr = sections(data)[".symtab"]
    struct.pack_into("<I", data, hdr, sh_name + 1)  # ".symtab" -> "symtab"
    e = open_error(write(tmp_path, data))
    assert "no .symtab" in str(e)


def _btf_region(data):
    _, off, size, _, _ = sections(data)[".BTF"]
    return off, size


def test_btf_bad_magic(tmp_path):
    data = read("calls_test")
    off, _ = _btf_region(data)
    data[off:off + 2] = b"\x00\xeb"                 # magic 0xeb9f -> 0xeb00
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.BTFError)
    assert "magic" in str(e) and ".BTF" in str(e)


def test_btf_truncated_type_section(tmp_path):
    data = read("globals_test")
    off, _ = _btf_region(data)
    type_len = struct.unpack_from("<I", data, off + 12)[0]
    for cut in (6, 4, 1):
        d = bytearray(data)
        struct.pack_into("<I", d, off + 12, type_len - cut)
        e = open_error(write(tmp_path, d))
        assert isinstance(e, pybpf.BTFError), cut
        assert "truncated" in str(e) or "past the end" in str(e)


def test_btf_header_points_past_the_blob(tmp_path):
    data = read("globals_test")
    off, size = _btf_region(data)
    struct.pack_into("<I", data, off + 20, size * 2)      # str_len
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.BTFError) and "string" in str(e)


def test_btf_out_of_range_type_reference(tmp_path):
    data = read("user_ringbuf")
    off, size = _btf_region(data)
    btf = BTF(bytes(data[off:off + size]))
    ptr = next(t for t in btf if t.kind == Kind.PTR)
    hdr_len = struct.unpack_from("<I", data, off + 4)[0]
    type_off = struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + hdr_len + type_off + ptr.record_offset + 8, 99999)
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.BTFError)
    assert "99999" in str(e)


def test_btf_ext_bad_magic(tmp_path):
    data = read("calls_test")
    _, off, _, _, _ = sections(data)[".BTF.ext"]
    data[off] ^= 0xFF
    e = open_error(write(tmp_path, data))
    assert isinstance(e, pybpf.BTFError) and ".BTF.ext" in str(e)


def test_relocation_to_missing_symbol(tmp_path):
    data = read("calls_test")
    _, off, _, _, _ = sections(data)[".relsyscall"]
    r_info = struct.unpack_from("<Q", data, off + 8)[0]
    struct.pack_into("<Q", data, off + 8, (5000 << 32) | (r_info & 0xFFFFFFFF))
    e = open_error(write(tmp_path, data))
    assert type(e) is pybpf.ObjectError and "#5000" in str(e)


def test_random_corruption_never_escapes_as_another_exception():
    import random
    rng = random.Random(1234)
    for name in ("calls_test", "globals_test", "tracepoint_test"):
        data = bytes(read(name))
        regions = [(o, s) for (_, o, s, _, _) in sections(data).values() if s]
        regions.append((0, 64))
        for _ in range(120):
            d = bytearray(data)
            off, size = rng.choice(regions)
            for _ in range(rng.choice((1, 2, 4))):
                d[off + rng.randrange(size)] = rng.randrange(256)
            try:
                ObjectSpec(bytes(d), path=name)
            except pybpf.Error:
                pass


# -- objects compiled here (clang-19 and libbpf headers; skipped without them) ---------------------

HEADER = """
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
"""


def compile_bpf(tmp_path, source: str, name: str = "t") -> str:
    clang = shutil.which("clang-19")
    if clang is None or not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        pytest.skip("building this object needs clang-19 and libbpf-dev")
    try:
        multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    except OSError:
        multiarch = ""
    src = tmp_path / f"{name}.bpf.c"
    src.write_text(HEADER + source)
    out = tmp_path / f"{name}.o"
    cmd = [clang, "-g", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out)]
    if multiarch:
        cmd.insert(1, f"-I/usr/include/{multiarch}")      # asm/types.h
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return str(out)


def test_unknown_map_attribute(tmp_path):
    path = compile_bpf(tmp_path, """
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(bogus, 3);
    __type(key, __u32);
    __type(value, __u32);
} m SEC(".maps");
SEC("syscall") int p(void *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&m, &k) != 0; }
""")
    e = open_error(path)
    assert type(e) is pybpf.ObjectError
    assert "map 'm'" in str(e) and "unknown attribute 'bogus'" in str(e) and path in str(e)


def test_map_without_type(tmp_path):
    path = compile_bpf(tmp_path, """
struct {
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} m SEC(".maps");
SEC("syscall") int p(void *ctx) { __u32 k = 0; return bpf_map_lookup_elem(&m, &k) != 0; }
""")
    e = open_error(path)
    assert "map 'm' has no type" in str(e)


@pytest.mark.kernel
def test_missing_extern_fails_before_the_kernel(tmp_path, no_fd_leak):
    path = compile_bpf(tmp_path, """
extern int CONFIG_PYBPF_NOT_IN_ANY_KERNEL __kconfig;
SEC("syscall") int p(void *ctx) { return CONFIG_PYBPF_NOT_IN_ANY_KERNEL; }
""")
    spec = pybpf.open(path)          # parsing is fine
    with pytest.raises(pybpf.ObjectError) as exc:
        spec.load()
    # pybpf's own words naming the extern, before anything is put in the kernel
    assert "extern 'CONFIG_PYBPF_NOT_IN_ANY_KERNEL' (kconfig)" in str(exc.value)
    assert "declare it __weak" in str(exc.value)
    assert str(exc.value).startswith(path)
    assert not isinstance(exc.value, pybpf.BTFError)


@pytest.mark.kernel
def test_core_relocations_are_reported(tmp_path, no_fd_leak):
    path = compile_bpf(tmp_path, """
struct task { int pid; int tgid; } __attribute__((preserve_access_index));
SEC("raw_tp/sys_enter") int p(void *ctx)
{
    struct task *t = (void *)bpf_get_current_task();
    int tgid = 0;
    bpf_probe_read_kernel(&tgid, sizeof(tgid), &t->tgid);
    return tgid;
}
""")
    # the kernel has no 'struct task': the relocation poisons a reachable instruction, and the
    # verifier's "invalid func unknown#195896080" becomes a message naming the relocation
    with pytest.raises(pybpf.VerifierError, match=r"CO-RE relocation #0 <byte_off> \[\d+\] struct task\.tgid") as exc:
        pybpf.load(path)
    assert "no struct named 'task' in the target BTF (vmlinux)" in str(exc.value)


# -- kernel refusals ------------------------------------------------------------------------------

@pytest.mark.kernel
def test_map_refused_by_kernel_names_map_and_releases_everything(no_fd_leak):
    spec = pybpf.open(program("maps_test"))
    # maps are created in order: array and percpu exist when hash is refused
    assert list(spec.maps).index("hash") > 0
    spec.maps["hash"].key_size = 0      # the kernel refuses hash maps without a key
    spec.maps["hash"].key_type_id = 0
    with pytest.raises(pybpf.SyscallError) as exc:
        spec.load()
    e = exc.value
    assert e.command == "BPF_MAP_CREATE"
    assert "BPF_MAP_CREATE" in str(e) and "'hash'" in str(e) and "key_size 0" in str(e)


@pytest.mark.kernel
def test_verifier_rejection(no_fd_leak):
    with pytest.raises(pybpf.VerifierError) as exc:
        pybpf.load(program("verifier_fail"))
    e = exc.value
    assert isinstance(e, pybpf.SyscallError) and e.command == "BPF_PROG_LOAD"
    assert "'oob'" in str(e)
    assert "val = v[idx]; /* deliberate out-of-bounds */" in str(e)
    assert "invalid access to map value" in str(e)
    # .log is the whole verifier log, from the first instruction to the summary line
    assert re.search(r"^0: ", e.log, re.M)
    assert "val = v[idx]; /* deliberate out-of-bounds */" in e.log
    assert e.log.rstrip().splitlines()[-1].startswith("processed ")
    assert len(e.log) > len(str(e)) // 2


@pytest.mark.kernel
def test_verifier_rejection_through_spec_load_does_not_leak(no_fd_leak):
    spec = pybpf.open(program("verifier_fail"))
    for _ in range(3):
        with pytest.raises(pybpf.VerifierError):
            spec.load()


@pytest.mark.kernel
def test_program_refused_after_maps_were_created(no_fd_leak):
    # verifier_fail creates its map, then the program is refused: the map must go too
    spec = pybpf.open(program("verifier_fail"))
    assert spec.maps
    with pytest.raises(pybpf.VerifierError):
        spec.load()


@pytest.mark.kernel
def test_btf_refused_by_kernel(no_fd_leak):
    spec = pybpf.open(program("calls_test"))
    # a FUNC whose prototype is not a FUNC_PROTO: parses, but the kernel refuses it
    func = next(t for t in spec.btf if t.kind == Kind.FUNC)
    int_type = next(t for t in spec.btf if t.kind == Kind.INT)
    struct.pack_into("<I", spec.btf.raw, spec.btf.type_off + func.record_offset + 8, int_type.id)
    with pytest.raises(pybpf.BTFError) as exc:
        spec.load()
    e = exc.value
    assert "the kernel rejected the object's BTF" in str(e)
    # the message is the kernel's last word; the whole (long) log is on .log
    assert len(str(e).splitlines()) <= 3
    assert str(e).splitlines()[0].split(": ", 1)[1] in e.log
    assert len(e.log) > len(str(e))


# -- EPERM: a missing privilege, or this kernel's policy -----------------------------------------

_SOCKMAP_SCRIPT = """
import os, sys
import pybpf
from pybpf.loader import create_map
spec = pybpf.open(sys.argv[1])
try:
    os.close(create_map(spec.maps["sockmap"]))
except pybpf.Error as e:
    print(type(e).__name__, e)
else:
    print("created")
"""


@pytest.mark.kernel
def test_eperm_for_a_missing_capability_is_a_permission_error():
    """Root with CAP_BPF but without CAP_SYS_ADMIN and CAP_NET_ADMIN (setpriv takes them out
    of the bounding set, so the execve does not give them) cannot create a SOCKMAP
    (map_create checks CAP_NET_ADMIN, which CAP_SYS_ADMIN would stand for): a missing
    privilege, a PermissionError, not "not permitted by this kernel"."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop a capability"
    proc = subprocess.run([setpriv, "--bounding-set=-net_admin,-sys_admin", "--inh-caps=-all", sys.executable,
                           "-c", _SOCKMAP_SCRIPT, program("map_types")], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYBPF_CACHE="0"))
    out = proc.stdout.strip()
    assert proc.returncode == 0, proc.stderr
    assert out.startswith("PermissionError "), out
    assert "BPF_MAP_CREATE" in out and "'sockmap'" in out and "SOCKMAP" in out
    # with every capability the same map is created
    again = subprocess.run([sys.executable, "-c", _SOCKMAP_SCRIPT, program("map_types")],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, PYBPF_CACHE="0"))
    assert again.stdout.strip() == "created", again.stdout + again.stderr


def test_eperm_with_every_capability_is_the_kernels_refusal(monkeypatch):
    """EPERM from BPF_MAP_CREATE for a process that holds every capability bpf(2) checks
    (a kernel build that withholds arena maps does this) names the map type as refused by
    this kernel; the same EPERM without them stays a PermissionError."""
    import pybpf.loader as L
    from pybpf.kernel import syscall as sc
    from pybpf.kernel.constants import Cmd

    def refuse(cmd, attr, *args, **kwargs):
        assert cmd == Cmd.MAP_CREATE
        raise pybpf.PermissionError("BPF_MAP_CREATE", errno.EPERM, "refused")

    spec = pybpf.open(program("maps_test")).maps["hash"]
    monkeypatch.setattr(sc, "bpf", refuse)
    monkeypatch.setattr(sc, "every_bpf_capability", lambda: True)
    with pytest.raises(pybpf.NotSupportedError) as exc:
        L.create_map(spec)
    assert "'hash'" in str(exc.value) and "HASH maps are not permitted by this kernel" in str(exc.value)
    assert "EPERM" in str(exc.value)
    monkeypatch.setattr(sc, "every_bpf_capability", lambda: False)
    with pytest.raises(pybpf.PermissionError) as exc:
        L.create_map(spec)
    assert not isinstance(exc.value, pybpf.NotSupportedError) and "'hash'" in str(exc.value)


def test_every_bpf_capability_reads_this_process_effective_set():
    """Against /proc/self/status itself, and under setpriv without CAP_SYS_ADMIN."""
    from pybpf.kernel import syscall as sc
    with open("/proc/self/status") as f:
        eff = int(next(line for line in f if line.startswith("CapEff:")).split()[1], 16)
    assert sc.every_bpf_capability() == bool(eff >> 21 & 1)    # CAP_SYS_ADMIN
    setpriv = shutil.which("setpriv")
    if os.geteuid() == 0 and setpriv:
        proc = subprocess.run([setpriv, "--bounding-set=-sys_admin", "--inh-caps=-all", sys.executable, "-c",
                               "from pybpf.kernel import syscall as sc; print(sc.every_bpf_capability(), "
                               "sc.bpf_capable())"], capture_output=True, text=True, timeout=60)
        assert proc.stdout.split() == ["False", "True"], proc.stdout + proc.stderr
